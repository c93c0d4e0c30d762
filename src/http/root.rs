//! `GET /` (R1), `GET /health`, and the test-only fault hook.

use super::AppState;
use crate::actors::{executor_pool::GetHealth, InjectFault};
use crate::config::COMPAT_VERSION;
use crate::errors::ApiError;
use actix_web::{web, HttpResponse};
use serde_json::json;

pub async fn get_root(state: web::Data<AppState>) -> HttpResponse {
    let info = &state.settings.info;
    let (available, count) = match state.gpu_count {
        Some(n) => (json!(true), json!(n)),
        None => (json!(null), json!(null)),
    };
    HttpResponse::Ok().json(json!({
        "name": info.product_name,
        "tags": info.server_tags,
        "group": info.group_name,
        "organization": info.organization_name,
        "domain": info.organization_domain,
        "version": COMPAT_VERSION,
        "cuda_available": available,
        "cuda_capable_devices_count": count,
    }))
}

/// 200 when every worker is ready, 503 while one is starting or restarting.
pub async fn get_health(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let health = state.pool.send(GetHealth).await?;
    let status = if health.ready {
        actix_web::http::StatusCode::OK
    } else {
        actix_web::http::StatusCode::SERVICE_UNAVAILABLE
    };
    Ok(HttpResponse::build(status).json(health))
}

pub async fn inject_fault(state: web::Data<AppState>, actor: web::Path<String>) -> HttpResponse {
    match actor.as_str() {
        "storage_gateway" => state.storage.do_send(InjectFault),
        "deployer" => state.deployer.do_send(InjectFault),
        "executor_pool" => state.pool.do_send(InjectFault),
        _ => return HttpResponse::NotFound().finish(),
    }
    HttpResponse::Ok().json(json!({"detail": "fault armed"}))
}
