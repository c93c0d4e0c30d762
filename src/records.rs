//! Stored record shapes, id generation and the original's timestamp formats (`rest-api.md` §1.5,
//! §1.6, §4.5).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::sync::OnceLock;

/// A new time-based (version 1) UUID, lowercase and hyphenated, like Python's `uuid.uuid1()`.
pub fn uuid1() -> String {
    static NODE: OnceLock<[u8; 6]> = OnceLock::new();
    let node = NODE.get_or_init(|| {
        let mut n: [u8; 6] = rand::random();
        n[0] |= 0x01; // multicast bit: a random node id, as RFC 4122 §4.5 asks
        n
    });
    uuid::Uuid::now_v1(node).to_string()
}

/// `LOCAL`: server local time, always with six fractional digits (the original drops them when
/// the microseconds are 0; the spec recommends always emitting them).
pub fn local_now() -> String {
    chrono::Local::now()
        .format("%Y-%m-%d %H:%M:%S%.6f")
        .to_string()
}

/// `UTC_ISO`: `YYYY-MM-DDTHH:MM:SS+00:00`.
pub fn utc_iso_now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S+00:00")
        .to_string()
}

/// Task log line prefix: local time without fraction.
pub fn log_time_now() -> String {
    chrono::Local::now().format("%Y-%m-%d %H:%M:%S").to_string()
}

pub const TERMINAL_EXECUTION_STATUSES: [&str; 3] = ["COMPLETED", "FAILED", "STOPPED"];
pub const STOPPABLE_STATUSES: [&str; 3] = ["PENDING", "RUNNING", "STARTED"];

pub fn is_terminal(status: &str) -> bool {
    TERMINAL_EXECUTION_STATUSES.contains(&status.to_ascii_uppercase().as_str())
}

/// The execution record as stored in `execution-store` (§4.5). Fields the API model lacks
/// (`error`, emergency metadata) are kept in `extra` so a read-modify-write never loses them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExecutionRecord {
    pub execution_id: String,
    pub algorithm_id: String,
    pub checkpoint_id: Option<String>,
    pub algorithm_minor_version: Option<String>,
    pub input_dataset_ids: Vec<String>,
    pub execution_device_override: Option<String>,
    pub resolved_execution_device: Option<String>,
    pub additional_parameters: Map<String, Value>,
    pub session_token: Option<String>,
    pub output_dataset_ids: Value,
    pub status: String,
    pub progress: f64,
    pub time_started: String,
    pub time_completed: String,
    pub log: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ExecutionRecord {
    /// The API view (`ExecutionRecord` model): exactly the documented fields, in order.
    pub fn to_api(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut v {
            for key in self.extra.keys() {
                map.remove(key);
            }
            // `progress` is a float on the wire even when it is a whole number.
            map.insert("progress".into(), float_value(self.progress));
            if !map.get("output_dataset_ids").is_some_and(Value::is_array) {
                map.insert("output_dataset_ids".into(), Value::Array(vec![]));
            }
        }
        v
    }

    /// Merges worker-sent fields into the record. Unknown fields land in `extra`.
    pub fn apply(&mut self, fields: &Map<String, Value>) {
        let mut current = match serde_json::to_value(&*self) {
            Ok(Value::Object(m)) => m,
            _ => return,
        };
        for (k, v) in fields {
            current.insert(k.clone(), v.clone());
        }
        if let Ok(updated) = serde_json::from_value::<ExecutionRecord>(Value::Object(current)) {
            *self = updated;
        }
    }
}

/// A JSON float that prints as `1.0`, not `1`.
pub fn float_value(f: f64) -> Value {
    serde_json::Number::from_f64(f)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_version_1() {
        let id = uuid1();
        let parsed = uuid::Uuid::parse_str(&id).unwrap();
        assert_eq!(parsed.get_version_num(), 1);
        assert_eq!(id, id.to_lowercase());
    }

    #[test]
    fn local_time_has_six_fraction_digits() {
        let t = local_now();
        assert_eq!(t.len(), 26, "{t}");
        assert_eq!(&t[19..20], ".");
        assert!(utc_iso_now().ends_with("+00:00"));
    }
}
