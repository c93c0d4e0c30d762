//! The start-up hash gate and the `system-store/migration-state` document (`platform.md` §5.6).
//! The gate hashes the bundle *file*, so the same file imports once and any changed byte imports
//! again; the document's key sets per outcome are the original's.

use super::json::{dumps, Style};
use super::BundleError;
use serde_json::{json, Map, Value};
use std::io::Read;
use std::path::{Path, PathBuf};

pub const SYSTEM_STORE: &str = "system-store";
pub const STATE_KEY: &str = "migration-state";
pub const SKIP_REASON: &str = "builtin_storage_bundle_path/builtin_storage_bundle_key not configured or bundle file not found";

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The configured path with `~` expanded, made absolute and with symlinks resolved as far as
/// the path exists (the file itself need not).
pub fn resolve_bundle_path(configured: &str) -> PathBuf {
    let expanded = match configured.strip_prefix('~') {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => std::env::var_os("HOME")
            .map(|h| PathBuf::from(format!("{}{rest}", h.to_string_lossy())))
            .unwrap_or_else(|| PathBuf::from(configured)),
        _ => PathBuf::from(configured),
    };
    let absolute = crate::config::absolute(&expanded);
    std::fs::canonicalize(&absolute).unwrap_or(absolute)
}

/// SHA-256 hex of the file's bytes, read in 1 MiB chunks; `None` unless it is a regular file.
pub fn file_sha256(path: &Path) -> std::io::Result<Option<String>> {
    use sha2::Digest;
    if !path.is_file() {
        return Ok(None);
    }
    let mut file = std::fs::File::open(path)?;
    let mut sha = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
    }
    Ok(Some(hex::encode(sha.finalize())))
}

/// Python's `str(datetime.now())`: local, naive, fraction only when non-zero.
pub fn local_now() -> String {
    let now = chrono::Local::now();
    if now.timestamp_subsec_micros() == 0 {
        now.format("%Y-%m-%d %H:%M:%S").to_string()
    } else {
        now.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
    }
}

/// Parses a stored document; anything unreadable counts as `{}`.
pub fn parse(bytes: Option<&[u8]>) -> Map<String, Value> {
    bytes
        .and_then(|b| serde_json::from_slice::<Value>(b).ok())
        .and_then(|v| match v {
            Value::Object(m) => Some(m),
            _ => None,
        })
        .unwrap_or_default()
}

pub fn to_bytes(doc: &Map<String, Value>) -> Vec<u8> {
    dumps(&Value::Object(doc.clone()), Style::Default, false).into_bytes()
}

/// The gate of step 3: this exact file was imported successfully last time.
pub fn already_imported(state: &Map<String, Value>, hash: Option<&str>) -> bool {
    hash.is_some_and(|h| {
        state
            .get("last_imported_bundle_sha256")
            .and_then(Value::as_str)
            == Some(h)
            && state.get("last_import_status").and_then(Value::as_str) == Some("COMPLETED")
    })
}

fn previous(state: &Map<String, Value>, key: &str) -> Value {
    state.get(key).cloned().unwrap_or(Value::Null)
}

pub fn running(state: &Map<String, Value>, hash: Option<&str>) -> Map<String, Value> {
    let mut doc = state.clone();
    doc.insert("last_import_status".into(), json!("RUNNING"));
    doc.insert("last_import_started_at".into(), json!(local_now()));
    doc.insert("target_backend_version".into(), json!(VERSION));
    doc.insert("target_bundle_sha256".into(), json!(hash));
    doc
}

pub fn skipped(state: &Map<String, Value>) -> Map<String, Value> {
    let mut doc = state.clone();
    doc.insert(
        "last_imported_backend_version".into(),
        previous(state, "last_imported_backend_version"),
    );
    doc.insert("last_import_status".into(), json!("SKIPPED"));
    doc.insert("last_import_completed_at".into(), json!(local_now()));
    doc.insert("imported_algorithms".into(), json!(0));
    doc.insert("failed_algorithms".into(), json!(0));
    doc.insert(
        "last_imported_bundle_sha256".into(),
        previous(state, "last_imported_bundle_sha256"),
    );
    doc.insert("reason".into(), json!(SKIP_REASON));
    doc
}

pub fn completed(hash: Option<&str>, imported: usize) -> Map<String, Value> {
    let doc = json!({
        "last_imported_bundle_sha256": hash,
        "last_imported_backend_version": VERSION,
        "last_import_status": "COMPLETED",
        "last_import_completed_at": local_now(),
        "imported_algorithms": imported,
        "failed_algorithms": 0,
    });
    doc.as_object().cloned().unwrap_or_default()
}

/// The FAILED document; `rollback` is the journal replay's outcome.
pub fn failed(
    state: &Map<String, Value>,
    imported: usize,
    failed_algorithms: usize,
    error: &BundleError,
    rollback: &Result<(), String>,
) -> Map<String, Value> {
    let doc = json!({
        "last_imported_bundle_sha256": previous(state, "last_imported_bundle_sha256"),
        "last_imported_backend_version": previous(state, "last_imported_backend_version"),
        "last_import_status": "FAILED",
        "last_import_completed_at": local_now(),
        "imported_algorithms": imported,
        "failed_algorithms": failed_algorithms,
        "error": error.to_string(),
        "error_code": error.code(),
        "retryable": error.retryable(),
        "rollback_status": if rollback.is_ok() { "COMPLETED" } else { "FAILED" },
        "rollback_error": rollback.as_ref().err(),
    });
    doc.as_object().cloned().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(m: &Map<String, Value>) -> Vec<&str> {
        let mut k: Vec<&str> = m.keys().map(String::as_str).collect();
        k.sort();
        k
    }

    #[test]
    fn documents_have_the_original_key_sets() {
        let prior = parse(Some(
            br#"{"last_imported_bundle_sha256": "h0", "last_import_status": "COMPLETED"}"#,
        ));
        assert!(already_imported(&prior, Some("h0")));
        assert!(!already_imported(&prior, Some("h1")));
        assert!(!already_imported(&prior, None));
        let r = running(&prior, Some("h1"));
        assert_eq!(r["last_import_status"], "RUNNING");
        assert_eq!(r["target_bundle_sha256"], "h1");
        let s = skipped(&prior);
        assert_eq!(
            keys(&s),
            [
                "failed_algorithms",
                "imported_algorithms",
                "last_import_completed_at",
                "last_import_status",
                "last_imported_backend_version",
                "last_imported_bundle_sha256",
                "reason"
            ]
        );
        assert_eq!(s["last_imported_bundle_sha256"], "h0");
        let c = completed(Some("h1"), 3);
        assert_eq!(
            keys(&c),
            [
                "failed_algorithms",
                "imported_algorithms",
                "last_import_completed_at",
                "last_import_status",
                "last_imported_backend_version",
                "last_imported_bundle_sha256"
            ]
        );
        let f = failed(
            &prior,
            1,
            1,
            &BundleError::InvalidSignature,
            &Err("x".into()),
        );
        assert_eq!(f["error_code"], "invalid_bundle_signature");
        assert_eq!(f["rollback_status"], "FAILED");
        assert_eq!(f["rollback_error"], "x");
        assert_eq!(f["last_imported_bundle_sha256"], "h0");
        assert_eq!(parse(Some(b"not json")), Map::new());
        let text = String::from_utf8(to_bytes(&c)).unwrap();
        assert!(
            text.starts_with(r#"{"last_imported_bundle_sha256": "h1", "#),
            "{text}"
        );
    }

    #[test]
    fn hashing_and_paths() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("b.zip");
        assert_eq!(file_sha256(&f).unwrap(), None);
        std::fs::write(&f, b"abc").unwrap();
        assert_eq!(
            file_sha256(&f).unwrap().unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(file_sha256(d.path()).unwrap(), None);
        assert!(resolve_bundle_path("relative.zip").is_absolute());
        let t = local_now();
        assert!(t.len() == 19 || t.len() == 26, "{t}");
    }
}
