//! `pyproject.toml` → algorithm identity and `[tool.compox]` config (`algorithms.md` §1.3–§1.4).
//! Every error names the file, the key and the rule.

use super::params::{lax_bool, normalize_list};
use serde_json::Value;
use std::path::Path;

pub const ALGORITHM_TYPES: [&str; 7] = [
    "Image2Alignment",
    "Image2Image",
    "Image2Segmentation",
    "Image2MultiRegionSegmentation",
    "Image2Embedding",
    "Undefined",
    "Generic",
];
const DEVICES: [&str; 3] = ["cpu", "gpu", "mps"];

/// What a folder's `pyproject.toml` says about the algorithm.
#[derive(Debug, Clone)]
pub struct AlgorithmConfig {
    pub name: String,
    pub major: String,
    pub minor: String,
    pub algorithm_type: String,
    pub tags: Vec<String>,
    pub description: String,
    pub supported_devices: Vec<String>,
    pub default_device: String,
    pub additional_parameters: Vec<Value>,
    pub training_parameters: Vec<Value>,
    pub benchmark_outputs: Vec<Value>,
    pub removable: bool,
    pub exportable: bool,
    pub check_importable: bool,
    pub obfuscate: bool,
    pub pyc_only: bool,
    pub warnings: Vec<String>,
}

/// TOML to JSON, refusing datetimes (the schema rejects them).
fn to_json(v: &toml::Value, at: &str) -> Result<Value, String> {
    Ok(match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .ok_or_else(|| format!("{at}: NaN and infinity are not allowed"))?,
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(_) => return Err(format!("{at}: dates and times are not allowed")),
        toml::Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, x)| to_json(x, &format!("{at}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        toml::Value::Table(t) => Value::Object(
            t.iter()
                .map(|(k, x)| Ok((k.clone(), to_json(x, &format!("{at}.{k}"))?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

/// Python truthiness of a raw `[tool.compox]` switch.
fn truthy(v: &toml::Value) -> bool {
    match v {
        toml::Value::Boolean(b) => *b,
        toml::Value::Integer(i) => *i != 0,
        toml::Value::Float(f) => *f != 0.0,
        toml::Value::String(s) => !s.is_empty(),
        toml::Value::Array(a) => !a.is_empty(),
        toml::Value::Table(t) => !t.is_empty(),
        toml::Value::Datetime(_) => true,
    }
}

fn is_decimal(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// The rule for an algorithm name, whether from `[project].name` or the `algorithm_name`
/// override (`algorithms.md` §1.3). `~` separates the parts of a record key, and storage refuses
/// keys with a NUL or a `.`/`..` path segment, so such a name could never be stored or found.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.contains('~') {
        return Err(format!("must not contain '~' (got {name:?})"));
    }
    if name.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if name.contains('\0') {
        return Err(format!("must not contain a NUL character (got {name:?})"));
    }
    if name.split(['/', '\\']).any(|seg| seg == "." || seg == "..") {
        return Err(format!(
            "must not contain a '.' or '..' path segment (got {name:?})"
        ));
    }
    Ok(())
}

/// Why a valid name still deserves a warning (`algorithms.md` §1.3), if it does.
pub fn name_warning(name: &str) -> Option<String> {
    (name.contains(['/', '\\']) || name.chars().any(char::is_control)).then(|| {
        format!("algorithm name {name:?} contains a slash, backslash or control character")
    })
}

/// The rule for a major or minor version, whether from `[project].version` or the
/// `algorithm_major_version` override: an ASCII decimal integer, kept as written (`"01"` stays
/// `"01"`), that fits the `i64` the API routes and the minor-version rule parse it into.
pub fn check_version_number(v: &str) -> Result<(), String> {
    if !is_decimal(v) {
        return Err(format!("must be a non-negative decimal integer, got {v:?}"));
    }
    if v.parse::<i64>().is_err() {
        return Err(format!("must be at most {}, got {v:?}", i64::MAX));
    }
    Ok(())
}

/// Reads and validates `<root>/pyproject.toml`.
pub fn read(root: &Path) -> Result<AlgorithmConfig, String> {
    let path = root.join("pyproject.toml");
    let file = path.display().to_string();
    let not_found = || format!("pyproject.toml file not found in {}.", root.display());
    // A FIFO or device would block the read (or never end): only regular files are read.
    if !std::fs::metadata(&path).map_err(|_| not_found())?.is_file() {
        return Err(format!("{file} is not a regular file."));
    }
    let text = std::fs::read_to_string(&path).map_err(|_| not_found())?;
    let doc: toml::Table = toml::from_str(&text).map_err(|e| {
        format!(
            "Invalid pyproject.toml in {}: {}",
            root.display(),
            e.message()
        )
    })?;
    parse(&doc, &file)
}

pub fn parse(doc: &toml::Table, file: &str) -> Result<AlgorithmConfig, String> {
    let err = |key: &str, rule: String| format!("{file}: {key}: {rule}");
    let project = doc.get("project").and_then(toml::Value::as_table);
    let get_str = |key: &str| -> Result<String, String> {
        match project.and_then(|p| p.get(key)) {
            Some(toml::Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(err(&format!("[project].{key}"), "must be a string".into())),
            None => Err(err(&format!("[project].{key}"), "is required".into())),
        }
    };
    let name = get_str("name")?;
    check_name(&name).map_err(|rule| err("[project].name", rule))?;
    let version = get_str("version")?;
    let mut parts = version.split('.');
    let major = parts.next().unwrap_or_default().to_string();
    let minor = parts.next().map(str::to_string);
    let Some(minor) = minor else {
        return Err(err(
            "[project].version",
            format!("must look like MAJOR.MINOR[...], got {version:?}"),
        ));
    };
    for (part, value) in [("major", &major), ("minor", &minor)] {
        check_version_number(value).map_err(|rule| {
            err(
                "[project].version",
                format!("{part} {rule} (version {version:?})"),
            )
        })?;
    }

    let mut warnings: Vec<String> = name_warning(&name)
        .map(|w| format!("{file}: [project].name: {w}"))
        .into_iter()
        .collect();
    let empty = toml::Table::new();
    let tool = match doc.get("tool").and_then(|t| t.get("compox")) {
        Some(toml::Value::Table(t)) => t,
        Some(_) => return Err(err("[tool.compox]", "must be a table".into())),
        None => {
            warnings.push(format!("{file}: no [tool.compox] table; using defaults"));
            &empty
        }
    };
    let key = |k: &str| format!("[tool.compox].{k}");
    let json_of = |k: &str| -> Result<Option<Value>, String> {
        tool.get(k)
            .map(|v| to_json(v, &key(k)))
            .transpose()
            .map_err(|e| format!("{file}: {e}"))
    };
    let string_field = |k: &str, default: &str| -> Result<String, String> {
        match tool.get(k) {
            None => Ok(default.to_string()),
            Some(toml::Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(err(&key(k), "must be a string".into())),
        }
    };
    let string_list = |k: &str, default: Vec<String>| -> Result<Vec<String>, String> {
        match tool.get(k) {
            None => Ok(default),
            Some(toml::Value::Array(items)) => items
                .iter()
                .map(|i| {
                    i.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| err(&key(k), "must be a list of strings".into()))
                })
                .collect(),
            Some(_) => Err(err(&key(k), "must be a list of strings".into())),
        }
    };
    let bool_field = |k: &str, default: bool| -> Result<bool, String> {
        match json_of(k)? {
            None => Ok(default),
            Some(v) => {
                lax_bool(&v).ok_or_else(|| err(&key(k), format!("must be a boolean, got {v}")))
            }
        }
    };

    let algorithm_type = string_field("algorithm_type", "Undefined")?;
    if !ALGORITHM_TYPES.contains(&algorithm_type.as_str()) {
        return Err(err(
            &key("algorithm_type"),
            format!(
                "must be one of {}, got {algorithm_type:?}",
                ALGORITHM_TYPES.join(", ")
            ),
        ));
    }
    let tags = string_list("tags", Vec::new())?;
    let description = string_field("description", "")?;
    let supported_devices = string_list("supported_devices", vec!["cpu".into()])?;
    if let Some(bad) = supported_devices
        .iter()
        .find(|d| !DEVICES.contains(&d.as_str()))
    {
        return Err(err(
            &key("supported_devices"),
            format!("each device must be cpu, gpu or mps, got {bad:?}"),
        ));
    }
    let default_device = string_field("default_device", "cpu")?;
    if !["cpu", "gpu", "mps", ""].contains(&default_device.as_str()) {
        return Err(err(
            &key("default_device"),
            format!("must be cpu, gpu, mps or \"\", got {default_device:?}"),
        ));
    }
    let in_file = |e: String| format!("{file}: {e}");
    let additional_parameters = normalize_list(
        json_of("additional_parameters")?.as_ref(),
        &key("additional_parameters"),
    )
    .map_err(in_file)?;
    let training_parameters = normalize_list(
        json_of("training_parameters")?.as_ref(),
        &key("training_parameters"),
    )
    .map_err(in_file)?;
    let benchmark_outputs = normalize_list(
        json_of("benchmark_outputs")?.as_ref(),
        &key("benchmark_outputs"),
    )
    .map_err(in_file)?;
    let removable = bool_field("removable", false)?;
    let exportable = bool_field("exportable", true)?;

    if algorithm_type == "Undefined" {
        warnings.push(format!("{file}: algorithm_type is Undefined"));
    }
    if tags.is_empty() {
        warnings.push(format!("{file}: no tags"));
    }
    if description.is_empty() {
        warnings.push(format!("{file}: empty description"));
    }
    if !supported_devices.contains(&default_device) {
        return Err(err(
            &key("default_device"),
            format!("Default device '{default_device}' is not in the list of supported devices {supported_devices:?}"),
        ));
    }
    for deprecated in ["hash_module", "hash_assets"] {
        if tool.contains_key(deprecated) {
            warnings.push(format!(
                "{file}: {} is deprecated and ignored",
                key(deprecated)
            ));
        }
    }
    let switch = |k: &str, default: bool| tool.get(k).map(truthy).unwrap_or(default);

    Ok(AlgorithmConfig {
        name,
        major,
        minor,
        algorithm_type,
        tags,
        description,
        supported_devices,
        default_device,
        additional_parameters,
        training_parameters,
        benchmark_outputs,
        removable,
        exportable,
        check_importable: switch("check_importable", false),
        obfuscate: switch("obfuscate", true),
        pyc_only: switch("pyc_only", true),
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<AlgorithmConfig, String> {
        parse(&toml::from_str(text).unwrap(), "x/pyproject.toml")
    }

    #[test]
    fn version_split_and_defaults() {
        let c = p("[project]\nname='a'\nversion='1.2.3'\n").unwrap();
        assert_eq!((c.major.as_str(), c.minor.as_str()), ("1", "2"));
        assert_eq!(c.supported_devices, vec!["cpu"]);
        assert!(c.exportable && !c.removable && c.obfuscate && c.pyc_only && !c.check_importable);
        assert_eq!(
            p("[project]\nname='a'\nversion='01.2'\n").unwrap().major,
            "01"
        );
    }

    #[test]
    fn bad_versions_and_names_are_rejected() {
        for v in ["3", "v1.0", "1.2rc1"] {
            let e = p(&format!("[project]\nname='a'\nversion='{v}'\n")).unwrap_err();
            assert!(e.contains("[project].version"), "{e}");
        }
        assert!(p("[project]\nname='a~b'\nversion='1.0'\n")
            .unwrap_err()
            .contains("'~'"));
        assert!(p("[project]\nversion='1.0'\n")
            .unwrap_err()
            .contains("[project].name"));
    }

    #[test]
    fn names_that_cannot_make_a_storage_key_are_rejected() {
        for bad in ["../../evil", "..", "a/./b", "a\\..\\b", "a\0b", "  "] {
            let text = format!(
                "[project]\nname={}\nversion='1.0'\n",
                toml::Value::from(bad)
            );
            let e = p(&text).unwrap_err();
            assert!(
                e.starts_with("x/pyproject.toml: [project].name: must"),
                "{bad:?}: {e}"
            );
        }
        for ok in ["...", "a.b", "org/algo", "Ünïcode name", ".hidden"] {
            assert!(check_name(ok).is_ok(), "{ok:?}");
        }
        let c = p("[project]\nname='org/algo'\nversion='1.0'\n").unwrap();
        assert!(
            c.warnings.iter().any(|w| w.contains("slash")),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn version_numbers_must_fit_an_i64() {
        assert!(check_version_number("9223372036854775807").is_ok());
        assert!(check_version_number("007").is_ok());
        for bad in ["", "abc", "-1", "+1", " 1", "1.0", "9223372036854775808"] {
            assert!(check_version_number(bad).is_err(), "{bad:?}");
        }
        let e = p("[project]\nname='a'\nversion='1.99999999999999999999'\n").unwrap_err();
        assert!(
            e.contains("[project].version: minor must be at most"),
            "{e}"
        );
    }

    #[test]
    fn default_device_must_be_supported() {
        let e = p("[project]\nname='a'\nversion='1.0'\n[tool.compox]\nsupported_devices=['cpu']\ndefault_device='gpu'\n")
            .unwrap_err();
        assert!(e.contains("Default device 'gpu' is not in the list"), "{e}");
    }

    #[test]
    fn lax_flags_and_truthy_switches() {
        let c = p("[project]\nname='a'\nversion='1.0'\n[tool.compox]\nremovable='yes'\nexportable=0\npyc_only='false'\n")
            .unwrap();
        assert!(c.removable && !c.exportable);
        assert!(
            c.pyc_only,
            "the string 'false' is truthy, as in the original"
        );
        assert!(p("[project]\nname='a'\nversion='1.0'\n[tool.compox]\nremovable=2\n").is_err());
    }

    #[test]
    fn unknown_type_names_key() {
        let e = p("[project]\nname='a'\nversion='1.0'\n[tool.compox]\nalgorithm_type='Segmentation2Segmentation'\n")
            .unwrap_err();
        assert!(
            e.contains("x/pyproject.toml: [tool.compox].algorithm_type"),
            "{e}"
        );
    }
}
