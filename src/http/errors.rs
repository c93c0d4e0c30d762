//! Applies the error table of [`crate::errors`] to HTTP responses, and the framework-level answers
//! (unknown route, wrong method, trailing-slash redirect).

use crate::errors::ApiError;
use crate::storage::StorageError;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError};

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        let status = if self.restarting() {
            503
        } else {
            self.row().status
        };
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if self.restarting() {
            return HttpResponse::build(status).json(serde_json::json!({
                "detail": "The server is restarting an internal service; retry the request.",
                "code": "service_restarting",
                "retryable": true,
            }));
        }
        if self.client_aborted() {
            tracing::info!(error = %self, "request body ended early (the client went away)");
        } else if status.is_server_error() {
            tracing::error!(error = %self, code = %self.row().code, "request failed");
        }
        HttpResponse::build(status).json(self.body())
    }
}

impl ApiError {
    /// An upload whose body ended early: the client's doing, not a server fault.
    fn client_aborted(&self) -> bool {
        use crate::errors::FileError;
        use crate::storage::StorageError::Aborted;
        matches!(
            self,
            ApiError::Storage(Aborted(_)) | ApiError::File(FileError::UploadFailed(Aborted(_)))
        )
    }

    /// True when the failure is an actor restart (answered 503, retryable).
    fn restarting(&self) -> bool {
        use crate::errors::{DeployError, FileError};
        let storage = match self {
            ApiError::Unavailable { .. } => return true,
            ApiError::Storage(s) => Some(s),
            ApiError::File(FileError::UploadFailed(s))
            | ApiError::File(FileError::UploadUrlFailed(s))
            | ApiError::File(FileError::DownloadUrlFailed(s))
            | ApiError::File(FileError::DownloadFailed { source: s, .. })
            | ApiError::File(FileError::DeleteFailed { source: s, .. })
            | ApiError::Deploy(DeployError::Storage(s)) => Some(s),
            _ => None,
        };
        matches!(storage, Some(StorageError::Unavailable { message, .. })
            if message == crate::actors::storage_gateway::RESTARTING)
    }
}

/// E4 404, or a 307 to the same path with the trailing slash toggled when that path exists: every
/// trailing slash is dropped (`/files//` → `/files`), or one is added; `/` itself is never
/// redirected, so `//` (which would become the empty path) is a 404.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    let path = req.path();
    let alternate = if path.ends_with('/') {
        path.trim_end_matches('/').to_string()
    } else {
        format!("{path}/")
    };
    if path != "/" && !alternate.is_empty() && super::routes::matches_any(&alternate) {
        let location = match req.query_string() {
            "" => alternate,
            q => format!("{alternate}?{q}"),
        };
        return HttpResponse::TemporaryRedirect()
            .insert_header(("location", location))
            .finish();
    }
    ApiError::Http {
        status: 404,
        detail: "Not Found",
    }
    .error_response()
}

/// E4 405 for a known path with a method it does not serve.
pub async fn method_not_allowed() -> HttpResponse {
    ApiError::Http {
        status: 405,
        detail: "Method Not Allowed",
    }
    .error_response()
}
