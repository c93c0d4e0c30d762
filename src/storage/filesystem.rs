//! The embedded default store: one directory per collection under `storage_path`.
//!
//! Layout: `<root>/<prefix><collection>/<encoded key>` holds the bytes, `…/.tags/<encoded key>`
//! the tag set, `<root>/.tmp/` staging files. Keys are percent-encoded into a single file name,
//! so a key can never address anything outside its collection. Every write goes to a staging
//! file, is fsynced and then renamed into place, so a crash never exposes half an object.

use super::{
    validate_key, Backend, ByteStream, ExpiryRules, ObjectInfo, PresignMethod, StorageError,
    DATA_STORE,
};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;

const KEY_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
const READ_CHUNK: usize = 1024 * 1024;
/// File-name limit of common Linux filesystems.
const MAX_FILE_NAME: usize = 255;
/// Staging files older than this are leftovers of a killed process.
const STALE_STAGING: Duration = Duration::from_secs(3600);

pub struct FilesystemBackend {
    root: PathBuf,
    prefix: String,
    signer: UrlSigner,
}

impl FilesystemBackend {
    pub fn new(root: PathBuf, prefix: String, signer: UrlSigner) -> Self {
        FilesystemBackend {
            root,
            prefix,
            signer,
        }
    }

    fn bucket(&self, collection: &str) -> PathBuf {
        self.root.join(format!("{}{}", self.prefix, collection))
    }

    fn object_path(&self, collection: &str, key: &str) -> Result<PathBuf, StorageError> {
        Ok(self.bucket(collection).join(file_name(key)?))
    }

    fn tags_path(&self, collection: &str, key: &str) -> Result<PathBuf, StorageError> {
        validate_key(key)?;
        Ok(self.bucket(collection).join(".tags").join(encode_key(key)))
    }

    fn staging_path(&self) -> PathBuf {
        self.root
            .join(".tmp")
            .join(uuid::Uuid::new_v4().to_string())
    }

    /// Moves a fully written staging file into place and, for `data-store`, tags it.
    async fn commit(&self, collection: &str, key: &str, staged: &Path) -> Result<(), StorageError> {
        let target = self.object_path(collection, key)?;
        let op = format!("put_objects to {collection}");
        let missing_bucket = !tokio::fs::try_exists(self.bucket(collection))
            .await
            .unwrap_or(false);
        if missing_bucket {
            return Err(StorageError::WriteFailed {
                operation: op,
                message: "NoSuchBucket".into(),
            });
        }
        tokio::fs::rename(staged, &target)
            .await
            .map_err(|e| StorageError::from_io(&op, e))?;
        if collection == DATA_STORE {
            let tags = self.get_tags(collection, key).await?;
            if !tags.contains_key("training_ref") {
                let mut tags = tags;
                tags.insert("training_ref".into(), "0".into());
                self.put_tags(collection, key, tags).await?;
            }
        }
        Ok(())
    }
}

/// Deletes staging files a killed process left behind (never recent ones: another process may
/// be writing them).
async fn remove_stale_staging(dir: &Path) {
    let Ok(mut rd) = tokio::fs::read_dir(dir).await else {
        return;
    };
    while let Ok(Some(entry)) = rd.next_entry().await {
        let old = entry
            .metadata()
            .await
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age > STALE_STAGING);
        if old {
            let _ = tokio::fs::remove_file(entry.path()).await;
        }
    }
}

/// The file an object of `key` is stored in, or why it cannot be: [`validate_key`] and the
/// file-name limit once encoded.
pub fn file_name(key: &str) -> Result<String, StorageError> {
    validate_key(key)?;
    let name = encode_key(key);
    if name.len() > MAX_FILE_NAME {
        return Err(StorageError::InvalidKey {
            key: key.to_string(),
            reason: "too long once encoded for a file name",
        });
    }
    Ok(name)
}

pub fn encode_key(key: &str) -> String {
    let encoded = utf8_percent_encode(key, KEY_SET).to_string();
    match encoded.strip_prefix('.') {
        Some(rest) => format!("%2E{rest}"),
        None => encoded,
    }
}

pub fn decode_key(name: &str) -> Option<String> {
    percent_decode_str(name)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

async fn write_staged(path: &Path, mut body: ByteStream, op: &str) -> Result<u64, StorageError> {
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| StorageError::from_io(op, e))?;
    }
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| StorageError::from_io(op, e))?;
    let mut written = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                drop(file);
                let _ = tokio::fs::remove_file(path).await;
                return Err(super::body_error(e));
            }
        };
        if let Err(e) = file.write_all(&chunk).await {
            drop(file);
            let _ = tokio::fs::remove_file(path).await;
            return Err(StorageError::from_io(op, e));
        }
        written += chunk.len() as u64;
    }
    let synced = async {
        file.flush().await?;
        file.sync_all().await
    };
    if let Err(e) = synced.await {
        let _ = tokio::fs::remove_file(path).await;
        return Err(StorageError::from_io(op, e));
    }
    Ok(written)
}

/// Streams a file from one blocking thread in large chunks, a few chunks ahead of the consumer:
/// far fewer thread hops than one per read.
fn read_in_thread(mut file: std::fs::File) -> ByteStream {
    use std::io::Read;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || loop {
        let mut buf = bytes::BytesMut::zeroed(READ_CHUNK);
        let item = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                buf.truncate(n);
                Ok(buf.freeze())
            }
            Err(e) => Err(e),
        };
        let failed = item.is_err();
        if tx.blocking_send(item).is_err() || failed {
            break;
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
    .boxed()
}

fn not_found(collection: &str, key: &str) -> StorageError {
    StorageError::NotFound {
        collection: collection.to_string(),
        key: key.to_string(),
    }
}

fn read_error(collection: &str, key: &str, e: std::io::Error) -> StorageError {
    if e.kind() == std::io::ErrorKind::NotFound {
        not_found(collection, key)
    } else {
        StorageError::from_io(format!("get_objects from {collection}"), e)
    }
}

#[async_trait]
impl Backend for FilesystemBackend {
    async fn ensure_collections(&self, names: &[&str]) -> Result<Vec<String>, StorageError> {
        let op = "create_collections";
        tokio::fs::create_dir_all(self.root.join(".tmp"))
            .await
            .map_err(|e| StorageError::from_io(op, e))?;
        remove_stale_staging(&self.root.join(".tmp")).await;
        let mut created = Vec::new();
        for name in names {
            let dir = self.bucket(name);
            if !tokio::fs::try_exists(&dir).await.unwrap_or(false) {
                tokio::fs::create_dir_all(dir.join(".tags"))
                    .await
                    .map_err(|e| StorageError::from_io(op, e))?;
                created.push(name.to_string());
            }
        }
        Ok(created)
    }

    async fn put_stream(
        &self,
        collection: &str,
        key: &str,
        body: ByteStream,
    ) -> Result<u64, StorageError> {
        self.object_path(collection, key)?;
        let op = format!("put_objects to {collection}");
        let staged = self.staging_path();
        let written = write_staged(&staged, body, &op).await?;
        if let Err(e) = self.commit(collection, key, &staged).await {
            let _ = tokio::fs::remove_file(&staged).await;
            return Err(e);
        }
        Ok(written)
    }

    async fn put_bytes(
        &self,
        collection: &str,
        key: &str,
        body: Bytes,
    ) -> Result<(), StorageError> {
        let stream = futures_util::stream::once(async move { Ok(body) }).boxed();
        self.put_stream(collection, key, stream).await.map(|_| ())
    }

    async fn get_bytes(&self, collection: &str, key: &str) -> Result<Bytes, StorageError> {
        let path = self.object_path(collection, key)?;
        tokio::fs::read(&path)
            .await
            .map(Bytes::from)
            .map_err(|e| read_error(collection, key, e))
    }

    async fn get_stream(
        &self,
        collection: &str,
        key: &str,
    ) -> Result<(u64, ByteStream), StorageError> {
        let path = self.object_path(collection, key)?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| read_error(collection, key, e))?;
        let size = file
            .metadata()
            .await
            .map_err(|e| read_error(collection, key, e))?
            .len();
        Ok((size, read_in_thread(file.into_std().await)))
    }

    async fn exists(&self, collection: &str, key: &str) -> Result<bool, StorageError> {
        let path = self.object_path(collection, key)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(m.is_file()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StorageError::from_io(
                format!("check_objects_exist in {collection}"),
                e,
            )),
        }
    }

    async fn size(&self, collection: &str, key: &str) -> Result<Option<u64>, StorageError> {
        let path = self.object_path(collection, key)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::from_io(
                format!("get_object_sizes in {collection}"),
                e,
            )),
        }
    }

    async fn list(&self, collection: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let dir = self.bucket(collection);
        let op = format!("list_objects in {collection}");
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StorageError::from_io(op, e)),
        };
        let mut out = Vec::new();
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| StorageError::from_io(&op, e))?
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let Some(key) = decode_key(&name) else {
                continue;
            };
            let meta = match entry.metadata().await {
                Ok(m) if m.is_file() => m,
                _ => continue,
            };
            let last_modified = meta.modified().ok().map(|t| {
                chrono::DateTime::<chrono::Utc>::from(t)
                    .format("%Y-%m-%dT%H:%M:%S+00:00")
                    .to_string()
            });
            let version = Some(format!(
                "{}-{}.{:09}",
                meta.ino(),
                meta.mtime(),
                meta.mtime_nsec()
            ));
            out.push(ObjectInfo {
                key,
                size: meta.len(),
                last_modified,
                version,
            });
        }
        out.sort_by(|a, b| a.key.as_bytes().cmp(b.key.as_bytes()));
        Ok(out)
    }

    async fn delete(&self, collection: &str, key: &str) -> Result<(), StorageError> {
        let path = self.object_path(collection, key)?;
        let op = format!("delete_objects in {collection}");
        for p in [path, self.tags_path(collection, key)?] {
            match tokio::fs::remove_file(&p).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::from_io(&op, e)),
            }
        }
        Ok(())
    }

    async fn get_tags(
        &self,
        collection: &str,
        key: &str,
    ) -> Result<BTreeMap<String, String>, StorageError> {
        let path = self.tags_path(collection, key)?;
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).unwrap_or_default()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(StorageError::from_io(
                format!("get_object_tags in {collection}"),
                e,
            )),
        }
    }

    async fn put_tags(
        &self,
        collection: &str,
        key: &str,
        tags: BTreeMap<String, String>,
    ) -> Result<(), StorageError> {
        let path = self.tags_path(collection, key)?;
        let op = format!("put_object_tags in {collection}");
        let body = serde_json::to_vec(&tags).unwrap_or_default();
        let staged = self.staging_path();
        let stream = futures_util::stream::once(async move { Ok(Bytes::from(body)) }).boxed();
        write_staged(&staged, stream, &op).await?;
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| StorageError::from_io(&op, e))?;
        }
        tokio::fs::rename(&staged, &path)
            .await
            .map_err(|e| StorageError::from_io(&op, e))
    }

    fn presign(
        &self,
        method: PresignMethod,
        collection: &str,
        key: &str,
        expires_s: u64,
    ) -> Result<String, StorageError> {
        // The same check as a write: no URL for a key this store could not hold.
        file_name(key)?;
        Ok(self.signer.url(method, collection, key, expires_s))
    }

    async fn sweep_expired(&self, rules: &ExpiryRules) -> Result<usize, StorageError> {
        let mut removed = 0;
        let now = SystemTime::now();
        for (collection, days) in &rules.days {
            if *days < 1 {
                continue;
            }
            let max_age = Duration::from_secs(*days as u64 * 86_400);
            for info in self.list(collection).await? {
                let path = self.object_path(collection, &info.key)?;
                let Ok(meta) = tokio::fs::metadata(&path).await else {
                    continue;
                };
                let old = meta
                    .modified()
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .is_some_and(|age| age > max_age);
                if !old {
                    continue;
                }
                if collection == DATA_STORE {
                    // Only unreferenced data expires, like the S3 rule on tag training_ref=0.
                    let tags = self.get_tags(collection, &info.key).await?;
                    if tags.get("training_ref").map(String::as_str) != Some("0") {
                        continue;
                    }
                }
                self.delete(collection, &info.key).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Signs and checks the server's own presigned URLs (filesystem backend, `rest-api.md` V1/V2).
#[derive(Clone)]
pub struct UrlSigner {
    key: [u8; 32],
    base_url: String,
}

impl UrlSigner {
    /// `base_url` is how clients reach this server, e.g. `http://127.0.0.1:5481`.
    pub fn new(base_url: String) -> Self {
        UrlSigner {
            key: rand::random(),
            base_url: base_url.trim_end_matches('/').to_string(),
        }
    }

    fn signature(
        &self,
        method: PresignMethod,
        collection: &str,
        key: &str,
        expires: u64,
    ) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length works");
        mac.update(format!("{method:?}\n{collection}\n{key}\n{expires}").as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    pub fn url(
        &self,
        method: PresignMethod,
        collection: &str,
        key: &str,
        expires_s: u64,
    ) -> String {
        let expires = unix_now() + expires_s;
        let sig = self.signature(method, collection, key, expires);
        let m = match method {
            PresignMethod::Get => "GET",
            PresignMethod::Put => "PUT",
        };
        format!(
            "{}/api/v1/presigned/{}/{}?method={m}&expires={expires}&signature={sig}",
            self.base_url,
            utf8_percent_encode(collection, KEY_SET),
            utf8_percent_encode(key, KEY_SET)
        )
    }

    /// True when the signature matches and has not expired.
    pub fn verify(
        &self,
        method: PresignMethod,
        collection: &str,
        key: &str,
        expires: u64,
        sig: &str,
    ) -> bool {
        if expires < unix_now() {
            return false;
        }
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length works");
        mac.update(format!("{method:?}\n{collection}\n{key}\n{expires}").as_bytes());
        match hex::decode(sig) {
            Ok(raw) => mac.verify_slice(&raw).is_ok(),
            Err(_) => false,
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(dir: &Path) -> FilesystemBackend {
        FilesystemBackend::new(
            dir.to_path_buf(),
            "p-".into(),
            UrlSigner::new("http://x".into()),
        )
    }

    #[tokio::test]
    async fn aborted_stream_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let b = backend(dir.path());
        b.ensure_collections(&["data-store"]).await.unwrap();
        let body = futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"abc")),
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "gone",
            )),
        ])
        .boxed();
        assert!(b.put_stream("data-store", "k", body).await.is_err());
        assert!(!b.exists("data-store", "k").await.unwrap());
        assert_eq!(
            std::fs::read_dir(dir.path().join(".tmp")).unwrap().count(),
            0
        );
    }

    #[tokio::test]
    async fn keys_are_encoded_and_listed_in_byte_order_with_tags() {
        let dir = tempfile::tempdir().unwrap();
        let b = backend(dir.path());
        b.ensure_collections(&["data-store", "algorithm-store"])
            .await
            .unwrap();
        b.put_bytes("algorithm-store", "id~name~1", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        b.put_bytes("algorithm-store", ".hidden/x", Bytes::from_static(b"1"))
            .await
            .unwrap();
        let keys: Vec<String> = b
            .list("algorithm-store")
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.key)
            .collect();
        assert_eq!(keys, vec![".hidden/x", "id~name~1"]);
        b.put_bytes("data-store", "f", Bytes::from_static(b"x"))
            .await
            .unwrap();
        assert_eq!(
            b.get_tags("data-store", "f").await.unwrap()["training_ref"],
            "0"
        );
        assert!(dir
            .path()
            .join("p-algorithm-store")
            .join("id~name~1")
            .exists());
    }

    #[tokio::test]
    async fn escaping_names_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let b = backend(dir.path());
        for key in ["../x", "/etc/passwd", "a/../../b", "nul\0"] {
            assert!(
                matches!(
                    b.exists("data-store", key).await,
                    Err(StorageError::InvalidKey { .. })
                ),
                "{key}"
            );
        }
    }

    #[tokio::test]
    async fn sweep_removes_only_old_unreferenced_objects() {
        let dir = tempfile::tempdir().unwrap();
        let b = backend(dir.path());
        b.ensure_collections(&["data-store", "execution-store", "algorithm-store"])
            .await
            .unwrap();
        for (c, k) in [
            ("data-store", "old"),
            ("data-store", "kept-by-sample"),
            ("data-store", "new"),
            ("execution-store", "e"),
            ("algorithm-store", "a"),
        ] {
            b.put_bytes(c, k, Bytes::from_static(b"x")).await.unwrap();
        }
        let mut tags = BTreeMap::new();
        tags.insert("training_ref".to_string(), "1".to_string());
        b.put_tags("data-store", "kept-by-sample", tags)
            .await
            .unwrap();
        let old = SystemTime::now() - Duration::from_secs(40 * 86_400);
        for (c, k) in [
            ("data-store", "old"),
            ("data-store", "kept-by-sample"),
            ("execution-store", "e"),
            ("algorithm-store", "a"),
        ] {
            let f = std::fs::File::options()
                .write(true)
                .open(b.object_path(c, k).unwrap())
                .unwrap();
            f.set_modified(old).unwrap();
        }
        let rules = ExpiryRules::from_settings(&crate::config::StorageSettings::default());
        assert_eq!(b.sweep_expired(&rules).await.unwrap(), 2);
        assert!(!b.exists("data-store", "old").await.unwrap());
        assert!(!b.exists("execution-store", "e").await.unwrap());
        assert!(b.exists("data-store", "kept-by-sample").await.unwrap());
        assert!(b.exists("data-store", "new").await.unwrap());
        assert!(
            b.exists("algorithm-store", "a").await.unwrap(),
            "no expiry rule for algorithms"
        );
    }

    #[test]
    fn presigned_urls_verify_and_expire() {
        let s = UrlSigner::new("http://h:1".into());
        let url = s.url(PresignMethod::Get, "data-store", "a b", 60);
        assert!(url.starts_with("http://h:1/api/v1/presigned/data-store/a%20b?method=GET"));
        let exp: u64 = url
            .split("expires=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let sig = url.split("signature=").nth(1).unwrap();
        assert!(s.verify(PresignMethod::Get, "data-store", "a b", exp, sig));
        assert!(!s.verify(PresignMethod::Put, "data-store", "a b", exp, sig));
        assert!(!s.verify(PresignMethod::Get, "data-store", "a b", 1, sig));
    }
}
