//! Every failure a client can see, by area, and the one table that maps them to a status and body
//! (`rest-api.md` §2). Handlers return these; they never write a status code themselves.

use crate::storage::StorageError;
use serde_json::{json, Value};

/// The fixed text of every 5xx body: the real message is logged, never sent.
pub const INTERNAL_DETAIL: &str = "Failed due to an internal server error.";

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("The provided file is not a valid hdf5 file.")]
    InvalidHdf5,
    #[error("File not found")]
    NotFound { file_id: String },
    #[error("File not found")]
    ObjectNotFound { object_name: String },
    #[error("Invalid object name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("The presigned URL is invalid or has expired.")]
    PresignedUrlInvalid,
    #[error("uploading file failed: {0}")]
    UploadFailed(StorageError),
    #[error("downloading file {file_id} failed: {source}")]
    DownloadFailed {
        file_id: String,
        source: StorageError,
    },
    #[error("deleting file {file_id} failed: {source}")]
    DeleteFailed {
        file_id: String,
        source: StorageError,
    },
    #[error("presigning an upload URL failed: {0}")]
    UploadUrlFailed(StorageError),
    #[error("presigning a download URL failed: {0}")]
    DownloadUrlFailed(StorageError),
}

#[derive(Debug, thiserror::Error)]
pub enum AlgorithmError {
    #[error("No algorithms found in the algorithm store")]
    NoAlgorithms,
    #[error("Model with the requested name and major version not found in the model store")]
    NotFoundByName {
        algorithm_name: String,
        algorithm_major_version: String,
    },
    #[error("Algorithm not found")]
    NotFoundById { algorithm_id: String },
    #[error("Algorithm is not exportable.")]
    NotExportable {
        algorithm_name: String,
        algorithm_major_version: String,
    },
    #[error("Algorithm '{algorithm_name}' v{algorithm_major_version} not found.")]
    ExportNotFound {
        algorithm_name: String,
        algorithm_major_version: String,
    },
    #[error("Algorithm '{algorithm_name}' v{algorithm_major_version}.{algorithm_minor_version} not found.")]
    MinorNotFound {
        algorithm_name: String,
        algorithm_major_version: String,
        algorithm_minor_version: String,
    },
    #[error("Checkpoint '{checkpoint_id}' not found.")]
    CheckpointNotFound { checkpoint_id: String },
    #[error("Path traversal attempt detected: {path}")]
    ExportSecurity { path: String },
    #[error("Algorithm is not removable")]
    NotRemovable { algorithm_id: String },
    #[error("reading algorithm records failed: {0}")]
    ReadFailed(String),
    #[error("listing algorithm records failed: {0}")]
    ListFailed(String),
    #[error("exporting algorithm failed: {0}")]
    ExportFailed(String),
    #[error("removing algorithm failed: {0}")]
    RemoveFailed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("Path not found: {path}")]
    PathNotFound { path: String },
    #[error("Path must be a directory or a .zip file.")]
    InvalidPathType { path: String },
    #[error("Invalid algorithm deployment zip: {path}")]
    InvalidZip { path: String, reason: String },
    #[error("Deploying from {path} is not allowed; allowed folders: {allowed}")]
    PathNotAllowed { path: String, allowed: String },
    #[error("Runner.py not found in the algorithm root {root}")]
    RunnerNotFound { root: String },
    /// A bad `pyproject.toml` or folder: names the file, the key and the rule.
    #[error("{0}")]
    InvalidAlgorithm(String),
    /// An `algorithm_name` or `algorithm_major_version` override that breaks the rule its
    /// `pyproject.toml` counterpart follows.
    #[error("Invalid {parameter} override: {rule}")]
    InvalidOverride {
        parameter: &'static str,
        rule: String,
    },
    /// A deploy zip beyond `deploy::zip_input::ZIP_LIMITS`; `reason` names the limit.
    #[error("Deployment zip {path} is refused: {reason}. Deploy the unpacked folder instead.")]
    ZipTooLarge { path: String, reason: String },
    #[error("Failed to create algorithm module: {0}")]
    ModuleCreateFailed(String),
    /// `check_importable` is on and importing the built module or calling `Runner()` failed.
    #[error("The algorithm module could not be imported: {0}")]
    ImportCheckFailed(String),
    #[error("Async deploy requires fastapi_background_tasks executor.")]
    AsyncNeedsInProcessExecutor,
    #[error("Deploy record not found")]
    RecordNotFound { deploy_id: String },
    #[error("reading deploy record failed: {0}")]
    RecordReadFailed(String),
    #[error("storing algorithm failed: {0}")]
    Storage(StorageError),
    #[error("deploy failed: {0}")]
    Internal(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ExecutionError {
    #[error("Input datasets with the following identifiers not found: {}", missing_dataset_ids.join("\n"))]
    InputDatasetsNotFound { missing_dataset_ids: Vec<String> },
    #[error("Algorithm not found")]
    AlgorithmNotFound { algorithm_id: String },
    #[error("Execution record not found")]
    RecordNotFound { execution_id: String },
    #[error("Execution in state {status} cannot be stopped")]
    NotStoppable {
        execution_id: String,
        status: String,
    },
    #[error("reading execution record {execution_id} failed: {message}")]
    RecordReadFailed {
        execution_id: String,
        message: String,
    },
    #[error("posting stop request for {execution_id} failed: {message}")]
    StopRequestFailed {
        execution_id: String,
        message: String,
    },
    #[error("reading execution records failed: {0}")]
    RecordsReadFailed(String),
    #[error("deleting execution records failed: {0}")]
    RecordsDeleteFailed(String),
    #[error("deleting execution record failed: {0}")]
    RecordDeleteFailed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum TrainingError {
    #[error("Input samples with the following identifiers not found: {}", missing_sample_ids.join("\n"))]
    InputSamplesNotFound { missing_sample_ids: Vec<String> },
    #[error("Files (associated with input sample) with the following identifiers not found: {}", missing_file_ids.join("\n"))]
    SampleFilesNotFound { missing_file_ids: Vec<String> },
    /// Empty `training_data` (the original accepts it and fails later; `training.md` §3.1).
    #[error("training_data must name at least one sample.")]
    NoTrainingData,
    #[error("Algorithm not found")]
    AlgorithmNotFound { algorithm_id: String },
    #[error("Checkpoint '{checkpoint_id}' not found.")]
    CheckpointNotFound { checkpoint_id: String },
    #[error("Checkpoint '{checkpoint_id}' belongs to algorithm {parent_algorithm_id}, not {algorithm_id}.")]
    CheckpointIncompatible {
        checkpoint_id: String,
        parent_algorithm_id: String,
        algorithm_id: String,
    },
    #[error("Algorithm {algorithm_id} has no minor version {algorithm_minor_version}.")]
    MinorNotFound {
        algorithm_id: String,
        algorithm_minor_version: String,
    },
    #[error("Training record not found")]
    RecordNotFound { training_id: String },
    #[error("reading training record {training_id} failed: {message}")]
    RecordReadFailed {
        training_id: String,
        message: String,
    },
    #[error("Training in state {status} cannot be stopped")]
    NotStoppable { training_id: String, status: String },
    #[error("posting stop request for {training_id} failed: {message}")]
    StopRequestFailed {
        training_id: String,
        message: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum BenchmarkError {
    #[error("Algorithm not found")]
    AlgorithmNotFound { algorithm_id: String },
    #[error("Benchmark record not found")]
    RecordNotFound { benchmark_id: String },
    #[error("reading benchmark record {benchmark_id} failed: {message}")]
    RecordReadFailed {
        benchmark_id: String,
        message: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("Input files with the following identifiers not found: {}", file_ids.join("\n"))]
    InputFilesNotFound { file_ids: Vec<String> },
    /// A body the sample manifest model refuses (the original answers 500; `training.md` §2.3).
    #[error("Invalid sample: {0}")]
    Invalid(String),
    #[error("Cannot promote files to training store. Some files are missing.")]
    FilesNotFound { missing_files: Vec<String> },
    #[error("saving sample failed: {0}")]
    SaveFailed(StorageError),
    #[error("No samples found in the sample store")]
    NoneStored,
    #[error("listing samples failed: {0}")]
    ListFailed(String),
    #[error("Failed to load sample manifest for sample {sample_id}.")]
    NotFound { sample_id: String },
    #[error("Sample not found")]
    Absent { sample_id: String },
    #[error("Invalid sample manifest for sample {sample_id}.")]
    InvalidManifest { sample_id: String },
    #[error("Invalid sample record.")]
    InvalidRecord { sample_id: String },
    #[error("reading sample {sample_id} failed: {message}")]
    GetFailed { sample_id: String, message: String },
    #[error("deleting sample {sample_id} failed: {message}")]
    DeleteFailed { sample_id: String, message: String },
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("No checkpoints found in the checkpoint store")]
    NoneStored,
    #[error("Failed to load checkpoint manifest with ID {checkpoint_id}")]
    NotFound { checkpoint_id: String },
    #[error("checkpoint manifest {checkpoint_id} is invalid: {message}")]
    ManifestInvalid {
        checkpoint_id: String,
        message: String,
    },
    #[error("listing checkpoints failed: {0}")]
    ListFailed(String),
    #[error("reading checkpoint {checkpoint_id} failed: {message}")]
    GetFailed {
        checkpoint_id: String,
        message: String,
    },
    #[error("deleting the assets of checkpoint {checkpoint_id} failed: {message}")]
    AssetDeleteFailed {
        checkpoint_id: String,
        message: String,
    },
    #[error("updating the algorithm record for checkpoint {checkpoint_id} failed: {message}")]
    AlgorithmRecordUpdateFailed {
        checkpoint_id: String,
        message: String,
    },
    #[error("updating the training record for checkpoint {checkpoint_id} failed: {message}")]
    TrainingRecordUpdateFailed {
        checkpoint_id: String,
        message: String,
    },
    #[error("deleting checkpoint {checkpoint_id} failed: {message}")]
    DeleteFailed {
        checkpoint_id: String,
        message: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Algorithm(#[from] AlgorithmError),
    #[error(transparent)]
    Deploy(#[from] DeployError),
    #[error(transparent)]
    Execution(#[from] ExecutionError),
    #[error(transparent)]
    Training(#[from] TrainingError),
    #[error(transparent)]
    Benchmark(#[from] BenchmarkError),
    #[error(transparent)]
    Sample(#[from] SampleError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Request validation (E3); the items are pydantic-style error objects.
    #[error("request validation failed")]
    Validation(Vec<Value>),
    /// Framework errors (E4): unknown route, wrong method.
    #[error("{detail}")]
    Http { status: u16, detail: &'static str },
    /// An actor panicked or is restarting; the request can be retried.
    #[error("service {actor} is restarting")]
    Unavailable { actor: &'static str },
    /// Anything else (E5).
    #[error("internal error: {0}")]
    Internal(String),
}

/// One row of the error table: what the client receives.
pub struct ErrorRow {
    pub status: u16,
    pub code: String,
    pub retryable: bool,
    pub details: Option<Value>,
}

fn row(status: u16, code: &str, details: Option<Value>) -> ErrorRow {
    ErrorRow {
        status,
        code: code.to_string(),
        retryable: false,
        details,
    }
}

impl ApiError {
    /// The error table (`rest-api.md` §2 and the per-endpoint sections of §5).
    pub fn row(&self) -> ErrorRow {
        use AlgorithmError as A;
        use DeployError as D;
        use ExecutionError as X;
        use FileError as F;
        match self {
            ApiError::File(e) => match e {
                F::InvalidHdf5 => row(422, "invalid_hdf5_file", None),
                F::NotFound { file_id } => {
                    row(404, "file_not_found", Some(json!({ "file_id": file_id })))
                }
                F::ObjectNotFound { object_name } => row(
                    404,
                    "file_not_found",
                    Some(json!({ "object_name": object_name })),
                ),
                F::InvalidName { name, reason } => row(
                    400,
                    "invalid_object_name",
                    Some(json!({ "object_name": name, "reason": reason })),
                ),
                F::PresignedUrlInvalid => row(403, "presigned_url_invalid", None),
                F::UploadFailed(s) => storage_row(500, "file_upload_failed", s),
                // Retryable when the storage cause is (an outage), as for uploads.
                F::DownloadFailed { source, .. } => {
                    storage_row(500, "file_download_failed", source)
                }
                F::DeleteFailed { source, .. } => storage_row(500, "file_delete_failed", source),
                F::UploadUrlFailed(_) => row(500, "file_upload_url_failed", None),
                F::DownloadUrlFailed(_) => row(500, "file_download_url_failed", None),
            },
            ApiError::Algorithm(e) => match e {
                A::NoAlgorithms => row(404, "no_algorithms_found", None),
                A::NotFoundByName {
                    algorithm_name,
                    algorithm_major_version,
                } => row(
                    404,
                    "algorithm_not_found",
                    Some(
                        json!({ "algorithm_name": algorithm_name, "algorithm_major_version": algorithm_major_version }),
                    ),
                ),
                A::NotFoundById { algorithm_id } => row(
                    404,
                    "algorithm_not_found",
                    Some(json!({ "algorithm_id": algorithm_id })),
                ),
                A::NotExportable {
                    algorithm_name,
                    algorithm_major_version,
                } => row(
                    403,
                    "algorithm_not_exportable",
                    Some(
                        json!({ "algorithm_name": algorithm_name, "algorithm_major_version": algorithm_major_version }),
                    ),
                ),
                A::ExportNotFound {
                    algorithm_name,
                    algorithm_major_version,
                } => row(
                    404,
                    "algorithm_not_found",
                    Some(
                        json!({ "algorithm_name": algorithm_name, "algorithm_major_version": algorithm_major_version }),
                    ),
                ),
                A::MinorNotFound {
                    algorithm_name,
                    algorithm_major_version,
                    algorithm_minor_version,
                } => row(
                    404,
                    "minor_version_not_found",
                    Some(json!({
                        "algorithm_name": algorithm_name,
                        "algorithm_major_version": algorithm_major_version,
                        "algorithm_minor_version": algorithm_minor_version,
                    })),
                ),
                A::CheckpointNotFound { checkpoint_id } => row(
                    404,
                    "checkpoint_not_found",
                    Some(json!({ "checkpoint_id": checkpoint_id })),
                ),
                A::ExportSecurity { .. } => row(400, "algorithm_export_security_error", None),
                A::NotRemovable { algorithm_id } => row(
                    400,
                    "algorithm_not_removable",
                    Some(json!({ "algorithm_id": algorithm_id })),
                ),
                A::ReadFailed(_) => row(500, "algorithm_read_failed", None),
                A::ListFailed(_) => row(500, "algorithm_list_failed", None),
                A::ExportFailed(_) => row(500, "algorithm_export_failed", None),
                A::RemoveFailed(_) => row(500, "algorithm_remove_failed", None),
            },
            ApiError::Deploy(e) => match e {
                D::PathNotFound { path } => {
                    row(400, "deploy_path_not_found", Some(json!({ "path": path })))
                }
                D::InvalidPathType { path } => row(
                    400,
                    "invalid_deploy_path_type",
                    Some(json!({ "path": path })),
                ),
                D::InvalidZip { path, reason } => row(
                    400,
                    "invalid_deployment_zip",
                    Some(json!({ "path": path, "reason": reason })),
                ),
                D::PathNotAllowed { path, .. } => row(
                    403,
                    "deploy_path_not_allowed",
                    Some(json!({ "path": path })),
                ),
                D::RunnerNotFound { root } => row(
                    400,
                    "algorithm_runner_not_found",
                    Some(json!({ "path": root })),
                ),
                D::InvalidAlgorithm(_) => row(400, "algorithm_deploy_failed", None),
                D::InvalidOverride { parameter, .. } => row(
                    400,
                    "algorithm_deploy_failed",
                    Some(json!({ "parameter": parameter })),
                ),
                D::ZipTooLarge { path, .. } => row(
                    400,
                    "algorithm_deploy_failed",
                    Some(json!({ "path": path })),
                ),
                D::ModuleCreateFailed(_) => row(400, "algorithm_module_create_failed", None),
                D::ImportCheckFailed(_) => row(400, "algorithm_module_import_check_failed", None),
                D::AsyncNeedsInProcessExecutor => row(400, "invalid_async_deploy_executor", None),
                D::RecordNotFound { deploy_id } => row(
                    404,
                    "deploy_record_not_found",
                    Some(json!({ "deploy_id": deploy_id })),
                ),
                D::RecordReadFailed(_) => row(500, "deploy_record_read_failed", None),
                D::Storage(s) => storage_row(500, s.code(), s),
                D::Internal(_) => row(500, "algorithm_deploy_failed", None),
            },
            ApiError::Execution(e) => match e {
                X::InputDatasetsNotFound {
                    missing_dataset_ids,
                } => row(
                    404,
                    "input_datasets_not_found",
                    Some(json!({ "missing_dataset_ids": missing_dataset_ids })),
                ),
                X::AlgorithmNotFound { algorithm_id } => row(
                    404,
                    "algorithm_not_found",
                    Some(json!({ "algorithm_id": algorithm_id })),
                ),
                X::RecordNotFound { execution_id } => row(
                    404,
                    "execution_record_not_found",
                    Some(json!({ "execution_id": execution_id })),
                ),
                X::NotStoppable {
                    execution_id,
                    status,
                } => row(
                    400,
                    "execution_not_stoppable",
                    Some(json!({ "execution_id": execution_id, "status": status })),
                ),
                X::RecordReadFailed { .. } => row(500, "execution_record_read_failed", None),
                X::StopRequestFailed { .. } => row(500, "stop_request_failed", None),
                X::RecordsReadFailed(_) => row(500, "execution_records_read_failed", None),
                X::RecordsDeleteFailed(_) => row(500, "execution_records_delete_failed", None),
                X::RecordDeleteFailed(_) => row(500, "execution_record_delete_failed", None),
            },
            ApiError::Training(e) => training_row(e),
            ApiError::Benchmark(e) => benchmark_row(e),
            ApiError::Sample(e) => sample_row(e),
            ApiError::Checkpoint(e) => checkpoint_row(e),
            ApiError::Storage(s) => match s {
                StorageError::InvalidKey { key, reason } => row(
                    400,
                    "invalid_object_name",
                    Some(json!({ "object_name": key, "reason": reason })),
                ),
                StorageError::NotFound { key, .. } => {
                    row(404, "not_found", Some(json!({ "key": key })))
                }
                other => storage_row(500, other.code(), other),
            },
            ApiError::Validation(_) => row(422, "request_validation_error", None),
            ApiError::Http { status, .. } => row(*status, &format!("http_{status}"), None),
            ApiError::Unavailable { actor } => ErrorRow {
                status: 503,
                code: "service_restarting".into(),
                retryable: true,
                details: Some(json!({ "service": actor })),
            },
            ApiError::Internal(_) => row(500, "internal_server_error", None),
        }
    }

    /// The JSON body for this error (E1–E5).
    pub fn body(&self) -> Value {
        let row = self.row();
        let detail = match self {
            ApiError::Validation(items) => Value::Array(items.clone()),
            _ if row.status >= 500 && row.status != 503 => Value::String(INTERNAL_DETAIL.into()),
            _ => Value::String(self.to_string()),
        };
        let mut body = json!({ "detail": detail, "code": row.code, "retryable": row.retryable });
        if let Some(details) = row.details {
            if row.status < 500 || row.status == 503 {
                body["details"] = details;
            }
        }
        body
    }
}

fn training_row(e: &TrainingError) -> ErrorRow {
    use TrainingError as T;
    match e {
        T::InputSamplesNotFound { missing_sample_ids } => row(
            404,
            "input_samples_not_found",
            Some(json!({ "missing_sample_ids": missing_sample_ids })),
        ),
        T::SampleFilesNotFound { missing_file_ids } => row(
            404,
            "sample_files_not_found",
            Some(json!({ "missing_file_ids": missing_file_ids })),
        ),
        T::NoTrainingData => row(400, "training_samples_not_found", None),
        T::AlgorithmNotFound { algorithm_id } => row(
            404,
            "algorithm_not_found",
            Some(json!({ "algorithm_id": algorithm_id })),
        ),
        T::CheckpointNotFound { checkpoint_id } => row(
            404,
            "checkpoint_not_found",
            Some(json!({ "checkpoint_id": checkpoint_id })),
        ),
        T::CheckpointIncompatible {
            checkpoint_id,
            parent_algorithm_id,
            ..
        } => row(
            400,
            "checkpoint_asset_incompatible",
            Some(
                json!({ "checkpoint_id": checkpoint_id, "parent_algorithm_id": parent_algorithm_id }),
            ),
        ),
        T::MinorNotFound {
            algorithm_id,
            algorithm_minor_version,
        } => row(
            404,
            "minor_version_not_found",
            Some(
                json!({ "algorithm_id": algorithm_id, "algorithm_minor_version": algorithm_minor_version }),
            ),
        ),
        T::RecordNotFound { training_id } => row(
            404,
            "training_record_not_found",
            Some(json!({ "training_id": training_id })),
        ),
        T::RecordReadFailed { .. } => row(500, "training_record_read_failed", None),
        T::NotStoppable {
            training_id,
            status,
        } => row(
            400,
            "training_not_stoppable",
            Some(json!({ "training_id": training_id, "status": status })),
        ),
        T::StopRequestFailed { .. } => row(500, "stop_request_failed", None),
    }
}

fn benchmark_row(e: &BenchmarkError) -> ErrorRow {
    use BenchmarkError as B;
    match e {
        B::AlgorithmNotFound { algorithm_id } => row(
            404,
            "algorithm_not_found",
            Some(json!({ "algorithm_id": algorithm_id })),
        ),
        B::RecordNotFound { benchmark_id } => row(
            404,
            "benchmark_record_not_found",
            Some(json!({ "benchmark_id": benchmark_id })),
        ),
        B::RecordReadFailed { .. } => row(500, "benchmark_record_read_failed", None),
    }
}

fn sample_row(e: &SampleError) -> ErrorRow {
    use SampleError as S;
    match e {
        S::InputFilesNotFound { file_ids } => row(
            404,
            "sample_input_files_not_found",
            Some(json!({ "file_ids": file_ids })),
        ),
        S::Invalid(_) => row(400, "validation_error", None),
        S::FilesNotFound { missing_files } => row(
            404,
            "sample_files_not_found",
            Some(json!({ "missing_files": missing_files })),
        ),
        S::SaveFailed(s) => storage_row(500, "sample_save_failed", s),
        S::NoneStored => row(404, "samples_not_found", None),
        S::ListFailed(_) => row(500, "sample_list_failed", None),
        S::NotFound { sample_id } | S::Absent { sample_id } => row(
            404,
            "sample_not_found",
            Some(json!({ "sample_id": sample_id })),
        ),
        S::InvalidManifest { sample_id } => row(
            400,
            "invalid_sample_manifest",
            Some(json!({ "sample_id": sample_id })),
        ),
        S::InvalidRecord { sample_id } => row(
            400,
            "invalid_sample_record",
            Some(json!({ "sample_id": sample_id })),
        ),
        S::GetFailed { .. } => row(500, "sample_get_failed", None),
        S::DeleteFailed { .. } => row(500, "sample_delete_failed", None),
    }
}

fn checkpoint_row(e: &CheckpointError) -> ErrorRow {
    use CheckpointError as C;
    match e {
        C::NoneStored => row(404, "checkpoints_not_found", None),
        C::NotFound { checkpoint_id } => row(
            404,
            "checkpoint_not_found",
            Some(json!({ "checkpoint_id": checkpoint_id })),
        ),
        C::ManifestInvalid { .. } => row(500, "checkpoint_manifest_invalid", None),
        C::ListFailed(_) => row(500, "checkpoint_list_failed", None),
        C::GetFailed { .. } => row(500, "checkpoint_get_failed", None),
        C::AssetDeleteFailed { .. } => row(500, "checkpoint_asset_delete_failed", None),
        C::AlgorithmRecordUpdateFailed { .. } => {
            row(500, "checkpoint_algorithm_record_update_failed", None)
        }
        C::TrainingRecordUpdateFailed { .. } => {
            row(500, "checkpoint_training_record_update_failed", None)
        }
        C::DeleteFailed { .. } => row(500, "checkpoint_delete_failed", None),
    }
}

fn storage_row(status: u16, code: &str, s: &StorageError) -> ErrorRow {
    ErrorRow {
        status,
        code: code.to_string(),
        retryable: s.retryable(),
        details: None,
    }
}

impl From<actix::MailboxError> for ApiError {
    fn from(_: actix::MailboxError) -> Self {
        ApiError::Unavailable { actor: "actor" }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_errors_are_retryable_exactly_when_their_storage_cause_is() {
        let outage = || StorageError::Unavailable {
            operation: "get".into(),
            message: "connection refused".into(),
        };
        let refused = || StorageError::WriteFailed {
            operation: "put".into(),
            message: "NoSuchBucket".into(),
        };
        for (cause, retryable) in [(outage(), true), (refused(), false)] {
            let download = ApiError::from(FileError::DownloadFailed {
                file_id: "f".into(),
                source: cause,
            });
            assert_eq!(download.row().retryable, retryable);
        }
        for (cause, retryable) in [(outage(), true), (refused(), false)] {
            let delete = ApiError::from(FileError::DeleteFailed {
                file_id: "f".into(),
                source: cause,
            });
            assert_eq!(delete.row().code, "file_delete_failed");
            assert_eq!(delete.row().retryable, retryable);
        }
    }

    #[test]
    fn client_errors_carry_message_and_details() {
        let e = ApiError::from(FileError::NotFound {
            file_id: "x".into(),
        });
        assert_eq!(e.row().status, 404);
        assert_eq!(
            e.body(),
            json!({"detail": "File not found", "code": "file_not_found", "retryable": false, "details": {"file_id": "x"}})
        );
    }

    #[test]
    fn server_errors_hide_message() {
        let e = ApiError::from(AlgorithmError::ReadFailed("disk on fire".into()));
        assert_eq!(
            e.body(),
            json!({"detail": INTERNAL_DETAIL, "code": "algorithm_read_failed", "retryable": false})
        );
    }

    #[test]
    fn missing_inputs_join_ids_with_newlines() {
        let e = ApiError::from(ExecutionError::InputDatasetsNotFound {
            missing_dataset_ids: vec!["a".into(), "b".into()],
        });
        assert_eq!(
            e.body()["detail"],
            "Input datasets with the following identifiers not found: a\nb"
        );
    }
}
