//! Checkpoint routes: list with tag filters (C1), get (C2), delete (C3) (`training.md` §4.5).

use super::algorithms::{query_all, query_pairs};
use super::AppState;
use crate::actors::checkpoint_store::{DeleteCheckpoint, GetCheckpoint, ListCheckpoints};
use crate::errors::ApiError;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

pub async fn list_checkpoints(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let q = query_pairs(&req);
    let checkpoints = state
        .checkpoints
        .send(ListCheckpoints {
            positive_tags: query_all(&q, "positive_tags"),
            negative_tags: query_all(&q, "negative_tags"),
        })
        .await??;
    Ok(HttpResponse::Ok().json(checkpoints))
}

pub async fn get_checkpoint(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let checkpoint = state
        .checkpoints
        .send(GetCheckpoint {
            checkpoint_id: id.into_inner(),
        })
        .await??;
    Ok(HttpResponse::Ok().json(checkpoint))
}

pub async fn delete_checkpoint(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state
        .checkpoints
        .send(DeleteCheckpoint {
            checkpoint_id: id.into_inner(),
        })
        .await??;
    Ok(HttpResponse::Ok().json(json!({ "detail": "Checkpoint deleted successfully" })))
}

/// Other methods on `/checkpoint/all`: DELETE reaches the `{checkpoint_id}` route with the id
/// `all` (`rest-api.md` §1.7); the rest are 405.
pub async fn delete_checkpoint_all(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    if req.method() != actix_web::http::Method::DELETE {
        return Ok(super::errors::method_not_allowed().await);
    }
    delete_checkpoint(state, web::Path::from("all".to_string())).await
}
