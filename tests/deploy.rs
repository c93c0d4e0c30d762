//! Integration tests for algorithm deployment: the deploy endpoints (D1–D4), the algorithm
//! endpoints (A1–A3), the `deploy-algorithms` command and the HTTP-client commands, each against a
//! real server started on a free loopback port with its own storage folder.

mod common;

use common::{
    algorithms_dir, assert_golden, golden, invalid_algorithms_dir, normalize, Server, TestStore,
};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            if entry.file_name() != "__pycache__" {
                copy_dir(&entry.path(), &to);
            }
        } else {
            std::fs::copy(entry.path(), &to).unwrap();
        }
    }
}

/// Copies `tests/algorithms/<name>` to `<into>/<as_name>`.
fn copy_algorithm(name: &str, into: &Path, as_name: &str) -> PathBuf {
    let dst = into.join(as_name);
    copy_dir(&algorithms_dir().join(name), &dst);
    dst
}

/// Rewrites `<dir>/pyproject.toml` with one textual replacement (which must apply).
fn edit_pyproject(dir: &Path, from: &str, to: &str) {
    let path = dir.join("pyproject.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{from:?} not in {}", path.display());
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

fn rename_algorithm(dir: &Path, old: &str, new: &str) {
    edit_pyproject(
        dir,
        &format!("name = \"{old}\""),
        &format!("name = \"{new}\""),
    );
}

/// Every file under `dir`, as forward-slash paths relative to `top`, with `top` as a prefix.
fn zip_entries(dir: &Path, base: &Path, out: &mut Vec<(String, PathBuf)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if e.file_type().unwrap().is_dir() {
            zip_entries(&e.path(), base, out);
        } else {
            let rel = e
                .path()
                .strip_prefix(base)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            out.push((rel, e.path()));
        }
    }
}

/// Zips the folder `src`; entries sit under `<top>/` when `top` is given.
fn zip_dir(src: &Path, zip_path: &Path, top: Option<&str>) {
    let mut files = Vec::new();
    zip_entries(src, src, &mut files);
    let mut z = zip::ZipWriter::new(std::fs::File::create(zip_path).unwrap());
    let opts = zip::write::SimpleFileOptions::default();
    for (rel, path) in files {
        let name = match top {
            Some(t) => format!("{t}/{rel}"),
            None => rel,
        };
        z.start_file(name, opts).unwrap();
        z.write_all(&std::fs::read(path).unwrap()).unwrap();
    }
    z.finish().unwrap();
}

/// Keys of one storage collection.
fn keys(server: &Server, collection: &str) -> BTreeSet<String> {
    list_keys(server.test_store(), collection)
}

fn list_keys(store: &TestStore, collection: &str) -> BTreeSet<String> {
    store.keys(collection).into_iter().collect()
}

/// The stored record (`algorithm-store/<id>~<name>~<major>`) of an algorithm id: key and JSON.
fn stored_record(server: &Server, algorithm_id: &str) -> (String, Value) {
    let key = keys(server, "algorithm-store")
        .into_iter()
        .find(|k| k.starts_with(&format!("{algorithm_id}~")))
        .unwrap_or_else(|| panic!("no record for {algorithm_id}"));
    let bytes = server.store_read("algorithm-store", &key).unwrap();
    (key, serde_json::from_slice(&bytes).unwrap())
}

fn minor_keys(record: &Value) -> Vec<String> {
    record["algorithm_minor_version"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

fn object_keys(v: &Value) -> Vec<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

fn is_uuid_v1(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok_and(|u| u.get_version_num() == 1)
        && s == s.to_lowercase()
        && s.len() == 36
}

async fn deploy_with(server: &Server, path: &Path, extra: &[(&str, &str)]) -> (u16, Value) {
    let mut query = vec![("path".to_string(), path.display().to_string())];
    query.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let r = server
        .client
        .post(server.url("/api/v0/deploy/local"))
        .query(&query)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn deploy_path_ok(server: &Server, path: &Path, extra: &[(&str, &str)]) -> Value {
    let (status, body) = deploy_with(server, path, extra).await;
    assert_eq!(
        status,
        200,
        "deploy {}: {body}\n{}",
        path.display(),
        server.log_text()
    );
    body
}

async fn get_text(server: &Server, path: &str) -> (u16, String) {
    let r = server.client.get(server.url(path)).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// `GET .../export`: status, headers and body bytes.
async fn export(server: &Server, path: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let r = server.client.get(server.url(path)).send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.bytes().await.unwrap().to_vec())
}

fn zip_names(bytes: &[u8]) -> BTreeSet<String> {
    let z = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    z.file_names().map(str::to_string).collect()
}

fn zip_member(bytes: &[u8], name: &str) -> Vec<u8> {
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut out = Vec::new();
    z.by_name(name).unwrap().read_to_end(&mut out).unwrap();
    out
}

fn names_of(items: &Value) -> Vec<String> {
    items
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {items}"))
        .iter()
        .map(|i| i["algorithm_name"].as_str().unwrap().to_string())
        .collect()
}

/// Runs the `compox` binary with `args` in `cwd`, outside any virtual environment.
fn compox(args: &[&str], cwd: &Path) -> Output {
    Command::new(common::EXE)
        .args(args)
        .current_dir(cwd)
        .env_remove("VIRTUAL_ENV")
        .output()
        .expect("run compox")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A server config for `deploy-algorithms` on the store a server started in `dir` uses.
fn cli_config(dir: &Path, port: u16) -> PathBuf {
    let path = dir.join("cli.yaml");
    let yaml = format!(
        "port: {port}\nlog_path: {log}\n{storage}inference:\n  device: cpu\n  python_env: {venv}\n",
        log = dir.join("logs/cli.log").display(),
        storage = TestStore::for_dir(dir).storage_yaml(),
        venv = common::venv().display(),
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

// ---------------------------------------------------------------------------------------------
// Deploy and the record shape (D1, A1, A2)
// ---------------------------------------------------------------------------------------------

/// D1 for every test algorithm; the response and the stored record (`algorithms.md` §3.1).
#[tokio::test]
async fn every_test_algorithm_deploys_with_a_v1_id_and_a_stored_record() {
    let server = Server::start();
    let mut folders: Vec<String> = std::fs::read_dir(algorithms_dir())
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    folders.sort();
    assert!(folders.len() >= 16, "{folders:?}");
    for name in &folders {
        let (status, body) = server.deploy(&algorithms_dir().join(name)).await;
        assert_eq!(status, 200, "{name}: {body}\n{}", server.log_text());
        // D1 `AlgorithmDeployResponse`, fields in this order.
        assert_eq!(
            object_keys(&body),
            [
                "algorithm_id",
                "algorithm_name",
                "algorithm_major_version",
                "algorithm_minor_version"
            ]
        );
        assert_eq!(body["algorithm_name"], name.as_str());
        assert_eq!(body["algorithm_major_version"], "1");
        assert_eq!(body["algorithm_minor_version"], "0");
        let id = body["algorithm_id"].as_str().unwrap();
        assert!(is_uuid_v1(id), "{id}");

        let (key, rec) = stored_record(&server, id);
        assert_eq!(key, format!("{id}~{name}~1"));
        // The deployer's field order (§3.1), minors as an object keyed by string.
        assert_eq!(
            object_keys(&rec),
            [
                "algorithm_id",
                "algorithm_name",
                "algorithm_major_version",
                "latest_algorithm_minor_version",
                "algorithm_minor_version",
                "algorithm_type",
                "algorithm_tags",
                "algorithm_description",
                "supported_devices",
                "default_device",
                "additional_parameters",
                "training_parameters",
                "benchmark_outputs",
                "removable",
                "exportable",
                "timestamp",
                "storage_metrics",
            ],
            "{name}"
        );
        assert_eq!(rec["latest_algorithm_minor_version"], "0");
        let entry = &rec["algorithm_minor_version"]["0"];
        assert_eq!(object_keys(entry), ["timestamp", "module_id", "assets"]);
        let module_id = entry["module_id"].as_str().unwrap();
        assert!(module_id.len() == 32 && module_id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(server.store_exists("module-store", module_id));
        // pyproject.toml is an asset, keyed by the MD5 of its bytes.
        let pyproject = std::fs::read(algorithms_dir().join(name).join("pyproject.toml")).unwrap();
        let md5 = md5_hex(&pyproject);
        assert_eq!(entry["assets"]["pyproject.toml"], md5.as_str(), "{name}");
        assert!(server.store_exists("asset-store", &md5));
        // Written with four-space indentation, UTC timestamps with +00:00.
        let raw = String::from_utf8(server.store_read("algorithm-store", &key).unwrap()).unwrap();
        assert!(raw.starts_with("{\n    \"algorithm_id\": "), "{raw}");
        let ts = rec["timestamp"].as_str().unwrap();
        assert!(ts.len() == 25 && ts.ends_with("+00:00"), "{ts}");
    }
    let (status, all) = server.get("/api/v0/algorithm/all").await;
    assert_eq!(status, 200);
    let mut listed = names_of(&all);
    listed.sort();
    assert_eq!(listed, folders);
}

fn md5_hex(bytes: &[u8]) -> String {
    use md5::{Digest, Md5};
    hex::encode(Md5::digest(bytes))
}

/// A1 item shape and parameter normalisation (`algorithms.md` §1.5, `rest-api.md` A1).
#[tokio::test]
async fn all_params_record_is_normalised_and_keeps_floats() {
    let server = Server::start();
    server.deploy_ok("all_params").await;
    let (status, raw) = get_text(&server, "/api/v0/algorithm/all_params/1").await;
    assert_eq!(status, 200, "{raw}");
    let body: Value = serde_json::from_str(&raw).unwrap();
    let (_, golden_body) = golden("algorithm_one_get");
    assert_eq!(
        object_keys(&body),
        object_keys(&golden_body),
        "A1 fields and order"
    );
    assert_eq!(body["algorithm_version"], "1");
    assert_eq!(
        body["algorithm_minor_version"], "0",
        "a string, not the stored object"
    );
    assert_eq!(body["latest_algorithm_minor_version"], "0");
    assert_eq!(body["algorithm_minor_versions"], json!(["0"]));
    assert_eq!(body["algorithm_type"], "Generic");
    assert_eq!(body["removable"], false);
    assert_eq!(body["exportable"], true);

    let params = body["additional_parameters"].as_array().unwrap();
    assert_eq!(params.len(), 13);
    let golden_param = &golden_body["additional_parameters"][0];
    for p in params {
        assert_eq!(object_keys(p), object_keys(golden_param));
        assert_eq!(
            object_keys(&p["config"]),
            object_keys(&golden_param["config"])
        );
    }
    let displayed: Vec<(&str, &str)> = params
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                p["displayed_name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        displayed,
        [
            ("label", "Label"),
            ("iterations", "Iterations"),
            ("scale", "Scale factor"),
            ("verbose", "Verbose output"),
            ("tile-size", "Tile size"),
            ("alpha", "Alpha"),
            ("__noise__model", "Noise model"),
            ("levels", "Pyramid levels"),
            ("gamma", "Gamma"),
            ("channel_names", "Channel names"),
            ("kernel_sizes", "Kernel sizes"),
            ("weights", "Weights"),
            ("flags", "Flags"),
        ]
    );
    // The JSON text keeps int and float apart; an int_enum without default gets options[0].
    for config in [
        r#""config":{"type":"int_enum","default":2,"adjustable":true,"options":[2,4,8],"min":null,"max":null,"step":null,"decimal_precision":null}"#,
        r#""config":{"type":"float_enum","default":1.0,"adjustable":true,"options":[0.5,1.0,2.2],"min":null,"max":null,"step":null,"decimal_precision":null}"#,
        r#""config":{"type":"float_range","default":0.5,"adjustable":true,"options":[],"min":0.0,"max":1.0,"step":0.1,"decimal_precision":1}"#,
        r#""config":{"type":"int_range","default":64,"adjustable":true,"options":[],"min":16,"max":512,"step":16,"decimal_precision":null}"#,
        r#""config":{"type":"float","default":1.5,"adjustable":true,"options":[],"min":null,"max":null,"step":null,"decimal_precision":3}"#,
        r#""config":{"type":"bool","default":true,"adjustable":false,"options":[],"min":null,"max":null,"step":null,"decimal_precision":null}"#,
        r#""config":{"type":"float_list","default":[0.25,0.75],"adjustable":true,"options":[[0.25,0.75],[0.5,0.5]],"min":null,"max":null,"step":null,"decimal_precision":null}"#,
        r#""config":{"type":"bool_list","default":[true,false],"adjustable":true,"options":[[true,false],[false]],"min":null,"max":null,"step":null,"decimal_precision":null}"#,
    ] {
        assert!(raw.contains(config), "{config} not in {raw}");
    }
    assert_eq!(body["training_parameters"], json!([]));
    assert_eq!(body["benchmark_outputs"], json!([]));

    // The stored record holds the same normalised form (float `1.0` stays a float).
    let id = body["algorithm_id"].as_str().unwrap();
    let (_, rec) = stored_record(&server, id);
    assert_eq!(rec["additional_parameters"], body["additional_parameters"]);
    assert!(rec["additional_parameters"][8]["config"]["default"].is_f64());
    assert!(rec["additional_parameters"][7]["config"]["default"].is_u64());

    // A1 matches name and major case-insensitively; A2 lists the same item.
    let (status, upper) = server.get("/api/v0/algorithm/ALL_PARAMS/1").await;
    assert_eq!(status, 200);
    assert_eq!(upper, body);
    let (_, all) = server.get("/api/v0/algorithm/all").await;
    assert_eq!(all, json!([body]));
}

/// An algorithm with the metadata of the golden recording answers A1 exactly like it.
#[tokio::test]
async fn a1_matches_the_golden_recordings() {
    let server = Server::start();
    // A1 and A2 on an empty store (`rest-api.md` §8 item 2).
    let (status, body) = server.get("/api/v0/algorithm/no_such_algorithm/1").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("no_algorithms_found")),
        "{body}"
    );
    assert_eq!(body["detail"], "No algorithms found in the algorithm store");
    let (status, body) = server.get("/api/v0/algorithm/all").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("no_algorithms_found")),
        "{body}"
    );

    let (_, g) = golden("algorithm_one_get");
    let work = tempfile::tempdir().unwrap();
    let dir = copy_algorithm("tv_denoiser", work.path(), "template_denosing_algorithm");
    let p = &g["additional_parameters"][0];
    let q = |v: &Value| serde_json::to_string(v).unwrap();
    let pyproject = format!(
        "[project]\nname = {name}\nversion = \"1.0.0\"\n\n[tool.compox]\nalgorithm_type = {ty}\ntags = {tags}\ndescription = {desc}\nsupported_devices = {devices}\ndefault_device = {default}\n\n[[tool.compox.additional_parameters]]\nname = {pname}\ndisplayed_name = {pdisp}\ndescription = {pdesc}\nconfig = {{ type = \"float_range\", default = 0.1, adjustable = true, min = 0.0, max = 1.0, step = 0.05 }}\n",
        name = q(&g["algorithm_name"]),
        ty = q(&g["algorithm_type"]),
        tags = q(&g["algorithm_tags"]),
        desc = q(&g["algorithm_description"]),
        devices = q(&g["supported_devices"]),
        default = q(&g["default_device"]),
        pname = q(&p["name"]),
        pdisp = q(&p["displayed_name"]),
        pdesc = q(&p["description"]),
    );
    std::fs::write(dir.join("pyproject.toml"), pyproject).unwrap();
    deploy_path_ok(&server, &dir, &[]).await;
    server.deploy_ok("threshold_segmenter").await;

    for (name, path) in [
        (
            "algorithm_one_get",
            "/api/v0/algorithm/template_denosing_algorithm/1",
        ),
        (
            "algorithm_one_get_case_insensitive",
            "/api/v0/algorithm/TEMPLATE_DENOSING_ALGORITHM/1",
        ),
    ] {
        let (status, body) = server.get(path).await;
        assert_golden(name, status, &body);
        assert_eq!(
            object_keys(&body),
            object_keys(&golden(name).1),
            "{name}: field order"
        );
        assert_eq!(
            object_keys(&body["storage_metrics"]),
            object_keys(&golden(name).1["storage_metrics"])
        );
    }
    let (status, body) = server.get("/api/v0/algorithm/no_such_algorithm/1").await;
    assert_golden("err_algorithm_one_get_unknown", status, &body);
    // Majors compare as strings: "01" is not "1".
    let (status, _) = server
        .get("/api/v0/algorithm/template_denosing_algorithm/01")
        .await;
    assert_eq!(status, 404);

    // A2 filtered by type and device, as recorded (the recording's other item is not deployed).
    let (status, items) = server
        .get("/api/v0/algorithm/all?algorithm_type=image2image&supported_devices=gpu")
        .await;
    let (gs, gitems) = golden("algorithm_all_get_filter_type_device");
    assert_eq!(status, gs);
    let expected: Vec<Value> = gitems
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["algorithm_name"] == "template_denosing_algorithm")
        .cloned()
        .collect();
    assert_eq!(normalize(&items), normalize(&json!(expected)));
}

// ---------------------------------------------------------------------------------------------
// Redeploy rules (`algorithms.md` §2.6)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn redeploy_adds_a_minor_only_for_changed_content() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let dir = copy_algorithm("tv_denoiser", work.path(), "tv_denoiser");

    let first = deploy_path_ok(&server, &dir, &[]).await;
    assert_eq!(first["algorithm_minor_version"], "0");
    let id = first["algorithm_id"].as_str().unwrap().to_string();
    let modules = keys(&server, "module-store");
    let assets = keys(&server, "asset-store");
    assert_eq!(modules.len(), 1);

    // Same content: same id, same minor, nothing new stored.
    let again = deploy_path_ok(&server, &dir, &[]).await;
    assert_eq!(again, first);
    assert_eq!(keys(&server, "module-store"), modules);
    assert_eq!(keys(&server, "asset-store"), assets);
    let (_, rec) = stored_record(&server, &id);
    assert_eq!(minor_keys(&rec), ["0"]);

    // A changed asset: new minor "1" with the same module.
    std::fs::write(
        dir.join("files/config/defaults.json"),
        "{\"denoising_weight\": 0.2}\n",
    )
    .unwrap();
    let changed = deploy_path_ok(&server, &dir, &[]).await;
    assert_eq!(changed["algorithm_id"], id.as_str());
    assert_eq!(changed["algorithm_minor_version"], "1");
    let (_, rec) = stored_record(&server, &id);
    assert_eq!(minor_keys(&rec), ["0", "1"]);
    assert_eq!(rec["latest_algorithm_minor_version"], "1");
    let m = &rec["algorithm_minor_version"];
    assert_eq!(m["0"]["module_id"], m["1"]["module_id"], "module reused");
    assert_eq!(
        m["0"]["assets"]["pyproject.toml"],
        m["1"]["assets"]["pyproject.toml"]
    );
    assert_ne!(
        m["0"]["assets"]["files/config/defaults.json"],
        m["1"]["assets"]["files/config/defaults.json"]
    );
    assert_eq!(
        keys(&server, "module-store"),
        modules,
        "no new module for an asset change"
    );
    assert_eq!(keys(&server, "asset-store").len(), assets.len() + 1);
    let (_, a1) = server.get("/api/v0/algorithm/tv_denoiser/1").await;
    assert_eq!(a1["algorithm_minor_versions"], json!(["0", "1"]));
    assert_eq!(a1["algorithm_minor_version"], "1");

    // A changed module: new minor "2".
    let runner = dir.join("Runner.py");
    let code = std::fs::read_to_string(&runner).unwrap();
    std::fs::write(&runner, format!("{code}\n\nCHANGED = 1\n")).unwrap();
    let code_changed = deploy_path_ok(&server, &dir, &[]).await;
    assert_eq!(code_changed["algorithm_minor_version"], "2");
    let (_, rec) = stored_record(&server, &id);
    let m = &rec["algorithm_minor_version"];
    assert_ne!(m["1"]["module_id"], m["2"]["module_id"]);
    assert_eq!(m["1"]["assets"], m["2"]["assets"]);
    assert_eq!(keys(&server, "module-store").len(), 2);
}

/// After the first deploy the pyproject minor is ignored and the metadata stays frozen (§2.6).
#[tokio::test]
async fn version_bump_gets_the_next_minor_not_the_pyproject_one() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let dir = copy_algorithm("noop", work.path(), "noop");
    let first = deploy_path_ok(&server, &dir, &[]).await;
    assert_eq!(first["algorithm_minor_version"], "0");

    edit_pyproject(&dir, "version = \"1.0.0\"", "version = \"1.7.0\"");
    edit_pyproject(
        &dir,
        "tags = [\"test\", \"benchmark\"]",
        "tags = [\"changed\"]",
    );
    let bumped = deploy_path_ok(&server, &dir, &[]).await;
    assert_eq!(bumped["algorithm_id"], first["algorithm_id"]);
    assert_eq!(
        bumped["algorithm_minor_version"], "1",
        "the stored minor, not 7"
    );
    let (_, a1) = server.get("/api/v0/algorithm/noop/1").await;
    assert_eq!(a1["algorithm_minor_versions"], json!(["0", "1"]));
    assert_eq!(
        a1["algorithm_tags"],
        json!(["test", "benchmark"]),
        "metadata frozen"
    );
    let (_, rec) = stored_record(&server, first["algorithm_id"].as_str().unwrap());
    let m = &rec["algorithm_minor_version"];
    assert_eq!(m["0"]["module_id"], m["1"]["module_id"]);

    // A new major is a separate algorithm with its own id and the pyproject minor.
    edit_pyproject(&dir, "version = \"1.7.0\"", "version = \"2.3.0\"");
    let major2 = deploy_path_ok(&server, &dir, &[]).await;
    assert_ne!(major2["algorithm_id"], first["algorithm_id"]);
    assert_eq!(major2["algorithm_major_version"], "2");
    assert_eq!(major2["algorithm_minor_version"], "3");
    let (_, a2) = server.get("/api/v0/algorithm/noop/2").await;
    assert_eq!(a2["algorithm_tags"], json!(["changed"]));
}

// ---------------------------------------------------------------------------------------------
// Zip input and path checks (`algorithms.md` §1.10, `rest-api.md` D1)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn zip_input_and_path_errors() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();

    // A zip with one top-level folder deploys like the folder; the same content adds no minor.
    let zip = work.path().join("tv.zip");
    zip_dir(
        &algorithms_dir().join("tv_denoiser"),
        &zip,
        Some("tv_denoiser"),
    );
    let from_zip = deploy_path_ok(&server, &zip, &[]).await;
    assert_eq!(from_zip["algorithm_name"], "tv_denoiser");
    assert_eq!(from_zip["algorithm_minor_version"], "0");
    let from_dir = deploy_path_ok(&server, &algorithms_dir().join("tv_denoiser"), &[]).await;
    assert_eq!(from_dir, from_zip);
    // A flat zip (files at the archive root) with an upper-case suffix works too.
    let flat = work.path().join("NOOP.ZIP");
    zip_dir(&algorithms_dir().join("noop"), &flat, None);
    let noop = deploy_path_ok(&server, &flat, &[]).await;
    assert_eq!(noop["algorithm_name"], "noop");

    let before: Vec<_> = ["module-store", "asset-store", "algorithm-store"]
        .iter()
        .map(|c| keys(&server, c))
        .collect();

    // Zip slip.
    let evil = work.path().join("evil.zip");
    {
        let mut z = zip::ZipWriter::new(std::fs::File::create(&evil).unwrap());
        let opts = zip::write::SimpleFileOptions::default();
        for (name, body) in [
            (
                "algo/pyproject.toml",
                std::fs::read(algorithms_dir().join("noop/pyproject.toml")).unwrap(),
            ),
            (
                "algo/Runner.py",
                std::fs::read(algorithms_dir().join("noop/Runner.py")).unwrap(),
            ),
            ("../evil.py", b"print('escaped')\n".to_vec()),
        ] {
            z.start_file(name, opts).unwrap();
            z.write_all(&body).unwrap();
        }
        z.finish().unwrap();
    }
    let (status, body) = deploy_with(&server, &evil, &[]).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_deployment_zip")),
        "{body}"
    );
    assert_eq!(
        body["detail"],
        format!("Invalid algorithm deployment zip: {}", evil.display())
    );
    assert!(!work.path().join("evil.py").exists());

    // A zip whose pyproject.toml is invalid: the message names the zip, not where it was
    // extracted to.
    let bad_project = work.path().join("bad_project.zip");
    {
        let mut z = zip::ZipWriter::new(std::fs::File::create(&bad_project).unwrap());
        let opts = zip::write::SimpleFileOptions::default();
        for (name, body) in [
            ("algo/pyproject.toml", b"[project\n".to_vec()),
            (
                "algo/Runner.py",
                std::fs::read(algorithms_dir().join("noop/Runner.py")).unwrap(),
            ),
        ] {
            z.start_file(name, opts).unwrap();
            z.write_all(&body).unwrap();
        }
        z.finish().unwrap();
    }
    let (status, body) = deploy_with(&server, &bad_project, &[]).await;
    assert_eq!(status, 400, "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!(
            "Invalid pyproject.toml in {}:",
            bad_project.display()
        )),
        "{detail}"
    );
    assert!(!detail.contains("unzipped"), "{detail}");

    // Not a zip, though named like one.
    let fake = work.path().join("fake.zip");
    std::fs::write(&fake, "this is not a zip archive").unwrap();
    let (status, body) = deploy_with(&server, &fake, &[]).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_deployment_zip")),
        "{body}"
    );

    // Neither a folder nor a zip.
    let plain = work.path().join("algo.tar");
    std::fs::write(&plain, "x").unwrap();
    let (status, body) = deploy_with(&server, &plain, &[]).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_deploy_path_type")),
        "{body}"
    );
    assert_eq!(body["detail"], "Path must be a directory or a .zip file.");
    assert_eq!(
        body["details"],
        json!({"path": plain.display().to_string()})
    );

    // Missing.
    let missing = work.path().join("nowhere");
    let (status, body) = deploy_with(&server, &missing, &[]).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("deploy_path_not_found")),
        "{body}"
    );
    assert_eq!(
        body["detail"],
        format!("Path not found: {}", missing.display())
    );
    assert_eq!(
        body["details"],
        json!({"path": missing.display().to_string()})
    );
    assert_eq!(body["retryable"], false);

    // No `path` at all: request validation.
    let (status, body) = server.post("/api/v0/deploy/local").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["detail"][0]["loc"], json!(["query", "path"]));

    let after: Vec<_> = ["module-store", "asset-store", "algorithm-store"]
        .iter()
        .map(|c| keys(&server, c))
        .collect();
    assert_eq!(before, after, "failed deploys wrote nothing");
}

/// Every folder of `tests/algorithms_invalid` is refused with a message naming the file and key.
#[tokio::test]
async fn invalid_algorithms_are_refused_and_write_nothing() {
    let server = Server::start();
    server.deploy_ok("noop").await;
    let snapshot = || -> Vec<BTreeSet<String>> {
        ["module-store", "asset-store", "algorithm-store"]
            .iter()
            .map(|c| keys(&server, c))
            .collect()
    };
    let before = snapshot();
    let expected: &[(&str, &str, &[&str])] = &[
        (
            "bad_device",
            "algorithm_deploy_failed",
            &[
                "pyproject.toml",
                "[tool.compox].default_device",
                "Default device 'gpu' is not in the list of supported devices",
            ],
        ),
        (
            "bad_toml",
            "algorithm_deploy_failed",
            &["Invalid pyproject.toml in", "bad_toml"],
        ),
        (
            "bad_version",
            "algorithm_deploy_failed",
            &["pyproject.toml", "[project].version", "v1.0"],
        ),
        (
            "float_int_default",
            "algorithm_deploy_failed",
            &[
                "pyproject.toml",
                "[tool.compox].additional_parameters[0].config.default",
            ],
        ),
        (
            "legacy_flat_param",
            "algorithm_deploy_failed",
            &[
                "pyproject.toml",
                "[tool.compox].additional_parameters[0].config",
                "Field required",
            ],
        ),
        (
            "missing_name",
            "algorithm_deploy_failed",
            &["pyproject.toml", "[project].name"],
        ),
        (
            "no_runner",
            "algorithm_runner_not_found",
            &["Runner.py", "no_runner"],
        ),
        (
            "tilde_name",
            "algorithm_deploy_failed",
            &["pyproject.toml", "[project].name", "'~'"],
        ),
    ];
    let mut folders: Vec<String> = std::fs::read_dir(invalid_algorithms_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    folders.sort();
    assert_eq!(
        folders,
        expected.iter().map(|e| e.0).collect::<Vec<_>>(),
        "a new invalid folder needs an entry here"
    );
    for (folder, code, needles) in expected {
        let path = invalid_algorithms_dir().join(folder);
        let (status, body) = server.deploy(&path).await;
        assert!((400..500).contains(&status), "{folder}: {status} {body}");
        assert_eq!(body["code"], *code, "{folder}: {body}");
        let detail = body["detail"].as_str().unwrap_or_default();
        for n in *needles {
            assert!(detail.contains(n), "{folder}: {n:?} not in {detail:?}");
        }
        assert_eq!(snapshot(), before, "{folder} wrote to storage");
    }
    assert_eq!(
        server.store_unfinished_writes(),
        Vec::<String>::new(),
        "staging files or multipart uploads left behind"
    );
    // The index is untouched: only noop is listed.
    let (_, all) = server.get("/api/v0/algorithm/all").await;
    assert_eq!(names_of(&all), ["noop"]);
}

// ---------------------------------------------------------------------------------------------
// Export (A3, `algorithms.md` §6)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn export_ships_bytecode_and_assets_and_redeploys_to_the_same_minor() {
    let server = Server::start();
    let id = server.deploy_ok("tv_denoiser").await;

    let (status, headers, bytes) = export(&server, "/api/v0/algorithm/tv_denoiser/1/export").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    assert_eq!(headers["content-type"], "application/zip");
    assert_eq!(
        headers["content-disposition"],
        "attachment; filename=\"tv_denoiser_v1\""
    );
    let names = zip_names(&bytes);
    let expected: BTreeSet<String> = [
        "__init__.pyc",
        "Runner.pyc",
        "helpers/__init__.pyc",
        "helpers/normalize.pyc",
        "files/config/defaults.json",
        "pyproject.toml",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(
        names, expected,
        "pyc_only: bytecode only, module folder stripped"
    );
    for asset in ["pyproject.toml", "files/config/defaults.json"] {
        let original = std::fs::read(algorithms_dir().join("tv_denoiser").join(asset)).unwrap();
        assert_eq!(zip_member(&bytes, asset), original, "{asset}");
    }
    // A `.pyc` with the interpreter's header (magic + flags), not source.
    let pyc = zip_member(&bytes, "Runner.pyc");
    assert!(pyc.len() > 16 && &pyc[2..4] == b"\r\n", "not bytecode");
    // Explicit minor and a leading-zero major are the same export.
    let (status, _, again) = export(
        &server,
        "/api/v0/algorithm/tv_denoiser/01/export?algorithm_minor_version=0",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(zip_names(&again), expected);

    // Redeploying the export reproduces the module: no new minor.
    let work = tempfile::tempdir().unwrap();
    let zip = work.path().join("tv_denoiser_v1.zip");
    std::fs::write(&zip, &bytes).unwrap();
    let modules = keys(&server, "module-store");
    let redeployed = deploy_path_ok(&server, &zip, &[]).await;
    assert_eq!(redeployed["algorithm_id"], id.as_str());
    assert_eq!(redeployed["algorithm_minor_version"], "0");
    let (_, rec) = stored_record(&server, &id);
    assert_eq!(minor_keys(&rec), ["0"]);
    assert_eq!(keys(&server, "module-store"), modules);

    // Errors: minor not found, unknown algorithm, not exportable, non-integer major.
    let (status, _, body) = export(
        &server,
        "/api/v0/algorithm/tv_denoiser/1/export?algorithm_minor_version=9",
    )
    .await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("minor_version_not_found")),
        "{body}"
    );
    assert_eq!(body["detail"], "Algorithm 'tv_denoiser' v1.9 not found.");
    let (status, _, body) = export(&server, "/api/v0/algorithm/nothing/1/export").await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("algorithm_not_found")),
        "{body}"
    );
    assert_eq!(body["detail"], "Algorithm 'nothing' v1 not found.");
    let (status, _, _) = export(&server, "/api/v0/algorithm/tv_denoiser/one/export").await;
    assert_eq!(status, 422);

    deploy_path_ok(
        &server,
        &algorithms_dir().join("noop"),
        &[("exportable", "false")],
    )
    .await;
    let (status, _, body) = export(&server, "/api/v0/algorithm/noop/1/export").await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("algorithm_not_exportable")),
        "{body}"
    );
    assert_eq!(body["detail"], "Algorithm is not exportable.");
    let (_, a1) = server.get("/api/v0/algorithm/noop/1").await;
    assert_eq!(a1["exportable"], false);
}

// ---------------------------------------------------------------------------------------------
// Listing filters (A2)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn listing_filters() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    server.deploy_ok("tv_denoiser").await;
    server.deploy_ok("threshold_segmenter").await;
    let gpu = copy_algorithm("noop", work.path(), "gpu_algo");
    rename_algorithm(&gpu, "noop", "gpu_algo");
    edit_pyproject(
        &gpu,
        "tags = [\"test\", \"benchmark\"]",
        "tags = [\"Test\", \"benchmark\"]",
    );
    edit_pyproject(
        &gpu,
        "supported_devices = [\"cpu\"]",
        "supported_devices = [\"cpu\", \"gpu\"]",
    );
    deploy_path_ok(&server, &gpu, &[]).await;

    let list = |q: &'static str| {
        let server = &server;
        async move {
            let (status, body) = server.get(&format!("/api/v0/algorithm/all{q}")).await;
            assert_eq!(status, 200, "{q}: {body}");
            let mut names = names_of(&body);
            names.sort();
            names
        }
    };
    assert_eq!(
        list("").await,
        ["gpu_algo", "threshold_segmenter", "tv_denoiser"]
    );
    // Tags are exact and case-sensitive; positive tags are ANDed.
    assert_eq!(
        list("?positive_tag=test").await,
        ["threshold_segmenter", "tv_denoiser"]
    );
    assert_eq!(list("?positive_tag=Test").await, ["gpu_algo"]);
    assert_eq!(
        list("?positive_tag=test&positive_tag=denoising").await,
        ["tv_denoiser"]
    );
    assert_eq!(
        list("?positive_tag=test,denoising").await,
        Vec::<String>::new(),
        "commas are not split"
    );
    assert_eq!(
        list("?negative_tag=denoising").await,
        ["gpu_algo", "threshold_segmenter"]
    );
    assert_eq!(
        list("?negative_tag=denoising&negative_tag=threshold").await,
        ["gpu_algo"]
    );
    assert_eq!(
        list("?positive_tag=test&negative_tag=threshold").await,
        ["tv_denoiser"]
    );
    // Type is case-insensitive.
    assert_eq!(list("?algorithm_type=image2image").await, ["tv_denoiser"]);
    assert_eq!(
        list("?algorithm_type=IMAGE2SEGMENTATION").await,
        ["threshold_segmenter"]
    );
    // Devices: any requested device, case-insensitive.
    assert_eq!(list("?supported_devices=GPU").await, ["gpu_algo"]);
    assert_eq!(
        list("?supported_devices=gpu&supported_devices=cpu").await,
        ["gpu_algo", "threshold_segmenter", "tv_denoiser"]
    );
    assert_eq!(
        list("?algorithm_type=generic&supported_devices=gpu").await,
        ["gpu_algo"]
    );
    // Filters that exclude everything: 200 [].
    assert_eq!(list("?positive_tag=nope").await, Vec::<String>::new());
    assert_eq!(list("?supported_devices=mps").await, Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// Deletion (D4, `algorithms.md` §5)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn delete_minor_keeps_shared_objects_and_delete_all_removes_everything() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();

    // Not removable by default; unknown ids are 404.
    let fixed = server.deploy_ok("tv_denoiser").await;
    let (status, body) = server
        .delete(&format!("/api/v0/deploy/algorithm/{fixed}"))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("algorithm_not_removable")),
        "{body}"
    );
    assert_eq!(body["detail"], "Algorithm is not removable");
    assert_eq!(body["details"], json!({"algorithm_id": fixed}));
    let (status, body) = server.delete("/api/v0/deploy/algorithm/no-such-id").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("algorithm_not_found")),
        "{body}"
    );
    assert_eq!(body["detail"], "Algorithm not found");
    let (status, body) = server
        .delete(&format!("/api/v0/deploy/algorithm/{fixed}"))
        .await;
    assert_eq!(status, 400, "still there: {body}");

    // Three minors of a removable algorithm that share the module and pyproject.toml.
    let dir = copy_algorithm("tv_denoiser", work.path(), "tv_removable");
    rename_algorithm(&dir, "tv_denoiser", "tv_removable");
    let defaults = dir.join("files/config/defaults.json");
    let mut asset_ids = Vec::new();
    for (i, weight) in ["0.1", "0.2", "0.3"].iter().enumerate() {
        std::fs::write(&defaults, format!("{{\"denoising_weight\": {weight}}}\n")).unwrap();
        let r = deploy_path_ok(&server, &dir, &[("removable", "true")]).await;
        assert_eq!(r["algorithm_minor_version"], i.to_string().as_str());
        asset_ids.push(md5_hex(&std::fs::read(&defaults).unwrap()));
    }
    let id = {
        let (_, a1) = server.get("/api/v0/algorithm/tv_removable/1").await;
        assert_eq!(a1["removable"], true);
        a1["algorithm_id"].as_str().unwrap().to_string()
    };
    let (_, rec) = stored_record(&server, &id);
    let module = rec["algorithm_minor_version"]["0"]["module_id"]
        .as_str()
        .unwrap()
        .to_string();
    let pyproject = rec["algorithm_minor_version"]["0"]["assets"]["pyproject.toml"]
        .as_str()
        .unwrap()
        .to_string();
    let has = |collection: &str, key: &str| server.store_exists(collection, key);

    // Deleting minor 0 keeps what minors 1 and 2 still use (the spec's fixed quirk).
    let (status, body) = server
        .delete(&format!(
            "/api/v0/deploy/algorithm/{id}?algorithm_minor_version=0"
        ))
        .await;
    assert_eq!(
        (status, &body),
        (200, &json!({"detail": "Algorithm minor version 0 removed"}))
    );
    assert!(
        has("module-store", &module),
        "module still used by minors 1 and 2"
    );
    assert!(
        has("asset-store", &pyproject),
        "pyproject.toml still used by minors 1 and 2"
    );
    assert!(
        !has("asset-store", &asset_ids[0]),
        "asset only minor 0 used"
    );
    assert!(has("asset-store", &asset_ids[1]) && has("asset-store", &asset_ids[2]));
    let (_, a1) = server.get("/api/v0/algorithm/tv_removable/1").await;
    assert_eq!(
        a1["algorithm_minor_versions"],
        json!(["1", "2"]),
        "stored order kept"
    );
    assert_eq!(a1["latest_algorithm_minor_version"], "2");
    let (_, rec) = stored_record(&server, &id);
    assert_eq!(minor_keys(&rec), ["1", "2"]);

    // A minor that does not exist: nothing happens, same answer.
    let (status, body) = server
        .delete(&format!(
            "/api/v0/deploy/algorithm/{id}?algorithm_minor_version=9"
        ))
        .await;
    assert_eq!(
        (status, &body),
        (200, &json!({"detail": "Algorithm minor version 9 removed"}))
    );

    // Deleting the latest moves latest to the highest remaining; the rest still exports.
    let (status, _) = server
        .delete(&format!(
            "/api/v0/deploy/algorithm/{id}?algorithm_minor_version=2"
        ))
        .await;
    assert_eq!(status, 200);
    let (_, a1) = server.get("/api/v0/algorithm/tv_removable/1").await;
    assert_eq!(a1["algorithm_minor_versions"], json!(["1"]));
    assert_eq!(a1["algorithm_minor_version"], "1");
    assert!(!has("asset-store", &asset_ids[2]));
    let (status, _, zip) = export(&server, "/api/v0/algorithm/tv_removable/1/export").await;
    assert_eq!(status, 200);
    assert!(zip_names(&zip).contains("Runner.pyc"));

    // Deleting the whole algorithm removes its objects but not those another algorithm uses.
    let fixed_rec = stored_record(&server, &fixed).1;
    let fixed_module = fixed_rec["algorithm_minor_version"]["0"]["module_id"]
        .as_str()
        .unwrap();
    assert_eq!(fixed_module, module, "same code, same module");
    let (status, body) = server
        .delete(&format!("/api/v0/deploy/algorithm/{id}"))
        .await;
    assert_eq!(
        (status, &body),
        (200, &json!({"detail": "Algorithm removed"}))
    );
    assert!(
        has("module-store", &module),
        "tv_denoiser still uses the module"
    );
    assert!(!has("asset-store", &asset_ids[1]));
    assert!(!has("asset-store", &pyproject));
    assert!(keys(&server, "algorithm-store")
        .iter()
        .all(|k| !k.starts_with(&id)));
    let (status, body) = server.get("/api/v0/algorithm/tv_removable/1").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("algorithm_not_found"))
    );
    let (status, _) = server
        .delete(&format!("/api/v0/deploy/algorithm/{id}"))
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn deleting_the_last_algorithm_empties_the_stores() {
    let server = Server::start();
    let r = deploy_path_ok(
        &server,
        &algorithms_dir().join("noop"),
        &[("removable", "yes")],
    )
    .await;
    let id = r["algorithm_id"].as_str().unwrap();
    assert_eq!(keys(&server, "module-store").len(), 1);
    let (status, body) = server
        .delete(&format!("/api/v0/deploy/algorithm/{id}"))
        .await;
    assert_eq!(
        (status, &body),
        (200, &json!({"detail": "Algorithm removed"}))
    );
    for c in ["module-store", "asset-store", "algorithm-store"] {
        assert!(keys(&server, c).is_empty(), "{c}: {:?}", keys(&server, c));
    }
    let (status, body) = server.get("/api/v0/algorithm/noop/1").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("no_algorithms_found"))
    );

    // Deleting the only minor deletes the record too.
    let r = deploy_path_ok(
        &server,
        &algorithms_dir().join("noop"),
        &[("removable", "true")],
    )
    .await;
    let id = r["algorithm_id"].as_str().unwrap();
    let (status, _) = server
        .delete(&format!(
            "/api/v0/deploy/algorithm/{id}?algorithm_minor_version=0"
        ))
        .await;
    assert_eq!(status, 200);
    for c in ["module-store", "asset-store", "algorithm-store"] {
        assert!(keys(&server, c).is_empty(), "{c}: {:?}", keys(&server, c));
    }
}

// ---------------------------------------------------------------------------------------------
// Async deploy (D2, D3)
// ---------------------------------------------------------------------------------------------

async fn wait_deploy(server: &Server, deploy_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, rec) = server.get(&format!("/api/v0/deploy/{deploy_id}")).await;
        assert_eq!(status, 200, "{rec}");
        if ["COMPLETED", "FAILED"].contains(&rec["status"].as_str().unwrap_or_default()) {
            return rec;
        }
        assert!(
            Instant::now() < deadline,
            "deploy {deploy_id} not finished: {rec}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start_async(server: &Server, path: &Path) -> (u16, Value) {
    let r = server
        .client
        .post(server.url("/api/v0/deploy/local-async"))
        .query(&[("path", path.display().to_string())])
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn async_deploy_completes_or_fails_with_a_stored_record() {
    let server = Server::start();
    let (status, body) = start_async(&server, &algorithms_dir().join("tv_denoiser")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(object_keys(&body), ["deploy_id"]);
    let deploy_id = body["deploy_id"].as_str().unwrap().to_string();
    assert!(is_uuid_v1(&deploy_id));
    let rec = wait_deploy(&server, &deploy_id).await;
    assert_eq!(rec["status"], "COMPLETED", "{rec}");
    assert_eq!(
        object_keys(&rec),
        [
            "deploy_id",
            "status",
            "path",
            "algorithm_id",
            "algorithm_name",
            "algorithm_major_version",
            "time_started",
            "time_completed",
            "log"
        ]
    );
    assert_eq!(rec["deploy_id"], deploy_id.as_str());
    assert_eq!(
        rec["path"],
        algorithms_dir().join("tv_denoiser").display().to_string()
    );
    assert_eq!(rec["algorithm_name"], "tv_denoiser");
    assert_eq!(rec["algorithm_major_version"], "1");
    assert!(rec["time_completed"].is_string());
    let (_, a1) = server.get("/api/v0/algorithm/tv_denoiser/1").await;
    assert_eq!(rec["algorithm_id"], a1["algorithm_id"]);
    let stored: Value =
        serde_json::from_slice(&server.store_read("deploy-store", &deploy_id).unwrap()).unwrap();
    assert_eq!(stored["status"], "COMPLETED");
    assert_eq!(stored["algorithm_minor_version"], "0");

    // An invalid folder: FAILED, in deploy-store itself (the spec's fix), with the reason.
    let (status, body) = start_async(&server, &invalid_algorithms_dir().join("bad_device")).await;
    assert_eq!(status, 200, "{body}");
    let failed_id = body["deploy_id"].as_str().unwrap().to_string();
    let rec = wait_deploy(&server, &failed_id).await;
    assert_eq!(rec["status"], "FAILED", "{rec}");
    assert!(
        rec["log"]
            .as_str()
            .unwrap()
            .contains("[tool.compox].default_device"),
        "{rec}"
    );
    assert!(rec["algorithm_id"].is_null());
    let stored: Value =
        serde_json::from_slice(&server.store_read("deploy-store", &failed_id).unwrap()).unwrap();
    assert_eq!(stored["status"], "FAILED", "{stored}");

    // The path type is only checked in the background.
    let work = tempfile::tempdir().unwrap();
    let plain = work.path().join("plain.txt");
    std::fs::write(&plain, "x").unwrap();
    let (status, body) = start_async(&server, &plain).await;
    assert_eq!(status, 200, "{body}");
    let rec = wait_deploy(&server, body["deploy_id"].as_str().unwrap()).await;
    assert_eq!(rec["status"], "FAILED");
    assert_eq!(rec["log"], "Path must be a directory or a .zip file.");

    // A broken zip: the log says why, as a synchronous deploy's `details` do.
    let fake = work.path().join("fake.zip");
    std::fs::write(&fake, "this is not a zip archive").unwrap();
    let (_, sync_body) = deploy_with(&server, &fake, &[]).await;
    let (status, body) = start_async(&server, &fake).await;
    assert_eq!(status, 200, "{body}");
    let rec = wait_deploy(&server, body["deploy_id"].as_str().unwrap()).await;
    assert_eq!(rec["status"], "FAILED");
    assert_eq!(
        rec["log"],
        format!(
            "Invalid algorithm deployment zip: {} ({})",
            fake.display(),
            sync_body["details"]["reason"].as_str().unwrap()
        )
        .as_str()
    );

    // A missing path is refused at once; an unknown deploy id is 404.
    let missing = work.path().join("missing");
    let (status, body) = start_async(&server, &missing).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("deploy_path_not_found")),
        "{body}"
    );
    let unknown = "00000000-0000-1000-8000-000000000000";
    let (status, body) = server.get(&format!("/api/v0/deploy/{unknown}")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("deploy_record_not_found")),
        "{body}"
    );
    assert_eq!(body["detail"], "Deploy record not found");
    assert_eq!(body["details"], json!({"deploy_id": unknown}));
}

// ---------------------------------------------------------------------------------------------
// `deploy_allowed_paths`
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn deploys_outside_the_allowed_paths_are_forbidden() {
    let allowed = tempfile::tempdir().unwrap();
    let inside = copy_algorithm("noop", allowed.path(), "noop");
    let server = Server::start_with(common::ServerOptions {
        yaml: format!("deploy_allowed_paths:\n  - {}\n", allowed.path().display()),
        ..Default::default()
    });
    deploy_path_ok(&server, &inside, &[]).await;

    let outside = algorithms_dir().join("tv_denoiser");
    let (status, body) = deploy_with(&server, &outside, &[]).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "deploy_path_not_allowed");
    // `..` and symbolic links are resolved before the check: `<inside>/../../..` climbs to `/`.
    let up = "../".repeat(inside.components().count());
    let escaped = PathBuf::from(format!("{}/{up}{}", inside.display(), outside.display()));
    assert!(escaped.is_dir(), "{}", escaped.display());
    let (status, body) = deploy_with(&server, &escaped, &[]).await;
    assert_eq!(status, 403, "{}: {body}", escaped.display());
    let link = allowed.path().join("link");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let (status, body) = deploy_with(&server, &link, &[]).await;
    assert_eq!(status, 403, "symlink out of the allowed folder: {body}");
    // A file inside an allowed folder that links to a file outside would be stored as an asset.
    let secret_dir = tempfile::tempdir().unwrap();
    let secret = secret_dir.path().join("secret.txt");
    std::fs::write(&secret, "not for the store").unwrap();
    let leaky = copy_algorithm("noop", allowed.path(), "leaky");
    std::os::unix::fs::symlink(&secret, leaky.join("secret.txt")).unwrap();
    let (status, body) = deploy_with(&server, &leaky, &[]).await;
    assert_eq!(
        status, 403,
        "file symlink out of the allowed folder: {body}"
    );
    assert_eq!(body["code"], "deploy_path_not_allowed");
    // One that stays inside the allowed folder is fine.
    std::fs::remove_file(leaky.join("secret.txt")).unwrap();
    std::fs::write(allowed.path().join("inside.txt"), "ok").unwrap();
    std::os::unix::fs::symlink(allowed.path().join("inside.txt"), leaky.join("inside.txt"))
        .unwrap();
    let (status, body) = deploy_with(&server, &leaky, &[]).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = start_async(&server, &outside).await;
    assert_eq!(status, 403, "{body}");
    // The CLI marker does not lift the restriction for HTTP callers.
    let (status, body) = deploy_with(&server, &outside, &[("origin", "deploy-algorithms")]).await;
    assert_eq!(status, 403, "{body}");
    let (_, all) = server.get("/api/v0/algorithm/all").await;
    assert_eq!(names_of(&all), ["noop"]);
}

// ---------------------------------------------------------------------------------------------
// `compox deploy-algorithms` (`algorithms.md` §8)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn deploy_algorithms_without_a_server_writes_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let config = cli_config(dir.path(), common::free_port());
    let root = algorithms_dir();
    let args = |names: &[&'static str]| {
        let mut a = vec![
            "deploy-algorithms".to_string(),
            "--config".into(),
            config.display().to_string(),
            "--path".into(),
            root.display().to_string(),
            "--no-verbose".into(),
        ];
        for n in names {
            a.push("-n".into());
            a.push(n.to_string());
        }
        a
    };
    let run = |names: &[&'static str]| {
        let a = args(names);
        compox(
            &a.iter().map(String::as_str).collect::<Vec<_>>(),
            dir.path(),
        )
    };

    // Missing names are reported together, sorted, before anything is deployed.
    let out = run(&["zz_missing", "x", "noop"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "Algorithm folders not found in {}: x, zz_missing",
            root.display()
        )),
        "{}",
        text(&out)
    );
    assert!(list_keys(&TestStore::for_dir(dir.path()), "algorithm-store").is_empty());
    let out = run(&["x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "Algorithm folders not found in {}: x",
            root.display()
        )),
        "{}",
        text(&out)
    );

    let out = run(&["tv_denoiser", "noop"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        list_keys(&TestStore::for_dir(dir.path()), "algorithm-store").len(),
        2
    );
    // Running it again changes nothing (same content, same minor).
    let out = run(&["tv_denoiser", "noop"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let server = Server::start_in(dir, common::ServerOptions::default());
    let (status, all) = server.get("/api/v0/algorithm/all").await;
    assert_eq!(status, 200, "{all}");
    let mut names = names_of(&all);
    names.sort();
    assert_eq!(names, ["noop", "tv_denoiser"]);
    let (_, a1) = server.get("/api/v0/algorithm/tv_denoiser/1").await;
    assert_eq!(a1["algorithm_minor_versions"], json!(["0"]));
    assert_eq!(a1["removable"], false);
}

#[tokio::test]
async fn deploy_algorithms_next_to_a_running_server_goes_through_it() {
    let server = Server::start();
    let config = server.dir.path().join("compox.yaml");
    let work = tempfile::tempdir().unwrap();
    let out = compox(
        &[
            "deploy-algorithms",
            "--config",
            &config.display().to_string(),
            "--path",
            &algorithms_dir().display().to_string(),
            "-n",
            "noop",
            "-n",
            "printer",
        ],
        work.path(),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out),
        server.log_text()
    );
    // The running server's index knows them at once: its deployer did the writes.
    for name in ["noop", "printer"] {
        let (status, a1) = server.get(&format!("/api/v0/algorithm/{name}/1")).await;
        assert_eq!(status, 200, "{name}: {a1}");
    }
    // A failing folder stops the run with exit 1 and names the folder.
    let bad = tempfile::tempdir().unwrap();
    copy_dir(
        &invalid_algorithms_dir().join("bad_device"),
        &bad.path().join("bad_device"),
    );
    let out = compox(
        &[
            "deploy-algorithms",
            "--config",
            &config.display().to_string(),
            "--path",
            &bad.path().display().to_string(),
        ],
        work.path(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad_device") && stderr.contains("default_device"),
        "{}",
        text(&out)
    );
}

// ---------------------------------------------------------------------------------------------
// HTTP-client commands (`platform.md` §1.6–§1.8)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn client_commands_deploy_export_and_delete() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let url = server.base.clone();
    let dir = copy_algorithm("tv_denoiser", work.path(), "tv_denoiser");

    // deploy-local with a relative path (made absolute) and a flag override.
    let out = compox(
        &[
            "deploy-local",
            "tv_denoiser",
            "--server-url",
            &url,
            "--removable",
            "Yes",
        ],
        work.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let body: Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
    assert_eq!(body["algorithm_name"], "tv_denoiser");
    let (_, a1) = server.get("/api/v0/algorithm/tv_denoiser/1").await;
    assert_eq!(a1["algorithm_id"], body["algorithm_id"]);
    assert_eq!(a1["removable"], true);

    let out = compox(
        &[
            "deploy-local",
            "tv_denoiser",
            "--server-url",
            &url,
            "--removable",
            "maybe",
        ],
        work.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("Invalid value for --removable. Use true/false."));

    // --async polls until the record is terminal.
    std::fs::write(
        dir.join("files/config/defaults.json"),
        "{\"denoising_weight\": 0.3}\n",
    )
    .unwrap();
    let out = compox(
        &[
            "deploy-local",
            &dir.display().to_string(),
            "--server-url",
            &format!("{url}/"),
            "--async",
            "--removable",
            "true",
            "--poll-interval-s",
            "0.1",
        ],
        work.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("\"deploy_id\"") && stdout.contains("\"COMPLETED\""),
        "{}",
        text(&out)
    );
    let (_, a1) = server.get("/api/v0/algorithm/tv_denoiser/1").await;
    assert_eq!(a1["algorithm_minor_versions"], json!(["0", "1"]));

    // export-algorithm writes <name>_<major>.zip.
    let exports = work.path().join("exports");
    std::fs::create_dir(&exports).unwrap();
    let out = compox(
        &[
            "export-algorithm",
            "tv_denoiser",
            "1",
            "--server-url",
            &url,
            "--output-dir",
            "exports",
            "--algorithm-minor-version",
            "0",
        ],
        work.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let zip = exports.join("tv_denoiser_1.zip");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("Saved: {}", zip.display())));
    let bytes = std::fs::read(&zip).unwrap();
    assert!(zip_names(&bytes).contains("Runner.pyc"));
    assert_eq!(
        zip_member(&bytes, "files/config/defaults.json"),
        std::fs::read(algorithms_dir().join("tv_denoiser/files/config/defaults.json")).unwrap(),
        "minor 0 has the original asset"
    );
    let out = compox(
        &["export-algorithm", "nothing", "1", "--server-url", &url],
        work.path(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("algorithm_not_found"));

    // delete-algorithm: one minor, then all; unknown names exit 1.
    let out = compox(
        &[
            "delete-algorithm",
            "tv_denoiser",
            "1",
            "--server-url",
            &url,
            "--algorithm-minor-version",
            "0",
        ],
        work.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Algorithm minor version 0 removed"));
    let (_, a1) = server.get("/api/v0/algorithm/tv_denoiser/1").await;
    assert_eq!(a1["algorithm_minor_versions"], json!(["1"]));
    let out = compox(
        &["delete-algorithm", "tv_denoiser", "1", "--server-url", &url],
        work.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        serde_json::from_slice::<Value>(out.stdout.trim_ascii()).unwrap(),
        json!({"detail": "Algorithm removed"})
    );
    let (status, _) = server.get("/api/v0/algorithm/tv_denoiser/1").await;
    assert_eq!(status, 404);
    let out = compox(
        &["delete-algorithm", "tv_denoiser", "1", "--server-url", &url],
        work.path(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}

// ---------------------------------------------------------------------------------------------
// Supervision
// ---------------------------------------------------------------------------------------------

/// A panicking deployer answers 503 `service_restarting` once, then comes back with its index
/// reloaded from storage.
#[tokio::test]
async fn deployer_restarts_after_a_fault_and_reloads_its_index() {
    let server = Server::start();
    let id = server.deploy_ok("noop").await;

    // A record written behind the deployer's back: the reload reads it at once (the periodic
    // refresh may have read it already, so nothing is asserted before the fault).
    let (key, mut rec) = stored_record(&server, &id);
    let ghost_id = "11111111-2222-1333-8444-555555555555";
    rec["algorithm_id"] = json!(ghost_id);
    rec["algorithm_name"] = json!("ghost");
    server.store_write(
        "algorithm-store",
        &format!("{ghost_id}~ghost~1"),
        &serde_json::to_vec(&rec).unwrap(),
    );
    assert!(key.ends_with("~noop~1"));

    let (status, _) = server.post("/_test/fault/deployer").await;
    assert_eq!(status, 200);
    let (status, body) = server.get("/api/v0/algorithm/noop/1").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "service_restarting");
    assert_eq!(body["retryable"], true);

    let (status, body) = server.get("/api/v0/algorithm/noop/1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["algorithm_id"], id.as_str());
    let (status, body) = server.get("/api/v0/algorithm/ghost/1").await;
    assert_eq!(status, 200, "index rebuilt from storage: {body}");
    let (_, all) = server.get("/api/v0/algorithm/all").await;
    let mut names = names_of(&all);
    names.sort();
    assert_eq!(names, ["ghost", "noop"]);

    // A fault during a deploy: 503, then the same deploy works.
    let (status, _) = server.post("/_test/fault/deployer").await;
    assert_eq!(status, 200);
    let (status, body) = server.deploy(&algorithms_dir().join("printer")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("service_restarting")),
        "{body}"
    );
    server.deploy_ok("printer").await;
    let (_, all) = server.get("/api/v0/algorithm/all").await;
    assert_eq!(names_of(&all).len(), 3);
}

// ---------------------------------------------------------------------------------------------
// Overrides, flag rules, folder contents, concurrency, odd records
// ---------------------------------------------------------------------------------------------

/// D1 overrides and the `removable`/`exportable` rules of `algorithms.md` §2.8.
#[tokio::test]
async fn overrides_and_flag_rules() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let noop = algorithms_dir().join("noop");

    let r = deploy_path_ok(
        &server,
        &noop,
        &[
            ("algorithm_name", "Renamed"),
            ("algorithm_major_version", "7"),
        ],
    )
    .await;
    assert_eq!(r["algorithm_name"], "Renamed");
    assert_eq!(r["algorithm_major_version"], "7");
    assert_eq!(r["algorithm_minor_version"], "0");
    let (key, _) = stored_record(&server, r["algorithm_id"].as_str().unwrap());
    assert!(key.ends_with("~Renamed~7"), "{key}");
    let (status, _) = server.get("/api/v0/algorithm/renamed/7").await;
    assert_eq!(status, 200);

    let before = keys(&server, "algorithm-store");
    let (status, body) = deploy_with(&server, &noop, &[("algorithm_name", "a~b")]).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = deploy_with(&server, &noop, &[("removable", "maybe")]).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "request_validation_error");
    assert_eq!(keys(&server, "algorithm-store"), before);

    // Folder deploys reset `removable` to the pyproject value; zip deploys keep the stored one.
    let dir = algorithms_dir().join("tv_denoiser");
    let zip = work.path().join("tv.zip");
    zip_dir(&dir, &zip, Some("tv_denoiser"));
    let removable = || async {
        let (_, a1) = server.get("/api/v0/algorithm/tv_denoiser/1").await;
        (
            a1["removable"].as_bool().unwrap(),
            a1["exportable"].as_bool().unwrap(),
        )
    };
    deploy_path_ok(&server, &dir, &[("removable", "True")]).await;
    assert_eq!(removable().await, (true, true));
    deploy_path_ok(&server, &zip, &[]).await;
    assert_eq!(
        removable().await,
        (true, true),
        "zip without override keeps the stored value"
    );
    deploy_path_ok(&server, &dir, &[]).await;
    assert_eq!(
        removable().await,
        (false, true),
        "folder without override: pyproject value"
    );
    deploy_path_ok(&server, &zip, &[("removable", "1"), ("exportable", "off")]).await;
    assert_eq!(removable().await, (true, false));
    deploy_path_ok(&server, &dir, &[]).await;
    assert_eq!(
        removable().await,
        (false, true),
        "exportable comes from pyproject on every deploy"
    );
    let (_, a1) = server.get("/api/v0/algorithm/tv_denoiser/1").await;
    assert_eq!(
        a1["algorithm_minor_versions"],
        json!(["0"]),
        "flags alone add no minor"
    );
}

/// The file rules of `algorithms.md` §1.2, seen through the stored asset map and the export.
#[tokio::test]
async fn folder_contents_are_sorted_into_code_and_assets() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let dir = copy_algorithm("tv_denoiser", work.path(), "tv_denoiser");
    for (path, body) in [
        (".env", "SECRET=1"),
        (".git/config", "[core]"),
        ("__pycache__/Runner.cpython-311.pyc", "junk"),
        ("stale.pyc", "junk"),
        ("notes.PY", "not code"),
        ("files/.hidden/a.txt", "hidden dir, visible file"),
        ("files/name with space ü.txt", "unicode"),
        ("helpers/.gitignore", "*.tmp"),
    ] {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    let id = deploy_path_ok(&server, &dir, &[]).await["algorithm_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, rec) = stored_record(&server, &id);
    let assets: BTreeSet<String> = object_keys(&rec["algorithm_minor_version"]["0"]["assets"])
        .into_iter()
        .collect();
    let expected: BTreeSet<String> = [
        "pyproject.toml",
        "files/config/defaults.json",
        "files/.hidden/a.txt",
        "files/name with space ü.txt",
        "notes.PY",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(assets, expected);

    let (status, _, bytes) = export(&server, "/api/v0/algorithm/tv_denoiser/1/export").await;
    assert_eq!(status, 200);
    let names = zip_names(&bytes);
    let code: BTreeSet<String> = [
        "__init__.pyc",
        "Runner.pyc",
        "helpers/__init__.pyc",
        "helpers/normalize.pyc",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(names, expected.union(&code).cloned().collect());
    assert_eq!(
        zip_member(&bytes, "files/name with space ü.txt"),
        b"unicode"
    );

    // The same tree without the skipped files is the same content: no new minor.
    for skipped in [
        ".env",
        ".git/config",
        "__pycache__/Runner.cpython-311.pyc",
        "stale.pyc",
        "helpers/.gitignore",
    ] {
        std::fs::remove_file(dir.join(skipped)).unwrap();
    }
    let again = deploy_path_ok(&server, &dir, &[]).await;
    assert_eq!(again["algorithm_minor_version"], "0");
}

/// Deploys of one `(name, major)` are serialised: concurrent first deploys make one record.
#[tokio::test]
async fn concurrent_deploys_of_one_algorithm_make_one_record() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let dir = copy_algorithm("noop", work.path(), "noop");
    let results =
        futures_util::future::join_all((0..4).map(|_| deploy_with(&server, &dir, &[]))).await;
    let ids: BTreeSet<String> = results
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 200, "{body}");
            assert_eq!(body["algorithm_minor_version"], "0");
            body["algorithm_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1, "{results:?}");
    assert_eq!(keys(&server, "algorithm-store").len(), 1);
    assert_eq!(keys(&server, "module-store").len(), 1);
}

/// Records the deployer did not write: a misconfigured one is a 200 "not configured correctly"
/// on A1 and skipped by A2 (`rest-api.md` §8 item 1); a legacy 2.x one does not break listing
/// and is migrated by a redeploy (`algorithms.md` §3.1).
#[tokio::test]
async fn misconfigured_and_legacy_records() {
    let server = Server::start();
    let id = server.deploy_ok("noop").await;
    let (_, rec) = stored_record(&server, &id);

    let mut bad = rec.clone();
    let bad_id = "21111111-2222-1333-8444-555555555555";
    bad["algorithm_id"] = json!(bad_id);
    bad["algorithm_name"] = json!("misconfigured");
    bad["additional_parameters"] = json!([{"name": "x", "displayed_name": "X", "description": "",
        "config": {"type": "float", "default": 1, "adjustable": true, "options": [], "min": null,
                   "max": null, "step": null, "decimal_precision": null}}]);
    server.store_write(
        "algorithm-store",
        &format!("{bad_id}~misconfigured~1"),
        &serde_json::to_vec(&bad).unwrap(),
    );

    let legacy_id = "31111111-2222-1333-8444-555555555555";
    let legacy = json!({
        "algorithm_id": legacy_id, "algorithm_name": "noop_legacy", "algorithm_major_version": "1",
        "algorithm_minor_version": "0", "algorithm_type": "Generic", "algorithm_tags": [],
        "algorithm_description": "", "supported_devices": ["cpu"], "default_device": "cpu",
        "additional_parameters": [], "module_id": "0123456789abcdef0123456789abcdef",
        "assets": {}, "timestamp": "2024-01-02 03:04:05",
    });
    server.store_write(
        "algorithm-store",
        &format!("{legacy_id}~noop_legacy~1~0"),
        &serde_json::to_vec(&legacy).unwrap(),
    );

    // Reload the index from storage (a deployer restart).
    server.post("/_test/fault/deployer").await;
    let (status, _) = server.get("/api/v0/algorithm/all").await;
    assert_eq!(status, 503);

    let (status, all) = server.get("/api/v0/algorithm/all").await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(names_of(&all), ["noop"]);
    let (status, body) = server.get("/api/v0/algorithm/misconfigured/1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        object_keys(&body),
        ["algorithm_name", "algorithm_version", "message"]
    );
    assert!(body["message"]
        .as_str()
        .unwrap()
        .starts_with("The algorithm has not been configured correctly.\n"));
    let (status, body) = server.get("/api/v0/algorithm/noop_legacy/1").await;
    assert_eq!((status, object_keys(&body).len()), (200, 3), "{body}");

    // Redeploying over the legacy record keeps its id and moves it to a 3-part key.
    let work = tempfile::tempdir().unwrap();
    let dir = copy_algorithm("noop", work.path(), "noop_legacy");
    rename_algorithm(&dir, "noop", "noop_legacy");
    let r = deploy_path_ok(&server, &dir, &[]).await;
    assert_eq!(r["algorithm_id"], legacy_id);
    let (key, rec) = stored_record(&server, legacy_id);
    assert_eq!(key, format!("{legacy_id}~noop_legacy~1"));
    assert!(!server.store_exists("algorithm-store", &format!("{legacy_id}~noop_legacy~1~0")));
    assert_eq!(
        rec["latest_algorithm_minor_version"],
        r["algorithm_minor_version"]
    );
    let (status, body) = server.get("/api/v0/algorithm/noop_legacy/1").await;
    assert_eq!(status, 200);
    assert_eq!(body["algorithm_id"], legacy_id);
    let (_, all) = server.get("/api/v0/algorithm/all").await;
    assert_eq!(names_of(&all).len(), 2);
}

/// Export details: a stored major `"01"`, an unknown checkpoint.
#[tokio::test]
async fn export_of_a_leading_zero_major_and_unknown_checkpoint() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let dir = copy_algorithm("noop", work.path(), "noop");
    edit_pyproject(&dir, "version = \"1.0.0\"", "version = \"01.0.0\"");
    let r = deploy_path_ok(&server, &dir, &[]).await;
    assert_eq!(r["algorithm_major_version"], "01");
    let (status, headers, body) = export(&server, "/api/v0/algorithm/noop/01/export").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        headers["content-disposition"],
        "attachment; filename=\"noop_v1\""
    );
    assert!(zip_names(&body).contains("Runner.pyc"));

    let (status, _, body) = export(
        &server,
        "/api/v0/algorithm/noop/01/export?checkpoint_id=nope",
    )
    .await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("checkpoint_not_found")),
        "{body}"
    );
    assert_eq!(body["details"], json!({"checkpoint_id": "nope"}));
}

/// `--delete-existing` replaces the algorithm (new id, pyproject minor), ignoring `removable`,
/// both offline and through a running server.
#[tokio::test]
async fn deploy_algorithms_delete_existing() {
    let dir = tempfile::tempdir().unwrap();
    let config = cli_config(dir.path(), common::free_port());
    let root = algorithms_dir().display().to_string();
    let cfg = config.display().to_string();
    let deploy = |extra: &[&str]| {
        let mut args = vec![
            "deploy-algorithms",
            "--config",
            &cfg,
            "--path",
            &root,
            "-n",
            "noop",
        ];
        args.extend_from_slice(extra);
        compox(&args, dir.path())
    };
    let store = TestStore::for_dir(dir.path());
    let id_of = |store: &TestStore| {
        let keys = list_keys(store, "algorithm-store");
        assert_eq!(keys.len(), 1, "{keys:?}");
        keys.into_iter()
            .next()
            .unwrap()
            .split('~')
            .next()
            .unwrap()
            .to_string()
    };
    let out = deploy(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let first = id_of(&store);
    let out = deploy(&["--delete-existing"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let second = id_of(&store);
    assert_ne!(first, second);

    let server = Server::start_in(dir, common::ServerOptions::default());
    let config = server.dir.path().join("compox.yaml").display().to_string();
    let out = compox(
        &[
            "deploy-algorithms",
            "--config",
            &config,
            "--path",
            &root,
            "-n",
            "noop",
            "--delete-existing",
        ],
        server.dir.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (status, a1) = server.get("/api/v0/algorithm/noop/1").await;
    assert_eq!(status, 200);
    let third = a1["algorithm_id"].as_str().unwrap();
    assert_ne!(third, second);
    assert_eq!(id_of(server.test_store()), third);
    assert_eq!(a1["removable"], false);
}

/// Deleting an algorithm deletes its checkpoints like C3: their assets, their id in the training
/// record, the manifest; a missing checkpoint does not abort the deletion (`algorithms.md` §5).
#[tokio::test]
async fn delete_algorithm_removes_its_checkpoints() {
    let server = Server::start();
    let r = deploy_path_ok(
        &server,
        &algorithms_dir().join("noop"),
        &[("removable", "true")],
    )
    .await;
    let id = r["algorithm_id"].as_str().unwrap().to_string();
    let (key, mut rec) = stored_record(&server, &id);
    let cp = "41111111-2222-1333-8444-555555555555";
    let cp_asset = "51111111-2222-1333-8444-555555555555";
    let training = "61111111-2222-1333-8444-555555555555";
    server.store_write("asset-store", cp_asset, b"trained weights");
    let manifest = json!({
        "checkpoint_id": cp, "parent_algorithm_id": id, "parent_algorithm_key": key,
        "training_id": training, "assets": {"files/w.pt": cp_asset},
        "created_at": "2025-06-09T08:00:00+00:00", "properties": {}, "tags": [],
        "parent_checkpoint_id": null,
    });
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    server.store_write("algorithm-checkpoint-store", cp, &manifest_bytes);
    server.store_write(
        "training-store",
        training,
        &serde_json::to_vec(
            &json!({"training_id": training, "output_checkpoint_ids": [cp, "other"]}),
        )
        .unwrap(),
    );
    rec["checkpoints"] = json!([cp, "71111111-2222-1333-8444-555555555555"]);
    rec["storage_metrics_stale"] = json!(true);
    server.store_write("algorithm-store", &key, &serde_json::to_vec(&rec).unwrap());

    // Reload: the stale metrics are recomputed with the checkpoint and written back.
    server.post("/_test/fault/deployer").await;
    let (status, _) = server.get("/api/v0/algorithm/noop/1").await;
    assert_eq!(status, 503);
    let (status, a1) = server.get("/api/v0/algorithm/noop/1").await;
    assert_eq!(status, 200, "{a1}");
    let metrics = &a1["storage_metrics"];
    assert_eq!(metrics["checkpoint_count"], 1, "{metrics}");
    assert_eq!(metrics["checkpoint_manifest_bytes"], manifest_bytes.len());
    assert_eq!(
        metrics["asset_count"], 2,
        "pyproject.toml and the checkpoint's asset"
    );
    let (_, rec) = stored_record(&server, &id);
    assert!(rec.get("storage_metrics_stale").is_none());
    assert_eq!(
        object_keys(&rec).last().map(String::as_str),
        Some("checkpoints"),
        "order kept"
    );

    let (status, body) = server
        .delete(&format!("/api/v0/deploy/algorithm/{id}"))
        .await;
    assert_eq!(
        (status, &body),
        (200, &json!({"detail": "Algorithm removed"}))
    );
    assert!(
        !server.store_exists("asset-store", cp_asset),
        "checkpoint asset deleted"
    );
    assert!(
        !server.store_exists("algorithm-checkpoint-store", cp),
        "manifest deleted"
    );
    let training_rec: Value =
        serde_json::from_slice(&server.store_read("training-store", training).unwrap()).unwrap();
    assert_eq!(training_rec["output_checkpoint_ids"], json!(["other"]));
    for c in ["module-store", "asset-store", "algorithm-store"] {
        assert!(keys(&server, c).is_empty(), "{c}: {:?}", keys(&server, c));
    }
}

/// `check_importable = true` imports the built module in a child process before anything is
/// stored (`algorithms.md` §1.4, §2.3 step 9).
#[tokio::test]
async fn check_importable_refuses_a_module_that_does_not_import() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let good = copy_algorithm("noop", tmp.path(), "noop_checked");
    edit_pyproject(
        &good,
        "[tool.compox]",
        "[tool.compox]\ncheck_importable = true",
    );
    let body = deploy_path_ok(&server, &good, &[]).await;
    assert_eq!(body["algorithm_name"], "noop");

    let bad = copy_algorithm("bad_import", tmp.path(), "bad_checked");
    edit_pyproject(
        &bad,
        "[tool.compox]",
        "[tool.compox]\ncheck_importable = true",
    );
    let modules = keys(&server, "module-store");
    let assets = keys(&server, "asset-store");
    let (status, body) = deploy_with(&server, &bad, &[]).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "algorithm_module_import_check_failed");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("definitely_not_installed_pkg"),
        "{body}"
    );
    assert_eq!(keys(&server, "module-store"), modules);
    assert_eq!(keys(&server, "asset-store"), assets);

    // Without the switch the same folder deploys (the failure shows at execution time).
    let plain = copy_algorithm("bad_import", tmp.path(), "bad_plain");
    assert_eq!(deploy_with(&server, &plain, &[]).await.0, 200);
}

// ---------------------------------------------------------------------------------------------
// Name, major and zip-size validation (`algorithms.md` §1.3, §1.10, §2.1 step 2)
// ---------------------------------------------------------------------------------------------

/// Names and majors that cannot make a storage key, from `pyproject.toml` or from the D1
/// overrides, are refused with 400 and the reason, and nothing is stored.
#[tokio::test]
async fn unsafe_names_and_majors_are_refused_by_pyproject_and_override_alike() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let noop = algorithms_dir().join("noop");
    let snapshot = || -> Vec<BTreeSet<String>> {
        ["module-store", "asset-store", "algorithm-store"]
            .iter()
            .map(|c| keys(&server, c))
            .collect()
    };
    let before = snapshot();

    let evil = copy_algorithm("noop", work.path(), "evil");
    rename_algorithm(&evil, "noop", "../../evil");
    let evil_zip = work.path().join("evil.zip");
    zip_dir(&evil, &evil_zip, Some("evil"));
    let abc = copy_algorithm("noop", work.path(), "abc");
    edit_pyproject(&abc, "version = \"1.0.0\"", "version = \"abc.0\"");
    for (path, needles) in [
        (&evil, ["[project].name", "'..' path segment", "../../evil"]),
        (
            &evil_zip,
            ["[project].name", "'..' path segment", "../../evil"],
        ),
        (
            &abc,
            ["[project].version", "major", "non-negative decimal integer"],
        ),
    ] {
        let (status, body) = deploy_with(&server, path, &[]).await;
        assert_eq!(status, 400, "{}: {body}", path.display());
        assert_eq!(body["code"], "algorithm_deploy_failed", "{body}");
        let detail = body["detail"].as_str().unwrap();
        for n in needles {
            assert!(detail.contains(n), "{n:?} not in {detail:?}");
        }
    }

    for (parameter, value, needle) in [
        (
            "algorithm_major_version",
            "../../x",
            "non-negative decimal integer",
        ),
        (
            "algorithm_major_version",
            "abc",
            "non-negative decimal integer, got \"abc\"",
        ),
        (
            "algorithm_major_version",
            "",
            "non-negative decimal integer",
        ),
        (
            "algorithm_major_version",
            "-1",
            "non-negative decimal integer",
        ),
        (
            "algorithm_major_version",
            "99999999999999999999",
            "must be at most",
        ),
        ("algorithm_name", "../../evil", "'..' path segment"),
        ("algorithm_name", "a~b", "'~'"),
        ("algorithm_name", " ", "must not be empty"),
    ] {
        let (status, body) = deploy_with(&server, &noop, &[(parameter, value)]).await;
        assert_eq!(status, 400, "{parameter}={value:?}: {body}");
        assert_eq!(body["code"], "algorithm_deploy_failed", "{body}");
        assert_eq!(body["details"], json!({ "parameter": parameter }), "{body}");
        let detail = body["detail"].as_str().unwrap();
        assert!(
            detail.starts_with(&format!("Invalid {parameter} override: "))
                && detail.contains(needle),
            "{parameter}={value:?}: {detail:?}"
        );
    }

    // A name too long for a storage key is refused before anything is built or stored.
    let long = "n".repeat(200);
    let (status, body) = deploy_with(&server, &noop, &[("algorithm_name", &long)]).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("algorithm_deploy_failed")),
        "{body}"
    );
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("not a valid storage key"),
        "{body}"
    );

    assert_eq!(snapshot(), before, "refused deploys stored something");
    assert_eq!(server.store_unfinished_writes(), Vec::<String>::new());
    let (status, _) = server.get("/api/v0/algorithm/all").await;
    assert_eq!(status, 404, "the index stays empty");

    // A valid major override deploys and exports like a pyproject major.
    let r = deploy_path_ok(&server, &noop, &[("algorithm_major_version", "3")]).await;
    assert_eq!(r["algorithm_major_version"], "3");
    let (status, _, _) = export(&server, "/api/v0/algorithm/noop/3/export").await;
    assert_eq!(status, 200);
}

/// Writes `algo/` with noop's files plus `extra` entries (name, length in zero bytes) to `path`.
fn noop_zip_with(path: &Path, extra: &[(String, usize)]) {
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts = zip::write::SimpleFileOptions::default();
    for name in ["pyproject.toml", "Runner.py"] {
        z.start_file(format!("algo/{name}"), opts).unwrap();
        z.write_all(&std::fs::read(algorithms_dir().join("noop").join(name)).unwrap())
            .unwrap();
    }
    let zeros = vec![0u8; 1 << 20];
    for (name, len) in extra {
        z.start_file(name.as_str(), opts).unwrap();
        let mut left = *len;
        while left > 0 {
            let n = left.min(zeros.len());
            z.write_all(&zeros[..n]).unwrap();
            left -= n;
        }
    }
    z.finish().unwrap();
}

/// Zip bombs and zips with too many entries are refused with 400 naming the limit, and neither
/// storage nor the server's temporary folder keeps anything of them.
#[tokio::test]
async fn oversized_deploy_zips_are_refused_and_leave_nothing_behind() {
    let work = tempfile::tempdir().unwrap();
    let tmp = work.path().join("server-tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let server = Server::start_with(common::ServerOptions {
        env: vec![("TMPDIR".into(), tmp.display().to_string())],
        ..Default::default()
    });
    let snapshot = || -> Vec<BTreeSet<String>> {
        ["module-store", "asset-store", "algorithm-store"]
            .iter()
            .map(|c| keys(&server, c))
            .collect()
    };
    let before = snapshot();

    // 80 MiB of zeros deflate to well under 1 MiB: past 64 MiB that is over 100:1.
    let bomb = work.path().join("bomb.zip");
    noop_zip_with(&bomb, &[("algo/weights.bin".into(), 80 << 20)]);
    let (status, body) = deploy_with(&server, &bomb, &[]).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("algorithm_deploy_failed")),
        "{body}"
    );
    assert_eq!(
        body["details"],
        json!({ "path": bomb.display().to_string() })
    );
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.starts_with(&format!("Deployment zip {} is refused: ", bomb.display()))
            && detail
                .contains("a deploy zip may expand past 64 MiB only up to 100 times its own size"),
        "{detail}"
    );

    let crowded = work.path().join("crowded.zip");
    let empties: Vec<(String, usize)> = (0..100_000).map(|i| (format!("algo/e/{i}"), 0)).collect();
    noop_zip_with(&crowded, &empties);
    let (status, body) = deploy_with(&server, &crowded, &[]).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("algorithm_deploy_failed")),
        "{body}"
    );
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("it has 100002 entries, more than the limit of 100000"),
        "{detail}"
    );

    assert_eq!(snapshot(), before, "refused zips stored something");
    assert_eq!(server.store_unfinished_writes(), Vec::<String>::new());
    let mut left = Vec::new();
    let mut dirs = vec![tmp.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().map(Result::unwrap) {
            if e.file_name() == "unzipped" {
                left.push(e.path());
            } else if e.file_type().unwrap().is_dir() {
                dirs.push(e.path());
            }
        }
    }
    assert_eq!(
        left,
        Vec::<PathBuf>::new(),
        "extractions left in the temporary folder"
    );

    // Within the limits the same layout deploys.
    let fine = work.path().join("fine.zip");
    noop_zip_with(&fine, &[("algo/weights.bin".into(), 1 << 20)]);
    assert_eq!(
        deploy_path_ok(&server, &fine, &[]).await["algorithm_name"],
        "noop"
    );
}

/// Another writer of `algorithm-store` (an offline import, the original server, a second
/// compox on a shared store): the running server's index refresh sees new, rewritten and
/// deleted records without a restart, and keeps its own deployment exactly once.
#[tokio::test]
async fn records_written_by_another_writer_are_seen_without_a_restart() {
    let server = Server::start();
    let id = server.deploy_ok("noop").await;
    let (_, mut rec) = stored_record(&server, &id);
    let other_id = "41111111-2222-1333-8444-555555555555";
    let other_key = format!("{other_id}~elsewhere~1");
    rec["algorithm_id"] = json!(other_id);
    rec["algorithm_name"] = json!("elsewhere");

    // `until` is checked against A1 of `elsewhere` and the sorted A2 names.
    let wait = |what: &'static str, until: fn(u16, &Value, &[String]) -> bool| {
        let server = &server;
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let (status, a1) = server.get("/api/v0/algorithm/elsewhere/1").await;
                let (_, all) = server.get("/api/v0/algorithm/all").await;
                let mut names = names_of(&all);
                names.sort();
                if until(status, &a1, &names) {
                    return;
                }
                assert!(Instant::now() < deadline, "{what}: {status} {a1} {names:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };

    server.store_write(
        "algorithm-store",
        &other_key,
        &serde_json::to_vec(&rec).unwrap(),
    );
    wait("a new record appears", |status, a1, names| {
        status == 200
            && a1["algorithm_id"] == "41111111-2222-1333-8444-555555555555"
            && names == ["elsewhere", "noop"]
    })
    .await;
    let exec = json!({"algorithm_id": other_id, "input_dataset_ids": [],
                      "additional_parameters": {}});
    let (status, body) = server.post_json("/api/v0/execute-algorithm", &exec).await;
    assert_eq!(status, 200, "{body}");

    rec["algorithm_description"] = json!("Rewritten elsewhere");
    server.store_write(
        "algorithm-store",
        &other_key,
        &serde_json::to_vec(&rec).unwrap(),
    );
    wait(
        "a rewritten record is served as rewritten",
        |status, a1, _| status == 200 && a1["algorithm_description"] == "Rewritten elsewhere",
    )
    .await;

    // Our own writes in between are neither undone nor counted twice.
    let (status, body) = server.deploy(&algorithms_dir().join("noop")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["algorithm_id"], id.as_str());

    server.store_delete("algorithm-store", &other_key);
    wait("a deleted record disappears", |status, _, names| {
        status == 404 && names == ["noop"]
    })
    .await;
    let (status, body) = server.post_json("/api/v0/execute-algorithm", &exec).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("algorithm_not_found")),
        "{body}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, all) = server.get("/api/v0/algorithm/all").await;
    assert_eq!((status, names_of(&all)), (200, vec!["noop".to_string()]));
    assert_eq!(keys(&server, "algorithm-store").len(), 1);
}

/// A `pyproject.toml` that is a FIFO would block its reader until someone writes to it: the
/// deploy is refused at once and the server keeps answering.
#[tokio::test]
async fn a_pyproject_that_is_not_a_regular_file_is_refused_without_blocking() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let dir = copy_algorithm("noop", work.path(), "fifo_project");
    let pyproject = dir.join("pyproject.toml");
    std::fs::remove_file(&pyproject).unwrap();
    let c_path = std::ffi::CString::new(pyproject.display().to_string()).unwrap();
    // SAFETY: creating a FIFO at a path of our own temporary folder.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);

    let deploy = tokio::time::timeout(Duration::from_secs(20), deploy_with(&server, &dir, &[]));
    let (status, body) = deploy.await.expect("the deploy hung on the FIFO");
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "algorithm_deploy_failed", "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("is not a regular file"),
        "{body}"
    );
    let (status, _) = server.get("/health").await;
    assert_eq!(status, 200);
}

/// An export that finds its objects gone because the algorithm was deleted meanwhile is a 404,
/// as if the deletion had come first (`rest-api.md` A3); an object missing from an algorithm
/// that is still stored is a failed export.
#[tokio::test]
async fn an_export_racing_a_deletion_is_not_found() {
    let server = Server::start();
    let id = server.deploy_ok("tv_denoiser").await;
    let (key, record) = stored_record(&server, &id);
    let latest = record["latest_algorithm_minor_version"].as_str().unwrap();
    let entry = &record["algorithm_minor_version"][latest];
    let asset = entry["assets"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap();
    let asset = asset.as_str().unwrap().to_string();
    let module = entry["module_id"].as_str().unwrap().to_string();

    // The record is still stored: a missing asset is a failed export.
    server.store_delete("asset-store", &asset);
    let (status, _, body) = export(&server, "/api/v0/algorithm/tv_denoiser/1/export").await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, body["code"].as_str()),
        (500, Some("algorithm_export_failed"))
    );

    // Deleted underneath the server's index (another process, or a deletion in flight).
    server.store_delete("algorithm-store", &key);
    server.store_delete("module-store", &module);
    let (status, _, body) = export(&server, "/api/v0/algorithm/tv_denoiser/1/export").await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 404, "{body}");
}
