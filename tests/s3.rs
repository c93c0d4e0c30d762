//! The S3 store (`platform.md` §4.3–§4.6) against a real S3-protocol server: `moto_server` on a
//! free loopback port. Storage operations go through the server's HTTP API where the API has
//! them; listing, multipart edge cases and tags are also driven on the backend directly.

mod common;

use bytes::Bytes;
use common::{pseudo_random_bytes, Moto, Server, ServerOptions, S3_ACCESS_KEY, S3_SECRET_KEY};
use compox::storage::s3::{S3Backend, S3Config, PART_SIZE};
use compox::storage::{Backend, ExpiryRules, StorageError, COLLECTIONS, DATA_STORE};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn s3_server(moto: &Moto, prefix: &str, wait_ready: bool) -> Server {
    Server::start_with(ServerOptions {
        storage_yaml: Some(common::s3_storage_yaml(moto.port, prefix)),
        wait_ready,
        ..Default::default()
    })
}

fn backend(moto: &Moto, prefix: &str) -> S3Backend {
    backend_at(&moto.endpoint(), prefix)
}

fn backend_at(endpoint: &str, prefix: &str) -> S3Backend {
    let mut rules = ExpiryRules::default();
    rules.days.insert(DATA_STORE.into(), 1);
    rules.days.insert("execution-store".into(), 30);
    S3Backend::new(S3Config {
        endpoint_url: Some(endpoint.to_string()),
        region: None,
        force_path_style: true,
        access_key_id: Some(S3_ACCESS_KEY.into()),
        secret_access_key: Some(S3_SECRET_KEY.into()),
        domain_name: None,
        prefix: prefix.into(),
        rules,
    })
}

/// A plain SDK client on moto, to look at what the server did behind its API.
fn raw_client(moto: &Moto) -> aws_sdk_s3::Client {
    common::s3_client(&moto.endpoint())
}

/// How many objects moto lists in `bucket`.
async fn object_count(client: &aws_sdk_s3::Client, bucket: &str) -> Option<i32> {
    let listed = client.list_objects_v2().bucket(bucket).send().await;
    listed
        .unwrap_or_else(|e| panic!("list {bucket}: {e:?}"))
        .key_count()
}

/// Asserts that no multipart upload is left open in `bucket`.
async fn assert_no_open_uploads(client: &aws_sdk_s3::Client, bucket: &str) {
    let listed = client.list_multipart_uploads().bucket(bucket).send().await;
    let listed = listed.unwrap_or_else(|e| panic!("list multipart uploads of {bucket}: {e:?}"));
    assert!(listed.uploads().is_empty(), "{:?}", listed.uploads());
}

/// A stream of `data` in uneven chunks, so part boundaries fall inside chunks.
fn chunked(data: Vec<u8>, chunk: usize) -> compox::storage::ByteStream {
    let data = Bytes::from(data);
    let pieces: Vec<Result<Bytes, std::io::Error>> = (0..data.len())
        .step_by(chunk)
        .map(|i| Ok(data.slice(i..(i + chunk).min(data.len()))))
        .collect();
    futures_util::stream::iter(pieces).boxed()
}

/// A valid HDF5 file of about `mib` MiB (one uint8 dataset), written by h5py in the venv.
fn big_h5(dir: &std::path::Path, mib: usize) -> std::path::PathBuf {
    let path = dir.join(format!("big_{mib}.h5"));
    let script = format!(
        "import h5py, numpy as np\nwith h5py.File({p:?}, 'w') as f:\n    f['x'] = np.random.default_rng(7).integers(0, 255, size={n}, dtype=np.uint8)\n",
        p = path.display().to_string(),
        n = mib * 1024 * 1024 + 4321,
    );
    let status = std::process::Command::new(common::venv_python())
        .args(["-c", &script])
        .status()
        .unwrap();
    assert!(status.success());
    path
}

#[tokio::test]
async fn startup_creates_prefixed_buckets_with_lifecycle_rules() {
    let moto = Moto::start();
    let server = s3_server(&moto, "t1-", false);
    let client = raw_client(&moto);
    let buckets: Vec<String> = client
        .list_buckets()
        .send()
        .await
        .unwrap()
        .buckets()
        .iter()
        .filter_map(|b| b.name().map(str::to_string))
        .collect();
    for c in COLLECTIONS {
        assert!(buckets.contains(&format!("t1-{c}")), "{c}: {buckets:?}");
    }
    let rules = client
        .get_bucket_lifecycle_configuration()
        .bucket("t1-data-store")
        .send()
        .await
        .unwrap();
    let rule = &rules.rules()[0];
    assert_eq!(rule.id(), Some("Delete objects after expiration days"));
    assert_eq!(rule.expiration().and_then(|e| e.days()), Some(1));
    let tag = rule.filter().and_then(|f| f.tag()).expect("tag filter");
    assert_eq!((tag.key(), tag.value()), ("training_ref", "0"));
    let rules = client
        .get_bucket_lifecycle_configuration()
        .bucket("t1-execution-store")
        .send()
        .await
        .unwrap();
    assert_eq!(
        rules.rules()[0].expiration().and_then(|e| e.days()),
        Some(30)
    );
    assert!(client
        .get_bucket_lifecycle_configuration()
        .bucket("t1-module-store")
        .send()
        .await
        .is_err());
    // The server answers on its HTTP port.
    let (status, _) = server.get("/").await;
    assert_eq!(status, 200, "{}", server.log_text());
}

#[tokio::test]
async fn file_routes_round_trip_tag_and_delete_on_s3() {
    let moto = Moto::start();
    let server = s3_server(&moto, "", false);
    let client = raw_client(&moto);
    let bytes = std::fs::read(common::images().join("coins.h5")).unwrap();
    let r = server
        .client
        .post(server.url("/api/v0/files"))
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", server.log_text());
    let id = r.json::<Value>().await.unwrap()["file_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(server.download(&id).await, bytes);
    let tags = client
        .get_object_tagging()
        .bucket("data-store")
        .key(&id)
        .send()
        .await
        .unwrap();
    let tags: Vec<(&str, &str)> = tags
        .tag_set()
        .iter()
        .map(|t| (t.key(), t.value()))
        .collect();
    assert_eq!(tags, vec![("training_ref", "0")]);

    // Not HDF5: refused, and nothing stored.
    let before = object_count(&client, "data-store").await;
    let r = server
        .client
        .post(server.url("/api/v0/files"))
        .body(vec![b'x'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422, "not HDF5");
    let after = object_count(&client, "data-store").await;
    assert_eq!(before, after);

    let (status, _) = server.delete(&format!("/api/v0/files/{id}")).await;
    assert_eq!(status, 200);
    let r = server
        .client
        .get(server.url(&format!("/api/v0/files/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
}

#[tokio::test]
async fn large_upload_is_multipart_and_downloads_identical() {
    let moto = Moto::start();
    let server = s3_server(&moto, "", false);
    let dir = tempfile::tempdir().unwrap();
    let path = big_h5(dir.path(), 20);
    let bytes = std::fs::read(&path).unwrap();
    let id = server.upload(&path).await;
    let head = raw_client(&moto)
        .head_object()
        .bucket("data-store")
        .key(&id)
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(bytes.len() as i64));
    // A multipart ETag ends in -<part count>: 20 MiB + a bit in 8 MiB parts is 3.
    assert!(
        head.e_tag().unwrap_or_default().ends_with("-3\""),
        "{:?}",
        head.e_tag()
    );
    let down = server.download(&id).await;
    assert_eq!(down.len(), bytes.len());
    assert!(down == bytes, "downloaded bytes differ");
}

#[tokio::test]
async fn presigned_urls_upload_and_download_with_plain_http() {
    let moto = Moto::start();
    let server = s3_server(&moto, "p-", false);
    let (status, v) = server.get("/api/v1/files/my-object/upload-url").await;
    assert_eq!(status, 200, "{v}\n{}", server.log_text());
    let url = v["url"].as_str().unwrap().to_string();
    assert!(url.contains("/p-data-store/my-object"), "{url}");
    assert!(url.contains("X-Amz-Expires=3600"), "{url}");
    let body = pseudo_random_bytes(100_000);
    let plain = reqwest::Client::new();
    let r = plain.put(&url).body(body.clone()).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "{:?}", r.text().await);

    let (status, v) = server.get("/api/v1/files/my-object/download-url").await;
    assert_eq!(status, 200, "{v}");
    let url = v["url"].as_str().unwrap().to_string();
    let r = plain.get(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.bytes().await.unwrap().to_vec(), body);

    let (status, v) = server
        .get("/api/v1/files/missing-object/download-url")
        .await;
    assert_eq!(status, 404, "{v}");

    let (status, _) = server.delete("/api/v1/files/my-object").await;
    assert_eq!(status, 200);
    let (status, _) = server.get("/api/v1/files/my-object/download-url").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn presigned_url_host_is_rewritten_with_s3_domain_name() {
    let moto = Moto::start();
    let yaml = common::s3_storage_yaml(moto.port, "").replace(
        "    start_instance: false\n",
        "    start_instance: false\n    s3_domain_name: files.example.test\n",
    );
    let server = Server::start_with(ServerOptions {
        storage_yaml: Some(yaml),
        wait_ready: false,
        ..Default::default()
    });
    let (status, v) = server.get("/api/v1/files/obj/upload-url").await;
    assert_eq!(status, 200, "{v}");
    let url = v["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!(
            "http://files.example.test:{}/data-store/obj?",
            moto.port
        )),
        "{url}"
    );
}

#[tokio::test]
async fn backend_operations_listing_past_1000_keys_and_tags() {
    let moto = Moto::start();
    let b = backend(&moto, "direct-");
    let created = b.ensure_collections(&COLLECTIONS).await.unwrap();
    assert_eq!(created.len(), COLLECTIONS.len());
    // Idempotent.
    assert!(b.ensure_collections(&COLLECTIONS).await.unwrap().is_empty());

    let n = 1_205;
    let keys: Vec<String> = (0..n).map(|i| format!("k{i:05}")).collect();
    let b = std::sync::Arc::new(b);
    futures_util::stream::iter(keys.clone())
        .map(|k| {
            let b = b.clone();
            async move {
                b.put_bytes("asset-store", &k, Bytes::from(k.clone().into_bytes()))
                    .await
                    .unwrap()
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let listed = b.list("asset-store").await.unwrap();
    assert_eq!(listed.len(), n);
    let listed_keys: Vec<String> = listed.iter().map(|o| o.key.clone()).collect();
    assert_eq!(listed_keys, keys);
    assert_eq!(listed[7].size, 6);
    assert!(listed[7].last_modified.is_some());

    assert!(b.exists("asset-store", "k00042").await.unwrap());
    assert!(!b.exists("asset-store", "nope").await.unwrap());
    assert_eq!(b.size("asset-store", "k00042").await.unwrap(), Some(6));
    assert_eq!(b.size("asset-store", "nope").await.unwrap(), None);
    assert_eq!(
        b.get_bytes("asset-store", "k00042").await.unwrap(),
        Bytes::from_static(b"k00042")
    );
    assert!(matches!(
        b.get_bytes("asset-store", "nope").await,
        Err(StorageError::NotFound { .. })
    ));
    b.delete("asset-store", "k00042").await.unwrap();
    b.delete("asset-store", "k00042").await.unwrap();
    assert!(!b.exists("asset-store", "k00042").await.unwrap());

    // data-store writes get training_ref=0; an existing training_ref survives put_tags.
    b.put_bytes(DATA_STORE, "d1", Bytes::from_static(b"abc"))
        .await
        .unwrap();
    let tags = b.get_tags(DATA_STORE, "d1").await.unwrap();
    assert_eq!(tags, BTreeMap::from([("training_ref".into(), "0".into())]));
    let new_tags = BTreeMap::from([
        ("training_ref".to_string(), "2".to_string()),
        ("x".to_string(), "y".to_string()),
    ]);
    b.put_tags(DATA_STORE, "d1", new_tags.clone())
        .await
        .unwrap();
    assert_eq!(b.get_tags(DATA_STORE, "d1").await.unwrap(), new_tags);
    // Other collections are not tagged.
    assert!(b
        .get_tags("asset-store", "k00001")
        .await
        .unwrap()
        .is_empty());
    assert!(matches!(
        b.get_tags(DATA_STORE, "nope").await,
        Err(StorageError::NotFound { .. })
    ));
    // Keys that could escape a store are refused before any request.
    assert!(matches!(
        b.put_bytes("asset-store", "../x", Bytes::new()).await,
        Err(StorageError::InvalidKey { .. })
    ));
    // No lifecycle sweep on S3: the rules do it.
    assert_eq!(b.sweep_expired(&ExpiryRules::default()).await.unwrap(), 0);
}

#[tokio::test]
async fn multipart_stream_round_trip_and_abort_on_body_error() {
    let moto = Moto::start();
    let b = backend(&moto, "mp-");
    b.ensure_collections(&["asset-store", DATA_STORE])
        .await
        .unwrap();
    let data = pseudo_random_bytes(2 * PART_SIZE + 777_777);
    let written = b
        .put_stream("asset-store", "big", chunked(data.clone(), 1_000_003))
        .await
        .unwrap();
    assert_eq!(written, data.len() as u64);
    let (size, mut stream) = b.get_stream("asset-store", "big").await.unwrap();
    assert_eq!(size, data.len() as u64);
    let mut got = Vec::with_capacity(data.len());
    while let Some(chunk) = stream.next().await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert!(got == data, "streamed download differs");
    // Exactly one part: still multipart from 8 MiB on.
    let exact = pseudo_random_bytes(PART_SIZE);
    b.put_stream(DATA_STORE, "exact", chunked(exact.clone(), 65_536))
        .await
        .unwrap();
    assert_eq!(b.get_bytes(DATA_STORE, "exact").await.unwrap(), exact);
    assert_eq!(
        b.get_tags(DATA_STORE, "exact").await.unwrap()["training_ref"],
        "0"
    );

    // A body that fails after two parts: nothing stored, the multipart upload aborted.
    let good = Bytes::from(pseudo_random_bytes(2 * PART_SIZE + 10));
    let failing = futures_util::stream::iter(vec![
        Ok(good),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "client went away",
        )),
    ])
    .boxed();
    let err = b
        .put_stream("asset-store", "broken", failing)
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Aborted(_)), "{err:?}");
    assert!(!b.exists("asset-store", "broken").await.unwrap());
    assert_no_open_uploads(&raw_client(&moto), "mp-asset-store").await;
}

#[tokio::test]
async fn storage_errors_are_normalised() {
    let moto = Moto::start();
    let b = backend(&moto, "err-");
    // Writing into a bucket that does not exist: storage_write_failed, not a panic or a hang.
    let err = b
        .put_bytes("asset-store", "k", Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "storage_write_failed", "{err}");
    assert!(
        err.to_string()
            .starts_with("put_objects to asset-store failed"),
        "{err}"
    );
    assert!(!err.retryable());
    // Listing a missing bucket is an empty collection, as on the filesystem store.
    assert!(b.list("asset-store").await.unwrap().is_empty());
}

#[tokio::test]
async fn deploy_upload_execute_download_on_s3() {
    let moto = Moto::start();
    let server = s3_server(&moto, "flow-", true);
    let alg = server.deploy_ok("tv_denoiser").await;
    let input = server.upload(&common::images().join("ct_slice.h5")).await;
    let id = server
        .execute(
            &alg,
            std::slice::from_ref(&input),
            json!({"denoising_weight": 0.2}),
        )
        .await;
    let (rec, _) = server.wait_terminal(&id, Duration::from_secs(180)).await;
    assert_eq!(rec["status"], "COMPLETED", "{rec}\n{}", server.log_text());
    let outputs = rec["output_dataset_ids"].as_array().unwrap();
    assert_eq!(outputs.len(), 1, "{rec}");
    let out = server.download(outputs[0].as_str().unwrap()).await;
    let info = common::inspect_h5(&out);
    assert!(info.is_object(), "{info}");
    // The record, the module and the output all live in the prefixed buckets.
    let client = raw_client(&moto);
    for (bucket, key) in [
        ("flow-execution-store", id.as_str()),
        ("flow-data-store", outputs[0].as_str().unwrap()),
    ] {
        client
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{bucket}/{key}: {e:?}"));
    }
    let modules = object_count(&client, "flow-module-store").await;
    assert!(modules.unwrap_or(0) >= 1);
}

// ---- MinIO supervisor (`provider: minio`, `start_instance: true`) with tests/fixtures/fake_minio.py

fn fake_minio() -> std::path::PathBuf {
    common::repo().join("tests/fixtures/fake_minio.py")
}

fn supervised_yaml(exe: &std::path::Path, minio_dir: &std::path::Path, extra: &str) -> String {
    format!(
        "storage:\n  access_key_id: {S3_ACCESS_KEY}\n  secret_access_key: {S3_SECRET_KEY}\n{extra}  backend_settings:\n    provider: minio\n    start_instance: true\n    port: {port}\n    console_port: {console}\n    executable_path: {exe}\n    storage_path: {dir}\n",
        port = common::free_port(),
        console = common::free_port(),
        exe = exe.display(),
        dir = minio_dir.display(),
    )
}

/// The stand-in's launches so far: (pid, argv).
fn launches(minio_dir: &std::path::Path) -> Vec<(i32, Vec<String>)> {
    std::fs::read_to_string(minio_dir.join("launches.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let argv = v["argv"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .collect();
            (v["pid"].as_i64().unwrap() as i32, argv)
        })
        .collect()
}

fn alive(pid: i32) -> bool {
    // A zombie is dead for our purposes: read its state.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn supervisor_starts_minio_restarts_it_and_stops_it_with_the_server() {
    let moto = Moto::start();
    let minio_dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_with(ServerOptions {
        storage_yaml: Some(supervised_yaml(&fake_minio(), minio_dir.path(), "")),
        env: vec![(
            "FAKE_MINIO_BACKEND".into(),
            format!("127.0.0.1:{}", moto.port),
        )],
        wait_ready: false,
        ..Default::default()
    });
    let first = launches(minio_dir.path());
    assert_eq!(first.len(), 1, "{}", server.log_text());
    let (pid, argv) = first[0].clone();
    assert_eq!(argv[0], "server");
    assert_eq!(argv[1], minio_dir.path().display().to_string());
    assert_eq!(argv[2], "--console-address");
    assert!(
        argv[3].starts_with(':') && argv[5].starts_with(':'),
        "{argv:?}"
    );
    assert!(alive(pid));

    let coins = std::fs::read(common::images().join("coins.h5")).unwrap();
    let id = server.upload(&common::images().join("coins.h5")).await;

    // Kill MinIO: the supervisor starts it again and nothing stored is lost.
    // SAFETY: signalling the stand-in process the test just read the pid of.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_until("a restarted MinIO", Duration::from_secs(30), || {
        launches(minio_dir.path()).len() == 2
    });
    let (pid2, _) = launches(minio_dir.path())[1].clone();
    assert_ne!(pid, pid2);
    assert!(
        server.log_text().contains("MinIO exited; restarting"),
        "{}",
        server.log_text()
    );
    common::wait_http_ok(
        &format!(
            "http://127.0.0.1:{}/minio/health/live",
            argv[5].trim_start_matches(':')
        ),
        Duration::from_secs(30),
    );
    assert_eq!(server.download(&id).await, coins);
    let id2 = server.upload(&common::images().join("coins.h5")).await;
    assert_eq!(server.download(&id2).await, coins);

    // Shutdown stops MinIO too.
    server.terminate();
    wait_until(
        "MinIO to stop with the server",
        Duration::from_secs(10),
        || !alive(pid2),
    );
}

/// A `run` whose supervised MinIO binary is missing, with the download pointed at `mirror`.
struct MissingMinio {
    dir: tempfile::TempDir,
    missing: std::path::PathBuf,
    port: u16,
    status: Option<i32>,
    stderr: String,
}

fn run_without_minio_binary(mirror: &str) -> MissingMinio {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("bin/minio");
    let config = dir.path().join("compox.yaml");
    let port = common::free_port();
    let yaml = supervised_yaml(&missing, &dir.path().join("minio"), "");
    std::fs::write(&config, format!("port: {port}\n{yaml}")).unwrap();
    let out = std::process::Command::new(common::EXE)
        .args(["run", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .env("COMPOX_MINIO_DOWNLOAD_BASE", mirror)
        .output()
        .unwrap();
    let result = MissingMinio {
        dir,
        missing,
        port,
        status: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    // It never listened, and left nothing that could pass for the binary next time.
    assert!(std::net::TcpStream::connect(("127.0.0.1", result.port)).is_err());
    assert!(!result.missing.exists(), "{}", result.stderr);
    result
}

#[tokio::test]
async fn missing_minio_binary_stops_startup_with_a_clear_error() {
    // No network here: the download's mirror is a port nobody listens on.
    let r = run_without_minio_binary(&format!("http://127.0.0.1:{}", common::free_port()));
    let stderr = &r.stderr;
    assert_eq!(r.status, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "MinIO binary not found at {}",
            r.missing.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("downloading it from http://127.0.0.1:"),
        "{stderr}"
    );
    assert!(stderr.contains("executable_path"), "{stderr}");
}

#[tokio::test]
async fn failed_startup_after_minio_started_leaves_no_minio_running() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let minio_dir = dir.path().join("minio");
    let bundle = dir.path().join("broken.bundle");
    std::fs::write(&bundle, b"not a bundle").unwrap();
    let extra = format!(
        "  builtin_storage_bundle_path: {}\n  builtin_storage_bundle_key: some-key\n",
        bundle.display()
    );
    let config = dir.path().join("compox.yaml");
    std::fs::write(
        &config,
        format!(
            "port: {}\n{}",
            common::free_port(),
            supervised_yaml(&fake_minio(), &minio_dir, &extra)
        ),
    )
    .unwrap();
    let out = std::process::Command::new(common::EXE)
        .args(["run", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .env("FAKE_MINIO_BACKEND", format!("127.0.0.1:{}", moto.port))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("importing the algorithm bundle failed"),
        "{stderr}"
    );
    let started = launches(&minio_dir);
    assert_eq!(started.len(), 1, "MinIO was started first: {stderr}");
    wait_until("no MinIO left running", Duration::from_secs(5), || {
        !alive(started[0].0)
    });
}

/// Serves `body` as 200 to every request on a free loopback port (a MinIO release mirror).
fn serve_file(body: Vec<u8>) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    port
}

/// `platform.md` §3.2: a download whose SHA-256 is not the pinned one is refused, the server does
/// not start, and nothing is left that could pass for the binary next time (the original keeps
/// whatever it received).
#[tokio::test]
async fn a_downloaded_minio_with_the_wrong_checksum_is_refused() {
    let mirror = serve_file(b"#!/bin/sh\necho not minio\n".to_vec());
    let r = run_without_minio_binary(&format!("http://127.0.0.1:{mirror}/mirror"));
    let stderr = &r.stderr;
    assert_eq!(r.status, Some(1), "{stderr}");
    assert!(stderr.contains("Downloading MinIO binary into"), "{stderr}");
    assert!(
        stderr.contains("/mirror/minio.") && stderr.contains(".RELEASE.2025-09-07T16-13-09Z"),
        "the pinned file name under the mirror: {stderr}"
    );
    assert!(stderr.contains("SHA-256 mismatch"), "{stderr}");
    let leftovers: Vec<_> = std::fs::read_dir(r.missing.parent().unwrap())
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "staging files left: {leftovers:?}");
    assert!(
        !r.dir.path().join("minio/launches.jsonl").exists(),
        "nothing was launched"
    );
}

/// `platform.md` §1.5, §1.9, §1.12: `deploy-algorithms` (offline) and the bundle commands start
/// the supervised MinIO themselves and stop it when they finish.
#[tokio::test]
async fn offline_commands_start_minio_and_stop_it_when_done() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let minio_dir = dir.path().join("minio");
    let config = dir.path().join("compox.yaml");
    std::fs::write(
        &config,
        format!(
            "port: {}\ninference:\n  device: cpu\n  python_env: {}\n{}",
            common::free_port(),
            common::venv().display(),
            supervised_yaml(&fake_minio(), &minio_dir, "")
        ),
    )
    .unwrap();
    let compox = |args: &[&str]| {
        let out = std::process::Command::new(common::EXE)
            .args(args)
            .arg("--config")
            .arg(&config)
            .current_dir(dir.path())
            .env("FAKE_MINIO_BACKEND", format!("127.0.0.1:{}", moto.port))
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{args:?}: {text}");
        text
    };
    // An import with nothing configured creates the collections through MinIO.
    let text = compox(&["import-algorithm-bundle"]);
    assert!(text.contains("no bundle path or key configured"), "{text}");
    let algorithms = common::algorithms_dir();
    let text = compox(&[
        "deploy-algorithms",
        "--path",
        algorithms.to_str().unwrap(),
        "--name",
        "noop",
    ]);
    assert!(text.contains("Deployed noop 1.0"), "{text}");
    let bundle = dir.path().join("out.zip");
    let text = compox(&[
        "build-algorithm-bundle",
        "--output",
        bundle.to_str().unwrap(),
    ]);
    assert!(
        !text.contains("Objects bundled: 0") && text.contains("Objects bundled: "),
        "the deployed algorithm was read through MinIO: {text}"
    );
    assert!(bundle.is_file());
    let started = launches(&minio_dir);
    assert_eq!(started.len(), 3, "one MinIO per command");
    for (pid, _) in &started {
        wait_until(
            "MinIO to stop with the command",
            Duration::from_secs(5),
            || !alive(*pid),
        );
    }
    // With a server running on the same settings, a command uses the server's MinIO instead of
    // starting a second one on the same ports.
    let port: u16 = std::fs::read_to_string(&config)
        .unwrap()
        .lines()
        .next()
        .unwrap()["port: ".len()..]
        .parse()
        .unwrap();
    let mut server = std::process::Command::new(common::EXE)
        .args(["run", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .env("FAKE_MINIO_BACKEND", format!("127.0.0.1:{}", moto.port))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    common::wait_http_ok(
        &format!("http://127.0.0.1:{port}/"),
        Duration::from_secs(60),
    );
    let text = compox(&["import-algorithm-bundle"]);
    assert!(text.contains("using it instead of starting one"), "{text}");
    assert_eq!(
        launches(&minio_dir).len(),
        4,
        "only the server's MinIO was added"
    );
    let server_minio = launches(&minio_dir)[3].0;
    assert!(
        alive(server_minio),
        "the command left the server's MinIO running"
    );
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    server.wait().unwrap();
    // The collections were created in the S3 server behind the stand-in.
    let buckets = raw_client(&moto).list_buckets().send().await.unwrap();
    assert!(
        buckets
            .buckets()
            .iter()
            .any(|b| b.name() == Some("algorithm-store")),
        "{buckets:?}"
    );
}

// ---- Faults and outages: a proxy between the server and moto

/// One kind of request the proxy answers with an S3 error instead of forwarding it.
struct Fault {
    matches: fn(&str, &str) -> bool,
    /// How many more matching requests fail; `usize::MAX` for all of them.
    remaining: usize,
    status: u16,
    code: &'static str,
    /// Matching requests seen so far, failed or forwarded.
    hits: usize,
}

#[derive(Default)]
struct ProxyState {
    faults: Vec<Fault>,
    /// `METHOD target` of every request, in arrival order.
    requests: Vec<String>,
    /// Access key ids of the SigV4 `Authorization` headers seen.
    access_keys: BTreeSet<String>,
}

/// A loopback HTTP proxy in front of moto. It forwards each request on its own upstream
/// connection (`Connection: close` both ways, so the client never reuses a connection the proxy
/// dropped), answers the requests of an armed [`Fault`] with an S3 error document, and can go
/// down: nothing listens on its port and open connections are cut, while moto keeps its objects.
/// It runs on its own runtime, so blocking test code (the harness's start-up waits) cannot stall it.
struct FaultProxy {
    port: u16,
    upstream: u16,
    state: Arc<Mutex<ProxyState>>,
    rt: Option<tokio::runtime::Runtime>,
    /// Bumped when the proxy goes down: every open connection ends.
    epoch: tokio::sync::watch::Sender<u64>,
    accept: Option<tokio::task::JoinHandle<()>>,
}

impl FaultProxy {
    fn start(moto: &Moto) -> FaultProxy {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut proxy = FaultProxy {
            port: common::free_port(),
            upstream: moto.port,
            state: Arc::default(),
            rt: Some(rt),
            epoch: tokio::sync::watch::channel(0).0,
            accept: None,
        };
        proxy.up();
        proxy
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Listens (again) on the proxy's port.
    fn up(&mut self) {
        if self.accept.is_some() {
            return;
        }
        // std's listener sets SO_REUSEADDR, so the port can be bound again right after `down`.
        let listener = std::net::TcpListener::bind(("127.0.0.1", self.port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let (state, upstream, epoch) = (self.state.clone(), self.upstream, self.epoch.clone());
        let rt = self.rt.as_ref().unwrap();
        self.accept = Some(rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((client, _)) = listener.accept().await {
                let (state, mut cut) = (state.clone(), epoch.subscribe());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = cut.changed() => {}
                        _ = proxy_one(state, upstream, client) => {}
                    }
                });
            }
        }));
    }

    /// An outage: the port refuses connections and requests in flight are cut.
    fn down(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
            // Wait until the listener is closed, so connections are refused from here on.
            while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        self.epoch.send_modify(|e| *e += 1);
    }

    fn fail(&self, matches: fn(&str, &str) -> bool, times: usize, status: u16, code: &'static str) {
        self.state.lock().unwrap().faults.push(Fault {
            matches,
            remaining: times,
            status,
            code,
            hits: 0,
        });
    }

    /// Matching requests seen by each fault, in the order they were armed; disarms them all.
    fn take_fault_hits(&self) -> Vec<usize> {
        let mut state = self.state.lock().unwrap();
        state.faults.drain(..).map(|f| f.hits).collect()
    }

    fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    fn access_keys(&self) -> BTreeSet<String> {
        self.state.lock().unwrap().access_keys.clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Reads one HTTP head (and whatever of the body came with it).
async fn read_head(
    stream: &mut tokio::net::TcpStream,
) -> std::io::Result<Option<(Vec<String>, Vec<u8>)>> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    loop {
        if let Some(end) = find_head_end(&buf) {
            let head = String::from_utf8_lossy(&buf[..end - 4]).to_string();
            return Ok(Some((
                head.split("\r\n").map(str::to_string).collect(),
                buf[end..].to_vec(),
            )));
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn header<'a>(lines: &'a [String], name: &str) -> Option<&'a str> {
    lines[1..].iter().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The head again, with `Connection: close` (and without `Expect`, answered by the proxy).
fn rewrite_head(lines: &[String]) -> Vec<u8> {
    let mut out = String::new();
    for (i, l) in lines.iter().enumerate() {
        let name = l
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if i > 0 && (name == "connection" || name == "expect" || name == "keep-alive") {
            continue;
        }
        out.push_str(l);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

async fn read_exact_body(
    stream: &mut tokio::net::TcpStream,
    mut body: Vec<u8>,
    len: usize,
) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut chunk = vec![0u8; 64 * 1024];
    while body.len() < len {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(body)
}

async fn proxy_one(
    state: Arc<Mutex<ProxyState>>,
    upstream: u16,
    mut client: tokio::net::TcpStream,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let Some((lines, rest)) = read_head(&mut client).await? else {
        return Ok(());
    };
    let mut parts = lines[0].split(' ');
    let (method, target) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    assert!(
        header(&lines, "transfer-encoding").is_none(),
        "the proxy expects sized bodies: {lines:?}"
    );
    let len: usize = header(&lines, "content-length").map_or(0, |v| v.parse().unwrap());
    if header(&lines, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }
    let body = read_exact_body(&mut client, rest, len).await?;
    let fault = {
        let mut st = state.lock().unwrap();
        st.requests.push(format!("{method} {target}"));
        if let Some(key) = header(&lines, "authorization")
            .and_then(|a| a.split("Credential=").nth(1))
            .and_then(|c| c.split('/').next())
        {
            st.access_keys.insert(key.to_string());
        }
        st.faults
            .iter_mut()
            .find(|f| (f.matches)(&method, &target))
            .and_then(|f| {
                f.hits += 1;
                (f.remaining > 0).then(|| {
                    f.remaining = f.remaining.saturating_sub(1);
                    (f.status, f.code)
                })
            })
    };
    if let Some((status, code)) = fault {
        let xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected by the test proxy</Message><RequestId>proxy</RequestId></Error>"
        );
        let answer = format!(
            "HTTP/1.1 {status} Injected\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
            xml.len()
        );
        client.write_all(answer.as_bytes()).await?;
        return client.shutdown().await;
    }
    let mut up = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await?;
    up.write_all(&rewrite_head(&lines)).await?;
    up.write_all(&body).await?;
    let Some((resp, rest)) = read_head(&mut up).await? else {
        return Ok(());
    };
    client.write_all(&rewrite_head(&resp)).await?;
    let status: u16 = resp[0]
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let no_body =
        method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status);
    match header(&resp, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        _ if no_body => {}
        Some(len) => {
            let mut sent = rest.len().min(len);
            client.write_all(&rest[..sent]).await?;
            let mut chunk = vec![0u8; 64 * 1024];
            while sent < len {
                use tokio::io::AsyncReadExt;
                let n = up.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                let n = n.min(len - sent);
                client.write_all(&chunk[..n]).await?;
                sent += n;
            }
        }
        None => {
            client.write_all(&rest).await?;
            tokio::io::copy(&mut up, &mut client).await?;
        }
    }
    client.shutdown().await
}

/// A PutObject (not a part, not tagging) into `data-store`.
fn is_data_put_object(method: &str, target: &str) -> bool {
    method == "PUT"
        && target.starts_with("/data-store/")
        && !target.contains("uploadId=")
        && !target.contains("tagging")
}

/// The `partNumber` of an UploadPart request.
fn part_number(method: &str, target: &str) -> Option<u32> {
    let query = target.split_once('?')?.1;
    let n = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("partNumber="))?;
    (method == "PUT").then(|| n.parse().ok()).flatten()
}

fn is_part_2(method: &str, target: &str) -> bool {
    part_number(method, target) == Some(2)
}

/// A server on moto behind `proxy`, with the SDK's back-off capped at `max_backoff_ms`.
fn proxied_server(proxy: &FaultProxy, max_backoff_ms: u64, wait_ready: bool) -> Server {
    let yaml = common::s3_storage_yaml(proxy.port, "");
    Server::start_with(ServerOptions {
        storage_yaml: Some(yaml),
        env: vec![(
            "COMPOX_TEST_S3_MAX_BACKOFF_MS".into(),
            max_backoff_ms.to_string(),
        )],
        wait_ready,
        ..Default::default()
    })
}

/// The body of an upload answered with an error, as (status, code, retryable).
async fn upload_error(server: &Server, body: Vec<u8>) -> (u16, String, bool) {
    let r = server
        .client
        .post(server.url("/api/v0/files"))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    (
        status,
        v["code"].as_str().unwrap_or_default().to_string(),
        v["retryable"].as_bool().unwrap_or_default(),
    )
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[tokio::test]
async fn put_object_refused_by_the_service_is_sent_five_more_times() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto);
    let server = proxied_server(&proxy, 20_000, false);
    let coins = std::fs::read(common::images().join("coins.h5")).unwrap();

    // Two refusals, then the third attempt is stored; each failed attempt is logged.
    proxy.fail(is_data_put_object, 2, 403, "AccessDenied");
    let id = server.upload(&common::images().join("coins.h5")).await;
    assert_eq!(proxy.take_fault_hits(), vec![3]);
    assert_eq!(
        count(&server.log_text(), &format!("Error uploading object {id}")),
        2,
        "{}",
        server.log_text()
    );
    assert_eq!(server.download(&id).await, coins);

    // InsufficientStorage every time: 1 + 5 attempts, then storage_write_failed flagged
    // retryable (§4.6), which the upload route carries.
    proxy.fail(is_data_put_object, usize::MAX, 507, "InsufficientStorage");
    let (status, code, retryable) = upload_error(&server, coins.clone()).await;
    assert_eq!(proxy.take_fault_hits(), vec![6]);
    assert_eq!(
        (status, code.as_str(), retryable),
        (500, "file_upload_failed", true)
    );

    // The same on the backend: the storage error itself.
    let b = backend_at(&proxy.endpoint(), "");
    proxy.fail(is_data_put_object, usize::MAX, 507, "InsufficientStorage");
    let err = b
        .put_bytes(DATA_STORE, "k", Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert_eq!(proxy.take_fault_hits(), vec![6]);
    assert_eq!(err.code(), "storage_write_failed", "{err}");
    assert!(err.retryable(), "{err}");
    assert!(
        err.to_string()
            .starts_with("put_objects to data-store failed"),
        "{err}"
    );

    // A missing bucket is refused by the service too: retried, then not retryable.
    let err = b
        .put_bytes("no-such-collection", "k", Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    let attempts = proxy
        .requests()
        .iter()
        .filter(|r| r.starts_with("PUT /no-such-collection/k"))
        .count();
    assert_eq!(attempts, 6);
    assert_eq!(err.code(), "storage_write_failed", "{err}");
    assert!(!err.retryable(), "{err}");
}

#[tokio::test]
async fn multipart_step_refused_with_a_retry_code_is_retried_up_to_eight_attempts() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto);
    // The SDK's own retries (of InternalError below) wait at most 20 ms.
    let server = proxied_server(&proxy, 20, false);
    let dir = tempfile::tempdir().unwrap();
    // Two parts: the second is sent only once the whole body is in, so the route answers after
    // reading the body whatever the outcome.
    let path = big_h5(dir.path(), 8);
    let bytes = std::fs::read(&path).unwrap();

    proxy.fail(is_part_2, 2, 403, "AccessDenied");
    let id = server.upload(&path).await;
    assert_eq!(proxy.take_fault_hits(), vec![3]);
    let log = server.log_text();
    for n in 1..=2 {
        assert_eq!(
            count(
                &log,
                &format!("Multipart upload failed with AccessDenied; retrying (attempt {n}/8) in ")
            ),
            1,
            "{log}"
        );
    }
    assert!(
        server.download(&id).await == bytes,
        "downloaded bytes differ"
    );

    // Refused every time: 8 attempts, then the upload is aborted and the error is
    // storage_access_denied (not retryable).
    proxy.fail(is_part_2, usize::MAX, 403, "AccessDenied");
    let (status, code, retryable) = upload_error(&server, bytes.clone()).await;
    assert_eq!(proxy.take_fault_hits(), vec![8]);
    assert_eq!(
        (status, code.as_str(), retryable),
        (500, "file_upload_failed", false)
    );
    assert!(
        server.log_text().contains("(attempt 7/8)") && !server.log_text().contains("(attempt 8/8)"),
        "{}",
        server.log_text()
    );
    let client = raw_client(&moto);
    assert_no_open_uploads(&client, "data-store").await;

    // A code outside the list fails at once.
    proxy.fail(is_part_2, usize::MAX, 400, "InvalidArgument");
    let (status, code, _) = upload_error(&server, bytes.clone()).await;
    assert_eq!(proxy.take_fault_hits(), vec![1]);
    assert_eq!((status, code.as_str()), (500, "file_upload_failed"));
    let stored = object_count(&client, "data-store").await;
    assert_eq!(stored, Some(1), "only the successful upload");

    // InternalError is retried by the SDK inside each of the 8 attempts; in the end it is
    // storage_unavailable, which is retryable.
    proxy.fail(is_part_2, usize::MAX, 500, "InternalError");
    let (status, code, retryable) = upload_error(&server, bytes.clone()).await;
    let hits = proxy.take_fault_hits()[0];
    assert!(hits > 8, "{hits} attempts");
    assert_eq!(
        (status, code.as_str(), retryable),
        (500, "file_upload_failed", true)
    );
    assert!(
        server
            .log_text()
            .contains("Multipart upload failed with InternalError; retrying (attempt 7/8)"),
        "{}",
        server.log_text()
    );
}

#[tokio::test]
async fn storage_outage_during_an_upload_is_ridden_out_by_the_sdk_retries() {
    let moto = Moto::start();
    let mut proxy = FaultProxy::start(&moto);
    // The SDK waits up to 1 s between its 20 attempts, so a short outage is bridged.
    let server = proxied_server(&proxy, 1_000, false);
    let dir = tempfile::tempdir().unwrap();
    let path = big_h5(dir.path(), 40);
    let bytes = std::fs::read(&path).unwrap();
    let upload = {
        let (client, url, body) = (
            server.client.clone(),
            server.url("/api/v0/files"),
            bytes.clone(),
        );
        tokio::spawn(async move { client.post(url).body(body).send().await })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !proxy.requests().iter().any(|r| r.contains("partNumber=1")) {
        assert!(std::time::Instant::now() < deadline, "no part upload seen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = proxy.requests().len();
    proxy.down();
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.up();
    let r = upload.await.unwrap().unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", server.log_text());
    let id = r.json::<Value>().await.unwrap()["file_id"]
        .as_str()
        .unwrap()
        .to_string();
    let parts: BTreeSet<u32> = proxy.requests()[before..]
        .iter()
        .filter_map(|r| {
            let (m, t) = r.split_once(' ')?;
            part_number(m, t)
        })
        .collect();
    assert!(!parts.is_empty(), "parts were sent after the outage");
    assert!(
        server.download(&id).await == bytes,
        "downloaded bytes differ"
    );
}

fn proxied_options(proxy: &FaultProxy, max_backoff_ms: u64) -> ServerOptions {
    ServerOptions {
        storage_yaml: Some(common::s3_storage_yaml(proxy.port, "")),
        env: vec![(
            "COMPOX_TEST_S3_MAX_BACKOFF_MS".into(),
            max_backoff_ms.to_string(),
        )],
        ..Default::default()
    }
}

async fn stored_execution(moto: &Moto, id: &str) -> Value {
    let out = raw_client(moto)
        .get_object()
        .bucket("execution-store")
        .key(id)
        .send()
        .await
        .unwrap();
    serde_json::from_slice(&out.body.collect().await.unwrap().into_bytes()).unwrap()
}

#[tokio::test]
async fn storage_outage_at_the_final_record_write_leaves_an_emergency_record() {
    let moto = Moto::start();
    let mut proxy = FaultProxy::start(&moto);
    // Requests fail within about a second of the outage instead of minutes.
    let mut server = Server::start_with(proxied_options(&proxy, 50));
    let alg = server.deploy_ok("sleeper").await;
    let id = server.execute(&alg, &[], json!({"seconds": 4.0})).await;
    let path = format!("/api/v0/executions/{id}");
    // Once it reports progress the worker has fetched the algorithm: from here on only records
    // are written.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (_, rec) = server.get(&path).await;
        if rec["status"] == "RUNNING" && rec["progress"].as_f64().unwrap_or(0.0) > 0.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{rec}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.down();

    let (rec, _) = server.wait_terminal(&id, Duration::from_secs(120)).await;
    assert_eq!(rec["status"], "FAILED", "{rec}\n{}", server.log_text());
    assert_eq!(rec["progress"], 1.0);
    assert_eq!(rec["output_dataset_ids"], json!([]));
    let log = rec["log"].as_str().unwrap();
    assert!(log.contains("sleeper: done."), "{log}");
    assert!(log.contains("Failed to update task record"), "{log}");
    assert!(rec.get("_emergency_storage_error").is_none(), "{rec}");

    // The side store holds it, with the storage error of the refused write.
    let file = common::emergency_record_path(&server, &id);
    let stored = common::emergency_record(&server, &id);
    assert_eq!(stored["status"], "FAILED");
    assert_eq!(
        stored["_emergency_storage_error_code"],
        "storage_unavailable"
    );
    assert_eq!(stored["_emergency_storage_retryable"], true);
    assert!(stored["_emergency_storage_error"]
        .as_str()
        .unwrap()
        .contains("storage unavailable"));

    // The server keeps answering during the outage: workers ready, the record from the side store.
    let (status, health) = server.get("/health").await;
    assert_eq!((status, &health["ready"]), (200, &json!(true)), "{health}");
    let (status, again) = server.get(&path).await;
    assert_eq!(
        (status, &again["status"]),
        (200, &json!("FAILED")),
        "{again}"
    );

    // Storage back: the primary still holds the last record written before the outage, and the
    // FAILED emergency record wins over a non-terminal primary (`runtime.md` §12).
    proxy.up();
    let primary = stored_execution(&moto, &id).await;
    assert!(
        ["PENDING", "RUNNING"].contains(&primary["status"].as_str().unwrap_or_default()),
        "{primary}"
    );
    let (status, again) = server.get(&path).await;
    assert_eq!(
        (status, &again["status"]),
        (200, &json!("FAILED")),
        "{again}"
    );
    assert_eq!(again["log"], rec["log"]);
    let coins = std::fs::read(common::images().join("coins.h5")).unwrap();
    let file_id = server.upload(&common::images().join("coins.h5")).await;
    assert_eq!(server.download(&file_id).await, coins);

    // A restart purges the side store and marks the unfinished primary FAILED.
    server.terminate();
    let dir = std::mem::replace(&mut server.dir, tempfile::tempdir().unwrap());
    let server = Server::start_in(dir, proxied_options(&proxy, 50));
    assert!(!file.exists(), "emergency record purged at start-up");
    let (status, after) = server.get(&path).await;
    assert_eq!(
        (status, &after["status"]),
        (200, &json!("FAILED")),
        "{after}"
    );
    assert_eq!(stored_execution(&moto, &id).await["status"], "FAILED");
}

// ---- `provider: aws` with null credentials: the default AWS chain

/// A `provider: aws` storage block on `port` with null credentials.
fn default_chain_yaml(port: u16) -> String {
    format!(
        "storage:\n  access_key_id: null\n  secret_access_key: null\n  backend_settings:\n    provider: aws\n    aws_region: us-east-1\n    s3_endpoint_url: http://127.0.0.1:{port}\n"
    )
}

/// An environment that hides this machine's own AWS setup: HOME, config and credentials files in
/// `home`, instance metadata off, key and profile variables blank.
fn isolated_aws_env(home: &std::path::Path) -> Vec<(String, String)> {
    [
        ("HOME", home.display().to_string()),
        ("AWS_CONFIG_FILE", home.join("config").display().to_string()),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            home.join("credentials").display().to_string(),
        ),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("AWS_ACCESS_KEY_ID", String::new()),
        ("AWS_SECRET_ACCESS_KEY", String::new()),
        ("AWS_SESSION_TOKEN", String::new()),
        ("AWS_PROFILE", String::new()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn with_env(mut env: Vec<(String, String)>, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    for (k, v) in extra {
        env.retain(|(name, _)| name != k);
        env.push((k.to_string(), v.to_string()));
    }
    env
}

/// Deploys and runs `noop` and round-trips a file: the server and its worker both sign with
/// whatever the chain found.
async fn exercise_server_and_worker(server: &Server) {
    let alg = server.deploy_ok("noop").await;
    let id = server.execute(&alg, &[], json!({})).await;
    let (rec, _) = server.wait_terminal(&id, Duration::from_secs(120)).await;
    assert_eq!(rec["status"], "COMPLETED", "{rec}\n{}", server.log_text());
    let coins = std::fs::read(common::images().join("coins.h5")).unwrap();
    let file_id = server.upload(&common::images().join("coins.h5")).await;
    assert_eq!(server.download(&file_id).await, coins);
}

/// Starts a server on the default AWS chain, in an environment isolated in `home` plus `extra`,
/// exercises it, and returns the access keys its requests (server's and worker's) were signed with.
async fn default_chain_access_keys(
    home: &std::path::Path,
    extra: &[(&str, &str)],
) -> BTreeSet<String> {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto);
    let server = Server::start_with(ServerOptions {
        storage_yaml: Some(default_chain_yaml(proxy.port)),
        env: with_env(isolated_aws_env(home), extra),
        ..Default::default()
    });
    exercise_server_and_worker(&server).await;
    proxy.access_keys()
}

#[tokio::test]
async fn aws_provider_without_settings_credentials_uses_the_environment() {
    let home = tempfile::tempdir().unwrap();
    let keys = default_chain_access_keys(
        home.path(),
        &[
            ("AWS_ACCESS_KEY_ID", "compox-env-key"),
            ("AWS_SECRET_ACCESS_KEY", "compox-env-secret"),
        ],
    )
    .await;
    assert_eq!(keys, BTreeSet::from(["compox-env-key".to_string()]));
}

#[tokio::test]
async fn aws_provider_without_settings_credentials_uses_the_shared_credentials_profile() {
    let home = tempfile::tempdir().unwrap();
    std::fs::write(
        home.path().join("credentials"),
        "[default]\naws_access_key_id = compox-default-profile-key\naws_secret_access_key = s1\n\n[compox-test]\naws_access_key_id = compox-profile-key\naws_secret_access_key = s2\n",
    )
    .unwrap();
    let keys = default_chain_access_keys(home.path(), &[("AWS_PROFILE", "compox-test")]).await;
    assert_eq!(keys, BTreeSet::from(["compox-profile-key".to_string()]));
}

#[tokio::test]
async fn aws_provider_with_no_credentials_anywhere_stops_startup_with_a_clear_error() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("compox.yaml");
    let port = common::free_port();
    std::fs::write(
        &config,
        format!(
            "port: {port}\nlog_path: {}\n{}",
            dir.path().join("logs/compox.log").display(),
            default_chain_yaml(moto.port)
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(common::EXE);
    for (name, _) in std::env::vars().filter(|(k, _)| k.starts_with("AWS_")) {
        cmd.env_remove(name);
    }
    let out = cmd
        .args(["run", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .envs(isolated_aws_env(dir.path()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("list_collections failed: no usable AWS credentials"),
        "{stderr}"
    );
    assert!(stderr.contains("default AWS chain"), "{stderr}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

/// A MinIO that exits before it ever answers ends the start-up at once, with its exit status and
/// its last output (not a 60 s wait on health checks while it is restarted over and over).
#[tokio::test]
async fn a_minio_that_exits_at_start_up_is_reported_with_its_output() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("minio");
    std::fs::write(
        &exe,
        "#!/bin/sh\necho 'root password shorter than 8 characters' >&2\nexit 7\n",
    )
    .unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.path().join("compox.yaml");
    let port = common::free_port();
    let yaml = supervised_yaml(&exe, &dir.path().join("minio-data"), "");
    std::fs::write(&config, format!("port: {port}\n{yaml}")).unwrap();
    let out = std::process::Command::new(common::EXE)
        .args(["run", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("MinIO exited before it answered"),
        "{stderr}"
    );
    assert!(
        stderr.contains("exit code 7") || stderr.contains("exit status: 7"),
        "{stderr}"
    );
    assert!(
        stderr.contains("root password shorter than 8 characters"),
        "{stderr}"
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

/// An S3 server that hangs (it still accepts connections but never answers) fails a request
/// once every attempt has waited its read timeout, instead of holding it forever; when the
/// server answers again, so does ours (`platform.md` §4.3: botocore's read timeout and retries).
#[tokio::test]
async fn a_hung_s3_server_fails_requests_in_bounded_time_and_recovery_follows() {
    let moto = Moto::start();
    let server = Server::start_with(ServerOptions {
        storage_yaml: Some(common::s3_storage_yaml(moto.port, "")),
        env: vec![
            ("COMPOX_TEST_S3_READ_TIMEOUT_MS".into(), "200".into()),
            ("COMPOX_TEST_S3_MAX_BACKOFF_MS".into(), "10".into()),
        ],
        wait_ready: false,
        ..Default::default()
    });
    let bytes = std::fs::read(common::images().join("coins.h5")).unwrap();
    let id = server.upload(&common::images().join("coins.h5")).await;

    // SAFETY: pausing and resuming the moto_server this test started.
    unsafe { libc::kill(moto.child.id() as i32, libc::SIGSTOP) };
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(
        Duration::from_secs(90),
        server
            .client
            .get(server.url(&format!("/api/v0/files/{id}")))
            .send(),
    )
    .await
    .expect("the request hung with the S3 server")
    .unwrap();
    let status = answer.status().as_u16();
    let body: Value = answer.json().await.unwrap_or(Value::Null);
    unsafe { libc::kill(moto.child.id() as i32, libc::SIGCONT) };
    assert!(status >= 500, "{status} {body}");
    assert_eq!(body["retryable"], true, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );

    assert_eq!(server.download(&id).await, bytes);
}
