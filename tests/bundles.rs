//! Algorithm bundles end to end: `build-algorithm-bundle` → `inspect-algorithm-bundle` →
//! `import-algorithm-bundle` and the start-up import, against real stores, plus every kind of bad
//! bundle, each refused with the store left as it was.

mod common;

use common::{algorithms_dir, compox_cli, write_cli_config, Server, ServerOptions, EXE};
use compox::bundle::manifest::sign;
use compox::bundle::{BundleKey, KeyUse};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every object file of a store except the import state, with the SHA-256 of its bytes.
fn digest(store: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.filter_map(Result::ok) {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if rel.starts_with("system-store") || rel.starts_with('.') {
                continue;
            }
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(rel, compox::bundle::sha256_hex(&std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(store, store, &mut out);
    out
}

fn files_of(store: &Path, collection: &str) -> BTreeMap<String, String> {
    digest(store)
        .into_iter()
        .filter(|(k, _)| k.starts_with(&format!("{collection}/")) && !k.contains("/.tags/"))
        .collect()
}

fn state(store: &Path) -> Value {
    let text = std::fs::read_to_string(store.join("system-store/migration-state")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A source store with `noop` and `tv_denoiser` deployed, the server stopped again.
async fn source_store() -> (tempfile::TempDir, BTreeMap<String, String>) {
    let mut server = Server::start_with(ServerOptions {
        wait_ready: false,
        ..Default::default()
    });
    let mut ids = BTreeMap::new();
    for name in ["noop", "tv_denoiser"] {
        ids.insert(name.to_string(), server.deploy_ok(name).await);
    }
    server.terminate();
    let dir = std::mem::replace(&mut server.dir, tempfile::tempdir().unwrap());
    (dir, ids)
}

/// Builds a bundle of the store in `dir`; returns its path and key.
fn build(dir: &Path, key: Option<&str>) -> (PathBuf, String) {
    let out = dir.join(format!("bundle-{}.zip", uuid::Uuid::new_v4()));
    let config = dir.join("compox.yaml");
    let mut args = vec![
        "build-algorithm-bundle",
        "--config",
        config.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ];
    if let Some(k) = key {
        args.extend(["--key", k]);
    }
    let o = compox_cli(&args, dir);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains(&format!("Algorithm bundle created: {}", out.display())),
        "{text}"
    );
    assert!(text.contains("Objects bundled: "), "{text}");
    let key = match key {
        Some(k) => k.to_string(),
        None => text
            .lines()
            .find_map(|l| l.strip_prefix("Generated algorithm bundle key: "))
            .expect("a generated key is printed")
            .to_string(),
    };
    (out, key)
}

fn import(config: &Path, bundle: &Path, key: &str) -> Output {
    compox_cli(
        &[
            "import-algorithm-bundle",
            "--config",
            config.to_str().unwrap(),
            "--bundle-path",
            bundle.to_str().unwrap(),
            "--key",
            key,
        ],
        config.parent().unwrap(),
    )
}

fn inspect(bundle: &Path, key: &str) -> Output {
    compox_cli(
        &[
            "inspect-algorithm-bundle",
            "--bundle-path",
            bundle.to_str().unwrap(),
            "--key",
            key,
        ],
        bundle.parent().unwrap(),
    )
}

#[tokio::test]
async fn build_inspect_import_round_trip_and_reimport() {
    let (src, ids) = source_store().await;
    let (bundle, key) = build(src.path(), None);
    assert_eq!(key.len(), 43);

    let o = inspect(&bundle, &key);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.starts_with("{\n    \"bundle_path\": "), "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["format"], "compox-migration-bundle-v1");
    assert_eq!(v["encryption"], "aesgcm");
    assert_eq!(
        v["collections"],
        serde_json::json!([
            "algorithm-checkpoint-store",
            "algorithm-store",
            "asset-store",
            "module-store"
        ])
    );
    assert_eq!(v["object_counts_by_collection"]["algorithm-store"], 2);
    assert_eq!(v["object_counts_by_collection"]["module-store"], 2);
    let modules_and_assets = files_of(&src.path().join("store"), "module-store").len()
        + files_of(&src.path().join("store"), "asset-store").len();
    assert_eq!(
        v["object_count"].as_u64().unwrap() as usize,
        modules_and_assets + 2
    );
    assert_eq!(v["metadata"]["bundle_kind"], "builtin_algorithm_snapshot");
    assert_eq!(v["metadata"]["content_sha256"].as_str().unwrap().len(), 64);

    let dst = tempfile::tempdir().unwrap();
    let config = write_cli_config(dst.path());
    let o = import(&config, &bundle, &key);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("Algorithm bundle import completed."),
        "{}",
        stdout(&o)
    );
    let store = dst.path().join("store");
    let s = state(&store);
    assert_eq!(s["last_import_status"], "COMPLETED");
    assert_eq!(s["imported_algorithms"], 2);
    assert_eq!(
        s["last_imported_bundle_sha256"],
        compox::bundle::sha256_hex(&std::fs::read(&bundle).unwrap())
    );
    for c in ["module-store", "asset-store"] {
        assert_eq!(
            files_of(&store, c),
            files_of(&src.path().join("store"), c),
            "{c} copied byte for byte"
        );
    }
    let after_first = digest(&store);

    // The same file again: the hash gate skips it, with its own message, and writes nothing.
    let o = import(&config, &bundle, &key);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("skipped: this bundle file was already imported"),
        "{}",
        stdout(&o)
    );
    assert_eq!(state(&store), s);
    // A rebuilt bundle of the same content is a new file: imported again, and changes nothing.
    let (rebuilt, _) = build(src.path(), Some(&key));
    let o = import(&config, &rebuilt, &key);
    assert!(
        stdout(&o).contains("import completed"),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );
    assert_eq!(digest(&store), after_first, "re-import is a no-op");

    // The imported algorithms serve with their original ids and versions.
    let server = Server::start_in(
        dst,
        ServerOptions {
            wait_ready: false,
            ..Default::default()
        },
    );
    for (name, id) in &ids {
        let (status, body) = server.get(&format!("/api/v0/algorithm/{name}/1")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["algorithm_id"], id.as_str());
        assert_eq!(body["algorithm_minor_version"], "0");
    }
    let record = std::fs::read_to_string(
        store
            .join("algorithm-store")
            .join(format!("{}~noop~1", ids["noop"])),
    )
    .unwrap();
    assert!(record.starts_with("{\n    \"algorithm_id\""), "{record}");
    assert!(record.contains(&format!(
        "\"source_backend_version\": \"{}\"",
        env!("CARGO_PKG_VERSION")
    )));
}

/// A copy of `tests/algorithms/<name>` with one line appended to its Runner.py.
fn modified_copy(name: &str, into: &Path) -> PathBuf {
    let dst = into.join(name);
    let status = Command::new("cp")
        .arg("-r")
        .arg(algorithms_dir().join(name))
        .arg(&dst)
        .status()
        .unwrap();
    assert!(status.success());
    let runner = dst.join("Runner.py");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(runner)
        .unwrap();
    writeln!(f, "\n# modified copy").unwrap();
    let py = dst.join("pyproject.toml");
    let text = std::fs::read_to_string(&py).unwrap();
    std::fs::write(
        &py,
        text.replace(
            "Does nothing in preprocess",
            "Modified: does nothing in preprocess",
        ),
    )
    .unwrap();
    dst
}

#[tokio::test]
async fn import_merges_into_existing_versions() {
    let (src, src_ids) = source_store().await;
    let (bundle, key) = build(src.path(), None);

    // The target holds its own deployments of the same (name, major): tv_denoiser identical,
    // noop with different code and description.
    let mut target = Server::start_with(ServerOptions {
        wait_ready: false,
        ..Default::default()
    });
    let tv_id = target.deploy_ok("tv_denoiser").await;
    let work = tempfile::tempdir().unwrap();
    let (status, body) = target.deploy(&modified_copy("noop", work.path())).await;
    assert_eq!(status, 200, "{body}");
    let noop_id = body["algorithm_id"].as_str().unwrap().to_string();
    target.terminate();
    let dir = std::mem::replace(&mut target.dir, tempfile::tempdir().unwrap());
    let config = dir.path().join("compox.yaml");
    assert_ne!(tv_id, src_ids["tv_denoiser"]);

    let o = import(&config, &bundle, &key);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));

    let server = Server::start_in(
        dir,
        ServerOptions {
            wait_ready: false,
            ..Default::default()
        },
    );
    let (_, tv) = server.get("/api/v0/algorithm/tv_denoiser/1").await;
    assert_eq!(
        tv["algorithm_id"],
        tv_id.as_str(),
        "the target's id is kept"
    );
    assert_eq!(
        tv["algorithm_minor_version"], "0",
        "same module and assets: no new minor"
    );
    let (_, noop) = server.get("/api/v0/algorithm/noop/1").await;
    assert_eq!(noop["algorithm_id"], noop_id.as_str());
    assert_eq!(
        noop["algorithm_minor_version"], "1",
        "the bundled latest minor is added"
    );
    assert!(
        noop["algorithm_description"]
            .as_str()
            .unwrap()
            .starts_with("Does nothing"),
        "bundled metadata overwrites: {noop}"
    );
    let keys: Vec<String> = files_of(&server.store(), "algorithm-store")
        .into_keys()
        .collect();
    assert_eq!(
        keys.len(),
        2,
        "no second record per (name, major): {keys:?}"
    );
    let record: Value = serde_json::from_str(
        &std::fs::read_to_string(
            server
                .store()
                .join("algorithm-store")
                .join(format!("{noop_id}~noop~1")),
        )
        .unwrap(),
    )
    .unwrap();
    let src_record: Value = serde_json::from_str(
        &std::fs::read_to_string(
            src.path()
                .join("store/algorithm-store")
                .join(format!("{}~noop~1", src_ids["noop"])),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        record["algorithm_minor_version"]["1"]["module_id"],
        src_record["algorithm_minor_version"]["0"]["module_id"]
    );
    let module = record["algorithm_minor_version"]["1"]["module_id"]
        .as_str()
        .unwrap();
    assert!(
        server.store().join("module-store").join(module).is_file(),
        "the bundled module was copied"
    );
}

#[tokio::test]
async fn startup_import_runs_once_and_a_bad_bundle_stops_the_server() {
    let (src, ids) = source_store().await;
    let (bundle, key) = build(src.path(), None);
    let env = |k: &str| {
        vec![
            (
                "COMPOX_STORAGE__BUILTIN_STORAGE_BUNDLE_PATH".to_string(),
                bundle.display().to_string(),
            ),
            (
                "COMPOX_STORAGE__BUILTIN_STORAGE_BUNDLE_KEY".to_string(),
                k.to_string(),
            ),
        ]
    };
    let opts = |k: &str| ServerOptions {
        wait_ready: false,
        env: env(k),
        ..Default::default()
    };

    let mut first = Server::start_with(opts(&key));
    let (status, body) = first.get("/api/v0/algorithm/noop/1").await;
    assert_eq!(status, 200, "{body}\n{}", first.log_text());
    assert_eq!(body["algorithm_id"], ids["noop"].as_str());
    let s = state(&first.store());
    assert_eq!(s["last_import_status"], "COMPLETED", "{s}");
    first.terminate();
    let dir = std::mem::replace(&mut first.dir, tempfile::tempdir().unwrap());
    let before = digest(&dir.path().join("store"));

    let mut second = Server::start_in(dir, opts(&key));
    assert!(
        second
            .log_text()
            .contains("Migration already completed for this algorithm bundle. Skipping."),
        "{}",
        second.log_text()
    );
    assert_eq!(state(&second.store()), s, "the gate writes nothing");
    assert_eq!(digest(&second.store()), before);
    second.terminate();

    // A wrong key: start-up stops with a clear message and a non-zero exit, before any worker.
    let empty = tempfile::tempdir().unwrap();
    let config = write_cli_config(empty.path());
    let mut child = Command::new(EXE)
        .args(["run", "--config", config.to_str().unwrap()])
        .envs(env(&BundleKey::generate().to_text()))
        .current_dir(empty.path())
        .env_remove("VIRTUAL_ENV")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the server did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(
        err.contains("importing the algorithm bundle failed (invalid_bundle_signature)"),
        "{err}"
    );
    assert!(!err.contains("starting workers"), "{err}");
    let s = state(&empty.path().join("store"));
    assert_eq!(s["last_import_status"], "FAILED");
    assert_eq!(s["error_code"], "invalid_bundle_signature");
    assert_eq!(s["rollback_status"], "COMPLETED");
    assert!(files_of(&empty.path().join("store"), "algorithm-store").is_empty());
}

/// Every member of a bundle, in order: (name, bytes).
fn members(bundle: &Path) -> Vec<(String, Vec<u8>)> {
    let mut z = zip::ZipArchive::new(std::fs::File::open(bundle).unwrap()).unwrap();
    (0..z.len())
        .map(|i| {
            let mut m = z.by_index(i).unwrap();
            let mut out = Vec::new();
            m.read_to_end(&mut out).unwrap();
            (m.name().to_string(), out)
        })
        .collect()
}

fn write_members(path: &Path, members: &[(String, Vec<u8>)]) {
    let mut w = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in members {
        w.start_file(name.as_str(), opts).unwrap();
        w.write_all(bytes).unwrap();
    }
    w.finish().unwrap();
}

/// Rewrites the manifest with `edit` and signs it again with the real key.
fn resigned(bundle: &Path, key: &str, out: &Path, edit: impl Fn(&mut Value)) {
    let key = BundleKey::parse(key, KeyUse::Read).unwrap();
    let mut ms = members(bundle);
    let i = ms.iter().position(|(n, _)| n == "manifest.json").unwrap();
    let mut manifest: Value = serde_json::from_slice(&ms[i].1).unwrap();
    edit(&mut manifest);
    let bytes = compox::bundle::json::dumps(&manifest, compox::bundle::json::Style::Compact, true)
        .into_bytes();
    let sig = sign(&key, &bytes);
    ms[i].1 = bytes;
    let h = ms.iter().position(|(n, _)| n == "manifest.hmac").unwrap();
    ms[h].1 = sig.into_bytes();
    write_members(out, &ms);
}

/// Offsets of interesting bytes: (what, offset).
fn flip_targets(bundle: &Path) -> Vec<(String, usize)> {
    let mut z = zip::ZipArchive::new(std::fs::File::open(bundle).unwrap()).unwrap();
    let mut out = Vec::new();
    for i in 0..z.len() {
        let m = z.by_index_raw(i).unwrap();
        let (name, local, data, size, central) = (
            m.name().to_string(),
            m.header_start() as usize,
            m.data_start() as usize,
            m.compressed_size() as usize,
            m.central_header_start() as usize,
        );
        if i == 0 || name == "manifest.json" || name == "manifest.hmac" {
            out.push((format!("{name}: first data byte"), data));
            out.push((format!("{name}: middle data byte"), data + size / 2));
            out.push((format!("{name}: last data byte"), data + size - 1));
            out.push((format!("{name}: local header CRC"), local + 14));
            out.push((format!("{name}: local header time"), local + 10));
            out.push((format!("{name}: central name"), central + 46));
        }
    }
    let len = std::fs::metadata(bundle).unwrap().len() as usize;
    out.push(("end record: entry count".into(), len - 12));
    out.push(("end record: directory offset".into(), len - 6));
    out
}

#[tokio::test]
async fn bad_bundles_are_refused_and_change_nothing() {
    let (src, _) = source_store().await;
    let (bundle, key) = build(src.path(), None);
    let original = std::fs::read(&bundle).unwrap();
    let work = tempfile::tempdir().unwrap();

    // The target already holds an algorithm, so a rollback has something to keep.
    let mut target = Server::start_with(ServerOptions {
        wait_ready: false,
        ..Default::default()
    });
    target.deploy_ok("tv_denoiser").await;
    target.terminate();
    let dir = std::mem::replace(&mut target.dir, tempfile::tempdir().unwrap());
    let config = dir.path().join("compox.yaml");
    let store = dir.path().join("store");
    // An empty store too: there every object must come from the bundle.
    let empty = tempfile::tempdir().unwrap();
    let empty_config = write_cli_config(empty.path());

    let mut cases: Vec<(String, PathBuf, String, &str)> = Vec::new();
    cases.push((
        "wrong key".into(),
        bundle.clone(),
        BundleKey::generate().to_text(),
        "invalid_bundle_signature",
    ));
    cases.push((
        "malformed key".into(),
        bundle.clone(),
        "abc".into(),
        "invalid_bundle_key",
    ));
    for (what, at) in flip_targets(&bundle) {
        let p = work.path().join(format!("flip-{at}.zip"));
        let mut bytes = original.clone();
        bytes[at] ^= 0x01;
        std::fs::write(&p, bytes).unwrap();
        cases.push((format!("flipped byte at {at} ({what})"), p, key.clone(), ""));
    }
    for cut in [original.len() / 2, original.len() - 10, 100] {
        let p = work.path().join(format!("cut-{cut}.zip"));
        std::fs::write(&p, &original[..cut]).unwrap();
        cases.push((
            format!("truncated to {cut} bytes"),
            p,
            key.clone(),
            "invalid_algorithm_bundle",
        ));
    }
    let missing_blob = work.path().join("missing-blob.zip");
    resigned(&bundle, &key, &missing_blob, |m| {
        let objects = m["objects"].as_array_mut().unwrap();
        let last_asset = objects
            .iter_mut()
            .rev()
            .find(|o| o["collection"] == "asset-store")
            .unwrap();
        last_asset["blob"] = "objects/99999999.bin".into();
    });
    cases.push((
        "manifest names a missing blob".into(),
        missing_blob,
        key.clone(),
        "bundle_object_read_failed",
    ));
    let missing_object = work.path().join("missing-object.zip");
    resigned(&bundle, &key, &missing_object, |m| {
        let objects = m["objects"].as_array_mut().unwrap();
        let i = objects
            .iter()
            .rposition(|o| o["collection"] == "module-store")
            .unwrap();
        objects.remove(i);
    });
    cases.push((
        "a record names an object the bundle lacks".into(),
        missing_object,
        key.clone(),
        "bundle_object_not_found",
    ));
    for evil in ["../evil.txt", "/abs/evil.txt", "objects/../../evil.bin"] {
        let p = work.path().join(format!("evil-{}.zip", evil.len()));
        let mut ms = members(&bundle);
        ms.insert(0, (evil.to_string(), b"x".to_vec()));
        write_members(&p, &ms);
        cases.push((
            format!("member named {evil:?}"),
            p,
            key.clone(),
            "invalid_algorithm_bundle",
        ));
    }
    let not_zip = work.path().join("not-a-zip.zip");
    std::fs::write(&not_zip, b"hello").unwrap();
    cases.push((
        "not a zip".into(),
        not_zip,
        key.clone(),
        "invalid_algorithm_bundle",
    ));

    for (what, path, k, code) in &cases {
        // A store that already holds an object never reads it from the bundle (copies are "if
        // missing"), so the two missing-object bundles only fail where every object is needed.
        let needs_all = code.starts_with("bundle_object");
        let targets = if needs_all {
            vec![(&empty_config, empty.path().join("store"))]
        } else {
            vec![
                (&config, store.clone()),
                (&empty_config, empty.path().join("store")),
            ]
        };
        for (config, store) in &targets {
            let before = digest(store);
            let o = import(config, path, k);
            let err = stderr(&o);
            assert_eq!(
                o.status.code(),
                Some(1),
                "{what}: must fail\n{}{err}",
                stdout(&o)
            );
            assert!(
                err.contains("importing the algorithm bundle failed ("),
                "{what}: {err}"
            );
            assert!(err.contains(code), "{what}: expected {code} in {err}");
            assert_eq!(digest(store), before, "{what}: the store changed");
            let s = state(store);
            assert_eq!(s["last_import_status"], "FAILED", "{what}");
            assert_eq!(s["rollback_status"], "COMPLETED", "{what}");
            assert!(!std::path::Path::new(&format!("{}/evil.txt", store.display())).exists());
        }
        if !code.is_empty()
            && *code != "bundle_object_read_failed"
            && *code != "bundle_object_not_found"
        {
            let o = inspect(path, k);
            assert_eq!(o.status.code(), Some(1), "inspect {what}");
            assert!(stderr(&o).contains(code), "inspect {what}: {}", stderr(&o));
        }
    }
    assert!(!work.path().parent().unwrap().join("evil.txt").exists());
}

/// Names in an A2 body, sorted.
fn sorted_names(all: &Value) -> Vec<String> {
    let mut names: Vec<String> = all
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v["algorithm_name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Polls A2 until `ok` holds for its status and names; panics after 20 s.
async fn wait_listing(server: &Server, what: &str, ok: impl Fn(u16, &[String]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, all) = server.get("/api/v0/algorithm/all").await;
        if ok(status, &sorted_names(&all)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: last listing {status} {all}\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `platform.md` §1.12: the command may run while a server uses the same store. The server's
/// index refresh picks up what it wrote, and later external changes and deletions, without a
/// restart, and keeps the server's own deployment exactly once.
#[tokio::test]
async fn a_running_server_sees_an_import_made_by_another_process() {
    let (src, ids) = source_store().await;
    let (bundle, key) = build(src.path(), None);
    let server = Server::start();
    let printer = server.deploy_ok("printer").await;
    let (status, _) = server.get("/api/v0/algorithm/noop/1").await;
    assert_eq!(status, 404);

    let config = server.dir.path().join("compox.yaml");
    let o = tokio::task::spawn_blocking(move || import(&config, &bundle, &key))
        .await
        .unwrap();
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains(&format!(
            "A server answers on port {}: if it uses this store, it picks up the imported \
             algorithms within 3 seconds.",
            server.port
        )),
        "{}",
        stdout(&o)
    );

    wait_listing(
        &server,
        "the imported algorithms appear",
        |status, names| status == 200 && names == ["noop", "printer", "tv_denoiser"],
    )
    .await;
    for (name, id) in &ids {
        let (status, body) = server.get(&format!("/api/v0/algorithm/{name}/1")).await;
        assert_eq!(status, 200, "{name}: {body}");
        assert_eq!(body["algorithm_id"], id.as_str());
    }
    let (status, body) = server.get("/api/v0/algorithm/printer/1").await;
    assert_eq!(
        (status, body["algorithm_id"].as_str()),
        (200, Some(printer.as_str()))
    );
    let execution = server
        .execute(&ids["noop"], &[], serde_json::json!({}))
        .await;
    let (rec, _) = server
        .wait_terminal(&execution, Duration::from_secs(120))
        .await;
    assert_eq!(rec["status"], "COMPLETED", "{rec}");

    // A record rewritten by another writer is served as rewritten.
    let noop_key = format!("{}~noop~1", ids["noop"]);
    let mut noop: Value =
        serde_json::from_slice(&server.store_read("algorithm-store", &noop_key).unwrap()).unwrap();
    noop["algorithm_description"] = Value::from("Rewritten elsewhere");
    server.store_write(
        "algorithm-store",
        &noop_key,
        &serde_json::to_vec(&noop).unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = server.get("/api/v0/algorithm/noop/1").await;
        if body["algorithm_description"] == "Rewritten elsewhere" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rewrite never showed: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A record file deleted behind the server's back disappears.
    server.store_delete(
        "algorithm-store",
        &format!("{}~tv_denoiser~1", ids["tv_denoiser"]),
    );
    wait_listing(
        &server,
        "the deleted algorithm disappears",
        |status, names| status == 200 && names == ["noop", "printer"],
    )
    .await;
    let (status, body) = server.get("/api/v0/algorithm/tv_denoiser/1").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = server
        .post_json(
            "/api/v0/execute-algorithm",
            &serde_json::json!({"algorithm_id": ids["tv_denoiser"], "input_dataset_ids": [],
                                "additional_parameters": {}}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("algorithm_not_found")),
        "{body}"
    );
    assert!(
        server.log_text().contains("algorithm index refreshed"),
        "the refresh is logged for the operator"
    );
}

/// A bundle whose algorithm record does not say which algorithm it is, or has no minor
/// versions, is refused as the original refuses it (`platform.md` §5.5 steps 3–4): stored, such
/// a record would make every listing of the target fail.
#[tokio::test]
async fn bundles_with_malformed_algorithm_records_are_refused() {
    let bad_records = [
        (
            "5~5~1",
            r#"{"algorithm_name": 5}"#,
            "algorithm_id must be a non-empty string",
        ),
        (
            "8c0e2a2e-0000-11f1-8000-000000000001~n~1",
            r#"{"algorithm_id": "8c0e2a2e-0000-11f1-8000-000000000001",
                "algorithm_name": "n", "algorithm_major_version": "1"}"#,
            "algorithm_minor_version must be a non-empty map",
        ),
    ];
    for (key, body, why) in bad_records {
        let (src, _) = source_store().await;
        std::fs::write(src.path().join("store/algorithm-store").join(key), body).unwrap();
        let (bundle, bundle_key) = build(src.path(), None);

        let target = tempfile::tempdir().unwrap();
        let config = write_cli_config(target.path());
        let store = target.path().join("store");
        let o = import(&config, &bundle, &bundle_key);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{key}: {}{err}", stdout(&o));
        assert!(
            err.contains("builtin_algorithm_import_failed"),
            "{key}: {err}"
        );
        assert!(err.contains(why), "{key}: {err}");
        assert!(files_of(&store, "algorithm-store").is_empty(), "{key}");
        let s = state(&store);
        assert_eq!(s["last_import_status"], "FAILED", "{key}");
        assert_eq!(s["rollback_status"], "COMPLETED", "{key}");
    }
}
