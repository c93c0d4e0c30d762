//! Benchmark routes: submit (B1), get (B2) (`training.md` §5.1). Errors use the standard
//! envelope (`algorithm_not_found`, `benchmark_record_not_found`, `benchmark_record_read_failed`)
//! instead of the original's bare `{"detail"}` bodies; `detail` keeps its text.

use super::json_body::{parse_object, Field, FieldType};
use super::{tasks, AppState};
use crate::actors::executor_pool::SubmitBenchmark;
use crate::errors::ApiError;
use crate::records::TaskKind;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

/// `IncomingBenchmarkRequest`.
const BENCHMARK_FIELDS: &[Field] = &[
    Field {
        name: "algorithm_id",
        ty: FieldType::Str,
        required: true,
        nullable: false,
    },
    Field {
        name: "additional_parameters",
        ty: FieldType::Object,
        required: false,
        nullable: false,
    },
];

pub async fn benchmark_algorithm(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body = parse_object(&req, &body, BENCHMARK_FIELDS)?;
    let message = SubmitBenchmark {
        algorithm_id: body["algorithm_id"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        additional_parameters: body
            .get("additional_parameters")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
    };
    let benchmark_id = state.pool.send(message).await??;
    Ok(HttpResponse::Ok().json(json!({ "benchmark_id": benchmark_id })))
}

pub async fn get_benchmark(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    tasks::get_task(&state, TaskKind::Benchmark, id.into_inner()).await
}
