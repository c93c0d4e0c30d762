//! Sample routes: save (S1), list with tag filters (S2), get (S3), delete (S4) (`training.md` §2.3).

use super::algorithms::{query_all, query_pairs};
use super::json_body::{parse_object, Field, FieldType};
use super::AppState;
use crate::actors::sample_store::{DeleteSample, GetSample, ListSamples, SaveSample};
use crate::errors::ApiError;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

/// `IncomingSampleRequest`: `tags` defaults to `[]`, and null is refused (422) as in the original.
const SAMPLE_FIELDS: &[Field] = &[
    Field {
        name: "files",
        ty: FieldType::EntryList,
        required: true,
        nullable: false,
    },
    Field {
        name: "tags",
        ty: FieldType::StrList,
        required: false,
        nullable: false,
    },
];

pub async fn save_sample(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body = parse_object(&req, &body, SAMPLE_FIELDS)?;
    let files = body["files"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .cloned()
        .collect();
    let tags = body
        .get("tags")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    let sample_id = state.samples.send(SaveSample { files, tags }).await??;
    Ok(HttpResponse::Ok().json(json!({ "sample_id": sample_id })))
}

pub async fn list_samples(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let q = query_pairs(&req);
    let samples = state
        .samples
        .send(ListSamples {
            positive_tags: query_all(&q, "positive_tags"),
            negative_tags: query_all(&q, "negative_tags"),
        })
        .await??;
    Ok(HttpResponse::Ok().json(samples))
}

pub async fn get_sample(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let sample = state
        .samples
        .send(GetSample {
            sample_id: id.into_inner(),
        })
        .await??;
    Ok(HttpResponse::Ok().json(sample))
}

pub async fn delete_sample(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state
        .samples
        .send(DeleteSample {
            sample_id: id.into_inner(),
        })
        .await??;
    Ok(HttpResponse::Ok().json(json!({ "detail": "Sample deleted successfully" })))
}

/// Other methods on `/sample/all`: DELETE reaches the `{sample_id}` route with the id `all`, as
/// in the original's routing (`rest-api.md` §1.7); the rest are 405.
pub async fn delete_sample_all(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    if req.method() != actix_web::http::Method::DELETE {
        return Ok(super::errors::method_not_allowed().await);
    }
    delete_sample(state, web::Path::from("all".to_string())).await
}
