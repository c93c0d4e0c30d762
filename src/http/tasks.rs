//! What the routes of every task kind share: reading a task's record (X3, T2, B2) and asking it
//! to stop (X2, T3). The kind picks the record type and the error codes; the pool does the rest.

use super::AppState;
use crate::actors::executor_pool::{GetTask, StopTask};
use crate::errors::ApiError;
use crate::records::TaskKind;
use actix_web::HttpResponse;
use serde_json::json;

/// The current record of task `task_id` of `kind`, as the pool reports it.
pub async fn get_task(
    state: &AppState,
    kind: TaskKind,
    task_id: String,
) -> Result<HttpResponse, ApiError> {
    let record = state.pool.send(GetTask { kind, task_id }).await??;
    Ok(HttpResponse::Ok().json(record))
}

/// Posts a stop request for task `task_id` of `kind`.
pub async fn stop_task(
    state: &AppState,
    kind: TaskKind,
    task_id: String,
) -> Result<HttpResponse, ApiError> {
    state.pool.send(StopTask { kind, task_id }).await??;
    Ok(HttpResponse::Ok().json(json!({ "detail": "Stop request posted successfully" })))
}
