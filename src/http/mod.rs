//! The HTTP layer: thin handlers that parse and validate, send one message to an actor, and map
//! the reply. No storage call and no Python happens here.

pub mod algorithms;
pub mod benchmarks;
pub mod checkpoints;
pub mod cors;
pub mod deploy;
pub mod errors;
pub mod executions;
pub mod files;
pub mod json_body;
pub mod openapi;
mod pyjson;
pub mod root;
pub mod routes;
pub mod samples;
mod tasks;
pub mod training;

use crate::actors::{
    checkpoint_store::CheckpointStore, deployer::Deployer, executor_pool::ExecutorPool,
    sample_store::SampleStore, storage_gateway::StorageGateway,
};
use crate::config::Settings;
use crate::storage::filesystem::UrlSigner;
use actix::Addr;
use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::{web, App};
use futures_util::future::Either;
use std::sync::Arc;

/// Everything a handler may reach: actor addresses and immutable start-up facts.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub storage: Addr<StorageGateway>,
    pub deployer: Addr<Deployer>,
    pub pool: Addr<ExecutorPool>,
    pub samples: Addr<SampleStore>,
    pub checkpoints: Addr<CheckpointStore>,
    pub signer: UrlSigner,
    /// GPU count from the one `nvidia-smi` probe at start-up.
    pub gpu_count: Option<usize>,
}

/// Registers every route of [`routes::PATTERNS`] on `cfg`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    let na = || web::to(errors::method_not_allowed);
    cfg.service(
        web::resource("/")
            .route(web::get().to(root::get_root))
            .default_service(na()),
    )
    .service(
        web::resource("/health")
            .route(web::get().to(root::get_health))
            .default_service(na()),
    )
    .service(
        web::resource("/openapi.json")
            .route(web::get().to(openapi::get_openapi))
            .default_service(na()),
    )
    .service(
        web::resource("/docs")
            .route(web::get().to(openapi::get_docs))
            .default_service(na()),
    )
    .service(
        web::resource("/api/v0/algorithm/all")
            .route(web::get().to(algorithms::list_algorithms))
            .default_service(na()),
    )
    .service(
        web::resource("/api/v0/algorithm/{algorithm_name}/{algorithm_major_version}")
            .route(web::get().to(algorithms::get_algorithm))
            .default_service(na()),
    )
    .service(
        web::resource("/api/v0/algorithm/{algorithm_name}/{algorithm_major_version}/export")
            .route(web::get().to(algorithms::export_algorithm))
            .default_service(na()),
    )
    .service(
        web::resource("/api/v0/deploy/local")
            .route(web::post().to(deploy::deploy_local))
            .default_service(na()),
    )
    .service(
        web::resource("/api/v0/deploy/local-async")
            .route(web::post().to(deploy::deploy_local_async))
            .default_service(na()),
    )
    .service(
        web::resource("/api/v0/deploy/algorithm/{algorithm_id}")
            .route(web::delete().to(deploy::delete_algorithm))
            .default_service(na()),
    )
    .service(
        web::resource("/api/v0/deploy/{deploy_id}")
            .route(web::get().to(deploy::get_deploy))
            .default_service(na()),
    )
    .service(
        web::resource("/api/v0/execute-algorithm")
            .route(web::post().to(executions::execute_algorithm))
            .default_service(na()),
    )
    .service(
        web::resource("/api/v0/execute-algorithm/all")
            .route(web::get().to(executions::list_executions))
            .route(web::delete().to(executions::delete_all_executions))
            .default_service(na()),
    )
    .service(
        web::resource("/api/v0/execute-algorithm/{execution_id}")
            .route(web::delete().to(executions::delete_execution))
            .default_service(na()),
    )
    .service(
        web::resource("/api/v0/executions/{id}")
            .route(web::get().to(executions::get_execution))
            .default_service(na()),
    )
    .service(
        web::resource("/api/v0/executions/{id}/stop")
            .route(web::post().to(executions::stop_execution))
            .default_service(na()),
    )
    .service(
        web::resource("/api/v0/train-algorithm")
            .route(web::post().to(training::train_algorithm))
            .default_service(na()),
    )
    .service(
        web::resource("/api/v0/training/{training_id}")
            .route(web::get().to(training::get_training))
            .default_service(na()),
    )
    .service(
        web::resource("/api/v0/training/{training_id}/stop")
            .route(web::post().to(training::stop_training))
            .default_service(na()),
    )
    .service(
        web::resource("/api/v0/benchmark-algorithm")
            .route(web::post().to(benchmarks::benchmark_algorithm))
            .default_service(na()),
    )
    .service(
        web::resource("/api/v0/benchmarks/{benchmark_id}")
            .route(web::get().to(benchmarks::get_benchmark))
            .default_service(na()),
    )
    .service(
        web::resource("/api/v0/sample")
            .route(web::post().to(samples::save_sample))
            .default_service(na()),
    )
    .service(
        web::resource("/api/v0/sample/all")
            .route(web::get().to(samples::list_samples))
            .default_service(web::to(samples::delete_sample_all)),
    )
    .service(
        web::resource("/api/v0/sample/{sample_id}")
            .route(web::get().to(samples::get_sample))
            .route(web::delete().to(samples::delete_sample))
            .default_service(na()),
    )
    .service(
        web::resource("/api/v0/checkpoint/all")
            .route(web::get().to(checkpoints::list_checkpoints))
            .default_service(web::to(checkpoints::delete_checkpoint_all)),
    )
    .service(
        web::resource("/api/v0/checkpoint/{checkpoint_id}")
            .route(web::get().to(checkpoints::get_checkpoint))
            .route(web::delete().to(checkpoints::delete_checkpoint))
            .default_service(na()),
    )
    .service(
        web::resource("/api/v0/files")
            .route(web::post().to(files::upload_file))
            .default_service(na()),
    )
    .service(
        web::resource("/api/v0/files/{id}")
            .route(web::get().to(files::download_file))
            .route(web::delete().to(files::delete_file))
            .default_service(na()),
    )
    .service(
        web::resource("/api/v1/files/{object_name}/upload-url")
            .route(web::get().to(files::get_upload_url))
            .default_service(na()),
    )
    .service(
        web::resource("/api/v1/files/{object_name}/download-url")
            .route(web::get().to(files::get_download_url))
            .default_service(na()),
    )
    .service(
        web::resource("/api/v1/files/{object_name}")
            .route(web::delete().to(files::delete_object))
            .default_service(na()),
    )
    .service(
        web::resource("/api/v1/presigned/{collection}/{key:.*}")
            // A URL without its signature fields is as invalid as one with a wrong signature.
            .app_data(web::QueryConfig::default().error_handler(|_, _| {
                crate::errors::ApiError::from(crate::errors::FileError::PresignedUrlInvalid).into()
            }))
            .route(web::get().to(files::presigned_download))
            .route(web::put().to(files::presigned_upload))
            .default_service(na()),
    );
    if crate::actors::faults_enabled() {
        cfg.service(
            web::resource("/_test/fault/{actor}").route(web::post().to(root::inject_fault)),
        );
    }
}

/// Largest JSON body a route reads (uploads stream and have no limit).
const MAX_JSON_BODY: usize = 64 * 1024 * 1024;

/// The framework's plain-text 413 for a JSON body over [`MAX_JSON_BODY`], in our error model.
fn too_large<B>(
    res: ServiceResponse<B>,
) -> actix_web::Result<actix_web::middleware::ErrorHandlerResponse<B>> {
    let (req, _) = res.into_parts();
    let body = crate::errors::ApiError::Http {
        status: 413,
        detail: "The request body is larger than 64 MiB",
    };
    let res = ServiceResponse::new(req, actix_web::ResponseError::error_response(&body));
    Ok(actix_web::middleware::ErrorHandlerResponse::Response(
        res.map_into_right_body(),
    ))
}

/// Builds the app for one HTTP worker thread.
pub fn app(
    state: AppState,
) -> App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let cors = cors::Cors::new(state.settings.middleware.clone());
    App::new()
        .app_data(web::Data::new(state))
        .app_data(web::PayloadConfig::new(MAX_JSON_BODY))
        .configure(configure)
        .default_service(web::to(errors::not_found))
        .wrap(
            actix_web::middleware::ErrorHandlers::new()
                .handler(actix_web::http::StatusCode::PAYLOAD_TOO_LARGE, too_large),
        )
        .wrap_fn(move |req, srv| {
            let origin = req
                .headers()
                .get("origin")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let preflight = req.method() == actix_web::http::Method::OPTIONS
                && origin.is_some()
                && req.headers().contains_key("access-control-request-method");
            if preflight {
                let method = req
                    .headers()
                    .get("access-control-request-method")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let requested = req
                    .headers()
                    .get("access-control-request-headers")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let private_network = req
                    .headers()
                    .contains_key("access-control-request-private-network");
                let resp = cors.preflight(
                    origin.as_deref().unwrap_or(""),
                    &method,
                    requested.as_deref(),
                    private_network,
                );
                let (http_req, _) = req.into_parts();
                let res = ServiceResponse::new(http_req, resp).map_into_right_body();
                return Either::Left(futures_util::future::ready(Ok(res)));
            }
            let has_cookie = req.headers().contains_key("cookie");
            let cors = cors.clone();
            let fut = srv.call(req);
            Either::Right(async move {
                let mut res = fut.await?;
                match origin {
                    Some(origin) => cors.decorate(&origin, has_cookie, res.headers_mut()),
                    None => cors.vary(res.headers_mut()),
                }
                Ok(res.map_into_left_body())
            })
        })
}
