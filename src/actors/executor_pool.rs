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

use super::checkpoint_store::load_manifest;
use super::deployer::{Deployer, ResolveAlgorithm};
use super::emergency_writer::{EmergencyWriter, ReadEmergencyRecord, WriteEmergencyRecord};
use super::executor::{
    Executor, GetRunningRecord, RunExecution, ShutdownExecutor, StopNotice, WorkerInfo, WorkerSpec,
};
use super::sample_store::check_training_samples;
use super::stop_registry::{ClearStop, RequestStop, StopRegistry};
use super::storage_gateway::{
    flatten, missing_objects, DeleteObject, GetBytes, ListObjects, PutBytes, StorageGateway,
};
use crate::errors::{ApiError, BenchmarkError, CheckpointError, ExecutionError, TrainingError};
use crate::records::{
    is_terminal, local_now, log_time_now, uuid1, BenchmarkRecord, ExecutionRecord, TaskKind,
    TaskRecord, TrainingRecord, STOPPABLE_STATUSES,
};
use crate::storage::{StorageError, DATA_STORE, EXECUTION_STORE};
use actix::prelude::*;
use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::collections::{HashMap, VecDeque};
use std::future::Future;

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
    queue: VecDeque<TaskRecord>,
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
            let token = self.queue[i].session_token().map(str::to_string);
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
            if let TaskRecord::Execution(r) = &mut record {
                let token = r.session_token.get_or_insert_with(uuid1).clone();
                self.remember_session(&token, idx);
            }
            self.slots[idx].busy = Some(record.id().to_string());
            self.running.insert(record.id().to_string(), idx);
            let addr = self.slots[idx].addr.clone();
            let deployer = self.deployer.clone();
            let gpu = self.config.gpu_available;
            let cache = self.config.cache_maxsize;
            actix::spawn(async move {
                let algorithm = deployer
                    .send(ResolveAlgorithm {
                        algorithm_id: record.algorithm_id().to_string(),
                    })
                    .await
                    .ok()
                    .flatten();
                let job = json!({
                    "kind": record.kind().name(),
                    "record": record.to_value(),
                    "algorithm_key": algorithm.as_ref().map(|(k, _)| k.clone()),
                    "algorithm_record": algorithm.map(|(_, r)| r),
                    "gpu_available": gpu,
                    "mps_available": false,
                    "cache_maxsize": cache,
                });
                addr.do_send(RunExecution { job, record });
            });
        }
    }

    /// Marks tasks a previous process left PENDING/STARTED/RUNNING as FAILED (executions,
    /// trainings and benchmarks alike; the original leaves trainings and benchmarks hanging).
    fn recover(&mut self, ctx: &mut Context<Self>) {
        let storage = self.storage.clone();
        let fut = async move {
            let mut failed = 0;
            for kind in [TaskKind::Execution, TaskKind::Training, TaskKind::Benchmark] {
                failed += recover_kind(&storage, kind).await?;
            }
            Ok::<_, StorageError>(failed)
        };
        ctx.wait(fut.into_actor(self).map(|res, _, _| match res {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                tasks = n,
                "marked tasks left unfinished by a previous run as FAILED"
            ),
            Err(e) => tracing::error!(error = %e, "cannot check for unfinished tasks"),
        }));
    }
}

async fn recover_kind(
    storage: &Addr<StorageGateway>,
    kind: TaskKind,
) -> Result<usize, StorageError> {
    let collection = kind.collection();
    let items = flatten(storage.send(ListObjects { collection }).await)?;
    let mut failed = 0;
    for info in items {
        let Ok(bytes) = flatten(
            storage
                .send(GetBytes {
                    collection,
                    key: info.key.clone(),
                })
                .await,
        ) else {
            continue;
        };
        let Ok(mut rec) = TaskRecord::parse(kind, &bytes) else {
            continue;
        };
        if is_terminal(rec.status()) {
            continue;
        }
        rec.push_log(&format!(
            "{} ERROR The server stopped before this {} finished (it was {}).\n",
            log_time_now(),
            kind.name(),
            rec.status()
        ));
        rec.fail(json!({"type": "ServerRestarted", "message": format!("The server stopped before the {} finished.", kind.name()), "code": "server_restarted"}));
        flatten(
            storage
                .send(PutBytes {
                    collection,
                    key: info.key,
                    body: Bytes::from(rec.to_json()),
                })
                .await,
        )?;
        failed += 1;
    }
    Ok(failed)
}

impl Actor for ExecutorPool {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.recover(ctx);
        let me = ctx.address();
        for (i, spec) in self.config.workers.clone().into_iter().enumerate() {
            let (pool, deployer, storage, emergency) = (
                me.clone(),
                self.deployer.clone(),
                self.storage.clone(),
                self.emergency.clone(),
            );
            let addr = Supervisor::start(move |_| {
                Executor::new(i, pool, deployer, storage, emergency, spec)
            });
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
            tracing::warn!(task_id = %rec.id(), "queued task lost in a pool restart");
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
    pub record: TaskRecord,
}

impl Handler<ExecutionFinished> for ExecutorPool {
    type Result = ();
    fn handle(&mut self, m: ExecutionFinished, _: &mut Context<Self>) {
        let id = m.record.id().to_string();
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

/// Writes a PENDING record; when storage refuses it, a FAILED emergency record takes its place
/// and the task is not dispatched (`runtime.md` §9.1, `training.md` §3.1 step 5, §5.1 step 2).
async fn store_pending(
    storage: &Addr<StorageGateway>,
    emergency: &Addr<EmergencyWriter>,
    record: &TaskRecord,
) -> bool {
    let kind = record.kind();
    let put = flatten(
        storage
            .send(PutBytes {
                collection: kind.collection(),
                key: record.id().to_string(),
                body: Bytes::from(record.to_json()),
            })
            .await,
    );
    let Err(e) = put else {
        return true;
    };
    let mut failed = record.clone();
    failed.mark_unsaved(format!("Failed to save {} record: {e}", kind.name()));
    let _ = emergency
        .send(WriteEmergencyRecord {
            collection: kind.collection(),
            id: record.id().to_string(),
            record: failed.to_value(),
            error_message: e.to_string(),
            error_code: e.code().to_string(),
            retryable: e.retryable(),
        })
        .await;
    false
}

/// The deployed record of `algorithm_id`, or the 404 of a task of `kind` that names it.
async fn resolve_algorithm(
    deployer: &Addr<Deployer>,
    kind: TaskKind,
    algorithm_id: &str,
) -> Result<Value, ApiError> {
    let found = deployer
        .send(ResolveAlgorithm {
            algorithm_id: algorithm_id.to_string(),
        })
        .await?;
    let Some((_, algorithm)) = found else {
        let algorithm_id = algorithm_id.to_string();
        return Err(match kind {
            TaskKind::Execution => ExecutionError::AlgorithmNotFound { algorithm_id }.into(),
            TaskKind::Training => TrainingError::AlgorithmNotFound { algorithm_id }.into(),
            TaskKind::Benchmark => BenchmarkError::AlgorithmNotFound { algorithm_id }.into(),
        });
    };
    Ok(algorithm)
}

impl ExecutorPool {
    /// X1, T1, B1 once the body is parsed: `check` refuses the request or builds the PENDING
    /// record off the actor; the record is then stored and, when that worked, queued.
    fn submit<F>(
        &mut self,
        check: impl FnOnce(Addr<StorageGateway>, Addr<Deployer>) -> F,
    ) -> ResponseActFuture<Self, Result<String, ApiError>>
    where
        F: Future<Output = Result<TaskRecord, ApiError>> + 'static,
    {
        let checked = check(self.storage.clone(), self.deployer.clone());
        let (storage, emergency) = (self.storage.clone(), self.emergency.clone());
        let fut = async move {
            let record = checked.await?;
            let dispatch = store_pending(&storage, &emergency, &record).await;
            Ok((record, dispatch))
        };
        Box::pin(fut.into_actor(self).map(|res, act, _| act.accept(res)))
    }

    /// Queues an accepted task (when its PENDING record was stored) and returns its id.
    fn accept(
        &mut self,
        accepted: Result<(TaskRecord, bool), ApiError>,
    ) -> Result<String, ApiError> {
        let (record, dispatch) = accepted?;
        let id = record.id().to_string();
        tracing::info!(task_id = %id, kind = record.kind().name(), algorithm_id = %record.algorithm_id(), "task accepted");
        if dispatch {
            self.queue.push_back(record);
            self.dispatch();
        }
        Ok(id)
    }
}

/// X1 with a validated body.
#[derive(Message)]
#[rtype(result = "Result<String, ApiError>")]
pub struct SubmitExecution {
    pub body: Map<String, Value>,
}

impl Handler<SubmitExecution> for ExecutorPool {
    type Result = ResponseActFuture<Self, Result<String, ApiError>>;
    fn handle(&mut self, m: SubmitExecution, _: &mut Context<Self>) -> Self::Result {
        self.submit(|storage, deployer| async move {
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
            let missing = missing_objects(&storage, DATA_STORE, &inputs)
                .await
                .map_err(ApiError::Storage)?;
            if !missing.is_empty() {
                return Err(ExecutionError::InputDatasetsNotFound {
                    missing_dataset_ids: missing,
                }
                .into());
            }
            let algorithm_id = get_str("algorithm_id").unwrap_or_default();
            resolve_algorithm(&deployer, TaskKind::Execution, &algorithm_id).await?;
            let record = TaskRecord::Execution(ExecutionRecord {
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
            });
            Ok(record)
        })
    }
}

/// B1 with a validated body (`training.md` §5.1).
#[derive(Message)]
#[rtype(result = "Result<String, ApiError>")]
pub struct SubmitBenchmark {
    pub algorithm_id: String,
    pub additional_parameters: Map<String, Value>,
}

impl Handler<SubmitBenchmark> for ExecutorPool {
    type Result = ResponseActFuture<Self, Result<String, ApiError>>;
    fn handle(&mut self, m: SubmitBenchmark, _: &mut Context<Self>) -> Self::Result {
        self.submit(|_, deployer| async move {
            let algorithm_id = m.algorithm_id;
            resolve_algorithm(&deployer, TaskKind::Benchmark, &algorithm_id).await?;
            let record = TaskRecord::Benchmark(BenchmarkRecord {
                benchmark_id: uuid1(),
                algorithm_id,
                additional_parameters: m.additional_parameters,
                status: "PENDING".into(),
                time_started: local_now(),
                time_completed: String::new(),
                log: String::new(),
                data: Map::new(),
                extra: Map::new(),
            });
            Ok(record)
        })
    }
}

/// T1 with a validated body (`training.md` §3.1). Beyond the original's checks, empty
/// `training_data`, an unknown or foreign `checkpoint_id` and an unknown minor version are
/// refused here instead of failing later in the worker (the spec's allowed improvement).
#[derive(Message)]
#[rtype(result = "Result<String, ApiError>")]
pub struct SubmitTraining {
    pub body: Map<String, Value>,
}

impl Handler<SubmitTraining> for ExecutorPool {
    type Result = ResponseActFuture<Self, Result<String, ApiError>>;
    fn handle(&mut self, m: SubmitTraining, _: &mut Context<Self>) -> Self::Result {
        self.submit(|storage, deployer| async move {
            let body = m.body;
            let get_str = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
            let strings = |k: &str| -> Vec<String> {
                body.get(k)
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            };
            let training_data = strings("training_data");
            if training_data.is_empty() {
                return Err(TrainingError::NoTrainingData.into());
            }
            check_training_samples(&storage, &training_data).await?;

            let algorithm_id = get_str("algorithm_id").unwrap_or_default();
            let algorithm = resolve_algorithm(&deployer, TaskKind::Training, &algorithm_id).await?;
            let minor = get_str("algorithm_minor_version");
            if let Some(minor) = &minor {
                if algorithm["algorithm_minor_version"].get(minor).is_none() {
                    return Err(TrainingError::MinorNotFound {
                        algorithm_id,
                        algorithm_minor_version: minor.clone(),
                    }
                    .into());
                }
            }
            let checkpoint_id = get_str("checkpoint_id");
            if let Some(cp) = &checkpoint_id {
                let manifest = load_manifest(&storage, cp).await.map_err(|e| match e {
                    CheckpointError::NotFound { .. } => TrainingError::CheckpointNotFound {
                        checkpoint_id: cp.clone(),
                    }
                    .into(),
                    other => ApiError::from(other),
                })?;
                if manifest.parent_algorithm_id != algorithm_id {
                    return Err(TrainingError::CheckpointIncompatible {
                        checkpoint_id: cp.clone(),
                        parent_algorithm_id: manifest.parent_algorithm_id,
                        algorithm_id,
                    }
                    .into());
                }
            }

            let record = TaskRecord::Training(TrainingRecord {
                training_id: uuid1(),
                algorithm_id,
                status: "PENDING".into(),
                progress: 0.0,
                time_started: local_now(),
                time_completed: None,
                log: Some(String::new()),
                training_data,
                additional_parameters: body
                    .get("additional_parameters")
                    .and_then(Value::as_object)
                    .cloned(),
                state: json!({}),
                tags: strings("tags"),
                checkpoint_id,
                algorithm_minor_version: minor,
                output_checkpoint_ids: Vec::new(),
                extra: Map::new(),
            });
            Ok(record)
        })
    }
}

/// Where a record currently lives.
enum Found {
    Queued(Box<TaskRecord>),
    Running(Addr<Executor>),
    Stored,
}

impl ExecutorPool {
    fn locate(&self, id: &str) -> Found {
        if let Some(r) = self.queue.iter().find(|r| r.id() == id) {
            return Found::Queued(Box::new(r.clone()));
        }
        if let Some(idx) = self.running.get(id) {
            return Found::Running(self.slots[*idx].addr.clone());
        }
        Found::Stored
    }
}

fn record_not_found(kind: TaskKind, id: &str) -> ApiError {
    let id = id.to_string();
    match kind {
        TaskKind::Execution => ExecutionError::RecordNotFound { execution_id: id }.into(),
        TaskKind::Training => TrainingError::RecordNotFound { training_id: id }.into(),
        TaskKind::Benchmark => BenchmarkError::RecordNotFound { benchmark_id: id }.into(),
    }
}

fn record_read_failed(kind: TaskKind, id: &str, message: String) -> ApiError {
    let id = id.to_string();
    match kind {
        TaskKind::Execution => ExecutionError::RecordReadFailed {
            execution_id: id,
            message,
        }
        .into(),
        TaskKind::Training => TrainingError::RecordReadFailed {
            training_id: id,
            message,
        }
        .into(),
        TaskKind::Benchmark => BenchmarkError::RecordReadFailed {
            benchmark_id: id,
            message,
        }
        .into(),
    }
}

/// Reads a record from storage with the emergency precedence of `rest-api.md` §6.5: a FAILED
/// fallback wins over a primary that is not terminal.
async fn read_stored(
    storage: &Addr<StorageGateway>,
    emergency: &Addr<EmergencyWriter>,
    kind: TaskKind,
    id: &str,
) -> Result<Value, ApiError> {
    let fb = emergency
        .send(ReadEmergencyRecord {
            collection: kind.collection(),
            id: id.to_string(),
        })
        .await
        .ok()
        .flatten();
    let fb_record = fb.and_then(|v| TaskRecord::from_value(kind, v).ok());
    match flatten(
        storage
            .send(GetBytes {
                collection: kind.collection(),
                key: id.to_string(),
            })
            .await,
    ) {
        Ok(bytes) => match TaskRecord::parse(kind, &bytes) {
            Ok(primary) => match fb_record {
                Some(fb) if fb.status() == "FAILED" && !is_terminal(primary.status()) => {
                    Ok(fb.to_api())
                }
                _ => Ok(primary.to_api()),
            },
            Err(e) => fb_record
                .map(|f| f.to_api())
                .ok_or_else(|| record_read_failed(kind, id, e.to_string())),
        },
        Err(StorageError::NotFound { .. }) | Err(StorageError::InvalidKey { .. }) => fb_record
            .map(|f| f.to_api())
            .ok_or_else(|| record_not_found(kind, id)),
        Err(e) => fb_record
            .map(|f| f.to_api())
            .ok_or_else(|| record_read_failed(kind, id, e.to_string())),
    }
}

/// The freshest copy of a task's record: queued, running, else stored.
async fn current_record(
    found: &Found,
    storage: &Addr<StorageGateway>,
    emergency: &Addr<EmergencyWriter>,
    kind: TaskKind,
    id: &str,
) -> Result<Value, ApiError> {
    match found {
        Found::Queued(r) if r.kind() == kind => Ok(r.to_api()),
        Found::Running(addr) => match addr
            .send(GetRunningRecord {
                task_id: id.to_string(),
            })
            .await?
        {
            Some(r) if r.kind() == kind => Ok(r.to_api()),
            _ => read_stored(storage, emergency, kind, id).await,
        },
        _ => read_stored(storage, emergency, kind, id).await,
    }
}

/// X3, T2, B2.
#[derive(Message)]
#[rtype(result = "Result<Value, ApiError>")]
pub struct GetTask {
    pub kind: TaskKind,
    pub task_id: String,
}

impl Handler<GetTask> for ExecutorPool {
    type Result = ResponseFuture<Result<Value, ApiError>>;
    fn handle(&mut self, m: GetTask, _: &mut Context<Self>) -> Self::Result {
        let found = self.locate(&m.task_id);
        let (storage, emergency) = (self.storage.clone(), self.emergency.clone());
        Box::pin(
            async move { current_record(&found, &storage, &emergency, m.kind, &m.task_id).await },
        )
    }
}

/// X2, T3. Trainings must have a stored record (the emergency store is not consulted, §3.1).
#[derive(Message)]
#[rtype(result = "Result<(), ApiError>")]
pub struct StopTask {
    pub kind: TaskKind,
    pub task_id: String,
}

impl Handler<StopTask> for ExecutorPool {
    type Result = ResponseActFuture<Self, Result<(), ApiError>>;
    fn handle(&mut self, m: StopTask, _: &mut Context<Self>) -> Self::Result {
        let found = self.locate(&m.task_id);
        let (storage, emergency, stops) = (
            self.storage.clone(),
            self.emergency.clone(),
            self.stops.clone(),
        );
        let (id, kind) = (m.task_id.clone(), m.kind);
        let fut = async move {
            let current = current_record(&found, &storage, &emergency, kind, &id).await?;
            let status = current["status"]
                .as_str()
                .unwrap_or_default()
                .to_ascii_uppercase();
            if !STOPPABLE_STATUSES.contains(&status.as_str()) {
                return Err(match kind {
                    TaskKind::Training => TrainingError::NotStoppable {
                        training_id: id,
                        status,
                    }
                    .into(),
                    _ => ExecutionError::NotStoppable {
                        execution_id: id,
                        status,
                    }
                    .into(),
                });
            }
            let stored = stops
                .send(RequestStop {
                    task_id: id.clone(),
                })
                .await?;
            stored.map_err(|e| -> ApiError {
                match kind {
                    TaskKind::Training => TrainingError::StopRequestFailed {
                        training_id: id.clone(),
                        message: e.to_string(),
                    }
                    .into(),
                    _ => ExecutionError::StopRequestFailed {
                        execution_id: id.clone(),
                        message: e.to_string(),
                    }
                    .into(),
                }
            })?;
            Ok(found)
        };
        Box::pin(
            fut.into_actor(self)
                .map(move |res: Result<Found, ApiError>, act, _| {
                    match res? {
                        Found::Running(addr) => addr.do_send(StopNotice {
                            task_id: m.task_id.clone(),
                        }),
                        Found::Queued(_) => act.stop_queued(&m.task_id),
                        Found::Stored => {}
                    }
                    tracing::info!(task_id = %m.task_id, kind = m.kind.name(), "stop requested");
                    Ok(())
                }),
        )
    }
}

impl ExecutorPool {
    /// A stop for a task that was queued when the request arrived.
    fn stop_queued(&mut self, id: &str) {
        // Dispatched while the stop request was being written.
        if let Some(idx) = self.running.get(id) {
            self.slots[*idx].addr.do_send(StopNotice {
                task_id: id.to_string(),
            });
        }
        // Stopped before it ran: the first record write of a task would notice.
        let Some(pos) = self.queue.iter().position(|r| r.id() == id) else {
            return;
        };
        let Some(mut rec) = self.queue.remove(pos) else {
            return;
        };
        rec.push_log(&format!(
            "{} INFO Received stop request. Stopping task.\n",
            log_time_now()
        ));
        rec.stop();
        self.storage.do_send(PutBytes {
            collection: rec.kind().collection(),
            key: rec.id().to_string(),
            body: Bytes::from(rec.to_json()),
        });
        self.stops.do_send(ClearStop {
            task_id: rec.id().to_string(),
        });
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
