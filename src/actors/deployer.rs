//! Deployer: the only writer of `algorithm-store`, and the owner of the in-memory algorithm index.
//!
//! Owns: the index (storage key → record and its prebuilt API view), rebuilt from storage at
//! start-up; a one-permit semaphore that serialises every change (deploys, deletions) so version
//! assignment never races; the settings the pipeline needs.
//! Messages: [`DeployPath`], [`StartAsyncDeploy`], [`GetDeployRecord`], [`GetAlgorithm`],
//! [`ListAlgorithms`], [`ExportAlgorithm`], [`DeleteAlgorithm`], [`ResolveAlgorithm`],
//! [`LinkCheckpoint`], [`UnlinkCheckpoint`].
//!
//! Deploy flow (`algorithms.md` §2.1), under the permit: 1. resolve the folder (or unpack the
//! zip); 2. validate `pyproject.toml`; 3. sort the files; 4. build the module in a Python child
//! process; 5. look up `(name, major)` in the index; 6. upload the module and assets that are not
//! stored yet; 7. compose the record with the minor-version rule and metrics; 8. write it; 9. tell
//! the actor, which updates the index. Steps 1–4 fail before anything is written; a storage
//! failure in 6–8 deletes what this deploy uploaded, so no orphans remain.
//!
//! Refresh (other writers: `compox import-algorithm-bundle` in its own process, the original
//! server or another compox on a shared store): every [`INDEX_REFRESH_INTERVAL`], under the
//! permit so no change of ours is in flight, 1. list `algorithm-store`; 2. compare each key's
//! [`Fingerprint`] (size, modification time, version token) with the one the index was built
//! from; 3. read only new and changed records; 4. replace or drop those entries. A record the
//! deployer wrote itself has no fingerprint yet, so the next refresh reads it back once. The
//! refresh only reads: stale storage metrics are still recomputed at (re)load.
//!
//! Failure: a panic restarts the actor, which reloads the index from storage.

use super::emergency_writer::{EmergencyWriter, ReadEmergencyRecord, WriteEmergencyRecord};
use super::guard;
use super::storage_gateway::{
    flatten, DeleteObject, Exists, GetBytes, ListObjects, PollObjects, PutBytes, PutStream, Size,
    StorageGateway,
};
use crate::deploy::module::{self, PythonTool};
use crate::deploy::record::{self, api_item, ApiItem};
use crate::deploy::{pyproject, scan, zip_input, DeployOverrides, DeploySource};
use crate::errors::{AlgorithmError, ApiError, DeployError};
use crate::records::{local_now, utc_iso_now, uuid1};
use crate::storage::{
    ByteStream, ObjectInfo, StorageError, ALGORITHM_STORE, ASSET_STORE, CHECKPOINT_STORE,
    DEPLOY_STORE, MODULE_STORE,
};
use actix::prelude::*;
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};

const NAME: &str = "deployer";
/// How often the index is compared with `algorithm-store` for other writers' changes.
pub const INDEX_REFRESH_INTERVAL: Duration = Duration::from_secs(2);
/// FIXME(no constant for it in `crate::storage` yet; move it there with the training routes).
const TRAINING_STORE: &str = "training-store";

#[derive(Clone)]
pub struct DeployerConfig {
    pub python_tool: PythonTool,
    /// Folders `deploy/local` may read; empty means any.
    pub allowed_paths: Vec<PathBuf>,
    /// False when the configured executor cannot run async deploys.
    pub in_process_executor: bool,
}

struct IndexEntry {
    record: Value,
    item: ApiItem,
    /// The serialized API view (empty for a broken record), served without re-encoding.
    json: Bytes,
    /// Lower-cased name and major, for the case-insensitive lookup of A1.
    name_lc: String,
    major_lc: String,
}

pub struct Deployer {
    storage: Addr<StorageGateway>,
    emergency: Addr<EmergencyWriter>,
    config: DeployerConfig,
    index: BTreeMap<String, IndexEntry>,
    /// The unfiltered A2 body, rebuilt after any index change.
    list_cache: Option<Bytes>,
    loaded: bool,
    /// Every well-formed key of `algorithm-store` the index accounts for (indexed, or skipped as
    /// unparsable), with the fingerprint it was read at; `None` until a refresh reads it back.
    fingerprints: BTreeMap<String, Option<Fingerprint>>,
    /// Bumped whenever the whole index is replaced, so a refresh planned before is dropped.
    generation: u64,
    refreshing: bool,
    permit: Arc<Semaphore>,
    fail_next: bool,
}

/// What a listing says about one object; a different value means the object was rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    size: u64,
    last_modified: Option<String>,
    version: Option<String>,
}

impl From<&ObjectInfo> for Fingerprint {
    fn from(info: &ObjectInfo) -> Self {
        Fingerprint {
            size: info.size,
            last_modified: info.last_modified.clone(),
            version: info.version.clone(),
        }
    }
}

/// Keys a refresh must read (new or rewritten) and keys that are gone.
#[derive(Debug, Default, PartialEq, Eq)]
struct ListingDiff {
    changed: Vec<(String, Fingerprint)>,
    removed: Vec<String>,
}

/// Compares a listing of `algorithm-store` with the fingerprints the index was built from.
/// Malformed keys are ignored, as the index never holds them.
fn diff_listing(
    known: &BTreeMap<String, Option<Fingerprint>>,
    listed: &[ObjectInfo],
) -> ListingDiff {
    let mut diff = ListingDiff::default();
    let mut seen = BTreeSet::new();
    for info in listed {
        if record::parse_key(&info.key).is_none() {
            continue;
        }
        seen.insert(info.key.as_str());
        let now = Fingerprint::from(info);
        if known.get(&info.key).and_then(Option::as_ref) != Some(&now) {
            diff.changed.push((info.key.clone(), now));
        }
    }
    diff.removed = known
        .keys()
        .filter(|k| !seen.contains(k.as_str()))
        .cloned()
        .collect();
    diff
}

impl Deployer {
    pub fn new(
        storage: Addr<StorageGateway>,
        emergency: Addr<EmergencyWriter>,
        config: DeployerConfig,
    ) -> Self {
        Deployer {
            storage,
            emergency,
            config,
            index: BTreeMap::new(),
            list_cache: None,
            loaded: false,
            fingerprints: BTreeMap::new(),
            generation: 0,
            refreshing: false,
            permit: Arc::new(Semaphore::new(1)),
            fail_next: false,
        }
    }

    fn load_index(&mut self, ctx: &mut Context<Self>) {
        let storage = self.storage.clone();
        let fut = async move { load_records(&storage).await };
        ctx.wait(fut.into_actor(self).map(|res, act, _| match res {
            Ok((records, fingerprints)) => {
                act.index = records.into_iter().map(|(k, r)| (k, entry(r))).collect();
                act.fingerprints = fingerprints;
                act.generation += 1;
                act.list_cache = None;
                act.loaded = true;
                tracing::info!(algorithms = act.index.len(), "algorithm index loaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "loading the algorithm index failed; listing will report errors");
                act.loaded = false;
            }
        }));
    }

    /// Starts one refresh unless one is running (see the module docs).
    fn start_refresh(&mut self, ctx: &mut Context<Self>) {
        if self.refreshing {
            return;
        }
        self.refreshing = true;
        let storage = self.storage.clone();
        let permit = self.permit.clone();
        let me = ctx.address();
        actix::spawn(async move {
            let Ok(_permit) = permit.acquire().await else {
                return;
            };
            let outcome = match me.send(RefreshSnapshot).await {
                Ok((generation, known)) => read_changes(&storage, &known)
                    .await
                    .map(|(diff, records)| (generation, diff, records)),
                Err(_) => return,
            };
            // Applied before the permit goes, so the next deploy sees the refreshed index.
            let _ = me.send(ApplyRefresh(outcome)).await;
        });
    }

    fn pipeline(&self, ctx: &Context<Self>) -> Pipeline {
        Pipeline {
            storage: self.storage.clone(),
            emergency: self.emergency.clone(),
            me: ctx.address(),
            config: self.config.clone(),
            permit: self.permit.clone(),
        }
    }

    fn find_by_name_major(&self, name: &str, major: &str) -> Option<(String, Value)> {
        self.index
            .iter()
            .find_map(|(k, e)| match record::parse_key(k) {
                Some((_, n, m)) if n == name && m == major => Some((k.clone(), e.record.clone())),
                _ => None,
            })
    }
}

fn entry(record: Value) -> IndexEntry {
    let item = api_item(&record);
    let json = match &item {
        ApiItem::Registered(v) | ApiItem::Failed(v) => {
            Bytes::from(serde_json::to_vec(v).unwrap_or_default())
        }
        ApiItem::Broken(_) => Bytes::new(),
    };
    let lower = |k: &str| record[k].as_str().unwrap_or_default().to_lowercase();
    IndexEntry {
        name_lc: lower("algorithm_name"),
        major_lc: lower("algorithm_major_version"),
        item,
        json,
        record,
    }
}

/// `[item,item,...]` from prebuilt item bytes.
fn json_array<'a>(items: impl Iterator<Item = &'a Bytes>) -> Bytes {
    let mut out = Vec::with_capacity(4096);
    out.push(b'[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item);
    }
    out.push(b']');
    Bytes::from(out)
}

/// A new or rewritten record a refresh read: `None` when it is no longer valid JSON.
type ReadRecord = (String, Fingerprint, Option<Value>);

/// Lists `algorithm-store` and reads what differs from `known`. A key deleted between the
/// listing and the read counts as removed.
async fn read_changes(
    storage: &Addr<StorageGateway>,
    known: &BTreeMap<String, Option<Fingerprint>>,
) -> Result<(ListingDiff, Vec<ReadRecord>), StorageError> {
    let listed = flatten(
        storage
            .send(PollObjects {
                collection: ALGORITHM_STORE,
            })
            .await,
    )?;
    let mut diff = diff_listing(known, &listed);
    let mut records = Vec::new();
    for (key, fingerprint) in std::mem::take(&mut diff.changed) {
        let got = flatten(
            storage
                .send(GetBytes {
                    collection: ALGORITHM_STORE,
                    key: key.clone(),
                })
                .await,
        );
        match got {
            Ok(bytes) => {
                let rec = serde_json::from_slice::<Value>(&bytes).ok();
                if rec.is_none() {
                    tracing::warn!(key = %key, "skipping unparsable algorithm record");
                }
                records.push((key, fingerprint, rec));
            }
            Err(e) if e.is_not_found() => diff.removed.push(key),
            Err(e) => return Err(e),
        }
    }
    Ok((diff, records))
}

/// Every record with the fingerprint it was read at.
type LoadedIndex = (Vec<(String, Value)>, BTreeMap<String, Option<Fingerprint>>);

/// Reads every record, recomputing and writing back missing or stale metrics (a record written
/// back gets no fingerprint, so the next refresh reads it again).
async fn load_records(storage: &Addr<StorageGateway>) -> Result<LoadedIndex, StorageError> {
    let keys = flatten(
        storage
            .send(ListObjects {
                collection: ALGORITHM_STORE,
            })
            .await,
    )?;
    let mut out = Vec::new();
    let mut fingerprints = BTreeMap::new();
    for info in keys {
        if record::parse_key(&info.key).is_none() {
            tracing::warn!(key = %info.key, "skipping malformed algorithm-store key");
            continue;
        }
        fingerprints.insert(info.key.clone(), Some(Fingerprint::from(&info)));
        let bytes = flatten(
            storage
                .send(GetBytes {
                    collection: ALGORITHM_STORE,
                    key: info.key.clone(),
                })
                .await,
        )?;
        let Ok(mut rec) = serde_json::from_slice::<Value>(&bytes) else {
            tracing::warn!(key = %info.key, "skipping unparsable algorithm record");
            continue;
        };
        let stale =
            rec.get("storage_metrics").is_none() || rec.get("storage_metrics_stale").is_some();
        if stale && rec.is_object() {
            rec["storage_metrics"] = compute_metrics(storage, &rec).await?;
            if let Some(m) = rec.as_object_mut() {
                m.shift_remove("storage_metrics_stale");
            }
            let body = Bytes::from(serde_json::to_vec(&rec).unwrap_or_default());
            flatten(
                storage
                    .send(PutBytes {
                        collection: ALGORITHM_STORE,
                        key: info.key.clone(),
                        body,
                    })
                    .await,
            )?;
            fingerprints.insert(info.key.clone(), None);
        }
        out.push((info.key, rec));
    }
    Ok((out, fingerprints))
}

/// Storage metrics of `algorithms.md` §4 from object sizes.
async fn compute_metrics(
    storage: &Addr<StorageGateway>,
    rec: &Value,
) -> Result<Value, StorageError> {
    let (modules, mut assets, checkpoints) = record::referenced(rec);
    let mut checkpoint_bytes = 0u64;
    let mut checkpoint_count = 0u64;
    for id in checkpoints.iter().collect::<BTreeSet<_>>() {
        if let Some(size) = flatten(
            storage
                .send(Size {
                    collection: CHECKPOINT_STORE,
                    key: id.clone(),
                })
                .await,
        )? {
            checkpoint_bytes += size;
            checkpoint_count += 1;
            let bytes = flatten(
                storage
                    .send(GetBytes {
                        collection: CHECKPOINT_STORE,
                        key: id.clone(),
                    })
                    .await,
            )?;
            if let Ok(manifest) = serde_json::from_slice::<Value>(&bytes) {
                if let Some(a) = manifest.get("assets").and_then(Value::as_object) {
                    assets.extend(a.values().filter_map(Value::as_str).map(str::to_string));
                }
            }
        }
    }
    let sum = |collection: &'static str, ids: BTreeSet<String>| {
        let storage = storage.clone();
        async move {
            let (mut bytes, mut count) = (0u64, 0u64);
            for id in ids {
                if let Some(size) = flatten(
                    storage
                        .send(Size {
                            collection,
                            key: id,
                        })
                        .await,
                )? {
                    bytes += size;
                    count += 1;
                }
            }
            Ok::<_, StorageError>((bytes, count))
        }
    };
    let (module_bytes, module_count) = sum(MODULE_STORE, modules).await?;
    let (asset_bytes, asset_count) = sum(ASSET_STORE, assets).await?;
    Ok(json!({
        "logical_size_bytes": module_bytes + asset_bytes + checkpoint_bytes,
        "module_bytes": module_bytes,
        "asset_bytes": asset_bytes,
        "checkpoint_manifest_bytes": checkpoint_bytes,
        "module_count": module_count,
        "asset_count": asset_count,
        "checkpoint_count": checkpoint_count,
        "last_recomputed_at": utc_iso_now(),
    }))
}

impl Actor for Deployer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.load_index(ctx);
        ctx.run_interval(INDEX_REFRESH_INTERVAL, |act, ctx| act.start_refresh(ctx));
    }
}

impl Supervised for Deployer {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        tracing::warn!(actor = NAME, "restarting: reloading the algorithm index");
        self.fail_next = false;
        self.index.clear();
        self.fingerprints.clear();
        self.generation += 1;
        self.refreshing = false;
        self.list_cache = None;
        self.load_index(ctx);
    }
}

super::supervision_handlers!(Deployer, fail_next);

fn unavailable<T>(actor: &'static str) -> Result<T, ApiError> {
    Err(ApiError::Unavailable { actor })
}

/// Runs a synchronous handler body under the panic guard.
fn guarded_sync<T>(
    ctx: &mut Context<Deployer>,
    body: impl FnOnce() -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(v) => v,
        Err(payload) => {
            tracing::error!(actor = NAME, panic = %super::panic_message(&*payload), "actor panicked; restarting it");
            ctx.stop();
            unavailable(NAME)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------------

/// Result of a finished deploy (`AlgorithmDeployResponse`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeployResult {
    pub algorithm_id: String,
    pub algorithm_name: String,
    pub algorithm_major_version: String,
    pub algorithm_minor_version: String,
    #[serde(skip)]
    pub new_minor: bool,
}

/// Deploys a folder or zip and waits for the result.
#[derive(Message)]
#[rtype(result = "Result<DeployResult, ApiError>")]
pub struct DeployPath {
    pub path: PathBuf,
    pub overrides: DeployOverrides,
    /// The flag rules of `deploy-algorithms` (`algorithms.md` §2.8) instead of the HTTP ones.
    pub cli: bool,
    /// An in-process caller (the offline `deploy-algorithms`), exempt from `deploy_allowed_paths`.
    /// HTTP requests are never trusted, whatever they claim to come from.
    pub trusted: bool,
}

impl Handler<DeployPath> for Deployer {
    type Result = ResponseFuture<Result<DeployResult, ApiError>>;
    fn handle(&mut self, m: DeployPath, ctx: &mut Context<Self>) -> Self::Result {
        let fail = std::mem::take(&mut self.fail_next);
        let p = self.pipeline(ctx);
        guard(NAME, ctx.address().recipient(), unavailable, async move {
            if fail {
                panic!("fault injected into {NAME}");
            }
            let source = p.check_path(&m.path, m.cli, m.trusted)?;
            p.deploy(&m.path, &m.overrides, source).await
        })
    }
}

/// Starts a deploy in the background and returns its `deploy_id` (`rest-api.md` D2).
#[derive(Message)]
#[rtype(result = "Result<String, ApiError>")]
pub struct StartAsyncDeploy {
    pub path: PathBuf,
    pub overrides: DeployOverrides,
}

impl Handler<StartAsyncDeploy> for Deployer {
    type Result = ResponseFuture<Result<String, ApiError>>;
    fn handle(&mut self, m: StartAsyncDeploy, ctx: &mut Context<Self>) -> Self::Result {
        let p = self.pipeline(ctx);
        let in_process = self.config.in_process_executor;
        Box::pin(async move {
            if !in_process {
                return Err(DeployError::AsyncNeedsInProcessExecutor.into());
            }
            let path_text = m.path.display().to_string();
            if !m.path.exists() {
                return Err(DeployError::PathNotFound { path: path_text }.into());
            }
            p.check_allowed(&m.path)?;
            let deploy_id = uuid1();
            let record = json!({
                "deploy_id": deploy_id, "status": "PENDING", "path": path_text,
                "algorithm_id": null, "algorithm_name": null, "algorithm_major_version": null,
                "time_started": utc_iso_now(), "time_completed": null, "log": null,
            });
            if let Err(e) = p.write_deploy_record(&deploy_id, &record).await {
                let mut failed = record.clone();
                failed["status"] = json!("FAILED");
                failed["time_completed"] = json!(utc_iso_now());
                failed["log"] = json!(format!("Failed to save deploy record: {e}"));
                p.emergency_deploy(&deploy_id, failed, &e).await;
                return Ok(deploy_id);
            }
            let id = deploy_id.clone();
            actix::spawn(async move { p.run_async_deploy(id, record, m.path, m.overrides).await });
            Ok(deploy_id)
        })
    }
}

/// D3: the deploy record, with the emergency-store precedence of `rest-api.md` §6.5.
#[derive(Message)]
#[rtype(result = "Result<Value, ApiError>")]
pub struct GetDeployRecord {
    pub deploy_id: String,
}

impl Handler<GetDeployRecord> for Deployer {
    type Result = ResponseFuture<Result<Value, ApiError>>;
    fn handle(&mut self, m: GetDeployRecord, _: &mut Context<Self>) -> Self::Result {
        let storage = self.storage.clone();
        let emergency = self.emergency.clone();
        Box::pin(async move {
            let fb = emergency
                .send(ReadEmergencyRecord {
                    collection: DEPLOY_STORE,
                    id: m.deploy_id.clone(),
                })
                .await
                .ok()
                .flatten();
            let primary = flatten(
                storage
                    .send(GetBytes {
                        collection: DEPLOY_STORE,
                        key: m.deploy_id.clone(),
                    })
                    .await,
            );
            let chosen = match primary {
                Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
                    Ok(p) => {
                        let p_terminal = matches!(
                            p["status"].as_str().map(str::to_ascii_uppercase).as_deref(),
                            Some("FAILED") | Some("COMPLETED")
                        );
                        match fb {
                            Some(f) if f["status"] == "FAILED" && !p_terminal => f,
                            _ => p,
                        }
                    }
                    Err(e) => fb.ok_or_else(|| DeployError::RecordReadFailed(e.to_string()))?,
                },
                Err(StorageError::NotFound { .. }) | Err(StorageError::InvalidKey { .. }) => fb
                    .ok_or(DeployError::RecordNotFound {
                        deploy_id: m.deploy_id.clone(),
                    })?,
                Err(e) => fb.ok_or_else(|| DeployError::RecordReadFailed(e.to_string()))?,
            };
            let pick = |k: &str| chosen.get(k).cloned().unwrap_or(Value::Null);
            Ok(json!({
                "deploy_id": pick("deploy_id"), "status": pick("status"), "path": pick("path"),
                "algorithm_id": pick("algorithm_id"), "algorithm_name": pick("algorithm_name"),
                "algorithm_major_version": pick("algorithm_major_version"), "time_started": pick("time_started"),
                "time_completed": pick("time_completed"), "log": pick("log"),
            }))
        })
    }
}

/// A1: first record whose name and major equal the request case-insensitively.
#[derive(Message)]
#[rtype(result = "Result<Bytes, ApiError>")]
pub struct GetAlgorithm {
    pub name: String,
    pub major: String,
}

impl Handler<GetAlgorithm> for Deployer {
    type Result = Result<Bytes, ApiError>;
    fn handle(&mut self, m: GetAlgorithm, ctx: &mut Context<Self>) -> Self::Result {
        let fail = std::mem::take(&mut self.fail_next);
        let index = &self.index;
        let loaded = self.loaded;
        guarded_sync(ctx, || {
            if fail {
                panic!("fault injected into {NAME}");
            }
            if index.is_empty() {
                return Err(if loaded {
                    AlgorithmError::NoAlgorithms
                } else {
                    AlgorithmError::ReadFailed("index not loaded".into())
                }
                .into());
            }
            let (name, major) = (m.name.to_lowercase(), m.major.to_lowercase());
            for e in index.values() {
                if let ApiItem::Broken(reason) = &e.item {
                    return Err(AlgorithmError::ReadFailed(reason.clone()).into());
                }
                if e.name_lc == name && e.major_lc == major {
                    return Ok(e.json.clone());
                }
            }
            Err(AlgorithmError::NotFoundByName {
                algorithm_name: m.name.clone(),
                algorithm_major_version: m.major.clone(),
            }
            .into())
        })
    }
}

/// A2 filters.
#[derive(Message, Default)]
#[rtype(result = "Result<Bytes, ApiError>")]
pub struct ListAlgorithms {
    pub positive_tags: Vec<String>,
    pub negative_tags: Vec<String>,
    pub algorithm_type: Option<String>,
    pub supported_devices: Vec<String>,
}

impl Handler<ListAlgorithms> for Deployer {
    type Result = Result<Bytes, ApiError>;
    fn handle(&mut self, m: ListAlgorithms, ctx: &mut Context<Self>) -> Self::Result {
        if std::mem::take(&mut self.fail_next) {
            return guarded_sync(ctx, || panic!("fault injected into {NAME}"));
        }
        if self.index.is_empty() {
            return Err(if self.loaded {
                AlgorithmError::NoAlgorithms
            } else {
                AlgorithmError::ListFailed("index not loaded".into())
            }
            .into());
        }
        let unfiltered = m.positive_tags.is_empty()
            && m.negative_tags.is_empty()
            && m.algorithm_type.is_none()
            && m.supported_devices.is_empty();
        if unfiltered {
            if let Some(cached) = &self.list_cache {
                return Ok(cached.clone());
            }
        }
        let mut out: Vec<&Bytes> = Vec::new();
        for e in self.index.values() {
            let v = match &e.item {
                ApiItem::Broken(reason) => {
                    return Err(AlgorithmError::ListFailed(reason.clone()).into())
                }
                ApiItem::Failed(_) => continue,
                ApiItem::Registered(v) => v,
            };
            let tags: Vec<&str> = v["algorithm_tags"]
                .as_array()
                .map(|t| t.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if !m.positive_tags.iter().all(|t| tags.contains(&t.as_str())) {
                continue;
            }
            if m.negative_tags.iter().any(|t| tags.contains(&t.as_str())) {
                continue;
            }
            if let Some(ty) = &m.algorithm_type {
                if !v["algorithm_type"]
                    .as_str()
                    .unwrap_or_default()
                    .eq_ignore_ascii_case(ty)
                {
                    continue;
                }
            }
            if !m.supported_devices.is_empty() {
                let devices: Vec<String> = v["supported_devices"]
                    .as_array()
                    .map(|d| {
                        d.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_lowercase)
                            .collect()
                    })
                    .unwrap_or_default();
                if !m
                    .supported_devices
                    .iter()
                    .any(|d| devices.contains(&d.to_lowercase()))
                {
                    continue;
                }
            }
            out.push(&e.json);
        }
        let body = json_array(out.into_iter());
        if unfiltered {
            self.list_cache = Some(body.clone());
        }
        Ok(body)
    }
}

/// Finds the record for an execution (`runtime.md` §9.3 step 2): the first key whose id matches.
#[derive(Message)]
#[rtype(result = "Option<(String, Value)>")]
pub struct ResolveAlgorithm {
    pub algorithm_id: String,
}

impl Handler<ResolveAlgorithm> for Deployer {
    type Result = Option<(String, Value)>;
    fn handle(&mut self, m: ResolveAlgorithm, _: &mut Context<Self>) -> Self::Result {
        self.index
            .iter()
            .find_map(|(k, e)| match record::parse_key(k) {
                Some((id, _, _)) if id == m.algorithm_id => Some((k.clone(), e.record.clone())),
                _ => None,
            })
    }
}

/// Index lookup for the pipeline (under the permit).
#[derive(Message)]
#[rtype(result = "Option<(String, Value)>")]
struct FindByNameMajor {
    name: String,
    major: String,
}

impl Handler<FindByNameMajor> for Deployer {
    type Result = Option<(String, Value)>;
    fn handle(&mut self, m: FindByNameMajor, _: &mut Context<Self>) -> Self::Result {
        self.find_by_name_major(&m.name, &m.major)
    }
}

/// Every record (for reference counting before deletions).
#[derive(Message)]
#[rtype(result = "Vec<(String, Value)>")]
struct AllRecords;

impl Handler<AllRecords> for Deployer {
    type Result = Vec<(String, Value)>;
    fn handle(&mut self, _: AllRecords, _: &mut Context<Self>) -> Self::Result {
        self.index
            .iter()
            .map(|(k, e)| (k.clone(), e.record.clone()))
            .collect()
    }
}

/// The pipeline wrote (or removed) a record: update the index.
#[derive(Message)]
#[rtype(result = "()")]
struct IndexChanged {
    removed: Vec<String>,
    written: Option<(String, Value)>,
}

impl Handler<IndexChanged> for Deployer {
    type Result = ();
    fn handle(&mut self, m: IndexChanged, _: &mut Context<Self>) {
        for k in m.removed {
            self.index.remove(&k);
            self.fingerprints.remove(&k);
        }
        if let Some((k, r)) = m.written {
            self.index.insert(k.clone(), entry(r));
            self.fingerprints.insert(k, None);
        }
        self.list_cache = None;
        self.loaded = true;
    }
}

/// A refresh holds the permit: the fingerprints to compare the listing with, and their generation.
#[derive(Message)]
#[rtype(result = "(u64, BTreeMap<String, Option<Fingerprint>>)")]
struct RefreshSnapshot;

impl Handler<RefreshSnapshot> for Deployer {
    type Result = MessageResult<RefreshSnapshot>;
    fn handle(&mut self, _: RefreshSnapshot, _: &mut Context<Self>) -> Self::Result {
        MessageResult((self.generation, self.fingerprints.clone()))
    }
}

/// What a refresh found; dropped when the index was reloaded meanwhile.
#[derive(Message)]
#[rtype(result = "()")]
struct ApplyRefresh(Result<(u64, ListingDiff, Vec<ReadRecord>), StorageError>);

impl Handler<ApplyRefresh> for Deployer {
    type Result = ();
    fn handle(&mut self, m: ApplyRefresh, _: &mut Context<Self>) {
        self.refreshing = false;
        let (generation, diff, records) = match m.0 {
            Ok(found) => found,
            Err(e) => {
                tracing::debug!(error = %e, "refreshing the algorithm index failed; retrying later");
                return;
            }
        };
        if generation != self.generation {
            return;
        }
        // A listing that worked means the index is complete, even after a failed start-up load.
        self.loaded = true;
        if diff.removed.is_empty() && records.is_empty() {
            return;
        }

        let (mut added, mut changed) = (0usize, 0usize);
        for (key, fingerprint, rec) in records {
            // A record we wrote, read back, is not news (nor one read back unchanged).
            let ours = self.fingerprints.get(&key).is_some_and(Option::is_none);
            let same = rec.as_ref() == self.index.get(&key).map(|e| &e.record);
            match rec {
                Some(rec) => {
                    if !ours && !same {
                        if self.index.contains_key(&key) {
                            changed += 1;
                        } else {
                            added += 1;
                        }
                    }
                    self.index.insert(key.clone(), entry(rec));
                }
                None => {
                    changed += usize::from(self.index.remove(&key).is_some());
                }
            }
            self.fingerprints.insert(key, Some(fingerprint));
        }
        let mut removed = 0usize;
        for key in &diff.removed {
            removed += usize::from(self.index.remove(key).is_some());
            self.fingerprints.remove(key);
        }

        self.list_cache = None;
        if added + changed + removed > 0 {
            tracing::info!(
                added,
                changed,
                removed,
                algorithms = self.index.len(),
                "algorithm index refreshed: algorithm-store was changed by another writer"
            );
        }
    }
}

/// Another writer (the bundle importer) changed `algorithm-store`: rebuild the index from it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReloadIndex;

impl Handler<ReloadIndex> for Deployer {
    type Result = ();
    fn handle(&mut self, _: ReloadIndex, ctx: &mut Context<Self>) {
        self.load_index(ctx);
    }
}

/// Answers `$msg` with `Pipeline::$method`, run off the actor so the index keeps answering reads
/// meanwhile.
macro_rules! pipeline_handler {
    ($msg:ty => $method:ident) => {
        impl Handler<$msg> for Deployer {
            type Result = ResponseFuture<<$msg as Message>::Result>;
            fn handle(&mut self, m: $msg, ctx: &mut Context<Self>) -> Self::Result {
                let p = self.pipeline(ctx);
                Box::pin(async move { p.$method(m).await })
            }
        }
    };
}

/// D4: deletes a whole algorithm or one minor version.
#[derive(Message)]
#[rtype(result = "Result<String, ApiError>")]
pub struct DeleteAlgorithm {
    pub algorithm_id: String,
    pub minor: Option<String>,
    /// `--delete-existing` ignores `removable`.
    pub force: bool,
}

pipeline_handler!(DeleteAlgorithm => delete);

/// C3 step 3: drops a checkpoint id from its parent algorithm's `checkpoints` and flags the
/// storage metrics stale (`training.md` §4.5). The parent is found by its stored key, else by id;
/// a parent that no longer exists has nothing to update.
#[derive(Message)]
#[rtype(result = "Result<(), ApiError>")]
pub struct UnlinkCheckpoint {
    pub algorithm_id: String,
    pub algorithm_key: Option<String>,
    pub checkpoint_id: String,
}

pipeline_handler!(UnlinkCheckpoint => unlink_checkpoint);

/// A training registered a checkpoint (`training.md` §4.2 step 5): appends its id to the parent
/// algorithm's `checkpoints` (created when absent) and flags the storage metrics stale.
#[derive(Message)]
#[rtype(result = "Result<(), ApiError>")]
pub struct LinkCheckpoint {
    pub algorithm_id: String,
    pub checkpoint_id: String,
}

pipeline_handler!(LinkCheckpoint => link_checkpoint);

/// A3: builds the export zip in a temporary file and returns it (already unlinked on Unix, open).
#[derive(Message)]
#[rtype(result = "Result<(String, std::fs::File), ApiError>")]
pub struct ExportAlgorithm {
    pub name: String,
    /// The major as a number (`"01"` → `"1"`), as the original parses it.
    pub major: String,
    /// The major as requested, so a stored non-canonical major (`"01"`) can still be exported.
    pub raw_major: String,
    pub minor: Option<String>,
    pub checkpoint_id: Option<String>,
}

impl Handler<ExportAlgorithm> for Deployer {
    type Result = ResponseFuture<Result<(String, std::fs::File), ApiError>>;
    fn handle(&mut self, m: ExportAlgorithm, ctx: &mut Context<Self>) -> Self::Result {
        // One rule for the gate and the lookup: case-insensitive names, like A1 (spec-recommended
        // fix). The stored major as requested wins over its numeric form (`"01"` before `"1"`).
        let lookup = |major: &str| {
            self.index.values().find(|e| {
                e.record["algorithm_name"]
                    .as_str()
                    .is_some_and(|n| n.to_lowercase() == m.name.to_lowercase())
                    && e.record["algorithm_major_version"].as_str() == Some(major)
            })
        };
        let found = lookup(&m.raw_major)
            .or_else(|| lookup(&m.major))
            .map(|e| e.record.clone());
        let storage = self.storage.clone();
        let _ = ctx;
        Box::pin(async move {
            let Some(rec) = found else {
                return Err(AlgorithmError::ExportNotFound {
                    algorithm_name: m.name,
                    algorithm_major_version: m.major,
                }
                .into());
            };
            if rec.get("exportable").and_then(Value::as_bool) == Some(false) {
                return Err(AlgorithmError::NotExportable {
                    algorithm_name: m.name,
                    algorithm_major_version: m.major,
                }
                .into());
            }
            export(&storage, &rec, m).await
        })
    }
}

async fn export(
    storage: &Addr<StorageGateway>,
    rec: &Value,
    m: ExportAlgorithm,
) -> Result<(String, std::fs::File), ApiError> {
    let minor = m.minor.clone().unwrap_or_else(|| {
        rec["latest_algorithm_minor_version"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    });
    let Some(entry) = rec["algorithm_minor_version"].get(&minor) else {
        return Err(AlgorithmError::MinorNotFound {
            algorithm_name: m.name,
            algorithm_major_version: m.major,
            algorithm_minor_version: minor,
        }
        .into());
    };
    let module_id = entry["module_id"].as_str().unwrap_or_default().to_string();
    let mut assets: Map<String, Value> = entry["assets"].as_object().cloned().unwrap_or_default();
    if let Some(cp) = &m.checkpoint_id {
        let bytes = flatten(
            storage
                .send(GetBytes {
                    collection: CHECKPOINT_STORE,
                    key: cp.clone(),
                })
                .await,
        )
        .map_err(|_| AlgorithmError::CheckpointNotFound {
            checkpoint_id: cp.clone(),
        })?;
        let manifest: Value =
            serde_json::from_slice(&bytes).map_err(|_| AlgorithmError::CheckpointNotFound {
                checkpoint_id: cp.clone(),
            })?;
        if let Some(over) = manifest["assets"].as_object() {
            assets.extend(over.clone());
        }
    }
    let module_zip = match flatten(
        storage
            .send(GetBytes {
                collection: MODULE_STORE,
                key: module_id.clone(),
            })
            .await,
    ) {
        Ok(zip) => zip,
        Err(e) => return Err(export_read_failed(storage, rec, &m, &minor, &e, "module").await),
    };
    let work = tempfile::tempdir().map_err(|e| AlgorithmError::ExportFailed(e.to_string()))?;
    let mut asset_files = Vec::new();
    for (rel, id) in &assets {
        if !safe_rel(rel) {
            return Err(AlgorithmError::ExportSecurity { path: rel.clone() }.into());
        }
        let id = id.as_str().unwrap_or_default().to_string();
        let local = work.path().join(format!("asset-{}", asset_files.len()));
        if let Err(e) = download_to(storage, ASSET_STORE, &id, &local).await {
            let what = format!("asset {rel}");
            return Err(export_read_failed(storage, rec, &m, &minor, &e, &what).await);
        }
        asset_files.push((rel.clone(), local));
    }
    let out_path = work.path().join("export.zip");
    let out = out_path.clone();
    tokio::task::spawn_blocking(move || write_export(&module_zip, &asset_files, &out))
        .await
        .map_err(|e| AlgorithmError::ExportFailed(e.to_string()))??;
    let file =
        std::fs::File::open(&out_path).map_err(|e| AlgorithmError::ExportFailed(e.to_string()))?;
    // The open handle keeps the data alive after the directory is removed.
    drop(work);
    Ok((format!("{}_v{}", m.name, m.major), file))
}

/// The error of an export whose object could not be read. An object that is gone because the
/// algorithm or the exported minor version was deleted meanwhile makes the export a 404, as if
/// the deletion had come first; anything else is a failed export.
async fn export_read_failed(
    storage: &Addr<StorageGateway>,
    rec: &Value,
    m: &ExportAlgorithm,
    minor: &str,
    error: &StorageError,
    what: &str,
) -> ApiError {
    let failed = || AlgorithmError::ExportFailed(format!("{what}: {error}")).into();
    if !error.is_not_found() {
        return failed();
    }
    let stored = flatten(
        storage
            .send(GetBytes {
                collection: ALGORITHM_STORE,
                key: record::record_key(rec),
            })
            .await,
    );
    match stored {
        Err(e) if e.is_not_found() => AlgorithmError::ExportNotFound {
            algorithm_name: m.name.clone(),
            algorithm_major_version: m.major.clone(),
        }
        .into(),
        Ok(bytes)
            if serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|r| r["algorithm_minor_version"].get(minor).cloned())
                .is_none() =>
        {
            AlgorithmError::MinorNotFound {
                algorithm_name: m.name.clone(),
                algorithm_major_version: m.major.clone(),
                algorithm_minor_version: minor.to_string(),
            }
            .into()
        }
        _ => failed(),
    }
}

fn safe_rel(rel: &str) -> bool {
    !rel.is_empty()
        && !rel.starts_with('/')
        && !rel.contains('\0')
        && !rel.split(['/', '\\']).any(|c| c == "..")
}

async fn download_to(
    storage: &Addr<StorageGateway>,
    collection: &'static str,
    key: &str,
    dest: &Path,
) -> Result<(), StorageError> {
    use tokio::io::AsyncWriteExt;
    let (_, mut stream) = flatten(
        storage
            .send(super::storage_gateway::GetStream {
                collection,
                key: key.to_string(),
            })
            .await,
    )?;
    let mut f = tokio::fs::File::create(dest)
        .await
        .map_err(|e| StorageError::from_io("export", e))?;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| StorageError::from_io("export", e))?;
        f.write_all(&chunk)
            .await
            .map_err(|e| StorageError::from_io("export", e))?;
    }
    f.flush()
        .await
        .map_err(|e| StorageError::from_io("export", e))
}

fn write_export(
    module_zip: &[u8],
    assets: &[(String, PathBuf)],
    out: &Path,
) -> Result<(), ApiError> {
    use std::io::{Read, Write};
    let fail = |e: String| ApiError::from(AlgorithmError::ExportFailed(e));
    let mut src =
        zip::ZipArchive::new(std::io::Cursor::new(module_zip)).map_err(|e| fail(e.to_string()))?;
    let mut dst = zip::ZipWriter::new(std::fs::File::create(out).map_err(|e| fail(e.to_string()))?);
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    let mut written = BTreeSet::new();
    for i in 0..src.len() {
        let mut f = src.by_index(i).map_err(|e| fail(e.to_string()))?;
        if f.is_dir() {
            continue;
        }
        let name = f.name().to_string();
        let Some((_, rest)) = name.split_once('/') else {
            continue;
        };
        if rest.is_empty() {
            continue;
        }
        if !safe_rel(rest) {
            return Err(AlgorithmError::ExportSecurity {
                path: rest.to_string(),
            }
            .into());
        }
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).map_err(|e| fail(e.to_string()))?;
        dst.start_file(rest, opts)
            .map_err(|e| fail(e.to_string()))?;
        dst.write_all(&buf).map_err(|e| fail(e.to_string()))?;
        written.insert(rest.to_string());
    }
    for (rel, path) in assets {
        if written.contains(rel) {
            continue;
        }
        dst.start_file(rel.as_str(), opts)
            .map_err(|e| fail(e.to_string()))?;
        let mut f = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
        std::io::copy(&mut f, &mut dst).map_err(|e| fail(e.to_string()))?;
    }
    dst.finish().map_err(|e| fail(e.to_string()))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The pipeline, run in futures that hold the permit
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Pipeline {
    storage: Addr<StorageGateway>,
    emergency: Addr<EmergencyWriter>,
    me: Addr<Deployer>,
    config: DeployerConfig,
    permit: Arc<Semaphore>,
}

fn storage_err(e: StorageError) -> ApiError {
    DeployError::Storage(e).into()
}

/// The name and major overrides follow the rules of their `pyproject.toml` counterparts.
fn check_overrides(ov: &DeployOverrides) -> Result<(), DeployError> {
    let invalid = |parameter| move |rule| DeployError::InvalidOverride { parameter, rule };
    if let Some(name) = &ov.algorithm_name {
        pyproject::check_name(name).map_err(invalid("algorithm_name"))?;
        if let Some(w) = pyproject::name_warning(name) {
            tracing::warn!(warning = %w, "algorithm_name override");
        }
    }
    if let Some(major) = &ov.algorithm_major_version {
        pyproject::check_version_number(major).map_err(invalid("algorithm_major_version"))?;
    }
    Ok(())
}

fn zip_error(path: &Path, e: zip_input::ZipInputError) -> DeployError {
    use zip_input::ZipInputError as Z;
    let path = path.display().to_string();
    match e {
        Z::TooLarge(reason) => DeployError::ZipTooLarge { path, reason },
        Z::NotAZip(reason) | Z::Unsafe(reason) | Z::Io(reason) => {
            DeployError::InvalidZip { path, reason }
        }
    }
}

impl Pipeline {
    /// Waits for the one permit every change holds, so changes never interleave.
    async fn lock(&self) -> Result<SemaphorePermit<'_>, ApiError> {
        self.permit
            .acquire()
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))
    }

    fn check_allowed(&self, path: &Path) -> Result<(), ApiError> {
        if self.config.allowed_paths.is_empty() {
            return Ok(());
        }
        let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let ok = self.config.allowed_paths.iter().any(|a| {
            let a = std::fs::canonicalize(a).unwrap_or_else(|_| a.clone());
            canon.starts_with(&a)
        });
        if ok {
            Ok(())
        } else {
            let allowed = self
                .config
                .allowed_paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ");
            Err(DeployError::PathNotAllowed {
                path: path.display().to_string(),
                allowed,
            }
            .into())
        }
    }

    /// Existence, `deploy_allowed_paths` (unless `trusted`) and type; `deploy-algorithms` deploys
    /// folders only.
    fn check_path(&self, path: &Path, cli: bool, trusted: bool) -> Result<DeploySource, ApiError> {
        let text = path.display().to_string();
        if !path.exists() {
            return Err(DeployError::PathNotFound { path: text }.into());
        }
        if !trusted {
            self.check_allowed(path)?;
        }
        if path.is_dir() {
            Ok(if cli {
                DeploySource::Cli
            } else {
                DeploySource::HttpFolder
            })
        } else if !cli && path.is_file() && text.to_lowercase().ends_with(".zip") {
            Ok(DeploySource::HttpZip)
        } else {
            Err(DeployError::InvalidPathType { path: text }.into())
        }
    }

    async fn deploy(
        &self,
        path: &Path,
        ov: &DeployOverrides,
        source: DeploySource,
    ) -> Result<DeployResult, ApiError> {
        let _permit = self.lock().await?;
        check_overrides(ov)?;
        // Dropped on every return, which removes a partial extraction too.
        let work = tempfile::tempdir().map_err(|e| DeployError::Internal(e.to_string()))?;
        let root = match source {
            DeploySource::HttpZip => {
                let dest = work.path().join("unzipped");
                std::fs::create_dir_all(&dest).map_err(|e| DeployError::Internal(e.to_string()))?;
                let (zip, into) = (path.to_path_buf(), dest.clone());
                tokio::task::spawn_blocking(move || zip_input::extract(&zip, &into))
                    .await
                    .map_err(|e| DeployError::Internal(e.to_string()))?
                    .map_err(|e| zip_error(path, e))?
            }
            _ => path.to_path_buf(),
        };
        // Reading the folder may be slow (a network mount): off the actors' thread.
        let folder = root.clone();
        let (cfg, files) =
            tokio::task::spawn_blocking(move || (pyproject::read(&folder), scan::scan(&folder)))
                .await
                .map_err(|e| DeployError::Internal(e.to_string()))?;
        // Messages name the zip the client sent, not the folder it was extracted to.
        let (cfg, files) = match source {
            DeploySource::HttpZip => {
                let (unzipped, sent) = (root.display().to_string(), path.display().to_string());
                let name_zip = |e: String| e.replace(&unzipped, &sent);
                (cfg.map_err(name_zip), files.map_err(name_zip))
            }
            _ => (cfg, files),
        };
        let cfg = cfg.map_err(DeployError::InvalidAlgorithm)?;
        for w in &cfg.warnings {
            tracing::debug!(warning = %w, "pyproject");
        }
        let name = ov
            .algorithm_name
            .clone()
            .unwrap_or_else(|| cfg.name.clone());
        let major = ov
            .algorithm_major_version
            .clone()
            .unwrap_or_else(|| cfg.major.clone());
        record::check_key_fits(&name, &major).map_err(DeployError::InvalidAlgorithm)?;
        let files = files.map_err(|e| DeployError::RunnerNotFound { root: e })?;
        if matches!(source, DeploySource::HttpFolder) {
            // A symlinked file is read through: its target must be allowed too.
            for link in &files.linked {
                self.check_allowed(link)?;
            }
        }
        for w in &files.warnings {
            tracing::warn!(warning = %w, "algorithm folder");
        }
        let built = module::build(
            &files,
            cfg.obfuscate,
            cfg.pyc_only,
            &self.config.python_tool,
            work.path(),
        )
        .await
        .map_err(DeployError::ModuleCreateFailed)?;
        if cfg.check_importable {
            module::check_import(&self.config.python_tool, &built)
                .await
                .map_err(DeployError::ImportCheckFailed)?;
        }
        for w in &built.warnings {
            tracing::warn!(warning = %w, algorithm = %name, "module build");
        }

        let existing = self
            .me
            .send(FindByNameMajor {
                name: name.clone(),
                major: major.clone(),
            })
            .await?;
        let mut uploaded: Vec<(&'static str, String)> = Vec::new();
        let result = self
            .store(
                &cfg,
                &name,
                &major,
                &built,
                &files,
                existing,
                ov,
                source,
                &mut uploaded,
            )
            .await;
        if result.is_err() {
            for (collection, key) in uploaded {
                let _ = self.storage.send(DeleteObject { collection, key }).await;
            }
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn store(
        &self,
        cfg: &pyproject::AlgorithmConfig,
        name: &str,
        major: &str,
        built: &module::BuiltModule,
        files: &scan::Scan,
        existing: Option<(String, Value)>,
        ov: &DeployOverrides,
        source: DeploySource,
        uploaded: &mut Vec<(&'static str, String)>,
    ) -> Result<DeployResult, ApiError> {
        let exists = |collection, key: String| async move {
            flatten(self.storage.send(Exists { collection, key }).await)
        };
        if !exists(MODULE_STORE, built.module_id.clone())
            .await
            .map_err(storage_err)?
        {
            self.put_file(MODULE_STORE, &built.module_id, &built.zip_path, |body| body)
                .await
                .map_err(storage_err)?;
            uploaded.push((MODULE_STORE, built.module_id.clone()));
        }
        let mut assets = Map::new();
        for (rel, path) in &files.assets {
            let p = path.clone();
            let (id, _) = tokio::task::spawn_blocking(move || module::file_md5(&p))
                .await
                .map_err(|e| DeployError::Internal(e.to_string()))?
                .map_err(|e| DeployError::Internal(format!("cannot read asset {rel}: {e}")))?;
            if !exists(ASSET_STORE, id.clone()).await.map_err(storage_err)? {
                let changed = Arc::new(Mutex::new(None));
                let put = self
                    .put_file(ASSET_STORE, &id, path, |body| {
                        module::md5_checked(body, id.clone(), changed.clone())
                    })
                    .await;
                if changed.lock().is_ok_and(|c| c.is_some()) {
                    return Err(DeployError::InvalidAlgorithm(format!(
                        "the asset {rel} changed while it was being deployed; deploy again once \
                         it no longer changes"
                    ))
                    .into());
                }
                put.map_err(storage_err)?;
                uploaded.push((ASSET_STORE, id.clone()));
            }
            assets.insert(rel.clone(), json!(id));
        }

        let now = utc_iso_now();
        let is_new = existing.is_none();
        let (old_key, mut rec, new_minor) = match existing {
            None => {
                let entry = record::minor_entry(&now, &built.module_id, &assets);
                (
                    None,
                    record::new_record(&uuid1(), name, major, cfg, entry, &now),
                    true,
                )
            }
            Some((key, mut rec)) => {
                let added = record::insert_minor(&mut rec, &built.module_id, &assets, &now);
                rec["exportable"] = json!(cfg.exportable);
                (Some(key), rec, added)
            }
        };
        match source {
            DeploySource::Cli => {}
            DeploySource::HttpFolder => {
                rec["removable"] = json!(ov.removable.unwrap_or(cfg.removable));
            }
            DeploySource::HttpZip => {
                let current = rec
                    .get("removable")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                rec["removable"] =
                    json!(ov
                        .removable
                        .unwrap_or(if is_new { cfg.removable } else { current }));
            }
        }
        if let Some(e) = ov.exportable {
            rec["exportable"] = json!(e);
        }
        rec["storage_metrics"] = compute_metrics(&self.storage, &rec)
            .await
            .map_err(storage_err)?;
        if let Some(m) = rec.as_object_mut() {
            m.shift_remove("storage_metrics_stale");
        }

        let key = record::record_key(&rec);
        let body = Bytes::from(record::to_pretty_bytes(&rec));
        flatten(
            self.storage
                .send(PutBytes {
                    collection: ALGORITHM_STORE,
                    key: key.clone(),
                    body,
                })
                .await,
        )
        .map_err(storage_err)?;
        let mut removed = Vec::new();
        if let Some(old) = old_key.filter(|k| *k != key) {
            let _ = flatten(
                self.storage
                    .send(DeleteObject {
                        collection: ALGORITHM_STORE,
                        key: old.clone(),
                    })
                    .await,
            );
            removed.push(old);
        }
        let result = DeployResult {
            algorithm_id: rec["algorithm_id"].as_str().unwrap_or_default().to_string(),
            algorithm_name: name.to_string(),
            algorithm_major_version: major.to_string(),
            algorithm_minor_version: rec["latest_algorithm_minor_version"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            new_minor,
        };
        self.me
            .send(IndexChanged {
                removed,
                written: Some((key, rec)),
            })
            .await?;
        tracing::info!(
            algorithm_id = %result.algorithm_id,
            algorithm = %format!("{} {}.{}", result.algorithm_name, result.algorithm_major_version, result.algorithm_minor_version),
            new_minor,
            "algorithm deployed"
        );
        Ok(result)
    }

    /// Streams the file at `path` to storage, through `wrap`.
    async fn put_file(
        &self,
        collection: &'static str,
        key: &str,
        path: &Path,
        wrap: impl FnOnce(ByteStream) -> ByteStream,
    ) -> Result<u64, StorageError> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| StorageError::from_io("deploy", e))?;
        let body = wrap(tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).boxed());
        flatten(
            self.storage
                .send(PutStream {
                    collection,
                    key: key.to_string(),
                    body,
                })
                .await,
        )
    }

    async fn write_deploy_record(&self, id: &str, record: &Value) -> Result<(), StorageError> {
        let body = Bytes::from(serde_json::to_vec(record).unwrap_or_default());
        flatten(
            self.storage
                .send(PutBytes {
                    collection: DEPLOY_STORE,
                    key: id.to_string(),
                    body,
                })
                .await,
        )
    }

    async fn emergency_deploy(&self, id: &str, record: Value, e: &StorageError) {
        let _ = self
            .emergency
            .send(WriteEmergencyRecord {
                collection: DEPLOY_STORE,
                id: id.to_string(),
                record,
                error_message: e.to_string(),
                error_code: e.code().to_string(),
                retryable: e.retryable(),
            })
            .await;
    }

    /// D2's background part; FAILED goes to `deploy-store` too (spec-recommended fix).
    async fn run_async_deploy(
        self,
        id: String,
        mut record: Value,
        path: PathBuf,
        ov: DeployOverrides,
    ) {
        record["status"] = json!("RUNNING");
        record["time_started"] = json!(local_now());
        let _ = self.write_deploy_record(&id, &record).await;
        let outcome = match self.check_path(&path, false, false) {
            Ok(source) => self.deploy(&path, &ov, source).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(r) => {
                record["status"] = json!("COMPLETED");
                record["time_completed"] = json!(local_now());
                record["algorithm_id"] = json!(r.algorithm_id);
                record["algorithm_name"] = json!(r.algorithm_name);
                record["algorithm_major_version"] = json!(r.algorithm_major_version);
                record["algorithm_minor_version"] = json!(r.algorithm_minor_version);
            }
            Err(e) => {
                tracing::warn!(deploy_id = %id, error = %e, "async deploy failed");
                record["status"] = json!("FAILED");
                record["time_completed"] = json!(local_now());
                // The message, and why (a synchronous deploy has it in `details`).
                let reason = e
                    .row()
                    .details
                    .and_then(|d| d["reason"].as_str().map(String::from));
                record["log"] = json!(match reason {
                    Some(reason) => format!("{e} ({reason})"),
                    None => e.to_string(),
                });
            }
        }
        if let Err(e) = self.write_deploy_record(&id, &record).await {
            self.emergency_deploy(&id, record, &e).await;
        }
    }

    async fn delete(&self, m: DeleteAlgorithm) -> Result<String, ApiError> {
        let _permit = self.lock().await?;
        let all = self.me.send(AllRecords).await?;
        let Some((key, rec)) = all
            .iter()
            .find(|(k, _)| k.starts_with(&format!("{}~", m.algorithm_id)))
            .cloned()
        else {
            return Err(AlgorithmError::NotFoundById {
                algorithm_id: m.algorithm_id,
            }
            .into());
        };
        if !m.force && rec.get("removable").and_then(Value::as_bool) != Some(true) {
            return Err(AlgorithmError::NotRemovable {
                algorithm_id: m.algorithm_id,
            }
            .into());
        }
        let remove_err =
            |e: StorageError| ApiError::from(AlgorithmError::RemoveFailed(e.to_string()));
        match m.minor {
            None => {
                let name = rec["algorithm_name"].clone();
                let major = rec["algorithm_major_version"].clone();
                let doomed: Vec<(String, Value)> = all
                    .iter()
                    .filter(|(_, r)| {
                        r["algorithm_name"] == name && r["algorithm_major_version"] == major
                    })
                    .cloned()
                    .collect();
                let kept: Vec<&Value> = all
                    .iter()
                    .filter(|(k, _)| !doomed.iter().any(|(d, _)| d == k))
                    .map(|(_, r)| r)
                    .collect();
                let (keep_m, keep_a) = references_of(kept.into_iter());
                let mut removed = Vec::new();
                for (k, r) in &doomed {
                    let (mods, assets, checkpoints) = record::referenced(r);
                    self.delete_unreferenced(&mods, &keep_m, &assets, &keep_a)
                        .await
                        .map_err(remove_err)?;
                    for cp in checkpoints {
                        self.delete_checkpoint(&cp).await;
                    }
                    flatten(
                        self.storage
                            .send(DeleteObject {
                                collection: ALGORITHM_STORE,
                                key: k.clone(),
                            })
                            .await,
                    )
                    .map_err(remove_err)?;
                    removed.push(k.clone());
                }
                self.me
                    .send(IndexChanged {
                        removed,
                        written: None,
                    })
                    .await?;
                tracing::info!(algorithm_id = %m.algorithm_id, "algorithm removed");
                Ok("Algorithm removed".into())
            }
            Some(minor) => {
                let detail = format!("Algorithm minor version {minor} removed");
                let mut rec = rec;
                let Some(entry) = rec["algorithm_minor_version"]
                    .as_object_mut()
                    .and_then(|m| m.shift_remove(&minor))
                else {
                    return Ok(detail);
                };
                let others = all.iter().filter(|(k, _)| *k != key).map(|(_, r)| r);
                let (keep_m, keep_a) = references_of(others.chain(std::iter::once(&rec)));
                let (mods, assets) = references_of(std::iter::once(
                    &json!({"algorithm_minor_version": {"x": entry}}),
                ));
                self.delete_unreferenced(&mods, &keep_m, &assets, &keep_a)
                    .await
                    .map_err(remove_err)?;
                let remaining: Vec<i64> = rec["algorithm_minor_version"]
                    .as_object()
                    .map(|m| m.keys().filter_map(|k| k.parse().ok()).collect())
                    .unwrap_or_default();
                if remaining.is_empty()
                    && rec["algorithm_minor_version"]
                        .as_object()
                        .is_some_and(|m| m.is_empty())
                {
                    flatten(
                        self.storage
                            .send(DeleteObject {
                                collection: ALGORITHM_STORE,
                                key: key.clone(),
                            })
                            .await,
                    )
                    .map_err(remove_err)?;
                    self.me
                        .send(IndexChanged {
                            removed: vec![key],
                            written: None,
                        })
                        .await?;
                    return Ok(detail);
                }
                if rec["latest_algorithm_minor_version"].as_str() == Some(minor.as_str()) {
                    rec["latest_algorithm_minor_version"] = match remaining.iter().max() {
                        Some(max) => json!(max.to_string()),
                        None => rec["algorithm_minor_version"]
                            .as_object()
                            .and_then(|m| m.keys().next_back().cloned())
                            .map(Value::String)
                            .unwrap_or(Value::Null),
                    };
                }
                rec["storage_metrics"] = compute_metrics(&self.storage, &rec)
                    .await
                    .map_err(remove_err)?;
                self.rewrite_record(key, rec, remove_err).await?;
                Ok(detail)
            }
        }
    }

    /// Writes `rec` over `key` in `algorithm-store` and tells the index; `storage_err` maps a
    /// refused write to the caller's error.
    async fn rewrite_record(
        &self,
        key: String,
        rec: Value,
        storage_err: impl FnOnce(StorageError) -> ApiError,
    ) -> Result<(), ApiError> {
        let body = Bytes::from(serde_json::to_vec(&rec).unwrap_or_default());
        flatten(
            self.storage
                .send(PutBytes {
                    collection: ALGORITHM_STORE,
                    key: key.clone(),
                    body,
                })
                .await,
        )
        .map_err(storage_err)?;
        self.me
            .send(IndexChanged {
                removed: vec![],
                written: Some((key, rec)),
            })
            .await?;
        Ok(())
    }

    async fn link_checkpoint(&self, m: LinkCheckpoint) -> Result<(), ApiError> {
        let _permit = self.lock().await?;
        let all = self.me.send(AllRecords).await?;
        let prefix = format!("{}~", m.algorithm_id);
        let Some((key, rec)) = all.iter().find(|(k, _)| k.starts_with(&prefix)) else {
            return Err(AlgorithmError::NotFoundById {
                algorithm_id: m.algorithm_id,
            }
            .into());
        };
        let mut rec = rec.clone();
        if !rec.get("checkpoints").is_some_and(Value::is_array) {
            rec["checkpoints"] = json!([]);
        }
        if let Some(ids) = rec["checkpoints"].as_array_mut() {
            if !ids
                .iter()
                .any(|v| v.as_str() == Some(m.checkpoint_id.as_str()))
            {
                ids.push(json!(m.checkpoint_id));
            }
        }
        rec["storage_metrics_stale"] = json!(true);
        self.rewrite_record(key.clone(), rec, ApiError::from)
            .await?;
        tracing::info!(algorithm_id = %m.algorithm_id, checkpoint_id = %m.checkpoint_id, "checkpoint registered");
        Ok(())
    }

    async fn unlink_checkpoint(&self, m: UnlinkCheckpoint) -> Result<(), ApiError> {
        let _permit = self.lock().await?;
        let all = self.me.send(AllRecords).await?;
        let by_key = m
            .algorithm_key
            .as_ref()
            .and_then(|key| all.iter().find(|(k, _)| k == key));
        let prefix = format!("{}~", m.algorithm_id);
        let Some((key, rec)) = by_key.or_else(|| all.iter().find(|(k, _)| k.starts_with(&prefix)))
        else {
            tracing::warn!(checkpoint_id = %m.checkpoint_id, algorithm_id = %m.algorithm_id, "the checkpoint's algorithm is gone; nothing to unlink");
            return Ok(());
        };
        let mut rec = rec.clone();
        let Some(ids) = rec.get_mut("checkpoints").and_then(Value::as_array_mut) else {
            return Ok(());
        };
        ids.retain(|v| v.as_str() != Some(m.checkpoint_id.as_str()));
        rec["storage_metrics_stale"] = json!(true);
        self.rewrite_record(key.clone(), rec, ApiError::from)
            .await?;
        Ok(())
    }

    /// Deletes one checkpoint as C3 does (`algorithms.md` §5 step 3): its assets, its id in the
    /// training record's `output_checkpoint_ids`, then the manifest. A missing manifest or
    /// training record no longer aborts the deletion (the spec's fix), so nothing here fails.
    async fn delete_checkpoint(&self, checkpoint_id: &str) {
        let manifest = flatten(
            self.storage
                .send(GetBytes {
                    collection: CHECKPOINT_STORE,
                    key: checkpoint_id.to_string(),
                })
                .await,
        )
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
        if let Some(manifest) = &manifest {
            let assets = manifest["assets"]
                .as_object()
                .into_iter()
                .flat_map(|a| a.values());
            for id in assets.filter_map(Value::as_str) {
                let _ = flatten(
                    self.storage
                        .send(DeleteObject {
                            collection: ASSET_STORE,
                            key: id.to_string(),
                        })
                        .await,
                );
            }
            if let Some(training_id) = manifest["training_id"].as_str() {
                self.unlink_from_training(training_id, checkpoint_id).await;
            }
        }
        let _ = flatten(
            self.storage
                .send(DeleteObject {
                    collection: CHECKPOINT_STORE,
                    key: checkpoint_id.to_string(),
                })
                .await,
        );
    }

    async fn unlink_from_training(&self, training_id: &str, checkpoint_id: &str) {
        let Ok(bytes) = flatten(
            self.storage
                .send(GetBytes {
                    collection: TRAINING_STORE,
                    key: training_id.to_string(),
                })
                .await,
        ) else {
            return;
        };
        let Ok(mut training) = serde_json::from_slice::<Value>(&bytes) else {
            return;
        };
        let Some(ids) = training["output_checkpoint_ids"].as_array_mut() else {
            return;
        };
        let before = ids.len();
        ids.retain(|id| id.as_str() != Some(checkpoint_id));
        if ids.len() == before {
            return;
        }
        let body = Bytes::from(serde_json::to_vec(&training).unwrap_or_default());
        let _ = flatten(
            self.storage
                .send(PutBytes {
                    collection: TRAINING_STORE,
                    key: training_id.to_string(),
                    body,
                })
                .await,
        );
    }

    async fn delete_unreferenced(
        &self,
        mods: &BTreeSet<String>,
        keep_m: &BTreeSet<String>,
        assets: &BTreeSet<String>,
        keep_a: &BTreeSet<String>,
    ) -> Result<(), StorageError> {
        for id in mods.difference(keep_m) {
            flatten(
                self.storage
                    .send(DeleteObject {
                        collection: MODULE_STORE,
                        key: id.clone(),
                    })
                    .await,
            )?;
        }
        for id in assets.difference(keep_a) {
            flatten(
                self.storage
                    .send(DeleteObject {
                        collection: ASSET_STORE,
                        key: id.clone(),
                    })
                    .await,
            )?;
        }
        Ok(())
    }
}

/// Union of module and asset ids referenced by every minor of `records`.
fn references_of<'a>(
    records: impl Iterator<Item = &'a Value>,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut m = BTreeSet::new();
    let mut a = BTreeSet::new();
    for r in records {
        let (mods, assets, _) = record::referenced(r);
        m.extend(mods);
        a.extend(assets);
    }
    (m, a)
}

/// Start-up of a server: async deploys a previous process left PENDING or RUNNING will never
/// finish; mark them FAILED so clients stop polling (`rest-api.md` §6.4).
#[derive(Message)]
#[rtype(result = "usize")]
pub struct FailUnfinishedDeploys;

impl Handler<FailUnfinishedDeploys> for Deployer {
    type Result = ResponseFuture<usize>;
    fn handle(&mut self, _: FailUnfinishedDeploys, _: &mut Context<Self>) -> Self::Result {
        let storage = self.storage.clone();
        Box::pin(async move {
            let Ok(items) = flatten(
                storage
                    .send(ListObjects {
                        collection: DEPLOY_STORE,
                    })
                    .await,
            ) else {
                return 0;
            };
            let mut failed = 0;
            for info in items {
                let got = flatten(
                    storage
                        .send(GetBytes {
                            collection: DEPLOY_STORE,
                            key: info.key.clone(),
                        })
                        .await,
                );
                let Some(mut rec) = got
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                else {
                    continue;
                };
                let status = rec["status"]
                    .as_str()
                    .unwrap_or_default()
                    .to_ascii_uppercase();
                if status != "PENDING" && status != "RUNNING" {
                    continue;
                }
                rec["status"] = json!("FAILED");
                rec["time_completed"] = json!(local_now());
                rec["log"] = json!(format!(
                    "The server stopped before this deploy finished (it was {status})."
                ));
                let body = Bytes::from(serde_json::to_vec(&rec).unwrap_or_default());
                if flatten(
                    storage
                        .send(PutBytes {
                            collection: DEPLOY_STORE,
                            key: info.key,
                            body,
                        })
                        .await,
                )
                .is_ok()
                {
                    failed += 1;
                }
            }
            if failed > 0 {
                tracing::warn!(
                    deploys = failed,
                    "marked deploys left unfinished by a previous run as FAILED"
                );
            }
            failed
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(key: &str, size: u64, version: &str) -> ObjectInfo {
        ObjectInfo {
            key: key.to_string(),
            size,
            last_modified: Some("2026-01-01T00:00:00+00:00".into()),
            version: Some(version.to_string()),
        }
    }

    fn known(listed: &[ObjectInfo]) -> BTreeMap<String, Option<Fingerprint>> {
        listed
            .iter()
            .map(|i| (i.key.clone(), Some(Fingerprint::from(i))))
            .collect()
    }

    fn changed_keys(diff: &ListingDiff) -> Vec<&str> {
        diff.changed.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn an_unchanged_listing_needs_no_reads() {
        let listed = [info("a~x~1", 10, "v1"), info("b~y~1~0", 20, "v2")];
        assert_eq!(
            diff_listing(&known(&listed), &listed),
            ListingDiff::default()
        );
    }

    #[test]
    fn new_rewritten_and_deleted_keys_are_found() {
        let before = [info("a~x~1", 10, "v1"), info("b~y~1", 20, "v2")];
        let after = [
            info("a~x~1", 10, "v9"),
            info("c~z~2", 5, "v3"),
            info("not-a-record", 1, "v4"),
        ];
        let diff = diff_listing(&known(&before), &after);
        assert_eq!(changed_keys(&diff), ["a~x~1", "c~z~2"]);
        assert_eq!(diff.changed[0].1, Fingerprint::from(&after[0]));
        assert_eq!(diff.removed, ["b~y~1"]);
    }

    #[test]
    fn any_field_of_the_fingerprint_counts_as_a_change() {
        let before = [info("a~x~1", 10, "v1")];
        let mut resized = before[0].clone();
        resized.size = 11;
        let mut touched = before[0].clone();
        touched.last_modified = Some("2026-01-01T00:00:01+00:00".into());
        let mut untokened = before[0].clone();
        untokened.version = None;
        for after in [resized, touched, untokened] {
            let diff = diff_listing(&known(&before), std::slice::from_ref(&after));
            assert_eq!(changed_keys(&diff), ["a~x~1"], "{after:?}");
            assert!(diff.removed.is_empty());
        }
    }

    #[test]
    fn a_record_we_wrote_is_read_back_once() {
        let listed = [info("a~x~1", 10, "v1")];
        let mut ours = known(&listed);
        ours.insert("a~x~1".into(), None);
        assert_eq!(changed_keys(&diff_listing(&ours, &listed)), ["a~x~1"]);
        assert_eq!(
            diff_listing(&known(&listed), &listed),
            ListingDiff::default()
        );
    }

    #[test]
    fn malformed_keys_are_never_reported() {
        let listed = [
            info("one~two~three~four~five", 1, "v"),
            info("plain", 1, "v"),
        ];
        assert_eq!(
            diff_listing(&BTreeMap::new(), &listed),
            ListingDiff::default()
        );
    }
}
