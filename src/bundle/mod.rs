//! Encrypted algorithm bundles (`platform.md` §5): a zip of AES-256-GCM blobs, one per stored
//! object of the four algorithm collections, described by a signed manifest. Byte-compatible with
//! the original's `compox-migration-bundle-v1`.
//!
//! - [`key`]: the 32-byte key and its base64url text form.
//! - [`gcm`]: AES-256-GCM computed chunk by chunk, so no object is ever held whole in memory.
//! - [`manifest`]: the manifest's schema, its exact bytes, validation (§5.3 steps 4–7), `inspect`.
//! - [`writer`] / [`build`]: writing a bundle from storage (§5.2).
//! - [`reader`]: opening and verifying a bundle (§5.3) and streaming its objects out.
//! - [`merge`]: the pure record and checkpoint rules of the semantic import (§5.5).
//! - [`state`]: the start-up hash gate and the `system-store/migration-state` document (§5.6).
//!
//! The import itself (storage writes, rollback journal) is the `BundleImporter` actor.

pub mod build;
pub mod gcm;
pub mod json;
pub mod key;
pub mod manifest;
pub mod merge;
pub mod reader;
pub mod state;
pub mod writer;

pub use key::{BundleKey, KeyUse};
pub use reader::BundleReader;

use crate::storage::StorageError;
use serde_json::{json, Value};

/// The four collections a bundle carries, in build order (§5.2).
pub const BUNDLE_COLLECTIONS: [&str; 4] = [
    crate::storage::ALGORITHM_STORE,
    crate::storage::MODULE_STORE,
    crate::storage::ASSET_STORE,
    crate::storage::CHECKPOINT_STORE,
];

/// The static name of a bundle collection, or `None` for anything else.
pub fn bundle_collection(name: &str) -> Option<&'static str> {
    BUNDLE_COLLECTIONS.iter().copied().find(|c| *c == name)
}

/// Every way reading, building or importing a bundle fails, with the original's codes.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{message}")]
    InvalidKey {
        message: String,
        actual_bytes: Option<usize>,
    },
    #[error("Invalid Compox algorithm bundle archive. {reason} ({path})")]
    InvalidArchive { path: String, reason: String },
    #[error(
        "Invalid bundle HMAC signature for manifest.json (wrong key, or the manifest was altered)"
    )]
    InvalidSignature,
    #[error("Invalid bundle manifest: {0}")]
    InvalidManifest(String),
    #[error("Unsupported bundle format {0:?}; expected \"compox-migration-bundle-v1\"")]
    UnsupportedFormat(String),
    #[error("Unsupported bundle encryption {0:?}; expected \"aesgcm\"")]
    UnsupportedEncryption(String),
    #[error("Object '{key}' of {collection} is not in the bundle")]
    ObjectNotFound { collection: String, key: String },
    #[error("Reading object '{key}' of {collection} from the bundle failed: {reason}")]
    ObjectReadFailed {
        collection: String,
        key: String,
        reason: String,
    },
    #[error("Checksum mismatch for object '{key}' of {collection} in the bundle")]
    ChecksumMismatch { collection: String, key: String },
    #[error("Bundle storage is missing required collections: {missing:?}")]
    MissingRequiredCollections { missing: Vec<String> },
    #[error("Failed to import builtin algorithm '{algorithm_key}' from storage bundle: {cause} ({})", cause.code())]
    AlgorithmImportFailed {
        algorithm_key: String,
        cause: Box<BundleError>,
    },
    #[error("Importing the algorithm bundle failed: {0}")]
    ImportFailed(String),
    #[error("Writing the algorithm bundle failed: {0}")]
    WriteFailed(String),
    #[error("{0}")]
    Storage(#[from] StorageError),
}

impl BundleError {
    /// The original's `CompoxBundleError` code.
    pub fn code(&self) -> &'static str {
        match self {
            BundleError::InvalidKey { .. } => "invalid_bundle_key",
            BundleError::InvalidArchive { .. } => "invalid_algorithm_bundle",
            BundleError::InvalidSignature => "invalid_bundle_signature",
            BundleError::InvalidManifest(_) => "invalid_bundle_manifest",
            BundleError::UnsupportedFormat(_) => "unsupported_bundle_format",
            BundleError::UnsupportedEncryption(_) => "unsupported_bundle_encryption",
            BundleError::ObjectNotFound { .. } => "bundle_object_not_found",
            BundleError::ObjectReadFailed { .. } => "bundle_object_read_failed",
            BundleError::ChecksumMismatch { .. } => "bundle_checksum_mismatch",
            BundleError::MissingRequiredCollections { .. } => "bundle_missing_required_collections",
            BundleError::AlgorithmImportFailed { .. } => "builtin_algorithm_import_failed",
            BundleError::ImportFailed(_) => "builtin_algorithm_bundle_import_failed",
            BundleError::WriteFailed(_) => "algorithm_bundle_write_failed",
            BundleError::Storage(s) => s.code(),
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            BundleError::InvalidKey { .. }
            | BundleError::InvalidArchive { .. }
            | BundleError::InvalidSignature
            | BundleError::InvalidManifest(_)
            | BundleError::UnsupportedFormat(_)
            | BundleError::UnsupportedEncryption(_)
            | BundleError::MissingRequiredCollections { .. } => 400,
            BundleError::ObjectNotFound { .. } => 404,
            _ => 500,
        }
    }

    pub fn retryable(&self) -> bool {
        match self {
            BundleError::Storage(s) => s.retryable(),
            BundleError::AlgorithmImportFailed { cause, .. } => cause.retryable(),
            _ => false,
        }
    }

    pub fn details(&self) -> Option<Value> {
        match self {
            BundleError::InvalidKey {
                actual_bytes: Some(n),
                ..
            } => Some(json!({"expected_bytes": key::KEY_BYTES, "actual_bytes": n})),
            BundleError::InvalidArchive { path, .. } => Some(json!({ "path": path })),
            BundleError::ObjectNotFound { collection, key }
            | BundleError::ChecksumMismatch { collection, key }
            | BundleError::ObjectReadFailed {
                collection, key, ..
            } => Some(json!({"collection": collection, "object": key})),
            BundleError::AlgorithmImportFailed { algorithm_key, .. } => {
                Some(json!({ "algorithm_key": algorithm_key }))
            }
            _ => None,
        }
    }
}

/// SHA-256 hex of a byte string.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}
