//! Stop-request registry (`runtime.md` §11): which tasks a client asked to stop.
//!
//! Owns: the set of ids with a pending stop request, loaded from `stop-requests` at start-up and
//! kept in step with it (objects there expire after `stop_requests_expire_days`).
//! Messages: [`RequestStop`] (writes `{"task_id", "timestamp"}`), [`ClearStop`] (after the stop was honoured).
//!
//! Failure: a panic restarts the actor, which reloads the set from storage.

use super::storage_gateway::{flatten, DeleteObject, ListObjects, PutBytes, StorageGateway};
use crate::records::local_now;
use crate::storage::{StorageError, STOP_REQUESTS};
use actix::prelude::*;
use bytes::Bytes;
use std::collections::HashSet;

pub struct StopRegistry {
    storage: Addr<StorageGateway>,
    pending: HashSet<String>,
}

impl StopRegistry {
    pub fn new(storage: Addr<StorageGateway>) -> Self {
        StopRegistry {
            storage,
            pending: HashSet::new(),
        }
    }

    fn load(&mut self, ctx: &mut Context<Self>) {
        let storage = self.storage.clone();
        let fut = async move {
            flatten(
                storage
                    .send(ListObjects {
                        collection: STOP_REQUESTS,
                    })
                    .await,
            )
        };
        ctx.wait(fut.into_actor(self).map(|res, act, _| match res {
            Ok(items) => act.pending = items.into_iter().map(|i| i.key).collect(),
            Err(e) => tracing::error!(error = %e, "cannot load stop requests"),
        }));
    }
}

impl Actor for StopRegistry {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        self.load(ctx);
    }
}

impl Supervised for StopRegistry {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        tracing::warn!(
            actor = "stop_registry",
            "restarting: reloading stop requests"
        );
        self.load(ctx);
    }
}

super::supervision_handlers!(StopRegistry);

#[derive(Message)]
#[rtype(result = "Result<(), StorageError>")]
pub struct RequestStop {
    pub task_id: String,
}

impl Handler<RequestStop> for StopRegistry {
    type Result = ResponseActFuture<Self, Result<(), StorageError>>;
    fn handle(&mut self, m: RequestStop, _: &mut Context<Self>) -> Self::Result {
        let storage = self.storage.clone();
        let id = m.task_id.clone();
        let body = Bytes::from(
            serde_json::to_vec(&serde_json::json!({ "task_id": id, "timestamp": local_now() }))
                .unwrap_or_default(),
        );
        let fut = async move {
            flatten(
                storage
                    .send(PutBytes {
                        collection: STOP_REQUESTS,
                        key: id,
                        body,
                    })
                    .await,
            )
        };
        Box::pin(fut.into_actor(self).map(move |res, act, _| {
            if res.is_ok() {
                act.pending.insert(m.task_id);
            }
            res
        }))
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct ClearStop {
    pub task_id: String,
}

impl Handler<ClearStop> for StopRegistry {
    type Result = ();
    fn handle(&mut self, m: ClearStop, _: &mut Context<Self>) {
        if self.pending.remove(&m.task_id) {
            self.storage.do_send(DeleteObject {
                collection: STOP_REQUESTS,
                key: m.task_id,
            });
        }
    }
}
