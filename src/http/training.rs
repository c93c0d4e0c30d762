//! Training routes: submit (T1), get (T2), stop (T3) (`training.md` §3.1).

use super::json_body::{parse_object, Field, FieldType};
use super::{tasks, AppState};
use crate::actors::executor_pool::SubmitTraining;
use crate::errors::ApiError;
use crate::records::TaskKind;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

/// `IncomingTrainingRequest`.
const TRAINING_FIELDS: &[Field] = &[
    Field {
        name: "algorithm_id",
        ty: FieldType::Str,
        required: true,
        nullable: false,
    },
    Field {
        name: "training_data",
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
        name: "tags",
        ty: FieldType::StrList,
        required: false,
        nullable: false,
    },
    Field {
        name: "additional_parameters",
        ty: FieldType::Object,
        required: false,
        nullable: true,
    },
];

pub async fn train_algorithm(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body = parse_object(&req, &body, TRAINING_FIELDS)?;
    let training_id = state.pool.send(SubmitTraining { body }).await??;
    Ok(HttpResponse::Ok().json(json!({ "training_id": training_id })))
}

pub async fn get_training(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    tasks::get_task(&state, TaskKind::Training, id.into_inner()).await
}

pub async fn stop_training(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    tasks::stop_task(&state, TaskKind::Training, id.into_inner()).await
}
