//! Sample store: the only writer of `sample-store` and of the `training_ref` tags on `data-store`
//! files (`training.md` §2).
//!
//! Owns: a one-permit semaphore that serialises every reference-count change, so two samples
//! sharing a file never lose an increment in the read-modify-write of its tags (§2.2 quirk).
//! Messages: [`SaveSample`] (S1), [`ListSamples`] (S2), [`GetSample`] (S3), [`DeleteSample`] (S4).
//!
//! Save flow: 1. every file exists (404 `sample_input_files_not_found`); 2. the manifest model
//! (a 400 instead of the original's 500); 3. under the permit, each distinct file gets
//! `training_ref + 1`; a file gone meanwhile undoes the increments done so far (404
//! `sample_files_not_found`); 4. the manifest is written, and a failed write undoes the
//! increments too, so counts never leak. Delete: under the permit, `max(ref - 1, 0)` for each
//! distinct file that still exists (missing files are skipped), then the manifest goes.
//!
//! Failure: a panic restarts the actor; it has no state beyond the permit.

use super::storage_gateway::{
    flatten, missing_objects, DeleteObject, Exists, GetBytes, GetTags, ListObjects, PutBytes,
    PutTags, StorageGateway,
};
use crate::errors::{ApiError, SampleError};
use crate::records::{local_now, uuid1};
use crate::storage::{StorageError, DATA_STORE, SAMPLE_STORE};
use actix::prelude::*;
use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;
use std::sync::Arc;
use tokio::sync::Semaphore;

const TRAINING_REF: &str = "training_ref";
/// Strings of the manifest model are limited to this many characters (§2.1).
const MAX_STRING: usize = 10_000;

pub struct SampleStore {
    storage: Addr<StorageGateway>,
    refs: Arc<Semaphore>,
}

impl SampleStore {
    pub fn new(storage: Addr<StorageGateway>) -> Self {
        SampleStore {
            storage,
            refs: Arc::new(Semaphore::new(1)),
        }
    }
}

impl Actor for SampleStore {
    type Context = Context<Self>;
}

impl Supervised for SampleStore {
    fn restarting(&mut self, _: &mut Context<Self>) {
        tracing::warn!(actor = "sample_store", "restarting");
        self.refs = Arc::new(Semaphore::new(1));
    }
}

super::supervision_handlers!(SampleStore);

/// One entry of a sample: key → file ids.
pub type SampleEntry = Map<String, Value>;

/// Tags as the manifest model stores them: trimmed, lower-cased, no empties, no duplicates
/// (first occurrence kept).
pub fn normalize_tags<'a>(tags: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for tag in tags {
        let t = tag.trim().to_lowercase();
        if !t.is_empty() && seen.insert(t.clone()) {
            out.push(t);
        }
    }
    out
}

/// Checks `files` against the manifest model (§2.1): at least one entry, the same key set in
/// every entry, keys within the length limit. Values are checked by the request parser.
fn check_files(files: &[SampleEntry]) -> Result<(), String> {
    let Some(first) = files.first() else {
        return Err("'files' must contain at least one entry".into());
    };
    let keys: BTreeSet<&String> = first.keys().collect();
    for (i, entry) in files.iter().enumerate() {
        if let Some(k) = entry.keys().find(|k| k.chars().count() > MAX_STRING) {
            return Err(format!(
                "entry {i}: key of {} characters (at most {MAX_STRING})",
                k.chars().count()
            ));
        }
        if entry.keys().collect::<BTreeSet<_>>() != keys {
            return Err(format!(
                "entry {i} has keys {:?}, but every entry must have the keys of entry 0: {:?}",
                entry.keys().collect::<Vec<_>>(),
                keys
            ));
        }
    }
    Ok(())
}

/// Every file id of the entries, in entry then key order (duplicates kept).
pub fn file_ids(files: &[Value]) -> Vec<String> {
    files
        .iter()
        .filter_map(Value::as_object)
        .flat_map(|e| e.values())
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

fn distinct(ids: &[String]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    ids.iter()
        .filter(|id| seen.insert(id.as_str()))
        .cloned()
        .collect()
}

/// How a stored manifest reads (§2.3, S3).
enum Manifest {
    /// Matches `SampleRecord`; the API view.
    Record(Value),
    /// JSON, but not a valid manifest.
    Invalid,
    /// JSON and a valid manifest, but its `files` values are not lists of strings.
    NotARecord,
}

fn parse_manifest(bytes: &[u8]) -> Option<Manifest> {
    let value: Value = serde_json::from_slice(bytes).ok()?;
    let Some(obj) = value.as_object() else {
        return Some(Manifest::Invalid);
    };
    let (Some(id), Some(time), Some(files)) = (
        obj.get("sample_id").and_then(Value::as_str),
        obj.get("time_created").and_then(Value::as_str),
        obj.get("files").and_then(Value::as_array),
    ) else {
        return Some(Manifest::Invalid);
    };
    let tags = match obj.get("tags") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            let strings: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
            let Some(strings) = strings else {
                return Some(Manifest::Invalid);
            };
            normalize_tags(strings)
        }
        Some(_) => return Some(Manifest::Invalid),
    };
    let entries: Option<Vec<SampleEntry>> = files.iter().map(|e| e.as_object().cloned()).collect();
    let Some(entries) = entries else {
        return Some(Manifest::Invalid);
    };
    if check_files(&entries).is_err() {
        return Some(Manifest::Invalid);
    }
    let string_lists = entries.iter().flat_map(|e| e.values()).all(|v| {
        v.as_array()
            .is_some_and(|items| items.iter().all(Value::is_string))
    });
    if !string_lists {
        return Some(Manifest::NotARecord);
    }
    Some(Manifest::Record(json!({
        "sample_id": id,
        "files": files,
        "tags": tags,
        "time_created": time,
    })))
}

/// `tags ⊇ positive` and `tags ∩ negative = ∅`.
pub fn tags_match(tags: &[Value], positive: &[String], negative: &[String]) -> bool {
    let has = |t: &String| tags.iter().any(|v| v.as_str() == Some(t.as_str()));
    positive.iter().all(has) && !negative.iter().any(has)
}

fn parse_ref(tags: &std::collections::BTreeMap<String, String>) -> i64 {
    tags.get(TRAINING_REF)
        .and_then(|v| v.trim().parse::<i64>().ok())
        .unwrap_or(0)
}

/// Adds `delta` to a file's `training_ref` (never below 0). `Ok(false)` when the file is gone.
async fn adjust_ref(
    storage: &Addr<StorageGateway>,
    file_id: &str,
    delta: i64,
) -> Result<bool, StorageError> {
    let key = file_id.to_string();
    let exists = flatten(
        storage
            .send(Exists {
                collection: DATA_STORE,
                key: key.clone(),
            })
            .await,
    );
    match exists {
        Ok(true) => {}
        Ok(false) | Err(StorageError::InvalidKey { .. }) => return Ok(false),
        Err(e) => return Err(e),
    }
    let mut tags = flatten(
        storage
            .send(GetTags {
                collection: DATA_STORE,
                key: key.clone(),
            })
            .await,
    )?;
    let count = (parse_ref(&tags) + delta).max(0);
    tags.insert(TRAINING_REF.into(), count.to_string());
    flatten(
        storage
            .send(PutTags {
                collection: DATA_STORE,
                key,
                tags,
            })
            .await,
    )?;
    Ok(true)
}

/// Undoes increments already made (best effort; the failure that caused it is what is reported).
async fn undo_promotion(storage: &Addr<StorageGateway>, promoted: &[String]) {
    for id in promoted {
        if let Err(e) = adjust_ref(storage, id, -1).await {
            tracing::warn!(file_id = %id, error = %e, "cannot undo a training_ref increment");
        }
    }
}

/// Reads one manifest; `None` when it is absent.
async fn read_manifest(
    storage: &Addr<StorageGateway>,
    sample_id: &str,
) -> Result<Option<Bytes>, StorageError> {
    match flatten(
        storage
            .send(GetBytes {
                collection: SAMPLE_STORE,
                key: sample_id.to_string(),
            })
            .await,
    ) {
        Ok(b) => Ok(Some(b)),
        Err(StorageError::NotFound { .. }) | Err(StorageError::InvalidKey { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// S1 with a parsed body: `files` are objects of string lists, `tags` strings.
#[derive(Message)]
#[rtype(result = "Result<String, ApiError>")]
pub struct SaveSample {
    pub files: Vec<SampleEntry>,
    pub tags: Vec<String>,
}

impl Handler<SaveSample> for SampleStore {
    type Result = ResponseFuture<Result<String, ApiError>>;
    fn handle(&mut self, m: SaveSample, _: &mut Context<Self>) -> Self::Result {
        let storage = self.storage.clone();
        let refs = self.refs.clone();
        Box::pin(async move {
            let files: Vec<Value> = m.files.iter().cloned().map(Value::Object).collect();
            let ids = file_ids(&files);
            let missing = missing_objects(&storage, DATA_STORE, &ids)
                .await
                .map_err(SampleError::SaveFailed)?;
            if !missing.is_empty() {
                return Err(SampleError::InputFilesNotFound { file_ids: missing }.into());
            }

            check_files(&m.files).map_err(SampleError::Invalid)?;
            if let Some(t) = m.tags.iter().find(|t| t.chars().count() > MAX_STRING) {
                return Err(SampleError::Invalid(format!(
                    "a tag of {} characters (at most {MAX_STRING})",
                    t.chars().count()
                ))
                .into());
            }
            let sample_id = uuid1();
            let manifest = json!({
                "sample_id": sample_id,
                "files": files,
                "tags": normalize_tags(m.tags.iter().map(String::as_str)),
                "time_created": local_now(),
            });

            let _permit = refs
                .acquire()
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            let mut promoted = Vec::new();
            for id in distinct(&ids) {
                match adjust_ref(&storage, &id, 1).await {
                    Ok(true) => promoted.push(id),
                    Ok(false) => {
                        undo_promotion(&storage, &promoted).await;
                        return Err(SampleError::FilesNotFound {
                            missing_files: vec![id],
                        }
                        .into());
                    }
                    Err(e) => {
                        undo_promotion(&storage, &promoted).await;
                        return Err(SampleError::SaveFailed(e).into());
                    }
                }
            }
            let body = Bytes::from(serde_json::to_vec(&manifest).unwrap_or_default());
            if let Err(e) = flatten(
                storage
                    .send(PutBytes {
                        collection: SAMPLE_STORE,
                        key: sample_id.clone(),
                        body,
                    })
                    .await,
            ) {
                undo_promotion(&storage, &promoted).await;
                return Err(SampleError::SaveFailed(e).into());
            }
            tracing::info!(sample_id = %sample_id, files = promoted.len(), "sample saved");
            Ok(sample_id)
        })
    }
}

/// S2. Query tags are normalised like stored ones (the spec's fix: `Train` matches `train`).
#[derive(Message)]
#[rtype(result = "Result<Vec<Value>, ApiError>")]
pub struct ListSamples {
    pub positive_tags: Vec<String>,
    pub negative_tags: Vec<String>,
}

impl Handler<ListSamples> for SampleStore {
    type Result = ResponseFuture<Result<Vec<Value>, ApiError>>;
    fn handle(&mut self, m: ListSamples, _: &mut Context<Self>) -> Self::Result {
        let storage = self.storage.clone();
        Box::pin(async move {
            let fail = |e: StorageError| ApiError::from(SampleError::ListFailed(e.to_string()));
            let items = flatten(
                storage
                    .send(ListObjects {
                        collection: SAMPLE_STORE,
                    })
                    .await,
            )
            .map_err(fail)?;
            if items.is_empty() {
                return Err(SampleError::NoneStored.into());
            }
            let positive = normalize_tags(m.positive_tags.iter().map(String::as_str));
            let negative = normalize_tags(m.negative_tags.iter().map(String::as_str));
            let mut out = Vec::new();
            for info in items {
                let Some(bytes) = read_manifest(&storage, &info.key).await.map_err(fail)? else {
                    continue;
                };
                // A corrupt manifest is skipped, not fatal for the whole list (§2.3 quirk).
                let Some(Manifest::Record(record)) = parse_manifest(&bytes) else {
                    tracing::warn!(sample_id = %info.key, "skipping an invalid sample manifest");
                    continue;
                };
                let tags = record["tags"].as_array().cloned().unwrap_or_default();
                if tags_match(&tags, &positive, &negative) {
                    out.push(record);
                }
            }
            Ok(out)
        })
    }
}

/// S3.
#[derive(Message)]
#[rtype(result = "Result<Value, ApiError>")]
pub struct GetSample {
    pub sample_id: String,
}

impl Handler<GetSample> for SampleStore {
    type Result = ResponseFuture<Result<Value, ApiError>>;
    fn handle(&mut self, m: GetSample, _: &mut Context<Self>) -> Self::Result {
        let storage = self.storage.clone();
        Box::pin(async move { get_sample(&storage, &m.sample_id).await })
    }
}

async fn get_sample(storage: &Addr<StorageGateway>, sample_id: &str) -> Result<Value, ApiError> {
    let not_found = || SampleError::NotFound {
        sample_id: sample_id.to_string(),
    };
    let bytes = read_manifest(storage, sample_id)
        .await
        .map_err(|e| SampleError::GetFailed {
            sample_id: sample_id.to_string(),
            message: e.to_string(),
        })?
        .ok_or_else(not_found)?;
    match parse_manifest(&bytes) {
        None => Err(not_found().into()),
        Some(Manifest::Record(r)) => Ok(r),
        Some(Manifest::Invalid) => Err(SampleError::InvalidManifest {
            sample_id: sample_id.to_string(),
        }
        .into()),
        Some(Manifest::NotARecord) => Err(SampleError::InvalidRecord {
            sample_id: sample_id.to_string(),
        }
        .into()),
    }
}

/// S4.
#[derive(Message)]
#[rtype(result = "Result<(), ApiError>")]
pub struct DeleteSample {
    pub sample_id: String,
}

impl Handler<DeleteSample> for SampleStore {
    type Result = ResponseFuture<Result<(), ApiError>>;
    fn handle(&mut self, m: DeleteSample, _: &mut Context<Self>) -> Self::Result {
        let storage = self.storage.clone();
        let refs = self.refs.clone();
        Box::pin(async move {
            let id = m.sample_id;
            let fail = |e: StorageError| {
                ApiError::from(SampleError::DeleteFailed {
                    sample_id: id.clone(),
                    message: e.to_string(),
                })
            };
            let Some(bytes) = read_manifest(&storage, &id).await.map_err(fail)? else {
                return Err(SampleError::Absent { sample_id: id }.into());
            };
            let files = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v.get("files").and_then(Value::as_array).cloned());
            let _permit = refs
                .acquire()
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            match files {
                Some(files) => {
                    for file in distinct(&file_ids(&files)) {
                        // A file deleted meanwhile has nothing to demote (§2.2 quirk fix).
                        if !adjust_ref(&storage, &file, -1).await.map_err(fail)? {
                            tracing::warn!(sample_id = %id, file_id = %file, "sample file already gone");
                        }
                    }
                }
                None => {
                    tracing::warn!(sample_id = %id, "deleting an unreadable sample manifest without demoting its files")
                }
            }
            flatten(
                storage
                    .send(DeleteObject {
                        collection: SAMPLE_STORE,
                        key: id.clone(),
                    })
                    .await,
            )
            .map_err(fail)?;
            tracing::info!(sample_id = %id, "sample deleted");
            Ok(())
        })
    }
}

/// The checks of T1 steps 1–2 (`training.md` §3.1): every sample exists, loads, and every file
/// it names exists. Reads only, so callers need not go through the actor.
pub async fn check_training_samples(
    storage: &Addr<StorageGateway>,
    sample_ids: &[String],
) -> Result<(), ApiError> {
    let read_failed = |id: &str, e: StorageError| {
        ApiError::from(SampleError::GetFailed {
            sample_id: id.to_string(),
            message: e.to_string(),
        })
    };
    let mut manifests = Vec::new();
    let mut missing = Vec::new();
    for id in sample_ids {
        match read_manifest(storage, id)
            .await
            .map_err(|e| read_failed(id, e))?
        {
            Some(bytes) => manifests.push((id.clone(), bytes)),
            None => missing.push(id.clone()),
        }
    }
    if !missing.is_empty() {
        return Err(crate::errors::TrainingError::InputSamplesNotFound {
            missing_sample_ids: missing,
        }
        .into());
    }
    let mut missing_files = Vec::new();
    for (id, bytes) in manifests {
        let record = match parse_manifest(&bytes) {
            None => return Err(SampleError::NotFound { sample_id: id }.into()),
            Some(Manifest::Record(r)) => r,
            Some(_) => return Err(SampleError::InvalidManifest { sample_id: id }.into()),
        };
        let files = record["files"].as_array().cloned().unwrap_or_default();
        for file in distinct(&file_ids(&files)) {
            let exists = flatten(
                storage
                    .send(Exists {
                        collection: DATA_STORE,
                        key: file.clone(),
                    })
                    .await,
            );
            match exists {
                Ok(true) => {}
                Ok(false) | Err(StorageError::InvalidKey { .. }) => {
                    if !missing_files.contains(&file) {
                        missing_files.push(file)
                    }
                }
                Err(e) => return Err(read_failed(&id, e)),
            }
        }
    }
    if !missing_files.is_empty() {
        return Err(crate::errors::TrainingError::SampleFilesNotFound {
            missing_file_ids: missing_files,
        }
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_trimmed_lowercased_and_deduplicated() {
        assert_eq!(
            normalize_tags([" Train ", "", "train", "Val", "  "]),
            vec!["train", "val"]
        );
    }

    #[test]
    fn entries_need_the_same_keys() {
        let e = |v: Value| v.as_object().unwrap().clone();
        assert!(check_files(&[]).is_err());
        assert!(check_files(&[e(json!({}))]).is_ok());
        assert!(check_files(&[
            e(json!({"a": [], "b": []})),
            e(json!({"b": ["x"], "a": []}))
        ])
        .is_ok());
        assert!(check_files(&[e(json!({"a": []})), e(json!({"b": []}))]).is_err());
    }

    #[test]
    fn manifests_are_sorted_into_records_invalid_and_non_records() {
        let ok = br#"{"sample_id":"s","files":[{"a":["f"]}],"tags":["X"],"time_created":"t"}"#;
        match parse_manifest(ok) {
            Some(Manifest::Record(r)) => assert_eq!(r["tags"], json!(["x"])),
            _ => panic!("expected a record"),
        }
        assert!(parse_manifest(b"not json").is_none());
        assert!(matches!(
            parse_manifest(br#"{"sample_id":"s","files":[],"time_created":"t"}"#),
            Some(Manifest::Invalid)
        ));
        assert!(matches!(
            parse_manifest(br#"{"sample_id":"s","files":[{"a":[1]}],"time_created":"t"}"#),
            Some(Manifest::NotARecord)
        ));
    }

    #[test]
    fn tag_filter_is_superset_and_disjoint() {
        let tags = vec![json!("a"), json!("b")];
        assert!(tags_match(&tags, &["a".into()], &["c".into()]));
        assert!(!tags_match(&tags, &["c".into()], &[]));
        assert!(!tags_match(&tags, &[], &["b".into()]));
    }
}
