//! Frames between an executor and its worker process (`docs/worker-protocol.md` §3): a 4-byte
//! big-endian length, then that many bytes of JSON.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::io::{Read, Write};

/// Largest frame accepted; records and jobs are small, data goes through storage.
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToWorker {
    Init { storage: StorageSpec, worker: usize },
    Run { job: Value },
    UpdateAck { stop: bool, error: Option<String> },
    Shutdown,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromWorker {
    Ready {
        python_version: String,
        python_prefix: String,
        python_executable: String,
        pid: u32,
    },
    Update {
        fields: Map<String, Value>,
        /// The task the writing handler belongs to; a write for any other task is refused, so a
        /// thread left running by an earlier job cannot touch the current record.
        #[serde(default)]
        task_id: Option<String>,
    },
    /// The job ended. `retire`: why this worker must be replaced (its interpreter was changed
    /// by the job), if it must.
    Done {
        #[serde(default)]
        retire: Option<String>,
    },
    Fatal {
        message: String,
    },
}

/// What a worker needs to open the same storage as the server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StorageSpec {
    pub backend: crate::config::BackendSettings,
    pub collection_prefix: String,
    /// `storage.access_key_id`/`secret_access_key` of the server (S3 providers); the worker's
    /// own defaults would be other random values.
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<String>,
}

pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let body = serde_json::to_vec(msg).unwrap_or_default();
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Blocking read of one frame (worker side). `Ok(None)` at a clean end of stream.
pub fn read_blocking<T: for<'de> Deserialize<'de>>(
    r: &mut impl Read,
) -> std::io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "frame too large",
        ));
    }
    let mut buf = vec![0u8; n];
    r.read_exact(&mut buf)?;
    serde_json::from_slice(&buf)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

pub fn write_blocking<T: Serialize>(w: &mut impl Write, msg: &T) -> std::io::Result<()> {
    w.write_all(&encode(msg))?;
    w.flush()
}

/// Async read of one frame (executor side).
pub async fn read_async<T: for<'de> Deserialize<'de>>(
    r: &mut (impl tokio::io::AsyncRead + Unpin),
) -> std::io::Result<Option<T>> {
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "frame too large",
        ));
    }
    let mut buf = vec![0u8; n];
    r.read_exact(&mut buf).await?;
    serde_json::from_slice(&buf)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let msg = ToWorker::UpdateAck {
            stop: true,
            error: None,
        };
        let bytes = encode(&msg);
        let back: ToWorker = read_blocking(&mut bytes.as_slice()).unwrap().unwrap();
        assert!(matches!(back, ToWorker::UpdateAck { stop: true, .. }));
        let empty: Option<ToWorker> = read_blocking(&mut [].as_slice()).unwrap();
        assert!(empty.is_none());
    }
}
