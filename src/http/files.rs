//! File routes: v0 upload/download/delete (F1–F3), v1 presigned URLs (V1–V3), and the server's own
//! presigned-URL endpoint used by the filesystem backend.

use super::AppState;
use crate::actors::storage_gateway::{
    flatten, DeleteIfExists, GetStream, Presign, PresignExisting, PutStream, PutStreamUntagged,
};
use crate::errors::{ApiError, FileError};
use crate::records::uuid1;
use crate::storage::{hdf5_check, ByteStream, PresignMethod, StorageError, DATA_STORE};
use actix_web::{web, HttpResponse};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;

const URL_LIFETIME_S: u64 = 3600;

/// Moves a request body onto a `Send` stream with back-pressure (16 chunks in flight).
pub fn body_stream(mut payload: web::Payload) -> ByteStream {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    actix_web::rt::spawn(async move {
        while let Some(chunk) = payload.next().await {
            let item = chunk.map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::ConnectionAborted, e.to_string())
            });
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                break;
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
    .boxed()
}

/// F1: stores the raw body as a new `data-store` object once it proved to be HDF5.
pub async fn upload_file(
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let file_id = uuid1();
    let body = hdf5_check::validating(body_stream(payload));
    let put = PutStream {
        collection: DATA_STORE,
        key: file_id.clone(),
        body,
    };
    match flatten(state.storage.send(put).await) {
        Ok(bytes) => {
            tracing::debug!(file_id = %file_id, bytes, "file uploaded");
            Ok(HttpResponse::Ok().json(json!({ "file_id": file_id })))
        }
        Err(StorageError::Rejected(_)) => Err(FileError::InvalidHdf5.into()),
        Err(e) => Err(FileError::UploadFailed(e).into()),
    }
}

/// F2: streams the object back, chunked.
pub async fn download_file(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let file_id = id.into_inner();
    match flatten(
        state
            .storage
            .send(GetStream {
                collection: DATA_STORE,
                key: file_id.clone(),
            })
            .await,
    ) {
        Ok((_, stream)) => Ok(HttpResponse::Ok()
            .content_type("application/octet-stream")
            .streaming(stream)),
        Err(StorageError::NotFound { .. }) | Err(StorageError::InvalidKey { .. }) => {
            Err(FileError::NotFound { file_id }.into())
        }
        Err(source) => Err(FileError::DownloadFailed { file_id, source }.into()),
    }
}

pub async fn delete_file(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let file_id = id.into_inner();
    match flatten(
        state
            .storage
            .send(DeleteIfExists {
                collection: DATA_STORE,
                key: file_id.clone(),
            })
            .await,
    ) {
        Ok(true) => Ok(HttpResponse::Ok().json(json!({ "detail": "File deleted successfully" }))),
        Ok(false) | Err(StorageError::InvalidKey { .. }) => {
            Err(FileError::NotFound { file_id }.into())
        }
        Err(source) => Err(FileError::DeleteFailed { file_id, source }.into()),
    }
}

/// V3: as F3, with `object_name` in the details.
pub async fn delete_object(
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let object_name = name.into_inner();
    match flatten(
        state
            .storage
            .send(DeleteIfExists {
                collection: DATA_STORE,
                key: object_name.clone(),
            })
            .await,
    ) {
        Ok(true) => Ok(HttpResponse::Ok().json(json!({ "detail": "File deleted successfully" }))),
        Ok(false) | Err(StorageError::InvalidKey { .. }) => {
            Err(FileError::ObjectNotFound { object_name }.into())
        }
        Err(source) => Err(FileError::DeleteFailed {
            file_id: object_name,
            source,
        }
        .into()),
    }
}

/// V1: a presigned PUT URL; no existence or name check beyond store safety.
pub async fn get_upload_url(
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let msg = Presign {
        method: PresignMethod::Put,
        collection: DATA_STORE,
        key: name.into_inner(),
        expires_s: URL_LIFETIME_S,
    };
    match flatten(state.storage.send(msg).await) {
        Ok(url) => Ok(HttpResponse::Ok().json(json!({ "url": url }))),
        Err(StorageError::InvalidKey { key, reason }) => Err(FileError::InvalidName {
            name: key,
            reason: reason.into(),
        }
        .into()),
        Err(e) => Err(FileError::UploadUrlFailed(e).into()),
    }
}

/// V2: a presigned GET URL for an existing object.
pub async fn get_download_url(
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let object_name = name.into_inner();
    let msg = PresignExisting {
        method: PresignMethod::Get,
        collection: DATA_STORE,
        key: object_name.clone(),
        expires_s: URL_LIFETIME_S,
    };
    match flatten(state.storage.send(msg).await) {
        Ok(Some(url)) => Ok(HttpResponse::Ok().json(json!({ "url": url }))),
        Ok(None) | Err(StorageError::InvalidKey { .. }) => {
            Err(FileError::ObjectNotFound { object_name }.into())
        }
        Err(e) => Err(FileError::DownloadUrlFailed(e).into()),
    }
}

#[derive(Deserialize)]
pub struct PresignedQuery {
    method: String,
    expires: u64,
    signature: String,
}

fn check_signature(
    state: &AppState,
    method: PresignMethod,
    path: &(String, String),
    q: &PresignedQuery,
) -> Result<&'static str, ApiError> {
    let expected = match method {
        PresignMethod::Get => "GET",
        PresignMethod::Put => "PUT",
    };
    if path.0 != DATA_STORE
        || q.method != expected
        || !state
            .signer
            .verify(method, &path.0, &path.1, q.expires, &q.signature)
    {
        return Err(FileError::PresignedUrlInvalid.into());
    }
    Ok(DATA_STORE)
}

pub async fn presigned_download(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    q: web::Query<PresignedQuery>,
) -> Result<HttpResponse, ApiError> {
    let collection = check_signature(&state, PresignMethod::Get, &path, &q)?;
    let key = path.into_inner().1;
    match flatten(
        state
            .storage
            .send(GetStream {
                collection,
                key: key.clone(),
            })
            .await,
    ) {
        Ok((size, stream)) => Ok(HttpResponse::Ok()
            .content_type("application/octet-stream")
            .no_chunking(size)
            .streaming(stream)),
        Err(StorageError::NotFound { .. }) => {
            Err(FileError::ObjectNotFound { object_name: key }.into())
        }
        Err(source) => Err(FileError::DownloadFailed {
            file_id: key,
            source,
        }
        .into()),
    }
}

/// Objects uploaded this way skip the HDF5 check and get no `training_ref` tag, like the
/// original's presigned S3 uploads (`rest-api.md` V1 quirk, kept).
pub async fn presigned_upload(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    q: web::Query<PresignedQuery>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let collection = check_signature(&state, PresignMethod::Put, &path, &q)?;
    let key = path.into_inner().1;
    let msg = PutStreamUntagged {
        collection,
        key,
        body: body_stream(payload),
    };
    flatten(state.storage.send(msg).await).map_err(FileError::UploadFailed)?;
    Ok(HttpResponse::Ok().finish())
}
