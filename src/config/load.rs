//! Where settings come from (`platform.md` §2.1–§2.2, §1.15): strict CLI overrides, then the YAML
//! file, then `COMPOX_*` environment variables, then defaults, deep-merged per key by the `config`
//! crate.
//!
//! Both override grammars hand values over as text (JSON for `{…}`/`[…]`) and let the target
//! field's type coerce them. That differs from the original's loose parser, which turns `1`/`0` into
//! booleans before validation: `--inference.cuda_visible_devices 0` works here and fails there.

use super::Settings;
use config::{Map, Source, Value, ValueKind};
use serde_json::Value as Json;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Bad command line (unknown option, missing value); the CLI exits 2.
    #[error("{0}")]
    Usage(String),
    /// The settings do not validate; the CLI exits 1.
    #[error("{0}")]
    Invalid(String),
}

/// Dotted-key overrides in the order given; later ones win.
#[derive(Debug, Clone, Default)]
pub struct Overrides(pub Vec<(String, Json)>);

/// Builds validated, resolved settings from all sources.
pub fn load_settings(
    config_path: Option<&Path>,
    overrides: &Overrides,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Settings, ConfigError> {
    let mut builder = config::Config::builder().add_source(EnvSource::from_vars(env));
    let file_label = config_path.map(|p| p.display().to_string());
    if let Some(path) = config_path {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::Invalid(format!("cannot read config file {}: {e}", path.display()))
        })?;
        let doc: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| {
            ConfigError::Invalid(format!("invalid YAML in {}: {e}", path.display()))
        })?;
        let json = match doc {
            serde_yaml::Value::Null => Json::Object(Default::default()),
            serde_yaml::Value::Mapping(_) => serde_json::to_value(&doc).map_err(|e| {
                ConfigError::Invalid(format!("invalid YAML in {}: {e}", path.display()))
            })?,
            _ => {
                return Err(ConfigError::Invalid(format!(
                    "invalid config file {}: the top level must be a mapping",
                    path.display()
                )))
            }
        };
        if let Some(unknown) = first_unknown_key(&json) {
            return Err(ConfigError::Invalid(format!(
                "invalid config file {}: unknown key `{unknown}` (extra inputs are not permitted)",
                path.display()
            )));
        }
        builder = builder.add_source(JsonSource(json));
    }
    for (key, value) in &overrides.0 {
        builder = builder
            .set_override(key.as_str(), to_config_value(value))
            .map_err(|e| ConfigError::Invalid(format!("invalid override --{key}: {e}")))?;
    }
    let merged = builder
        .build()
        .map_err(|e| ConfigError::Invalid(e.to_string()))?;
    let settings: Settings = merged.try_deserialize().map_err(|e| {
        let source = file_label.map(|f| format!(" (config file {f}, environment or overrides)"));
        ConfigError::Invalid(format!(
            "invalid settings{}: {e}{}",
            source.unwrap_or_default(),
            union_tag_hint(&e.to_string())
        ))
    })?;
    settings.resolve()
}

/// serde names only the missing tag; say which union it belongs to and how to name it
/// (`platform.md` §2.3: a partial override of either union must include the tag).
fn union_tag_hint(message: &str) -> &'static str {
    if message.contains("missing field `provider`") {
        " (a partial storage.backend_settings must also name its provider: filesystem, minio \
         or aws, e.g. --storage.backend_settings.provider filesystem)"
    } else if message.contains("missing field `executor`") {
        " (a partial inference.backend_settings must also name its executor, e.g. \
         --inference.backend_settings.executor fastapi_background_tasks)"
    } else {
        ""
    }
}

/// The strict grammar of `run`/`worker` (`platform.md` §1.15.A). Returns the `--config` path and
/// the overrides. Unknown options are usage errors.
pub fn parse_strict_overrides(args: &[String]) -> Result<(Option<String>, Overrides), ConfigError> {
    let mut config = None;
    let mut out: Vec<(String, Json)> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        let Some(flag) = arg.strip_prefix("--") else {
            return Err(ConfigError::Usage(format!("unrecognized argument: {arg}")));
        };
        let (key, value) = match flag.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => {
                i += 1;
                let Some(v) = args.get(i) else {
                    return Err(ConfigError::Usage(format!(
                        "argument --{flag}: expected one argument"
                    )));
                };
                (flag.to_string(), v.clone())
            }
        };
        i += 1;
        if key == "config" {
            config = Some(value);
            continue;
        }
        if !is_known_path(&key) {
            return Err(ConfigError::Usage(format!(
                "unrecognized arguments: --{key}"
            )));
        }
        let parsed = parse_text_value(&value);
        // A repeated flag accumulates into a list.
        if let Some(existing) = out.iter_mut().find(|(k, _)| *k == key) {
            match &mut existing.1 {
                Json::Array(items) => items.push(parsed),
                other => *other = Json::Array(vec![other.clone(), parsed]),
            }
        } else {
            out.push((key, parsed));
        }
    }
    Ok((config, Overrides(out)))
}

/// The loose grammar of `generate-config`/`deploy-algorithms` (`platform.md` §1.15.B): `--k v` takes
/// the next token whatever it is, a trailing key gets null, commas make lists.
pub fn parse_loose_overrides(args: &[String]) -> Overrides {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let Some(flag) = args[i].strip_prefix("--") else {
            i += 1;
            continue;
        };
        let (key, value) = match flag.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => {
                let v = args.get(i + 1).cloned();
                i += 1;
                (flag.to_string(), v)
            }
        };
        i += 1;
        let value = match value {
            None => Json::Null,
            Some(v) if matches!(v.to_ascii_lowercase().as_str(), "null" | "none") => Json::Null,
            Some(v) if v.contains(',') && !v.starts_with('[') && !v.starts_with('{') => {
                Json::Array(
                    v.split(',')
                        .map(|s| Json::String(s.trim().to_string()))
                        .collect(),
                )
            }
            Some(v) => parse_text_value(&v),
        };
        out.push((key, value));
    }
    Overrides(out)
}

/// JSON objects and arrays are parsed; everything else stays text for the field type to coerce.
fn parse_text_value(v: &str) -> Json {
    let t = v.trim_start();
    if t.starts_with('{') || t.starts_with('[') {
        if let Ok(json) = serde_json::from_str(v) {
            return json;
        }
    }
    if v.eq_ignore_ascii_case("null") {
        return Json::Null;
    }
    Json::String(v.to_string())
}

fn default_tree() -> Json {
    serde_json::to_value(
        serde_json::from_value::<Settings>(Json::Object(Default::default()))
            .expect("defaults deserialize"),
    )
    .expect("settings serialize")
}

/// Whether a dotted key names a settings field. Keys below a tagged union are left to validation,
/// since the valid set depends on the tag.
fn is_known_path(dotted: &str) -> bool {
    let tree = default_tree();
    let mut node = &tree;
    for part in dotted.split('.') {
        if part == "backend_settings" {
            return node.get(part).is_some();
        }
        match node.get(part) {
            Some(next) => node = next,
            None => return false,
        }
    }
    true
}

/// First key of a YAML document that no settings field has (union sections left to validation).
fn first_unknown_key(doc: &Json) -> Option<String> {
    fn walk(doc: &Json, known: &Json, prefix: &str) -> Option<String> {
        let (Json::Object(map), Json::Object(known_map)) = (doc, known) else {
            return None;
        };
        for (k, v) in map {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match known_map.get(k) {
                None => return Some(path),
                Some(_) if k == "backend_settings" => {}
                Some(sub) => {
                    if let Some(found) = walk(v, sub, &path) {
                        return Some(found);
                    }
                }
            }
        }
        None
    }
    walk(doc, &default_tree(), "")
}

fn to_config_value(v: &Json) -> Value {
    let kind = match v {
        Json::Null => ValueKind::Nil,
        Json::Bool(b) => ValueKind::Boolean(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => ValueKind::I64(i),
            None => ValueKind::Float(n.as_f64().unwrap_or_default()),
        },
        Json::String(s) => ValueKind::String(s.clone()),
        Json::Array(items) => ValueKind::Array(items.iter().map(to_config_value).collect()),
        Json::Object(map) => ValueKind::Table(
            map.iter()
                .map(|(k, v)| (k.clone(), to_config_value(v)))
                .collect(),
        ),
    };
    Value::new(None, kind)
}

/// A parsed JSON/YAML tree as a `config` source.
#[derive(Debug, Clone)]
struct JsonSource(Json);

impl Source for JsonSource {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<Map<String, Value>, config::ConfigError> {
        match to_config_value(&self.0).kind {
            ValueKind::Table(map) => Ok(map),
            _ => Ok(Map::new()),
        }
    }
}

/// `COMPOX_<FIELD>` variables with `__` nesting, case-insensitive; `COMPOX__<FIELD>` is accepted
/// too. Unknown top-level names are ignored, like the original.
#[derive(Debug, Clone)]
struct EnvSource(Json);

impl EnvSource {
    fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let known = default_tree();
        let mut root = serde_json::Map::new();
        for (name, value) in vars {
            let upper = name.to_ascii_uppercase();
            let rest = match upper
                .strip_prefix("COMPOX__")
                .or_else(|| upper.strip_prefix("COMPOX_"))
            {
                Some(r) if !r.is_empty() => r.to_ascii_lowercase(),
                _ => continue,
            };
            let parts: Vec<&str> = rest.split("__").collect();
            if known.get(parts[0]).is_none() {
                continue;
            }
            let mut node = &mut root;
            for part in &parts[..parts.len() - 1] {
                let entry = node
                    .entry(part.to_string())
                    .or_insert_with(|| Json::Object(Default::default()));
                if !entry.is_object() {
                    *entry = Json::Object(Default::default());
                }
                node = entry.as_object_mut().expect("just made an object");
            }
            let leaf = parse_text_value(&value);
            let last = parts[parts.len() - 1].to_string();
            match (node.get_mut(&last), leaf) {
                (Some(Json::Object(existing)), Json::Object(new)) => existing.extend(new),
                (_, leaf) => {
                    node.insert(last, leaf);
                }
            }
        }
        EnvSource(Json::Object(root))
    }
}

impl Source for EnvSource {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<Map<String, Value>, config::ConfigError> {
        JsonSource(self.0.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendSettings, ExecutorSettings};

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn yaml(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn defaults_match_the_original() {
        let s = load_settings(None, &Overrides::default(), env(&[])).unwrap();
        assert_eq!(s.port, 5481);
        assert_eq!(s.info.server_tags, vec!["compox"]);
        assert_eq!(s.middleware.allow_methods, vec!["GET"]);
        assert!(matches!(
            s.storage.backend_settings,
            BackendSettings::Filesystem(_)
        ));
        assert!(matches!(
            s.inference.backend_settings,
            ExecutorSettings::FastapiBackgroundTasks(ref e) if e.worker_number == 1
        ));
        assert_eq!(
            s.log_path,
            "var/log/TESCAN GROUP, a.s./Tescan Compox Backend/compox.log"
        );
    }

    #[test]
    fn precedence_cli_over_yaml_over_env() {
        let file = yaml(
            "port: 6001\nstorage:\n  backend_settings:\n    provider: minio\n    console_port: 1\n",
        );
        let (_, cli) = parse_strict_overrides(&["--port".into(), "6000".into()]).unwrap();
        let s = load_settings(
            Some(file.path()),
            &cli,
            env(&[
                ("COMPOX_PORT", "6002"),
                ("COMPOX_STORAGE__BACKEND_SETTINGS__PORT", "9"),
            ]),
        )
        .unwrap();
        assert_eq!(s.port, 6000);
        let BackendSettings::Minio(m) = s.storage.backend_settings else {
            panic!("minio")
        };
        assert_eq!((m.port, m.console_port), (9, 1));
        assert_eq!(m.s3_endpoint_url.as_deref(), Some("http://localhost:9"));
    }

    #[test]
    fn yaml_beats_env_and_double_underscore_prefix_is_accepted() {
        let file = yaml("port: 6001\n");
        let s = load_settings(
            Some(file.path()),
            &Overrides::default(),
            env(&[("COMPOX__PORT", "1")]),
        )
        .unwrap();
        assert_eq!(s.port, 6001);
        let s = load_settings(
            None,
            &Overrides::default(),
            env(&[("compox__port", "7001")]),
        )
        .unwrap();
        assert_eq!(s.port, 7001);
    }

    #[test]
    fn unknown_yaml_key_names_key_and_file() {
        let file = yaml("storage:\n  colection_prefix: x\n");
        let err = load_settings(Some(file.path()), &Overrides::default(), env(&[])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("storage.colection_prefix"), "{msg}");
        assert!(msg.contains(&file.path().display().to_string()), "{msg}");
    }

    #[test]
    fn unknown_cli_option_is_a_usage_error() {
        let err = parse_strict_overrides(&["--prot".into(), "1".into()]).unwrap_err();
        assert!(matches!(err, ConfigError::Usage(_)));
        let err = parse_strict_overrides(&["--port".into()]).unwrap_err();
        assert!(matches!(err, ConfigError::Usage(_)));
    }

    #[test]
    fn union_without_tag_is_rejected_and_foreign_variant_key_too() {
        let (_, cli) =
            parse_strict_overrides(&["--storage.backend_settings.port".into(), "1".into()])
                .unwrap();
        let msg = load_settings(None, &cli, env(&[])).unwrap_err().to_string();
        assert!(
            msg.contains("must also name its provider")
                && msg.contains("--storage.backend_settings.provider filesystem"),
            "{msg}"
        );
        let (_, cli) = parse_strict_overrides(&[
            "--inference.backend_settings.worker_number".into(),
            "2".into(),
        ])
        .unwrap();
        let msg = load_settings(None, &cli, env(&[])).unwrap_err().to_string();
        assert!(msg.contains("must also name its executor"), "{msg}");
        let file = yaml("storage:\n  backend_settings:\n    provider: aws\n    port: 1\n");
        assert!(load_settings(Some(file.path()), &Overrides::default(), env(&[])).is_err());
    }

    #[test]
    fn union_fields_coerce_text_from_env_and_cli() {
        let (_, cli) = parse_strict_overrides(&[
            "--inference.backend_settings.executor".into(),
            "fastapi_background_tasks".into(),
            "--inference.backend_settings.worker_number".into(),
            "3".into(),
        ])
        .unwrap();
        let s = load_settings(None, &cli, env(&[])).unwrap();
        assert!(matches!(
            s.inference.backend_settings,
            ExecutorSettings::FastapiBackgroundTasks(ref e) if e.worker_number == 3
        ));
        let s = load_settings(
            None,
            &Overrides::default(),
            env(&[
                ("COMPOX_STORAGE__BACKEND_SETTINGS__PROVIDER", "minio"),
                ("COMPOX_STORAGE__BACKEND_SETTINGS__START_INSTANCE", "no"),
            ]),
        )
        .unwrap();
        let BackendSettings::Minio(m) = s.storage.backend_settings else {
            panic!("minio")
        };
        assert!(!m.start_instance);
    }

    #[test]
    fn unknown_top_level_env_is_ignored_but_nested_is_rejected() {
        assert!(load_settings(
            None,
            &Overrides::default(),
            env(&[("COMPOX_DISABLE_CLI", "1")])
        )
        .is_ok());
        assert!(load_settings(
            None,
            &Overrides::default(),
            env(&[("COMPOX_GUI__FOO", "1")])
        )
        .is_err());
    }

    #[test]
    fn env_json_sections_and_lists() {
        let s = load_settings(
            None,
            &Overrides::default(),
            env(&[
                ("COMPOX_GUI", r#"{"use_systray":true}"#),
                ("COMPOX_INFO__SERVER_TAGS", r#"["a"]"#),
            ]),
        )
        .unwrap();
        assert!(s.gui.use_systray);
        assert_eq!(s.info.server_tags, vec!["a", "compox"]);
    }

    #[test]
    fn loose_parser_takes_next_token_and_splits_commas() {
        let o = parse_loose_overrides(&[
            "--port".into(),
            "5490".into(),
            "--info.server_tags".into(),
            "a, b".into(),
            "--storage.collection_prefix=dev-".into(),
            "--trailing".into(),
        ]);
        assert_eq!(o.0[0], ("port".into(), Json::String("5490".into())));
        assert_eq!(o.0[1].1, serde_json::json!(["a", "b"]));
        assert_eq!(o.0[2].1, Json::String("dev-".into()));
        assert_eq!(o.0[3].1, Json::Null);
    }
}
