//! Bundles across implementations (issue 6): bundles built by the original Python Compox 3.2.0
//! (from `.venv-original`, `scripts/setup-original.sh`) import into ours and run, bundles built
//! by ours import into the original and run there, keys from either side work on the other, a
//! wrong key fails the same way on both, both sides' files have the same layout, the original's
//! bundles past zip's 32-bit limits open in ours, and both importers merge a bundle into existing
//! algorithms alike. A missing `.venv-original` fails every test with the command that fixes it.
//!
//! The original stores only on S3, so it runs against a `moto_server` (`provider: aws` with an
//! endpoint override, which needs no MinIO download). Both source stores also hold a checkpoint
//! chain written behind the servers' backs (neither test algorithm trains), so the fourth
//! collection and a multi-megabyte object cross over too.

mod common;
#[path = "common/original.rs"]
mod original;

use common::{
    algorithms_dir, compox_cli, images, write_cli_config, Moto, Server, ServerOptions, TestStore,
};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;
use std::time::Duration;

const ALGORITHM_STORE: &str = "algorithm-store";
const CHECKPOINT_STORE: &str = "algorithm-checkpoint-store";
const JSON_BUCKETS: [&str; 3] = [ALGORITHM_STORE, CHECKPOINT_STORE, "system-store"];
const BUNDLED: [&str; 4] = [
    ALGORITHM_STORE,
    "module-store",
    "asset-store",
    CHECKPOINT_STORE,
];
const CLI_TIMEOUT: Duration = Duration::from_secs(300);
/// The weight the checkpoint's replacement of `files/config/defaults.json` sets.
const CHECKPOINT_WEIGHT: &str = "0.35";
/// Larger than the readers' and writers' 1 MiB chunks, and than an 8 MiB S3 part.
const BIG_ASSET_BYTES: usize = 12 << 20;

// ---------------------------------------------------------------------------------------------
// Our side

fn ok(what: &str, o: &Output) -> String {
    original::ok(what, o)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Which implementation runs a bundle command.
#[derive(Clone, Copy)]
enum Side {
    Ours,
    Original,
}

impl Side {
    fn cli(self, args: &[&str], cwd: &Path) -> Output {
        match self {
            Side::Ours => compox_cli(args, cwd),
            Side::Original => original::cli(args, cwd, CLI_TIMEOUT),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Side::Ours => "our",
            Side::Original => "the original's",
        }
    }

    fn key(self) -> String {
        let out = self.cli(&["generate-algorithm-bundle-key"], &common::repo());
        let what = format!("{} generate-algorithm-bundle-key", self.name());
        ok(&what, &out).trim().to_string()
    }

    /// Deploys two algorithms of `tests/algorithms` into the store of `config`.
    fn deploy(self, config: &Path, names: [&str; 2]) {
        let (cfg, algorithms) = (config.to_str().unwrap(), algorithms_dir());
        let path = algorithms.to_str().unwrap();
        let [a, b] = names;
        let args = [
            "deploy-algorithms",
            "--config",
            cfg,
            "--path",
            path,
            "-n",
            a,
            "-n",
            b,
            "--no-verbose",
        ];
        let what = format!("{} deploy-algorithms", self.name());
        ok(&what, &self.cli(&args, config.parent().unwrap()));
    }

    /// Bundles the store of `config` into `output` with `key`.
    fn build(self, config: &Path, output: &Path, key: &str) {
        let out = self.cli(&build_args(config, output, key), config.parent().unwrap());
        assert_bundled_all(&format!("{} build-algorithm-bundle", self.name()), &out);
    }

    fn inspect(self, bundle: &Path, key: &str) -> Output {
        let path = bundle.to_str().unwrap();
        self.cli(
            &[
                "inspect-algorithm-bundle",
                "--bundle-path",
                path,
                "--key",
                key,
            ],
            bundle.parent().unwrap(),
        )
    }

    fn import(self, config: &Path, bundle: &Path, key: &str) -> Output {
        let (cfg, path) = (config.to_str().unwrap(), bundle.to_str().unwrap());
        self.cli(
            &[
                "import-algorithm-bundle",
                "--config",
                cfg,
                "--bundle-path",
                path,
                "--key",
                key,
            ],
            config.parent().unwrap(),
        )
    }
}

/// The arguments of `build-algorithm-bundle` for the store of `config`, into `output` with `key`.
fn build_args<'a>(config: &'a Path, output: &'a Path, key: &'a str) -> [&'a str; 7] {
    [
        "build-algorithm-bundle",
        "--config",
        config.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--key",
        key,
    ]
}

/// Asserts a build succeeded and bundled every object of a fixture's source store.
fn assert_bundled_all(what: &str, built: &Output) {
    let built = ok(what, built);
    assert!(built.contains("Objects bundled: 11"), "{built}");
}

/// Every object of a filesystem store's bundled collections: collection → key → bytes.
fn fs_objects(store: &Path) -> BTreeMap<String, BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    for collection in BUNDLED {
        let mut objects = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir(store.join(collection)) {
            for e in entries.filter_map(Result::ok) {
                let name = e.file_name().to_string_lossy().into_owned();
                if e.path().is_file() && !name.starts_with('.') {
                    objects.insert(name, std::fs::read(e.path()).unwrap());
                }
            }
        }
        out.insert(collection.to_string(), objects);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The original's side

/// The S3 dump's objects of one bucket: key → `{size, sha256[, text]}`.
fn bucket<'a>(dump: &'a Value, name: &str) -> &'a serde_json::Map<String, Value> {
    static EMPTY: OnceLock<serde_json::Map<String, Value>> = OnceLock::new();
    dump.get(name)
        .and_then(Value::as_object)
        .unwrap_or_else(|| EMPTY.get_or_init(serde_json::Map::new))
}

fn text_json(entry: &Value) -> Value {
    serde_json::from_str(entry["text"].as_str().expect("a JSON object's text")).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Checkpoints written behind a store's back

/// A checkpoint chain for one algorithm: `child` (listed in the record, replaces the defaults
/// asset so executions show it) whose `parent_checkpoint_id` is `parent` (reached only through
/// the chain, carrying a big asset).
struct Checkpoints {
    child: String,
    parent: String,
    /// asset id → bytes.
    assets: Vec<(String, Vec<u8>)>,
    /// checkpoint id → manifest bytes.
    manifests: Vec<(String, Vec<u8>)>,
}

fn checkpoints_for(algorithm_key: &str) -> Checkpoints {
    let algorithm_id = algorithm_key.split('~').next().unwrap();
    let id = || uuid::Uuid::new_v4().to_string();
    let (child, parent, defaults, big) = (id(), id(), id(), id());
    let defaults_body =
        format!("{{\"denoising_weight\": {CHECKPOINT_WEIGHT}, \"max_num_iter\": 50}}").into_bytes();
    let manifest = |own: &str, parent_checkpoint: Value, assets: Value| {
        serde_json::to_vec(&json!({
            "checkpoint_id": own,
            "parent_algorithm_id": algorithm_id,
            "parent_algorithm_key": algorithm_key,
            "training_id": id(),
            "assets": assets,
            "created_at": "2026-01-02T03:04:05+00:00",
            "properties": {"loss": 0.25, "learning_rate": 1e-05, "steps": 1e16, "note": "caf\u{e9}"},
            "tags": ["compat"],
            "parent_checkpoint_id": parent_checkpoint,
        }))
        .unwrap()
    };
    Checkpoints {
        manifests: vec![
            (
                child.clone(),
                manifest(
                    &child,
                    json!(parent),
                    json!({"files/config/defaults.json": defaults}),
                ),
            ),
            (
                parent.clone(),
                manifest(&parent, Value::Null, json!({"pyproject.toml": big})),
            ),
        ],
        assets: vec![
            (defaults, defaults_body),
            (big, common::pseudo_random_bytes(BIG_ASSET_BYTES)),
        ],
        child,
        parent,
    }
}

/// The record text with `checkpoint` appended to its `checkpoints` list, as Python's
/// `json.dumps(indent=4)` writes records.
fn with_checkpoint(record_text: &str, checkpoint: &str) -> Vec<u8> {
    let mut record: Value = serde_json::from_str(record_text).unwrap();
    let list = record
        .as_object_mut()
        .unwrap()
        .entry("checkpoints")
        .or_insert_with(|| json!([]));
    list.as_array_mut().unwrap().push(json!(checkpoint));
    compox::bundle::json::dumps(&record, compox::bundle::json::Style::Indent4, false).into_bytes()
}

// ---------------------------------------------------------------------------------------------
// The two source stores and their bundles, built once per test binary

/// The original's CLI with Python's zip64 thresholds lowered to a few kilobytes and members, so
/// its bundle has the layout of one over 4 GiB or 65,535 objects (zip64 extra fields on the
/// central entries of members past the limit, zip64 end records) without writing gigabytes.
const ZIP64_BUILD: &str = r#"
import sys, zipfile
zipfile.ZIP64_LIMIT = 4096
zipfile.ZIP_FILECOUNT_LIMIT = 4
from compox.cli import app
app(sys.argv[1:], prog_name="compox")
"#;

struct Fixture {
    /// Under cargo's test scratch folder rather than a temporary one: a static is never dropped,
    /// so each run clears what the previous one left.
    dir: PathBuf,
    /// Built by the original from its S3 store, with a key generated by ours.
    original_bundle: PathBuf,
    original_bundle_key: String,
    /// The original's source store as it was bundled (see [`original::s3_dump`]).
    original_source: Value,
    original_checkpoints: Checkpoints,
    /// The same store built by the original with zip's 32-bit limits lowered (see
    /// [`ZIP64_BUILD`]).
    original_zip64_bundle: PathBuf,
    /// Built by ours from our filesystem store, with a key generated by the original.
    our_bundle: PathBuf,
    our_bundle_key: String,
    our_source: PathBuf,
    our_checkpoints: Checkpoints,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(build_fixture)
}

fn build_fixture() -> Fixture {
    original::exe();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bundle_compat");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    // The original deploys two algorithms (tv_denoiser has a code folder and two assets) into
    // moto, gets a checkpoint chain, and bundles its store with a key of ours.
    let odir = dir.join("original");
    std::fs::create_dir_all(&odir).unwrap();
    let moto = Moto::start();
    let config = original::write_config(&odir, moto.port);
    Side::Original.deploy(&config, ["tv_denoiser", "threshold_segmenter"]);
    let deployed = original::s3_dump(&moto.endpoint(), &JSON_BUCKETS, &odir);
    let (tv_key, tv_entry) = bucket(&deployed, ALGORITHM_STORE)
        .iter()
        .find(|(k, _)| k.contains("~tv_denoiser~"))
        .expect("the original deployed tv_denoiser");
    let original_checkpoints = checkpoints_for(tv_key);
    let endpoint = moto.endpoint();
    for (id, bytes) in &original_checkpoints.assets {
        original::s3_put(&endpoint, "asset-store", id, bytes, &odir);
    }
    for (id, bytes) in &original_checkpoints.manifests {
        original::s3_put(&endpoint, CHECKPOINT_STORE, id, bytes, &odir);
    }
    let record = with_checkpoint(
        tv_entry["text"].as_str().unwrap(),
        &original_checkpoints.child,
    );
    original::s3_put(&endpoint, ALGORITHM_STORE, tv_key, &record, &odir);
    let original_source = original::s3_dump(&endpoint, &JSON_BUCKETS, &odir);
    let original_bundle = odir.join("original-bundle.zip");
    let original_bundle_key = Side::Ours.key();
    Side::Original.build(&config, &original_bundle, &original_bundle_key);
    let original_zip64_bundle = odir.join("original-zip64-bundle.zip");
    let args = build_args(&config, &original_zip64_bundle, &original_bundle_key);
    assert_bundled_all(
        "the original's build-algorithm-bundle past the zip64 limits",
        &original::py(ZIP64_BUILD, &args, &odir),
    );
    drop(moto);

    // Ours deploys two algorithms (all_params needs nothing beyond numpy, so the original can
    // run it), gets a checkpoint chain, and bundles its store with a key of the original's.
    let udir = dir.join("ours");
    let config = write_cli_config(&udir);
    Side::Ours.deploy(&config, ["tv_denoiser", "all_params"]);
    let our_source = udir.join("store");
    let tv_key = fs_objects(&our_source)[ALGORITHM_STORE]
        .keys()
        .find(|k| k.contains("~tv_denoiser~"))
        .expect("ours deployed tv_denoiser")
        .clone();
    let our_checkpoints = checkpoints_for(&tv_key);
    for (id, bytes) in &our_checkpoints.assets {
        std::fs::write(our_source.join("asset-store").join(id), bytes).unwrap();
    }
    for (id, bytes) in &our_checkpoints.manifests {
        std::fs::write(our_source.join(CHECKPOINT_STORE).join(id), bytes).unwrap();
    }
    let record_path = our_source.join(ALGORITHM_STORE).join(&tv_key);
    let record = with_checkpoint(
        &std::fs::read_to_string(&record_path).unwrap(),
        &our_checkpoints.child,
    );
    std::fs::write(&record_path, record).unwrap();
    let our_bundle = udir.join("our-bundle.zip");
    let our_bundle_key = Side::Original.key();
    Side::Ours.build(&config, &our_bundle, &our_bundle_key);

    Fixture {
        dir,
        original_bundle,
        original_bundle_key,
        original_source,
        original_checkpoints,
        original_zip64_bundle,
        our_bundle,
        our_bundle_key,
        our_source,
        our_checkpoints,
    }
}

// ---------------------------------------------------------------------------------------------
// (a) The original's bundle in ours

/// Inspects a bundle with both CLIs; asserts they describe it alike and returns the description.
fn inspect_on_both(bundle: &Path, key: &str) -> Value {
    let theirs = ok(
        "the original's inspect",
        &Side::Original.inspect(bundle, key),
    );
    let mine = ok("our inspect", &Side::Ours.inspect(bundle, key));
    let theirs: Value = serde_json::from_str(&theirs).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&mine).unwrap(), theirs);
    theirs
}

/// `(algorithm_name, algorithm_id)` of each entry of a `GET /api/v0/algorithm/all` body, sorted.
fn listed_algorithms(all: &Value) -> Vec<(String, String)> {
    let entries = all.as_array().unwrap_or_else(|| panic!("{all}"));
    let mut listed: Vec<(String, String)> = entries
        .iter()
        .map(|a| {
            (
                a["algorithm_name"].as_str().unwrap().to_string(),
                a["algorithm_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    listed.sort();
    listed
}

/// `(name, id)` of the algorithms whose record keys (`<id>~<name>~…`) are `keys`, sorted.
fn algorithms_of_records<'a>(keys: impl Iterator<Item = &'a String>) -> Vec<(String, String)> {
    let mut algorithms: Vec<(String, String)> = keys
        .map(|k| {
            let parts: Vec<&str> = k.split('~').collect();
            (parts[1].to_string(), parts[0].to_string())
        })
        .collect();
    algorithms.sort();
    algorithms
}

#[tokio::test]
async fn bundle_built_by_the_original_imports_into_ours_and_runs() {
    let f = fixture();

    let inspected = inspect_on_both(&f.original_bundle, &f.original_bundle_key);
    assert_eq!(inspected["metadata"]["compox_version"], "3.2.0");
    assert_eq!(inspected["object_count"], 11);

    let target = tempfile::tempdir().unwrap();
    let config = write_cli_config(target.path());
    let out = ok(
        "our import",
        &Side::Ours.import(&config, &f.original_bundle, &f.original_bundle_key),
    );
    assert!(out.contains("Algorithm bundle import completed."), "{out}");
    assert!(out.contains("Algorithms imported: 2"), "{out}");

    // A fresh target receives every bundled object: modules, assets and checkpoint manifests
    // byte for byte (the manifests' ids already point at the kept algorithm id), records as
    // bundled plus `source_backend_version` and a `checkpoints` list.
    let imported = fs_objects(&target.path().join("store"));
    for collection in BUNDLED {
        let source = bucket(&f.original_source, collection);
        let got = &imported[collection];
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            source.keys().collect::<Vec<_>>(),
            "{collection}"
        );
        for (key, entry) in source {
            let bytes = &got[key];
            if collection == ALGORITHM_STORE {
                let mut want = text_json(entry);
                want["source_backend_version"] = json!(env!("CARGO_PKG_VERSION"));
                if want.get("checkpoints").is_none() {
                    want["checkpoints"] = json!([]);
                }
                let got: Value = serde_json::from_slice(bytes).unwrap();
                assert_eq!(got, want, "{key}");
            } else if collection == CHECKPOINT_STORE {
                let got: Value = serde_json::from_slice(bytes).unwrap();
                assert_eq!(got, text_json(entry), "{key}");
            } else {
                assert_eq!(
                    compox::bundle::sha256_hex(bytes),
                    entry["sha256"].as_str().unwrap(),
                    "{collection}/{key}"
                );
            }
        }
    }
    assert!(imported[CHECKPOINT_STORE].contains_key(&f.original_checkpoints.parent));

    // Our server lists both with the original's ids and runs them, the checkpoint's asset in
    // place of the algorithm's own when asked for.
    let storage_yaml = Some(TestStore::Filesystem(target.path().join("store")).storage_yaml());
    let server = Server::start_in(
        target,
        ServerOptions {
            storage_yaml,
            ..Default::default()
        },
    );
    let (status, all) = server.get("/api/v0/algorithm/all").await;
    assert_eq!(status, 200, "{all}");
    let listed = listed_algorithms(&all);
    let records = bucket(&f.original_source, ALGORITHM_STORE).keys();
    assert_eq!(listed, algorithms_of_records(records));

    let input = server.upload(&images().join("coins.h5")).await;
    let id_of = |name: &str| {
        listed
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, id)| id.clone())
            .unwrap()
    };
    let runs = [
        ("tv_denoiser", None, "with weight 0.1."),
        (
            "tv_denoiser",
            Some(f.original_checkpoints.child.clone()),
            "with weight 0.35.",
        ),
        ("threshold_segmenter", None, "otsu threshold"),
    ];
    for (name, checkpoint, log_line) in runs {
        let mut body = json!({
            "algorithm_id": id_of(name),
            "input_dataset_ids": [input],
            "additional_parameters": {},
        });
        if let Some(c) = &checkpoint {
            body["checkpoint_id"] = json!(c);
        }
        let (status, started) = server.post_json("/api/v0/execute-algorithm", &body).await;
        assert_eq!(status, 200, "{started}");
        let execution = started["execution_id"].as_str().unwrap();
        let (record, _) = server
            .wait_terminal(execution, Duration::from_secs(180))
            .await;
        assert_eq!(
            record["status"],
            "COMPLETED",
            "{name} {checkpoint:?}: {record}\n{}",
            server.log_text()
        );
        assert!(
            record["log"].as_str().unwrap().contains(log_line),
            "{name} {checkpoint:?}: {}",
            record["log"]
        );
        assert_eq!(record["output_dataset_ids"].as_array().unwrap().len(), 1);
    }
}

// ---------------------------------------------------------------------------------------------
// (b) Our bundle in the original

#[tokio::test]
async fn bundle_built_by_ours_imports_into_the_original_and_runs_there() {
    let f = fixture();

    inspect_on_both(&f.our_bundle, &f.our_bundle_key);

    let target = tempfile::tempdir().unwrap();
    let moto = Moto::start();
    let config = original::write_config(target.path(), moto.port);
    let out = ok(
        "the original's import",
        &Side::Original.import(&config, &f.our_bundle, &f.our_bundle_key),
    );
    assert!(out.contains("Algorithm bundle import completed."), "{out}");
    let dump = original::s3_dump(&moto.endpoint(), &JSON_BUCKETS, target.path());
    let state = text_json(&bucket(&dump, "system-store")["migration-state"]);
    assert_eq!(state["last_import_status"], "COMPLETED", "{state}");
    assert_eq!(state["imported_algorithms"], 2, "{state}");

    // What the original imported is what we bundled: the same keys, modules, assets and
    // checkpoint manifests byte for byte, records as bundled plus its `source_backend_version`.
    let source = fs_objects(&f.our_source);
    for collection in BUNDLED {
        let got = bucket(&dump, collection);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            source[collection].keys().collect::<Vec<_>>(),
            "{collection}"
        );
        for (key, bytes) in &source[collection] {
            if collection == ALGORITHM_STORE {
                let mut want: Value = serde_json::from_slice(bytes).unwrap();
                want["source_backend_version"] = json!("3.2.0");
                if want.get("checkpoints").is_none() {
                    want["checkpoints"] = json!([]);
                }
                assert_eq!(text_json(&got[key]), want, "{key}");
            } else if collection == CHECKPOINT_STORE {
                let want: Value = serde_json::from_slice(bytes).unwrap();
                assert_eq!(text_json(&got[key]), want, "{key}");
            } else {
                assert_eq!(
                    got[key]["sha256"].as_str().unwrap(),
                    compox::bundle::sha256_hex(bytes),
                    "{collection}/{key}"
                );
            }
        }
    }

    assert!(bucket(&dump, CHECKPOINT_STORE).contains_key(&f.our_checkpoints.parent));

    // Our import of the same bundle writes the same bytes the original's did, the version
    // string aside.
    let ours_target = tempfile::tempdir().unwrap();
    let our_cfg = write_cli_config(ours_target.path());
    ok(
        "our import",
        &Side::Ours.import(&our_cfg, &f.our_bundle, &f.our_bundle_key),
    );
    let our_imported = fs_objects(&ours_target.path().join("store"));
    for collection in [ALGORITHM_STORE, CHECKPOINT_STORE] {
        for (key, bytes) in &our_imported[collection] {
            let ours = String::from_utf8(bytes.clone()).unwrap().replace(
                &format!(
                    "\"source_backend_version\": \"{}\"",
                    env!("CARGO_PKG_VERSION")
                ),
                "\"source_backend_version\": \"3.2.0\"",
            );
            let theirs = bucket(&dump, collection)[key]["text"].as_str().unwrap();
            assert_eq!(ours, theirs, "{collection}/{key}");
        }
    }

    // The original's own server lists both with our ids and runs the one its environment can
    // (all_params; tv_denoiser needs scikit-image, which the original's venv lacks).
    let server = original::OriginalServer::start(&config, target.path());
    let all = server.get("/api/v0/algorithm/all").await;
    assert!(all.is_array(), "{all}\n{}", server.log_text());
    let listed = listed_algorithms(&all);
    assert_eq!(
        listed,
        algorithms_of_records(source[ALGORITHM_STORE].keys())
    );

    let upload = server.upload(&images().join("coins.h5")).await;
    let all_params = &listed.iter().find(|(n, _)| n == "all_params").unwrap().1;
    let body = json!({
        "algorithm_id": all_params,
        "input_dataset_ids": [upload["file_id"]],
        "additional_parameters": {},
    });
    let started = server.post_json("/api/v0/execute-algorithm", &body).await;
    let execution = started["execution_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{started}\n{}", server.log_text()));
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let record = loop {
        let record = server.get(&format!("/api/v0/executions/{execution}")).await;
        if ["COMPLETED", "FAILED", "STOPPED"].contains(&record["status"].as_str().unwrap_or("")) {
            break record;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{record}\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        record["status"],
        "COMPLETED",
        "{record}\n{}",
        server.log_text()
    );
    assert_eq!(record["output_dataset_ids"].as_array().unwrap().len(), 1);
    drop(server);
    drop(moto);
}

// ---------------------------------------------------------------------------------------------
// (c) Keys

#[test]
fn keys_generated_by_either_side_open_bundles_of_the_other() {
    let f = fixture();
    // The fixture's bundles were each built with the other side's key.
    for key in [&f.original_bundle_key, &f.our_bundle_key] {
        assert_eq!(key.len(), 43, "{key}");
        assert!(
            key.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{key}"
        );
    }
    for (bundle, key) in [
        (&f.original_bundle, &f.original_bundle_key),
        (&f.our_bundle, &f.our_bundle_key),
    ] {
        // Both spellings of the same key: base64url unpadded, and standard base64 padded.
        let standard = key.replace('-', "+").replace('_', "/") + "=";
        for k in [key.as_str(), standard.as_str()] {
            assert_eq!(original::open_bundle_code(bundle, k), "ok", "{k}");
            ok("our inspect", &Side::Ours.inspect(bundle, k));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (d) Wrong keys

/// The code in our CLI's `Error: … [code]` line.
fn our_error_code(o: &Output) -> String {
    let text = stderr(o);
    text.rsplit_once('[')
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(code, _)| code.to_string())
        .unwrap_or_else(|| panic!("no error code in {text:?}"))
}

#[test]
fn a_wrong_key_fails_with_the_same_error_on_both() {
    let f = fixture();
    let wrong_keys = [
        (Side::Ours.key(), "invalid_bundle_signature"),
        ("c2hvcnQ".to_string(), "invalid_bundle_key"),
    ];
    for bundle in [&f.original_bundle, &f.our_bundle] {
        for (key, code) in &wrong_keys {
            assert_eq!(&original::open_bundle_code(bundle, key), code, "{key}");
            let theirs = Side::Original.inspect(bundle, key);
            assert!(!theirs.status.success());
            assert!(
                stderr(&theirs).contains("CompoxBundleError"),
                "{}",
                stderr(&theirs)
            );
            let mine = Side::Ours.inspect(bundle, key);
            assert_eq!(mine.status.code(), Some(1));
            assert_eq!(&our_error_code(&mine), code, "{key}");
        }
    }

    // Importing with a wrong key fails on both, and both state documents record the same
    // failure with the same fields.
    let (key, code) = &wrong_keys[0];
    let moto = Moto::start();
    let theirs_dir = tempfile::tempdir().unwrap();
    let config = original::write_config(theirs_dir.path(), moto.port);
    let theirs = Side::Original.import(&config, &f.our_bundle, key);
    assert!(!theirs.status.success());
    let dump = original::s3_dump(&moto.endpoint(), &JSON_BUCKETS, theirs_dir.path());
    let theirs_state = text_json(&bucket(&dump, "system-store")["migration-state"]);
    drop(moto);

    let ours_dir = tempfile::tempdir().unwrap();
    let config = write_cli_config(ours_dir.path());
    let mine = Side::Ours.import(&config, &f.original_bundle, key);
    assert_eq!(mine.status.code(), Some(1), "{}", stderr(&mine));
    let text = std::fs::read_to_string(ours_dir.path().join("store/system-store/migration-state"))
        .unwrap();
    let our_state: Value = serde_json::from_str(&text).unwrap();

    for state in [&theirs_state, &our_state] {
        assert_eq!(state["last_import_status"], "FAILED", "{state}");
        assert_eq!(&state["error_code"], code, "{state}");
        assert_eq!(state["rollback_status"], "COMPLETED", "{state}");
    }
    let fields = |s: &Value| s.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(fields(&our_state), fields(&theirs_state));
}

// ---------------------------------------------------------------------------------------------
// Both files, byte level

/// Checks a bundle with plain Python (zipfile, json, hmac, and `cryptography`'s AES-GCM, none of
/// the original's code) against the format the original writes: prints one JSON report.
const LAYOUT_CHECK: &str = r#"
import base64, hashlib, hmac, json, re, sys, zipfile
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

path, key_text = sys.argv[1], sys.argv[2]
key = base64.urlsafe_b64decode(key_text + "=" * (-len(key_text) % 4))
z = zipfile.ZipFile(path)
infos = z.infolist()
names = [i.filename for i in infos]
raw = z.read("manifest.json")
m = json.loads(raw)
meta = dict(m["metadata"])
content = meta.pop("content_sha256")
descriptor = {"format": m["format"], "encryption": m["encryption"],
              "collections": m["collections"], "metadata": meta, "objects": m["objects"]}
blobs_ok = True
for i, o in enumerate(m["objects"]):
    nonce = base64.b64decode(o["nonce_b64"], validate=True)
    plain = AESGCM(key).decrypt(nonce, z.read(o["blob"]), None)
    blobs_ok &= (o["blob"] == "objects/%08d.bin" % i and len(nonce) == 12
                 and len(o["nonce_b64"]) == 16 and len(plain) == o["size"]
                 and hashlib.sha256(plain).hexdigest() == o["sha256"]
                 and sorted(o) == ["blob", "collection", "key", "nonce_b64", "sha256", "size"])
print(json.dumps({
    "member_order": names == [o["blob"] for o in m["objects"]] + ["manifest.json", "manifest.hmac"],
    "deflated": all(i.compress_type == zipfile.ZIP_DEFLATED for i in infos),
    "manifest_bytes": json.dumps(m, separators=(",", ":"), sort_keys=True).encode() == raw,
    "top_level": sorted(m) == ["collections", "encryption", "format", "metadata", "objects"],
    "metadata_fields": sorted(m["metadata"]) == ["bundle_kind", "compox_version", "content_sha256", "created_at"],
    "created_at": re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?\+00:00", m["metadata"]["created_at"]) is not None,
    "collections": m["collections"] == sorted(set(m["collections"])),
    "content_sha256": hashlib.sha256(json.dumps(descriptor, separators=(",", ":"), sort_keys=True).encode()).hexdigest() == content,
    "hmac": z.read("manifest.hmac") == hmac.new(key, raw, hashlib.sha256).hexdigest().encode(),
    "blobs": blobs_ok,
}))
"#;

#[test]
fn both_bundles_have_the_layout_the_original_writes() {
    let f = fixture();
    for (bundle, key) in [
        (&f.original_bundle, &f.original_bundle_key),
        (&f.our_bundle, &f.our_bundle_key),
    ] {
        let report = ok(
            "layout check",
            &original::py(LAYOUT_CHECK, &[bundle.to_str().unwrap(), key], &f.dir),
        );
        let report: Value = serde_json::from_str(&report).unwrap();
        for (check, passed) in report.as_object().unwrap() {
            assert_eq!(passed, &json!(true), "{}: {check}", bundle.display());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Semantic import parity

/// Replaces what two imports at different moments or by different versions write differently:
/// the stamp of a minor version the merge added, and `source_backend_version`.
fn comparable(record: &Value) -> Value {
    let mut r = record.clone();
    if let Some(minors) = r
        .get_mut("algorithm_minor_version")
        .and_then(Value::as_object_mut)
    {
        for minor in minors.values_mut() {
            minor["timestamp"] = json!("<time>");
        }
    }
    r["source_backend_version"] = json!("<version>");
    r
}

#[test]
fn merging_into_existing_algorithms_gives_what_the_original_gives() {
    let f = fixture();
    // Two equal targets: our bundle imported into an empty store of each side. Then the
    // original's bundle goes into both: its tv_denoiser meets ours (same name and major, another
    // module), so each side keeps our id and adds a minor; threshold_segmenter is new.
    let moto = Moto::start();
    let theirs_dir = tempfile::tempdir().unwrap();
    let config = original::write_config(theirs_dir.path(), moto.port);
    let ours_dir = tempfile::tempdir().unwrap();
    let our_cfg = write_cli_config(ours_dir.path());
    for (bundle, key) in [
        (&f.our_bundle, &f.our_bundle_key),
        (&f.original_bundle, &f.original_bundle_key),
    ] {
        ok(
            "the original's import",
            &Side::Original.import(&config, bundle, key),
        );
        ok("our import", &Side::Ours.import(&our_cfg, bundle, key));
    }
    let dump = original::s3_dump(&moto.endpoint(), &JSON_BUCKETS, theirs_dir.path());
    drop(moto);
    let mine = fs_objects(&ours_dir.path().join("store"));

    for collection in BUNDLED {
        let theirs = bucket(&dump, collection);
        assert_eq!(
            mine[collection].keys().collect::<Vec<_>>(),
            theirs.keys().collect::<Vec<_>>(),
            "{collection}"
        );
        for (key, bytes) in &mine[collection] {
            let ours: Option<Value> = serde_json::from_slice(bytes).ok();
            match collection {
                ALGORITHM_STORE => {
                    let ours = ours.unwrap();
                    assert_eq!(
                        comparable(&ours),
                        comparable(&text_json(&theirs[key])),
                        "{key}"
                    );
                }
                CHECKPOINT_STORE => {
                    // The one deliberate difference: ours also points `parent_algorithm_key` at
                    // the kept algorithm (platform.md §5.5 step 5), the original leaves it stale.
                    let (mut ours, mut theirs) = (ours.unwrap(), text_json(&theirs[key]));
                    let kept = ours["parent_algorithm_id"].as_str().unwrap().to_string();
                    assert!(
                        ours["parent_algorithm_key"]
                            .as_str()
                            .unwrap()
                            .starts_with(&format!("{kept}~")),
                        "{ours}"
                    );
                    ours["parent_algorithm_key"] = Value::Null;
                    theirs["parent_algorithm_key"] = Value::Null;
                    assert_eq!(ours, theirs, "{key}");
                }
                _ => assert_eq!(
                    compox::bundle::sha256_hex(bytes),
                    theirs[key]["sha256"].as_str().unwrap(),
                    "{collection}/{key}"
                ),
            }
        }
    }

    let tv = mine[ALGORITHM_STORE]
        .iter()
        .find(|(k, _)| k.contains("~tv_denoiser~"))
        .map(|(_, b)| serde_json::from_slice::<Value>(b).unwrap())
        .unwrap();
    assert_eq!(tv["latest_algorithm_minor_version"], "1", "{tv}");
    assert_eq!(
        tv["checkpoints"],
        json!([f.our_checkpoints.child, f.original_checkpoints.child])
    );

    let their_state = text_json(&bucket(&dump, "system-store")["migration-state"]);
    let text = std::fs::read_to_string(ours_dir.path().join("store/system-store/migration-state"))
        .unwrap();
    let our_state: Value = serde_json::from_str(&text).unwrap();
    let fields = |s: &Value| s.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(fields(&our_state), fields(&their_state));
    assert_eq!(
        our_state["imported_algorithms"],
        their_state["imported_algorithms"]
    );
}

// ---------------------------------------------------------------------------------------------
// Large bundles

#[test]
fn original_bundles_past_the_zip64_limits_import_into_ours() {
    let f = fixture();
    let bundle = &f.original_zip64_bundle;
    let key = &f.original_bundle_key;
    inspect_on_both(bundle, key);

    let zip64 = tempfile::tempdir().unwrap();
    let out = ok(
        "our import",
        &Side::Ours.import(&write_cli_config(zip64.path()), bundle, key),
    );
    assert!(out.contains("Algorithms imported: 2"), "{out}");
    let plain = tempfile::tempdir().unwrap();
    ok(
        "our import",
        &Side::Ours.import(&write_cli_config(plain.path()), &f.original_bundle, key),
    );
    let digest = |dir: &Path| {
        fs_objects(&dir.join("store"))
            .into_iter()
            .map(|(c, objects)| {
                let objects: BTreeMap<String, String> = objects
                    .into_iter()
                    .map(|(k, b)| (k, compox::bundle::sha256_hex(&b)))
                    .collect();
                (c, objects)
            })
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(digest(zip64.path()), digest(plain.path()));
}
