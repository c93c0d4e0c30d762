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

/// Record fields a worker's update never changes (see [`TaskRecord::apply`]).
const SERVER_OWNED_FIELDS: [&str; 4] = [
    "execution_id",
    "training_id",
    "benchmark_id",
    "algorithm_id",
];

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

/// What a worker runs; each kind has its own record store (`training.md` §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    Execution,
    Training,
    Benchmark,
}

impl TaskKind {
    pub fn collection(self) -> &'static str {
        match self {
            TaskKind::Execution => crate::storage::EXECUTION_STORE,
            TaskKind::Training => crate::storage::TRAINING_STORE,
            TaskKind::Benchmark => crate::storage::BENCHMARK_STORE,
        }
    }

    /// The job `kind` of the worker protocol.
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Execution => "execution",
            TaskKind::Training => "training",
            TaskKind::Benchmark => "benchmark",
        }
    }

    /// The kind a job `kind` names; a job without one is an execution.
    pub fn from_name(name: Option<&str>) -> Option<TaskKind> {
        [TaskKind::Execution, TaskKind::Training, TaskKind::Benchmark]
            .into_iter()
            .find(|kind| kind.name() == name.unwrap_or("execution"))
    }

    /// The record field that holds the task's id.
    pub fn id_field(self) -> &'static str {
        match self {
            TaskKind::Execution => "execution_id",
            TaskKind::Training => "training_id",
            TaskKind::Benchmark => "benchmark_id",
        }
    }
}

/// The training record of `training-store` (`training.md` §3.2). Fields outside the model
/// (`error`, `resolved_execution_device`, `output_dataset_ids`) stay in `extra`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainingRecord {
    pub training_id: String,
    pub algorithm_id: String,
    pub status: String,
    pub progress: f64,
    pub time_started: String,
    #[serde(default)]
    pub time_completed: Option<String>,
    #[serde(default = "empty_log")]
    pub log: Option<String>,
    pub training_data: Vec<String>,
    #[serde(default)]
    pub additional_parameters: Option<Map<String, Value>>,
    pub state: Value,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub checkpoint_id: Option<String>,
    #[serde(default)]
    pub algorithm_minor_version: Option<String>,
    #[serde(default)]
    pub output_checkpoint_ids: Vec<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn empty_log() -> Option<String> {
    Some(String::new())
}

/// The benchmark record of `benchmark-store` (`training.md` §5.2).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BenchmarkRecord {
    pub benchmark_id: String,
    pub algorithm_id: String,
    #[serde(default)]
    pub additional_parameters: Map<String, Value>,
    pub status: String,
    pub time_started: String,
    #[serde(default)]
    pub time_completed: String,
    #[serde(default)]
    pub log: String,
    #[serde(default)]
    pub data: Map<String, Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The record of any task a worker runs, as the executor keeps and persists it.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskRecord {
    Execution(ExecutionRecord),
    Training(TrainingRecord),
    Benchmark(BenchmarkRecord),
}

/// Merges `fields` into a typed record through its JSON form; fields that would not fit the
/// type leave the record unchanged.
fn merge<T: Serialize + serde::de::DeserializeOwned>(rec: &mut T, fields: &Map<String, Value>) {
    let mut current = match serde_json::to_value(&*rec) {
        Ok(Value::Object(m)) => m,
        _ => return,
    };
    for (k, v) in fields {
        current.insert(k.clone(), v.clone());
    }
    if let Ok(updated) = serde_json::from_value::<T>(Value::Object(current)) {
        *rec = updated;
    }
}

/// Drops `extra` fields from a typed record's JSON (the API models list fields explicitly).
fn api_view<T: Serialize>(rec: &T, extra: &Map<String, Value>) -> Value {
    let mut v = serde_json::to_value(rec).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut v {
        for key in extra.keys() {
            map.remove(key);
        }
    }
    v
}

impl TaskRecord {
    /// Parses a stored record of `kind`.
    pub fn parse(kind: TaskKind, bytes: &[u8]) -> Result<TaskRecord, serde_json::Error> {
        Ok(match kind {
            TaskKind::Execution => TaskRecord::Execution(serde_json::from_slice(bytes)?),
            TaskKind::Training => TaskRecord::Training(serde_json::from_slice(bytes)?),
            TaskKind::Benchmark => TaskRecord::Benchmark(serde_json::from_slice(bytes)?),
        })
    }

    pub fn from_value(kind: TaskKind, v: Value) -> Result<TaskRecord, serde_json::Error> {
        Ok(match kind {
            TaskKind::Execution => TaskRecord::Execution(serde_json::from_value(v)?),
            TaskKind::Training => TaskRecord::Training(serde_json::from_value(v)?),
            TaskKind::Benchmark => TaskRecord::Benchmark(serde_json::from_value(v)?),
        })
    }

    pub fn kind(&self) -> TaskKind {
        match self {
            TaskRecord::Execution(_) => TaskKind::Execution,
            TaskRecord::Training(_) => TaskKind::Training,
            TaskRecord::Benchmark(_) => TaskKind::Benchmark,
        }
    }

    pub fn id(&self) -> &str {
        match self {
            TaskRecord::Execution(r) => &r.execution_id,
            TaskRecord::Training(r) => &r.training_id,
            TaskRecord::Benchmark(r) => &r.benchmark_id,
        }
    }

    pub fn algorithm_id(&self) -> &str {
        match self {
            TaskRecord::Execution(r) => &r.algorithm_id,
            TaskRecord::Training(r) => &r.algorithm_id,
            TaskRecord::Benchmark(r) => &r.algorithm_id,
        }
    }

    pub fn status(&self) -> &str {
        match self {
            TaskRecord::Execution(r) => &r.status,
            TaskRecord::Training(r) => &r.status,
            TaskRecord::Benchmark(r) => &r.status,
        }
    }

    pub fn set_status(&mut self, status: &str) {
        match self {
            TaskRecord::Execution(r) => r.status = status.into(),
            TaskRecord::Training(r) => r.status = status.into(),
            TaskRecord::Benchmark(r) => r.status = status.into(),
        }
    }

    /// The session token of an execution (other tasks have none).
    pub fn session_token(&self) -> Option<&str> {
        match self {
            TaskRecord::Execution(r) => r.session_token.as_deref(),
            _ => None,
        }
    }

    /// Appends one line to the task log.
    pub fn push_log(&mut self, line: &str) {
        match self {
            TaskRecord::Execution(r) => r.log.push_str(line),
            TaskRecord::Training(r) => r.log.get_or_insert_with(String::new).push_str(line),
            TaskRecord::Benchmark(r) => r.log.push_str(line),
        }
    }

    /// Merges fields a worker sent. The fields that say which task this is and what it runs
    /// are the server's: an algorithm changing them would detach the record from its task.
    pub fn apply(&mut self, fields: &Map<String, Value>) {
        let fields: Map<String, Value> = fields
            .iter()
            .filter(|(key, _)| !SERVER_OWNED_FIELDS.contains(&key.as_str()))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        match self {
            TaskRecord::Execution(r) => r.apply(&fields),
            TaskRecord::Training(r) => merge(r, &fields),
            TaskRecord::Benchmark(r) => merge(r, &fields),
        }
    }

    /// Ends the task FAILED as its kind records failures (§3.4, §5.3): `error` is stored (not in
    /// the API view) where the kind stores one; `Value::Null` leaves any earlier `error` as is.
    pub fn fail(&mut self, error: Value) {
        let now = local_now();
        match self {
            TaskRecord::Execution(r) => {
                r.status = "FAILED".into();
                r.progress = 1.0;
                r.output_dataset_ids = Value::Array(vec![]);
                r.time_completed = now;
                if !error.is_null() {
                    r.extra.insert("error".into(), error);
                }
            }
            TaskRecord::Training(r) => {
                r.status = "FAILED".into();
                r.progress = 1.0;
                r.time_completed = Some(now);
                r.extra
                    .insert("output_dataset_ids".into(), Value::Array(vec![]));
                if !error.is_null() {
                    r.extra.insert("error".into(), error);
                }
            }
            TaskRecord::Benchmark(r) => {
                r.status = "FAILED".into();
                r.time_completed = now;
                r.data = Map::new();
            }
        }
    }

    /// The emergency fallback of a PENDING record storage refused: FAILED with `log` as its
    /// whole log (`runtime.md` §12).
    pub fn mark_unsaved(&mut self, log: String) {
        let now = local_now();
        match self {
            TaskRecord::Execution(r) => {
                r.progress = 1.0;
                r.time_completed = now;
                r.log = log;
            }
            TaskRecord::Training(r) => {
                r.progress = 1.0;
                r.time_completed = Some(now);
                r.log = Some(log);
            }
            TaskRecord::Benchmark(r) => {
                r.time_completed = now;
                r.log = log;
            }
        }
        self.set_status("FAILED");
    }

    /// Ends the task STOPPED (progress unchanged).
    pub fn stop(&mut self) {
        let now = local_now();
        match self {
            TaskRecord::Execution(r) => r.time_completed = now,
            TaskRecord::Training(r) => r.time_completed = Some(now),
            TaskRecord::Benchmark(r) => r.time_completed = now,
        }
        self.set_status("STOPPED");
    }

    /// The stored JSON.
    pub fn to_json(&self) -> Vec<u8> {
        match self {
            TaskRecord::Execution(r) => serde_json::to_vec(r),
            TaskRecord::Training(r) => serde_json::to_vec(r),
            TaskRecord::Benchmark(r) => serde_json::to_vec(r),
        }
        .unwrap_or_default()
    }

    pub fn to_value(&self) -> Value {
        serde_json::from_slice(&self.to_json()).unwrap_or(Value::Null)
    }

    /// The API model of the kind: `ExecutionRecord`, `TrainingRecord`, `BenchmarkRecord`.
    pub fn to_api(&self) -> Value {
        match self {
            TaskRecord::Execution(r) => r.to_api(),
            TaskRecord::Training(r) => {
                let mut v = api_view(r, &r.extra);
                v["progress"] = float_value(r.progress);
                v
            }
            TaskRecord::Benchmark(r) => api_view(r, &r.extra),
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

    fn training() -> TaskRecord {
        TaskRecord::parse(
            TaskKind::Training,
            br#"{"training_id":"t","algorithm_id":"a","status":"PENDING","progress":0.0,
                 "time_started":"x","training_data":["s"],"state":{}}"#,
        )
        .unwrap()
    }

    #[test]
    fn training_records_default_optional_fields_and_hide_extras() {
        let mut rec = training();
        let mut fields = Map::new();
        fields.insert("resolved_execution_device".into(), Value::from("cpu"));
        fields.insert("progress".into(), Value::from(1));
        rec.apply(&fields);
        let api = rec.to_api();
        assert_eq!(api["log"], "");
        assert_eq!(api["tags"], serde_json::json!([]));
        assert_eq!(api["output_checkpoint_ids"], serde_json::json!([]));
        assert_eq!(api["progress"].to_string(), "1.0");
        assert!(api.get("resolved_execution_device").is_none());
        assert_eq!(rec.to_value()["resolved_execution_device"], "cpu");
    }

    #[test]
    fn a_worker_update_cannot_change_which_task_a_record_is() {
        let mut rec = training();
        let fields: Map<String, Value> = serde_json::from_str(
            r#"{"training_id":"other","algorithm_id":"b","execution_id":"e","progress":0.5}"#,
        )
        .unwrap();
        rec.apply(&fields);
        assert_eq!((rec.id(), rec.algorithm_id()), ("t", "a"));
        assert!(rec.to_value().get("execution_id").is_none());
        assert_eq!(rec.to_api()["progress"].as_f64(), Some(0.5));

        let mut execution = TaskRecord::parse(
            TaskKind::Execution,
            br#"{"execution_id":"x","algorithm_id":"a","checkpoint_id":null,
                 "algorithm_minor_version":null,"input_dataset_ids":[],
                 "execution_device_override":null,"resolved_execution_device":null,
                 "additional_parameters":{},"session_token":null,"output_dataset_ids":[],
                 "status":"RUNNING","progress":0.1,"time_started":"t","time_completed":"",
                 "log":""}"#,
        )
        .unwrap();
        execution.apply(&fields);
        assert_eq!((execution.id(), execution.algorithm_id()), ("x", "a"));
        assert_eq!(execution.to_api()["progress"].as_f64(), Some(0.5));
    }

    #[test]
    fn failing_and_stopping_follow_each_kind() {
        let mut rec = training();
        rec.fail(serde_json::json!({"code": "x"}));
        assert_eq!(rec.status(), "FAILED");
        let stored = rec.to_value();
        assert_eq!(stored["error"]["code"], "x");
        assert_eq!(stored["output_dataset_ids"], serde_json::json!([]));
        rec.fail(Value::Null);
        assert_eq!(rec.to_value()["error"]["code"], "x", "null keeps the error");

        let mut bench = TaskRecord::parse(
            TaskKind::Benchmark,
            br#"{"benchmark_id":"b","algorithm_id":"a","status":"STARTED","time_started":"x",
                 "data":{"k":1}}"#,
        )
        .unwrap();
        bench.fail(serde_json::json!({"code": "x"}));
        let v = bench.to_value();
        assert_eq!(v["data"], serde_json::json!({}));
        assert!(
            v.get("error").is_none() && v.get("progress").is_none(),
            "{v}"
        );
        let mut t = training();
        t.stop();
        assert_eq!(
            (t.status(), t.to_api()["progress"].as_f64()),
            ("STOPPED", Some(0.0))
        );
    }

    #[test]
    fn local_time_has_six_fraction_digits() {
        let t = local_now();
        assert_eq!(t.len(), 26, "{t}");
        assert_eq!(&t[19..20], ".");
        assert!(utc_iso_now().ends_with("+00:00"));
    }
}
