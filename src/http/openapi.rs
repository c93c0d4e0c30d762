//! `GET /openapi.json` and an offline `GET /docs` page that renders it (no CDN).

use super::routes::PATTERNS;
use actix_web::HttpResponse;
use serde_json::{json, Map, Value};

/// (path, method, tag, summary) of every documented route; M1–M3 stay hidden as in the original.
const OPERATIONS: &[(&str, &str, &str, &str)] = &[
    ("/", "get", "root", "Server identity and GPU availability"),
    (
        "/health",
        "get",
        "root",
        "Worker readiness (503 while a worker restarts)",
    ),
    (
        "/api/v0/algorithm/{algorithm_name}/{algorithm_major_version}",
        "get",
        "algorithms-controller",
        "Get one algorithm",
    ),
    (
        "/api/v0/algorithm/all",
        "get",
        "algorithms-controller",
        "List algorithms (filters: positive_tag, negative_tag, algorithm_type, supported_devices)",
    ),
    (
        "/api/v0/algorithm/{algorithm_name}/{algorithm_major_version}/export",
        "get",
        "algorithms-controller",
        "Export an algorithm as zip",
    ),
    (
        "/api/v0/deploy/local",
        "post",
        "deploy-controller",
        "Deploy a server-side folder or zip",
    ),
    (
        "/api/v0/deploy/local-async",
        "post",
        "deploy-controller",
        "Deploy in the background",
    ),
    (
        "/api/v0/deploy/{deploy_id}",
        "get",
        "deploy-controller",
        "Background deploy record",
    ),
    (
        "/api/v0/deploy/algorithm/{algorithm_id}",
        "delete",
        "deploy-controller",
        "Delete an algorithm or one minor version",
    ),
    (
        "/api/v0/execute-algorithm",
        "post",
        "execution-controller",
        "Start an execution",
    ),
    (
        "/api/v0/executions/{id}/stop",
        "post",
        "execution-controller",
        "Request a stop",
    ),
    (
        "/api/v0/executions/{id}",
        "get",
        "execution-controller",
        "Execution record",
    ),
    (
        "/api/v0/files",
        "post",
        "file-controller",
        "Upload an HDF5 file (raw body)",
    ),
    (
        "/api/v0/files/{id}",
        "get",
        "file-controller",
        "Download a file",
    ),
    (
        "/api/v0/files/{id}",
        "delete",
        "file-controller",
        "Delete a file",
    ),
    (
        "/api/v1/files/{object_name}/upload-url",
        "get",
        "file-controller",
        "Presigned upload URL",
    ),
    (
        "/api/v1/files/{object_name}/download-url",
        "get",
        "file-controller",
        "Presigned download URL",
    ),
    (
        "/api/v1/files/{object_name}",
        "delete",
        "file-controller",
        "Delete an object",
    ),
    (
        "/api/v0/sample",
        "post",
        "sample-controller",
        "Save a sample",
    ),
    (
        "/api/v0/sample/all",
        "get",
        "sample-controller",
        "List samples",
    ),
    (
        "/api/v0/sample/{sample_id}",
        "get",
        "sample-controller",
        "Get a sample",
    ),
    (
        "/api/v0/sample/{sample_id}",
        "delete",
        "sample-controller",
        "Delete a sample",
    ),
    (
        "/api/v0/train-algorithm",
        "post",
        "training-controller",
        "Submit a training",
    ),
    (
        "/api/v0/training/{training_id}",
        "get",
        "training-controller",
        "Get a training record",
    ),
    (
        "/api/v0/training/{training_id}/stop",
        "post",
        "training-controller",
        "Stop a training",
    ),
    (
        "/api/v0/checkpoint/all",
        "get",
        "checkpoint-controller",
        "List checkpoints",
    ),
    (
        "/api/v0/checkpoint/{checkpoint_id}",
        "get",
        "checkpoint-controller",
        "Get a checkpoint",
    ),
    (
        "/api/v0/checkpoint/{checkpoint_id}",
        "delete",
        "checkpoint-controller",
        "Delete a checkpoint",
    ),
    (
        "/api/v0/benchmark-algorithm",
        "post",
        "benchmark-controller",
        "Submit a benchmark",
    ),
    (
        "/api/v0/benchmarks/{benchmark_id}",
        "get",
        "benchmark-controller",
        "Get a benchmark record",
    ),
];

pub fn document() -> Value {
    let mut paths = Map::new();
    for (path, method, tag, summary) in OPERATIONS {
        debug_assert!(PATTERNS.contains(path));
        let params: Vec<Value> = path
            .split('/')
            .filter(|s| s.starts_with('{'))
            .map(|s| json!({"name": s.trim_matches(|c| c == '{' || c == '}'), "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[*method] = json!({
            "tags": [tag],
            "summary": summary,
            "parameters": params,
            "responses": {"200": {"description": "Successful Response", "content": {"application/json": {}}}},
        });
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "compox", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
    })
}

pub async fn get_openapi() -> HttpResponse {
    HttpResponse::Ok().json(document())
}

const DOCS_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>compox API</title>
<style>body{font-family:sans-serif;margin:2em;max-width:60em}code{background:#eee;padding:0 .3em}
.m{display:inline-block;width:5em;font-weight:bold;text-transform:uppercase}</style></head>
<body><h1>compox API</h1><p>Generated from <a href="/openapi.json">/openapi.json</a>.</p><div id="ops"></div>
<script>
fetch('/openapi.json').then(r=>r.json()).then(doc=>{
  const out=document.getElementById('ops');
  for(const [path,ops] of Object.entries(doc.paths)){
    for(const [method,op] of Object.entries(ops)){
      const p=document.createElement('p');
      p.innerHTML='<span class="m">'+method+'</span><code></code> '+op.summary;
      p.querySelector('code').textContent=path;
      out.appendChild(p);
    }
  }
});
</script></body></html>"#;

pub async fn get_docs() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(DOCS_PAGE)
}
