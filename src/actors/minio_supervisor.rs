//! MinIO supervisor: runs the local MinIO server for `provider: minio` with `start_instance: true`
//! (`platform.md` §3.2, §3.3).
//!
//! Owns: the MinIO child process (through a watcher task), its launch settings and the restart
//! back-off. Flow: [`start`] first asks whether a MinIO already answers at the endpoint (a
//! server running with the same settings; then it is used, not started twice, see §1.12's
//! quirk), otherwise it makes sure the binary exists (downloading the pinned release,
//! [`crate::storage::minio_binary`]), launches it and polls the endpoint until it answers, all
//! before the storage gateway or the HTTP server exist; the watcher task forwards stdout and
//! stderr to tracing and reports the exit; an unexpected exit is followed by a restart after a
//! back-off (0.5 s doubling to 30 s, reset after a minute of uptime); [`StopMinio`] kills it
//! (SIGKILL, as the original). The child gets `PR_SET_PDEATHSIG`, so it dies with the server
//! even when the server is killed. Fails: a binary that is missing and cannot be downloaded, or
//! a server that never becomes healthy, stop the start-up with an error, and nothing is left
//! running.

use crate::config::MinioBackendSettings;
use actix::prelude::*;
use anyhow::Context as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::oneshot;

const NAME: &str = "minio_supervisor";
const HEALTH_TIMEOUT: Duration = Duration::from_secs(60);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const STABLE_UPTIME: Duration = Duration::from_secs(60);

/// How to launch MinIO.
#[derive(Debug, Clone)]
pub struct MinioLaunch {
    pub executable: PathBuf,
    pub storage_path: PathBuf,
    pub port: u16,
    pub console_port: u16,
    pub root_user: String,
    pub root_password: String,
    /// Polled for health: `<endpoint>/minio/health/live`.
    pub endpoint: String,
}

impl MinioLaunch {
    pub fn from_settings(
        m: &MinioBackendSettings,
        access_key_id: Option<&str>,
        secret_access_key: Option<&str>,
    ) -> Self {
        MinioLaunch {
            executable: crate::config::absolute(std::path::Path::new(&m.executable_path)),
            storage_path: crate::config::absolute(std::path::Path::new(&m.storage_path)),
            port: m.port,
            console_port: m.console_port,
            root_user: access_key_id.unwrap_or_default().to_string(),
            root_password: secret_access_key.unwrap_or_default().to_string(),
            endpoint: m
                .s3_endpoint_url
                .clone()
                .unwrap_or_else(|| format!("http://localhost:{}", m.port)),
        }
    }
}

/// A running MinIO: the handle its watcher task listens on for a kill.
struct Running {
    generation: u64,
    pid: Option<u32>,
    started: Instant,
    kill: Option<oneshot::Sender<oneshot::Sender<()>>>,
}

pub struct MinioSupervisor {
    launch: MinioLaunch,
    running: Option<Running>,
    generation: u64,
    backoff: Duration,
    stopping: bool,
    /// Restarts so far (logged with each restart).
    restarts: u64,
    /// False until the first launch answered: an exit before that ends the start-up instead of
    /// being restarted.
    came_up: bool,
    /// Why the first launch ended before it answered: its exit status and last output lines.
    startup_failure: Option<String>,
    /// The last lines MinIO wrote (both streams), for the start-up failure message.
    recent: Recent,
}

type Recent = std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>;
const RECENT_LINES: usize = 20;

/// Starts MinIO and waits until it answers; the supervisor then keeps it up. `None` when a MinIO
/// already answers at the endpoint: that one is used and left alone.
pub async fn start(launch: MinioLaunch) -> anyhow::Result<Option<Addr<MinioSupervisor>>> {
    if answers(&launch.endpoint).await {
        tracing::warn!(
            log_type = "MINIO",
            endpoint = %launch.endpoint,
            "a MinIO already answers at the endpoint (another compox with the same settings?); \
             using it instead of starting one"
        );
        return Ok(None);
    }
    crate::storage::minio_binary::ensure(&launch.executable).await?;
    let addr = MinioSupervisor {
        launch: launch.clone(),
        running: None,
        generation: 0,
        backoff: FIRST_BACKOFF,
        stopping: false,
        restarts: 0,
        came_up: false,
        startup_failure: None,
        recent: Recent::default(),
    }
    .start();
    if let Err(e) = addr
        .send(Launch)
        .await
        .context("the MinIO supervisor stopped")?
    {
        let _ = addr.send(StopMinio).await;
        return Err(e);
    }
    if let Err(e) = wait_healthy(&launch.endpoint, HEALTH_TIMEOUT, &addr).await {
        let _ = addr.send(StopMinio).await;
        return Err(e);
    }
    let _ = addr.send(CameUp).await;
    tracing::info!(log_type = "MINIO", endpoint = %launch.endpoint, "MinIO is up");
    Ok(Some(addr))
}

/// One quick health probe: is a MinIO serving at `endpoint` right now?
async fn answers(endpoint: &str) -> bool {
    let url = format!("{}/minio/health/live", endpoint.trim_end_matches('/'));
    let Ok(client) = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
    else {
        return false;
    };
    matches!(client.get(&url).send().await, Ok(r) if r.status().is_success())
}

/// Polls `<endpoint>/minio/health/live` until it answers below 500 (MinIO answers 200 once it
/// serves; a starting or stopping one answers 503 or not at all).
async fn wait_healthy(
    endpoint: &str,
    timeout: Duration,
    supervisor: &Addr<MinioSupervisor>,
) -> anyhow::Result<()> {
    let url = format!("{}/minio/health/live", endpoint.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(r) = client.get(&url).send().await {
            if r.status().as_u16() < 500 {
                return Ok(());
            }
        }
        if let Ok(Some(failure)) = supervisor.send(StartupFailure).await {
            anyhow::bail!("MinIO exited before it answered at {url}: {failure}");
        }
        if Instant::now() >= deadline {
            let recent = supervisor.send(StartupFailure).await.ok().flatten();
            anyhow::bail!(
                "MinIO did not become healthy at {url} within {}s{}",
                timeout.as_secs(),
                recent.map(|r| format!(": {r}")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn level_is_error(line: &str) -> bool {
    let lower = line.to_lowercase();
    ["error", "fatal", "panic"]
        .iter()
        .any(|w| lower.contains(w))
}

async fn forward_lines<R: AsyncRead + Unpin>(reader: R, stream: &'static str, recent: Recent) {
    let mut lines = BufReader::new(reader).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let line = line.trim_end();
        if let Ok(mut r) = recent.lock() {
            if r.len() == RECENT_LINES {
                r.pop_front();
            }
            r.push_back(line.to_string());
        }
        if level_is_error(line) {
            tracing::error!(log_type = "MINIO", stream, "{line}");
        } else {
            tracing::debug!(log_type = "MINIO", stream, "{line}");
        }
    }
}

impl MinioSupervisor {
    fn spawn_child(&mut self, ctx: &mut Context<Self>) -> anyhow::Result<()> {
        let l = &self.launch;
        std::fs::create_dir_all(&l.storage_path).with_context(|| {
            format!(
                "cannot create the MinIO storage_path {}",
                l.storage_path.display()
            )
        })?;
        let mut cmd = tokio::process::Command::new(&l.executable);
        cmd.arg("server")
            .arg(&l.storage_path)
            .arg("--console-address")
            .arg(format!(":{}", l.console_port))
            .arg("--address")
            .arg(format!(":{}", l.port))
            .env("MINIO_ROOT_USER", &l.root_user)
            .env("MINIO_ROOT_PASSWORD", &l.root_password)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; the closure touches nothing else.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start MinIO {}", l.executable.display()))?;
        self.generation += 1;
        let generation = self.generation;
        let pid = child.id();
        tracing::info!(log_type = "MINIO", pid, generation, "MinIO started");
        if let Some(out) = child.stdout.take() {
            actix::spawn(forward_lines(out, "stdout", self.recent.clone()));
        }
        if let Some(err) = child.stderr.take() {
            actix::spawn(forward_lines(err, "stderr", self.recent.clone()));
        }
        let (kill_tx, kill_rx) = oneshot::channel::<oneshot::Sender<()>>();
        let me = ctx.address();
        actix::spawn(async move {
            tokio::select! {
                status = child.wait() => {
                    me.do_send(Exited { generation, status: status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()) });
                }
                Ok(done) = kill_rx => {
                    let _ = child.kill().await;
                    let _ = done.send(());
                }
            }
        });
        self.running = Some(Running {
            generation,
            pid,
            started: Instant::now(),
            kill: Some(kill_tx),
        });
        Ok(())
    }
}

impl Actor for MinioSupervisor {
    type Context = Context<Self>;

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        // Last resort: the watcher task may be gone with the system; kill by pid.
        if let Some(pid) = self.running.take().and_then(|r| r.pid) {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// Starts the first MinIO process.
#[derive(Message)]
#[rtype(result = "anyhow::Result<()>")]
struct Launch;

impl Handler<Launch> for MinioSupervisor {
    type Result = anyhow::Result<()>;

    fn handle(&mut self, _msg: Launch, ctx: &mut Self::Context) -> Self::Result {
        self.spawn_child(ctx)
    }
}

/// The watcher saw MinIO exit.
#[derive(Message)]
#[rtype(result = "()")]
struct Exited {
    generation: u64,
    status: String,
}

impl Handler<Exited> for MinioSupervisor {
    type Result = ();

    fn handle(&mut self, msg: Exited, ctx: &mut Self::Context) {
        let current = self.running.as_ref().map(|r| r.generation) == Some(msg.generation);
        if !current || self.stopping {
            return;
        }
        if !self.came_up {
            // Not restarted: the start-up reports it (a bad binary or settings fail every time).
            self.running = None;
            let lines = self
                .recent
                .lock()
                .map(|r| r.iter().cloned().collect::<Vec<_>>().join(" | "))
                .unwrap_or_default();
            self.startup_failure = Some(if lines.is_empty() {
                format!("{} (it wrote nothing)", msg.status)
            } else {
                format!("{}; its last output: {lines}", msg.status)
            });
            return;
        }
        let uptime = self.running.take().map(|r| r.started.elapsed());
        if uptime.is_some_and(|u| u >= STABLE_UPTIME) {
            self.backoff = FIRST_BACKOFF;
        }
        let delay = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        tracing::error!(
            actor = NAME,
            log_type = "MINIO",
            status = %msg.status,
            "MinIO exited; restarting in {:.1}s",
            delay.as_secs_f64()
        );
        ctx.run_later(delay, |act, ctx| {
            if act.stopping || act.running.is_some() {
                return;
            }
            act.restarts += 1;
            tracing::info!(
                actor = NAME,
                log_type = "MINIO",
                restart = act.restarts,
                "restarting MinIO"
            );
            if let Err(e) = act.spawn_child(ctx) {
                tracing::error!(
                    actor = NAME,
                    log_type = "MINIO",
                    "restarting MinIO failed: {e:#}"
                );
                // Try again later, with the next back-off.
                ctx.notify(Exited {
                    generation: act.generation,
                    status: "not started".into(),
                });
                act.running = Some(Running {
                    generation: act.generation,
                    pid: None,
                    started: Instant::now(),
                    kill: None,
                });
            }
        });
    }
}

/// The first launch answered: from now on an exit is restarted.
#[derive(Message)]
#[rtype(result = "()")]
struct CameUp;

impl Handler<CameUp> for MinioSupervisor {
    type Result = ();
    fn handle(&mut self, _: CameUp, _: &mut Self::Context) {
        self.came_up = true;
    }
}

/// Why the first launch ended before answering, if it did.
#[derive(Message)]
#[rtype(result = "Option<String>")]
struct StartupFailure;

impl Handler<StartupFailure> for MinioSupervisor {
    type Result = Option<String>;
    fn handle(&mut self, _: StartupFailure, _: &mut Self::Context) -> Option<String> {
        self.startup_failure.clone()
    }
}

/// Kills MinIO and stops supervising it; answers once the process is gone.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopMinio;

impl Handler<StopMinio> for MinioSupervisor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _msg: StopMinio, ctx: &mut Self::Context) -> Self::Result {
        self.stopping = true;
        let kill = self.running.take().and_then(|mut r| r.kill.take());
        ctx.stop();
        Box::pin(async move {
            if let Some(kill) = kill {
                let (tx, rx) = oneshot::channel();
                if kill.send(tx).is_ok() {
                    let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
                }
            }
            tracing::info!(log_type = "MINIO", "MinIO stopped");
        })
    }
}

#[cfg(test)]
mod tests {
    use super::level_is_error;

    #[test]
    fn error_lines_are_recognised_case_insensitively() {
        assert!(level_is_error("API: SYSTEM ERROR: disk"));
        assert!(level_is_error("Fatal glitch"));
        assert!(level_is_error("panic: runtime error"));
        assert!(!level_is_error("Status: 1 Online, 0 Offline."));
    }
}
