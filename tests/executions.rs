//! Executions end to end: submit (X1), poll (X3), stop (X2) and the hidden manager routes (M1–M3)
//! against the real server and its pyo3 workers, with the test algorithms of `tests/algorithms`
//! on the fixture images of `tests/fixtures/make_images.py`.

mod common;

use common::{assert_golden, golden, images, inspect_h5, venv, Backend, Server, ServerOptions};
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

const TERMINAL: Duration = Duration::from_secs(60);

/// The interpreter the workers are built against; the venv is one of its virtual environments.
const BASE_PYTHON: &str = "/root/.pyenv/versions/3.11.7/bin/python3";

/// Stage lines of a successful execution (`runtime.md` §8.3), in order.
const STAGES: &[&str] = &[
    "INFO Fetching algorithm...",
    "INFO Fetching algorithm ",
    "INFO Loading the algorithm.",
    "INFO Algorithm runner successfully loaded in ",
    "INFO Algorithm fetched in ",
    "INFO Starting execution.",
    "INFO Data preprocessing finished in ",
    "INFO Running inference.",
    "INFO Inference finished in ",
    "INFO Postprocessing output data.",
    "INFO Postprocessing finished in ",
    "INFO Execution completed in ",
    "INFO File fetching stats: ",
    "INFO File posting stats: ",
];

fn input(name: &str) -> std::path::PathBuf {
    let path = images().join(name);
    assert!(
        path.exists(),
        "fixture {name} was not generated (see make_images.py)"
    );
    path
}

async fn upload_image(server: &Server, name: &str) -> String {
    server.upload(&input(name)).await
}

/// Submits and waits for the terminal record; returns it with the statuses seen while polling.
async fn run(
    server: &Server,
    algorithm: &str,
    inputs: &[String],
    params: Value,
) -> (Value, Vec<String>) {
    let id = server.execute(algorithm, inputs, params).await;
    server.wait_terminal(&id, TERMINAL).await
}

async fn record(server: &Server, id: &str) -> Value {
    let (status, rec) = server.get(&format!("/api/v0/executions/{id}")).await;
    assert_eq!(status, 200, "{rec}");
    rec
}

/// Polls until `pred` holds for the execution's record.
async fn wait_record(
    server: &Server,
    id: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + TERMINAL;
    loop {
        let rec = record(server, id).await;
        if pred(&rec) {
            return rec;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: last record {rec}\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

/// Waits until the execution runs its algorithm and has reported some progress.
async fn wait_progressing(server: &Server, id: &str) -> Value {
    wait_record(server, id, "execution never reported progress", |r| {
        r["status"] == "RUNNING" && r["progress"].as_f64().unwrap_or(0.0) > 0.0
    })
    .await
}

async fn wait_log_contains(server: &Server, id: &str, text: &str) -> Value {
    wait_record(server, id, &format!("log never held {text:?}"), |r| {
        r["log"].as_str().unwrap_or("").contains(text)
    })
    .await
}

async fn stop(server: &Server, id: &str) -> (u16, Value) {
    server.post(&format!("/api/v0/executions/{id}/stop")).await
}

/// The worker pid of slot `index` once that worker is ready.
async fn worker_pid(server: &Server, index: usize) -> u32 {
    let health = server.wait_workers_ready(TERMINAL).await;
    health["workers"][index]["pid"]
        .as_u64()
        .expect("ready worker has a pid") as u32
}

/// Waits until worker `index` is ready again with a pid other than `old`.
async fn wait_restarted(server: &Server, index: usize, old: u32) -> u32 {
    let deadline = Instant::now() + TERMINAL;
    loop {
        let health = server.health().await;
        let w = &health["workers"][index];
        if w["ready"] == true && w["pid"].as_u64().is_some_and(|p| p as u32 != old) {
            return w["pid"].as_u64().unwrap() as u32;
        }
        assert!(
            Instant::now() < deadline,
            "worker {index} not restarted: {health}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn log_of(rec: &Value) -> &str {
    rec["log"].as_str().expect("log is a string")
}

/// Asserts each needle occurs in `log`, each after the previous one.
fn assert_in_order(log: &str, needles: &[&str]) {
    let mut at = 0;
    for needle in needles {
        match log[at..].find(needle) {
            Some(i) => at += i + needle.len(),
            None => panic!("{needle:?} missing (or out of order) in the log:\n{log}"),
        }
    }
}

/// Every line of a task log starts with `YYYY-MM-DD HH:MM:SS LEVEL `.
fn assert_log_lines_well_formed(log: &str) {
    let levels = ["INFO", "WARNING", "ERROR", "SUCCESS", "CRITICAL", "DEBUG"];
    for line in log
        .lines()
        .filter(|l| l.len() > 20 && l.as_bytes()[4] == b'-')
    {
        assert!(
            chrono::NaiveDateTime::parse_from_str(&line[..19], "%Y-%m-%d %H:%M:%S").is_ok(),
            "bad log time in {line:?}"
        );
        let level = line[20..].split(' ').next().unwrap_or("");
        assert!(levels.contains(&level), "bad log level in {line:?}");
    }
}

fn assert_local_time(value: &Value, field: &str) {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("{field} is not a string: {value}"));
    assert_eq!(
        text.len(),
        26,
        "{field} {text:?} is not YYYY-MM-DD HH:MM:SS.ffffff"
    );
    assert!(
        chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.6f").is_ok(),
        "{field} {text:?} is not YYYY-MM-DD HH:MM:SS.ffffff"
    );
}

fn keys(v: &Value) -> Vec<String> {
    v.as_object().expect("an object").keys().cloned().collect()
}

/// The final record has the shape of the original's (golden `execution_get_final_dummy`).
fn assert_completed_shape(rec: &Value) {
    let (_, gold) = golden("execution_get_final_dummy");
    assert_eq!(
        keys(rec),
        keys(&gold),
        "record keys differ from the golden: {rec}"
    );
    assert_eq!(rec["status"], "COMPLETED", "{rec}");
    assert!(
        rec["progress"].is_f64(),
        "progress is not a JSON float: {rec}"
    );
    assert_eq!(rec["progress"].as_f64(), Some(1.0));
    assert_eq!(rec["resolved_execution_device"], "cpu");
    assert_local_time(&rec["time_started"], "time_started");
    assert_local_time(&rec["time_completed"], "time_completed");
    assert!(
        rec["time_completed"].as_str() >= rec["time_started"].as_str(),
        "{rec}"
    );
    let token = rec["session_token"].as_str().expect("session_token is set");
    assert!(
        uuid::Uuid::parse_str(token).is_ok(),
        "session_token {token:?}"
    );
    assert!(rec["output_dataset_ids"].is_array());
    assert_log_lines_well_formed(log_of(rec));
}

/// Statuses seen while polling follow PENDING → STARTED → RUNNING → `last` (any may be skipped).
fn assert_status_sequence(seen: &[String], last: &str) {
    let order = ["PENDING", "STARTED", "RUNNING", last];
    let mut at = 0;
    for s in seen {
        let pos = order[at..]
            .iter()
            .position(|o| o == s)
            .unwrap_or_else(|| panic!("unexpected status order {seen:?}"));
        at += pos;
    }
    assert_eq!(seen.last().map(String::as_str), Some(last), "{seen:?}");
}

/// The UTF-8 text of the uint8 dataset `key` of an HDF5 file (all_params' echo).
fn h5_text(bytes: &[u8], key: &str) -> String {
    let script = "import sys, h5py\nwith h5py.File(sys.argv[1], 'r') as f:\n    sys.stdout.write(bytes(f[sys.argv[2]][()]).decode('utf-8'))\n";
    String::from_utf8(common::run_h5_script(bytes, script, &[key])).unwrap()
}

/// Evaluates a Python expression over the HDF5 file `f` (h5py, numpy as `np`); returns its JSON.
fn h5_eval(bytes: &[u8], expression: &str) -> Value {
    let script = format!(
        "import sys, json, h5py, numpy as np\nwith h5py.File(sys.argv[1], 'r') as f:\n    print(json.dumps({expression}))\n"
    );
    serde_json::from_slice(&common::run_h5_script(bytes, &script, &[])).unwrap()
}

/// The stored record once storage holds a terminal state (the pool may answer from memory first).
async fn stored_terminal(server: &Server, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stored = server
            .store_read("execution-store", id)
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
        if let Some(v) = stored.filter(|v| {
            ["COMPLETED", "FAILED", "STOPPED"].contains(&v["status"].as_str().unwrap_or(""))
        }) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "stored record of {id} never terminal"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

fn base_python_version() -> String {
    let out = Command::new(BASE_PYTHON)
        .args(["-c", "import sys; sys.stdout.write(sys.version)"])
        .output()
        .expect("run the base interpreter");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn kill(pid: u32, signal: i32) {
    // SAFETY: signalling a process this test's server started.
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0, "kill {pid}");
}

fn stop_request_exists(server: &Server, id: &str) -> bool {
    server.store_exists("stop-requests", id)
}

/// The stored execution record of `id`, if storage has one.
fn stored_record(server: &Server, id: &str) -> Option<Value> {
    server
        .store_read("execution-store", id)
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
}

// --- end to end on real images -------------------------------------------------------------

#[tokio::test]
async fn tv_denoiser_smooths_float_and_uint16_images() {
    let server = Server::start();
    let alg = server.deploy_ok("tv_denoiser").await;
    let cell = upload_image(&server, "cell.h5").await;
    let ct = upload_image(&server, "ct_slice.h5").await;

    // Image2Image stacks its inputs into one volume, so images of different shapes run apart.
    for (name, id) in [("cell.h5", cell), ("ct_slice.h5", ct)] {
        let (rec, seen) = run(
            &server,
            &alg,
            std::slice::from_ref(&id),
            json!({"denoising_weight": 0.2}),
        )
        .await;

        assert_status_sequence(&seen, "COMPLETED");
        assert_completed_shape(&rec);
        assert_eq!(
            rec["additional_parameters"],
            json!({"denoising_weight": 0.2})
        );
        assert_eq!(rec["input_dataset_ids"], json!([id]));
        let log = log_of(&rec);
        assert_in_order(log, STAGES);
        assert!(
            log.contains("INFO Denoising 1 slice(s) with weight 0.2."),
            "{log}"
        );
        assert!(
            log.contains("INFO Uploading 1 results to the database."),
            "{log}"
        );
        assert!(
            log.contains("File fetching stats: 1.0 files fetched"),
            "{log}"
        );
        let outputs = rec["output_dataset_ids"].as_array().unwrap();
        assert_eq!(outputs.len(), 1, "{rec}");

        let before = inspect_h5(&std::fs::read(input(name)).unwrap())["image"].clone();
        let after = inspect_h5(&server.download(outputs[0].as_str().unwrap()).await);
        let after = after.as_object().unwrap().values().next().unwrap().clone();
        assert_eq!(after["shape"], before["shape"], "{name}");
        assert_eq!(after["dtype"], "float32", "{name}");
        let (tv_in, tv_out) = (
            before["tv"].as_f64().unwrap(),
            after["tv"].as_f64().unwrap(),
        );
        assert!(
            tv_out < 0.9 * tv_in,
            "{name}: total variation {tv_in} -> {tv_out}"
        );
        let (lo, hi) = (
            before["min"].as_f64().unwrap(),
            before["max"].as_f64().unwrap(),
        );
        let slack = 1e-3 * (hi - lo).max(1.0);
        assert!(
            after["min"].as_f64().unwrap() >= lo - slack,
            "{name}: {after} vs {before}"
        );
        assert!(
            after["max"].as_f64().unwrap() <= hi + slack,
            "{name}: {after} vs {before}"
        );
    }
}

#[tokio::test]
async fn tv_denoiser_final_record_matches_golden() {
    let server = Server::start();
    let alg = server.deploy_ok("tv_denoiser").await;
    let ct = upload_image(&server, "ct_slice.h5").await;

    let (rec, seen) = run(&server, &alg, &[ct], json!({})).await;

    assert_status_sequence(&seen, "COMPLETED");
    assert_golden("execution_get_final_dummy", 200, &rec);
    assert_completed_shape(&rec);
    assert_in_order(log_of(&rec), STAGES);
    // The asset default (files/config/defaults.json) is used when the argument is absent.
    assert!(
        log_of(&rec).contains("INFO Denoising 1 slice(s) with weight"),
        "{rec}"
    );
}

#[tokio::test]
async fn threshold_segmenter_makes_binary_mask_of_coins() {
    let server = Server::start();
    let alg = server.deploy_ok("threshold_segmenter").await;
    let coins = upload_image(&server, "coins.h5").await;

    let (rec, seen) = run(&server, &alg, &[coins], json!({"method": "otsu"})).await;

    assert_status_sequence(&seen, "COMPLETED");
    assert_completed_shape(&rec);
    assert_in_order(log_of(&rec), STAGES);
    let outputs = rec["output_dataset_ids"].as_array().unwrap();
    assert_eq!(outputs.len(), 1);
    let mask = inspect_h5(&server.download(outputs[0].as_str().unwrap()).await);
    let mask = mask.as_object().unwrap().values().next().unwrap().clone();
    assert_eq!(mask["shape"], json!([303, 384]));
    assert_eq!(mask["dtype"], "uint8");
    assert_eq!(
        (mask["min"].as_f64(), mask["max"].as_f64()),
        (Some(0.0), Some(1.0))
    );
    assert_eq!(mask["unique"], 2);
    let foreground = mask["mean"].as_f64().unwrap();
    assert!(
        (0.2..0.6).contains(&foreground),
        "foreground fraction {foreground}"
    );
}

#[tokio::test]
async fn phase_registration_recovers_the_camera_shift() {
    let server = Server::start();
    let alg = server.deploy_ok("phase_registration").await;
    let a = upload_image(&server, "camera_shifted_0.h5").await;
    let b = upload_image(&server, "camera_shifted_1.h5").await;

    let (rec, seen) = run(&server, &alg, &[a, b], json!({"upsample_factor": 10})).await;

    assert_status_sequence(&seen, "COMPLETED");
    assert_completed_shape(&rec);
    let outputs = rec["output_dataset_ids"].as_array().unwrap();
    assert_eq!(outputs.len(), 1, "one matrix for two inputs: {rec}");
    let file = inspect_h5(&server.download(outputs[0].as_str().unwrap()).await);
    let matrix = file["transform_matrix"].clone();
    assert_eq!(matrix["shape"], json!([3, 3]));
    assert_eq!(matrix["dtype"], "float64");
    let m = &matrix["values"];
    let at = |r: usize, c: usize| m[r][c].as_f64().unwrap();
    assert!((at(1, 2) - -5.0).abs() < 0.2, "row shift {m}");
    assert!((at(0, 2) - 3.0).abs() < 0.2, "column shift {m}");
    assert!(
        (at(0, 0) - 1.0).abs() < 1e-6 && (at(1, 1) - 1.0).abs() < 1e-6,
        "{m}"
    );
    assert_eq!(m[2], json!([0.0, 0.0, 1.0]));
}

#[tokio::test]
async fn multi_region_partitions_each_input() {
    let server = Server::start();
    let alg = server.deploy_ok("multi_region").await;
    let coins = upload_image(&server, "coins.h5").await;

    let (rec, seen) = run(&server, &alg, &[coins], json!({})).await;

    assert_status_sequence(&seen, "COMPLETED");
    assert_completed_shape(&rec);
    let outputs = rec["output_dataset_ids"].as_array().unwrap();
    assert_eq!(outputs.len(), 1, "{rec}");
    let bytes = server.download(outputs[0].as_str().unwrap()).await;
    let file = inspect_h5(&bytes);
    assert_eq!(
        file["region_masks"]["shape"],
        json!([2, 303, 384]),
        "{file}"
    );
    assert_eq!(file["region_masks"]["dtype"], "uint8", "{file}");
    let check = h5_eval(
        &bytes,
        "{'names': sorted(n.decode() if isinstance(n, bytes) else str(n) for n in f['region_names'][()]), \
          'partition': bool((f['region_masks'][0].astype(int) + f['region_masks'][1] == 1).all()), \
          'both': bool(f['region_masks'][0].any() and f['region_masks'][1].any())}",
    );
    assert_eq!(
        check,
        json!({"names": ["bright", "dark"], "partition": true, "both": true})
    );
}

#[tokio::test]
async fn embedder_posts_features_and_sizes() {
    let server = Server::start();
    let alg = server.deploy_ok("embedder").await;
    let coins = upload_image(&server, "coins.h5").await;

    let (rec, seen) = run(&server, &alg, &[coins], json!({"input_size": 16})).await;

    assert_status_sequence(&seen, "COMPLETED");
    assert_completed_shape(&rec);
    let outputs = rec["output_dataset_ids"].as_array().unwrap();
    assert_eq!(outputs.len(), 1, "{rec}");
    let file = inspect_h5(&server.download(outputs[0].as_str().unwrap()).await);
    assert_eq!(file["features"]["shape"], json!([2, 16, 16]), "{file}");
    assert_eq!(file["features"]["dtype"], "float32");
    assert_eq!(file["input_size"]["min"], 16.0, "{file}");
    assert_eq!(file["input_size"]["max"], 16.0, "{file}");
    assert_eq!(file["original_size"]["min"], 303.0, "{file}");
    assert_eq!(file["original_size"]["max"], 384.0, "{file}");
}

#[tokio::test]
async fn all_params_echoes_every_argument() {
    let server = Server::start();
    let alg = server.deploy_ok("all_params").await;
    let params = json!({
        "label": "héllo wörld",
        "iterations": 7,
        "scale": 2.25,
        "verbose": false,
        "tile-size": 128,
        "alpha": 0.3,
        "__noise__model": "poisson",
        "levels": 4,
        "gamma": 2.2,
        "channel_names": ["blue"],
        "kernel_sizes": [9],
        "weights": [0.5, 0.5],
        "flags": [false],
        "nested": {"a": [1, {"b": null}]},
    });

    let (rec, seen) = run(&server, &alg, &[], params.clone()).await;

    assert_status_sequence(&seen, "COMPLETED");
    assert_completed_shape(&rec);
    assert_eq!(rec["additional_parameters"], params);
    assert_eq!(rec["input_dataset_ids"], json!([]));
    let log = log_of(&rec);
    assert!(log.contains("INFO Received 14 argument(s)."), "{log}");
    assert!(log.contains("INFO arg label = 'héllo wörld'"), "{log}");
    assert!(log.contains("INFO arg verbose = False"), "{log}");
    assert!(log.contains("INFO arg tile-size = 128"), "{log}");
    let outputs = rec["output_dataset_ids"].as_array().unwrap();
    assert_eq!(outputs.len(), 1);
    let echoed: Value = serde_json::from_str(&h5_text(
        &server.download(outputs[0].as_str().unwrap()).await,
        "data",
    ))
    .unwrap();
    assert_eq!(echoed, params);
}

// --- the workers' interpreter ----------------------------------------------------------------

#[tokio::test]
async fn workers_run_the_base_interpreter_in_the_repo_venv() {
    let server = Server::start();
    let health = server.wait_workers_ready(TERMINAL).await;

    let version = base_python_version();
    let workers = health["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1, "{health}");
    for w in workers {
        let reported = w["python_version"].as_str().expect("python_version");
        assert!(
            reported.starts_with(&version),
            "worker {reported:?} vs base {version:?}"
        );
        let prefix = w["python_prefix"].as_str().expect("python_prefix");
        assert_eq!(
            std::fs::canonicalize(prefix).unwrap(),
            std::fs::canonicalize(venv()).unwrap(),
            "{health}"
        );
    }
}

#[tokio::test]
async fn numpy_resolves_from_the_venv() {
    let server = Server::start();

    // all_params imports numpy at module level; the base interpreter has none of its own.
    let base_has_numpy = Command::new(BASE_PYTHON)
        .args(["-c", "import numpy"])
        .output()
        .unwrap()
        .status
        .success();
    let alg = server.deploy_ok("all_params").await;
    let (rec, _) = run(&server, &alg, &[], json!({"label": "x"})).await;
    assert_eq!(rec["status"], "COMPLETED", "{rec}");

    // Stacking two images of different shapes fails inside numpy; the traceback names the
    // numpy the worker imported.
    let tv = server.deploy_ok("tv_denoiser").await;
    let coins = upload_image(&server, "coins.h5").await;
    let camera = upload_image(&server, "camera_shifted_0.h5").await;
    let (rec, _) = run(&server, &tv, &[coins, camera], json!({})).await;
    assert_eq!(rec["status"], "FAILED", "{rec}");
    let log = log_of(&rec);
    let venv_numpy = format!("{}/lib/python3.11/site-packages/numpy/", venv().display());
    assert!(
        log.contains(&venv_numpy),
        "numpy not from {venv_numpy}: {log} (base has numpy: {base_has_numpy})"
    );
    assert!(
        log.contains("ValueError: all input arrays must have the same shape"),
        "{log}"
    );
}

// --- failures ----------------------------------------------------------------------------------

#[tokio::test]
async fn raiser_fails_with_traceback() {
    let server = Server::start();
    let alg = server.deploy_ok("raiser").await;

    let (rec, seen) = run(&server, &alg, &[], json!({})).await;

    assert_status_sequence(&seen, "FAILED");
    assert_eq!(rec["progress"].as_f64(), Some(1.0));
    assert!(rec["progress"].is_f64());
    assert_eq!(rec["output_dataset_ids"], json!([]));
    assert_local_time(&rec["time_completed"], "time_completed");
    assert!(
        rec.get("error").is_none(),
        "the stored error is not returned: {rec}"
    );
    let log = log_of(&rec);
    assert_in_order(
        log,
        &[
            "INFO raiser: about to raise.",
            "ERROR Task failed",
            "Traceback (most recent call last)",
            "RuntimeError: deliberate failure in inference",
            "INFO File fetching stats: ",
        ],
    );
    let stored = stored_terminal(&server, rec["execution_id"].as_str().unwrap()).await;
    assert_eq!(stored["error"]["type"], "RuntimeError", "{stored}");
}

#[tokio::test]
async fn bad_import_fails_like_a_missing_dependency() {
    let server = Server::start();
    let alg = server.deploy_ok("bad_import").await;
    let coins = upload_image(&server, "coins.h5").await;

    let (rec, seen) = run(&server, &alg, &[coins], json!({})).await;

    assert_status_sequence(&seen, "FAILED");
    assert_golden("err_execute_missing_python_dependency_final", 200, &rec);
    let log = log_of(&rec);
    assert_in_order(
        log,
        &[
            "INFO Fetching algorithm...",
            "INFO Loading the algorithm.",
            "ERROR Task failed",
            "definitely_not_installed_pkg",
            "INFO File posting stats: 0.0 files posted",
        ],
    );
    assert!(log.contains("CompoxImportError"), "{log}");
    let stored = stored_terminal(&server, rec["execution_id"].as_str().unwrap()).await;
    assert_eq!(
        stored["error"]["code"], "algorithm_module_import_failed",
        "{stored}"
    );
}

#[tokio::test]
async fn input_without_image_key_fails() {
    let server = Server::start();
    let alg = server.deploy_ok("tv_denoiser").await;
    let bad = upload_image(&server, "no_image_key.h5").await;

    let (rec, seen) = run(&server, &alg, &[bad], json!({})).await;

    assert_status_sequence(&seen, "FAILED");
    assert_golden(
        "execution_get_final_err_dummy_input_without_image_key",
        200,
        &rec,
    );
    assert_in_order(
        log_of(&rec),
        &[
            "INFO Fetching algorithm...",
            "INFO Starting execution.",
            "ERROR Task failed",
        ],
    );
}

/// A worker that dies mid-run fails its execution with a readable reason and is replaced.
async fn assert_worker_death_fails_and_recovers(algorithm: &str, reason: &str) {
    let server = Server::start();
    let alg = server.deploy_ok(algorithm).await;
    let noop = server.deploy_ok("noop").await;
    let pid = worker_pid(&server, 0).await;

    let (rec, seen) = run(&server, &alg, &[], json!({})).await;

    assert_eq!(seen.last().map(String::as_str), Some("FAILED"), "{rec}");
    assert_eq!(rec["progress"].as_f64(), Some(1.0));
    assert_eq!(rec["output_dataset_ids"], json!([]));
    assert_local_time(&rec["time_completed"], "time_completed");
    let log = log_of(&rec);
    assert!(
        log.contains("ERROR Worker process died during the execution"),
        "{log}"
    );
    assert!(log.contains(reason), "{reason:?} missing in {log}");

    let new_pid = wait_restarted(&server, 0, pid).await;
    assert_ne!(new_pid, pid);
    let health = server.health().await;
    assert!(
        health["workers"][0]["last_exit"]
            .as_str()
            .unwrap_or("")
            .contains(reason),
        "{health}"
    );
    let (next, _) = run(&server, &noop, &[], json!({})).await;
    assert_eq!(next["status"], "COMPLETED", "{next}");
}

#[tokio::test]
async fn crasher_exit_fails_execution_and_worker_restarts() {
    assert_worker_death_fails_and_recovers("crasher", "exit code 3").await;
}

#[tokio::test]
async fn segfaulter_fails_execution_and_worker_restarts() {
    assert_worker_death_fails_and_recovers("segfaulter", "SIGSEGV").await;
}

#[tokio::test]
async fn worker_killed_mid_run_fails_execution() {
    let server = Server::start();
    let alg = server.deploy_ok("sleeper").await;
    let noop = server.deploy_ok("noop").await;
    let id = server.execute(&alg, &[], json!({"seconds": 30.0})).await;
    wait_progressing(&server, &id).await;
    let health = server.health().await;
    assert_eq!(health["workers"][0]["busy_with"], id.as_str(), "{health}");
    let pid = health["workers"][0]["pid"].as_u64().unwrap() as u32;

    kill(pid, libc::SIGKILL);
    let (rec, _) = server.wait_terminal(&id, TERMINAL).await;

    assert_eq!(rec["status"], "FAILED", "{rec}");
    assert_eq!(rec["progress"].as_f64(), Some(1.0));
    assert!(log_of(&rec).contains("SIGKILL"), "{rec}");
    wait_restarted(&server, 0, pid).await;
    let (next, _) = run(&server, &noop, &[], json!({})).await;
    assert_eq!(next["status"], "COMPLETED", "{next}");
    let (status, _) = server.get("/").await;
    assert_eq!(status, 200);
}

// --- 404s and 422s ---------------------------------------------------------------------------

#[tokio::test]
async fn unknown_ids_answer_like_the_original() {
    let server = Server::start();
    let coins = upload_image(&server, "coins.h5").await;
    let alg = server.deploy_ok("noop").await;
    let zero = "00000000-0000-0000-0000-000000000000";

    let (status, body) = server
        .post_json(
            "/api/v0/execute-algorithm",
            &json!({"algorithm_id": zero, "input_dataset_ids": [coins]}),
        )
        .await;
    assert_golden("err_execute_unknown_algorithm", status, &body);
    assert_eq!(body["details"]["algorithm_id"], zero);

    let (status, body) = server
        .post_json(
            "/api/v0/execute-algorithm",
            &json!({"algorithm_id": alg, "input_dataset_ids": [coins, "no-such-dataset-1", "no-such-dataset-2"]}),
        )
        .await;
    assert_golden("err_execute_unknown_dataset", status, &body);

    let (status, body) = server.get(&format!("/api/v0/executions/{zero}")).await;
    assert_golden("err_get_execution_unknown", status, &body);
    assert_eq!(body["details"]["execution_id"], zero);

    let (status, body) = stop(&server, zero).await;
    assert_golden("err_stop_execution_unknown", status, &body);
    assert!(
        !stop_request_exists(&server, zero),
        "no stop request for an unknown execution"
    );

    // Nothing was queued or stored by the refused submissions.
    let (_, all) = server.get("/api/v0/execute-algorithm/all").await;
    assert_eq!(all, json!([]));
}

/// Posts a raw body, with the given content type (or none).
async fn post_raw(server: &Server, body: &str, content_type: Option<&str>) -> (u16, Value) {
    let mut req = server
        .client
        .post(server.url("/api/v0/execute-algorithm"))
        .body(body.to_string());
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn golden_request_body(name: &str) -> String {
    let path = common::repo()
        .join("../shared/golden")
        .join(format!("{name}.json"));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    match &v["request"]["body"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[tokio::test]
async fn invalid_bodies_answer_422_like_the_original() {
    let server = Server::start_with(ServerOptions {
        wait_ready: false,
        ..Default::default()
    });

    let body = golden_request_body("err_execute_malformed_json");
    let (status, resp) = post_raw(&server, &body, Some("application/json")).await;
    assert_golden("err_execute_malformed_json", status, &resp);

    let body = golden_request_body("err_execute_missing_field");
    let (status, resp) = post_raw(&server, &body, Some("application/json")).await;
    assert_golden("err_execute_missing_field", status, &resp);
    assert_eq!(
        resp["detail"][0]["input"],
        serde_json::from_str::<Value>(&body).unwrap()
    );

    let body = golden_request_body("err_execute_no_content_type");
    let (status, resp) = post_raw(&server, &body, None).await;
    assert_golden("err_execute_no_content_type", status, &resp);
    assert_eq!(resp["detail"][0]["input"], body.as_str());
}

// --- stop ------------------------------------------------------------------------------------

#[tokio::test]
async fn sleeper_stops_within_a_second() {
    let server = Server::start();
    let alg = server.deploy_ok("sleeper").await;
    let id = server.execute(&alg, &[], json!({"seconds": 30.0})).await;
    wait_progressing(&server, &id).await;

    let asked = Instant::now();
    let (status, body) = stop(&server, &id).await;
    assert_golden("stop_post_running", status, &body);
    let (rec, _) = server.wait_terminal(&id, TERMINAL).await;
    let took = asked.elapsed();

    assert_eq!(rec["status"], "STOPPED", "{rec}");
    assert!(took < Duration::from_millis(2000), "stop took {took:?}");
    let progress = rec["progress"].as_f64().unwrap();
    assert!(progress > 0.0 && progress < 1.0, "{rec}");
    assert!(rec["progress"].is_f64());
    assert_local_time(&rec["time_completed"], "time_completed");
    assert_eq!(rec["output_dataset_ids"], json!([]));
    assert_in_order(
        log_of(&rec),
        &[
            "INFO sleeper: sleeping 30",
            "INFO Received stop request. Stopping task.",
            "INFO File posting stats: ",
        ],
    );
    assert!(!log_of(&rec).contains("sleeper: done."), "{rec}");
    // The stop request is consumed, and the worker is free for the next execution.
    wait_record(&server, &id, "stop request removed", |_| {
        !stop_request_exists(&server, &id)
    })
    .await;
    let (again, _) = run(&server, &alg, &[], json!({"seconds": 0.2})).await;
    assert_eq!(again["status"], "COMPLETED", "{again}");
    let (status, body) = stop(&server, &id).await;
    assert_eq!(
        status, 400,
        "a STOPPED execution cannot be stopped again: {body}"
    );
}

#[tokio::test]
async fn stubborn_sleeper_still_ends_stopped() {
    let server = Server::start();
    let alg = server.deploy_ok("stubborn_sleeper").await;
    let noop = server.deploy_ok("noop").await;
    let pid = worker_pid(&server, 0).await;
    let id = server.execute(&alg, &[], json!({"seconds": 30.0})).await;
    wait_progressing(&server, &id).await;

    let asked = Instant::now();
    assert_eq!(stop(&server, &id).await.0, 200);
    let (rec, _) = server.wait_terminal(&id, TERMINAL).await;

    assert_eq!(rec["status"], "STOPPED", "{rec}");
    assert!(
        asked.elapsed() < Duration::from_millis(2000),
        "stop took {:?}",
        asked.elapsed()
    );
    assert!(rec["progress"].as_f64().unwrap() < 1.0, "{rec}");
    assert!(
        log_of(&rec).contains("Received stop request. Stopping task."),
        "{rec}"
    );
    wait_record(&server, &id, "stop request removed", |_| {
        !stop_request_exists(&server, &id)
    })
    .await;
    // It keeps looping after swallowing the stop, so its worker is killed after the 3 s grace
    // instead of being held for the rest of the 30 s; the record stays STOPPED.
    let new_pid = wait_restarted(&server, 0, pid).await;
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "worker held for {:?}",
        asked.elapsed()
    );
    assert_ne!(new_pid, pid);
    let after = record(&server, &id).await;
    assert_eq!(after["status"], "STOPPED", "{after}");
    assert_eq!(after["time_completed"], rec["time_completed"], "{after}");
    let (next, _) = run(&server, &noop, &[], json!({})).await;
    assert_eq!(next["status"], "COMPLETED", "{next}");
}

#[tokio::test]
async fn deaf_sleeper_is_killed_after_the_grace_period() {
    let server = Server::start();
    let alg = server.deploy_ok("deaf_sleeper").await;
    let noop = server.deploy_ok("noop").await;
    let pid = worker_pid(&server, 0).await;
    let id = server.execute(&alg, &[], json!({"seconds": 30.0})).await;
    // The log reaches the record at stage ends, so this is the last line before inference.
    wait_log_contains(&server, &id, "Data preprocessing finished").await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let asked = Instant::now();
    assert_eq!(stop(&server, &id).await.0, 200);
    // The request is in storage while the deaf algorithm ignores it.
    wait_record(&server, &id, "stop request stored", |_| {
        stop_request_exists(&server, &id)
    })
    .await;
    let (rec, _) = server.wait_terminal(&id, TERMINAL).await;
    let took = asked.elapsed();

    assert_eq!(rec["status"], "STOPPED", "{rec}");
    assert!(
        took >= Duration::from_millis(2500),
        "stopped before the 3 s grace: {took:?}"
    );
    assert!(took < Duration::from_secs(10), "stop took {took:?}");
    assert!(rec["progress"].as_f64().unwrap() < 1.0, "{rec}");
    assert_local_time(&rec["time_completed"], "time_completed");
    assert!(
        log_of(&rec)
            .contains("Worker stopped after the stop grace period (killed by compox with SIGKILL)"),
        "not blamed on memory: {rec}"
    );
    wait_restarted(&server, 0, pid).await;
    wait_record(&server, &id, "stop request removed", |_| {
        !stop_request_exists(&server, &id)
    })
    .await;
    let (next, _) = run(&server, &noop, &[], json!({})).await;
    assert_eq!(next["status"], "COMPLETED", "{next}");
    assert_eq!(record(&server, &id).await["status"], "STOPPED");
}

#[tokio::test]
async fn completed_execution_is_not_stoppable() {
    let server = Server::start();
    let alg = server.deploy_ok("noop").await;
    let (rec, _) = run(&server, &alg, &[], json!({})).await;
    assert_eq!(rec["status"], "COMPLETED");
    let id = rec["execution_id"].as_str().unwrap();

    let (status, body) = stop(&server, id).await;

    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body,
        json!({
            "detail": "Execution in state COMPLETED cannot be stopped",
            "code": "execution_not_stoppable",
            "retryable": false,
            "details": {"execution_id": id, "status": "COMPLETED"},
        })
    );
    assert!(!stop_request_exists(&server, id));
}

#[tokio::test]
async fn queued_execution_stops_without_running() {
    let server = Server::start();
    let sleeper = server.deploy_ok("sleeper").await;
    let printer = server.deploy_ok("printer").await;
    let busy = server
        .execute(&sleeper, &[], json!({"seconds": 30.0}))
        .await;
    wait_progressing(&server, &busy).await;
    let queued = server.execute(&printer, &[], json!({})).await;
    let rec = record(&server, &queued).await;
    assert_eq!(
        rec["status"], "PENDING",
        "one worker, so the second waits: {rec}"
    );
    assert_eq!(server.health().await["queued"], 1);

    let (status, _) = stop(&server, &queued).await;
    assert_eq!(status, 200);
    let (rec, _) = server.wait_terminal(&queued, Duration::from_secs(5)).await;

    assert_eq!(rec["status"], "STOPPED", "{rec}");
    assert_eq!(rec["progress"].as_f64(), Some(0.0));
    assert_local_time(&rec["time_completed"], "time_completed");
    let log = log_of(&rec);
    assert!(
        log.contains("Received stop request. Stopping task."),
        "{log}"
    );
    assert!(
        !log.contains("Fetching algorithm") && !log.contains("printer:"),
        "it ran: {log}"
    );
    assert_eq!(
        record(&server, &busy).await["status"],
        "RUNNING",
        "the running one is untouched"
    );
    wait_record(&server, &queued, "stop request removed", |_| {
        !stop_request_exists(&server, &queued)
    })
    .await;

    assert_eq!(stop(&server, &busy).await.0, 200);
    let (rec, _) = server.wait_terminal(&busy, TERMINAL).await;
    assert_eq!(rec["status"], "STOPPED");
    // The stopped queued execution never runs later either.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rec = record(&server, &queued).await;
    assert_eq!(rec["status"], "STOPPED", "{rec}");
    assert!(!log_of(&rec).contains("printer:"), "{rec}");
    // The stored record agrees with what the pool answered.
    let stored = stored_terminal(&server, &queued).await;
    assert_eq!(stored["status"], "STOPPED", "{stored}");
}

// --- queueing ----------------------------------------------------------------------------------

#[tokio::test]
async fn one_worker_runs_a_burst_one_after_another() {
    let server = Server::start();
    let alg = server.deploy_ok("noop").await;
    let mut ids = Vec::new();
    let submits: Vec<_> = (0..5)
        .map(|_| server.execute(&alg, &[], json!({})))
        .collect();
    for id in futures_util::future::join_all(submits).await {
        ids.push(id);
    }
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 5);

    let mut finished = Vec::new();
    for id in &ids {
        let (rec, _) = server.wait_terminal(id, TERMINAL).await;
        assert_eq!(rec["status"], "COMPLETED", "{rec}");
        assert_eq!(rec["output_dataset_ids"], json!([]));
        finished.push(rec);
    }
    for rec in &finished {
        let log = log_of(rec);
        assert_eq!(
            log.matches("INFO Execution completed in ").count(),
            1,
            "ran once: {log}"
        );
    }
    // The pool hears that the last execution finished just after its final record is stored.
    let deadline = Instant::now() + Duration::from_secs(5);
    let health = loop {
        let health = server.health().await;
        if health["workers"][0]["busy_with"].is_null() || Instant::now() > deadline {
            break health;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(health["queued"], 0, "{health}");
    assert!(health["workers"][0]["busy_with"].is_null(), "{health}");
}

#[tokio::test]
async fn two_workers_run_two_sleepers_concurrently() {
    let server = Server::start_with(ServerOptions {
        args: vec![
            "--inference.backend_settings".into(),
            r#"{"executor":"fastapi_background_tasks","worker_number":2}"#.into(),
        ],
        ..Default::default()
    });
    let health = server.wait_workers_ready(TERMINAL).await;
    assert_eq!(health["workers"].as_array().unwrap().len(), 2, "{health}");
    let alg = server.deploy_ok("sleeper").await;

    let a = server.execute(&alg, &[], json!({"seconds": 30.0})).await;
    let b = server.execute(&alg, &[], json!({"seconds": 30.0})).await;
    wait_progressing(&server, &a).await;
    wait_progressing(&server, &b).await;

    let health = server.health().await;
    let busy: Vec<&str> = health["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["busy_with"].as_str())
        .collect();
    assert!(
        busy.contains(&a.as_str()) && busy.contains(&b.as_str()),
        "{health}"
    );
    assert_eq!(record(&server, &a).await["status"], "RUNNING");
    for id in [&a, &b] {
        assert_eq!(stop(&server, id).await.0, 200);
    }
    for id in [&a, &b] {
        let (rec, _) = server.wait_terminal(id, TERMINAL).await;
        assert_eq!(rec["status"], "STOPPED", "{rec}");
    }
}

// --- print capture and sessions ------------------------------------------------------------

#[tokio::test]
async fn printed_lines_land_in_the_execution_log() {
    let server = Server::start();
    let alg = server.deploy_ok("printer").await;

    let (rec, _) = run(&server, &alg, &[], json!({"lines": 4})).await;

    assert_eq!(rec["status"], "COMPLETED", "{rec}");
    let log = log_of(&rec);
    assert_in_order(
        log,
        &[
            "INFO Running inference.",
            "INFO printer: stdout line 1 of 4\n",
            "INFO printer: stdout line 2 of 4\n",
            "INFO printer: stdout line 3 of 4\n",
            "INFO printer: stdout line 4 of 4\n",
            "INFO printer: stderr line\n",
            "INFO Inference finished in ",
        ],
    );
    assert_log_lines_well_formed(log);
    assert!(
        !server.log_text().contains("printer: stdout line"),
        "print went to the process log"
    );

    // Far more output than a record should carry (about 19 MB of log lines): the execution
    // completes and its log keeps the first and the most recent lines, well formed.
    let (rec, _) = run(&server, &alg, &[], json!({"lines": 300_000})).await;
    assert_eq!(rec["status"], "COMPLETED");
    let log = log_of(&rec);
    assert!(log.len() < 8 * 1024 * 1024 + 1024, "{} bytes", log.len());
    assert_in_order(
        log,
        &[
            "INFO printer: stdout line 1 of 300000\n",
            " lines (",
            " characters) of this log were left out",
            "INFO printer: stdout line 300000 of 300000\n",
            "INFO printer: stderr line\n",
            "INFO Execution completed in ",
        ],
    );
    assert_log_lines_well_formed(log);
    let cut_lines: Vec<&str> = log
        .lines()
        .filter(|l| !l.starts_with("... ") && !l.starts_with("20"))
        .collect();
    assert!(cut_lines.is_empty(), "lines cut by the trim: {cut_lines:?}");
}

#[tokio::test]
async fn session_tokens_are_echoed_or_generated() {
    let server = Server::start();
    let alg = server.deploy_ok("noop").await;
    let token = "my-session-1";
    let body = json!({"algorithm_id": alg, "input_dataset_ids": [], "session_token": token});

    let mut ids = Vec::new();
    for _ in 0..2 {
        let (status, v) = server.post_json("/api/v0/execute-algorithm", &body).await;
        assert_eq!(status, 200, "{v}");
        ids.push(v["execution_id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        let (rec, _) = server.wait_terminal(id, TERMINAL).await;
        assert_eq!(rec["status"], "COMPLETED", "{rec}");
        assert_eq!(rec["session_token"], token, "{rec}");
    }

    let (first, _) = run(&server, &alg, &[], json!({})).await;
    let (second, _) = run(&server, &alg, &[], json!({})).await;
    let mut generated = Vec::new();
    for rec in [&first, &second] {
        let t = rec["session_token"].as_str().expect("a token is generated");
        let parsed = uuid::Uuid::parse_str(t).unwrap_or_else(|e| panic!("{t}: {e}"));
        assert_eq!(parsed.get_version_num(), 1, "{t}");
        generated.push(t.to_string());
    }
    assert_ne!(generated[0], generated[1]);
}

// --- restart recovery and emergency records --------------------------------------------------

#[tokio::test]
async fn restart_fails_executions_left_running() {
    let mut server = Server::start();
    let alg = server.deploy_ok("sleeper").await;
    let id = server.execute(&alg, &[], json!({"seconds": 30.0})).await;
    let before = wait_progressing(&server, &id).await;
    // Wait until the RUNNING state is on disk (the persister writes at most every 100 ms).
    wait_record(&server, &id, "RUNNING stored", |_| {
        stored_record(&server, &id).is_some_and(|v| v["status"] == "RUNNING")
    })
    .await;

    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let dir = std::mem::replace(&mut server.dir, tempfile::tempdir().unwrap());
    drop(server);
    let server = Server::start_in(dir, ServerOptions::default());

    let rec = record(&server, &id).await;
    assert_eq!(rec["status"], "FAILED", "{rec}");
    assert_eq!(rec["progress"].as_f64(), Some(1.0));
    assert_local_time(&rec["time_completed"], "time_completed");
    let log = log_of(&rec);
    assert!(
        log.starts_with(log_of(&before).lines().next().unwrap()),
        "earlier log kept: {log}"
    );
    assert!(
        log.contains("ERROR The server stopped before this execution finished"),
        "{log}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(record(&server, &id).await["status"], "FAILED");
    // The restarted server runs new work.
    let (next, _) = run(&server, &alg, &[], json!({"seconds": 0.1})).await;
    assert_eq!(next["status"], "COMPLETED", "{next}");
}

#[tokio::test]
async fn unwritable_record_store_gives_emergency_record() {
    let server = Server::start();
    let alg = server.deploy_ok("noop").await;
    match common::backend() {
        Backend::Filesystem => {
            let records = server.store().join("execution-store");
            if records.exists() {
                std::fs::remove_dir_all(&records).unwrap();
            }
            std::fs::write(&records, b"not a directory").unwrap();
        }
        Backend::S3 => server.test_store().delete_s3_bucket("execution-store"),
    }

    let (status, body) = server
        .post_json(
            "/api/v0/execute-algorithm",
            &json!({"algorithm_id": alg, "input_dataset_ids": []}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let id = body["execution_id"].as_str().unwrap().to_string();

    let rec = record(&server, &id).await;
    assert_eq!(rec["status"], "FAILED", "{rec}");
    assert_eq!(rec["progress"].as_f64(), Some(1.0));
    assert_eq!(rec["algorithm_id"], alg.as_str());
    assert_local_time(&rec["time_completed"], "time_completed");
    assert!(
        log_of(&rec).starts_with("Failed to save execution record: "),
        "{rec}"
    );
    let (_, gold) = golden("execution_get_final_dummy");
    assert_eq!(
        keys(&rec),
        keys(&gold),
        "emergency fields are not returned: {rec}"
    );
    let stored = common::emergency_record(&server, &id);
    assert_eq!(stored["status"], "FAILED");
    assert!(
        stored["_emergency_storage_error_code"].is_string(),
        "{stored}"
    );
    // Nothing was dispatched.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let health = server.health().await;
    assert_eq!(health["queued"], 0);
    assert!(health["workers"][0]["busy_with"].is_null(), "{health}");
    assert_eq!(record(&server, &id).await["status"], "FAILED");
}

// --- hidden manager routes -------------------------------------------------------------------

#[tokio::test]
async fn manager_routes_list_and_delete_records() {
    let server = Server::start();
    let alg = server.deploy_ok("noop").await;
    let (empty_status, empty) = server.get("/api/v0/execute-algorithm/all").await;
    assert_eq!((empty_status, empty), (200, json!([])));
    let (a, _) = run(&server, &alg, &[], json!({"n": 1})).await;
    let (b, _) = run(&server, &alg, &[], json!({"n": 2})).await;
    let (a, b) = (
        a["execution_id"].as_str().unwrap().to_string(),
        b["execution_id"].as_str().unwrap().to_string(),
    );

    let (status, all) = server.get("/api/v0/execute-algorithm/all").await;
    assert_eq!(status, 200, "{all}");
    let listed = all.as_array().unwrap();
    assert_eq!(listed.len(), 2, "{all}");
    let (_, gold) = golden("execution_get_final_dummy");
    for rec in listed {
        assert_eq!(keys(rec), keys(&gold), "{rec}");
        assert_eq!(rec["status"], "COMPLETED");
    }
    let mut listed_ids: Vec<&str> = listed
        .iter()
        .map(|r| r["execution_id"].as_str().unwrap())
        .collect();
    listed_ids.sort();
    let mut want = vec![a.as_str(), b.as_str()];
    want.sort();
    assert_eq!(listed_ids, want);

    let (status, body) = server
        .delete(&format!("/api/v0/execute-algorithm/{a}"))
        .await;
    assert_eq!(
        (status, body),
        (200, json!({"detail": "Deleted execution record"}))
    );
    assert_eq!(server.get(&format!("/api/v0/executions/{a}")).await.0, 404);
    let (status, _) = server
        .delete(&format!("/api/v0/execute-algorithm/{a}"))
        .await;
    assert_eq!(status, 200, "M3 is idempotent");
    let (_, all) = server.get("/api/v0/execute-algorithm/all").await;
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");

    let (status, body) = server.delete("/api/v0/execute-algorithm/all").await;
    assert_eq!(
        (status, body),
        (200, json!({"detail": "Deleted all execution records"}))
    );
    assert_eq!(server.get(&format!("/api/v0/executions/{b}")).await.0, 404);
    let (_, all) = server.get("/api/v0/execute-algorithm/all").await;
    assert_eq!(all, json!([]));
}

#[tokio::test]
async fn stop_right_after_submit_is_honoured() {
    let server = Server::start();
    let alg = server.deploy_ok("sleeper").await;
    server.wait_workers_ready(TERMINAL).await;
    for _ in 0..5 {
        let id = server.execute(&alg, &[], json!({"seconds": 30.0})).await;
        let (status, body) = stop(&server, &id).await;
        assert_eq!(status, 200, "{body}");
        let (rec, _) = server.wait_terminal(&id, Duration::from_secs(8)).await;
        assert_eq!(rec["status"], "STOPPED", "{rec}");
        assert!(rec["progress"].as_f64().unwrap() < 1.0, "{rec}");
        wait_record(&server, &id, "stop request removed", |_| {
            !stop_request_exists(&server, &id)
        })
        .await;
    }
}

#[tokio::test]
async fn refused_final_write_leaves_failed_emergency_record() {
    let server = Server::start();
    let alg = server.deploy_ok("sleeper").await;
    let id = server.execute(&alg, &[], json!({"seconds": 1.5})).await;
    wait_progressing(&server, &id).await;
    wait_record(&server, &id, "RUNNING stored", |_| {
        stored_record(&server, &id).is_some_and(|v| v["status"] == "RUNNING")
    })
    .await;

    // Every later write fails: on the filesystem staging (in <store>/.tmp) breaks and reads
    // still work; on S3 the record bucket goes, the stale RUNNING record is put back below.
    let stale = stored_record(&server, &id).unwrap();
    match common::backend() {
        Backend::Filesystem => {
            let staging = server.store().join(".tmp");
            std::fs::remove_dir_all(&staging).unwrap();
            std::fs::write(&staging, b"not a directory").unwrap();
        }
        Backend::S3 => server.test_store().delete_s3_bucket("execution-store"),
    }
    let (rec, seen) = server.wait_terminal(&id, TERMINAL).await;

    assert_eq!(rec["status"], "FAILED", "statuses {seen:?}: {rec}");
    assert_eq!(rec["progress"].as_f64(), Some(1.0));
    assert_eq!(rec["output_dataset_ids"], json!([]));
    assert!(log_of(&rec).contains("sleeper: done."), "{rec}");
    let (_, gold) = golden("execution_get_final_dummy");
    assert_eq!(keys(&rec), keys(&gold), "{rec}");
    let emergency = common::emergency_record(&server, &id);
    assert_eq!(emergency["status"], "FAILED", "{emergency}");
    assert!(
        emergency["_emergency_storage_error_code"].is_string(),
        "{emergency}"
    );
    // The stale primary record (RUNNING) never wins over the failed fallback.
    if common::backend() == Backend::S3 {
        assert_eq!(stored_record(&server, &id), None, "no write got through");
        server.test_store().create_s3_bucket("execution-store");
        server.store_write("execution-store", &id, &serde_json::to_vec(&stale).unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(record(&server, &id).await["status"], "FAILED");
    let stored = stored_record(&server, &id).unwrap();
    assert_eq!(
        stored["status"], "RUNNING",
        "the primary was really left behind: {stored}"
    );
}

/// Worker robustness: what an algorithm writes to its descriptors, forks, or prints must not
/// break the worker protocol or leave executions hanging.
#[tokio::test]
async fn workers_survive_raw_output_surrogates_and_forks() {
    let server = Server::start();
    let alg = server.deploy_ok("misbehaver").await;
    let pid = worker_pid(&server, 0).await;
    for mode in ["stderr_bytes", "fd1", "stderr_bytes", "fork_sys_exit"] {
        let (rec, _) = run(&server, &alg, &[], json!({ "mode": mode })).await;
        assert_eq!(rec["status"], "COMPLETED", "{mode}: {rec}");
        assert!(
            log_of(&rec).contains(&format!("misbehaver {mode} done")),
            "{rec}"
        );
    }
    let (rec, _) = run(&server, &alg, &[], json!({ "mode": "surrogate" })).await;
    assert_eq!(rec["status"], "COMPLETED", "{rec}");
    assert!(
        log_of(&rec).contains("logged ? too"),
        "lone surrogates are replaced: {rec}"
    );
    assert_eq!(
        worker_pid(&server, 0).await,
        pid,
        "no worker restart was needed"
    );

    // A worker killed while a forked child holds its pipes is noticed at once, and the child
    // (same process group) dies with it.
    let id = server
        .execute(&alg, &[], json!({ "mode": "fork_hang" }))
        .await;
    wait_record(&server, &id, "never running", |r| r["status"] == "RUNNING").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    // SAFETY: signalling the worker the server started for this test.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let (rec, _) = server.wait_terminal(&id, TERMINAL).await;
    assert_eq!(rec["status"], "FAILED", "{rec}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "death noticed late: {:?}",
        started.elapsed()
    );
    wait_group_empty(pid).await;
    wait_restarted(&server, 0, pid).await;
}

/// Living members of process group `pgid` (zombies awaiting their reaper aside).
fn living_group_members(pgid: u32) -> usize {
    let out = std::process::Command::new("pgrep")
        .args(["-g", &pgid.to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|p| {
            let stat =
                std::fs::read_to_string(format!("/proc/{}/stat", p.trim())).unwrap_or_default();
            !stat.is_empty() && !stat.contains(") Z ")
        })
        .count()
}

async fn wait_group_empty(pgid: u32) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while living_group_members(pgid) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        living_group_members(pgid),
        0,
        "orphans left in the worker's process group"
    );
}

/// A server killed outright (no shutdown) takes its workers and what their algorithms started
/// (same process group) with it.
#[tokio::test]
async fn a_killed_server_leaves_no_algorithm_process_behind() {
    let mut server = Server::start();
    let alg = server.deploy_ok("misbehaver").await;
    let pid = worker_pid(&server, 0).await;
    let id = server
        .execute(&alg, &[], json!({ "mode": "fork_hang" }))
        .await;
    wait_record(&server, &id, "never running", |r| r["status"] == "RUNNING").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        living_group_members(pid) >= 2,
        "worker and its forked child"
    );

    server.child.kill().unwrap();
    server.child.wait().unwrap();

    wait_group_empty(pid).await;
}

/// A thread an execution leaves running reaches no later execution: not through the runner
/// (no handler, as in the original), not through the handler it kept (the executor refuses
/// writes for a task that is not running), not through print (`runtime.md` §2.2, §8.3).
#[tokio::test]
async fn a_thread_left_by_an_earlier_execution_cannot_touch_a_later_one() {
    let server = Server::start();
    let alg = server.deploy_ok("misbehaver").await;
    let (first, _) = run(&server, &alg, &[], json!({ "mode": "leave_thread" })).await;
    assert_eq!(first["status"], "COMPLETED", "{first}");

    let id = server
        .execute(&alg, &[], json!({ "mode": "sleep_briefly" }))
        .await;
    let mut seen_progress = Vec::new();
    let later = loop {
        let rec = record(&server, &id).await;
        seen_progress.push(rec["progress"].as_f64().unwrap_or(-1.0));
        if ["COMPLETED", "FAILED", "STOPPED"].contains(&rec["status"].as_str().unwrap_or("")) {
            break rec;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(later["status"], "COMPLETED", "{later}");
    assert!(
        !seen_progress.iter().any(|p| [0.77, 0.66, 0.33].contains(p)),
        "{seen_progress:?}"
    );
    assert_eq!(later["progress"].as_f64(), Some(1.0));
    assert!(!log_of(&later).contains("LEAK"), "{later}");
}

/// The id and algorithm of a record are the server's: an algorithm writing others into its
/// record neither moves the record nor wedges the worker's slot.
#[tokio::test]
async fn an_algorithm_cannot_rename_its_record() {
    let server = Server::start();
    let alg = server.deploy_ok("misbehaver").await;
    let (rec, _) = run(&server, &alg, &[], json!({ "mode": "rename_record" })).await;
    assert_eq!(rec["status"], "COMPLETED", "{rec}");
    let id = rec["execution_id"].as_str().unwrap();
    assert_eq!(rec["algorithm_id"], alg.as_str());
    assert_eq!(stored_terminal(&server, id).await["status"], "COMPLETED");
    assert!(!server.store_exists("execution-store", "renamed-by-the-algorithm"));

    let (next, _) = run(&server, &alg, &[], json!({ "mode": "surrogate" })).await;
    assert_eq!(next["status"], "COMPLETED", "{next}");
    let health = server.health().await;
    assert!(health["workers"][0]["busy_with"].is_null(), "{health}");
}

/// An algorithm that breaks its interpreter for every later task costs only its own execution:
/// the worker is replaced, the next execution runs. Each mode breaks it another way.
#[tokio::test]
async fn a_worker_whose_interpreter_is_broken_is_replaced() {
    let server = Server::start();
    let alg = server.deploy_ok("misbehaver").await;
    let cases = [
        // No record write works any more, not even the failure.
        (
            "break_json",
            "FAILED",
            "the task changed sys.modules['json']",
        ),
        // The execution itself completes; the next one could not read its job.
        (
            "break_json_loads",
            "COMPLETED",
            "the task changed json.loads",
        ),
        (
            "patch_handler",
            "FAILED",
            "the task changed compox.tasks.TaskHandler.TaskHandler._write_record",
        ),
    ];
    for (mode, status, reason) in cases {
        let pid = worker_pid(&server, 0).await;
        let (broken, _) = run(&server, &alg, &[], json!({ "mode": mode })).await;
        assert_eq!(broken["status"], status, "{mode}: {broken}");

        wait_restarted(&server, 0, pid).await;
        let health = server.health().await;
        assert_eq!(
            health["workers"][0]["last_exit"],
            format!("replaced by compox: {reason}").as_str(),
            "{mode}: {health}"
        );
        let (next, _) = run(&server, &alg, &[], json!({ "mode": "surrogate" })).await;
        assert_eq!(next["status"], "COMPLETED", "{mode}: {next}");
    }
}

/// Malformed JSON bodies get the position and message Python's `json` module gives (the
/// differential probe compared them with the original), a UTF-8 byte-order mark is skipped as
/// Python does, and a body that is not UTF-8 is the framework's 400.
#[tokio::test]
async fn malformed_json_bodies_are_described_as_python_describes_them() {
    let server = Server::start_with(ServerOptions {
        wait_ready: false,
        ..Default::default()
    });
    let post = |body: &'static [u8]| {
        server
            .client
            .post(server.url("/api/v0/execute-algorithm"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases: &[(&[u8], usize, &str)] = &[
        (
            b"{\"a\": 1,}",
            8,
            "Expecting property name enclosed in double quotes",
        ),
        (b"{\"a\": \"x", 6, "Unterminated string starting at"),
        (b"{\"a\": \"\\q\"}", 7, "Invalid \\escape"),
        (b"nul", 0, "Expecting value"),
        (b"{\"a\": 1", 7, "Expecting ',' delimiter"),
        (b"01", 1, "Extra data"),
    ];
    for (body, offset, message) in cases {
        let r = post(body).await.unwrap();
        assert_eq!(r.status().as_u16(), 422);
        let v: Value = r.json().await.unwrap();
        let text = String::from_utf8_lossy(body);
        assert_eq!(v["detail"][0]["type"], "json_invalid", "{text}: {v}");
        assert_eq!(
            v["detail"][0]["loc"],
            json!(["body", offset]),
            "{text}: {v}"
        );
        assert_eq!(v["detail"][0]["ctx"]["error"], *message, "{text}: {v}");
    }

    let r = post(b"\xef\xbb\xbf{}").await.unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["detail"][0]["type"], "missing", "BOM skipped: {v}");

    let r = post(b"{\"algorithm_id\": \"\xff\"}").await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"detail": "There was an error parsing the body", "code": "http_400", "retryable": false})
    );
}

/// A body nested thousands of levels deep is refused with a 422 and the server keeps answering
/// (it used to overflow the stack of the describing scanner and abort the whole process).
#[tokio::test]
async fn deeply_nested_bodies_are_refused_without_harming_the_server() {
    let server = Server::start_with(common::ServerOptions {
        wait_ready: false,
        ..Default::default()
    });
    let post = |path: &'static str, body: String| {
        server
            .client
            .post(server.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let bodies = [
        ("/api/v0/execute-algorithm", "[".repeat(3000)),
        ("/api/v0/sample", format!("{{\"files\": {}", "[".repeat(5000))),
        (
            "/api/v0/execute-algorithm",
            format!(
                "{{\"algorithm_id\": \"x\", \"input_dataset_ids\": [], \"additional_parameters\": {{\"deep\": {}{}}}}}",
                "[".repeat(200),
                "]".repeat(200)
            ),
        ),
    ];
    for (path, body) in bodies {
        let r = post(path, body).await.unwrap();
        assert_eq!(r.status().as_u16(), 422, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["detail"][0]["type"], "json_invalid", "{v}");
        assert!(
            v["detail"][0]["ctx"]["error"]
                .as_str()
                .unwrap()
                .contains("Nesting deeper than 128"),
            "{v}"
        );
    }
    let (status, _) = server.get("/").await;
    assert_eq!(status, 200, "the server survived");
}
