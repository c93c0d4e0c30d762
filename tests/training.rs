//! Samples (S1–S4), checkpoints (C1–C3) and the checkpoint asset override, end to end against
//! the real server and its pyo3 workers (`training.md` §2, §4), on the fixture images of
//! `tests/fixtures/make_images.py` and the `trainable` test algorithm.

mod common;

use common::{images, run_h5_script, Server, ServerOptions};
use serde_json::{json, Value};
use std::time::Duration;

const TERMINAL: Duration = Duration::from_secs(60);

async fn upload(server: &Server, name: &str) -> String {
    server.upload(&images().join(name)).await
}

fn training_ref(server: &Server, file_id: &str) -> Option<String> {
    server
        .store_tags("data-store", file_id)
        .get("training_ref")
        .cloned()
}

async fn save_sample(server: &Server, body: Value) -> String {
    let (status, v) = server.post_json("/api/v0/sample", &body).await;
    assert_eq!(status, 200, "{v}");
    let id = v["sample_id"].as_str().unwrap().to_string();
    let parsed = uuid::Uuid::parse_str(&id).unwrap();
    assert_eq!(parsed.get_version_num(), 1, "sample ids are uuid1");
    id
}

fn assert_local_time(v: &Value) {
    let t = v.as_str().unwrap_or_else(|| panic!("not a string: {v}"));
    assert!(
        chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f").is_ok(),
        "LOCAL time expected: {t}"
    );
}

// --- samples (§2) ---------------------------------------------------------------------------

/// §2.2, §2.3 S1/S3/S4: saving counts each distinct file once per sample; deleting undoes it.
#[tokio::test]
async fn s1_s4_sample_roundtrip_counts_training_refs() {
    let server = Server::start();
    let a = upload(&server, "coins.h5").await;
    let b = upload(&server, "cell.h5").await;
    assert_eq!(training_ref(&server, &a).as_deref(), Some("0"));

    let first = save_sample(
        &server,
        json!({
            "files": [{"input": [a, a], "target": [b]}, {"input": [a], "target": []}],
            "tags": [" Train ", "train", "", "Val"],
        }),
    )
    .await;
    assert_eq!(training_ref(&server, &a).as_deref(), Some("1"));
    assert_eq!(training_ref(&server, &b).as_deref(), Some("1"));

    let (status, rec) = server.get(&format!("/api/v0/sample/{first}")).await;
    assert_eq!(status, 200, "{rec}");
    let keys: Vec<&String> = rec.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["sample_id", "files", "tags", "time_created"]);
    assert_eq!(rec["sample_id"], first.as_str());
    assert_eq!(
        rec["tags"],
        json!(["train", "val"]),
        "§2.1 tag normalisation"
    );
    assert_eq!(
        rec["files"],
        json!([{"input": [a, a], "target": [b]}, {"input": [a], "target": []}])
    );
    assert_local_time(&rec["time_created"]);
    assert!(server.store_exists("sample-store", &first));

    let second = save_sample(&server, json!({"files": [{"x": [a]}]})).await;
    assert_eq!(training_ref(&server, &a).as_deref(), Some("2"));

    let (status, v) = server.delete(&format!("/api/v0/sample/{first}")).await;
    assert_eq!(
        (status, v),
        (200, json!({"detail": "Sample deleted successfully"}))
    );
    assert_eq!(training_ref(&server, &a).as_deref(), Some("1"));
    assert_eq!(training_ref(&server, &b).as_deref(), Some("0"));
    assert!(!server.store_exists("sample-store", &first));

    server.delete(&format!("/api/v0/sample/{second}")).await;
    assert_eq!(training_ref(&server, &a).as_deref(), Some("0"));
}

/// §2.3 S1 step 1: missing files are listed; nothing is stored or tagged.
#[tokio::test]
async fn s1_missing_input_files_are_404() {
    let server = Server::start();
    let a = upload(&server, "coins.h5").await;
    let (status, v) = server
        .post_json(
            "/api/v0/sample",
            &json!({"files": [{"input": [a, "nope-1"]}, {"input": ["nope-2"]}]}),
        )
        .await;
    assert_eq!(status, 404, "{v}");
    assert_eq!(v["code"], "sample_input_files_not_found");
    assert_eq!(
        v["detail"],
        "Input files with the following identifiers not found: nope-1\nnope-2"
    );
    assert_eq!(v["details"], json!({"file_ids": ["nope-1", "nope-2"]}));
    assert!(server.store_keys("sample-store").is_empty());
    assert_eq!(training_ref(&server, &a).as_deref(), Some("0"));
}

/// §2.3 quirk (empty `files`, differing key sets): a 400 `validation_error` instead of the
/// original's 500; body type errors are the 422 of request validation.
#[tokio::test]
async fn s1_invalid_bodies_are_client_errors() {
    let server = Server::start();
    let a = upload(&server, "coins.h5").await;
    for files in [json!([]), json!([{"input": [a]}, {"target": [a]}])] {
        let (status, v) = server
            .post_json("/api/v0/sample", &json!({ "files": files }))
            .await;
        assert_eq!(
            (status, v["code"].as_str()),
            (400, Some("validation_error")),
            "{v}"
        );
    }
    for body in [
        json!({"files": [{"input": [a]}], "tags": null}),
        json!({"files": [{"input": a}]}),
        json!({"files": [{"input": [1]}]}),
        json!({"tags": []}),
    ] {
        let (status, v) = server.post_json("/api/v0/sample", &body).await;
        assert_eq!(status, 422, "{body}: {v}");
        assert_eq!(v["code"], "request_validation_error");
    }
    assert!(server.store_keys("sample-store").is_empty());
    assert_eq!(training_ref(&server, &a).as_deref(), Some("0"));
    // `{}` as the only entry is a valid (empty) sample.
    save_sample(&server, json!({"files": [{}]})).await;
}

/// §2.3 S2: 404 on an empty store, tag filters (query tags normalised, the spec's fix), `[]`
/// when nothing matches, corrupt manifests skipped.
#[tokio::test]
async fn s2_list_filters_by_tags() {
    let server = Server::start();
    let (status, v) = server.get("/api/v0/sample/all").await;
    assert_eq!(
        (status, v["code"].as_str()),
        (404, Some("samples_not_found"))
    );
    assert_eq!(v["detail"], "No samples found in the sample store");

    let a = upload(&server, "coins.h5").await;
    let train = save_sample(
        &server,
        json!({"files": [{"i": [a]}], "tags": ["train", "jan"]}),
    )
    .await;
    let val = save_sample(&server, json!({"files": [{"i": [a]}], "tags": ["val"]})).await;
    server.store_write("sample-store", "corrupt", b"{not json");
    server.store_write(
        "sample-store",
        "invalid",
        br#"{"sample_id": "invalid", "files": []}"#,
    );

    let ids = |v: &Value| -> Vec<String> {
        let mut ids: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["sample_id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    let (status, all) = server.get("/api/v0/sample/all").await;
    assert_eq!(status, 200, "{all}");
    let mut expected = vec![train.clone(), val.clone()];
    expected.sort();
    assert_eq!(ids(&all), expected);

    let (_, v) = server.get("/api/v0/sample/all?positive_tags=Train").await;
    assert_eq!(ids(&v), vec![train.clone()]);
    let (_, v) = server
        .get("/api/v0/sample/all?positive_tags=train&positive_tags=jan")
        .await;
    assert_eq!(ids(&v), vec![train.clone()]);
    let (_, v) = server.get("/api/v0/sample/all?negative_tags=train").await;
    assert_eq!(ids(&v), vec![val.clone()]);
    let (status, v) = server.get("/api/v0/sample/all?positive_tags=nothing").await;
    assert_eq!((status, v), (200, json!([])));
}

/// §2.3 S3: unknown and unreadable ids are 404; stored data the models refuse is 400.
#[tokio::test]
async fn s3_get_errors() {
    let server = Server::start();
    let (status, v) = server.get("/api/v0/sample/nope").await;
    assert_eq!(status, 404);
    assert_eq!(v["code"], "sample_not_found");
    assert_eq!(
        v["detail"],
        "Failed to load sample manifest for sample nope."
    );
    assert_eq!(v["details"], json!({"sample_id": "nope"}));

    server.store_write("sample-store", "garbage", b"\x00\x01");
    let (status, v) = server.get("/api/v0/sample/garbage").await;
    assert_eq!(
        (status, v["code"].as_str()),
        (404, Some("sample_not_found"))
    );

    let mixed =
        br#"{"sample_id":"m","files":[{"a":["x"]},{"b":["y"]}],"tags":[],"time_created":"t"}"#;
    server.store_write("sample-store", "mixed", mixed);
    let (status, v) = server.get("/api/v0/sample/mixed").await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("invalid_sample_manifest")),
        "{v}"
    );

    let ints = br#"{"sample_id":"n","files":[{"a":[1]}],"tags":[],"time_created":"t"}"#;
    server.store_write("sample-store", "ints", ints);
    let (status, v) = server.get("/api/v0/sample/ints").await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("invalid_sample_record")),
        "{v}"
    );
    assert_eq!(v["detail"], "Invalid sample record.");
}

/// §2.3 S4: unknown ids (also `all`, which reaches the `{sample_id}` route) are 404; a sample
/// whose file was deleted meanwhile still deletes (§2.2 quirk fix).
#[tokio::test]
async fn s4_delete_errors_and_missing_files() {
    let server = Server::start();
    for id in ["nope", "all"] {
        let (status, v) = server.delete(&format!("/api/v0/sample/{id}")).await;
        assert_eq!(status, 404, "{v}");
        assert_eq!(v["code"], "sample_not_found");
        assert_eq!(v["detail"], "Sample not found");
    }
    let a = upload(&server, "coins.h5").await;
    let b = upload(&server, "cell.h5").await;
    let id = save_sample(&server, json!({"files": [{"i": [a, b]}]})).await;
    let (status, _) = server.delete(&format!("/api/v0/files/{a}")).await;
    assert_eq!(status, 200);
    let (status, v) = server.delete(&format!("/api/v0/sample/{id}")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(training_ref(&server, &b).as_deref(), Some("0"));
    assert!(
        !server.store_exists("data-store", &a),
        "no tag written for a deleted file"
    );
}

/// §2.2 quirk: concurrent samples sharing a file never lose an increment.
#[tokio::test]
async fn s1_concurrent_samples_count_every_reference() {
    let server = Server::start();
    let a = upload(&server, "coins.h5").await;
    let body = json!({"files": [{"i": [a]}]});
    let saves = (0..8).map(|_| server.post_json("/api/v0/sample", &body));
    for (status, v) in futures_util::future::join_all(saves).await {
        assert_eq!(status, 200, "{v}");
    }
    assert_eq!(training_ref(&server, &a).as_deref(), Some("8"));
}

// --- checkpoints (§4) -----------------------------------------------------------------------

fn manifest(id: &str, algorithm_id: &str, training_id: &str, assets: Value, tags: Value) -> Value {
    json!({
        "checkpoint_id": id,
        "parent_algorithm_id": algorithm_id,
        "parent_algorithm_key": null,
        "training_id": training_id,
        "assets": assets,
        "created_at": "2026-01-02T03:04:05+00:00",
        "properties": {"loss": 0.5},
        "tags": tags,
        "parent_checkpoint_id": null,
    })
}

fn write_json(server: &Server, collection: &str, key: &str, v: &Value) {
    server.store_write(collection, key, &serde_json::to_vec(v).unwrap());
}

/// §4.5 C1/C2: 404 on an empty store, the record view without `assets`/`parent_algorithm_key`,
/// exact tag filters, corrupt manifests skipped in the list.
#[tokio::test]
async fn c1_c2_list_and_get_checkpoints() {
    let server = Server::start();
    let (status, v) = server.get("/api/v0/checkpoint/all").await;
    assert_eq!(
        (status, v["code"].as_str()),
        (404, Some("checkpoints_not_found"))
    );
    assert_eq!(v["detail"], "No checkpoints found in the checkpoint store");

    write_json(
        &server,
        "algorithm-checkpoint-store",
        "c1",
        &manifest("c1", "alg", "t1", json!({"files/m": "x"}), json!(["Best"])),
    );
    write_json(
        &server,
        "algorithm-checkpoint-store",
        "c2",
        &manifest("c2", "alg", "t1", json!({}), json!("best")),
    );
    server.store_write("algorithm-checkpoint-store", "corrupt", b"nope");

    let (status, v) = server.get("/api/v0/checkpoint/c1").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v,
        json!({"checkpoint_id": "c1", "training_id": "t1", "parent_algorithm_id": "alg",
               "created_at": "2026-01-02T03:04:05+00:00", "properties": {"loss": 0.5},
               "tags": ["Best"], "parent_checkpoint_id": null})
    );
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "checkpoint_id",
            "training_id",
            "parent_algorithm_id",
            "created_at",
            "properties",
            "tags",
            "parent_checkpoint_id"
        ]
    );

    let (status, all) = server.get("/api/v0/checkpoint/all").await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all.as_array().unwrap().len(), 2, "{all}");
    let (_, v) = server
        .get("/api/v0/checkpoint/all?positive_tags=Best")
        .await;
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(
        v[0]["checkpoint_id"], "c1",
        "tags are case-sensitive (§4.1)"
    );
    let (_, v) = server
        .get("/api/v0/checkpoint/all?negative_tags=best")
        .await;
    assert_eq!(v[0]["checkpoint_id"], "c1");

    let (status, v) = server.get("/api/v0/checkpoint/nope").await;
    assert_eq!(status, 404);
    assert_eq!(v["code"], "checkpoint_not_found");
    assert_eq!(
        v["detail"],
        "Failed to load checkpoint manifest with ID nope"
    );
    assert_eq!(v["details"], json!({"checkpoint_id": "nope"}));
    let (status, v) = server.get("/api/v0/checkpoint/corrupt").await;
    assert_eq!(
        (status, v["code"].as_str()),
        (404, Some("checkpoint_not_found"))
    );

    write_json(
        &server,
        "algorithm-checkpoint-store",
        "bad",
        &json!({"checkpoint_id": "bad"}),
    );
    let (status, v) = server.get("/api/v0/checkpoint/bad").await;
    assert_eq!(
        (status, v["code"].as_str()),
        (500, Some("checkpoint_manifest_invalid"))
    );
}

/// Runs `trainable` (optionally from a checkpoint) and returns the model JSON it reported.
async fn trainable_model(server: &Server, alg: &str, checkpoint: Option<&str>) -> Value {
    let body = json!({"algorithm_id": alg, "input_dataset_ids": [], "checkpoint_id": checkpoint});
    let (status, v) = server.post_json("/api/v0/execute-algorithm", &body).await;
    assert_eq!(status, 200, "{v}");
    let (rec, _) = server
        .wait_terminal(v["execution_id"].as_str().unwrap(), TERMINAL)
        .await;
    assert_eq!(rec["status"], "COMPLETED", "{rec}");
    let out = server
        .download(rec["output_dataset_ids"][0].as_str().unwrap())
        .await;
    let script = "import sys, h5py\nwith h5py.File(sys.argv[1], 'r') as f:\n    sys.stdout.buffer.write(f['data'][()].tobytes())\n";
    let bytes = run_h5_script(&out, script, &[]);
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}: {bytes:?}"))
}

/// §4.4 and §4.3/§4.5 C3: an execution naming a checkpoint reads the checkpoint's asset; deleting
/// the checkpoint removes its assets, its id from the algorithm's `checkpoints` (metrics go stale)
/// and from the training record, then the manifest; executions fall back to the base asset.
#[tokio::test]
async fn c3_delete_checkpoint_and_execution_asset_override() {
    let mut server = Server::start();
    let alg = server.deploy_ok("trainable").await;
    assert_eq!(
        trainable_model(&server, &alg, None).await,
        json!({"scale": 1.0})
    );

    server.store_write("asset-store", "asset-1", br#"{"scale": 7.0}"#);
    write_json(
        &server,
        "algorithm-checkpoint-store",
        "cp-1",
        &manifest(
            "cp-1",
            &alg,
            "tr-1",
            json!({"files/model.json": "asset-1"}),
            json!([]),
        ),
    );
    write_json(
        &server,
        "training-store",
        "tr-1",
        &json!({"training_id": "tr-1", "output_checkpoint_ids": ["cp-1", "cp-other"]}),
    );
    let key = server
        .store_keys("algorithm-store")
        .into_iter()
        .find(|k| k.starts_with(&alg))
        .unwrap();
    let mut record: Value =
        serde_json::from_slice(&server.store_read("algorithm-store", &key).unwrap()).unwrap();
    record["checkpoints"] = json!(["cp-1"]);
    write_json(&server, "algorithm-store", &key, &record);
    // The deployer reads algorithm-store at start-up.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let dir = std::mem::replace(&mut server.dir, tempfile::tempdir().unwrap());
    drop(server);
    let server = Server::start_in(dir, ServerOptions::default());

    assert_eq!(
        trainable_model(&server, &alg, Some("cp-1")).await,
        json!({"scale": 7.0})
    );

    let (status, v) = server.delete("/api/v0/checkpoint/cp-1").await;
    assert_eq!(
        (status, v),
        (200, json!({"detail": "Checkpoint deleted successfully"}))
    );
    assert!(!server.store_exists("asset-store", "asset-1"));
    assert!(!server.store_exists("algorithm-checkpoint-store", "cp-1"));
    let training: Value =
        serde_json::from_slice(&server.store_read("training-store", "tr-1").unwrap()).unwrap();
    assert_eq!(training["output_checkpoint_ids"], json!(["cp-other"]));
    let record: Value =
        serde_json::from_slice(&server.store_read("algorithm-store", &key).unwrap()).unwrap();
    assert_eq!(record["checkpoints"], json!([]));
    assert_eq!(record["storage_metrics_stale"], json!(true));

    assert_eq!(
        trainable_model(&server, &alg, None).await,
        json!({"scale": 1.0})
    );
    let (status, v) = server.delete("/api/v0/checkpoint/cp-1").await;
    assert_eq!(
        (status, v["code"].as_str()),
        (404, Some("checkpoint_not_found"))
    );
}

/// §4.5 quirk fix: a checkpoint whose training record expired and whose algorithm is gone
/// still deletes (nothing to update), with its assets and manifest.
#[tokio::test]
async fn c3_delete_tolerates_missing_parents() {
    let server = Server::start();
    server.store_write("asset-store", "orphan-asset", b"x");
    write_json(
        &server,
        "algorithm-checkpoint-store",
        "orphan",
        &manifest(
            "orphan",
            "gone",
            "expired",
            json!({"files/m": "orphan-asset"}),
            json!([]),
        ),
    );
    let (status, v) = server.delete("/api/v0/checkpoint/orphan").await;
    assert_eq!(status, 200, "{v}");
    assert!(!server.store_exists("asset-store", "orphan-asset"));
    assert!(!server.store_exists("algorithm-checkpoint-store", "orphan"));
    let (status, v) = server.delete("/api/v0/checkpoint/all").await;
    assert_eq!(
        (status, v["code"].as_str()),
        (404, Some("checkpoint_not_found"))
    );
}

// --- benchmarks (§5) ------------------------------------------------------------------------

/// Polls `path` until its record is terminal; returns it with every status seen.
async fn wait_task(server: &Server, path: &str) -> (Value, Vec<String>) {
    let deadline = std::time::Instant::now() + TERMINAL;
    let mut seen: Vec<String> = Vec::new();
    loop {
        let (status, rec) = server.get(path).await;
        assert_eq!(status, 200, "{path}: {rec}");
        let s = rec["status"].as_str().unwrap().to_string();
        if seen.last() != Some(&s) {
            seen.push(s.clone());
        }
        if ["COMPLETED", "FAILED", "STOPPED"].contains(&s.as_str()) {
            return (rec, seen);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{path} not terminal: {rec}\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

async fn benchmark(server: &Server, body: Value) -> String {
    let (status, v) = server.post_json("/api/v0/benchmark-algorithm", &body).await;
    assert_eq!(status, 200, "{v}");
    v["benchmark_id"].as_str().unwrap().to_string()
}

/// §5.2–§5.5: the record's fields, `data` = the returned dict (written together with COMPLETED,
/// §5.7 fix), framework timings in the log, no progress.
#[tokio::test]
async fn b1_b2_benchmark_completes_with_its_results() {
    let server = Server::start();
    let alg = server.deploy_ok("trainable").await;
    let id = benchmark(
        &server,
        json!({"algorithm_id": alg, "additional_parameters": {"repeats": 2}}),
    )
    .await;
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 1);
    let (rec, seen) = wait_task(&server, &format!("/api/v0/benchmarks/{id}")).await;
    assert_eq!(rec["status"], "COMPLETED", "{rec}");
    assert!(
        seen.iter()
            .all(|s| ["PENDING", "STARTED", "COMPLETED"].contains(&s.as_str())),
        "{seen:?}"
    );
    let keys: Vec<&String> = rec.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "benchmark_id",
            "algorithm_id",
            "additional_parameters",
            "status",
            "time_started",
            "time_completed",
            "log",
            "data"
        ]
    );
    assert_eq!(rec["benchmark_id"], id.as_str());
    assert_eq!(rec["algorithm_id"], alg.as_str());
    assert_eq!(rec["additional_parameters"], json!({"repeats": 2}));
    assert!(rec["data"]["elapsed_s"].as_f64().is_some(), "{rec}");
    assert_eq!(rec["data"]["model_size"], 15);
    assert_local_time(&rec["time_started"]);
    assert_local_time(&rec["time_completed"]);
    let log = rec["log"].as_str().unwrap();
    for line in [
        "INFO Fetching algorithm for benchmark...",
        "INFO Algorithm fetched in ",
        "INFO Starting benchmark.",
        "INFO Benchmark completed in ",
        "INFO File fetching stats: ",
        "INFO File posting stats: ",
    ] {
        assert!(log.contains(line), "{line:?} missing from {log}");
    }
    let stored: Value =
        serde_json::from_slice(&server.store_read("benchmark-store", &id).unwrap()).unwrap();
    assert!(
        stored.get("progress").is_none(),
        "no progress stored: {stored}"
    );
    assert_eq!(stored["data"], rec["data"]);
}

/// §5.1 (standard envelope instead of bare bodies), §5.4: an algorithm without `benchmark()`
/// ends FAILED with `data={}` and the traceback in its log.
#[tokio::test]
async fn b1_b2_errors_and_failed_benchmarks() {
    let server = Server::start();
    let (status, v) = server
        .post_json(
            "/api/v0/benchmark-algorithm",
            &json!({"algorithm_id": "nope"}),
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(v["code"], "algorithm_not_found");
    assert_eq!(v["detail"], "Algorithm not found");
    let (status, v) = server.get("/api/v0/benchmarks/nope").await;
    assert_eq!(status, 404);
    assert_eq!(v["code"], "benchmark_record_not_found");
    assert_eq!(v["detail"], "Benchmark record not found");
    let (status, v) = server
        .post_json(
            "/api/v0/benchmark-algorithm",
            &json!({"additional_parameters": {}}),
        )
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (422, Some("request_validation_error"))
    );

    let alg = server.deploy_ok("noop").await;
    let id = benchmark(&server, json!({"algorithm_id": alg})).await;
    let (rec, _) = wait_task(&server, &format!("/api/v0/benchmarks/{id}")).await;
    assert_eq!(rec["status"], "FAILED", "{rec}");
    assert_eq!(rec["data"], json!({}));
    assert_eq!(rec["additional_parameters"], json!({}));
    assert_local_time(&rec["time_completed"]);
    let log = rec["log"].as_str().unwrap();
    assert!(log.contains("ERROR Benchmark failed"), "{log}");
    assert!(log.contains("NotImplementedError"), "{log}");
}

// --- training (§3) --------------------------------------------------------------------------

async fn train(server: &Server, body: Value) -> String {
    let (status, v) = server.post_json("/api/v0/train-algorithm", &body).await;
    assert_eq!(status, 200, "{v}");
    v["training_id"].as_str().unwrap().to_string()
}

fn assert_utc_time(v: &Value) {
    let t = v.as_str().unwrap_or_else(|| panic!("not a string: {v}"));
    assert!(
        chrono::DateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%:z").is_ok()
            && t.ends_with("+00:00"),
        "UTC time expected: {t}"
    );
}

fn stored(server: &Server, collection: &str, key: &str) -> Value {
    serde_json::from_slice(&server.store_read(collection, key).unwrap()).unwrap()
}

/// §3.2–§3.4, §3.7, §3.8, §3.9, §4.1–§4.4: a training reads its samples through the temp
/// store, saves a checkpoint registered with its algorithm and training, completes with a UTC
/// time; executions and a second training then start from that checkpoint.
#[tokio::test]
async fn t1_t2_training_saves_a_checkpoint_and_completes() {
    let server = Server::start();
    let alg = server.deploy_ok("trainable").await;
    let a = upload(&server, "coins.h5").await;
    let b = upload(&server, "cell.h5").await;
    let sample = save_sample(&server, json!({"files": [{"input": [a], "target": [b]}]})).await;

    let id = train(
        &server,
        json!({"algorithm_id": alg, "training_data": [sample], "tags": ["Exp-1"],
               "additional_parameters": {"scale": 3.0}}),
    )
    .await;
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 1);
    let (rec, seen) = wait_task(&server, &format!("/api/v0/training/{id}")).await;
    assert_eq!(rec["status"], "COMPLETED", "{rec}\n{}", server.log_text());
    assert!(
        seen.iter()
            .all(|s| ["PENDING", "STARTED", "RUNNING", "COMPLETED"].contains(&s.as_str())),
        "{seen:?}"
    );
    let keys: Vec<&String> = rec.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "training_id",
            "algorithm_id",
            "status",
            "progress",
            "time_started",
            "time_completed",
            "log",
            "training_data",
            "additional_parameters",
            "state",
            "tags",
            "checkpoint_id",
            "algorithm_minor_version",
            "output_checkpoint_ids"
        ]
    );
    assert_eq!(rec["progress"].as_f64(), Some(1.0));
    assert_local_time(&rec["time_started"]);
    assert_utc_time(&rec["time_completed"]);
    assert_eq!(rec["training_data"], json!([sample]));
    assert_eq!(rec["tags"], json!(["Exp-1"]), "tags are not normalised");
    assert_eq!(rec["state"], json!({"epochs": 1}));
    assert_eq!(rec["checkpoint_id"], Value::Null);
    assert_eq!(rec["algorithm_minor_version"], Value::Null);
    let log = rec["log"].as_str().unwrap();
    for line in [
        "INFO Fetching algorithm...",
        "INFO Starting training.",
        "trainable: training on 1 sample(s), keys ['input', 'target']",
        "trainable: shapes [[{\"input\": [[303, 384]], \"target\": [[660, 550]]}]]",
        "INFO Training completed in ",
    ] {
        assert!(log.contains(line), "{line:?} missing from {log}");
    }
    let checkpoints = rec["output_checkpoint_ids"].as_array().unwrap();
    assert_eq!(checkpoints.len(), 1, "{rec}");
    let cp = checkpoints[0].as_str().unwrap().to_string();
    assert_eq!(
        stored(&server, "training-store", &id)["resolved_execution_device"],
        "cpu"
    );

    // §4.1: the manifest, its asset, and the algorithm record's `checkpoints`.
    let (status, view) = server.get(&format!("/api/v0/checkpoint/{cp}")).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["parent_algorithm_id"], alg.as_str());
    assert_eq!(view["training_id"], id.as_str());
    assert_eq!(view["tags"], json!(["Exp-1"]));
    assert_eq!(view["properties"], json!({"loss": 0.25}));
    assert_eq!(view["parent_checkpoint_id"], Value::Null);
    assert_utc_time(&view["created_at"]);
    let manifest = stored(&server, "algorithm-checkpoint-store", &cp);
    let key = server
        .store_keys("algorithm-store")
        .into_iter()
        .find(|k| k.starts_with(&alg))
        .unwrap();
    assert_eq!(manifest["parent_algorithm_key"], key.as_str());
    let asset = manifest["assets"]["files/model.json"].as_str().unwrap();
    assert_eq!(
        server.store_read("asset-store", asset).unwrap(),
        br#"{"scale": 3.0}"#.to_vec()
    );
    let algorithm = stored(&server, "algorithm-store", &key);
    assert_eq!(algorithm["checkpoints"], json!([cp]));

    // §4.4: executions and trainings start from the checkpoint.
    assert_eq!(
        trainable_model(&server, &alg, Some(&cp)).await,
        json!({"scale": 3.0})
    );
    let second = train(
        &server,
        json!({"algorithm_id": alg, "training_data": [sample], "checkpoint_id": cp,
               "algorithm_minor_version": "0", "additional_parameters": {"scale": 5.0}}),
    )
    .await;
    let (rec2, _) = wait_task(&server, &format!("/api/v0/training/{second}")).await;
    assert_eq!(rec2["status"], "COMPLETED", "{rec2}");
    assert_eq!(rec2["algorithm_minor_version"], "0");
    let cp2 = rec2["output_checkpoint_ids"][0]
        .as_str()
        .unwrap()
        .to_string();
    let (_, view2) = server.get(&format!("/api/v0/checkpoint/{cp2}")).await;
    assert_eq!(view2["parent_checkpoint_id"], cp.as_str());
    let algorithm = stored(&server, "algorithm-store", &key);
    assert_eq!(algorithm["checkpoints"], json!([cp, cp2]));

    // §4.5 C3 on a trained checkpoint: unlinked from both records.
    let (status, _) = server.delete(&format!("/api/v0/checkpoint/{cp}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        stored(&server, "algorithm-store", &key)["checkpoints"],
        json!([cp2])
    );
    let (_, rec) = server.get(&format!("/api/v0/training/{id}")).await;
    assert_eq!(rec["output_checkpoint_ids"], json!([]));
}

/// §3.1 steps 1–3 and the allowed pre-validation of checkpoint, minor version and empty
/// `training_data`; nothing is stored for a refused request.
#[tokio::test]
async fn t1_submission_errors() {
    let server = Server::start();
    let alg = server.deploy_ok("trainable").await;
    let a = upload(&server, "coins.h5").await;
    let b = upload(&server, "cell.h5").await;
    let sample = save_sample(&server, json!({"files": [{"input": [a, b]}]})).await;

    let post = |body: Value| {
        let server = &server;
        async move { server.post_json("/api/v0/train-algorithm", &body).await }
    };
    let (status, v) =
        post(json!({"algorithm_id": alg, "training_data": [sample, "s-x", "s-y"]})).await;
    assert_eq!(status, 404, "{v}");
    assert_eq!(v["code"], "input_samples_not_found");
    assert_eq!(
        v["detail"],
        "Input samples with the following identifiers not found: s-x\ns-y"
    );
    assert_eq!(v["details"], json!({"missing_sample_ids": ["s-x", "s-y"]}));

    let (status, v) = post(json!({"algorithm_id": "nope", "training_data": [sample]})).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (404, Some("algorithm_not_found"))
    );
    assert_eq!(v["details"], json!({"algorithm_id": "nope"}));

    let (status, v) = post(json!({"algorithm_id": alg, "training_data": []})).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("training_samples_not_found"))
    );

    let (status, v) =
        post(json!({"algorithm_id": alg, "training_data": [sample], "checkpoint_id": "cp-x"}))
            .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (404, Some("checkpoint_not_found"))
    );
    write_json(
        &server,
        "algorithm-checkpoint-store",
        "foreign",
        &manifest("foreign", "other-alg", "t", json!({}), json!([])),
    );
    let (status, v) =
        post(json!({"algorithm_id": alg, "training_data": [sample], "checkpoint_id": "foreign"}))
            .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("checkpoint_asset_incompatible")),
        "{v}"
    );

    let (status, v) = post(
        json!({"algorithm_id": alg, "training_data": [sample], "algorithm_minor_version": "9"}),
    )
    .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (404, Some("minor_version_not_found"))
    );

    for body in [
        json!({"training_data": [sample]}),
        json!({"algorithm_id": alg}),
        json!({"algorithm_id": alg, "training_data": [sample], "tags": null}),
        json!({"algorithm_id": alg, "training_data": [sample], "additional_parameters": []}),
    ] {
        let (status, v) = post(body.clone()).await;
        assert_eq!(status, 422, "{body}: {v}");
    }

    server.store_delete("data-store", &b);
    let (status, v) = post(json!({"algorithm_id": alg, "training_data": [sample]})).await;
    assert_eq!(status, 404, "{v}");
    assert_eq!(v["code"], "sample_files_not_found");
    assert_eq!(
        v["detail"],
        format!(
            "Files (associated with input sample) with the following identifiers not found: {b}"
        )
    );
    assert_eq!(v["details"], json!({"missing_file_ids": [b]}));
    assert!(server.store_keys("training-store").is_empty());
}

/// §3.1 T2/T3 errors, §3.7 quirk fix: a training that saves no checkpoint fails once with
/// `training_no_checkpoint` (never COMPLETED), and a finished training is not stoppable.
#[tokio::test]
async fn t2_t3_errors_and_training_without_checkpoint() {
    let server = Server::start();
    let (status, v) = server.get("/api/v0/training/nope").await;
    assert_eq!(status, 404);
    assert_eq!(v["code"], "training_record_not_found");
    assert_eq!(v["detail"], "Training record not found");
    assert_eq!(v["details"], json!({"training_id": "nope"}));
    let (status, v) = server.post("/api/v0/training/nope/stop").await;
    assert_eq!(
        (status, v["code"].as_str()),
        (404, Some("training_record_not_found"))
    );

    let alg = server.deploy_ok("trainable").await;
    let a = upload(&server, "coins.h5").await;
    let sample = save_sample(&server, json!({"files": [{"input": [a]}]})).await;
    let id = train(
        &server,
        json!({"algorithm_id": alg, "training_data": [sample], "additional_parameters": {"save": false}}),
    )
    .await;
    let (rec, seen) = wait_task(&server, &format!("/api/v0/training/{id}")).await;
    assert_eq!(rec["status"], "FAILED", "{rec}");
    assert!(!seen.contains(&"COMPLETED".to_string()), "{seen:?}");
    assert_eq!(rec["progress"].as_f64(), Some(1.0));
    assert_local_time(&rec["time_completed"]);
    assert_eq!(rec["output_checkpoint_ids"], json!([]));
    assert!(
        rec.get("error").is_none(),
        "error is not part of the API view"
    );
    let log = rec["log"].as_str().unwrap();
    assert!(log.contains("ERROR Task failed"), "{log}");
    assert!(log.contains("INFO File fetching stats: "), "{log}");
    let stored = stored(&server, "training-store", &id);
    assert_eq!(
        stored["error"]["code"], "training_no_checkpoint",
        "{stored}"
    );
    assert_eq!(stored["output_dataset_ids"], json!([]));

    let (status, v) = server.post(&format!("/api/v0/training/{id}/stop")).await;
    assert_eq!(status, 400);
    assert_eq!(v["code"], "training_not_stoppable");
    assert_eq!(v["detail"], "Training in state FAILED cannot be stopped");
    assert_eq!(v["details"], json!({"training_id": id, "status": "FAILED"}));
}

/// §3.5: a stop is seen at the next progress write; the record ends STOPPED with a LOCAL
/// `time_completed`, its progress unchanged, and the stop request is removed.
#[tokio::test]
async fn t3_stop_ends_training_stopped() {
    let server = Server::start();
    let alg = server.deploy_ok("trainable").await;
    let a = upload(&server, "coins.h5").await;
    let sample = save_sample(&server, json!({"files": [{"input": [a]}]})).await;
    let id = train(
        &server,
        json!({"algorithm_id": alg, "training_data": [sample], "additional_parameters": {"seconds": 30.0}}),
    )
    .await;
    let path = format!("/api/v0/training/{id}");
    let deadline = std::time::Instant::now() + TERMINAL;
    loop {
        let (_, rec) = server.get(&path).await;
        if rec["progress"].as_f64().unwrap_or(0.0) > 0.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no progress: {rec}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, v) = server.post(&format!("{path}/stop")).await;
    assert_eq!(
        (status, v),
        (200, json!({"detail": "Stop request posted successfully"}))
    );
    let (rec, _) = wait_task(&server, &path).await;
    assert_eq!(rec["status"], "STOPPED", "{rec}");
    let progress = rec["progress"].as_f64().unwrap();
    assert!(progress > 0.0 && progress < 1.0, "{rec}");
    assert_local_time(&rec["time_completed"]);
    assert!(
        rec["log"]
            .as_str()
            .unwrap()
            .contains("Received stop request. Stopping task."),
        "{rec}"
    );
    assert_eq!(rec["output_checkpoint_ids"], json!([]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!server.store_exists("stop-requests", &id));
}

/// §4.3: deleting an algorithm (D4) deletes the checkpoints its trainings registered, with
/// their assets, and unlinks them from the training records.
#[tokio::test]
async fn d4_deleting_an_algorithm_deletes_its_checkpoints() {
    let server = Server::start();
    let r = server
        .client
        .post(server.url("/api/v0/deploy/local"))
        .query(&[
            (
                "path",
                common::algorithms_dir()
                    .join("trainable")
                    .display()
                    .to_string(),
            ),
            ("removable", "true".to_string()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let alg = r.json::<Value>().await.unwrap()["algorithm_id"]
        .as_str()
        .unwrap()
        .to_string();
    let a = upload(&server, "coins.h5").await;
    let sample = save_sample(&server, json!({"files": [{"input": [a]}]})).await;
    let id = train(
        &server,
        json!({"algorithm_id": alg, "training_data": [sample]}),
    )
    .await;
    let (rec, _) = wait_task(&server, &format!("/api/v0/training/{id}")).await;
    assert_eq!(rec["status"], "COMPLETED", "{rec}");
    let cp = rec["output_checkpoint_ids"][0]
        .as_str()
        .unwrap()
        .to_string();
    let manifest = stored(&server, "algorithm-checkpoint-store", &cp);
    let asset = manifest["assets"]["files/model.json"]
        .as_str()
        .unwrap()
        .to_string();

    let (status, v) = server
        .delete(&format!("/api/v0/deploy/algorithm/{alg}"))
        .await;
    assert_eq!(status, 200, "{v}");
    assert!(!server.store_exists("algorithm-checkpoint-store", &cp));
    assert!(!server.store_exists("asset-store", &asset));
    let (_, rec) = server.get(&format!("/api/v0/training/{id}")).await;
    assert_eq!(rec["output_checkpoint_ids"], json!([]));
    let (status, v) = server.get(&format!("/api/v0/checkpoint/{cp}")).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (404, Some("checkpoint_not_found"))
    );
}

/// Breaks one record collection so every write to it fails (as the executions suite does).
fn break_collection(server: &Server, collection: &str) {
    match common::backend() {
        common::Backend::Filesystem => {
            let dir = server.store().join(collection);
            if dir.exists() {
                std::fs::remove_dir_all(&dir).unwrap();
            }
            std::fs::write(&dir, b"not a directory").unwrap();
        }
        common::Backend::S3 => server.test_store().delete_s3_bucket(collection),
    }
}

fn emergency_file(server: &Server, collection: &str, id: &str) -> Value {
    let path = server
        .dir
        .path()
        .join("logs/compox_emergency_records")
        .join(collection)
        .join(format!("compox_emergency_{id}.json"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap()
}

/// §3.1 step 5, §5.1 step 2: a PENDING record storage refuses becomes a FAILED emergency record,
/// the submission still answers 200, nothing is dispatched, and T2/B2 return the fallback.
#[tokio::test]
async fn t1_b1_unwritable_record_store_gives_emergency_records() {
    let server = Server::start();
    let alg = server.deploy_ok("trainable").await;
    let a = upload(&server, "coins.h5").await;
    let sample = save_sample(&server, json!({"files": [{"input": [a]}]})).await;
    break_collection(&server, "training-store");
    break_collection(&server, "benchmark-store");

    let id = train(
        &server,
        json!({"algorithm_id": alg, "training_data": [sample]}),
    )
    .await;
    let (status, rec) = server.get(&format!("/api/v0/training/{id}")).await;
    assert_eq!(status, 200, "{rec}");
    assert_eq!(rec["status"], "FAILED");
    assert_eq!(rec["progress"].as_f64(), Some(1.0));
    assert_local_time(&rec["time_completed"]);
    assert!(
        rec["log"]
            .as_str()
            .unwrap()
            .starts_with("Failed to save training record: "),
        "{rec}"
    );
    assert!(rec.get("_emergency_storage_error").is_none(), "{rec}");
    let stored = emergency_file(&server, "training-store", &id);
    assert!(
        stored["_emergency_storage_error_code"].is_string(),
        "{stored}"
    );

    let id = benchmark(&server, json!({"algorithm_id": alg})).await;
    let (status, rec) = server.get(&format!("/api/v0/benchmarks/{id}")).await;
    assert_eq!(status, 200, "{rec}");
    assert_eq!(rec["status"], "FAILED");
    assert!(
        rec["log"]
            .as_str()
            .unwrap()
            .starts_with("Failed to save benchmark record: "),
        "{rec}"
    );
    emergency_file(&server, "benchmark-store", &id);
    // Nothing was dispatched: the worker is idle.
    let health = server.health().await;
    assert!(health["workers"][0]["busy_with"].is_null(), "{health}");
}
