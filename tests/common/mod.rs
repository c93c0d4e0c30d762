//! Shared harness for the integration tests: starts the real `compox` binary on a free loopback
//! port with its own storage folder, and talks HTTP to it.
#![allow(dead_code)]

use serde_json::Value;
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
        let storage = opts.storage_yaml.clone().unwrap_or_else(|| {
            format!(
                "storage:\n  backend_settings:\n    provider: filesystem\n    storage_path: {}\n",
                dir.path().join("store").display()
            )
        });
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
        };
        server.wait_up(opts.wait_ready);
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

    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
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
        let port = free_port();
        let child = Command::new(moto_server_exe())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
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
