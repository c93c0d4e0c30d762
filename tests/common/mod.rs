//! Shared harness for the integration tests: starts the real `compox` binary on a free loopback
//! port with its own storage folder, and talks HTTP to it.
#![allow(dead_code)]

use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const EXE: &str = env!("CARGO_BIN_EXE_compox");

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The virtual environment `scripts/setup-python.sh` creates; workers run algorithms in it.
pub fn venv() -> PathBuf {
    repo().join(".venv")
}

pub fn venv_python() -> PathBuf {
    venv().join("bin/python")
}

pub fn algorithms_dir() -> PathBuf {
    repo().join("tests/algorithms")
}

pub fn invalid_algorithms_dir() -> PathBuf {
    repo().join("tests/algorithms_invalid")
}

/// Input images made from packages' bundled data (skimage, pydicom), generated once per binary.
pub fn images() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("compox-test-images-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new(venv_python())
            .arg(repo().join("tests/fixtures/make_images.py"))
            .arg(&dir)
            .stdout(Stdio::null())
            .status()
            .expect(
                "run tests/fixtures/make_images.py with the .venv python (scripts/setup-python.sh)",
            );
        assert!(status.success(), "make_images.py failed");
        dir
    })
}

pub struct ServerOptions {
    /// Extra YAML appended to the generated config.
    pub yaml: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub wait_ready: bool,
    /// Replaces the generated `storage:` block (e.g. [`s3_storage_yaml`]).
    pub storage_yaml: Option<String>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            yaml: String::new(),
            args: Vec::new(),
            env: Vec::new(),
            wait_ready: true,
            storage_yaml: None,
        }
    }
}

pub struct Server {
    pub child: Child,
    pub port: u16,
    pub base: String,
    pub dir: tempfile::TempDir,
    pub log: Arc<Mutex<Vec<String>>>,
    pub client: reqwest::Client,
    /// The store the generated config points at (`None` with an explicit `storage_yaml`).
    pub test_store: Option<TestStore>,
}

/// A free loopback port (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(ServerOptions::default())
    }

    pub fn start_with(opts: ServerOptions) -> Server {
        let dir = tempfile::tempdir().unwrap();
        Server::start_in(dir, opts)
    }

    /// Starts a server whose storage and logs live in `dir` (reuse it to restart on the same data).
    pub fn start_in(dir: tempfile::TempDir, opts: ServerOptions) -> Server {
        let port = free_port();
        let config = dir.path().join("compox.yaml");
        let test_store = opts
            .storage_yaml
            .is_none()
            .then(|| TestStore::for_dir(dir.path()));
        let storage = match (&opts.storage_yaml, &test_store) {
            (Some(yaml), _) => yaml.clone(),
            (None, Some(store)) => store.storage_yaml(),
            (None, None) => unreachable!("a store is made when no storage_yaml is given"),
        };
        let yaml = format!(
            "port: {port}\nlog_path: {log}\n{storage}inference:\n  device: cpu\n  python_env: {venv}\n  stop_grace_period_s: 3.0\n{extra}",
            log = dir.path().join("logs/compox.log").display(),
            venv = venv().display(),
            extra = opts.yaml,
        );
        std::fs::write(&config, yaml).unwrap();
        let mut cmd = Command::new(EXE);
        cmd.arg("run").arg("--config").arg(&config).args(&opts.args);
        cmd.current_dir(dir.path())
            .env("COMPOX_TEST_FAULTS", "1")
            .env_remove("VIRTUAL_ENV");
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start compox");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        let server = Server {
            child,
            port,
            base,
            dir,
            log,
            client,
            test_store,
        };
        server.wait_up(opts.wait_ready);
        if let Some(store) = &server.test_store {
            assert!(
                store.collection_exists("data-store"),
                "the server did not set up the test store"
            );
        }
        server
    }

    fn wait_up(&self, ready: bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let path = if ready { "/health" } else { "/" };
        let url = format!("{}{path}", self.base);
        loop {
            let ok = std::process::Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &url])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout) == "200")
                .unwrap_or(false);
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server did not come up; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The filesystem store's folder; only for checks that have no meaning on S3 (the
    /// backend-neutral `store_*` methods cover everything else).
    pub fn store(&self) -> PathBuf {
        assert_eq!(
            backend(),
            Backend::Filesystem,
            "Server::store() is the filesystem store's folder"
        );
        self.dir.path().join("store")
    }

    /// The store this server's generated config points at.
    pub fn test_store(&self) -> &TestStore {
        self.test_store
            .as_ref()
            .expect("a server started with an explicit storage_yaml has no TestStore")
    }

    /// Keys of one collection, in byte order.
    pub fn store_keys(&self, collection: &str) -> Vec<String> {
        self.test_store().keys(collection)
    }

    pub fn store_read(&self, collection: &str, key: &str) -> Option<Vec<u8>> {
        self.test_store().read(collection, key)
    }

    pub fn store_size(&self, collection: &str, key: &str) -> Option<u64> {
        self.test_store().size(collection, key)
    }

    pub fn store_exists(&self, collection: &str, key: &str) -> bool {
        self.test_store().exists(collection, key)
    }

    pub fn store_write(&self, collection: &str, key: &str, bytes: &[u8]) {
        self.test_store().write(collection, key, bytes)
    }

    pub fn store_delete(&self, collection: &str, key: &str) {
        self.test_store().delete(collection, key)
    }

    /// An object's tags (`training_ref` of `data-store` files).
    pub fn store_tags(&self, collection: &str, key: &str) -> BTreeMap<String, String> {
        self.test_store().tags(collection, key)
    }

    /// Writes begun and never finished (see [`TestStore::unfinished_writes`]).
    pub fn store_unfinished_writes(&self) -> Vec<String> {
        self.test_store().unfinished_writes()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str) -> (u16, Value) {
        let r = self.client.post(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let r = self.client.delete(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Uploads a file through `POST /api/v0/files`; returns the file id.
    pub async fn upload(&self, path: &Path) -> String {
        let body = std::fs::read(path).unwrap();
        let r = self
            .client
            .post(self.url("/api/v0/files"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let v: Value = r.json().await.unwrap();
        v["file_id"].as_str().unwrap().to_string()
    }

    pub async fn download(&self, file_id: &str) -> Vec<u8> {
        let r = self
            .client
            .get(self.url(&format!("/api/v0/files/{file_id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.bytes().await.unwrap().to_vec()
    }

    /// Deploys a folder of `tests/algorithms` through `POST /api/v0/deploy/local`.
    pub async fn deploy(&self, folder: &Path) -> (u16, Value) {
        let r = self
            .client
            .post(self.url("/api/v0/deploy/local"))
            .query(&[("path", folder.display().to_string())])
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn deploy_ok(&self, name: &str) -> String {
        let (status, body) = self.deploy(&algorithms_dir().join(name)).await;
        assert_eq!(status, 200, "deploy {name}: {body}\n{}", self.log_text());
        body["algorithm_id"].as_str().unwrap().to_string()
    }

    pub async fn execute(&self, algorithm_id: &str, inputs: &[String], params: Value) -> String {
        let body = serde_json::json!({
            "algorithm_id": algorithm_id,
            "input_dataset_ids": inputs,
            "additional_parameters": params,
        });
        let (status, v) = self.post_json("/api/v0/execute-algorithm", &body).await;
        assert_eq!(status, 200, "{v}");
        v["execution_id"].as_str().unwrap().to_string()
    }

    /// Polls until the execution is terminal; returns the record and every status seen.
    pub async fn wait_terminal(
        &self,
        execution_id: &str,
        timeout: Duration,
    ) -> (Value, Vec<String>) {
        let deadline = Instant::now() + timeout;
        let mut seen: Vec<String> = Vec::new();
        let mut last_progress = 0.0f64;
        loop {
            let (status, rec) = self
                .get(&format!("/api/v0/executions/{execution_id}"))
                .await;
            assert_eq!(status, 200, "{rec}");
            let s = rec["status"].as_str().unwrap().to_string();
            let p = rec["progress"].as_f64().unwrap();
            assert!(
                p + 1e-9 >= last_progress || s == "FAILED",
                "progress went backwards: {last_progress} -> {p}"
            );
            last_progress = p;
            if seen.last() != Some(&s) {
                seen.push(s.clone());
            }
            if ["COMPLETED", "FAILED", "STOPPED"].contains(&s.as_str()) {
                return (rec, seen);
            }
            assert!(
                Instant::now() < deadline,
                "execution {execution_id} not finished; last {rec}\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn health(&self) -> Value {
        self.get("/health").await.1
    }

    /// Waits until every worker reports ready.
    pub async fn wait_workers_ready(&self, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, h) = self.get("/health").await;
            if status == 200 && h["ready"] == true {
                return h;
            }
            assert!(Instant::now() < deadline, "workers not ready: {h}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn terminate(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs a Python `script` of the test venv with an HDF5 file holding `bytes` as `sys.argv[1]`
/// (then `args`); returns its stdout, failing the test when the script fails.
pub fn run_h5_script(bytes: &[u8], script: &str, args: &[&str]) -> Vec<u8> {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), bytes).unwrap();
    let out = Command::new(venv_python())
        .arg("-c")
        .arg(script)
        .arg(f.path())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Inspects an HDF5 file with h5py in the test venv: every top-level dataset's shape, dtype and
/// summary statistics, as JSON.
pub fn inspect_h5(bytes: &[u8]) -> Value {
    let script = r#"
import sys, json, h5py, numpy as np
out = {}
with h5py.File(sys.argv[1], "r") as f:
    for k in f.keys():
        d = f[k][()]
        a = np.asarray(d)
        info = {"shape": list(a.shape), "dtype": str(a.dtype)}
        if a.dtype.kind in "biuf" and a.size:
            info.update(min=float(a.min()), max=float(a.max()), mean=float(a.mean()),
                        unique=int(len(np.unique(a))) if a.size < 5_000_000 else None,
                        tv=float(np.abs(np.diff(a.astype(float), axis=-1)).sum()) if a.ndim >= 2 else None)
        if a.ndim == 2 and a.shape == (3, 3):
            info["values"] = a.tolist()
        out[k] = info
print(json.dumps(out))
"#;
    serde_json::from_slice(&run_h5_script(bytes, script, &[])).unwrap()
}

/// Replaces ids, times and paths so a body can be compared with a golden recording.
pub fn normalize(v: &Value) -> Value {
    match v {
        Value::String(s) => {
            let uuid_like = s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4;
            let time_like = s.len() >= 19
                && s.as_bytes().get(4) == Some(&b'-')
                && s.as_bytes()
                    .get(10)
                    .is_some_and(|c| *c == b' ' || *c == b'T');
            if uuid_like {
                Value::String("<id>".into())
            } else if time_like {
                Value::String("<time>".into())
            } else {
                v.clone()
            }
        }
        Value::Array(items) => Value::Array(items.iter().map(normalize).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, x)| {
                    (
                        k.clone(),
                        if k == "log" || k == "storage_metrics" {
                            Value::String("<skipped>".into())
                        } else {
                            normalize(x)
                        },
                    )
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The recorded response of `../shared/golden/<name>.json`: (status, body).
pub fn golden(name: &str) -> (u16, Value) {
    let path = repo().join("../shared/golden").join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: Value = serde_json::from_str(&text).unwrap();
    (
        v["response"]["status"].as_u64().unwrap() as u16,
        v["response"]["body"].clone(),
    )
}

/// Asserts status and body equal the golden recording, ids/times/logs aside.
pub fn assert_golden(name: &str, status: u16, body: &Value) {
    let (gs, gb) = golden(name);
    assert_eq!(status, gs, "{name}: status");
    assert_eq!(normalize(body), normalize(&gb), "{name}: body");
}

/// Credentials the S3-backed test servers use (moto accepts any).
pub const S3_ACCESS_KEY: &str = "compox-test-key";
pub const S3_SECRET_KEY: &str = "compox-test-secret";

/// `moto_server` from the test venv (`scripts/setup-python.sh` installs `moto[server]`).
pub fn moto_server_exe() -> PathBuf {
    venv().join("bin/moto_server")
}

/// An in-memory S3 server (`moto_server`) on a free loopback port, killed on drop.
pub struct Moto {
    pub child: Child,
    pub port: u16,
}

impl Moto {
    pub fn start() -> Moto {
        use std::os::unix::process::CommandExt;
        let port = free_port();
        let mut cmd = Command::new(moto_server_exe());
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe; a test process that dies without dropping its Moto
        // (the shared one is never dropped) takes moto_server with it.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .expect("start .venv/bin/moto_server (scripts/setup-python.sh installs moto[server])");
        let moto = Moto { child, port };
        wait_http_ok(&moto.endpoint(), Duration::from_secs(60));
        moto
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `url` answers anything below 500.
pub fn wait_http_ok(url: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let code = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", url])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .parse::<u16>()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        if (200..500).contains(&code) {
            return;
        }
        assert!(Instant::now() < deadline, "{url} did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `storage:` block of a server on an S3 server at `port` (`provider: minio`, no instance
/// started), with explicit credentials and an optional collection prefix.
pub fn s3_storage_yaml(port: u16, prefix: &str) -> String {
    format!(
        "storage:\n  collection_prefix: \"{prefix}\"\n  access_key_id: {S3_ACCESS_KEY}\n  secret_access_key: {S3_SECRET_KEY}\n  backend_settings:\n    provider: minio\n    start_instance: false\n    port: {port}\n"
    )
}

/// A plain SDK client on the S3 server at `endpoint`, to look at what a server did behind its API.
pub fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            S3_ACCESS_KEY,
            S3_SECRET_KEY,
            None,
            None,
            "test",
        ))
        .http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                    aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https(),
        )
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

// ---- Backend switch: the file, deploy and execution suites run on either store ----------------

/// The store servers started without an explicit `storage_yaml` use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Filesystem,
    S3,
}

/// `COMPOX_TEST_BACKEND`: `filesystem` (the default) or `s3` (a `moto_server` per test process).
pub fn backend() -> Backend {
    static BACKEND: OnceLock<Backend> = OnceLock::new();
    *BACKEND.get_or_init(|| match std::env::var("COMPOX_TEST_BACKEND").as_deref() {
        Err(_) | Ok("") | Ok("filesystem") => Backend::Filesystem,
        Ok("s3") => Backend::S3,
        Ok(other) => panic!("COMPOX_TEST_BACKEND={other:?}: expected filesystem or s3"),
    })
}

/// The `moto_server` every S3-backed server of this test process shares, each under its own
/// collection prefix. It is started on a thread that never ends, so it lives exactly as long as
/// the process (the parent-death signal kills it then) and outlives restarts on the same folder.
fn shared_moto_endpoint() -> &'static str {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let moto = Moto::start();
            let _ = tx.send(moto.endpoint());
            loop {
                std::thread::park();
            }
        });
        rx.recv().expect("the shared moto_server did not start")
    })
}

/// Where a server started in a folder keeps its objects, and direct access to them (without
/// the server) for checks: the folder's `store/` on the filesystem, or its own bucket prefix on
/// the shared `moto_server`. Restarting a server on the same folder reaches the same objects.
#[derive(Clone)]
pub enum TestStore {
    Filesystem(PathBuf),
    S3 {
        endpoint: String,
        prefix: String,
        client: aws_sdk_s3::Client,
    },
}

impl TestStore {
    /// The store of `dir` on the selected [`backend`]; an S3 prefix is made once and kept in
    /// `dir/s3-prefix`.
    pub fn for_dir(dir: &Path) -> TestStore {
        match backend() {
            Backend::Filesystem => TestStore::Filesystem(dir.join("store")),
            Backend::S3 => {
                static NEXT: std::sync::atomic::AtomicUsize =
                    std::sync::atomic::AtomicUsize::new(0);
                let file = dir.join("s3-prefix");
                let prefix = std::fs::read_to_string(&file).unwrap_or_else(|_| {
                    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let prefix = format!("t{n}-");
                    std::fs::write(&file, &prefix).unwrap();
                    prefix
                });
                let endpoint = shared_moto_endpoint().to_string();
                let client = s3_client(&endpoint);
                TestStore::S3 {
                    endpoint,
                    prefix,
                    client,
                }
            }
        }
    }

    /// The `storage:` block of a config on this store.
    pub fn storage_yaml(&self) -> String {
        match self {
            TestStore::Filesystem(root) => format!(
                "storage:\n  backend_settings:\n    provider: filesystem\n    storage_path: {}\n",
                root.display()
            ),
            TestStore::S3 {
                endpoint, prefix, ..
            } => {
                let port = endpoint.rsplit(':').next().unwrap().parse().unwrap();
                s3_storage_yaml(port, prefix)
            }
        }
    }

    /// Whether the collection exists (its folder or bucket).
    pub fn collection_exists(&self, collection: &str) -> bool {
        match self {
            TestStore::Filesystem(root) => root.join(collection).is_dir(),
            TestStore::S3 { client, .. } => {
                let (client, bucket) = (client.clone(), self.bucket(collection));
                s3_blocking(async move {
                    match client.head_bucket().bucket(&bucket).send().await {
                        Ok(_) => true,
                        Err(e) if s3_missing(&e) => false,
                        Err(e) => panic!("head bucket {bucket}: {e:?}"),
                    }
                })
            }
        }
    }

    /// Keys of one collection in byte order; none when the collection does not exist.
    pub fn keys(&self, collection: &str) -> Vec<String> {
        match self {
            TestStore::Filesystem(root) => {
                let Ok(entries) = std::fs::read_dir(root.join(collection)) else {
                    return Vec::new();
                };
                let mut keys: Vec<String> = entries
                    .map(|e| e.unwrap())
                    .filter(|e| e.file_type().unwrap().is_file())
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        compox::storage::filesystem::decode_key(&name)
                    })
                    .collect();
                keys.sort();
                keys
            }
            TestStore::S3 { client, .. } => {
                let (client, bucket) = (client.clone(), self.bucket(collection));
                s3_blocking(async move {
                    let mut keys = Vec::new();
                    let mut pages = client
                        .list_objects_v2()
                        .bucket(&bucket)
                        .into_paginator()
                        .send();
                    while let Some(page) = pages.next().await {
                        match page {
                            Ok(page) => keys.extend(
                                page.contents()
                                    .iter()
                                    .filter_map(|o| o.key().map(str::to_string)),
                            ),
                            Err(e) if s3_missing(&e) => break,
                            Err(e) => panic!("list {bucket}: {e:?}"),
                        }
                    }
                    keys.sort();
                    keys
                })
            }
        }
    }

    pub fn read(&self, collection: &str, key: &str) -> Option<Vec<u8>> {
        match self {
            TestStore::Filesystem(_) => std::fs::read(self.path(collection, key)).ok(),
            TestStore::S3 { client, .. } => {
                let (client, bucket, key) =
                    (client.clone(), self.bucket(collection), key.to_string());
                s3_blocking(async move {
                    match client.get_object().bucket(&bucket).key(&key).send().await {
                        Ok(out) => Some(out.body.collect().await.unwrap().to_vec()),
                        Err(e) if s3_missing(&e) => None,
                        Err(e) => panic!("get {bucket}/{key}: {e:?}"),
                    }
                })
            }
        }
    }

    pub fn size(&self, collection: &str, key: &str) -> Option<u64> {
        match self {
            TestStore::Filesystem(_) => std::fs::metadata(self.path(collection, key))
                .ok()
                .filter(|m| m.is_file())
                .map(|m| m.len()),
            TestStore::S3 { client, .. } => {
                let (client, bucket, key) =
                    (client.clone(), self.bucket(collection), key.to_string());
                s3_blocking(async move {
                    match client.head_object().bucket(&bucket).key(&key).send().await {
                        Ok(out) => Some(out.content_length().unwrap_or(0) as u64),
                        Err(e) if s3_missing(&e) => None,
                        Err(e) => panic!("head {bucket}/{key}: {e:?}"),
                    }
                })
            }
        }
    }

    pub fn exists(&self, collection: &str, key: &str) -> bool {
        self.size(collection, key).is_some()
    }

    /// Writes an object behind the server's back (the collection must exist).
    pub fn write(&self, collection: &str, key: &str, bytes: &[u8]) {
        match self {
            TestStore::Filesystem(_) => std::fs::write(self.path(collection, key), bytes).unwrap(),
            TestStore::S3 { client, .. } => {
                let (client, bucket, key) =
                    (client.clone(), self.bucket(collection), key.to_string());
                let body = aws_sdk_s3::primitives::ByteStream::from(bytes.to_vec());
                s3_blocking(async move {
                    let r = client
                        .put_object()
                        .bucket(&bucket)
                        .key(&key)
                        .body(body)
                        .send()
                        .await;
                    r.unwrap_or_else(|e| panic!("put {bucket}/{key}: {e:?}"));
                })
            }
        }
    }

    pub fn delete(&self, collection: &str, key: &str) {
        match self {
            TestStore::Filesystem(_) => {
                let _ = std::fs::remove_file(self.path(collection, key));
            }
            TestStore::S3 { client, .. } => {
                let (client, bucket, key) =
                    (client.clone(), self.bucket(collection), key.to_string());
                s3_blocking(async move {
                    let r = client
                        .delete_object()
                        .bucket(&bucket)
                        .key(&key)
                        .send()
                        .await;
                    r.unwrap_or_else(|e| panic!("delete {bucket}/{key}: {e:?}"));
                })
            }
        }
    }

    /// Writes that were begun and never finished: staging files in the filesystem store's
    /// `.tmp`, or open multipart uploads in any of this store's S3 buckets.
    pub fn unfinished_writes(&self) -> Vec<String> {
        match self {
            TestStore::Filesystem(root) => std::fs::read_dir(root.join(".tmp"))
                .map(|rd| {
                    rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default(),
            TestStore::S3 { client, .. } => {
                let client = client.clone();
                let buckets: Vec<String> = compox::storage::COLLECTIONS
                    .iter()
                    .map(|c| self.bucket(c))
                    .collect();
                s3_blocking(async move {
                    let mut open = Vec::new();
                    for bucket in buckets {
                        match client.list_multipart_uploads().bucket(&bucket).send().await {
                            Ok(out) => open.extend(out.uploads().iter().map(|u| {
                                format!(
                                    "{bucket}/{} (upload {:?})",
                                    u.key().unwrap_or(""),
                                    u.upload_id()
                                )
                            })),
                            Err(e) if s3_missing(&e) => {}
                            Err(e) => panic!("list multipart uploads of {bucket}: {e:?}"),
                        }
                    }
                    open
                })
            }
        }
    }

    /// An object's tags: the filesystem store's `.tags` file, or the S3 object tagging.
    pub fn tags(&self, collection: &str, key: &str) -> BTreeMap<String, String> {
        match self {
            TestStore::Filesystem(root) => {
                let path = root
                    .join(collection)
                    .join(".tags")
                    .join(compox::storage::filesystem::encode_key(key));
                std::fs::read(path)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or_default()
            }
            TestStore::S3 { client, .. } => {
                let (client, bucket, key) =
                    (client.clone(), self.bucket(collection), key.to_string());
                s3_blocking(async move {
                    let r = client
                        .get_object_tagging()
                        .bucket(&bucket)
                        .key(&key)
                        .send()
                        .await;
                    match r {
                        Ok(out) => out
                            .tag_set()
                            .iter()
                            .map(|t| (t.key().to_string(), t.value().to_string()))
                            .collect(),
                        Err(e) if s3_missing(&e) => BTreeMap::new(),
                        Err(e) => panic!("get tags {bucket}/{key}: {e:?}"),
                    }
                })
            }
        }
    }

    /// S3 only: deletes a collection's bucket with everything in it, so that every later write
    /// to it fails (`NoSuchBucket`). Objects a running server writes meanwhile are deleted too.
    pub fn delete_s3_bucket(&self, collection: &str) {
        let TestStore::S3 { client, .. } = self else {
            panic!("delete_s3_bucket on a filesystem store");
        };
        let (client, bucket) = (client.clone(), self.bucket(collection));
        s3_blocking(async move {
            for _ in 0..50 {
                let listed = client.list_objects_v2().bucket(&bucket).send().await;
                let listed = listed.unwrap_or_else(|e| panic!("list {bucket}: {e:?}"));
                for o in listed.contents() {
                    let key = o.key().unwrap_or_default();
                    let r = client.delete_object().bucket(&bucket).key(key).send().await;
                    r.unwrap_or_else(|e| panic!("delete {bucket}/{key}: {e:?}"));
                }
                if client.delete_bucket().bucket(&bucket).send().await.is_ok() {
                    return;
                }
            }
            panic!("bucket {bucket} never became empty");
        })
    }

    /// S3 only: creates a collection's bucket (without the server's lifecycle rules).
    pub fn create_s3_bucket(&self, collection: &str) {
        let TestStore::S3 { client, .. } = self else {
            panic!("create_s3_bucket on a filesystem store");
        };
        let (client, bucket) = (client.clone(), self.bucket(collection));
        s3_blocking(async move {
            let r = client.create_bucket().bucket(&bucket).send().await;
            r.unwrap_or_else(|e| panic!("create {bucket}: {e:?}"));
        })
    }

    fn path(&self, collection: &str, key: &str) -> PathBuf {
        let TestStore::Filesystem(root) = self else {
            unreachable!("path() of an S3 store");
        };
        root.join(collection)
            .join(compox::storage::filesystem::encode_key(key))
    }

    fn bucket(&self, collection: &str) -> String {
        match self {
            TestStore::Filesystem(_) => unreachable!("bucket() of a filesystem store"),
            TestStore::S3 { prefix, .. } => format!("{prefix}{collection}"),
        }
    }
}

/// Whether an SDK error means "no such key or bucket".
fn s3_missing<E: aws_sdk_s3::error::ProvideErrorMetadata>(
    e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> bool {
    let code = e.as_service_error().and_then(|s| s.code());
    let status = e.raw_response().map(|r| r.status().as_u16());
    matches!(code, Some("NoSuchKey" | "NoSuchBucket" | "NotFound")) || status == Some(404)
}

/// Runs an S3 request future to completion from synchronous test code (also from inside a
/// test's own runtime), on one runtime the harness keeps for the process.
fn s3_blocking<T: Send + 'static>(fut: impl std::future::Future<Output = T> + Send + 'static) -> T {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    });
    let (tx, rx) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().expect("an S3 inspection request panicked")
}

// ---- Shared by several suites: CLI runs, emergency records, test bytes ------------------------

/// Runs our `compox` binary with `args` in `cwd`, outside any virtual environment, to the end.
pub fn compox_cli(args: &[&str], cwd: &Path) -> std::process::Output {
    Command::new(EXE)
        .args(args)
        .current_dir(cwd)
        .env_remove("VIRTUAL_ENV")
        .output()
        .unwrap()
}

/// Writes `dir/compox.yaml`, a CLI config for the filesystem store in `dir/store` with its logs
/// in `dir/logs` (the shape the harness writes for servers); returns its path.
pub fn write_cli_config(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("compox.yaml");
    let yaml = format!(
        "port: {port}\nlog_path: {log}\n{storage}inference:\n  device: cpu\n  python_env: {venv}\n",
        port = free_port(),
        log = dir.join("logs/compox.log").display(),
        storage = TestStore::Filesystem(dir.join("store")).storage_yaml(),
        venv = venv().display(),
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Where the server keeps the emergency record of execution `execution_id` (the side store under
/// its log folder, written when the record store refuses the record).
pub fn emergency_record_path(server: &Server, execution_id: &str) -> PathBuf {
    server
        .dir
        .path()
        .join("logs/compox_emergency_records/execution-store")
        .join(format!("compox_emergency_{execution_id}.json"))
}

/// The emergency record of execution `execution_id`; fails the test when there is none.
pub fn emergency_record(server: &Server, execution_id: &str) -> Value {
    let path = emergency_record_path(server, execution_id);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap()
}

/// `len` deterministic bytes (xorshift) that do not repeat at chunk or part boundaries.
pub fn pseudo_random_bytes(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
