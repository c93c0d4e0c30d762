//! Algorithm routes: get one (A1), list with filters (A2), export as zip (A3).

use super::json_body::parse_int_param;
use super::AppState;
use crate::actors::deployer::{ExportAlgorithm, GetAlgorithm, ListAlgorithms};
use crate::errors::ApiError;
use actix_web::{web, HttpRequest, HttpResponse};

/// Repeatable query parameters (`?a=1&a=2`), commas not split.
pub fn query_pairs(req: &HttpRequest) -> Vec<(String, String)> {
    web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .unwrap_or_default()
}

pub fn query_all(pairs: &[(String, String)], name: &str) -> Vec<String> {
    pairs
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .collect()
}

pub fn query_one(pairs: &[(String, String)], name: &str) -> Option<String> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

pub async fn get_algorithm(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (name, major) = path.into_inner();
    let body = state.deployer.send(GetAlgorithm { name, major }).await??;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body))
}

pub async fn list_algorithms(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let q = query_pairs(&req);
    let msg = ListAlgorithms {
        positive_tags: query_all(&q, "positive_tag"),
        negative_tags: query_all(&q, "negative_tag"),
        algorithm_type: query_one(&q, "algorithm_type"),
        supported_devices: query_all(&q, "supported_devices"),
    };
    let items = state.deployer.send(msg).await??;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(items))
}

pub async fn export_algorithm(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (name, raw_major) = path.into_inner();
    let major = parse_int_param("path", "algorithm_major_version", &raw_major)?.to_string();
    let q = query_pairs(&req);
    let minor = match query_one(&q, "algorithm_minor_version") {
        Some(raw) => Some(parse_int_param("query", "algorithm_minor_version", &raw)?.to_string()),
        None => None,
    };
    let msg = ExportAlgorithm {
        name,
        major,
        raw_major: raw_major.trim().to_string(),
        minor,
        checkpoint_id: query_one(&q, "checkpoint_id"),
    };
    let (filename, file) = state.deployer.send(msg).await??;
    let file = tokio::fs::File::from_std(file);
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
    Ok(HttpResponse::Ok()
        .content_type("application/zip")
        .insert_header((
            "content-disposition",
            format!("attachment; filename=\"{filename}\""),
        ))
        .streaming(stream))
}
