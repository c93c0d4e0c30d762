//! The original Python Compox 3.2.0 as a test peer: its CLI and server from `.venv-original`
//! (`scripts/setup-original.sh`), run against a `moto_server` S3 (the original stores only on S3;
//! `provider: aws` with an endpoint override needs no MinIO download). Included by
//! `tests/bundle_compat.rs` with `#[path]`, so the shared harness in `mod.rs` stays untouched.
#![allow(dead_code)]

use crate::common::{free_port, repo, wait_http_ok, S3_ACCESS_KEY, S3_SECRET_KEY};
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The region the original's S3 connection is given. Not `us-east-1`: the original always sends
/// a `LocationConstraint` when a region is set, and S3 (moto included) refuses that one.
pub const REGION: &str = "eu-west-1";

pub fn venv() -> PathBuf {
    repo().join(".venv-original")
}

/// The original's `compox` entry point; fails the test with the fix when it is not installed.
pub fn exe() -> PathBuf {
    let exe = venv().join("bin/compox");
    assert!(
        exe.is_file(),
        "the original Compox 3.2.0 is not installed at {}: run scripts/setup-original.sh",
        venv().display()
    );
    exe
}

pub fn python() -> PathBuf {
    exe();
    venv().join("bin/python")
}

/// Writes the original's config for the S3 server on `moto_port` into `dir`; returns its path.
/// The HTTP port is only used when the original runs its server.
pub fn write_config(dir: &Path, moto_port: u16) -> PathBuf {
    let path = dir.join("original.yaml");
    let yaml = format!(
        "port: {port}\nlog_path: {log}\nstorage:\n  access_key_id: {S3_ACCESS_KEY}\n  secret_access_key: {S3_SECRET_KEY}\n  backend_settings:\n    provider: aws\n    s3_endpoint_url: http://127.0.0.1:{moto_port}\n    aws_region: {REGION}\ninference:\n  device: cpu\n",
        port = free_port(),
        log = dir.join("original-logs/compox.log").display(),
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

/// The HTTP port written into a config by [`write_config`].
pub fn config_port(config: &Path) -> u16 {
    let text = std::fs::read_to_string(config).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("port: "))
        .and_then(|p| p.trim().parse().ok())
        .expect("a port line")
}

fn command(program: &Path, cwd: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(cwd)
        .env_remove("VIRTUAL_ENV")
        .env_remove("AWS_PROFILE")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null());
    cmd
}

/// Runs the original's CLI in `cwd`. The original can hang after a failed start-up (its server
/// thread never exits), so a run past `timeout` is killed and fails the test with its output.
pub fn cli(args: &[&str], cwd: &Path, timeout: Duration) -> Output {
    run_bounded(command(&exe(), cwd).args(args), timeout)
}

/// Runs a Python script with the original's interpreter (boto3 and the `compox` 3.2.0 package
/// importable).
pub fn py(script: &str, args: &[&str], cwd: &Path) -> Output {
    run_bounded(
        command(&python(), cwd).arg("-c").arg(script).args(args),
        Duration::from_secs(120),
    )
}

fn run_bounded(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a process of .venv-original");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} ran past {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.join().unwrap()),
                String::from_utf8_lossy(&err.join().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Asserts a run succeeded; returns its stdout.
pub fn ok(what: &str, o: &Output) -> String {
    assert!(
        o.status.success(),
        "{what} failed ({})\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Storage access through boto3 and the original's bundle reader, for checks behind its CLI.
const HELPER: &str = r#"
import hashlib, json, sys
import boto3

def client(endpoint):
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=sys.argv[3],
                        aws_secret_access_key=sys.argv[4], region_name=sys.argv[5])

command, target = sys.argv[1], sys.argv[2]
rest = sys.argv[6:]
if command == "dump":
    # Every object of every bucket: size, SHA-256, and the text of the JSON collections.
    s3, out = client(target), {}
    for bucket in s3.list_buckets()["Buckets"]:
        objects = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket["Name"]):
            for item in page.get("Contents", []):
                body = s3.get_object(Bucket=bucket["Name"], Key=item["Key"])["Body"].read()
                entry = {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
                if bucket["Name"] in rest:
                    entry["text"] = body.decode("utf-8")
                objects[item["Key"]] = entry
        out[bucket["Name"]] = objects
    print(json.dumps(out))
elif command == "put":
    bucket, key, path = rest
    with open(path, "rb") as f:
        client(target).put_object(Bucket=bucket, Key=key, Body=f.read())
elif command == "open-bundle":
    # The error code the original's own reader raises for this bundle and key, or "ok".
    from compox.database_connection.CompoxAlgorithmBundleConnection import (
        CompoxAlgorithmBundleConnection,
    )
    from compox.exceptions import CompoxBundleError
    try:
        CompoxAlgorithmBundleConnection(target, rest[0])
        print("ok")
    except CompoxBundleError as e:
        print(e.code)
"#;

fn helper(command: &str, target: &str, rest: &[&str], cwd: &Path) -> String {
    let mut args = vec![command, target, S3_ACCESS_KEY, S3_SECRET_KEY, REGION];
    args.extend_from_slice(rest);
    ok(&format!("helper {command}"), &py(HELPER, &args, cwd))
}

/// Every object on the S3 server at `endpoint`: bucket → key → `{size, sha256[, text]}`, with
/// the text of the objects in `text_buckets`.
pub fn s3_dump(endpoint: &str, text_buckets: &[&str], cwd: &Path) -> Value {
    serde_json::from_str(&helper("dump", endpoint, text_buckets, cwd)).unwrap()
}

pub fn s3_put(endpoint: &str, bucket: &str, key: &str, bytes: &[u8], cwd: &Path) {
    let file = tempfile::NamedTempFile::new_in(cwd).unwrap();
    std::fs::write(file.path(), bytes).unwrap();
    helper(
        "put",
        endpoint,
        &[bucket, key, file.path().to_str().unwrap()],
        cwd,
    );
}

/// The `CompoxBundleError` code the original's reader gives `bundle` with `key`, or `ok`.
pub fn open_bundle_code(bundle: &Path, key: &str) -> String {
    helper(
        "open-bundle",
        bundle.to_str().unwrap(),
        &[key],
        bundle.parent().unwrap(),
    )
    .trim()
    .to_string()
}

/// The original's server (`python -m compox.run_server`, which `compox run` only wraps in a
/// second process), killed on drop.
pub struct OriginalServer {
    pub child: Child,
    pub base: String,
    pub log: PathBuf,
    pub client: reqwest::Client,
}

impl OriginalServer {
    pub fn start(config: &Path, dir: &Path) -> OriginalServer {
        use std::os::unix::process::CommandExt;
        let log = dir.join("original-server.log");
        let sink = std::fs::File::create(&log).unwrap();
        let mut cmd = command(&python(), dir);
        cmd.args(["-m", "compox.run_server", "--config"])
            .arg(config)
            .stdout(sink.try_clone().unwrap())
            .stderr(sink);
        // SAFETY: prctl is async-signal-safe; the server must not outlive a test that panics.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start the original's server");
        let server = OriginalServer {
            child,
            base: format!("http://127.0.0.1:{}", config_port(config)),
            log,
            client: reqwest::Client::new(),
        };
        wait_http_ok(&format!("{}/", server.base), Duration::from_secs(120));
        server
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The JSON body of `GET path`.
    pub async fn get(&self, path: &str) -> Value {
        json_of(self.client.get(format!("{}{path}", self.base))).await
    }

    /// The JSON body of `POST path` with a JSON `body`.
    pub async fn post_json(&self, path: &str, body: &Value) -> Value {
        json_of(self.client.post(format!("{}{path}", self.base)).json(body)).await
    }

    /// The JSON body of `POST /api/v0/files` with the bytes of `file`.
    pub async fn upload(&self, file: &Path) -> Value {
        let url = format!("{}/api/v0/files", self.base);
        json_of(self.client.post(url).body(std::fs::read(file).unwrap())).await
    }
}

async fn json_of(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

impl Drop for OriginalServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
