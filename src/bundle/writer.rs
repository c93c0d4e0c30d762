//! Writes a bundle file (`platform.md` §5.2): one DEFLATE member per encrypted object, then the
//! manifest and its HMAC. Objects are written chunk by chunk, and the file appears under its
//! final name only once complete (a failed build leaves nothing behind).

use super::gcm::{Direction, Gcm, NONCE_BYTES};
use super::manifest::{self, ObjectEntry, HMAC_NAME, MANIFEST_NAME};
use super::{BundleError, BundleKey};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

/// Objects this large need zip64 headers.
const ZIP64_FROM: u64 = 0xFFFF_0000;

pub struct BundleWriter {
    zip: Option<ZipWriter<BufWriter<File>>>,
    key: BundleKey,
    partial: PathBuf,
    output: PathBuf,
    entries: Vec<ObjectEntry>,
    collections: Vec<String>,
}

fn write_err(e: impl std::fmt::Display) -> BundleError {
    BundleError::WriteFailed(e.to_string())
}

impl BundleWriter {
    /// Starts `<output>.partial` next to `output`, creating the parent folder.
    pub fn create(output: &Path, key: BundleKey) -> Result<Self, BundleError> {
        if let Some(parent) = output.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| write_err(format!("cannot create {}: {e}", parent.display())))?;
        }
        let mut partial = output.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let file = File::create(&partial)
            .map_err(|e| write_err(format!("cannot create {}: {e}", partial.display())))?;
        Ok(BundleWriter {
            zip: Some(ZipWriter::new(BufWriter::with_capacity(1 << 20, file))),
            key,
            partial,
            output: output.to_path_buf(),
            entries: Vec::new(),
            collections: Vec::new(),
        })
    }

    /// Lists a collection in the manifest even when it holds no objects.
    pub fn add_collection(&mut self, name: &str) {
        if !self.collections.iter().any(|c| c == name) {
            self.collections.push(name.to_string());
        }
    }

    fn zip(&mut self) -> Result<&mut ZipWriter<BufWriter<File>>, BundleError> {
        self.zip
            .as_mut()
            .ok_or_else(|| write_err("the bundle is already finished"))
    }

    /// Starts the next object's blob; feed it with [`ObjectWriter::write`].
    pub fn begin_object(
        &mut self,
        collection: &str,
        key: &str,
        size_hint: u64,
    ) -> Result<ObjectWriter<'_>, BundleError> {
        self.add_collection(collection);
        let blob = format!("objects/{:08}.bin", self.entries.len());
        let options = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Deflated)
            // Ciphertext does not compress; the fastest level keeps the build near copy speed.
            .compression_level(Some(1))
            .large_file(size_hint >= ZIP64_FROM);
        self.zip()?
            .start_file(blob.as_str(), options)
            .map_err(write_err)?;
        let nonce: [u8; NONCE_BYTES] = rand::random();
        Ok(ObjectWriter {
            gcm: Gcm::new(self.key.bytes(), &nonce, Direction::Encrypt),
            sha: Sha256::new(),
            size: 0,
            buf: Vec::new(),
            entry: ObjectEntry {
                blob,
                collection: collection.to_string(),
                key: key.to_string(),
                nonce_b64: base64::engine::general_purpose::STANDARD.encode(nonce),
                sha256: String::new(),
                size: None,
            },
            writer: self,
        })
    }

    /// Writes the manifest and its HMAC and moves the file into place. Returns the object count.
    pub fn finish(mut self) -> Result<usize, BundleError> {
        let created_at = iso_utc(chrono::Utc::now());
        let manifest = manifest::compose(&self.collections, &self.entries, &created_at);
        let signature = manifest::sign(&self.key, &manifest);
        let options = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
        let zip = self.zip()?;
        zip.start_file(MANIFEST_NAME, options).map_err(write_err)?;
        zip.write_all(&manifest).map_err(write_err)?;
        zip.start_file(HMAC_NAME, options).map_err(write_err)?;
        zip.write_all(signature.as_bytes()).map_err(write_err)?;
        let zip = self
            .zip
            .take()
            .ok_or_else(|| write_err("already finished"))?;
        let file = zip
            .finish()
            .map_err(write_err)?
            .into_inner()
            .map_err(|e| write_err(e.error()))?;
        file.sync_all().map_err(write_err)?;
        std::fs::rename(&self.partial, &self.output).map_err(|e| {
            write_err(format!(
                "cannot move the bundle to {}: {e}",
                self.output.display()
            ))
        })?;
        Ok(self.entries.len())
    }
}

/// A UTC time as Python's `datetime.isoformat()` writes it: microseconds only when there are any.
fn iso_utc(at: chrono::DateTime<chrono::Utc>) -> String {
    let format = if at.timestamp_subsec_micros() == 0 {
        "%Y-%m-%dT%H:%M:%S+00:00"
    } else {
        "%Y-%m-%dT%H:%M:%S%.6f+00:00"
    };
    at.format(format).to_string()
}

impl Drop for BundleWriter {
    fn drop(&mut self) {
        if self.zip.take().is_some() {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

/// The blob of one object being written.
pub struct ObjectWriter<'a> {
    writer: &'a mut BundleWriter,
    gcm: Gcm,
    sha: Sha256,
    size: u64,
    buf: Vec<u8>,
    entry: ObjectEntry,
}

impl ObjectWriter<'_> {
    /// Encrypts and writes the next chunk of plaintext.
    pub fn write(&mut self, plaintext: &[u8]) -> Result<(), BundleError> {
        self.sha.update(plaintext);
        self.size += plaintext.len() as u64;
        self.buf.clear();
        self.buf.extend_from_slice(plaintext);
        self.gcm.update(&mut self.buf);
        let buf = std::mem::take(&mut self.buf);
        let written = self.writer.zip()?.write_all(&buf).map_err(write_err);
        self.buf = buf;
        written
    }

    /// Appends the tag and records the manifest entry.
    pub fn finish(self) -> Result<(), BundleError> {
        let ObjectWriter {
            writer,
            gcm,
            sha,
            size,
            mut entry,
            ..
        } = self;
        let tag = gcm.tag();
        writer.zip()?.write_all(&tag).map_err(write_err)?;
        entry.sha256 = hex::encode(sha.finalize());
        entry.size = Some(size);
        writer.entries.push(entry);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::iso_utc;
    use chrono::TimeZone;

    #[test]
    fn created_at_is_written_like_python_isoformat() {
        let whole = chrono::Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        assert_eq!(iso_utc(whole), "2026-01-02T03:04:05+00:00");
        let sub_micro = whole + chrono::Duration::nanoseconds(999);
        assert_eq!(iso_utc(sub_micro), "2026-01-02T03:04:05+00:00");
        let fraction = whole + chrono::Duration::microseconds(123_450);
        assert_eq!(iso_utc(fraction), "2026-01-02T03:04:05.123450+00:00");
    }
}
