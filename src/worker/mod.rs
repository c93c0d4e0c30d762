//! The worker process (`compox worker`, hidden): embeds CPython through pyo3 and runs one
//! execution at a time for its executor.
//!
//! 1. Keeps a private copy of fd 1 for protocol frames and points fd 1 at stderr, so nothing an
//!    algorithm prints can corrupt the protocol; asks the kernel to kill it when the parent dies.
//! 2. Reads `init`, opens the storage backend, starts Python in the configured environment,
//!    answers `ready` with the interpreter's version and prefix.
//! 3. For each `run`, calls `compox._worker.run_job(job, bridge)`; the bridge reads and writes
//!    storage directly and sends record updates to the executor, which answers each with whether
//!    a stop was requested. Then answers `done`.

pub mod protocol;
pub mod python_env;

use crate::storage::{Backend, COLLECTIONS};
use protocol::{FromWorker, StorageSpec, ToWorker};
use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

struct Channel {
    input: std::io::BufReader<File>,
    output: File,
}

impl Channel {
    fn send(&mut self, msg: &FromWorker) -> std::io::Result<()> {
        protocol::write_blocking(&mut self.output, msg)
    }

    fn recv(&mut self) -> std::io::Result<Option<ToWorker>> {
        protocol::read_blocking(&mut self.input)
    }
}

/// What Python calls: storage access and record updates (`docs/worker-protocol.md` §2). Each
/// job gets its own bridge, which dies with the job.
#[pyclass]
struct Bridge {
    /// The worker's pid: a process the algorithm forked must not talk to the executor.
    owner_pid: u32,
    channel: Arc<Mutex<Channel>>,
    backend: Arc<dyn Backend>,
    runtime: Arc<tokio::runtime::Runtime>,
    /// The task of the job: every record update names it, so the executor can refuse updates
    /// for any other task.
    task_id: Option<String>,
    /// Cleared when the job returns: a thread the job left behind, holding this bridge, can no
    /// longer read, write or update anything.
    live: Arc<AtomicBool>,
}

fn collection(name: &str) -> PyResult<&'static str> {
    COLLECTIONS
        .iter()
        .find(|c| **c == name)
        .copied()
        .ok_or_else(|| PyValueError::new_err(format!("unknown collection {name:?}")))
}

fn storage_err(e: crate::storage::StorageError) -> PyErr {
    if e.is_not_found() {
        PyFileNotFoundError::new_err(e.to_string())
    } else {
        PyOSError::new_err(e.to_string())
    }
}

impl Bridge {
    fn check_usable(&self) -> PyResult<()> {
        if std::process::id() != self.owner_pid {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(
                "the compox bridge cannot be used from a process forked by the algorithm",
            ));
        }
        if !self.live.load(Ordering::Acquire) {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(format!(
                "the compox bridge of task {} cannot be used after the task ended",
                self.task_id.as_deref().unwrap_or("?")
            )));
        }
        Ok(())
    }
}

/// The id of the task a `run` job carries (`execution_id`, `training_id` or `benchmark_id`).
fn job_task_id(job: &serde_json::Value) -> Option<String> {
    let kind = crate::records::TaskKind::from_name(job.get("kind").and_then(|k| k.as_str()))?;
    job.get("record")?
        .get(kind.id_field())?
        .as_str()
        .map(str::to_string)
}

#[pymethods]
impl Bridge {
    fn get_object<'py>(
        &self,
        py: Python<'py>,
        collection_name: &str,
        key: &str,
    ) -> PyResult<Bound<'py, PyBytes>> {
        self.check_usable()?;
        let c = collection(collection_name)?;
        let (backend, rt) = (self.backend.clone(), self.runtime.clone());
        let key = key.to_string();
        let bytes = py
            .allow_threads(move || rt.block_on(backend.get_bytes(c, &key)))
            .map_err(storage_err)?;
        Ok(PyBytes::new(py, &bytes))
    }

    fn put_object(
        &self,
        py: Python<'_>,
        collection_name: &str,
        key: &str,
        data: &[u8],
    ) -> PyResult<()> {
        self.check_usable()?;
        let c = collection(collection_name)?;
        let (backend, rt) = (self.backend.clone(), self.runtime.clone());
        let key = key.to_string();
        let body = bytes::Bytes::copy_from_slice(data);
        py.allow_threads(move || rt.block_on(backend.put_bytes(c, &key, body)))
            .map_err(storage_err)
    }

    fn object_exists(&self, py: Python<'_>, collection_name: &str, key: &str) -> PyResult<bool> {
        self.check_usable()?;
        let c = collection(collection_name)?;
        let (backend, rt) = (self.backend.clone(), self.runtime.clone());
        let key = key.to_string();
        py.allow_threads(move || rt.block_on(backend.exists(c, &key)))
            .map_err(storage_err)
    }

    /// Sends the fields to the executor and returns whether a stop was requested. With
    /// `task_id`, the executor refuses the write unless that task is the one running.
    #[pyo3(signature = (fields, task_id=None))]
    fn update_record(
        &self,
        py: Python<'_>,
        fields: &Bound<'_, PyAny>,
        task_id: Option<String>,
    ) -> PyResult<bool> {
        self.check_usable()?;
        if let Some(given) = task_id.filter(|given| Some(given) != self.task_id.as_ref()) {
            return Err(PyOSError::new_err(format!(
                "task {given} is not the task of this bridge"
            )));
        }
        let task_id = self.task_id.clone();
        // Lone surrogates (e.g. from non-UTF-8 file names) become `?` instead of failing the write.
        let kwargs = pyo3::types::PyDict::new(py);
        kwargs.set_item("ensure_ascii", false)?;
        let text = py
            .import("json")?
            .call_method("dumps", (fields,), Some(&kwargs))?
            .call_method1("encode", ("utf-8", "replace"))?;
        let text: &[u8] = text.downcast::<PyBytes>()?.as_bytes();
        let fields: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(text)
            .map_err(|e| {
                PyValueError::new_err(format!("record fields must be a JSON object: {e}"))
            })?;
        let channel = self.channel.clone();
        let reply = py.allow_threads(move || {
            let mut ch = channel
                .lock()
                .map_err(|_| std::io::Error::other("channel poisoned"))?;
            ch.send(&FromWorker::Update { fields, task_id })?;
            ch.recv()
        });
        match reply {
            Ok(Some(ToWorker::UpdateAck { error: Some(e), .. })) => Err(PyOSError::new_err(e)),
            Ok(Some(ToWorker::UpdateAck { stop, .. })) => Ok(stop),
            Ok(other) => Err(PyOSError::new_err(format!(
                "unexpected reply from the executor: {other:?}"
            ))),
            Err(e) => Err(PyOSError::new_err(format!("executor channel failed: {e}"))),
        }
    }
}

/// Signal that tells a worker its server died; Python leaves real-time signals alone.
fn parent_death_signal() -> libc::c_int {
    libc::SIGRTMIN() + 4
}

extern "C" fn kill_own_group(_: libc::c_int) {
    // SAFETY: kill is async-signal-safe; the group is the worker and what its algorithms started.
    unsafe { libc::kill(0, libc::SIGKILL) };
}

/// Asks the kernel to signal the worker when the server dies, also when the server is killed
/// outright. A worker leading its own process group (as the executor starts it) then kills the
/// whole group, so processes an algorithm started (subprocesses, multiprocessing children) do
/// not outlive the server; any other worker just dies.
fn die_with_parent() {
    // SAFETY: installing a handler that only calls kill(2), and a prctl on this process.
    unsafe {
        if libc::getpgrp() != libc::getpid() {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            return;
        }
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = kill_own_group as *const () as usize;
        libc::sigemptyset(&mut action.sa_mask);
        let signal = parent_death_signal();
        if libc::sigaction(signal, &action, std::ptr::null_mut()) == 0 {
            libc::prctl(libc::PR_SET_PDEATHSIG, signal);
        } else {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        }
    }
}

/// Entry point of `compox worker`.
pub fn run(index: usize) -> anyhow::Result<()> {
    // SAFETY: plain descriptor juggling before any other thread exists.
    // The protocol moves to private close-on-exec descriptors; fd 0 becomes /dev/null and fd 1
    // stderr, so neither a print nor a subprocess reading stdin can touch the frames.
    // SAFETY: plain descriptor juggling before any other thread exists.
    let (input, output) = unsafe {
        let out_fd = libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3);
        let in_fd = libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3);
        anyhow::ensure!(
            out_fd >= 0 && in_fd >= 0,
            "cannot duplicate the protocol descriptors"
        );
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::close(null);
        }
        libc::dup2(2, 1);
        (File::from_raw_fd(in_fd), File::from_raw_fd(out_fd))
    };
    die_with_parent();
    let channel = Arc::new(Mutex::new(Channel {
        input: std::io::BufReader::new(input),
        output,
    }));
    let init = channel
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .recv()?;
    let Some(ToWorker::Init { storage, .. }) = init else {
        anyhow::bail!("worker {index}: expected an init frame");
    };
    let runtime = Arc::new(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
    );
    let backend = open_backend(&storage)?;
    let env = python_env::resolve_env(std::env::var("COMPOX_PYTHON_ENV").ok().as_deref());
    let info = match python_env::init(env.as_deref()) {
        Ok(info) => info,
        Err(e) => {
            let message = format!("cannot start Python: {e}");
            let _ = channel.lock().map(|mut c| {
                c.send(&FromWorker::Fatal {
                    message: message.clone(),
                })
            });
            anyhow::bail!(message);
        }
    };
    channel
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .send(&FromWorker::Ready {
            python_version: info.version,
            python_prefix: info.prefix,
            python_executable: info.executable,
            pid: std::process::id(),
        })?;
    let owner_pid = std::process::id();
    loop {
        let frame = channel
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .recv()?;
        match frame {
            None | Some(ToWorker::Shutdown) => return Ok(()),
            Some(ToWorker::Run { job }) => {
                let job_text = job.to_string();
                let live = Arc::new(AtomicBool::new(true));
                let bridge = Bridge {
                    owner_pid,
                    channel: channel.clone(),
                    backend: backend.clone(),
                    runtime: runtime.clone(),
                    task_id: job_task_id(&job),
                    live: live.clone(),
                };
                let retire = Python::with_gil(|py| -> PyResult<Option<String>> {
                    let job = py.import("json")?.call_method1("loads", (job_text,))?;
                    py.import("compox._worker")?
                        .call_method1("run_job", (job, Py::new(py, bridge)?))?
                        .extract()
                })
                .unwrap_or_else(|e| {
                    eprintln!("worker {index}: run_job raised: {e}");
                    Some(format!("run_job raised: {e}"))
                });
                live.store(false, Ordering::Release);
                if std::process::id() != owner_pid {
                    // A forked child of the algorithm returned here: it must not act as the worker.
                    // SAFETY: immediate exit without running Rust or Python destructors.
                    unsafe { libc::_exit(0) };
                }
                channel
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .send(&FromWorker::Done { retire })?;
            }
            Some(other) => eprintln!("worker {index}: ignoring unexpected frame {other:?}"),
        }
    }
}

/// The same backend the server uses, opened from the spec the executor sent.
pub fn open_backend(spec: &StorageSpec) -> anyhow::Result<Arc<dyn Backend>> {
    use crate::config::BackendSettings;
    match &spec.backend {
        BackendSettings::Filesystem(f) => Ok(Arc::new(
            crate::storage::filesystem::FilesystemBackend::new(
                crate::config::absolute(std::path::Path::new(&f.storage_path)),
                spec.collection_prefix.clone(),
                crate::storage::filesystem::UrlSigner::new(String::new()),
            ),
        )),
        // Workers never create collections, so they need no expiry rules.
        other => {
            let cfg = crate::storage::s3::S3Config::from_backend(
                other,
                &spec.collection_prefix,
                spec.access_key_id.clone(),
                spec.secret_access_key.clone(),
                crate::storage::ExpiryRules::default(),
            )
            .ok_or_else(|| anyhow::anyhow!("no S3 settings in {other:?}"))?;
            Ok(Arc::new(crate::storage::s3::S3Backend::new(cfg)))
        }
    }
}

/// Runs one `compox python-tool` step in the workers' interpreter and prints its outcome as one
/// JSON line: the step's own JSON, or `{"error": "<type>: <message>"}` with exit code 1.
fn run_python_tool(step: impl FnOnce(Python<'_>) -> PyResult<String>) -> i32 {
    let env = python_env::resolve_env(std::env::var("COMPOX_PYTHON_ENV").ok().as_deref());
    match python_env::init(env.as_deref()).and_then(|_| Python::with_gil(step)) {
        Ok(json) => {
            println!("{json}");
            0
        }
        Err(e) => {
            let text = Python::with_gil(|py| {
                let ty = e
                    .get_type(py)
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_else(|_| "Error".into());
                format!("{ty}: {}", e.value(py))
            });
            println!("{}", serde_json::json!({ "error": text }));
            1
        }
    }
}

/// `compox python-tool check-import ZIP MODULE_ID`: puts the module zip on `sys.path`, imports the
/// package, reads its `Runner` and calls `Runner()` (`algorithms.md` §2.3 step 9).
pub fn run_check_import(zip: &str, module_id: &str) -> i32 {
    run_python_tool(|py| {
        py.import("sys")?
            .getattr("path")?
            .call_method1("insert", (0, zip))?;
        let package = py
            .import("importlib")?
            .call_method1("import_module", (module_id,))?;
        package.getattr("Runner")?.call0()?;
        Ok(serde_json::json!({ "warnings": [] }).to_string())
    })
}

/// `compox python-tool deploy-module PKG --obfuscate B --pyc-only B`: the Python steps of a module
/// build (`algorithms.md` §2.3 steps 4–7).
pub fn run_deploy_tool(package: &str, obfuscate: bool, pyc_only: bool) -> i32 {
    run_python_tool(|py| {
        let out = py
            .import("compox._deploy_tools")?
            .call_method1("process_package", (package, obfuscate, pyc_only))?;
        py.import("json")?.call_method1("dumps", (out,))?.extract()
    })
}
