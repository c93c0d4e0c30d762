//! The S3 store (`platform.md` §4.3–§4.6) against a real S3-protocol server: `moto_server` on a
//! free loopback port. Storage operations go through the server's HTTP API where the API has
//! them; listing, multipart edge cases and tags are also driven on the backend directly.

mod common;

use bytes::Bytes;
use common::{Moto, Server, ServerOptions, S3_ACCESS_KEY, S3_SECRET_KEY};
use compox::storage::s3::{S3Backend, S3Config, PART_SIZE};
use compox::storage::{Backend, ExpiryRules, StorageError, COLLECTIONS, DATA_STORE};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

fn s3_server(moto: &Moto, prefix: &str, wait_ready: bool) -> Server {
    Server::start_with(ServerOptions {
        storage_yaml: Some(common::s3_storage_yaml(moto.port, prefix)),
        wait_ready,
        ..Default::default()
    })
}

fn backend(moto: &Moto, prefix: &str) -> S3Backend {
    let mut rules = ExpiryRules::default();
    rules.days.insert(DATA_STORE.into(), 1);
    rules.days.insert("execution-store".into(), 30);
    S3Backend::new(S3Config {
        endpoint_url: Some(moto.endpoint()),
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
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(moto.endpoint())
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

/// Deterministic bytes that are not a repeating pattern at part boundaries.
fn payload(len: usize) -> Vec<u8> {
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
    let before = client
        .list_objects_v2()
        .bucket("data-store")
        .send()
        .await
        .unwrap()
        .key_count();
    let r = server
        .client
        .post(server.url("/api/v0/files"))
        .body(vec![b'x'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422, "not HDF5");
    let after = client
        .list_objects_v2()
        .bucket("data-store")
        .send()
        .await
        .unwrap()
        .key_count();
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
    let body = payload(100_000);
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
    let data = payload(2 * PART_SIZE + 777_777);
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
    let exact = payload(PART_SIZE);
    b.put_stream(DATA_STORE, "exact", chunked(exact.clone(), 65_536))
        .await
        .unwrap();
    assert_eq!(b.get_bytes(DATA_STORE, "exact").await.unwrap(), exact);
    assert_eq!(
        b.get_tags(DATA_STORE, "exact").await.unwrap()["training_ref"],
        "0"
    );

    // A body that fails after two parts: nothing stored, the multipart upload aborted.
    let good = Bytes::from(payload(2 * PART_SIZE + 10));
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
    let uploads = raw_client(&moto)
        .list_multipart_uploads()
        .bucket("mp-asset-store")
        .send()
        .await
        .unwrap();
    assert!(uploads.uploads().is_empty(), "{:?}", uploads.uploads());
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
    let modules = client
        .list_objects_v2()
        .bucket("flow-module-store")
        .send()
        .await
        .unwrap();
    assert!(modules.key_count().unwrap_or(0) >= 1);
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

#[tokio::test]
async fn missing_minio_binary_stops_startup_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("bin/minio");
    let config = dir.path().join("compox.yaml");
    let port = common::free_port();
    std::fs::write(
        &config,
        format!(
            "port: {port}\n{}",
            supervised_yaml(&missing, &dir.path().join("minio"), "")
        ),
    )
    .unwrap();
    let out = std::process::Command::new(common::EXE)
        .args(["run", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("MinIO binary not found at {}", missing.display())),
        "{stderr}"
    );
    assert!(stderr.contains("executable_path"), "{stderr}");
    // It never listened.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
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
