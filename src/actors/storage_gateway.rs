//! Storage gateway: the one owner of the storage backend inside the server.
//!
//! Owns: the backend (`Arc<dyn Backend>`) and the factory that (re)builds it, plus the expiry rules.
//! Messages: [`EnsureCollections`], [`PutStream`], [`PutBytes`], [`GetBytes`], [`GetStream`],
//! [`Exists`], [`Size`], [`ListObjects`], [`PollObjects`], [`DeleteObject`], [`GetTags`],
//! [`PutTags`], [`Presign`], [`DeleteIfExists`], [`PresignExisting`], [`PutStreamUntagged`].
//!
//! Flow: 1. a message arrives; 2. the handler clones the backend handle into a future and returns
//! it at once, so a 2 GiB upload never blocks other requests; 3. the future runs the backend call.
//! An hourly timer sweeps expired objects.
//!
//! Failure: a panic in a call is answered with [`StorageError::Unavailable`] marked as a restart,
//! and the supervisor rebuilds the backend from the factory (a reconnect for network backends).

use super::guard;
use crate::storage::{Backend, ByteStream, ExpiryRules, ObjectInfo, PresignMethod, StorageError};
use actix::prelude::*;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub type BackendFactory = Arc<dyn Fn() -> Arc<dyn Backend> + Send + Sync>;

const NAME: &str = "storage_gateway";
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

pub struct StorageGateway {
    factory: BackendFactory,
    backend: Arc<dyn Backend>,
    rules: ExpiryRules,
    fail_next: bool,
}

impl StorageGateway {
    pub fn new(factory: BackendFactory, rules: ExpiryRules) -> Self {
        let backend = factory();
        StorageGateway {
            factory,
            backend,
            rules,
            fail_next: false,
        }
    }

    /// A future that runs `call` on the backend under the panic guard.
    fn run<T, F, Fut>(
        &mut self,
        ctx: &mut Context<Self>,
        call: F,
    ) -> ResponseFuture<Result<T, StorageError>>
    where
        T: 'static,
        F: FnOnce(Arc<dyn Backend>) -> Fut + 'static,
        Fut: std::future::Future<Output = Result<T, StorageError>> + 'static,
    {
        let backend = self.backend.clone();
        let fail = std::mem::take(&mut self.fail_next);
        guard(NAME, ctx.address().recipient(), restarting, async move {
            if fail {
                panic!("fault injected into {NAME}");
            }
            call(backend).await
        })
    }
}

fn restarting<T>(actor: &'static str) -> Result<T, StorageError> {
    Err(StorageError::Unavailable {
        operation: actor.into(),
        message: RESTARTING.into(),
    })
}

/// Marker text of the error returned while the gateway restarts (mapped to HTTP 503).
pub const RESTARTING: &str = "the storage gateway is restarting";

impl Actor for StorageGateway {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_later(Duration::from_secs(5), |act, _| act.sweep());
        ctx.run_interval(SWEEP_EVERY, |act, _| act.sweep());
    }
}

impl StorageGateway {
    /// Deletes expired objects in the background (`*_expire_days`).
    fn sweep(&mut self) {
        let backend = self.backend.clone();
        let rules = self.rules.clone();
        actix::spawn(async move {
            match backend.sweep_expired(&rules).await {
                Ok(n) if n > 0 => tracing::info!(removed = n, "expired objects removed"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "expiry sweep failed"),
            }
        });
    }
}

impl Supervised for StorageGateway {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        tracing::warn!(actor = NAME, "restarting: rebuilding the storage backend");
        self.backend = (self.factory)();
        self.fail_next = false;
    }
}

super::supervision_handlers!(StorageGateway, fail_next);

macro_rules! message {
    ($name:ident { $($field:ident : $ty:ty),* $(,)? } -> $out:ty, |$b:ident, $m:ident| $body:expr) => {
        pub struct $name { $(pub $field: $ty),* }
        impl Message for $name {
            type Result = Result<$out, StorageError>;
        }
        impl Handler<$name> for StorageGateway {
            type Result = ResponseFuture<Result<$out, StorageError>>;
            fn handle(&mut self, $m: $name, ctx: &mut Context<Self>) -> Self::Result {
                self.run(ctx, move |$b| async move { $body })
            }
        }
    };
}

message!(EnsureCollections { names: Vec<&'static str> } -> Vec<String>,
    |b, m| b.ensure_collections(&m.names).await);
message!(PutStream { collection: &'static str, key: String, body: ByteStream } -> u64,
    |b, m| b.put_stream(m.collection, &m.key, m.body).await);
message!(PutBytes { collection: &'static str, key: String, body: Bytes } -> (),
    |b, m| b.put_bytes(m.collection, &m.key, m.body).await);
message!(GetBytes { collection: &'static str, key: String } -> Bytes,
    |b, m| b.get_bytes(m.collection, &m.key).await);
message!(GetStream { collection: &'static str, key: String } -> (u64, ByteStream),
    |b, m| b.get_stream(m.collection, &m.key).await);
message!(Exists { collection: &'static str, key: String } -> bool,
    |b, m| b.exists(m.collection, &m.key).await);
message!(Size { collection: &'static str, key: String } -> Option<u64>,
    |b, m| b.size(m.collection, &m.key).await);
message!(ListObjects { collection: &'static str } -> Vec<ObjectInfo>,
    |b, m| b.list(m.collection).await);
/// A listing for background polls (the deployer's index refresh). Unlike [`ListObjects`] it leaves
/// an injected fault in place for the next client request, which is what tests aim it at.
pub struct PollObjects {
    pub collection: &'static str,
}

impl Message for PollObjects {
    type Result = Result<Vec<ObjectInfo>, StorageError>;
}

impl Handler<PollObjects> for StorageGateway {
    type Result = ResponseFuture<Result<Vec<ObjectInfo>, StorageError>>;
    fn handle(&mut self, m: PollObjects, ctx: &mut Context<Self>) -> Self::Result {
        let backend = self.backend.clone();
        guard(NAME, ctx.address().recipient(), restarting, async move {
            backend.list(m.collection).await
        })
    }
}

message!(DeleteObject { collection: &'static str, key: String } -> (),
    |b, m| b.delete(m.collection, &m.key).await);
message!(GetTags { collection: &'static str, key: String } -> BTreeMap<String, String>,
    |b, m| b.get_tags(m.collection, &m.key).await);
message!(PutTags { collection: &'static str, key: String, tags: BTreeMap<String, String> } -> (),
    |b, m| b.put_tags(m.collection, &m.key, m.tags).await);
message!(Presign { method: PresignMethod, collection: &'static str, key: String, expires_s: u64 } -> String,
    |b, m| b.presign(m.method, m.collection, &m.key, m.expires_s));

/// Flattens a mailbox failure into a storage error so callers handle one error type.
pub fn flatten<T>(r: Result<Result<T, StorageError>, MailboxError>) -> Result<T, StorageError> {
    match r {
        Ok(inner) => inner,
        Err(_) => Err(StorageError::Unavailable {
            operation: NAME.into(),
            message: RESTARTING.into(),
        }),
    }
}

/// The ids of `ids` that `collection` lacks, in order; an id that is no valid key counts as
/// missing. The first other storage failure ends the check.
pub async fn missing_objects(
    storage: &Addr<StorageGateway>,
    collection: &'static str,
    ids: &[String],
) -> Result<Vec<String>, StorageError> {
    let mut missing = Vec::new();
    for id in ids {
        let exists = storage
            .send(Exists {
                collection,
                key: id.clone(),
            })
            .await;
        match flatten(exists) {
            Ok(true) => {}
            Ok(false) | Err(StorageError::InvalidKey { .. }) => missing.push(id.clone()),
            Err(e) => return Err(e),
        }
    }
    Ok(missing)
}

message!(DeleteIfExists { collection: &'static str, key: String } -> bool,
|b, m| {
    if !b.exists(m.collection, &m.key).await? {
        return Ok(false);
    }
    b.delete(m.collection, &m.key).await.map(|_| true)
});
message!(PresignExisting { method: PresignMethod, collection: &'static str, key: String, expires_s: u64 } -> Option<String>,
|b, m| {
    if !b.exists(m.collection, &m.key).await? {
        return Ok(None);
    }
    b.presign(m.method, m.collection, &m.key, m.expires_s).map(Some)
});
// Writes an object without the automatic `training_ref` tag (presigned uploads, `rest-api.md` V1).
message!(PutStreamUntagged { collection: &'static str, key: String, body: ByteStream } -> u64,
|b, m| {
    let n = b.put_stream(m.collection, &m.key, m.body).await?;
    b.put_tags(m.collection, &m.key, BTreeMap::new()).await?;
    Ok(n)
});
