//! Deploy routes: synchronous (D1) and background (D2) deploys of a server-side path, deploy
//! records (D3), and deletion (D4).

use super::algorithms::{query_one, query_pairs};
use super::json_body::parse_bool_param;
use super::AppState;
use crate::actors::deployer::{DeleteAlgorithm, DeployPath, GetDeployRecord, StartAsyncDeploy};
use crate::deploy::DeployOverrides;
use crate::errors::ApiError;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;
use std::path::PathBuf;

fn deploy_query(req: &HttpRequest) -> Result<(PathBuf, DeployOverrides, bool), ApiError> {
    let q = query_pairs(req);
    let Some(path) = query_one(&q, "path") else {
        return Err(ApiError::Validation(vec![json!({
            "type": "missing", "loc": ["query", "path"], "msg": "Field required", "input": null,
        })]));
    };
    let flag = |name: &str| {
        query_one(&q, name)
            .map(|v| parse_bool_param(name, &v))
            .transpose()
    };
    let overrides = DeployOverrides {
        algorithm_name: query_one(&q, "algorithm_name"),
        algorithm_major_version: query_one(&q, "algorithm_major_version"),
        removable: flag("removable")?,
        exportable: flag("exportable")?,
    };
    // `compox deploy-algorithms` talking to a running server asks for CLI flag rules.
    let cli = query_one(&q, "origin").is_some_and(|o| o == "deploy-algorithms");
    Ok((PathBuf::from(path), overrides, cli))
}

pub async fn deploy_local(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (path, overrides, cli) = deploy_query(&req)?;
    let result = state
        .deployer
        .send(DeployPath {
            path,
            overrides,
            cli,
            trusted: false,
        })
        .await??;
    Ok(HttpResponse::Ok().json(result))
}

pub async fn deploy_local_async(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (path, overrides, _) = deploy_query(&req)?;
    let deploy_id = state
        .deployer
        .send(StartAsyncDeploy { path, overrides })
        .await??;
    Ok(HttpResponse::Ok().json(json!({ "deploy_id": deploy_id })))
}

pub async fn get_deploy(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let record = state
        .deployer
        .send(GetDeployRecord {
            deploy_id: id.into_inner(),
        })
        .await??;
    Ok(HttpResponse::Ok().json(record))
}

pub async fn delete_algorithm(
    state: web::Data<AppState>,
    id: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let q = query_pairs(&req);
    // `deploy-algorithms --delete-existing` ignores `removable`, like the original; only from this machine.
    let local = req.peer_addr().is_some_and(|a| a.ip().is_loopback());
    let force = local && query_one(&q, "origin").is_some_and(|o| o == "deploy-algorithms");
    let msg = DeleteAlgorithm {
        algorithm_id: id.into_inner(),
        minor: query_one(&q, "algorithm_minor_version"),
        force,
    };
    let detail = state.deployer.send(msg).await??;
    Ok(HttpResponse::Ok().json(json!({ "detail": detail })))
}
