//! The record rules of the semantic import (`platform.md` §5.5 steps 4–7), free of I/O so they
//! can be tested alone: which dependencies to copy, how a checkpoint manifest is rewritten, and
//! how a bundled record merges into the stored one.

use crate::deploy::record;
use serde_json::{json, Map, Value};

/// Top-level fields a bundled record overwrites on every import (`rest-api.md` §7.3).
pub const OVERWRITTEN_FIELDS: [&str; 9] = [
    "algorithm_type",
    "algorithm_tags",
    "algorithm_description",
    "supported_devices",
    "default_device",
    "additional_parameters",
    "training_parameters",
    "removable",
    "exportable",
];

/// Why a bundled algorithm record cannot be imported, if it cannot: it must say which
/// algorithm it is (string id, name and major version that make a storage key), hold its minor
/// versions as a map of entries, and be complete enough to list (the original's import fails
/// on the same records, `platform.md` §5.5 steps 3–4; stored, they would break every listing).
pub fn check_bundled_record(s: &Value) -> Result<(), String> {
    let text = |field: &str| match s.get(field) {
        Some(Value::String(v)) if !v.is_empty() => Ok(v.as_str()),
        other => Err(format!(
            "{field} must be a non-empty string, got {}",
            other.cloned().unwrap_or(Value::Null)
        )),
    };
    let id = text("algorithm_id")?;
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(format!("algorithm_id {id:?} is not a UUID"));
    }
    record::check_key_fits(text("algorithm_name")?, text("algorithm_major_version")?)?;
    let minors = s
        .get("algorithm_minor_version")
        .and_then(Value::as_object)
        .filter(|m| !m.is_empty())
        .ok_or("algorithm_minor_version must be a non-empty map of minor versions")?;
    if let Some((minor, _)) = minors.iter().find(|(_, entry)| !entry.is_object()) {
        return Err(format!("minor version {minor} is not an object"));
    }
    if latest_minor(s).is_none() {
        return Err("latest_algorithm_minor_version names no stored minor version".into());
    }
    match record::api_item(s) {
        record::ApiItem::Broken(why) => Err(why),
        _ => Ok(()),
    }
}

/// The bundled record's latest minor entry, when it has one.
pub fn latest_minor(s: &Value) -> Option<&Value> {
    let latest = minor_name(s.get("latest_algorithm_minor_version")?)?;
    s.get("algorithm_minor_version")?.get(latest.as_str())
}

fn minor_name(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Module ids and asset ids to copy: every minor's for a new algorithm, only the latest's when
/// the algorithm already exists in the target (step 4).
pub fn dependencies(s: &Value, exists: bool) -> (Vec<String>, Vec<String>) {
    let entries: Vec<&Value> = if exists {
        latest_minor(s).into_iter().collect()
    } else {
        s.get("algorithm_minor_version")
            .and_then(Value::as_object)
            .map(|m| m.values().collect())
            .unwrap_or_default()
    };
    let (mut modules, mut assets) = (Vec::new(), Vec::new());
    for entry in entries {
        if let Some(m) = entry.get("module_id").and_then(Value::as_str) {
            if !m.is_empty() && !modules.iter().any(|x| x == m) {
                modules.push(m.to_string());
            }
        }
        for id in asset_ids(entry) {
            if !assets.contains(&id) {
                assets.push(id);
            }
        }
    }
    (modules, assets)
}

/// The asset ids of a minor entry or a checkpoint manifest (`assets` values).
pub fn asset_ids(v: &Value) -> Vec<String> {
    v.get("assets")
        .and_then(Value::as_object)
        .map(|a| {
            a.values()
                .filter_map(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Points a checkpoint manifest at the target algorithm (step 5). `parent_algorithm_key` is
/// rewritten too when present, so checkpoint deletion keeps finding the record (the original
/// leaves it stale; recommended deviation).
pub fn rewrite_checkpoint(manifest: &mut Value, target_id: &str, name: &str, major: &str) {
    if let Some(m) = manifest.as_object_mut() {
        m.insert("parent_algorithm_id".into(), json!(target_id));
        if m.get("parent_algorithm_key").is_some_and(|k| !k.is_null()) {
            m.insert(
                "parent_algorithm_key".into(),
                json!(format!("{target_id}~{name}~{major}")),
            );
        }
    }
}

/// The checkpoint ids a record lists.
pub fn checkpoint_ids(v: &Value) -> Vec<String> {
    v.get("checkpoints")
        .and_then(Value::as_array)
        .map(|c| {
            c.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The merged record M of step 6 (plus `source_backend_version` of step 7). `now` stamps a
/// new minor. Fails when the stored record's latest minor names an entry it does not have.
pub fn merge_record(
    s: &Value,
    e: Option<&Value>,
    target_id: &str,
    now: &str,
) -> Result<Value, String> {
    let mut m = match e {
        None => s.clone(),
        Some(e) => {
            let mut m = e.clone();
            if let Some(l) = latest_minor(s) {
                apply_latest_minor(&mut m, l, now)?;
            }
            m
        }
    };
    if !m.is_object() {
        return Err("the algorithm record is not a JSON object".into());
    }
    for field in OVERWRITTEN_FIELDS {
        if let Some(v) = s.get(field) {
            m[field] = v.clone();
        }
    }
    m["algorithm_id"] = json!(target_id);
    if !m.get("checkpoints").is_some_and(Value::is_array) {
        m["checkpoints"] = json!([]);
    }
    for id in checkpoint_ids(s) {
        let list = m["checkpoints"].as_array_mut().expect("made a list above");
        if !list.iter().any(|x| x.as_str() == Some(id.as_str())) {
            list.push(json!(id));
        }
    }
    m["source_backend_version"] = json!(env!("CARGO_PKG_VERSION"));
    Ok(m)
}

/// The minor-version insertion rule with the bundled latest entry `l`.
fn apply_latest_minor(m: &mut Value, l: &Value, now: &str) -> Result<(), String> {
    let latest = m.get("latest_algorithm_minor_version").and_then(minor_name);
    if let Some(latest) = &latest {
        let present = m
            .get("algorithm_minor_version")
            .and_then(|v| v.get(latest.as_str()))
            .is_some();
        if !present {
            return Err(format!(
                "the stored record's latest minor version {latest:?} is missing from its \
                 algorithm_minor_version"
            ));
        }
        latest
            .parse::<i64>()
            .map_err(|_| format!("the stored latest minor version {latest:?} is not a number"))?;
    }
    let module_id = l
        .get("module_id")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let assets: Map<String, Value> = l
        .get("assets")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    record::insert_minor(m, module_id, &assets, now);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundled() -> Value {
        json!({
            "algorithm_id": "src", "algorithm_name": "n", "algorithm_major_version": "1",
            "latest_algorithm_minor_version": "1",
            "algorithm_minor_version": {
                "0": {"timestamp": "t0", "module_id": "m0", "assets": {"a": "x0"}},
                "1": {"timestamp": "t1", "module_id": "m1", "assets": {"a": "x1", "b": "y"}},
            },
            "algorithm_description": "new text", "removable": false, "exportable": false,
            "benchmark_outputs": ["from bundle"], "checkpoints": ["c1"],
        })
    }

    fn stored() -> Value {
        json!({
            "algorithm_id": "tgt", "algorithm_name": "n", "algorithm_major_version": "1",
            "latest_algorithm_minor_version": "4",
            "algorithm_minor_version": {"4": {"timestamp": "t", "module_id": "old", "assets": {}}},
            "algorithm_description": "old text", "removable": true, "benchmark_outputs": [],
            "checkpoints": ["c0"], "storage_metrics": {"module_count": 1},
        })
    }

    #[test]
    fn new_algorithm_copies_everything_with_its_id() {
        let s = bundled();
        assert_eq!(
            dependencies(&s, false),
            (
                vec!["m0".into(), "m1".into()],
                vec!["x0".into(), "x1".into(), "y".into()]
            )
        );
        let m = merge_record(&s, None, "src", "now").unwrap();
        assert_eq!(m["algorithm_minor_version"], s["algorithm_minor_version"]);
        assert_eq!(m["source_backend_version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(m["checkpoints"], json!(["c1"]));
    }

    #[test]
    fn existing_algorithm_gets_one_new_minor_and_keeps_its_id() {
        let s = bundled();
        assert_eq!(
            dependencies(&s, true),
            (vec!["m1".into()], vec!["x1".into(), "y".into()])
        );
        let m = merge_record(&s, Some(&stored()), "tgt", "now").unwrap();
        assert_eq!(m["algorithm_id"], "tgt");
        assert_eq!(m["latest_algorithm_minor_version"], "5");
        assert_eq!(
            m["algorithm_minor_version"]["5"],
            json!({"timestamp": "now", "module_id": "m1", "assets": {"a": "x1", "b": "y"}})
        );
        assert!(
            m["algorithm_minor_version"].get("0").is_none(),
            "older bundled minors are ignored"
        );
        assert_eq!(m["algorithm_description"], "new text");
        assert_eq!(m["removable"], false);
        assert_eq!(m["exportable"], false);
        assert_eq!(
            m["benchmark_outputs"],
            json!([]),
            "benchmark_outputs is not copied"
        );
        assert_eq!(
            m["storage_metrics"],
            json!({"module_count": 1}),
            "metrics are not recomputed"
        );
        assert_eq!(m["checkpoints"], json!(["c0", "c1"]));
        // Importing the merged state again adds nothing.
        let again = merge_record(&s, Some(&m), "tgt", "later").unwrap();
        assert_eq!(again, m);
    }

    #[test]
    fn same_module_and_assets_add_no_minor() {
        let mut e = stored();
        e["algorithm_minor_version"]["4"] = bundled()["algorithm_minor_version"]["1"].clone();
        let m = merge_record(&bundled(), Some(&e), "tgt", "now").unwrap();
        assert_eq!(m["latest_algorithm_minor_version"], "4");
        let mut no_latest = stored();
        no_latest
            .as_object_mut()
            .unwrap()
            .remove("latest_algorithm_minor_version");
        let m = merge_record(&bundled(), Some(&no_latest), "tgt", "now").unwrap();
        assert_eq!(m["latest_algorithm_minor_version"], "0");
    }

    #[test]
    fn latest_naming_a_missing_minor_fails() {
        let mut e = stored();
        e["latest_algorithm_minor_version"] = json!("9");
        assert!(merge_record(&bundled(), Some(&e), "tgt", "now")
            .unwrap_err()
            .contains("\"9\""));
    }

    #[test]
    fn bundled_records_must_name_their_algorithm_and_minors() {
        let complete = || {
            let mut s = bundled();
            s["algorithm_id"] = json!("8c0e2a2e-0000-11f1-8000-000000000001");
            for (field, value) in [
                ("algorithm_type", json!("Generic")),
                ("algorithm_tags", json!([])),
                ("supported_devices", json!(["cpu"])),
                ("default_device", json!("cpu")),
                ("additional_parameters", json!([])),
            ] {
                s[field] = value;
            }
            s
        };
        assert_eq!(check_bundled_record(&complete()), Ok(()));
        let broken = |edit: &dyn Fn(&mut Value)| {
            let mut s = complete();
            edit(&mut s);
            check_bundled_record(&s).unwrap_err()
        };
        assert!(broken(&|s| s["algorithm_id"] = json!(5)).contains("algorithm_id"));
        assert!(broken(&|s| s["algorithm_id"] = json!("abc")).contains("not a UUID"));
        assert!(broken(&|s| s["algorithm_name"] = json!("n".repeat(300))).contains("storage key"));
        assert!(broken(&|s| s["algorithm_minor_version"] = json!({})).contains("non-empty"));
        assert!(
            broken(&|s| s["algorithm_minor_version"]["0"] = json!("x")).contains("not an object")
        );
        assert!(broken(&|s| s["latest_algorithm_minor_version"] = json!("7")).contains("names no"));
        assert!(broken(&|s| {
            s.as_object_mut().unwrap().remove("algorithm_type");
        })
        .contains("lacks required key"));
    }

    #[test]
    fn checkpoint_rewrite() {
        let mut c = json!({"checkpoint_id": "c1", "parent_algorithm_id": "src", "parent_algorithm_key": "src~n~1", "assets": {"w": "a1"}});
        rewrite_checkpoint(&mut c, "tgt", "n", "1");
        assert_eq!(c["parent_algorithm_id"], "tgt");
        assert_eq!(c["parent_algorithm_key"], "tgt~n~1");
        let mut old = json!({"parent_algorithm_id": "src", "parent_algorithm_key": null});
        rewrite_checkpoint(&mut old, "tgt", "n", "1");
        assert!(old["parent_algorithm_key"].is_null());
        assert_eq!(asset_ids(&c), vec!["a1"]);
    }
}
