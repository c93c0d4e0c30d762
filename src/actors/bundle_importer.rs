//! Bundle importer: merges an encrypted algorithm bundle into live storage, all or nothing.
//!
//! Owns: a one-permit semaphore (the process-wide import lock of `platform.md` §5.5 step 9) and
//! the addresses it works through: the storage gateway for every read and write, the deployer to
//! reload its index afterwards.
//! Messages: [`ImportBundle`] (the semantic import alone), [`RunStartupImport`] (the hash gate,
//! the `system-store/migration-state` document and the import, §5.6).
//!
//! Flow of an import, under the permit: 1. open and verify the bundle (key, archive, HMAC,
//! manifest) in a blocking task; 2. require the four algorithm collections; 3. list the target's
//! `algorithm-store`; 4. for each bundled record in key order: find the stored record by
//! (name, major), copy missing modules and assets, copy checkpoint manifests pointed at the
//! target id, merge the record (minor-version rule, overwritten metadata) and upsert it; 5. tell
//! the deployer to reload its index. Objects stream from the zip through the decryptor into the
//! gateway, so nothing is held whole in memory, and a blob that fails its tag or checksum ends
//! its stream with an error, which makes the storage write store nothing.
//!
//! Every write is journalled first ("delete" for a new key, "restore these bytes" for an
//! overwritten one). On any failure the journal is replayed in reverse, so the store is left as
//! it was, and the error is returned (the start-up routine records FAILED and aborts start-up).
//!
//! Failure: a panic in an import is answered with [`BundleError::ImportFailed`] and restarts
//! the actor; the journal of that import is lost with it, which is why imports only run in
//! offline commands and before a server serves. Concurrent writers outside this process (another
//! server on the same storage) are not locked out, as in the original.

use super::deployer::{Deployer, ReloadIndex};
use super::guard;
use super::storage_gateway::{
    flatten, DeleteObject, EnsureCollections, Exists, GetBytes, ListObjects, PutBytes, PutStream,
    StorageGateway,
};
use crate::bundle::build::Progress;
use crate::bundle::json::{dumps, Style};
use crate::bundle::{merge, state, BundleError, BundleReader, BUNDLE_COLLECTIONS};
use crate::records::utc_iso_now;
use crate::storage::{ALGORITHM_STORE, ASSET_STORE, CHECKPOINT_STORE, MODULE_STORE};
use actix::prelude::*;
use bytes::Bytes;
use serde_json::{Map, Value};
use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::Semaphore;

const NAME: &str = "bundle_importer";

pub struct BundleImporter {
    storage: Addr<StorageGateway>,
    deployer: Addr<Deployer>,
    permit: Arc<Semaphore>,
    fail_next: bool,
}

impl BundleImporter {
    pub fn new(storage: Addr<StorageGateway>, deployer: Addr<Deployer>) -> Self {
        BundleImporter {
            storage,
            deployer,
            permit: Arc::new(Semaphore::new(1)),
            fail_next: false,
        }
    }

    fn job<T: 'static>(
        &mut self,
        ctx: &mut Context<Self>,
        body: impl std::future::Future<Output = Result<T, BundleError>> + 'static,
    ) -> ResponseFuture<Result<T, BundleError>> {
        let permit = self.permit.clone();
        let fail = std::mem::take(&mut self.fail_next);
        guard(NAME, ctx.address().recipient(), restarting, async move {
            let _held = permit
                .acquire_owned()
                .await
                .map_err(|_| BundleError::ImportFailed("the import lock is closed".into()))?;
            if fail {
                panic!("fault injected into {NAME}");
            }
            body.await
        })
    }
}

fn restarting<T>(actor: &'static str) -> Result<T, BundleError> {
    Err(BundleError::ImportFailed(format!(
        "the {actor} failed unexpectedly and is restarting"
    )))
}

impl Actor for BundleImporter {
    type Context = Context<Self>;
}

impl Supervised for BundleImporter {
    fn restarting(&mut self, _: &mut Context<Self>) {
        tracing::warn!(actor = NAME, "restarting");
        self.fail_next = false;
        self.permit = Arc::new(Semaphore::new(1));
    }
}

super::supervision_handlers!(BundleImporter, fail_next);

// ---------------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------------

/// Imports one bundle file (§5.5); returns the number of algorithm records merged.
#[derive(Message)]
#[rtype(result = "Result<usize, BundleError>")]
pub struct ImportBundle {
    pub path: PathBuf,
    pub key: String,
    pub progress: Option<Progress>,
}

impl Handler<ImportBundle> for BundleImporter {
    type Result = ResponseFuture<Result<usize, BundleError>>;
    fn handle(&mut self, m: ImportBundle, ctx: &mut Context<Self>) -> Self::Result {
        let (storage, deployer) = (self.storage.clone(), self.deployer.clone());
        self.job(ctx, async move {
            let reader = open(m.path, m.key).await?;
            let outcome = import(&storage, reader, m.progress).await;
            deployer.do_send(ReloadIndex);
            outcome.map_err(|f| f.error)
        })
    }
}

/// What the start-up routine did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupOutcome {
    /// The same file was imported successfully before; nothing was written.
    AlreadyImported,
    /// Path or key not configured: recorded as SKIPPED.
    NotConfigured,
    /// No file at the resolved path: recorded as SKIPPED.
    FileNotFound(PathBuf),
    /// Imported; the number of algorithm records merged.
    Imported(usize),
}

/// The start-up routine of §5.6: gate on the file hash, record the state, import.
#[derive(Message)]
#[rtype(result = "Result<StartupOutcome, BundleError>")]
pub struct RunStartupImport {
    /// `storage.builtin_storage_bundle_path`, prefixes already expanded.
    pub path: Option<String>,
    pub key: Option<String>,
    pub progress: Option<Progress>,
}

impl Handler<RunStartupImport> for BundleImporter {
    type Result = ResponseFuture<Result<StartupOutcome, BundleError>>;
    fn handle(&mut self, m: RunStartupImport, ctx: &mut Context<Self>) -> Self::Result {
        let (storage, deployer) = (self.storage.clone(), self.deployer.clone());
        self.job(ctx, async move {
            let outcome = startup_import(&storage, m).await;
            if matches!(outcome, Ok(StartupOutcome::Imported(_)) | Err(_)) {
                deployer.do_send(ReloadIndex);
            }
            outcome
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The start-up routine
// ---------------------------------------------------------------------------------------------

async fn read_state(storage: &Addr<StorageGateway>) -> Result<Map<String, Value>, BundleError> {
    let key = state::STATE_KEY.to_string();
    let collection = state::SYSTEM_STORE;
    if !flatten(
        storage
            .send(Exists {
                collection,
                key: key.clone(),
            })
            .await,
    )? {
        return Ok(Map::new());
    }
    match flatten(storage.send(GetBytes { collection, key }).await) {
        Ok(bytes) => Ok(state::parse(Some(&bytes))),
        Err(e) if e.is_not_found() => Ok(Map::new()),
        Err(e) => Err(e.into()),
    }
}

async fn write_state(
    storage: &Addr<StorageGateway>,
    doc: &Map<String, Value>,
) -> Result<(), BundleError> {
    flatten(
        storage
            .send(PutBytes {
                collection: state::SYSTEM_STORE,
                key: state::STATE_KEY.into(),
                body: Bytes::from(state::to_bytes(doc)),
            })
            .await,
    )?;
    Ok(())
}

async fn startup_import(
    storage: &Addr<StorageGateway>,
    m: RunStartupImport,
) -> Result<StartupOutcome, BundleError> {
    tracing::info!(target: "compox::migration", "Starting startup migration");
    flatten(
        storage
            .send(EnsureCollections {
                names: vec![state::SYSTEM_STORE],
            })
            .await,
    )?;
    let previous = read_state(storage).await?;
    let resolved = m.path.as_deref().map(state::resolve_bundle_path);
    let hash = match resolved.clone() {
        Some(p) => tokio::task::spawn_blocking(move || state::file_sha256(&p))
            .await
            .map_err(|e| BundleError::ImportFailed(e.to_string()))?
            .map_err(|e| BundleError::ImportFailed(format!("cannot hash the bundle: {e}")))?,
        None => None,
    };
    if state::already_imported(&previous, hash.as_deref()) {
        tracing::info!(target: "compox::migration", "Migration already completed for this algorithm bundle. Skipping.");
        return Ok(StartupOutcome::AlreadyImported);
    }
    write_state(storage, &state::running(&previous, hash.as_deref())).await?;
    tracing::info!(
        target: "compox::migration",
        "Algorithm bundle config: path={:?}, resolved_path={:?}, cwd={:?}, key_configured={}",
        m.path.clone().unwrap_or_default(),
        resolved.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
        std::env::current_dir().map(|p| p.display().to_string()).unwrap_or_default(),
        if m.key.is_some() { "True" } else { "False" },
    );
    let (Some(path), Some(key)) = (resolved, m.key.filter(|k| !k.is_empty())) else {
        tracing::debug!(target: "compox::migration", "Algorithm bundle path/key is not fully configured.");
        write_state(storage, &state::skipped(&previous)).await?;
        return Ok(StartupOutcome::NotConfigured);
    };
    if !path.is_file() {
        tracing::warn!(target: "compox::migration", "Algorithm bundle file not found at resolved path: {}", path.display());
        write_state(storage, &state::skipped(&previous)).await?;
        return Ok(StartupOutcome::FileNotFound(path));
    }
    tracing::info!(target: "compox::migration", "Using algorithm bundle file: {}", path.display());
    let result = match open(path, key).await {
        Ok(reader) => import(storage, reader, m.progress).await,
        Err(error) => Err(Failure {
            error,
            imported: 0,
            failed_algorithms: 0,
            rollback: Ok(()),
        }),
    };
    match result {
        Ok(n) => {
            write_state(storage, &state::completed(hash.as_deref(), n)).await?;
            tracing::info!(target: "compox::migration", algorithms = n, "algorithm bundle imported");
            Ok(StartupOutcome::Imported(n))
        }
        Err(f) => {
            let doc = state::failed(
                &previous,
                f.imported,
                f.failed_algorithms,
                &f.error,
                &f.rollback,
            );
            if let Err(e) = write_state(storage, &doc).await {
                tracing::error!(target: "compox::migration", error = %e, "cannot record the failed import");
            }
            tracing::error!(target: "compox::migration", error = %f.error, code = f.error.code(), "algorithm bundle import failed");
            Err(f.error)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The semantic import
// ---------------------------------------------------------------------------------------------

async fn open(path: PathBuf, key: String) -> Result<Arc<BundleReader>, BundleError> {
    tokio::task::spawn_blocking(move || BundleReader::open(&path, &key).map(Arc::new))
        .await
        .map_err(|e| BundleError::ImportFailed(e.to_string()))?
}

/// A failed import: the error, how far it got, and whether the rollback worked.
struct Failure {
    error: BundleError,
    imported: usize,
    failed_algorithms: usize,
    rollback: Result<(), String>,
}

enum Undo {
    Delete {
        collection: &'static str,
        key: String,
    },
    Restore {
        collection: &'static str,
        key: String,
        bytes: Bytes,
    },
}

struct Import<'a> {
    storage: &'a Addr<StorageGateway>,
    reader: Arc<BundleReader>,
    journal: Vec<Undo>,
    /// The target's `algorithm-store` keys in listing order, kept current with our own writes.
    target_keys: Vec<String>,
    progress: Option<Progress>,
    done: u64,
    total: u64,
}

async fn import(
    storage: &Addr<StorageGateway>,
    reader: Arc<BundleReader>,
    progress: Option<Progress>,
) -> Result<usize, Failure> {
    let fail = |error| Failure {
        error,
        imported: 0,
        failed_algorithms: 0,
        rollback: Ok(()),
    };
    let declared = reader.collections();
    let missing: Vec<String> = BUNDLE_COLLECTIONS
        .iter()
        .filter(|c| !declared.iter().any(|d| d == *c))
        .map(|c| c.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(fail(BundleError::MissingRequiredCollections { missing }));
    }
    let prepared = async {
        flatten(
            storage
                .send(EnsureCollections {
                    names: BUNDLE_COLLECTIONS.to_vec(),
                })
                .await,
        )?;
        flatten(
            storage
                .send(ListObjects {
                    collection: ALGORITHM_STORE,
                })
                .await,
        )
    };
    let listing = prepared.await.map_err(|e| fail(e.into()))?;
    let total = reader
        .manifest()
        .objects
        .iter()
        .filter_map(|o| o.size)
        .sum();
    let mut job = Import {
        storage,
        reader: reader.clone(),
        journal: Vec::new(),
        target_keys: listing.into_iter().map(|o| o.key).collect(),
        progress,
        done: 0,
        total,
    };
    let mut imported = 0;
    for key in reader.keys(ALGORITHM_STORE) {
        if let Err(cause) = job.import_algorithm(&key).await {
            let error = BundleError::AlgorithmImportFailed {
                algorithm_key: key,
                cause: Box::new(cause),
            };
            let rollback = job.rollback().await;
            return Err(Failure {
                error,
                imported,
                failed_algorithms: 1,
                rollback,
            });
        }
        imported += 1;
    }
    if let Some(p) = &job.progress {
        p(job.total, job.total);
    }
    Ok(imported)
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn parse_json(bytes: &[u8], what: &str) -> Result<Value, BundleError> {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| BundleError::ImportFailed(format!("{what} is not a JSON object")))
}

impl Import<'_> {
    async fn import_algorithm(&mut self, s_key: &str) -> Result<(), BundleError> {
        let s = parse_json(
            &self.reader.read_bytes(ALGORITHM_STORE, s_key)?,
            "the bundled algorithm record",
        )?;
        merge::check_bundled_record(&s).map_err(|why| {
            BundleError::ImportFailed(format!("the bundled algorithm record {s_key}: {why}"))
        })?;
        let name = text(&s["algorithm_name"]);
        let major = text(&s["algorithm_major_version"]);
        let existing_key = self
            .target_keys
            .iter()
            .find(|k| {
                let parts: Vec<&str> = k.split('~').collect();
                parts.len() >= 3 && parts[1] == name && parts[2] == major
            })
            .cloned();
        let existing = match &existing_key {
            Some(k) => Some(parse_json(
                &flatten(
                    self.storage
                        .send(GetBytes {
                            collection: ALGORITHM_STORE,
                            key: k.clone(),
                        })
                        .await,
                )?,
                "the stored algorithm record",
            )?),
            None => None,
        };
        let target_id = match &existing {
            Some(e) => text(&e["algorithm_id"]),
            None => text(&s["algorithm_id"]),
        };

        let (modules, assets) = merge::dependencies(&s, existing.is_some());
        for id in modules {
            self.copy_if_missing(MODULE_STORE, &id).await?;
        }
        for id in assets {
            self.copy_if_missing(ASSET_STORE, &id).await?;
        }
        self.import_checkpoints(&s, &target_id, &name, &major)
            .await?;

        let merged = merge::merge_record(&s, existing.as_ref(), &target_id, &utc_iso_now())
            .map_err(BundleError::ImportFailed)?;
        let key = format!(
            "{}~{}~{}",
            text(&merged["algorithm_id"]),
            text(&merged["algorithm_name"]),
            text(&merged["algorithm_major_version"])
        );
        if let Some(old) = existing_key.filter(|k| *k != key) {
            self.delete_journalled(ALGORITHM_STORE, &old).await?;
            self.target_keys.retain(|k| *k != old);
        }
        let body = dumps(&merged, Style::Indent4, false);
        self.put_journalled(ALGORITHM_STORE, &key, Bytes::from(body))
            .await?;
        if !self.target_keys.contains(&key) {
            self.target_keys.push(key.clone());
            self.target_keys.sort();
        }
        tracing::info!(algorithm_key = %key, source_key = %s_key, "algorithm imported from the bundle");
        Ok(())
    }

    /// Step 5: every listed checkpoint and its ancestors, pointed at the target algorithm.
    async fn import_checkpoints(
        &mut self,
        s: &Value,
        target_id: &str,
        name: &str,
        major: &str,
    ) -> Result<(), BundleError> {
        let mut queue: VecDeque<String> = merge::checkpoint_ids(s).into();
        let mut visited = HashSet::new();
        while let Some(id) = queue.pop_front() {
            if !visited.insert(id.clone()) {
                continue;
            }
            let mut manifest = parse_json(
                &self.reader.read_bytes(CHECKPOINT_STORE, &id)?,
                "the bundled checkpoint manifest",
            )?;
            merge::rewrite_checkpoint(&mut manifest, target_id, name, major);
            for asset in merge::asset_ids(&manifest) {
                self.copy_if_missing(ASSET_STORE, &asset).await?;
            }
            let body = dumps(&manifest, Style::Default, false);
            self.put_journalled(CHECKPOINT_STORE, &id, Bytes::from(body))
                .await?;
            if let Some(parent) = manifest["parent_checkpoint_id"]
                .as_str()
                .filter(|p| !p.is_empty())
            {
                queue.push_back(parent.to_string());
            }
        }
        Ok(())
    }

    async fn exists(&self, collection: &'static str, key: &str) -> Result<bool, BundleError> {
        Ok(flatten(
            self.storage
                .send(Exists {
                    collection,
                    key: key.to_string(),
                })
                .await,
        )?)
    }

    /// Streams a bundled object into storage unless the target already has the key.
    async fn copy_if_missing(
        &mut self,
        collection: &'static str,
        key: &str,
    ) -> Result<(), BundleError> {
        if self.exists(collection, key).await? {
            return Ok(());
        }
        let (body, outcome) = self.reader.stream_object(collection, key)?;
        self.journal.push(Undo::Delete {
            collection,
            key: key.to_string(),
        });
        let written = flatten(
            self.storage
                .send(PutStream {
                    collection,
                    key: key.to_string(),
                    body,
                })
                .await,
        );
        let read = outcome.await.unwrap_or_else(|_| {
            Err(BundleError::ImportFailed(
                "the bundle reader stopped".into(),
            ))
        });
        let size = read?;
        written?;
        self.done += size;
        if let Some(p) = &self.progress {
            p(self.done, self.total.max(self.done));
        }
        Ok(())
    }

    async fn previous(
        &self,
        collection: &'static str,
        key: &str,
    ) -> Result<Option<Bytes>, BundleError> {
        if !self.exists(collection, key).await? {
            return Ok(None);
        }
        Ok(Some(flatten(
            self.storage
                .send(GetBytes {
                    collection,
                    key: key.to_string(),
                })
                .await,
        )?))
    }

    fn undo_for(collection: &'static str, key: &str, previous: Option<Bytes>) -> Undo {
        match previous {
            Some(bytes) => Undo::Restore {
                collection,
                key: key.to_string(),
                bytes,
            },
            None => Undo::Delete {
                collection,
                key: key.to_string(),
            },
        }
    }

    async fn put_journalled(
        &mut self,
        collection: &'static str,
        key: &str,
        body: Bytes,
    ) -> Result<(), BundleError> {
        let previous = self.previous(collection, key).await?;
        if previous.as_ref() == Some(&body) {
            return Ok(());
        }
        self.journal.push(Self::undo_for(collection, key, previous));
        flatten(
            self.storage
                .send(PutBytes {
                    collection,
                    key: key.to_string(),
                    body,
                })
                .await,
        )?;
        Ok(())
    }

    async fn delete_journalled(
        &mut self,
        collection: &'static str,
        key: &str,
    ) -> Result<(), BundleError> {
        let previous = self.previous(collection, key).await?;
        if previous.is_none() {
            return Ok(());
        }
        self.journal.push(Self::undo_for(collection, key, previous));
        flatten(
            self.storage
                .send(DeleteObject {
                    collection,
                    key: key.to_string(),
                })
                .await,
        )?;
        Ok(())
    }

    /// Replays the journal in reverse; keeps going past errors and reports the first.
    async fn rollback(&mut self) -> Result<(), String> {
        let mut first_error = None;
        while let Some(undo) = self.journal.pop() {
            let result = match undo {
                Undo::Delete { collection, key } => {
                    flatten(self.storage.send(DeleteObject { collection, key }).await)
                }
                Undo::Restore {
                    collection,
                    key,
                    bytes,
                } => flatten(
                    self.storage
                        .send(PutBytes {
                            collection,
                            key,
                            body: bytes,
                        })
                        .await,
                ),
            };
            if let Err(e) = result {
                tracing::error!(error = %e, "rolling back the bundle import failed for one object");
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
        match first_error {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}
