//! Emergency-record writer: the filesystem side store for terminal records the primary storage
//! refused (`runtime.md` §12, `platform.md` §3.6).
//!
//! Owns: the store root `<dir of log_path>/compox_emergency_records` and its 1 MiB reserve file.
//! Messages: [`WriteEmergencyRecord`], [`ReadEmergencyRecord`], [`DeleteEmergencyRecord`],
//! [`PurgeEmergencyRecords`].
//!
//! Flow of a write: 1. add the `_emergency_storage_*` fields; 2. write `<file>.json.tmp`, fsync,
//! rename over `compox_emergency_<id>.json`; 3. on ENOSPC free the reserve and retry once;
//! 4. recreate the reserve. Reads return `None` for missing or unparsable files.
//!
//! Failure: a panic restarts the actor; it holds no state besides its root, which is rebuilt.

use actix::prelude::*;
use serde_json::{json, Value};
use std::io::Write;
use std::path::PathBuf;

const RESERVE_BYTES: usize = 1024 * 1024;
const PURGED: [&str; 4] = [
    "execution-store",
    "training-store",
    "deploy-store",
    "benchmark-store",
];

pub struct EmergencyWriter {
    root: PathBuf,
}

impl EmergencyWriter {
    pub fn new(root: PathBuf) -> Self {
        EmergencyWriter { root }
    }

    fn file(&self, collection: &str, id: &str) -> PathBuf {
        let safe: String = id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.root
            .join(collection)
            .join(format!("compox_emergency_{safe}.json"))
    }

    fn reserve(&self) -> PathBuf {
        self.root.join(".emergency_reserve.bin")
    }

    /// Really allocates the reserve (zeros), unlike the original's sparse file.
    fn ensure_reserve(&self) {
        let path = self.reserve();
        if std::fs::metadata(&path)
            .map(|m| m.len() as usize == RESERVE_BYTES)
            .unwrap_or(false)
        {
            return;
        }
        let _ = std::fs::create_dir_all(&self.root);
        if let Ok(mut f) = std::fs::File::create(&path) {
            let _ = f
                .write_all(&vec![0u8; RESERVE_BYTES])
                .and_then(|_| f.sync_all());
        }
    }

    fn write_atomic(&self, target: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let tmp = target.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, target)
    }
}

impl Actor for EmergencyWriter {
    type Context = Context<Self>;
}

impl Supervised for EmergencyWriter {
    fn restarting(&mut self, _: &mut Context<Self>) {
        tracing::warn!(actor = "emergency_writer", "restarting");
    }
}

super::supervision_handlers!(EmergencyWriter);

/// Stores `record` (plus the storage error that forced it here) for `collection/id`.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct WriteEmergencyRecord {
    pub collection: &'static str,
    pub id: String,
    pub record: Value,
    pub error_message: String,
    pub error_code: String,
    pub retryable: bool,
}

impl Handler<WriteEmergencyRecord> for EmergencyWriter {
    type Result = Result<(), String>;
    fn handle(&mut self, m: WriteEmergencyRecord, _: &mut Context<Self>) -> Self::Result {
        let mut record = m.record;
        if let Value::Object(map) = &mut record {
            map.insert("_emergency_storage_error".into(), json!(m.error_message));
            map.insert("_emergency_storage_error_code".into(), json!(m.error_code));
            map.insert("_emergency_storage_retryable".into(), json!(m.retryable));
        }
        let bytes = crate::deploy::record::to_pretty_bytes(&record);
        let target = self.file(m.collection, &m.id);
        let result = match self.write_atomic(&target, &bytes) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                let _ = std::fs::remove_file(self.reserve());
                self.write_atomic(&target, &bytes)
            }
            other => other,
        };
        self.ensure_reserve();
        match result {
            Ok(()) => {
                tracing::warn!(collection = m.collection, id = %m.id, "record written to the emergency store");
                Ok(())
            }
            Err(e) => {
                tracing::error!(collection = m.collection, id = %m.id, error = %e, "emergency record write failed");
                Err(e.to_string())
            }
        }
    }
}

#[derive(Message)]
#[rtype(result = "Option<Value>")]
pub struct ReadEmergencyRecord {
    pub collection: &'static str,
    pub id: String,
}

impl Handler<ReadEmergencyRecord> for EmergencyWriter {
    type Result = Option<Value>;
    fn handle(&mut self, m: ReadEmergencyRecord, _: &mut Context<Self>) -> Self::Result {
        let bytes = std::fs::read(self.file(m.collection, &m.id)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct DeleteEmergencyRecord {
    pub collection: &'static str,
    pub id: String,
}

impl Handler<DeleteEmergencyRecord> for EmergencyWriter {
    type Result = ();
    fn handle(&mut self, m: DeleteEmergencyRecord, _: &mut Context<Self>) {
        let _ = std::fs::remove_file(self.file(m.collection, &m.id));
    }
}

/// Start-up purge: records of every collection we write (benchmarks included, a deliberate
/// difference), empty directories, then the reserve.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct PurgeEmergencyRecords;

impl Handler<PurgeEmergencyRecords> for EmergencyWriter {
    type Result = usize;
    fn handle(&mut self, _: PurgeEmergencyRecords, _: &mut Context<Self>) -> usize {
        let mut removed = 0;
        for collection in PURGED {
            let dir = self.root.join(collection);
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in rd.filter_map(Result::ok) {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with("compox_emergency_")
                    && name.ends_with(".json")
                    && std::fs::remove_file(entry.path()).is_ok()
                {
                    removed += 1;
                }
            }
            let _ = std::fs::remove_dir(&dir);
        }
        self.ensure_reserve();
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix::test]
    async fn write_read_delete_purge() {
        let d = tempfile::tempdir().unwrap();
        let w = EmergencyWriter::new(d.path().to_path_buf()).start();
        w.send(WriteEmergencyRecord {
            collection: "execution-store",
            id: "e1".into(),
            record: json!({"execution_id": "e1", "status": "FAILED"}),
            error_message: "disk full".into(),
            error_code: "disk_full".into(),
            retryable: false,
        })
        .await
        .unwrap()
        .unwrap();
        let path = d.path().join("execution-store/compox_emergency_e1.json");
        assert!(path.exists());
        let got = w
            .send(ReadEmergencyRecord {
                collection: "execution-store",
                id: "e1".into(),
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got["_emergency_storage_error_code"], "disk_full");
        assert_eq!(
            std::fs::metadata(d.path().join(".emergency_reserve.bin"))
                .unwrap()
                .len(),
            RESERVE_BYTES as u64
        );
        assert_eq!(w.send(PurgeEmergencyRecords).await.unwrap(), 1);
        assert!(w
            .send(ReadEmergencyRecord {
                collection: "execution-store",
                id: "e1".into()
            })
            .await
            .unwrap()
            .is_none());
    }
}
