//! Executor: supervises one worker process (one per GPU, or per CPU worker) and the execution it
//! runs.
//!
//! Owns: the worker child (pid, stdin writer), the record of the running execution (the freshest
//! copy; polls read it from here), and a persister task that writes that record to storage in
//! order, at most once per 100 ms while it runs, and at once for terminal states.
//! Messages in: [`RunExecution`], [`StopNotice`], [`GetRunningRecord`]; from its own tasks:
//! worker frames and exit. Messages out to the pool: ready/down/finished.
//!
//! Flow: 1. spawn `compox worker`, send `init`, wait for `ready`; 2. on `RunExecution` send the job;
//! 3. merge each `update` into the record, answer with the stop flag, hand the record to the
//! persister; 4. on `done` flush the final record and report to the pool. Polls see a terminal
//! state only once storage holds it, so a poll never goes back to an older stored copy.
//!
//! Stop: the next `update_ack` carries the stop flag (a stop that arrives before its
//! `RunExecution` is kept for it); a worker still busy with the execution after the stop grace
//! period is killed, also when the algorithm swallowed the stop after STOPPED was recorded.
//!
//! Failure: when the worker dies (crash, `os._exit`, segfault, OOM kill, or our kill after the
//! stop grace period) the running execution ends FAILED with the reason (STOPPED when a stop was
//! requested), the record is flushed, and a new worker is started with back-off. A final write
//! that storage refuses goes to the emergency store as a FAILED record.

use super::deployer::{Deployer, LinkCheckpoint};
use super::emergency_writer::{DeleteEmergencyRecord, EmergencyWriter, WriteEmergencyRecord};
use super::executor_pool::{ExecutionFinished, ExecutorDown, ExecutorPool, ExecutorReady};
use super::storage_gateway::{flatten, PutBytes, StorageGateway};
use crate::records::{is_terminal, log_time_now, TaskRecord};
use crate::storage::StorageError;
use crate::worker::protocol::{self, FromWorker, StorageSpec, ToWorker};
use actix::prelude::*;
use bytes::Bytes;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

const PERSIST_INTERVAL: Duration = Duration::from_millis(100);

/// How to start this executor's worker.
#[derive(Clone, Debug)]
pub struct WorkerSpec {
    pub exe: PathBuf,
    pub python_env: Option<PathBuf>,
    pub storage: StorageSpec,
    /// `CUDA_VISIBLE_DEVICES` for this worker (GPU mode), set before Python starts.
    pub cuda_device: Option<String>,
    pub module_cache_root: PathBuf,
    pub stop_grace: Duration,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkerInfo {
    pub python_version: String,
    pub python_prefix: String,
    pub python_executable: String,
    pub pid: u32,
}

struct Running {
    record: TaskRecord,
    stop_requested: bool,
    /// What polls see once the worker reported a terminal state: the record just before it, until
    /// the terminal record is stored (or refused and replaced by a FAILED emergency record).
    before_terminal: Option<TaskRecord>,
    /// The final record is being stored; the pool hears of it once that is done.
    finishing: bool,
    /// The job, while it waits for a worker: the pool dispatched it just as the worker died.
    waiting_job: Option<Value>,
}

pub struct Executor {
    index: usize,
    pool: Addr<ExecutorPool>,
    deployer: Addr<Deployer>,
    spec: WorkerSpec,
    generation: u64,
    pid: Option<u32>,
    writer: Option<mpsc::UnboundedSender<Vec<u8>>>,
    persister: mpsc::UnboundedSender<Persist>,
    running: Option<Running>,
    ready: bool,
    restarts: u32,
    module_cache_dir: PathBuf,
    shutting_down: bool,
    /// Stops that arrived before their `RunExecution` (the pool dispatches asynchronously).
    early_stops: HashSet<String>,
    /// Why this server killed the current worker, if it did: the log then says so instead of
    /// guessing from the signal.
    kill_reason: KillReason,
}

type KillReason = std::sync::Arc<std::sync::Mutex<Option<String>>>;

fn set_kill_reason(reason: &KillReason, why: String) {
    if let Ok(mut r) = reason.lock() {
        r.get_or_insert(why);
    }
}

impl Executor {
    pub fn new(
        index: usize,
        pool: Addr<ExecutorPool>,
        deployer: Addr<Deployer>,
        storage: Addr<StorageGateway>,
        emergency: Addr<EmergencyWriter>,
        spec: WorkerSpec,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        actix::spawn(persister(rx, storage, emergency));
        Executor {
            index,
            pool,
            deployer,
            spec,
            generation: 0,
            pid: None,
            writer: None,
            persister: tx,
            running: None,
            ready: false,
            restarts: 0,
            module_cache_dir: PathBuf::new(),
            shutting_down: false,
            early_stops: HashSet::new(),
            kill_reason: KillReason::default(),
        }
    }

    fn send_frame(&self, msg: &ToWorker) {
        if let Some(w) = &self.writer {
            let _ = w.send(protocol::encode(msg));
        }
    }

    fn spawn_worker(&mut self, ctx: &mut Context<Self>) {
        self.generation += 1;
        let generation = self.generation;
        let _ = std::fs::remove_dir_all(&self.module_cache_dir);
        self.module_cache_dir = self.spec.module_cache_root.join(format!(
            "pid_{}_{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        if let Err(e) = std::fs::create_dir_all(&self.module_cache_dir) {
            tracing::error!(worker = self.index, error = %e, "cannot create the module cache directory");
        }
        let mut cmd = tokio::process::Command::new(worker_exe(&self.spec.exe));
        cmd.arg("worker")
            .arg("--index")
            .arg(self.index.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            // Its own process group, so a kill also reaches anything the algorithm forked.
            .process_group(0)
            .kill_on_drop(true);
        if let Some(env) = &self.spec.python_env {
            cmd.env("COMPOX_PYTHON_ENV", env);
        }
        if let Some(dev) = &self.spec.cuda_device {
            cmd.env("CUDA_VISIBLE_DEVICES", dev);
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(worker = self.index, error = %e, "cannot start the worker process");
                self.schedule_restart(ctx);
                return;
            }
        };
        self.pid = child.id();
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            tracing::error!(worker = self.index, "worker pipes missing");
            return;
        };
        let (wtx, mut wrx) = mpsc::unbounded_channel::<Vec<u8>>();
        actix::spawn(async move {
            let mut stdin = stdin;
            while let Some(bytes) = wrx.recv().await {
                if stdin.write_all(&bytes).await.is_err() || stdin.flush().await.is_err() {
                    break;
                }
            }
        });
        self.writer = Some(wtx);
        self.kill_reason = KillReason::default();
        let me = ctx.address();
        let index = self.index;
        let pid = self.pid;
        let kill_reason = self.kill_reason.clone();
        actix::spawn(async move {
            let mut out = stdout;
            loop {
                match protocol::read_async::<FromWorker>(&mut out).await {
                    Ok(Some(frame)) => me.do_send(WorkerFrame { generation, frame }),
                    Ok(None) => break,
                    Err(e) => {
                        // A worker that breaks the protocol cannot be trusted: replace it.
                        tracing::error!(worker = index, error = %e, "bad frame from worker; killing it");
                        set_kill_reason(
                            &kill_reason,
                            format!("killed by compox: it broke the worker protocol ({e})"),
                        );
                        kill_group(pid);
                        break;
                    }
                }
            }
        });
        // Death is noticed by waiting on the process itself, not by its pipes closing: a child the
        // algorithm forked may hold them open.
        let me = ctx.address();
        let kill_reason = self.kill_reason.clone();
        actix::spawn(async move {
            let exit = child
                .wait()
                .await
                .map(describe_exit)
                .unwrap_or_else(|e| format!("unknown ({e})"));
            let status = match kill_reason.lock().ok().and_then(|r| r.clone()) {
                Some(why) => why,
                None => exit,
            };
            kill_group(pid);
            me.do_send(WorkerExited {
                generation,
                reason: status,
            });
        });
        actix::spawn(async move {
            let mut reader = tokio::io::BufReader::new(stderr);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line);
                        tracing::debug!(worker = index, "{}", text.trim_end());
                    }
                }
            }
        });
        self.send_frame(&ToWorker::Init {
            storage: self.spec.storage.clone(),
            worker: self.index,
        });
    }

    fn schedule_restart(&mut self, ctx: &mut Context<Self>) {
        if self.shutting_down {
            return;
        }
        let delay = Duration::from_millis((100u64 << self.restarts.min(6)).min(5_000));
        self.restarts += 1;
        ctx.run_later(delay, |act, ctx| {
            // A shutdown that began during the back-off starts no worker.
            if !act.shutting_down {
                act.spawn_worker(ctx);
            }
        });
    }

    fn persist(
        &self,
        record: &TaskRecord,
        terminal: bool,
    ) -> oneshot::Receiver<Result<(), StorageError>> {
        let (tx, rx) = oneshot::channel();
        let _ = self.persister.send(Persist {
            record: record.clone(),
            terminal,
            done: Some(tx),
        });
        rx
    }

    /// Ends the running execution because its worker is gone.
    fn fail_running(&mut self, reason: &str, ctx: &mut Context<Self>) {
        let Some(run) = self.running.as_mut().filter(|r| !r.finishing) else {
            return;
        };
        if !is_terminal(run.record.status()) {
            run.before_terminal = Some(run.record.clone());
            let rec = &mut run.record;
            if run.stop_requested {
                rec.push_log(&format!(
                    "{} INFO Worker stopped after the stop grace period ({reason}).\n",
                    log_time_now()
                ));
                rec.stop();
            } else {
                rec.push_log(&format!(
                    "{} ERROR Worker process died during the {}: {reason}\n",
                    log_time_now(),
                    rec.kind().name()
                ));
                rec.fail(
                    json!({"type": "WorkerCrashed", "message": format!("Worker process died: {reason}"), "code": "worker_crashed"}),
                );
            }
        }
        tracing::warn!(worker = self.index, task_id = %run.record.id(), status = %run.record.status(), reason, "worker lost its task");
        self.finish(ctx);
    }

    /// Sends the running task's job to the worker, with the worker's module cache folder.
    fn start_job(&mut self, mut job: Value) {
        job["module_cache_dir"] = json!(self.module_cache_dir.display().to_string());
        self.send_frame(&ToWorker::Run { job });
    }

    /// Takes this worker out of the pool and kills it; its exit starts a fresh one.
    fn replace_worker(&mut self, why: &str) {
        tracing::warn!(worker = self.index, reason = why, "replacing worker");
        self.ready = false;
        self.pool.do_send(ExecutorDown {
            index: self.index,
            reason: format!("replaced by compox: {why}"),
        });
        set_kill_reason(&self.kill_reason, format!("replaced by compox: {why}"));
        kill_group(self.pid);
    }

    /// Stores the final record, then reports it to the pool. Until storage has it (or the
    /// emergency store has the FAILED fallback), polls keep reading the record from here, so they
    /// never see an older stored copy.
    fn finish(&mut self, ctx: &mut Context<Self>) {
        let Some(run) = self.running.as_mut().filter(|r| !r.finishing) else {
            return;
        };
        run.finishing = true;
        let record = run.record.clone();
        let done = self.persist(&record, true);
        let (pool, index) = (self.pool.clone(), self.index);
        ctx.spawn(done.into_actor(self).map(move |_, act, _| {
            if act
                .running
                .as_ref()
                .is_some_and(|r| r.record.id() == record.id())
            {
                act.running = None;
            }
            pool.do_send(ExecutionFinished { index, record });
        }));
    }
}

/// The program to start as a worker. When that is this server's own binary, Linux's
/// `/proc/self/exe` is used: it still works after the file was replaced or deleted (a rebuild or
/// an upgrade while the server runs, where the path now names another build or nothing, or
/// carries a ` (deleted)` suffix), and it keeps the worker on the server's protocol version.
pub fn worker_exe(configured: &std::path::Path) -> PathBuf {
    let own = Path::new("/proc/self/exe");
    let running = std::env::current_exe().unwrap_or_default();
    let running = running.to_string_lossy();
    let configured_text = configured.to_string_lossy();
    let is_own = running.trim_end_matches(" (deleted)")
        == configured_text.trim_end_matches(" (deleted)")
        || !configured.exists();
    if cfg!(target_os = "linux") && is_own && own.exists() {
        own.to_path_buf()
    } else {
        configured.to_path_buf()
    }
}

/// Kills a worker and every process in its group (things the algorithm forked).
fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        // SAFETY: signalling our own child's process group; the worker leads it.
        unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
    }
}

/// "exit code 3" / "killed by signal 9 (SIGKILL)".
fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return format!("exit code {code}");
    }
    match status.signal() {
        Some(9) => {
            "killed by signal 9 (SIGKILL: out of memory, or killed by another process)".into()
        }
        Some(11) => "killed by signal 11 (SIGSEGV, segmentation fault)".into(),
        Some(6) => "killed by signal 6 (SIGABRT)".into(),
        Some(s) => format!("killed by signal {s}"),
        None => "ended".into(),
    }
}

impl Actor for Executor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.spawn_worker(ctx);
    }

    fn stopping(&mut self, _: &mut Context<Self>) -> Running2 {
        self.shutting_down = true;
        if let Some(pid) = self.pid.take() {
            kill_group(Some(pid));
        }
        let _ = std::fs::remove_dir_all(&self.module_cache_dir);
        Running2::Stop
    }
}

use actix::Running as Running2;

impl Supervised for Executor {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        tracing::warn!(worker = self.index, "executor restarting");
        self.shutting_down = false;
        self.fail_running("the executor restarted", ctx);
        self.spawn_worker(ctx);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct WorkerFrame {
    generation: u64,
    frame: FromWorker,
}

impl Handler<WorkerFrame> for Executor {
    type Result = ();
    fn handle(&mut self, m: WorkerFrame, ctx: &mut Context<Self>) {
        if m.generation != self.generation {
            return;
        }
        match m.frame {
            FromWorker::Ready {
                python_version,
                python_prefix,
                python_executable,
                pid,
            } => {
                self.ready = true;
                self.restarts = 0;
                let info = WorkerInfo {
                    python_version,
                    python_prefix,
                    python_executable,
                    pid,
                };
                tracing::info!(worker = self.index, pid, python = %info.python_version.split_whitespace().next().unwrap_or(""), prefix = %info.python_prefix, "worker ready");
                if let Some(job) = self.running.as_mut().and_then(|r| r.waiting_job.take()) {
                    self.start_job(job);
                }
                self.pool.do_send(ExecutorReady {
                    index: self.index,
                    info,
                });
            }
            FromWorker::Fatal { message } => {
                tracing::error!(worker = self.index, %message, "worker cannot start");
            }
            FromWorker::Update { fields, task_id } => {
                // The worker waits for an ack to every update, refused ones included.
                let run = match self.writable_run(task_id.as_deref()) {
                    Ok(run) => run,
                    Err(refusal) => {
                        tracing::debug!(worker = self.index, %refusal, "record update refused");
                        self.send_frame(&ToWorker::UpdateAck {
                            stop: false,
                            error: Some(refusal),
                        });
                        return;
                    }
                };
                let new_checkpoints = self.new_checkpoints(&fields);
                if new_checkpoints.is_empty() {
                    self.apply_update(fields, ctx);
                    return;
                }
                // Register the checkpoints with their algorithm first, so a training record
                // never lists one its algorithm does not.
                let (deployer, algorithm_id) =
                    (self.deployer.clone(), run.record.algorithm_id().to_string());
                let link = async move {
                    for checkpoint_id in new_checkpoints {
                        deployer
                            .send(LinkCheckpoint {
                                algorithm_id: algorithm_id.clone(),
                                checkpoint_id,
                            })
                            .await
                            .map_err(|e| e.to_string())?
                            .map_err(|e| e.to_string())?;
                    }
                    Ok::<_, String>(())
                };
                ctx.spawn(link.into_actor(self).map(move |res, act, ctx| match res {
                    Ok(()) => act.apply_update(fields, ctx),
                    Err(e) => act.send_frame(&ToWorker::UpdateAck {
                        stop: false,
                        error: Some(format!("registering the checkpoint failed: {e}")),
                    }),
                }));
            }
            FromWorker::Done { retire } => {
                let Some(run) = self.running.as_mut() else {
                    return;
                };
                let mut retire = retire;
                if !is_terminal(run.record.status()) {
                    run.before_terminal = Some(run.record.clone());
                    run.record.push_log(&format!(
                        "{} ERROR The algorithm runtime ended without a final status.\n",
                        log_time_now()
                    ));
                    run.record.fail(json!({"type": "TaskNotTerminated", "message": "The algorithm runtime ended without a final status.", "code": "task_not_terminated"}));
                    // The worker's own Python could not write the record: an algorithm may
                    // have broken the interpreter for every later task too.
                    retire.get_or_insert_with(|| {
                        "its last task ended without a final status".to_string()
                    });
                }
                if let Some(why) = retire {
                    // Before the pool hears the task finished, it hears this worker is down,
                    // so nothing is dispatched to it until its replacement is ready.
                    self.replace_worker(&why);
                }
                self.finish(ctx);
            }
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct WorkerExited {
    generation: u64,
    reason: String,
}

impl Handler<WorkerExited> for Executor {
    type Result = ();
    fn handle(&mut self, m: WorkerExited, ctx: &mut Context<Self>) {
        if m.generation != self.generation {
            return;
        }
        self.ready = false;
        self.writer = None;
        self.pid = None;
        if self.shutting_down {
            return;
        }
        tracing::warn!(worker = self.index, reason = %m.reason, "worker process exited; restarting it");
        self.pool.do_send(ExecutorDown {
            index: self.index,
            reason: m.reason.clone(),
        });
        self.fail_running(&m.reason, ctx);
        self.schedule_restart(ctx);
    }
}

/// Runs one execution; the executor must be idle and ready.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RunExecution {
    pub job: Value,
    pub record: TaskRecord,
}

impl Handler<RunExecution> for Executor {
    type Result = ();
    fn handle(&mut self, m: RunExecution, ctx: &mut Context<Self>) {
        let id = m.record.id().to_string();
        tracing::debug!(worker = self.index, task_id = %id, kind = m.record.kind().name(), "task dispatched");
        let stop_requested = self.early_stops.remove(&id);
        self.running = Some(Running {
            record: m.record,
            stop_requested,
            before_terminal: None,
            finishing: false,
            waiting_job: None,
        });
        if self.ready {
            self.start_job(m.job);
        } else {
            // The worker died after the pool chose it; its replacement starts the job.
            tracing::debug!(worker = self.index, task_id = %id, "worker restarting; the task waits for it");
            if let Some(run) = self.running.as_mut() {
                run.waiting_job = Some(m.job);
            }
        }
        if stop_requested {
            self.arm_stop_grace(id, ctx);
        }
    }
}

/// A stop was requested for the running execution: tell the algorithm at its next record write,
/// and kill the worker when it has not yielded within the grace period.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopNotice {
    pub task_id: String,
}

impl Handler<StopNotice> for Executor {
    type Result = ();
    fn handle(&mut self, m: StopNotice, ctx: &mut Context<Self>) {
        let Some(run) = self.running.as_mut().filter(|r| r.record.id() == m.task_id) else {
            // The pool dispatched it, but its `RunExecution` has not arrived yet.
            self.early_stops.insert(m.task_id);
            return;
        };
        run.stop_requested = true;
        self.arm_stop_grace(m.task_id, ctx);
    }
}

impl Executor {
    /// Checkpoint ids a training's update adds to `output_checkpoint_ids`.
    fn new_checkpoints(&self, fields: &serde_json::Map<String, Value>) -> Vec<String> {
        let Some(TaskRecord::Training(t)) = self.running.as_ref().map(|r| &r.record) else {
            return Vec::new();
        };
        let Some(ids) = fields
            .get("output_checkpoint_ids")
            .and_then(Value::as_array)
        else {
            return Vec::new();
        };
        ids.iter()
            .filter_map(Value::as_str)
            .filter(|id| !t.output_checkpoint_ids.iter().any(|known| known == id))
            .map(str::to_string)
            .collect()
    }

    /// The running task a worker's update may change, or why it may not: no task is running,
    /// or the update names another task (a thread an earlier job left behind).
    fn writable_run(&self, task_id: Option<&str>) -> Result<&Running, String> {
        let Some(run) = self.running.as_ref() else {
            return Err("no execution is running".into());
        };
        if let Some(id) = task_id.filter(|id| *id != run.record.id()) {
            return Err(format!("task {id} is not running on this worker any more"));
        }
        Ok(run)
    }

    /// Merges a worker's `update` into the running record, persists it and answers the worker.
    fn apply_update(&mut self, fields: serde_json::Map<String, Value>, ctx: &mut Context<Self>) {
        let Some(run) = self.running.as_mut() else {
            self.send_frame(&ToWorker::UpdateAck {
                stop: false,
                error: Some("no execution is running".into()),
            });
            return;
        };
        let was_terminal = is_terminal(run.record.status());
        let before = run.record.clone();
        run.record.apply(&fields);
        let terminal = fields
            .get("status")
            .and_then(Value::as_str)
            .is_some_and(is_terminal);
        if terminal && !was_terminal {
            run.before_terminal = Some(before);
        }
        let stop = run.stop_requested;
        let record = run.record.clone();
        let stored = self.persist(&record, terminal);
        self.send_frame(&ToWorker::UpdateAck { stop, error: None });
        if terminal {
            // Show the terminal state once it is stored; a refused write leaves the
            // FAILED fallback for `finish` to report.
            let id = record.id().to_string();
            ctx.spawn(stored.into_actor(self).map(move |res, act, _| {
                if let (Ok(Ok(())), Some(run)) = (res, act.running.as_mut()) {
                    if run.record.id() == id && !run.finishing {
                        run.before_terminal = None;
                    }
                }
            }));
        }
    }

    /// Kills the worker when execution `id` has not yielded to its stop within the grace period.
    fn arm_stop_grace(&mut self, id: String, ctx: &mut Context<Self>) {
        ctx.run_later(self.spec.stop_grace, move |act, _| {
            let still = act
                .running
                .as_ref()
                .is_some_and(|r| r.record.id() == id && !r.finishing);
            // Also when STOPPED is recorded: an algorithm that swallowed the stop would otherwise
            // hold the worker until it ends on its own.
            if still {
                if let Some(pid) = act.pid {
                    tracing::warn!(worker = act.index, execution_id = %id, "algorithm ignored the stop request; killing its worker");
                    set_kill_reason(
                        &act.kill_reason,
                        "killed by compox with SIGKILL".into(),
                    );
                    kill_group(Some(pid));
                }
            }
        });
    }
}

#[derive(Message)]
#[rtype(result = "Option<TaskRecord>")]
pub struct GetRunningRecord {
    pub task_id: String,
}

impl Handler<GetRunningRecord> for Executor {
    type Result = Option<TaskRecord>;
    fn handle(&mut self, m: GetRunningRecord, _: &mut Context<Self>) -> Self::Result {
        self.running
            .as_ref()
            .filter(|r| r.record.id() == m.task_id)
            .map(|r| r.before_terminal.as_ref().unwrap_or(&r.record).clone())
    }
}

/// Asks the worker to exit and stops the executor (server shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ShutdownExecutor;

impl Handler<ShutdownExecutor> for Executor {
    type Result = ();
    fn handle(&mut self, _: ShutdownExecutor, ctx: &mut Context<Self>) {
        self.shutting_down = true;
        self.fail_running("the server shut down", ctx);
        self.send_frame(&ToWorker::Shutdown);
        if let Some(pid) = self.pid.take() {
            kill_group(Some(pid));
        }
        let _ = std::fs::remove_dir_all(&self.module_cache_dir);
    }
}

struct Persist {
    record: TaskRecord,
    terminal: bool,
    done: Option<oneshot::Sender<Result<(), StorageError>>>,
}

/// The emergency store keeps FAILED records only (`runtime.md` §12): a terminal state storage
/// refused becomes the failure the original's `mark_as_failed` would have recorded, so that the
/// fallback wins over the stale primary record on reads (`rest-api.md` §6.5).
fn failed_for_storage(record: &TaskRecord, error: &StorageError) -> TaskRecord {
    let mut failed = record.clone();
    if record.status() == "FAILED" {
        failed.fail(Value::Null);
        return failed;
    }
    failed.push_log(&format!(
        "{} ERROR Task failed: Failed to update task record ({} could not be saved: {error}).\n",
        log_time_now(),
        record.status()
    ));
    failed.fail(json!({
        "type": "CompoxTaskError",
        "message": "Failed to update task record.",
        "code": "task_record_update_failed",
        "details": {"field": "status"},
        "retryable": false,
        "http_status": 500,
        "cause": {"type": "StorageError", "message": error.to_string()},
    }));
    failed
}

/// Writes records in arrival order; coalesces non-terminal ones to one write per interval and
/// always writes the newest snapshot. A terminal record storage refuses goes to the emergency store.
async fn persister(
    mut rx: mpsc::UnboundedReceiver<Persist>,
    storage: Addr<StorageGateway>,
    emergency: Addr<EmergencyWriter>,
) {
    // A request for another execution found while coalescing waits here for its turn.
    let mut carry: Option<Persist> = None;
    // The final record is flushed twice (last update, then `done`); report it once.
    let mut reported: Option<String> = None;
    loop {
        let mut req = match carry.take() {
            Some(r) => r,
            None => match rx.recv().await {
                Some(r) => r,
                None => break,
            },
        };
        let mut waiters = vec![req.done.take()];
        if !req.terminal {
            // Hold a non-terminal record for one interval: short executions then cost a single
            // (terminal) write, long ones one write per interval. Polls read the executor's copy.
            let deadline = tokio::time::Instant::now() + PERSIST_INTERVAL;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => break,
                    next = rx.recv() => match next {
                        Some(mut n) if n.record.id() == req.record.id() => {
                            waiters.push(n.done.take());
                            req = n;
                            if req.terminal { break; }
                        }
                        Some(n) => {
                            carry = Some(n);
                            break;
                        }
                        None => break,
                    },
                }
            }
        }
        while carry.is_none() {
            let Ok(mut n) = rx.try_recv() else { break };
            if n.record.id() != req.record.id() {
                carry = Some(n);
                break;
            }
            waiters.push(n.done.take());
            let terminal = req.terminal || n.terminal;
            req = n;
            req.terminal = terminal;
        }
        let id = req.record.id().to_string();
        let collection = req.record.kind().collection();
        let body = Bytes::from(req.record.to_json());
        let result = flatten(
            storage
                .send(PutBytes {
                    collection,
                    key: id.clone(),
                    body,
                })
                .await,
        );
        match &result {
            Ok(()) if req.terminal => {
                emergency.do_send(DeleteEmergencyRecord {
                    collection,
                    id: id.clone(),
                });
                if reported.as_deref() != Some(id.as_str()) {
                    reported = Some(id.clone());
                    tracing::info!(task_id = %id, kind = req.record.kind().name(), algorithm_id = %req.record.algorithm_id(), status = %req.record.status(), "task finished");
                }
            }
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(task_id = %id, error = %e, terminal = req.terminal, "task record write failed");
                if req.terminal {
                    let failed = failed_for_storage(&req.record, e);
                    let _ = emergency
                        .send(WriteEmergencyRecord {
                            collection,
                            id: id.clone(),
                            record: failed.to_value(),
                            error_message: e.to_string(),
                            error_code: e.code().to_string(),
                            retryable: e.retryable(),
                        })
                        .await;
                }
            }
        }
        for w in waiters.into_iter().flatten() {
            let _ = w.send(
                result
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| StorageError::WriteFailed {
                        operation: "persist".into(),
                        message: e.to_string(),
                    }),
            );
        }
    }
}
