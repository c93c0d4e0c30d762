//! Object storage behind one trait, so the storage gateway actor can own any backend.
//!
//! Collections are the logical names of `rest-api.md` §4.1; a backend prefixes them with
//! `storage.collection_prefix`. Object keys are opaque strings, checked once by
//! [`validate_key`] so no backend ever sees a name that could escape its store.

pub mod filesystem;
pub mod hdf5_check;
pub mod minio_binary;
pub mod s3;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use serde::Serialize;
use std::collections::BTreeMap;

/// The twelve collections created at start-up, in the original's order (`platform.md` §3.4).
pub const COLLECTIONS: [&str; 12] = [
    "data-store",
    "execution-store",
    "algorithm-store",
    "module-store",
    "asset-store",
    "training-store",
    "sample-store",
    "algorithm-checkpoint-store",
    "stop-requests",
    "deploy-store",
    "system-store",
    "benchmark-store",
];

pub const DATA_STORE: &str = "data-store";
pub const EXECUTION_STORE: &str = "execution-store";
pub const ALGORITHM_STORE: &str = "algorithm-store";
pub const MODULE_STORE: &str = "module-store";
pub const ASSET_STORE: &str = "asset-store";
pub const CHECKPOINT_STORE: &str = "algorithm-checkpoint-store";
pub const SAMPLE_STORE: &str = "sample-store";
pub const TRAINING_STORE: &str = "training-store";
pub const BENCHMARK_STORE: &str = "benchmark-store";
pub const STOP_REQUESTS: &str = "stop-requests";
pub const DEPLOY_STORE: &str = "deploy-store";

/// A stream of body chunks; an `Err` item aborts the write and nothing is stored.
pub type ByteStream = BoxStream<'static, Result<Bytes, std::io::Error>>;

#[derive(Debug, Clone, Serialize)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub last_modified: Option<String>,
    /// A token that changes whenever the object is rewritten, for cheap change detection: the
    /// ETag on S3; on the filesystem the inode and the modification time in nanoseconds (every
    /// write renames a new file into place).
    #[serde(skip)]
    pub version: Option<String>,
}

/// Expiry per collection, in days (`*_expire_days`).
#[derive(Debug, Clone, Default)]
pub struct ExpiryRules {
    pub days: BTreeMap<String, i64>,
}

impl ExpiryRules {
    pub fn from_settings(s: &crate::config::StorageSettings) -> Self {
        let mut days = BTreeMap::new();
        days.insert(DATA_STORE.to_string(), s.data_store_expire_days);
        days.insert(EXECUTION_STORE.to_string(), s.execution_store_expire_days);
        days.insert("training-store".to_string(), s.training_store_expire_days);
        days.insert(DEPLOY_STORE.to_string(), s.deploy_store_expire_days);
        days.insert(STOP_REQUESTS.to_string(), s.stop_requests_expire_days);
        ExpiryRules { days }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PresignMethod {
    Get,
    Put,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object '{key}' not found in {collection}")]
    NotFound { collection: String, key: String },
    #[error("invalid object name {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("{operation} failed because the disk is full.")]
    DiskFull { operation: String },
    #[error("{operation} failed: access denied: {message}")]
    AccessDenied { operation: String, message: String },
    #[error("{operation} failed: storage unavailable: {message}")]
    Unavailable { operation: String, message: String },
    #[error("{operation} failed: {message}")]
    WriteFailed { operation: String, message: String },
    /// S3 `InsufficientStorage`: `storage_write_failed`, but worth retrying later (§4.6).
    #[error("{operation} failed: insufficient storage: {message}")]
    InsufficientStorage { operation: String, message: String },
    /// The body was refused by a check that ran while it streamed (e.g. not HDF5).
    #[error("upload rejected: {0}")]
    Rejected(String),
    /// The client went away before the body was complete.
    #[error("upload aborted: {0}")]
    Aborted(String),
}

/// What a failed read of an upload's body means: a check that ran while it streamed refused it
/// (`InvalidData`), or the body ended early (the client went away).
pub fn body_error(e: std::io::Error) -> StorageError {
    match e.kind() {
        std::io::ErrorKind::InvalidData => StorageError::Rejected(e.to_string()),
        // actix describes an early end as "… before completing: None".
        _ => StorageError::Aborted(e.to_string().trim_end_matches(": None").to_string()),
    }
}

impl StorageError {
    /// The original's storage error code (`platform.md` §4.6).
    pub fn code(&self) -> &'static str {
        match self {
            StorageError::NotFound { .. } => "not_found",
            StorageError::InvalidKey { .. } => "invalid_object_name",
            StorageError::DiskFull { .. } => "disk_full",
            StorageError::AccessDenied { .. } => "storage_access_denied",
            StorageError::Unavailable { .. } => "storage_unavailable",
            StorageError::WriteFailed { .. }
            | StorageError::InsufficientStorage { .. }
            | StorageError::Aborted(_) => "storage_write_failed",
            StorageError::Rejected(_) => "upload_rejected",
        }
    }

    pub fn retryable(&self) -> bool {
        matches!(
            self,
            StorageError::Unavailable { .. } | StorageError::InsufficientStorage { .. }
        )
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound { .. })
    }

    /// Normalises an OS error the way `platform.md` §4.6 does.
    pub fn from_io(operation: impl Into<String>, err: std::io::Error) -> Self {
        let operation = operation.into();
        match err.raw_os_error() {
            Some(libc::ENOSPC) => StorageError::DiskFull { operation },
            Some(libc::EACCES) | Some(libc::EPERM) => StorageError::AccessDenied {
                operation,
                message: err.to_string(),
            },
            _ => StorageError::WriteFailed {
                operation,
                message: err.to_string(),
            },
        }
    }
}

/// Rejects names that could escape a store: empty, NUL, absolute, `..` segments, too long.
pub fn validate_key(key: &str) -> Result<(), StorageError> {
    let fail = |reason| {
        Err(StorageError::InvalidKey {
            key: key.to_string(),
            reason,
        })
    };
    if key.is_empty() {
        return fail("empty name");
    }
    if key.contains('\0') {
        return fail("contains NUL");
    }
    if key.starts_with('/') || key.starts_with('\\') {
        return fail("absolute path");
    }
    if key.split(['/', '\\']).any(|seg| seg == ".." || seg == ".") {
        return fail("contains a '.' or '..' path segment");
    }
    if key.len() > 200 {
        return fail("longer than 200 bytes");
    }
    Ok(())
}

#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Creates missing collections; returns the logical names it created.
    async fn ensure_collections(&self, names: &[&str]) -> Result<Vec<String>, StorageError>;
    /// Writes a whole object atomically: readers see the old object or the new one, never a part.
    async fn put_stream(
        &self,
        collection: &str,
        key: &str,
        body: ByteStream,
    ) -> Result<u64, StorageError>;
    async fn put_bytes(&self, collection: &str, key: &str, body: Bytes)
        -> Result<(), StorageError>;
    async fn get_bytes(&self, collection: &str, key: &str) -> Result<Bytes, StorageError>;
    async fn get_stream(
        &self,
        collection: &str,
        key: &str,
    ) -> Result<(u64, ByteStream), StorageError>;
    async fn exists(&self, collection: &str, key: &str) -> Result<bool, StorageError>;
    async fn size(&self, collection: &str, key: &str) -> Result<Option<u64>, StorageError>;
    /// Every key of a collection in ascending byte order (no 1,000-key cap).
    async fn list(&self, collection: &str) -> Result<Vec<ObjectInfo>, StorageError>;
    /// Deleting a missing object is not an error.
    async fn delete(&self, collection: &str, key: &str) -> Result<(), StorageError>;
    async fn get_tags(
        &self,
        collection: &str,
        key: &str,
    ) -> Result<BTreeMap<String, String>, StorageError>;
    async fn put_tags(
        &self,
        collection: &str,
        key: &str,
        tags: BTreeMap<String, String>,
    ) -> Result<(), StorageError>;
    /// A URL that performs `method` on the object without further credentials, valid `expires_s`.
    fn presign(
        &self,
        method: PresignMethod,
        collection: &str,
        key: &str,
        expires_s: u64,
    ) -> Result<String, StorageError>;
    /// Deletes objects past their collection's expiry; returns how many went.
    async fn sweep_expired(&self, rules: &ExpiryRules) -> Result<usize, StorageError>;
}
