//! Opens a bundle and verifies it in the order of `platform.md` §5.3: key, archive and members,
//! HMAC over the exact manifest bytes, manifest fields. Objects are then decrypted on demand,
//! chunk by chunk, and a chunk only counts once the blob's GCM tag and the plaintext's SHA-256
//! have been checked at its end.

use super::gcm::{constant_time_eq, Direction, Gcm, NONCE_BYTES, TAG_BYTES};
use super::manifest::{self, Manifest, ObjectEntry, HMAC_NAME, MANIFEST_NAME};
use super::{BundleError, BundleKey, KeyUse};
use crate::storage::ByteStream;
use base64::Engine as _;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use zip::ZipArchive;

const CHUNK: usize = 1 << 20;
/// A manifest is a few hundred bytes per object; anything beyond this is not a bundle.
const MANIFEST_LIMIT: u64 = 256 << 20;

pub struct BundleReader {
    path: PathBuf,
    key: BundleKey,
    manifest: Manifest,
    /// collection → key → index into `manifest.objects` (a later duplicate wins).
    index: HashMap<String, BTreeMap<String, usize>>,
    archive: Mutex<ZipArchive<File>>,
}

impl std::fmt::Debug for BundleReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BundleReader({})", self.path.display())
    }
}

/// Receives the result of a streamed read once the blob has been checked.
pub type ReadOutcome = tokio::sync::oneshot::Receiver<Result<u64, BundleError>>;

impl BundleReader {
    /// Decodes the key, opens the archive and checks everything but the objects.
    pub fn open(path: &Path, key_text: &str) -> Result<Self, BundleError> {
        let key = BundleKey::parse(key_text, KeyUse::Read)?;
        let shown = path.display().to_string();
        let invalid = |reason: String| BundleError::InvalidArchive {
            path: shown.clone(),
            reason,
        };
        let file = File::open(path).map_err(|e| invalid(format!("cannot open it: {e}")))?;
        let mut archive =
            ZipArchive::new(file).map_err(|e| invalid(format!("not a readable zip: {e}")))?;
        check_members(path, &mut archive).map_err(&invalid)?;
        let manifest_bytes = read_member(&mut archive, MANIFEST_NAME).map_err(&invalid)?;
        std::str::from_utf8(&manifest_bytes)
            .map_err(|_| invalid(format!("{MANIFEST_NAME} is not UTF-8")))?;
        let signature = read_member(&mut archive, HMAC_NAME).map_err(&invalid)?;
        let signature = String::from_utf8(signature)
            .map_err(|_| invalid(format!("{HMAC_NAME} is not UTF-8")))?;
        let expected = manifest::sign(&key, &manifest_bytes);
        if !constant_time_eq(expected.as_bytes(), signature.trim().as_bytes()) {
            return Err(BundleError::InvalidSignature);
        }
        let manifest = Manifest::parse(&manifest_bytes)?;
        let mut index: HashMap<String, BTreeMap<String, usize>> = HashMap::new();
        for (i, o) in manifest.objects.iter().enumerate() {
            index
                .entry(o.collection.clone())
                .or_default()
                .insert(o.key.clone(), i);
        }
        Ok(BundleReader {
            path: path.to_path_buf(),
            key,
            manifest,
            index,
            archive: Mutex::new(archive),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The declared collections, sorted (§4.9).
    pub fn collections(&self) -> Vec<String> {
        self.manifest.collection_names()
    }

    /// The keys of a collection in ascending order.
    pub fn keys(&self, collection: &str) -> Vec<String> {
        self.index
            .get(collection)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub fn contains(&self, collection: &str, key: &str) -> bool {
        self.index
            .get(collection)
            .is_some_and(|m| m.contains_key(key))
    }

    pub fn entry(&self, collection: &str, key: &str) -> Result<&ObjectEntry, BundleError> {
        self.index
            .get(collection)
            .and_then(|m| m.get(key))
            .map(|i| &self.manifest.objects[*i])
            .ok_or_else(|| BundleError::ObjectNotFound {
                collection: collection.into(),
                key: key.into(),
            })
    }

    /// Decrypts one object into `sink`, chunk by chunk. The chunks are unverified until this
    /// returns `Ok`: a caller must discard what it received when it returns an error.
    pub fn read_object(
        &self,
        collection: &str,
        key: &str,
        sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<u64, BundleError> {
        let entry = self.entry(collection, key)?;
        let fail = |reason: String| BundleError::ObjectReadFailed {
            collection: collection.into(),
            key: key.into(),
            reason,
        };
        let nonce: [u8; NONCE_BYTES] = base64::engine::general_purpose::STANDARD
            .decode(entry.nonce_b64.trim())
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| fail("the nonce is not 12 bytes of base64".into()))?;
        let mut archive = self.archive.lock().unwrap_or_else(|p| p.into_inner());
        let mut blob = archive
            .by_name(&entry.blob)
            .map_err(|e| fail(format!("blob {} is not in the archive: {e}", entry.blob)))?;
        let mut gcm = Gcm::new(self.key.bytes(), &nonce, Direction::Decrypt);
        let mut sha = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let mut held: Vec<u8> = Vec::with_capacity(CHUNK + TAG_BYTES);
        let mut total = 0u64;
        loop {
            let n = blob
                .read(&mut buf)
                .map_err(|e| fail(format!("blob {}: {e}", entry.blob)))?;
            if n == 0 {
                break;
            }
            held.extend_from_slice(&buf[..n]);
            if held.len() <= TAG_BYTES {
                continue;
            }
            let tail = held.split_off(held.len() - TAG_BYTES);
            let mut plain = std::mem::replace(&mut held, tail);
            gcm.update(&mut plain);
            sha.update(&plain);
            total += plain.len() as u64;
            sink(&plain).map_err(|e| fail(format!("the destination refused data: {e}")))?;
        }
        if held.len() < TAG_BYTES {
            return Err(fail(format!("blob {} is shorter than its tag", entry.blob)));
        }
        if !constant_time_eq(&gcm.tag(), &held) {
            return Err(fail(
                "decryption failed: the key is wrong or the blob was altered".into(),
            ));
        }
        if !hex::encode(sha.finalize()).eq_ignore_ascii_case(entry.sha256.trim()) {
            return Err(BundleError::ChecksumMismatch {
                collection: collection.into(),
                key: key.into(),
            });
        }
        Ok(total)
    }

    /// A whole, verified object in memory (records and manifests, which are small).
    pub fn read_bytes(&self, collection: &str, key: &str) -> Result<Vec<u8>, BundleError> {
        let mut out = Vec::new();
        self.read_object(collection, key, &mut |chunk| {
            out.extend_from_slice(chunk);
            Ok(())
        })?;
        Ok(out)
    }

    /// Streams an object from a blocking task. The stream ends with an error item when the blob
    /// fails its checks, so a storage write fed by it stores nothing; the outcome says why.
    pub fn stream_object(
        self: &Arc<Self>,
        collection: &str,
        key: &str,
    ) -> Result<(ByteStream, ReadOutcome), BundleError> {
        self.entry(collection, key)?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let (me, collection, key) = (self.clone(), collection.to_string(), key.to_string());
        tokio::task::spawn_blocking(move || {
            let result = me.read_object(&collection, &key, &mut |chunk| {
                tx.blocking_send(Ok(Bytes::copy_from_slice(chunk)))
                    .map_err(|_| std::io::Error::other("reader went away"))
            });
            if let Err(e) = &result {
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
            let _ = done_tx.send(result);
        });
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        Ok((Box::pin(stream), done_rx))
    }
}

/// Refuses member names that could leave the extraction root, and any structure the zip reader
/// would silently tolerate: a local header that disagrees with the central directory (the
/// reader only uses the central copy), gaps or overlaps between members, and an end record whose
/// counts or offsets do not match. Together with the GCM tags, the manifest HMAC and the CRCs this
/// makes a flipped byte anywhere but in a few descriptive header fields fail the open or the read.
fn check_members(path: &Path, archive: &mut ZipArchive<File>) -> Result<(), String> {
    let mut raw = File::open(path).map_err(|e| format!("cannot reopen it: {e}"))?;
    let file_len = raw.metadata().map_err(|e| e.to_string())?.len();
    struct Span {
        local_at: u64,
        data_end: u64,
        descriptor: bool,
        central_at: u64,
        central_end: u64,
    }
    let mut spans = Vec::with_capacity(archive.len());
    for i in 0..archive.len() {
        let member = archive
            .by_index_raw(i)
            .map_err(|e| format!("member {i} is unreadable: {e}"))?;
        let name = member.name().to_string();
        if !manifest::safe_member_name(&name) {
            return Err(format!(
                "member {name:?} has an unsafe path (absolute or '..')"
            ));
        }
        let (local_at, central_at) = (member.header_start(), member.central_header_start());
        let data_end = member.data_start() + member.compressed_size();
        drop(member);
        let local = read_at(&mut raw, local_at, 30 + name.len())?;
        let central = read_at(&mut raw, central_at, 46 + name.len())?;
        let descriptor = u16_at(&local, 6) & 0x08 != 0;
        let variable =
            u16_at(&central, 28) as u64 + u16_at(&central, 30) as u64 + u16_at(&central, 32) as u64;
        let extra = read_at(
            &mut raw,
            central_at + 46 + name.len() as u64,
            u16_at(&central, 30) as usize,
        )?;
        if !headers_agree(&local, &central, &extra, name.len()) {
            return Err(format!(
                "member {name:?}: the local header disagrees with the central directory"
            ));
        }
        spans.push(Span {
            local_at,
            data_end,
            descriptor,
            central_at,
            central_end: central_at + 46 + variable,
        });
    }
    spans.sort_by_key(|s| s.local_at);
    let central_start = spans.iter().map(|s| s.central_at).min().unwrap_or(0);
    let mut expected_local = 0;
    for s in &spans {
        let gap_ok = s.local_at == expected_local;
        if !gap_ok {
            return Err(format!(
                "unexpected bytes or overlap before the member at offset {}",
                s.local_at
            ));
        }
        expected_local = s.data_end;
        if s.descriptor {
            let next = spans
                .iter()
                .map(|n| n.local_at)
                .filter(|a| *a > s.local_at)
                .min()
                .unwrap_or(central_start);
            if !(12..=24).contains(&(next - s.data_end)) {
                return Err(format!(
                    "bad data descriptor after the member at offset {}",
                    s.local_at
                ));
            }
            expected_local = next;
        }
    }
    if !spans.is_empty() && expected_local != central_start {
        return Err("unexpected bytes between the members and the central directory".into());
    }
    spans.sort_by_key(|s| s.central_at);
    let mut expected_central = central_start;
    for s in &spans {
        if s.central_at != expected_central {
            return Err(format!(
                "the central directory has a gap or overlap at offset {}",
                s.central_at
            ));
        }
        expected_central = s.central_end;
    }
    check_end_record(
        &mut raw,
        file_len,
        spans.len(),
        central_start,
        expected_central,
    )
}

/// Version 4.5 of the zip format: what a reader needs for zip64 extra fields and end records.
const ZIP64_VERSION: u16 = 45;

/// Whether a member's local header (30 bytes and its name) says what its central directory
/// entry (46 bytes and its name; `extra` is the entry's extra field) says: version needed,
/// flags, method, time, CRC and sizes (the last two live in the data descriptor when flag 3 is
/// set), and the name.
///
/// One difference is legitimate: a writer that only learns an entry needs zip64 when it writes
/// the central directory (the member starts past 4 GiB, so only the central entry carries a
/// zip64 offset) raises the central entry's version needed to 4.5 and leaves the local header as
/// it was. Python's `zipfile`, and so the original's builder, does exactly that.
fn headers_agree(local: &[u8], central: &[u8], extra: &[u8], name_len: usize) -> bool {
    let descriptor = u16_at(local, 6) & 0x08 != 0;
    let compared = if descriptor { 6..14 } else { 6..26 };
    let (local_version, central_version) = (u16_at(local, 4), u16_at(central, 6));
    let version_ok = local_version == central_version
        || (central_version == ZIP64_VERSION
            && local_version < ZIP64_VERSION
            && has_zip64_extra(extra));
    version_ok
        && local[..4] == [0x50, 0x4b, 0x03, 0x04]
        && local[compared.clone()] == central[compared.start + 2..compared.end + 2]
        && local[26..28] == central[28..30]
        && local[30..30 + name_len] == central[46..46 + name_len]
}

/// Whether an extra field holds a zip64 block (header id 1).
fn has_zip64_extra(mut extra: &[u8]) -> bool {
    while extra.len() >= 4 {
        let (id, len) = (u16_at(extra, 0), u16_at(extra, 2) as usize);
        if id == 0x0001 {
            return true;
        }
        extra = extra.get(4 + len..).unwrap_or_default();
    }
    false
}

/// The end-of-central-directory record must describe exactly the directory that was read.
/// When a zip64 locator precedes it, the zip64 end record it points at must, and the classic
/// record's fields must each hold either the true value or their saturated "see zip64" value.
fn check_end_record(
    raw: &mut File,
    file_len: u64,
    members: usize,
    central_start: u64,
    central_end: u64,
) -> Result<(), String> {
    let tail_len = file_len.min(22 + 0xFFFF) as usize;
    let tail = read_at(raw, file_len - tail_len as u64, tail_len)?;
    let found = (0..=tail_len.saturating_sub(22)).rev().find(|&i| {
        tail[i..i + 4] == [0x50, 0x4b, 0x05, 0x06]
            && i + 22 + u16_at(&tail, i + 20) as usize == tail_len
    });
    let Some(i) = found else {
        return Err("the end-of-central-directory record is damaged".into());
    };
    let eocd = &tail[i..i + 22];
    let eocd_at = file_len - (tail_len - i) as u64;
    let mismatch =
        || "the end-of-central-directory record does not match the directory".to_string();
    let (size, members) = (central_end - central_start, members as u64);
    let disks_ok = u16_at(eocd, 4) == 0 && u16_at(eocd, 6) == 0;
    let Some(zip64_at) = zip64_end_record_at(raw, eocd_at)? else {
        let consistent = disks_ok
            && u16_at(eocd, 8) as u64 == members
            && u16_at(eocd, 10) as u64 == members
            && u32_at(eocd, 12) as u64 == size
            && u32_at(eocd, 16) as u64 == central_start
            && central_end == eocd_at;
        return if consistent { Ok(()) } else { Err(mismatch()) };
    };
    let saturated_or = |field: u64, max: u64, value: u64| field == value || field == max;
    let record = read_at(raw, zip64_at, 56)?;
    let consistent = disks_ok
        && saturated_or(u16_at(eocd, 8) as u64, 0xFFFF, members)
        && saturated_or(u16_at(eocd, 10) as u64, 0xFFFF, members)
        && saturated_or(u32_at(eocd, 12) as u64, 0xFFFF_FFFF, size)
        && saturated_or(u32_at(eocd, 16) as u64, 0xFFFF_FFFF, central_start)
        && record[..4] == [0x50, 0x4b, 0x06, 0x06]
        && u64_at(&record, 4) == 44
        && u32_at(&record, 16) == 0
        && u32_at(&record, 20) == 0
        && u64_at(&record, 24) == members
        && u64_at(&record, 32) == members
        && u64_at(&record, 40) == size
        && u64_at(&record, 48) == central_start
        && central_end == zip64_at
        && zip64_at + 56 + 20 == eocd_at;
    if consistent {
        Ok(())
    } else {
        Err(mismatch())
    }
}

/// Where the zip64 end record is, when a zip64 end-record locator sits right before the classic
/// end record at `eocd_at`.
fn zip64_end_record_at(raw: &mut File, eocd_at: u64) -> Result<Option<u64>, String> {
    let Some(locator_at) = eocd_at.checked_sub(20) else {
        return Ok(None);
    };
    let locator = read_at(raw, locator_at, 20)?;
    if locator[..4] != [0x50, 0x4b, 0x06, 0x07] {
        return Ok(None);
    }
    if u32_at(&locator, 4) != 0 || u32_at(&locator, 16) != 1 {
        return Err("the zip64 end-record locator names another disk".into());
    }
    Ok(Some(u64_at(&locator, 8)))
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(bytes)
}

fn read_at(file: &mut File, at: u64, len: usize) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; len];
    file.seek(SeekFrom::Start(at))
        .and_then(|_| file.read_exact(&mut buf))
        .map_err(|e| format!("header at offset {at} is unreadable: {e}"))?;
    Ok(buf)
}

fn read_member(archive: &mut ZipArchive<File>, name: &str) -> Result<Vec<u8>, String> {
    let member = archive
        .by_name(name)
        .map_err(|_| format!("member {name} is missing"))?;
    let mut out = Vec::new();
    member
        .take(MANIFEST_LIMIT)
        .read_to_end(&mut out)
        .map_err(|e| format!("member {name} is unreadable: {e}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::writer::BundleWriter;
    use super::*;

    fn build(dir: &Path, objects: &[(&str, &str, Vec<u8>)]) -> (PathBuf, String) {
        let key = BundleKey::generate();
        let text = key.to_text();
        let path = dir.join("b.zip");
        let mut w = BundleWriter::create(&path, key).unwrap();
        for c in super::super::BUNDLE_COLLECTIONS {
            w.add_collection(c);
        }
        for (c, k, data) in objects {
            let mut o = w.begin_object(c, k, data.len() as u64).unwrap();
            for part in data.chunks(7) {
                o.write(part).unwrap();
            }
            o.finish().unwrap();
        }
        assert_eq!(w.finish().unwrap(), objects.len());
        (path, text)
    }

    fn sample() -> Vec<(&'static str, &'static str, Vec<u8>)> {
        vec![
            (
                "algorithm-store",
                "id~a~1",
                br#"{"algorithm_id": "id"}"#.to_vec(),
            ),
            (
                "asset-store",
                "x",
                (0..3000u32).map(|i| (i % 251) as u8).collect(),
            ),
            ("asset-store", "empty", Vec::new()),
        ]
    }

    #[test]
    fn round_trip() {
        let d = tempfile::tempdir().unwrap();
        let (path, key) = build(d.path(), &sample());
        let r = BundleReader::open(&path, &key).unwrap();
        assert_eq!(r.collections().len(), 4);
        assert_eq!(r.keys("asset-store"), vec!["empty", "x"]);
        for (c, k, data) in sample() {
            assert_eq!(r.read_bytes(c, k).unwrap(), data);
        }
        assert_eq!(
            r.read_bytes("asset-store", "nope").unwrap_err().code(),
            "bundle_object_not_found"
        );
        assert!(!d.path().join("b.zip.partial").exists());
    }

    /// Rewrites a small zip the way Python's `zipfile` (the original's builder) writes one past
    /// the zip64 limits: every central entry from the second on gets a zip64 extra field with its
    /// offset and version needed 4.5 while its local header keeps 2.0, and a zip64 end record and
    /// locator precede the classic end record, whose fields are saturated or not.
    fn python_style_zip64(zip: &[u8], saturate: bool) -> Vec<u8> {
        let eocd_at = zip.len() - 22;
        let count = u16_at(zip, eocd_at + 10) as usize;
        let central_start = u32_at(zip, eocd_at + 16) as usize;
        let mut out = zip[..central_start].to_vec();
        let mut at = central_start;
        for i in 0..count {
            let len = 46
                + u16_at(zip, at + 28) as usize
                + u16_at(zip, at + 30) as usize
                + u16_at(zip, at + 32) as usize;
            let mut entry = zip[at..at + len].to_vec();
            if i > 0 {
                let offset = u32_at(&entry, 42) as u64;
                entry[4] = ZIP64_VERSION as u8;
                entry[6..8].copy_from_slice(&ZIP64_VERSION.to_le_bytes());
                entry[42..46].copy_from_slice(&u32::MAX.to_le_bytes());
                let extra_len = u16_at(&entry, 30) + 12;
                entry[30..32].copy_from_slice(&extra_len.to_le_bytes());
                let name_end = 46 + u16_at(&entry, 28) as usize;
                let mut block = vec![1, 0, 8, 0];
                block.extend_from_slice(&offset.to_le_bytes());
                entry.splice(name_end..name_end, block);
            }
            out.extend_from_slice(&entry);
            at += len;
        }
        let (size, zip64_at) = ((out.len() - central_start) as u64, out.len() as u64);
        out.extend_from_slice(&[0x50, 0x4b, 0x06, 0x06]);
        out.extend_from_slice(&44u64.to_le_bytes());
        out.extend_from_slice(&[ZIP64_VERSION as u8, 3, ZIP64_VERSION as u8, 0]);
        out.extend_from_slice(&[0; 8]);
        for v in [count as u64, count as u64, size, central_start as u64] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&[0x50, 0x4b, 0x06, 0x07, 0, 0, 0, 0]);
        out.extend_from_slice(&zip64_at.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&[0x50, 0x4b, 0x05, 0x06, 0, 0, 0, 0]);
        let (n, size, start) = if saturate {
            (u16::MAX, u32::MAX, u32::MAX)
        } else {
            (count as u16, size as u32, central_start as u32)
        };
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&start.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out
    }

    #[test]
    fn zip64_layout_of_python_zipfile_is_accepted() {
        let d = tempfile::tempdir().unwrap();
        let (path, key) = build(d.path(), &sample());
        let zip = std::fs::read(&path).unwrap();
        let python = d.path().join("python.zip");
        for saturate in [false, true] {
            std::fs::write(&python, python_style_zip64(&zip, saturate)).unwrap();
            let r = BundleReader::open(&python, &key)
                .unwrap_or_else(|e| panic!("saturated {saturate}: {e}"));
            for (c, k, data) in sample() {
                assert_eq!(r.read_bytes(c, k).unwrap(), data);
            }
        }

        // Only a central entry with a zip64 block may need a later version than its local
        // header, and the zip64 end record must describe the directory.
        let mut lowered = python_style_zip64(&zip, false);
        lowered[4] = 10;
        std::fs::write(&python, &lowered).unwrap();
        let e = BundleReader::open(&python, &key).unwrap_err();
        assert!(e.to_string().contains("local header disagrees"), "{e}");
        let mut miscounted = python_style_zip64(&zip, true);
        let count_at = miscounted.len() - 22 - 20 - 56 + 24;
        miscounted[count_at] ^= 1;
        std::fs::write(&python, &miscounted).unwrap();
        let e = BundleReader::open(&python, &key).unwrap_err();
        assert_eq!(e.code(), "invalid_algorithm_bundle", "{e}");
    }

    #[test]
    fn wrong_key_is_a_signature_error() {
        let d = tempfile::tempdir().unwrap();
        let (path, _) = build(d.path(), &sample());
        let e = BundleReader::open(&path, &BundleKey::generate().to_text()).unwrap_err();
        assert_eq!(e.code(), "invalid_bundle_signature");
        let e = BundleReader::open(&path, "short").unwrap_err();
        assert_eq!(e.code(), "invalid_bundle_key");
        let e = BundleReader::open(
            &d.path().join("missing.zip"),
            &BundleKey::generate().to_text(),
        )
        .unwrap_err();
        assert_eq!(e.code(), "invalid_algorithm_bundle");
    }

    /// Flips every byte of a small bundle in turn: each flip must make opening it or reading one
    /// of its objects fail, except in the few header fields no reader interprets.
    #[test]
    fn every_flipped_byte_is_detected() {
        let d = tempfile::tempdir().unwrap();
        let (path, key) = build(d.path(), &sample());
        let original = std::fs::read(&path).unwrap();
        let ignored = unread_ranges(&original);
        let data_ranges: Vec<std::ops::Range<usize>> = {
            let mut z = ZipArchive::new(File::open(&path).unwrap()).unwrap();
            (0..z.len())
                .map(|i| {
                    let m = z.by_index_raw(i).unwrap();
                    m.data_start() as usize..(m.data_start() + m.compressed_size()) as usize
                })
                .collect()
        };
        let flipped = d.path().join("f.zip");
        let mut undetected = Vec::new();
        for at in 0..original.len() {
            let mut bytes = original.clone();
            bytes[at] ^= 0x01;
            std::fs::write(&flipped, &bytes).unwrap();
            let detected = match BundleReader::open(&flipped, &key) {
                Err(_) => true,
                Ok(r) => sample()
                    .iter()
                    .any(|(c, k, data)| r.read_bytes(c, k).map_or(true, |got| &got != data)),
            };
            let in_data = data_ranges.iter().any(|r| r.contains(&at));
            let harmless = ignored.iter().any(|r| r.contains(&at))
                || (in_data && members_unchanged(&path, &flipped));
            if !detected && !harmless {
                undetected.push(at);
            }
        }
        let mut archive = ZipArchive::new(File::open(&path).unwrap()).unwrap();
        let layout: Vec<String> = (0..archive.len())
            .map(|i| {
                let m = archive.by_index_raw(i).unwrap();
                format!(
                    "{} local@{} data@{}+{} central@{}",
                    m.name(),
                    m.header_start(),
                    m.data_start(),
                    m.compressed_size(),
                    m.central_header_start()
                )
            })
            .collect();
        assert!(
            undetected.is_empty(),
            "flips not detected at offsets {undetected:?} of {}; layout {layout:?}",
            original.len()
        );
    }

    /// A flip inside DEFLATE data can leave the decompressed bytes as they were (an alternative
    /// encoding of the same content); the bundle's content is then untouched.
    fn members_unchanged(a: &Path, b: &Path) -> bool {
        let contents = |p: &Path| -> Option<Vec<(String, Vec<u8>)>> {
            let mut z = ZipArchive::new(File::open(p).ok()?).ok()?;
            (0..z.len())
                .map(|i| {
                    let mut m = z.by_index(i).ok()?;
                    let mut out = Vec::new();
                    m.read_to_end(&mut out).ok()?;
                    Some((m.name().to_string(), out))
                })
                .collect()
        };
        contents(a).is_some() && contents(a) == contents(b)
    }

    /// Byte ranges of central-directory fields that carry no content and that no reader checks:
    /// "version made by", internal and external attributes, and the end record's comment-free
    /// disk fields.
    fn unread_ranges(zip: &[u8]) -> Vec<std::ops::Range<usize>> {
        let mut out = Vec::new();
        let mut at = 0;
        while at + 4 <= zip.len() {
            if zip[at..at + 4] == [0x50, 0x4b, 0x01, 0x02] {
                out.push(at + 4..at + 6);
                out.push(at + 34..at + 42);
                at += 46;
            } else {
                at += 1;
            }
        }
        out
    }
}
