//! Checkpoint store: reads and deletes the manifests of `algorithm-checkpoint-store`
//! (`training.md` §4).
//!
//! Owns: nothing beyond its addresses; manifests live in storage, the algorithm records that
//! list checkpoints belong to the deployer (the only writer of `algorithm-store`).
//! Messages: [`ListCheckpoints`] (C1), [`GetCheckpoint`] (C2), [`DeleteCheckpoint`] (C3).
//!
//! Delete flow (§4.5, with the spec's fixes): 1. load the manifest (404/500 as C2); 2. delete
//! its asset blobs; 3. ask the deployer to drop the id from the parent algorithm's
//! `checkpoints` (+ `storage_metrics_stale`); a parent that is gone has nothing to update;
//! 4. drop the id from the training record's `output_checkpoint_ids`, where that record still
//! exists; 5. delete the manifest.
//!
//! Failure: a panic restarts the actor; it has no state to rebuild.

use super::deployer::{Deployer, UnlinkCheckpoint};
use super::sample_store::tags_match;
use super::storage_gateway::{
    flatten, DeleteObject, GetBytes, ListObjects, PutBytes, StorageGateway,
};
use crate::errors::{ApiError, CheckpointError};
use crate::storage::{StorageError, ASSET_STORE, CHECKPOINT_STORE, TRAINING_STORE};
use actix::prelude::*;
use bytes::Bytes;
use serde_json::{json, Map, Value};

pub struct CheckpointStore {
    storage: Addr<StorageGateway>,
    deployer: Addr<Deployer>,
}

impl CheckpointStore {
    pub fn new(storage: Addr<StorageGateway>, deployer: Addr<Deployer>) -> Self {
        CheckpointStore { storage, deployer }
    }
}

impl Actor for CheckpointStore {
    type Context = Context<Self>;
}

impl Supervised for CheckpointStore {
    fn restarting(&mut self, _: &mut Context<Self>) {
        tracing::warn!(actor = "checkpoint_store", "restarting");
    }
}

super::supervision_handlers!(CheckpointStore);

/// A manifest checked against the model of §4.1.
#[derive(Debug, Clone)]
pub struct CheckpointManifest {
    pub checkpoint_id: String,
    pub parent_algorithm_id: String,
    pub parent_algorithm_key: Option<String>,
    pub training_id: String,
    pub assets: Map<String, Value>,
    pub created_at: String,
    pub properties: Value,
    pub tags: Vec<String>,
    pub parent_checkpoint_id: Option<String>,
}

impl CheckpointManifest {
    /// Validates a stored manifest: required strings, `assets` an object of strings, `tags` a
    /// string (becomes a one-item list) or a list whose items are stringified.
    pub fn parse(value: &Value) -> Result<Self, String> {
        let obj = value.as_object().ok_or("not an object")?;
        let string = |k: &str| {
            obj.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or(format!("'{k}' must be a string"))
        };
        let optional = |k: &str| match obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("'{k}' must be a string or null")),
        };
        let assets = obj
            .get("assets")
            .and_then(Value::as_object)
            .filter(|a| a.values().all(Value::is_string))
            .cloned()
            .ok_or("'assets' must map paths to asset ids")?;
        let tags = match obj.get("tags") {
            None => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect(),
            Some(_) => return Err("'tags' must be a list of strings".into()),
        };
        let properties = match obj.get("properties") {
            None => json!({}),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(_) => return Err("'properties' must be an object".into()),
        };
        Ok(CheckpointManifest {
            checkpoint_id: string("checkpoint_id")?,
            parent_algorithm_id: string("parent_algorithm_id")?,
            parent_algorithm_key: optional("parent_algorithm_key")?,
            training_id: string("training_id")?,
            assets,
            created_at: string("created_at")?,
            properties,
            tags,
            parent_checkpoint_id: optional("parent_checkpoint_id")?,
        })
    }

    /// `AlgorithmCheckpointRecord`: no `assets`, no `parent_algorithm_key`.
    pub fn to_api(&self) -> Value {
        json!({
            "checkpoint_id": self.checkpoint_id,
            "training_id": self.training_id,
            "parent_algorithm_id": self.parent_algorithm_id,
            "created_at": self.created_at,
            "properties": self.properties,
            "tags": self.tags,
            "parent_checkpoint_id": self.parent_checkpoint_id,
        })
    }
}

/// Loads one manifest with the errors of C2.
pub async fn load_manifest(
    storage: &Addr<StorageGateway>,
    checkpoint_id: &str,
) -> Result<CheckpointManifest, CheckpointError> {
    let not_found = || CheckpointError::NotFound {
        checkpoint_id: checkpoint_id.to_string(),
    };
    let bytes = match flatten(
        storage
            .send(GetBytes {
                collection: CHECKPOINT_STORE,
                key: checkpoint_id.to_string(),
            })
            .await,
    ) {
        Ok(b) => b,
        Err(StorageError::NotFound { .. }) | Err(StorageError::InvalidKey { .. }) => {
            return Err(not_found())
        }
        Err(e) => {
            return Err(CheckpointError::GetFailed {
                checkpoint_id: checkpoint_id.to_string(),
                message: e.to_string(),
            })
        }
    };
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| not_found())?;
    CheckpointManifest::parse(&value).map_err(|message| CheckpointError::ManifestInvalid {
        checkpoint_id: checkpoint_id.to_string(),
        message,
    })
}

/// C1. Tags compare exactly: checkpoint tags are not normalised (§4.1).
#[derive(Message)]
#[rtype(result = "Result<Vec<Value>, ApiError>")]
pub struct ListCheckpoints {
    pub positive_tags: Vec<String>,
    pub negative_tags: Vec<String>,
}

impl Handler<ListCheckpoints> for CheckpointStore {
    type Result = ResponseFuture<Result<Vec<Value>, ApiError>>;
    fn handle(&mut self, m: ListCheckpoints, _: &mut Context<Self>) -> Self::Result {
        let storage = self.storage.clone();
        Box::pin(async move {
            let items = flatten(
                storage
                    .send(ListObjects {
                        collection: CHECKPOINT_STORE,
                    })
                    .await,
            )
            .map_err(|e| CheckpointError::ListFailed(e.to_string()))?;
            if items.is_empty() {
                return Err(CheckpointError::NoneStored.into());
            }
            let mut out = Vec::new();
            for info in items {
                match load_manifest(&storage, &info.key).await {
                    Ok(manifest) => {
                        let tags: Vec<Value> =
                            manifest.tags.iter().cloned().map(Value::String).collect();
                        if tags_match(&tags, &m.positive_tags, &m.negative_tags) {
                            out.push(manifest.to_api());
                        }
                    }
                    Err(CheckpointError::GetFailed { message, .. }) => {
                        return Err(CheckpointError::ListFailed(message).into())
                    }
                    // One bad manifest no longer breaks the listing (§4.5 quirk).
                    Err(e) => {
                        tracing::warn!(checkpoint_id = %info.key, error = %e, "skipping an invalid checkpoint manifest")
                    }
                }
            }
            Ok(out)
        })
    }
}

/// C2.
#[derive(Message)]
#[rtype(result = "Result<Value, ApiError>")]
pub struct GetCheckpoint {
    pub checkpoint_id: String,
}

impl Handler<GetCheckpoint> for CheckpointStore {
    type Result = ResponseFuture<Result<Value, ApiError>>;
    fn handle(&mut self, m: GetCheckpoint, _: &mut Context<Self>) -> Self::Result {
        let storage = self.storage.clone();
        Box::pin(async move { Ok(load_manifest(&storage, &m.checkpoint_id).await?.to_api()) })
    }
}

/// C3.
#[derive(Message)]
#[rtype(result = "Result<(), ApiError>")]
pub struct DeleteCheckpoint {
    pub checkpoint_id: String,
}

impl Handler<DeleteCheckpoint> for CheckpointStore {
    type Result = ResponseFuture<Result<(), ApiError>>;
    fn handle(&mut self, m: DeleteCheckpoint, _: &mut Context<Self>) -> Self::Result {
        let (storage, deployer) = (self.storage.clone(), self.deployer.clone());
        Box::pin(async move {
            let id = m.checkpoint_id;
            let manifest = load_manifest(&storage, &id).await?;
            for asset in manifest.assets.values().filter_map(Value::as_str) {
                flatten(
                    storage
                        .send(DeleteObject {
                            collection: ASSET_STORE,
                            key: asset.to_string(),
                        })
                        .await,
                )
                .map_err(|e| CheckpointError::AssetDeleteFailed {
                    checkpoint_id: id.clone(),
                    message: e.to_string(),
                })?;
            }
            deployer
                .send(UnlinkCheckpoint {
                    algorithm_id: manifest.parent_algorithm_id.clone(),
                    algorithm_key: manifest.parent_algorithm_key.clone(),
                    checkpoint_id: id.clone(),
                })
                .await?
                .map_err(|e| CheckpointError::AlgorithmRecordUpdateFailed {
                    checkpoint_id: id.clone(),
                    message: e.to_string(),
                })?;
            unlink_from_training(&storage, &manifest.training_id, &id)
                .await
                .map_err(|e| CheckpointError::TrainingRecordUpdateFailed {
                    checkpoint_id: id.clone(),
                    message: e.to_string(),
                })?;
            flatten(
                storage
                    .send(DeleteObject {
                        collection: CHECKPOINT_STORE,
                        key: id.clone(),
                    })
                    .await,
            )
            .map_err(|e| CheckpointError::DeleteFailed {
                checkpoint_id: id.clone(),
                message: e.to_string(),
            })?;
            tracing::info!(checkpoint_id = %id, algorithm_id = %manifest.parent_algorithm_id, "checkpoint deleted");
            Ok(())
        })
    }
}

/// Removes `checkpoint_id` from a training record's `output_checkpoint_ids`. A training record
/// that expired or never existed here (an imported checkpoint) has nothing to update.
async fn unlink_from_training(
    storage: &Addr<StorageGateway>,
    training_id: &str,
    checkpoint_id: &str,
) -> Result<(), StorageError> {
    let bytes = match flatten(
        storage
            .send(GetBytes {
                collection: TRAINING_STORE,
                key: training_id.to_string(),
            })
            .await,
    ) {
        Ok(b) => b,
        Err(StorageError::NotFound { .. }) | Err(StorageError::InvalidKey { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    let Ok(mut training) = serde_json::from_slice::<Value>(&bytes) else {
        return Ok(());
    };
    let Some(ids) = training
        .get_mut("output_checkpoint_ids")
        .and_then(Value::as_array_mut)
    else {
        return Ok(());
    };
    let before = ids.len();
    ids.retain(|v| v.as_str() != Some(checkpoint_id));
    if ids.len() == before {
        return Ok(());
    }
    let body = Bytes::from(serde_json::to_vec(&training).unwrap_or_default());
    flatten(
        storage
            .send(PutBytes {
                collection: TRAINING_STORE,
                key: training_id.to_string(),
                body,
            })
            .await,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Value {
        json!({
            "checkpoint_id": "c", "parent_algorithm_id": "a", "training_id": "t",
            "assets": {"files/w.bin": "x"}, "created_at": "2026-01-01T00:00:00+00:00",
        })
    }

    #[test]
    fn defaults_and_api_view() {
        let m = CheckpointManifest::parse(&manifest()).unwrap();
        assert_eq!(
            m.to_api(),
            json!({"checkpoint_id": "c", "training_id": "t", "parent_algorithm_id": "a",
                   "created_at": "2026-01-01T00:00:00+00:00", "properties": {}, "tags": [],
                   "parent_checkpoint_id": null})
        );
    }

    #[test]
    fn tags_accept_a_string_and_stringify_items_but_refuse_null() {
        let mut v = manifest();
        v["tags"] = json!("Best");
        assert_eq!(CheckpointManifest::parse(&v).unwrap().tags, vec!["Best"]);
        v["tags"] = json!(["A", 1]);
        assert_eq!(CheckpointManifest::parse(&v).unwrap().tags, vec!["A", "1"]);
        v["tags"] = Value::Null;
        assert!(CheckpointManifest::parse(&v).is_err());
    }

    #[test]
    fn required_fields() {
        let mut v = manifest();
        v.as_object_mut().unwrap().remove("training_id");
        assert!(CheckpointManifest::parse(&v).is_err());
    }
}
