//! Execution routes: submit (X1), stop (X2), get (X3), and the hidden manager routes (M1–M3).

use super::json_body::{parse_object, Field, FieldType};
use super::{tasks, AppState};
use crate::actors::executor_pool::{DeleteExecutions, ListExecutions, SubmitExecution};
use crate::errors::ApiError;
use crate::records::TaskKind;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

/// `IncomingExecutionRequest`. An explicit null `execution_device_override` is accepted as "no
/// override" (the spec calls rejecting it a quirk).
const EXECUTION_FIELDS: &[Field] = &[
    Field {
        name: "algorithm_id",
        ty: FieldType::Str,
        required: true,
        nullable: false,
    },
    Field {
        name: "input_dataset_ids",
        ty: FieldType::StrList,
        required: true,
        nullable: false,
    },
    Field {
        name: "checkpoint_id",
        ty: FieldType::Str,
        required: false,
        nullable: true,
    },
    Field {
        name: "algorithm_minor_version",
        ty: FieldType::Str,
        required: false,
        nullable: true,
    },
    Field {
        name: "execution_device_override",
        ty: FieldType::Str,
        required: false,
        nullable: true,
    },
    Field {
        name: "additional_parameters",
        ty: FieldType::Object,
        required: false,
        nullable: false,
    },
    Field {
        name: "session_token",
        ty: FieldType::Str,
        required: false,
        nullable: true,
    },
];

pub async fn execute_algorithm(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body = parse_object(&req, &body, EXECUTION_FIELDS)?;
    let execution_id = state.pool.send(SubmitExecution { body }).await??;
    Ok(HttpResponse::Ok().json(json!({ "execution_id": execution_id })))
}

pub async fn get_execution(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    tasks::get_task(&state, TaskKind::Execution, id.into_inner()).await
}

pub async fn stop_execution(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    tasks::stop_task(&state, TaskKind::Execution, id.into_inner()).await
}

pub async fn list_executions(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let records = state.pool.send(ListExecutions).await??;
    Ok(HttpResponse::Ok().json(records))
}

pub async fn delete_all_executions(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state
        .pool
        .send(DeleteExecutions { execution_id: None })
        .await??;
    Ok(HttpResponse::Ok().json(json!({ "detail": "Deleted all execution records" })))
}

pub async fn delete_execution(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state
        .pool
        .send(DeleteExecutions {
            execution_id: Some(id.into_inner()),
        })
        .await??;
    Ok(HttpResponse::Ok().json(json!({ "detail": "Deleted execution record" })))
}
