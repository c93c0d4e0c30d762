//! Algorithm records (`algorithms.md` §2.6, §3.1, §4) and their API view (`rest-api.md` A1).

use super::params::normalize_param;
use super::pyproject::AlgorithmConfig;
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;

/// `(algorithm_id, name, major)` of a 3-part key, or of a legacy 4-part key.
pub fn parse_key(key: &str) -> Option<(&str, &str, &str)> {
    let parts: Vec<&str> = key.split('~').collect();
    match parts.as_slice() {
        [id, name, major] | [id, name, major, _] => Some((id, name, major)),
        _ => None,
    }
}

pub fn record_key(record: &Value) -> String {
    format!(
        "{}~{}~{}",
        record["algorithm_id"].as_str().unwrap_or_default(),
        record["algorithm_name"].as_str().unwrap_or_default(),
        record["algorithm_major_version"]
            .as_str()
            .unwrap_or_default()
    )
}

/// Whether the record key of `name` and `major` can be stored: the checks every backend makes
/// and the filesystem's file-name limit, so that a record can move between backends in a bundle.
pub fn check_key_fits(name: &str, major: &str) -> Result<(), String> {
    // Every algorithm id is a hyphenated UUID of this length.
    let key = format!("{}~{name}~{major}", uuid::Uuid::nil());
    crate::storage::filesystem::file_name(&key)
        .map(drop)
        .map_err(|e| match e {
            crate::storage::StorageError::InvalidKey { reason, .. } => format!(
                "the record key <algorithm id>~{name}~{major} is not a valid storage key: {reason}"
            ),
            other => other.to_string(),
        })
}

pub fn minor_entry(timestamp: &str, module_id: &str, assets: &Map<String, Value>) -> Value {
    json!({ "timestamp": timestamp, "module_id": module_id, "assets": assets })
}

/// A new record for a new `(name, major)`, fields in the deployer's order.
pub fn new_record(
    id: &str,
    name: &str,
    major: &str,
    cfg: &AlgorithmConfig,
    entry: Value,
    timestamp: &str,
) -> Value {
    let mut minors = Map::new();
    minors.insert(cfg.minor.clone(), entry);
    json!({
        "algorithm_id": id,
        "algorithm_name": name,
        "algorithm_major_version": major,
        "latest_algorithm_minor_version": cfg.minor,
        "algorithm_minor_version": minors,
        "algorithm_type": cfg.algorithm_type,
        "algorithm_tags": cfg.tags,
        "algorithm_description": cfg.description,
        "supported_devices": cfg.supported_devices,
        "default_device": cfg.default_device,
        "additional_parameters": cfg.additional_parameters,
        "training_parameters": cfg.training_parameters,
        "benchmark_outputs": cfg.benchmark_outputs,
        "removable": cfg.removable,
        "exportable": cfg.exportable,
        "timestamp": timestamp,
    })
}

/// The insertion rule: adds minor `latest + 1` unless the latest entry has the same module and
/// assets. Returns whether a minor was added.
pub fn insert_minor(
    record: &mut Value,
    module_id: &str,
    assets: &Map<String, Value>,
    timestamp: &str,
) -> bool {
    let latest = record
        .get("latest_algorithm_minor_version")
        .and_then(Value::as_str)
        .map(str::to_string);
    let minors = record
        .get("algorithm_minor_version")
        .and_then(Value::as_object);
    let latest_entry = latest.as_ref().and_then(|l| minors.and_then(|m| m.get(l)));
    if let Some(entry) = latest_entry {
        let same_module = entry.get("module_id").and_then(Value::as_str) == Some(module_id);
        let same_assets = entry.get("assets").and_then(Value::as_object) == Some(assets);
        if same_module && same_assets {
            return false;
        }
    }
    let next = latest
        .and_then(|l| l.parse::<i64>().ok())
        .map(|l| l + 1)
        .unwrap_or(0)
        .to_string();
    if !record
        .get("algorithm_minor_version")
        .is_some_and(Value::is_object)
    {
        record["algorithm_minor_version"] = json!({});
    }
    record["algorithm_minor_version"][&next] = minor_entry(timestamp, module_id, assets);
    record["latest_algorithm_minor_version"] = json!(next);
    true
}

/// Module ids, asset ids and checkpoint ids a record refers to.
pub fn referenced(record: &Value) -> (BTreeSet<String>, BTreeSet<String>, Vec<String>) {
    let mut modules = BTreeSet::new();
    let mut assets = BTreeSet::new();
    if let Some(minors) = record
        .get("algorithm_minor_version")
        .and_then(Value::as_object)
    {
        for entry in minors.values() {
            if let Some(m) = entry
                .get("module_id")
                .and_then(Value::as_str)
                .filter(|m| !m.is_empty())
            {
                modules.insert(m.to_string());
            }
            if let Some(a) = entry.get("assets").and_then(Value::as_object) {
                assets.extend(
                    a.values()
                        .filter_map(Value::as_str)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string),
                );
            }
        }
    }
    let checkpoints = record
        .get("checkpoints")
        .and_then(Value::as_array)
        .map(|c| {
            c.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    (modules, assets, checkpoints)
}

/// One item of `GET /api/v0/algorithm/...`.
#[derive(Debug, Clone)]
pub enum ApiItem {
    /// `AlgorithmRegisteredResponse`.
    Registered(Value),
    /// `FailedAlgorithmRegisteredResponse` (A1 answers it with 200; A2 skips it).
    Failed(Value),
    /// A required key is missing: the request fails with 500.
    Broken(String),
}

const REQUIRED: [&str; 11] = [
    "algorithm_id",
    "algorithm_name",
    "algorithm_major_version",
    "algorithm_minor_version",
    "latest_algorithm_minor_version",
    "algorithm_type",
    "algorithm_tags",
    "algorithm_description",
    "supported_devices",
    "default_device",
    "additional_parameters",
];

fn validate_params(record: &Value, key: &str, errors: &mut Vec<String>) -> Value {
    match record.get(key) {
        Some(Value::Array(items)) => Value::Array(
            items
                .iter()
                .enumerate()
                .filter_map(|(i, p)| match normalize_param(p, &format!("{key}.{i}")) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        errors.push(e);
                        None
                    }
                })
                .collect(),
        ),
        // A missing `training_parameters` defaults to [] (the spec's recommended fix).
        None | Some(Value::Null) if key != "additional_parameters" => json!([]),
        Some(other) => {
            errors.push(format!("{key}: Input should be a valid list, got {other}"));
            json!([])
        }
        None => json!([]),
    }
}

fn str_list(v: &Value) -> Option<Vec<String>> {
    v.as_array()?
        .iter()
        .map(|x| x.as_str().map(str::to_string))
        .collect()
}

/// A legacy 2.x record: flat string `algorithm_minor_version`, top-level `module_id`/`assets`.
fn is_legacy(record: &Value) -> bool {
    record
        .get("algorithm_minor_version")
        .is_some_and(Value::is_string)
        && record.get("algorithm_name").is_some()
        && record.get("algorithm_major_version").is_some()
}

/// Builds the API view of a stored record.
pub fn api_item(record: &Value) -> ApiItem {
    // Legacy records lack `latest_algorithm_minor_version`; listing must not fail on them
    // (`algorithms.md` §3.1), so they become "not configured correctly" until redeployed.
    if is_legacy(record) {
        return failed(
            record,
            &["algorithm_minor_version: legacy Compox 2.x record; redeploy the algorithm".into()],
        );
    }
    if let Some(missing) = REQUIRED.iter().find(|k| record.get(**k).is_none()) {
        return ApiItem::Broken(format!("algorithm record lacks required key {missing}"));
    }
    let mut errors = Vec::new();
    let text = |k: &str, errors: &mut Vec<String>| match record.get(k) {
        Some(Value::String(s)) => json!(s),
        other => {
            errors.push(format!(
                "{k}: Input should be a valid string, got {}",
                other.cloned().unwrap_or(Value::Null)
            ));
            Value::Null
        }
    };
    let list = |k: &str, errors: &mut Vec<String>| match record.get(k).and_then(str_list) {
        Some(l) => json!(l),
        None => {
            errors.push(format!("{k}: Input should be a valid list of strings"));
            Value::Null
        }
    };
    let minors: Vec<String> = match record.get("algorithm_minor_version") {
        Some(Value::Object(m)) => m.keys().cloned().collect(),
        _ => {
            errors.push("algorithm_minor_version: Input should be a valid dictionary".into());
            Vec::new()
        }
    };
    let body = json!({
        "algorithm_id": text("algorithm_id", &mut errors),
        "algorithm_name": text("algorithm_name", &mut errors),
        "algorithm_version": text("algorithm_major_version", &mut errors),
        "algorithm_minor_versions": minors,
        "latest_algorithm_minor_version": text("latest_algorithm_minor_version", &mut errors),
        "algorithm_minor_version": text("latest_algorithm_minor_version", &mut errors),
        "algorithm_type": text("algorithm_type", &mut errors),
        "algorithm_tags": list("algorithm_tags", &mut errors),
        "algorithm_description": text("algorithm_description", &mut errors),
        "supported_devices": list("supported_devices", &mut errors),
        "default_device": text("default_device", &mut errors),
        "additional_parameters": validate_params(record, "additional_parameters", &mut errors),
        "training_parameters": validate_params(record, "training_parameters", &mut errors),
        "benchmark_outputs": validate_params(record, "benchmark_outputs", &mut errors),
        "removable": record.get("removable").and_then(Value::as_bool).unwrap_or(false),
        "exportable": record.get("exportable").and_then(Value::as_bool).unwrap_or(true),
        "storage_metrics": record.get("storage_metrics").cloned().unwrap_or(Value::Null),
    });
    if errors.is_empty() {
        return ApiItem::Registered(body);
    }
    failed(record, &errors)
}

/// `FailedAlgorithmRegisteredResponse` for `record` with pydantic-style error lines.
fn failed(record: &Value, errors: &[String]) -> ApiItem {
    let name = &record["algorithm_name"];
    let major = &record["algorithm_major_version"];
    ApiItem::Failed(json!({
        "algorithm_name": name.as_str().map(str::to_string).unwrap_or_else(|| name.to_string()),
        "algorithm_version": major.as_str().map(str::to_string).unwrap_or_else(|| major.to_string()),
        "message": format!(
            "The algorithm has not been configured correctly.\n{} validation error(s) for AlgorithmRegisteredResponse\n{}",
            errors.len(),
            errors.join("\n")
        ),
    }))
}

/// Writes a record the way the deployer does: JSON with four-space indentation.
pub fn to_pretty_bytes(record: &Value) -> Vec<u8> {
    use serde::Serialize;
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    let _ = record.serialize(&mut ser);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keys_must_fit_every_backend() {
        assert!(check_key_fits("noop", "1").is_ok());
        let e = check_key_fits("../../evil", "1").unwrap_err();
        assert!(e.contains("'..' path segment"), "{e}");
        // 162 bytes of name and major make a 200-byte key, the storage limit.
        assert!(check_key_fits(&"n".repeat(160), "1").is_ok());
        assert!(check_key_fits(&"n".repeat(161), "10").is_err());
        // Percent-encoding triples non-ASCII bytes; the file name must stay within 255.
        let e = check_key_fits(&"é".repeat(60), "1").unwrap_err();
        assert!(e.contains("too long once encoded"), "{e}");
    }

    fn rec() -> Value {
        json!({
            "algorithm_id": "id", "algorithm_name": "n", "algorithm_major_version": "1",
            "latest_algorithm_minor_version": "0",
            "algorithm_minor_version": {"0": {"timestamp": "t", "module_id": "m", "assets": {"a": "x"}}},
            "algorithm_type": "Generic", "algorithm_tags": [], "algorithm_description": "",
            "supported_devices": ["cpu"], "default_device": "cpu", "additional_parameters": [],
        })
    }

    #[test]
    fn insertion_rule() {
        let mut r = rec();
        let assets: Map<String, Value> = serde_json::from_value(json!({"a": "x"})).unwrap();
        assert!(!insert_minor(&mut r, "m", &assets, "t2"));
        assert!(insert_minor(&mut r, "m2", &assets, "t2"));
        assert_eq!(r["latest_algorithm_minor_version"], "1");
        let changed: Map<String, Value> = serde_json::from_value(json!({"a": "y"})).unwrap();
        assert!(insert_minor(&mut r, "m2", &changed, "t3"));
        assert_eq!(r["latest_algorithm_minor_version"], "2");
    }

    #[test]
    fn api_item_defaults_missing_training_parameters() {
        let ApiItem::Registered(v) = api_item(&rec()) else {
            panic!("registered")
        };
        assert_eq!(v["training_parameters"], json!([]));
        assert_eq!(v["algorithm_version"], "1");
        assert_eq!(v["algorithm_minor_versions"], json!(["0"]));
        assert_eq!(v["algorithm_minor_version"], "0");
    }

    #[test]
    fn api_item_bad_param_is_failed_and_missing_key_is_broken() {
        let mut r = rec();
        r["additional_parameters"] =
            json!([{"name": "x", "config": {"type": "float", "default": 1}}]);
        assert!(matches!(api_item(&r), ApiItem::Failed(_)));
        r.as_object_mut().unwrap().remove("default_device");
        assert!(matches!(api_item(&r), ApiItem::Broken(_)));
    }

    #[test]
    fn legacy_record_is_failed_not_broken() {
        let legacy = json!({
            "algorithm_id": "id", "algorithm_name": "old", "algorithm_major_version": "1",
            "algorithm_minor_version": "0", "module_id": "m", "assets": {},
        });
        let ApiItem::Failed(v) = api_item(&legacy) else {
            panic!("failed")
        };
        assert_eq!(v["algorithm_name"], "old");
        assert!(v["message"].as_str().unwrap().contains("legacy"));
    }

    #[test]
    fn keys() {
        assert_eq!(parse_key("a~b~1"), Some(("a", "b", "1")));
        assert_eq!(parse_key("a~b~1~2"), Some(("a", "b", "1")));
        assert_eq!(parse_key("a~b"), None);
    }
}
