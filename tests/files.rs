//! The file API (`rest-api.md` F1–F3, V1–V3), routing behaviour (§1.7), CORS (§3), and the
//! supervision of the storage gateway, against the real server.

mod common;

use common::{assert_golden, Server, ServerOptions};
use futures_util::StreamExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::time::Duration;

#[tokio::test]
async fn root_matches_the_original() {
    let s = Server::start_with(ServerOptions {
        wait_ready: false,
        ..Default::default()
    });
    let (status, body) = s.get("/").await;
    assert_golden("root_get", status, &body);
}

#[tokio::test]
async fn upload_download_delete_round_trip_with_golden_bodies() {
    let s = Server::start_with(ServerOptions {
        wait_ready: false,
        ..Default::default()
    });
    let path = common::images().join("coins.h5");
    let bytes = std::fs::read(&path).unwrap();
    let r = s
        .client
        .post(s.url("/api/v0/files"))
        .header("content-type", "application/octet-stream")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert_golden("file_upload_post_uint8_512_octet", status, &body);
    let id = body["file_id"].as_str().unwrap().to_string();
    assert_eq!(
        uuid::Uuid::parse_str(&id).unwrap().get_version_num(),
        1,
        "file ids are UUIDv1"
    );

    let r = s
        .client
        .get(s.url(&format!("/api/v0/files/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert!(
        r.headers().get("content-length").is_none(),
        "download is chunked like the original"
    );
    assert_eq!(r.bytes().await.unwrap().to_vec(), bytes);

    let (status, body) = s.delete(&format!("/api/v0/files/{id}")).await;
    assert_golden("file_delete", status, &body);
    let (status, body) = s.delete(&format!("/api/v0/files/{id}")).await;
    assert_golden("err_file_delete_unknown", status, &body);
    let (status, body) = s
        .get("/api/v0/files/00000000-0000-0000-0000-000000000000")
        .await;
    assert_golden("err_file_download_unknown", status, &body);
}

#[tokio::test]
async fn non_hdf5_and_empty_bodies_are_422_and_nothing_is_stored() {
    let s = Server::start_with(ServerOptions {
        wait_ready: false,
        ..Default::default()
    });
    for (golden, body) in [
        ("err_file_upload_not_hdf5", "this is not an hdf5 file\n"),
        ("err_file_upload_empty_body", ""),
    ] {
        let r = s
            .client
            .post(s.url("/api/v0/files"))
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        assert_golden(golden, status, &r.json().await.unwrap());
    }
    // A truncated HDF5 file (its superblock claims more bytes than arrived) is not valid either.
    let bytes = std::fs::read(common::images().join("coins.h5")).unwrap();
    let r = s
        .client
        .post(s.url("/api/v0/files"))
        .body(bytes[..bytes.len() / 2].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    assert!(s.store_keys("data-store").is_empty());
    assert!(s.store_unfinished_writes().is_empty());
}

#[tokio::test]
async fn dropped_connection_mid_upload_leaves_nothing_stored() {
    let s = Server::start_with(ServerOptions {
        wait_ready: false,
        ..Default::default()
    });
    // Past the S3 multipart threshold: on S3 a multipart upload is under way when the client goes.
    let mut head = std::fs::read(common::images().join("coins.h5")).unwrap();
    head.resize(2 * compox::storage::s3::PART_SIZE + 4321, 0);
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    write!(
        sock,
        "POST /api/v0/files HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        head.len() * 4
    )
    .unwrap();
    sock.write_all(&head).unwrap();
    sock.flush().unwrap();
    drop(sock);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !s.store_unfinished_writes().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(s.store_keys("data-store").is_empty());
    assert_eq!(
        s.store_unfinished_writes(),
        Vec::<String>::new(),
        "staging file or multipart upload left behind"
    );
    // The server still serves.
    assert_eq!(s.get("/").await.0, 200);
}

/// A synthetic HDF5-signed body of `total` bytes: a version-0 superblock claiming `total` bytes,
/// then pseudo-random data.
fn synthetic_hdf5(total: u64) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    let mut sb = b"\x89HDF\r\n\x1a\n".to_vec();
    sb.extend_from_slice(&[0, 0, 0, 0, 0, 8, 8, 0, 4, 0, 16, 0, 0, 0, 0, 0]);
    sb.extend_from_slice(&0u64.to_le_bytes());
    sb.extend_from_slice(&u64::MAX.to_le_bytes());
    sb.extend_from_slice(&total.to_le_bytes());
    sb.extend_from_slice(&u64::MAX.to_le_bytes());
    const CHUNK: u64 = 1 << 20;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    futures_util::stream::iter(0..total.div_ceil(CHUNK)).map(move |i| {
        let len = CHUNK.min(total - i * CHUNK) as usize;
        let mut buf = vec![0u8; len];
        for word in buf.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let b = state.to_le_bytes();
            word.copy_from_slice(&b[..word.len()]);
        }
        if i == 0 {
            buf[..sb.len()].copy_from_slice(&sb);
        }
        Ok(buf)
    })
}

#[tokio::test]
async fn two_gib_upload_and_download_are_byte_identical() {
    let s = Server::start_with(ServerOptions {
        wait_ready: false,
        ..Default::default()
    });
    let total: u64 = 2 << 30;
    let stream = synthetic_hdf5(total);
    let hasher = std::sync::Arc::new(std::sync::Mutex::new(Sha256::new()));
    let h = hasher.clone();
    let stream = stream.map(move |c| {
        if let Ok(bytes) = &c {
            h.lock().unwrap().update(bytes);
        }
        c
    });
    let r = s
        .client
        .post(s.url("/api/v0/files"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", s.log_text());
    let id = r.json::<Value>().await.unwrap()["file_id"]
        .as_str()
        .unwrap()
        .to_string();
    let sent_digest = hasher.lock().unwrap().clone().finalize();

    let r = s
        .client
        .get(s.url(&format!("/api/v0/files/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut got = Sha256::new();
    let mut n = 0u64;
    let mut stream = r.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        n += chunk.len() as u64;
        got.update(&chunk);
    }
    assert_eq!(n, total);
    assert_eq!(got.finalize(), sent_digest);
    assert_eq!(s.store_size("data-store", &id), Some(total));
}

#[tokio::test]
async fn presigned_urls_work_with_plain_http_and_check_names() {
    let s = Server::start_with(ServerOptions {
        wait_ready: false,
        ..Default::default()
    });
    let (status, v) = s.get("/api/v1/files/my-object.h5/upload-url").await;
    assert_eq!(status, 200, "{v}");
    let put_url = v["url"].as_str().unwrap().to_string();
    let r = s
        .client
        .put(&put_url)
        .body("raw bytes, not checked")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        s.store_read("data-store", "my-object.h5").as_deref(),
        Some(&b"raw bytes, not checked"[..])
    );
    match common::backend() {
        // The server checks its own signatures, which cover method and key.
        common::Backend::Filesystem => assert_eq!(
            s.client
                .get(put_url.replace("method=PUT", "method=GET"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
            403
        ),
        // S3 checks the signature, and moto does not: the URL is a SigV4 one for the object.
        common::Backend::S3 => {
            let url = reqwest::Url::parse(&put_url).unwrap();
            assert!(url.path().ends_with("data-store/my-object.h5"), "{put_url}");
            let query: Vec<String> = url.query_pairs().map(|(k, _)| k.into_owned()).collect();
            for name in ["X-Amz-Algorithm", "X-Amz-Expires", "X-Amz-Signature"] {
                assert!(query.iter().any(|q| q == name), "{name} not in {put_url}");
            }
        }
    }
    let (status, v) = s.get("/api/v1/files/my-object.h5/download-url").await;
    assert_eq!(status, 200);
    let body = s
        .client
        .get(v["url"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "raw bytes, not checked");
    let (status, body) = s.get("/api/v1/files/no-such-object/download-url").await;
    assert_golden("err_v1_download_url_get_unknown", status, &body);
    let (status, body) = s.get("/api/v1/files/..%2Fescape/upload-url").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "invalid_object_name");
    // 200 bytes is a valid key, but one the filesystem store cannot hold (too long once encoded
    // as a file name): no URL is handed out for it there. S3 holds it.
    let long = "\u{e9}".repeat(100);
    let (status, body) = s.get(&format!("/api/v1/files/{long}/upload-url")).await;
    match common::backend() {
        common::Backend::Filesystem => {
            assert_eq!(status, 400, "{body}");
            assert_eq!(body["code"], "invalid_object_name");
        }
        common::Backend::S3 => assert_eq!(status, 200, "{body}"),
    }
    let (status, body) = s.delete("/api/v1/files/my-object.h5").await;
    assert_eq!(
        (status, body),
        (200, json!({"detail": "File deleted successfully"}))
    );
    let (status, body) = s.delete("/api/v1/files/my-object.h5").await;
    assert_eq!(status, 404);
    assert_eq!(body["details"], json!({"object_name": "my-object.h5"}));
}

#[tokio::test]
async fn routing_errors_have_the_framework_shapes() {
    let s = Server::start_with(ServerOptions {
        wait_ready: false,
        ..Default::default()
    });
    let (status, body) = s.get("/api/v0/nope").await;
    assert_eq!(
        (status, body),
        (
            404,
            json!({"detail": "Not Found", "code": "http_404", "retryable": false})
        )
    );
    let (status, body) = s.delete("/").await;
    assert_eq!(
        (status, body),
        (
            405,
            json!({"detail": "Method Not Allowed", "code": "http_405", "retryable": false})
        )
    );
    let r = s.client.head(s.url("/")).send().await.unwrap();
    assert_eq!(
        r.status().as_u16(),
        405,
        "HEAD is not served for GET routes"
    );
    let no_redirect = no_redirect_client();
    let r = no_redirect
        .post(s.url("/api/v0/files/?x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 307);
    assert_eq!(r.headers()["location"], "/api/v0/files?x=1");
    assert_eq!(s.get("/openapi.json").await.1["openapi"], "3.1.0");
    let docs = s
        .client
        .get(s.url("/docs"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(docs.contains("/openapi.json"));
}

/// A client that hands back redirects instead of following them.
fn no_redirect_client() -> reqwest::Client {
    let builder = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
    builder.build().unwrap()
}

/// A server whose CORS layer allows `http://viewer.local` to GET and POST and exposes `x-a`.
fn cors_server() -> Server {
    let yaml = "middleware:\n  allow_origins: ['http://viewer.local']\n  allow_methods: ['GET', 'POST']\n  expose_headers: ['x-a']\n".to_string();
    Server::start_with(ServerOptions {
        yaml,
        wait_ready: false,
        ..Default::default()
    })
}

/// `GET /` with an `Origin` header.
async fn get_root_from(s: &Server, origin: &str) -> reqwest::Response {
    let r = s
        .client
        .get(s.url("/"))
        .header("origin", origin)
        .send()
        .await;
    r.unwrap()
}

#[tokio::test]
async fn cors_follows_the_middleware_settings() {
    let s = cors_server();
    let pre = |origin: &'static str, method: &'static str| {
        s.client
            .request(reqwest::Method::OPTIONS, s.url("/api/v0/files"))
            .header("origin", origin)
            .header("access-control-request-method", method)
            .send()
    };
    let r = pre("http://viewer.local", "POST").await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://viewer.local"
    );
    assert_eq!(r.headers()["access-control-allow-methods"], "GET, POST");
    assert_eq!(r.text().await.unwrap(), "OK");
    let r = pre("http://evil.local", "DELETE").await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(r.text().await.unwrap(), "Disallowed CORS origin, method");
    let r = get_root_from(&s, "http://viewer.local").await;
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://viewer.local"
    );
    assert_eq!(r.headers()["access-control-expose-headers"], "x-a");
    let r = get_root_from(&s, "http://evil.local").await;
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn a_panicking_storage_gateway_answers_503_and_restarts() {
    let s = Server::start_with(ServerOptions {
        wait_ready: false,
        ..Default::default()
    });
    let id = s.upload(&common::images().join("coins.h5")).await;
    assert_eq!(s.post("/_test/fault/storage_gateway").await.0, 200);
    let (status, body) = s.get(&format!("/api/v1/files/{id}/download-url")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "service_restarting");
    assert_eq!(body["retryable"], true);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        s.download(&id).await,
        std::fs::read(common::images().join("coins.h5")).unwrap()
    );
    assert!(
        s.log_text().contains("storage_gateway"),
        "panic logged with the actor name"
    );
}

#[test]
fn sigterm_shuts_down_cleanly() {
    let mut s = Server::start_with(ServerOptions {
        wait_ready: true,
        ..Default::default()
    });
    let worker_pid = {
        let out = std::process::Command::new("curl")
            .args(["-s", &s.url("/health")])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["workers"][0]["pid"].as_u64().unwrap()
    };
    s.terminate();
    let status = s.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", s.log_text());
    std::thread::sleep(Duration::from_millis(300));
    let mut stat = String::new();
    let alive = std::fs::File::open(format!("/proc/{worker_pid}/stat"))
        .and_then(|mut f| f.read_to_string(&mut stat))
        .is_ok()
        && !stat.contains(") Z ");
    assert!(!alive, "worker {worker_pid} outlived the server");
}

#[tokio::test]
async fn tls_from_ssl_settings() {
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
    let port = common::free_port();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        format!(
            "port: {port}\nlog_path: {d}/compox.log\nssl:\n  use_ssl: true\n  ssl_keyfile: {k}\n  ssl_certfile: {c}\nstorage:\n  backend_settings:\n    provider: filesystem\n    storage_path: {d}/store\ninference:\n  device: cpu\n  python_env: {v}\n",
            d = dir.path().display(),
            k = key.display(),
            c = cert.display(),
            v = common::venv().display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(common::EXE)
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let mut body = Value::Null;
    for _ in 0..200 {
        if let Ok(r) = client
            .get(format!("https://127.0.0.1:{port}/"))
            .send()
            .await
        {
            body = r.json().await.unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(body["version"], "3.2.0");

    // A missing key file stops start-up with a clear message.
    std::fs::remove_file(&key).unwrap();
    let out = std::process::Command::new(common::EXE)
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Cannot find SSL keyfile"));
}

#[tokio::test]
async fn log_file_gets_operator_lines_but_not_polls() {
    let s = Server::start_with(ServerOptions {
        wait_ready: false,
        ..Default::default()
    });
    let id = s.upload(&common::images().join("coins.h5")).await;
    for _ in 0..3 {
        s.download(&id).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = std::fs::read_to_string(s.dir.path().join("logs/compox.log")).unwrap();
    assert!(log.contains("Logger successfully configured."), "{log}");
    assert!(log.contains("compox listening on"), "{log}");
    assert!(
        !log.contains("file uploaded"),
        "transfers are DEBUG only: {log}"
    );
}

#[tokio::test]
async fn hdf5_files_with_a_user_block_are_accepted() {
    let s = Server::start_with(ServerOptions {
        wait_ready: false,
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ub.h5");
    let script = "import sys, h5py, numpy as np\nwith h5py.File(sys.argv[1], 'w', userblock_size=512) as f:\n    f['image'] = np.zeros((8, 8), np.uint8)\n";
    let ok = std::process::Command::new(common::venv_python())
        .arg("-c")
        .arg(script)
        .arg(&path)
        .status()
        .unwrap();
    assert!(ok.success());
    let id = s.upload(&path).await;
    assert_eq!(s.download(&id).await, std::fs::read(&path).unwrap());
}

/// What the differential probe found (`tests/differential/probe.py`): the original's CORS layer
/// varies preflights on every request header they depend on, refuses private-network preflights,
/// and sends the exposed headers on every response to a request with `Origin`.
#[tokio::test]
async fn cors_headers_match_the_original_for_preflights_and_foreign_origins() {
    let s = cors_server();
    let preflight = |origin: &'static str| {
        s.client
            .request(reqwest::Method::OPTIONS, s.url("/api/v0/files"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
    };
    let vary = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers, \
                Access-Control-Request-Private-Network";
    for origin in ["http://viewer.local", "http://evil.local"] {
        let r = preflight(origin).send().await.unwrap();
        assert_eq!(r.headers()["vary"], vary, "{origin}");
    }
    let r = preflight("http://viewer.local")
        .header("access-control-request-private-network", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(r.text().await.unwrap(), "Disallowed CORS private-network");

    let r = get_root_from(&s, "http://evil.local").await;
    assert!(r.headers().get("access-control-allow-origin").is_none());
    assert_eq!(r.headers()["access-control-expose-headers"], "x-a");
    assert_eq!(r.headers()["vary"], "Origin");
    let r = s.client.get(s.url("/")).send().await.unwrap();
    assert_eq!(r.headers()["vary"], "Origin");
    assert!(r.headers().get("access-control-expose-headers").is_none());
}

/// The trailing-slash redirect drops every trailing slash, and the root is never a target: `//`
/// is a 404 like any unknown path (found by the differential probe).
#[tokio::test]
async fn trailing_slash_redirects_drop_every_slash_but_never_lead_to_the_root() {
    let s = Server::start_with(ServerOptions {
        wait_ready: false,
        ..Default::default()
    });
    let no_redirect = no_redirect_client();
    let r = no_redirect
        .post(s.url("/api/v0/files//"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 307);
    assert_eq!(r.headers()["location"], "/api/v0/files");
    let r = no_redirect.get(s.url("//")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"detail": "Not Found", "code": "http_404", "retryable": false})
    );
}

/// Framework-level refusals answer in the error model too: a JSON body over the 64 MiB limit
/// (413) and a presigned URL without its signature fields (403, like a wrong signature).
#[tokio::test]
async fn oversized_bodies_and_unsigned_presigned_urls_get_json_errors() {
    let s = Server::start_with(common::ServerOptions {
        wait_ready: false,
        ..Default::default()
    });
    let r = s
        .client
        .post(s.url("/api/v0/execute-algorithm"))
        .header("content-type", "application/json")
        .body(vec![b' '; 65 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "http_413", "{v}");
    assert!(v["detail"].as_str().unwrap().contains("64 MiB"), "{v}");
    for method in [reqwest::Method::GET, reqwest::Method::PUT] {
        let r = s
            .client
            .request(method, s.url("/api/v1/presigned/data-store/x.h5"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 403);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["code"], "presigned_url_invalid", "{v}");
    }
    let (status, _) = s.get("/").await;
    assert_eq!(status, 200);
}
