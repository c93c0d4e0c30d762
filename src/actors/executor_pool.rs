//! Executor pool: accepts executions, queues them, and hands each to an idle executor.
//!
//! Owns: the executors (one per GPU in `inference.cuda_visible_devices` when the device is CUDA
//! and a GPU answered the start-up probe, else `worker_number` CPU workers), their readiness, the
//! queue of PENDING executions with their records, which executor runs what, and the session
//! affinity map (executions sharing a `session_token` go to the worker that holds the session).
//! Messages: [`SubmitExecution`], [`GetExecution`], [`StopExecution`], [`ListExecutions`],
//! [`DeleteExecutions`], [`GetHealth`], [`ShutdownPool`]; from executors: ready, down, finished.
//!
//! Flow of an execution (`runtime.md` §9.1): 1. check the input datasets and the algorithm id
//! (404s); 2. write the PENDING record (a failed write leaves a FAILED emergency record and no
//! dispatch); 3. queue it; 4. when an executor is free, resolve the algorithm record afresh and
//! send the job; 5. the executor reports the finished record, and the next job goes out.
//!
//! At start-up, executions a previous process left PENDING/STARTED/RUNNING are marked FAILED.
//! Failure: a panic restarts the pool; executors keep running under their own supervisors, but
//! the queue is lost, so queued executions are marked FAILED on the next start-up at the latest.

use super::deployer::{Deployer, ResolveAlgorithm};
use super::emergency_writer::{EmergencyWriter, ReadEmergencyRecord, WriteEmergencyRecord};
use super::executor::{
    Executor, GetRunningRecord, RunExecution, ShutdownExecutor, StopNotice, WorkerInfo, WorkerSpec,
};
use super::stop_registry::{ClearStop, RequestStop, StopRegistry};
use super::storage_gateway::{
    flatten, DeleteObject, Exists, GetBytes, ListObjects, PutBytes, StorageGateway,
};
use crate::errors::{ApiError, ExecutionError};
use crate::records::{
    is_terminal, local_now, log_time_now, uuid1, ExecutionRecord, STOPPABLE_STATUSES,
};
use crate::storage::{StorageError, DATA_STORE, EXECUTION_STORE};
use actix::prelude::*;
use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::collections::{HashMap, VecDeque};

const NAME: &str = "executor_pool";
const MAX_SESSIONS: usize = 1000;

#[derive(Clone)]
pub struct PoolConfig {
    pub workers: Vec<WorkerSpec>,
    pub cache_maxsize: u32,
    pub gpu_available: bool,
}

struct Slot {
    addr: Addr<Executor>,
    ready: bool,
    busy: Option<String>,
    info: Option<WorkerInfo>,
    last_exit: Option<String>,
}

pub struct ExecutorPool {
    storage: Addr<StorageGateway>,
    deployer: Addr<Deployer>,
    stops: Addr<StopRegistry>,
    emergency: Addr<EmergencyWriter>,
    config: PoolConfig,
    slots: Vec<Slot>,
    queue: VecDeque<ExecutionRecord>,
    running: HashMap<String, usize>,
    sessions: HashMap<String, usize>,
    session_order: VecDeque<String>,
}

impl ExecutorPool {
    pub fn new(
        storage: Addr<StorageGateway>,
        deployer: Addr<Deployer>,
        stops: Addr<StopRegistry>,
        emergency: Addr<EmergencyWriter>,
        config: PoolConfig,
    ) -> Self {
        ExecutorPool {
            storage,
            deployer,
            stops,
            emergency,
            config,
            slots: Vec::new(),
            queue: VecDeque::new(),
            running: HashMap::new(),
            sessions: HashMap::new(),
            session_order: VecDeque::new(),
        }
    }

    fn remember_session(&mut self, token: &str, index: usize) {
        if self.sessions.insert(token.to_string(), index).is_none() {
            self.session_order.push_back(token.to_string());
            if self.session_order.len() > MAX_SESSIONS {
                if let Some(old) = self.session_order.pop_front() {
                    self.sessions.remove(&old);
                }
            }
        }
    }

    /// Sends every queued execution that has a free executor (respecting session affinity).
    fn dispatch(&mut self) {
        let mut i = 0;
        while i < self.queue.len() {
            let token = self.queue[i].session_token.clone();
            let free = |s: &Slot| s.ready && s.busy.is_none();
            let target = match token.as_deref().and_then(|t| self.sessions.get(t).copied()) {
                Some(idx) => self.slots.get(idx).filter(|s| free(s)).map(|_| idx),
                None => self.slots.iter().position(free),
            };
            let Some(idx) = target else {
                i += 1;
                continue;
            };
            let Some(mut record) = self.queue.remove(i) else {
                break;
            };
            let token = record.session_token.get_or_insert_with(uuid1).clone();
            self.remember_session(&token, idx);
            self.slots[idx].busy = Some(record.execution_id.clone());
            self.running.insert(record.execution_id.clone(), idx);
            let addr = self.slots[idx].addr.clone();
            let deployer = self.deployer.clone();
            let gpu = self.config.gpu_available;
            let cache = self.config.cache_maxsize;
            actix::spawn(async move {
                let algorithm = deployer
                    .send(ResolveAlgorithm {
                        algorithm_id: record.algorithm_id.clone(),
                    })
                    .await
                    .ok()
                    .flatten()
                    .map(|(_, r)| r);
                let job = json!({
                    "kind": "execution",
                    "record": record,
                    "algorithm_record": algorithm,
                    "gpu_available": gpu,
                    "mps_available": false,
                    "cache_maxsize": cache,
                });
                addr.do_send(RunExecution { job, record });
            });
        }
    }

    fn recover(&mut self, ctx: &mut Context<Self>) {
        let storage = self.storage.clone();
        let fut = async move {
            let items = flatten(
                storage
                    .send(ListObjects {
                        collection: EXECUTION_STORE,
                    })
                    .await,
            )?;
            let mut failed = 0;
            for info in items {
                let Ok(bytes) = flatten(
                    storage
                        .send(GetBytes {
                            collection: EXECUTION_STORE,
                            key: info.key.clone(),
                        })
                        .await,
                ) else {
                    continue;
                };
                let Ok(mut rec) = serde_json::from_slice::<ExecutionRecord>(&bytes) else {
                    continue;
                };
                if is_terminal(&rec.status) {
                    continue;
                }
                rec.log.push_str(&format!(
                    "{} ERROR The server stopped before this execution finished (it was {}).\n",
                    log_time_now(),
                    rec.status
                ));
                rec.status = "FAILED".into();
                rec.progress = 1.0;
                rec.output_dataset_ids = json!([]);
                rec.time_completed = local_now();
                rec.extra.insert("error".into(), json!({"type": "ServerRestarted", "message": "The server stopped before the execution finished.", "code": "server_restarted"}));
                let body = Bytes::from(serde_json::to_vec(&rec).unwrap_or_default());
                flatten(
                    storage
                        .send(PutBytes {
                            collection: EXECUTION_STORE,
                            key: info.key,
                            body,
                        })
                        .await,
                )?;
                failed += 1;
            }
            Ok::<_, StorageError>(failed)
        };
        ctx.wait(fut.into_actor(self).map(|res, _, _| match res {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                executions = n,
                "marked executions left unfinished by a previous run as FAILED"
            ),
            Err(e) => tracing::error!(error = %e, "cannot check for unfinished executions"),
        }));
    }
}

impl Actor for ExecutorPool {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.recover(ctx);
        let me = ctx.address();
        for (i, spec) in self.config.workers.clone().into_iter().enumerate() {
            let (pool, storage, emergency) =
                (me.clone(), self.storage.clone(), self.emergency.clone());
            let addr = Supervisor::start(move |_| Executor::new(i, pool, storage, emergency, spec));
            self.slots.push(Slot {
                addr,
                ready: false,
                busy: None,
                info: None,
                last_exit: None,
            });
        }
    }
}

impl Supervised for ExecutorPool {
    fn restarting(&mut self, _: &mut Context<Self>) {
        tracing::warn!(actor = NAME, "restarting; queued executions are dropped");
        for rec in self.queue.drain(..) {
            tracing::warn!(execution_id = %rec.execution_id, "queued execution lost in a pool restart");
        }
    }
}

super::supervision_handlers!(ExecutorPool);

// --- from executors -----------------------------------------------------------------------

#[derive(Message)]
#[rtype(result = "()")]
pub struct ExecutorReady {
    pub index: usize,
    pub info: WorkerInfo,
}

impl Handler<ExecutorReady> for ExecutorPool {
    type Result = ();
    fn handle(&mut self, m: ExecutorReady, _: &mut Context<Self>) {
        if let Some(slot) = self.slots.get_mut(m.index) {
            slot.ready = true;
            slot.info = Some(m.info);
        }
        self.dispatch();
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct ExecutorDown {
    pub index: usize,
    pub reason: String,
}

impl Handler<ExecutorDown> for ExecutorPool {
    type Result = ();
    fn handle(&mut self, m: ExecutorDown, _: &mut Context<Self>) {
        if let Some(slot) = self.slots.get_mut(m.index) {
            slot.ready = false;
            slot.last_exit = Some(m.reason);
        }
        // Sessions lived in the dead interpreter.
        self.sessions.retain(|_, idx| *idx != m.index);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct ExecutionFinished {
    pub index: usize,
    pub record: ExecutionRecord,
}

impl Handler<ExecutionFinished> for ExecutorPool {
    type Result = ();
    fn handle(&mut self, m: ExecutionFinished, _: &mut Context<Self>) {
        let id = m.record.execution_id.clone();
        if let Some(slot) = self.slots.get_mut(m.index) {
            if slot.busy.as_deref() == Some(id.as_str()) {
                slot.busy = None;
            }
        }
        self.running.remove(&id);
        self.stops.do_send(ClearStop { task_id: id });
        self.dispatch();
    }
}

// --- from the HTTP layer -------------------------------------------------------------------

/// X1 with a validated body.
#[derive(Message)]
#[rtype(result = "Result<String, ApiError>")]
pub struct SubmitExecution {
    pub body: Map<String, Value>,
}

impl Handler<SubmitExecution> for ExecutorPool {
    type Result = ResponseActFuture<Self, Result<String, ApiError>>;
    fn handle(&mut self, m: SubmitExecution, _: &mut Context<Self>) -> Self::Result {
        let storage = self.storage.clone();
        let deployer = self.deployer.clone();
        let emergency = self.emergency.clone();
        let fut = async move {
            let body = m.body;
            let get_str = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
            let inputs: Vec<String> = body["input_dataset_ids"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            let mut missing = Vec::new();
            for id in &inputs {
                match flatten(
                    storage
                        .send(Exists {
                            collection: DATA_STORE,
                            key: id.clone(),
                        })
                        .await,
                ) {
                    Ok(true) => {}
                    Ok(false) | Err(StorageError::InvalidKey { .. }) => missing.push(id.clone()),
                    Err(e) => return Err(ApiError::Storage(e)),
                }
            }
            if !missing.is_empty() {
                return Err(ExecutionError::InputDatasetsNotFound {
                    missing_dataset_ids: missing,
                }
                .into());
            }
            let algorithm_id = get_str("algorithm_id").unwrap_or_default();
            if deployer
                .send(ResolveAlgorithm {
                    algorithm_id: algorithm_id.clone(),
                })
                .await?
                .is_none()
            {
                return Err(ExecutionError::AlgorithmNotFound { algorithm_id }.into());
            }
            let record = ExecutionRecord {
                execution_id: uuid1(),
                algorithm_id,
                checkpoint_id: get_str("checkpoint_id"),
                algorithm_minor_version: get_str("algorithm_minor_version"),
                input_dataset_ids: inputs,
                execution_device_override: get_str("execution_device_override"),
                resolved_execution_device: None,
                additional_parameters: body
                    .get("additional_parameters")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default(),
                session_token: get_str("session_token"),
                output_dataset_ids: json!([]),
                status: "PENDING".into(),
                progress: 0.0,
                time_started: local_now(),
                time_completed: String::new(),
                log: String::new(),
                extra: Map::new(),
            };
            let bytes = Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
            let put = flatten(
                storage
                    .send(PutBytes {
                        collection: EXECUTION_STORE,
                        key: record.execution_id.clone(),
                        body: bytes,
                    })
                    .await,
            );
            if let Err(e) = put {
                let mut failed = record.clone();
                failed.status = "FAILED".into();
                failed.progress = 1.0;
                failed.time_completed = local_now();
                failed.log = format!("Failed to save execution record: {e}");
                let _ = emergency
                    .send(WriteEmergencyRecord {
                        collection: EXECUTION_STORE,
                        id: record.execution_id.clone(),
                        record: serde_json::to_value(&failed).unwrap_or_default(),
                        error_message: e.to_string(),
                        error_code: e.code().to_string(),
                        retryable: e.retryable(),
                    })
                    .await;
                return Ok((record, false));
            }
            Ok((record, true))
        };
        Box::pin(fut.into_actor(self).map(|res, act, _| {
            let (record, dispatch) = res?;
            let id = record.execution_id.clone();
            tracing::info!(execution_id = %id, algorithm_id = %record.algorithm_id, "execution accepted");
            if dispatch {
                act.queue.push_back(record);
                act.dispatch();
            }
            Ok(id)
        }))
    }
}

/// Where a record currently lives.
enum Found {
    Queued(Box<ExecutionRecord>),
    Running(Addr<Executor>),
    Stored,
}

impl ExecutorPool {
    fn locate(&self, id: &str) -> Found {
        if let Some(r) = self.queue.iter().find(|r| r.execution_id == id) {
            return Found::Queued(Box::new(r.clone()));
        }
        if let Some(idx) = self.running.get(id) {
            return Found::Running(self.slots[*idx].addr.clone());
        }
        Found::Stored
    }
}

/// Reads a record from storage with the emergency precedence of `rest-api.md` §6.5.
async fn read_stored(
    storage: &Addr<StorageGateway>,
    emergency: &Addr<EmergencyWriter>,
    id: &str,
) -> Result<Value, ApiError> {
    let fb = emergency
        .send(ReadEmergencyRecord {
            collection: EXECUTION_STORE,
            id: id.to_string(),
        })
        .await
        .ok()
        .flatten();
    let fb_record = fb.and_then(|v| serde_json::from_value::<ExecutionRecord>(v).ok());
    let not_found = || {
        ApiError::from(ExecutionError::RecordNotFound {
            execution_id: id.to_string(),
        })
    };
    let read_failed = |message: String| {
        ApiError::from(ExecutionError::RecordReadFailed {
            execution_id: id.to_string(),
            message,
        })
    };
    match flatten(
        storage
            .send(GetBytes {
                collection: EXECUTION_STORE,
                key: id.to_string(),
            })
            .await,
    ) {
        Ok(bytes) => match serde_json::from_slice::<ExecutionRecord>(&bytes) {
            Ok(primary) => match fb_record {
                Some(fb) if fb.status == "FAILED" && !is_terminal(&primary.status) => {
                    Ok(fb.to_api())
                }
                _ => Ok(primary.to_api()),
            },
            Err(e) => fb_record
                .map(|f| f.to_api())
                .ok_or_else(|| read_failed(e.to_string())),
        },
        Err(StorageError::NotFound { .. }) | Err(StorageError::InvalidKey { .. }) => {
            fb_record.map(|f| f.to_api()).ok_or_else(not_found)
        }
        Err(e) => fb_record
            .map(|f| f.to_api())
            .ok_or_else(|| read_failed(e.to_string())),
    }
}

/// X3.
#[derive(Message)]
#[rtype(result = "Result<Value, ApiError>")]
pub struct GetExecution {
    pub execution_id: String,
}

impl Handler<GetExecution> for ExecutorPool {
    type Result = ResponseFuture<Result<Value, ApiError>>;
    fn handle(&mut self, m: GetExecution, _: &mut Context<Self>) -> Self::Result {
        let found = self.locate(&m.execution_id);
        let (storage, emergency) = (self.storage.clone(), self.emergency.clone());
        Box::pin(async move {
            match found {
                Found::Queued(r) => Ok(r.to_api()),
                Found::Running(addr) => match addr
                    .send(GetRunningRecord {
                        execution_id: m.execution_id.clone(),
                    })
                    .await?
                {
                    Some(r) => Ok(r.to_api()),
                    None => read_stored(&storage, &emergency, &m.execution_id).await,
                },
                Found::Stored => read_stored(&storage, &emergency, &m.execution_id).await,
            }
        })
    }
}

/// X2.
#[derive(Message)]
#[rtype(result = "Result<(), ApiError>")]
pub struct StopExecution {
    pub execution_id: String,
}

impl Handler<StopExecution> for ExecutorPool {
    type Result = ResponseActFuture<Self, Result<(), ApiError>>;
    fn handle(&mut self, m: StopExecution, _: &mut Context<Self>) -> Self::Result {
        let found = self.locate(&m.execution_id);
        let (storage, emergency, stops) = (
            self.storage.clone(),
            self.emergency.clone(),
            self.stops.clone(),
        );
        let id = m.execution_id.clone();
        let fut = async move {
            let current = match &found {
                Found::Queued(r) => r.to_api(),
                Found::Running(addr) => match addr
                    .send(GetRunningRecord {
                        execution_id: id.clone(),
                    })
                    .await?
                {
                    Some(r) => r.to_api(),
                    None => read_stored(&storage, &emergency, &id).await?,
                },
                Found::Stored => read_stored(&storage, &emergency, &id).await?,
            };
            let status = current["status"]
                .as_str()
                .unwrap_or_default()
                .to_ascii_uppercase();
            if !STOPPABLE_STATUSES.contains(&status.as_str()) {
                return Err(ExecutionError::NotStoppable {
                    execution_id: id,
                    status,
                }
                .into());
            }
            stops
                .send(RequestStop {
                    task_id: id.clone(),
                })
                .await?
                .map_err(|e| ExecutionError::StopRequestFailed {
                    execution_id: id.clone(),
                    message: e.to_string(),
                })?;
            Ok(found)
        };
        Box::pin(
            fut.into_actor(self)
                .map(move |res: Result<Found, ApiError>, act, _| {
                    match res? {
                        Found::Running(addr) => addr.do_send(StopNotice {
                            execution_id: m.execution_id.clone(),
                        }),
                        Found::Queued(_) => {
                            // Dispatched while the stop request was being written.
                            if let Some(idx) = act.running.get(&m.execution_id) {
                                act.slots[*idx].addr.do_send(StopNotice {
                                    execution_id: m.execution_id.clone(),
                                });
                            }
                            // Stopped before it ran: the first record write of a task would notice.
                            if let Some(pos) = act
                                .queue
                                .iter()
                                .position(|r| r.execution_id == m.execution_id)
                            {
                                if let Some(mut rec) = act.queue.remove(pos) {
                                    rec.status = "STOPPED".into();
                                    rec.time_completed = local_now();
                                    rec.log.push_str(&format!(
                                        "{} INFO Received stop request. Stopping task.\n",
                                        log_time_now()
                                    ));
                                    let body =
                                        Bytes::from(serde_json::to_vec(&rec).unwrap_or_default());
                                    act.storage.do_send(PutBytes {
                                        collection: EXECUTION_STORE,
                                        key: rec.execution_id.clone(),
                                        body,
                                    });
                                    act.stops.do_send(ClearStop {
                                        task_id: rec.execution_id,
                                    });
                                }
                            }
                        }
                        Found::Stored => {}
                    }
                    tracing::info!(execution_id = %m.execution_id, "stop requested");
                    Ok(())
                }),
        )
    }
}

/// M1: every stored execution record.
#[derive(Message)]
#[rtype(result = "Result<Vec<Value>, ApiError>")]
pub struct ListExecutions;

impl Handler<ListExecutions> for ExecutorPool {
    type Result = ResponseFuture<Result<Vec<Value>, ApiError>>;
    fn handle(&mut self, _: ListExecutions, _: &mut Context<Self>) -> Self::Result {
        let storage = self.storage.clone();
        Box::pin(async move {
            let fail =
                |e: StorageError| ApiError::from(ExecutionError::RecordsReadFailed(e.to_string()));
            let items = flatten(
                storage
                    .send(ListObjects {
                        collection: EXECUTION_STORE,
                    })
                    .await,
            )
            .map_err(fail)?;
            let mut out = Vec::new();
            for info in items {
                let bytes = flatten(
                    storage
                        .send(GetBytes {
                            collection: EXECUTION_STORE,
                            key: info.key,
                        })
                        .await,
                )
                .map_err(fail)?;
                if let Ok(r) = serde_json::from_slice::<ExecutionRecord>(&bytes) {
                    out.push(r.to_api());
                }
            }
            Ok(out)
        })
    }
}

/// M2 (`all`) and M3 (one id, no existence check).
#[derive(Message)]
#[rtype(result = "Result<(), ApiError>")]
pub struct DeleteExecutions {
    pub execution_id: Option<String>,
}

impl Handler<DeleteExecutions> for ExecutorPool {
    type Result = ResponseFuture<Result<(), ApiError>>;
    fn handle(&mut self, m: DeleteExecutions, _: &mut Context<Self>) -> Self::Result {
        let storage = self.storage.clone();
        Box::pin(async move {
            match m.execution_id {
                Some(id) => flatten(
                    storage
                        .send(DeleteObject {
                            collection: EXECUTION_STORE,
                            key: id,
                        })
                        .await,
                )
                // A name no record can have has nothing to delete: M3 is idempotent.
                .or_else(|e| match e {
                    StorageError::InvalidKey { .. } => Ok(()),
                    e => Err(e),
                })
                .map_err(|e| ExecutionError::RecordDeleteFailed(e.to_string()).into()),
                None => {
                    let fail = |e: StorageError| {
                        ApiError::from(ExecutionError::RecordsDeleteFailed(e.to_string()))
                    };
                    let items = flatten(
                        storage
                            .send(ListObjects {
                                collection: EXECUTION_STORE,
                            })
                            .await,
                    )
                    .map_err(fail)?;
                    for info in items {
                        flatten(
                            storage
                                .send(DeleteObject {
                                    collection: EXECUTION_STORE,
                                    key: info.key,
                                })
                                .await,
                        )
                        .map_err(fail)?;
                    }
                    Ok(())
                }
            }
        })
    }
}

#[derive(Debug, serde::Serialize)]
pub struct WorkerHealth {
    pub worker: usize,
    pub ready: bool,
    pub busy_with: Option<String>,
    pub pid: Option<u32>,
    pub python_version: Option<String>,
    pub python_prefix: Option<String>,
    pub last_exit: Option<String>,
}

#[derive(Debug, serde::Serialize, actix::MessageResponse)]
pub struct Health {
    pub ready: bool,
    pub queued: usize,
    pub workers: Vec<WorkerHealth>,
}

#[derive(Message)]
#[rtype(result = "Health")]
pub struct GetHealth;

impl Handler<GetHealth> for ExecutorPool {
    type Result = Health;
    fn handle(&mut self, _: GetHealth, _: &mut Context<Self>) -> Health {
        let workers: Vec<WorkerHealth> = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| WorkerHealth {
                worker: i,
                ready: s.ready,
                busy_with: s.busy.clone(),
                pid: s.info.as_ref().map(|i| i.pid),
                python_version: s.info.as_ref().map(|i| i.python_version.clone()),
                python_prefix: s.info.as_ref().map(|i| i.python_prefix.clone()),
                last_exit: s.last_exit.clone(),
            })
            .collect();
        Health {
            ready: !workers.is_empty() && workers.iter().all(|w| w.ready),
            queued: self.queue.len(),
            workers,
        }
    }
}

/// Stops every executor (and so every worker) before the server exits.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ShutdownPool;

impl Handler<ShutdownPool> for ExecutorPool {
    type Result = ();
    fn handle(&mut self, _: ShutdownPool, _: &mut Context<Self>) {
        for s in &self.slots {
            s.addr.do_send(ShutdownExecutor);
        }
    }
}
