//! Obtaining the MinIO server binary when `executable_path` does not exist (`platform.md` §3.2).
//!
//! The original fetches the pinned release `RELEASE.2025-09-07T16-13-09Z` from GitHub into memory
//! and trusts whatever arrives. Here the download streams to a staging file beside the target,
//! is hashed on the way, must match the SHA-256 pinned for this OS and architecture, is made
//! executable and only then renamed into place; a failed or interrupted download leaves nothing
//! that could pass for the binary next time.
//!
//! `COMPOX_MINIO_DOWNLOAD_BASE` replaces the release folder URL (for a mirror inside a network
//! without internet access); the file name and the checksum stay pinned.

use anyhow::Context as _;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The release the original downloads.
pub const MINIO_RELEASE: &str = "RELEASE.2025-09-07T16-13-09Z";
/// Where the release's files live unless `COMPOX_MINIO_DOWNLOAD_BASE` says otherwise.
pub const RELEASE_BASE: &str =
    "https://github.com/minio/minio/releases/download/RELEASE.2025-09-07T16-13-09Z";
/// The environment variable naming a mirror of [`RELEASE_BASE`].
pub const MIRROR_ENV: &str = "COMPOX_MINIO_DOWNLOAD_BASE";

/// SHA-256 of the release's server binaries, per (os, arch) as Rust names them.
const PINNED: [(&str, &str, &str); 4] = [
    (
        "linux",
        "x86_64",
        "7c5bd8512c6e966455b1d198209358b2d191c77a83ab377c4073281065fb855f",
    ),
    (
        "linux",
        "aarch64",
        "5c83cd2cf151717ba0243f73e1c7802ff36e272b67144bdd7f1f7d684fd6f03d",
    ),
    (
        "macos",
        "x86_64",
        "4759080aeef7385aaceaac1131c30aaeb99605921553967dc6d3ef4e16ac64f9",
    ),
    (
        "macos",
        "aarch64",
        "7c3b3039b76e55a1b80935848ed83998d5e8d317374f87851f46a019ff5c0aa4",
    ),
];

/// The file to fetch and the digest it must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    /// Release file name, e.g. `minio.linux-amd64.RELEASE.2025-09-07T16-13-09Z`.
    pub file: String,
    pub sha256: String,
}

/// MinIO's platform name for an (os, arch) pair: `x86_64` is `amd64`, `aarch64` is `arm64`, and
/// macOS is `darwin` (the spec's quirk: the original asks for amd64 everywhere on Linux).
pub fn platform_name(os: &str, arch: &str) -> String {
    let os = match os {
        "macos" => "darwin",
        other => other,
    };
    let arch = match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    format!("{os}-{arch}")
}

/// The pinned file for this OS and architecture; `None` where no checksum is pinned.
pub fn pinned_for(os: &str, arch: &str) -> Option<Pinned> {
    PINNED
        .iter()
        .find(|(o, a, _)| *o == os && *a == arch)
        .map(|(_, _, sha)| Pinned {
            file: format!("minio.{}.{MINIO_RELEASE}", platform_name(os, arch)),
            sha256: sha.to_string(),
        })
}

/// The URL of `pinned` under `base` (the release folder or a mirror of it).
pub fn url_for(base: &str, pinned: &Pinned) -> String {
    format!("{}/{}", base.trim_end_matches('/'), pinned.file)
}

/// The binary is missing and could not be downloaded: `run` exits 1 for it (`platform.md` §3.1),
/// not 3 like other start-up failures.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(String);

/// Makes sure a MinIO binary is at `path`, downloading the pinned release when it is missing.
/// The error says what failed and where a binary could be put by hand.
pub async fn ensure(path: &Path) -> anyhow::Result<()> {
    if path.is_file() {
        tracing::info!(log_type = "MINIO", "MinIO binary available.");
        return Ok(());
    }
    let (os, arch) = (std::env::consts::OS, std::env::consts::ARCH);
    let manual = |why: String| {
        anyhow::Error::new(Unavailable(format!(
            "MinIO binary not found at {path} and {why}. Put the MinIO server binary \
             ({MINIO_RELEASE}, minio.{platform}) at {path} and make it executable, set \
             storage.backend_settings.executable_path to where it is, or set \
             storage.backend_settings.start_instance: false to use a MinIO you run yourself",
            path = path.display(),
            platform = platform_name(os, arch),
        )))
    };
    let Some(pinned) = pinned_for(os, arch) else {
        return Err(manual(format!(
            "no checksum is pinned for {} to download it safely",
            platform_name(os, arch)
        )));
    };
    let base = std::env::var(MIRROR_ENV).unwrap_or_else(|_| RELEASE_BASE.to_string());
    let url = url_for(&base, &pinned);
    tracing::info!(log_type = "MINIO", %url, "Downloading MinIO binary into {}...", path.display());
    download(&url, &pinned.sha256, path)
        .await
        .map_err(|e| manual(format!("downloading it from {url} failed: {e:#}")))?;
    tracing::info!(log_type = "MINIO", "MinIO binary downloaded and verified.");
    Ok(())
}

/// Streams `url` into `dest`, accepting it only when its SHA-256 is `sha256` (lowercase hex).
/// The bytes go to a staging file in `dest`'s folder, which is fsynced, made executable (0755)
/// and renamed over `dest`; on any failure the staging file is removed and `dest` is untouched.
pub async fn download(url: &str, sha256: &str, dest: &Path) -> anyhow::Result<()> {
    let folder = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&folder)
        .with_context(|| format!("cannot create {}", folder.display()))?;
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        // Between two chunks, not for the whole ~100 MB file.
        .read_timeout(Duration::from_secs(60))
        .build()?;
    let response = client.get(url).send().await?.error_for_status()?;
    let mut staging = tempfile::Builder::new()
        .prefix(".minio-download-")
        .tempfile_in(&folder)
        .with_context(|| format!("cannot create a staging file in {}", folder.display()))?;
    let mut hasher = Sha256::new();
    let mut received: u64 = 0;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("the download was interrupted")?;
        hasher.update(&chunk);
        received += chunk.len() as u64;
        staging
            .write_all(&chunk)
            .context("cannot write the staging file")?;
    }
    let got = hex::encode(hasher.finalize());
    if !got.eq_ignore_ascii_case(sha256) {
        anyhow::bail!(
            "SHA-256 mismatch: expected {sha256}, got {got} ({received} bytes); the file was \
             discarded"
        );
    }
    staging
        .as_file()
        .sync_all()
        .context("cannot flush the staging file")?;
    set_executable(staging.path())?;
    staging
        .persist(dest)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot move the download to {}", dest.display()))?;
    Ok(())
}

#[cfg(unix)]
fn set_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot make {} executable", path.display()))
}

#[cfg(not(unix))]
fn set_executable(_path: &Path) -> anyhow::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// Serves `body` with `status` to every connection, on a free loopback port.
    fn serve(status: &'static str, body: Vec<u8>) -> String {
        let len = body.len();
        serve_claiming(status, body, len)
    }

    /// Like [`serve`], announcing `claimed` bytes whatever `body` holds.
    fn serve_claiming(status: &'static str, body: Vec<u8>, claimed: usize) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request);
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {claimed}\r\nConnection: close\r\n\r\n"
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
            }
        });
        format!("http://{addr}")
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn pinned_names_follow_minio_platform_names() {
        let linux = pinned_for("linux", "x86_64").unwrap();
        assert_eq!(linux.file, "minio.linux-amd64.RELEASE.2025-09-07T16-13-09Z");
        assert_eq!(linux.sha256.len(), 64);
        assert_eq!(
            pinned_for("macos", "aarch64").unwrap().file,
            "minio.darwin-arm64.RELEASE.2025-09-07T16-13-09Z"
        );
        assert_eq!(pinned_for("linux", "riscv64"), None);
        assert_eq!(
            url_for(RELEASE_BASE, &linux),
            "https://github.com/minio/minio/releases/download/RELEASE.2025-09-07T16-13-09Z/\
             minio.linux-amd64.RELEASE.2025-09-07T16-13-09Z"
        );
        let shas: std::collections::HashSet<_> = PINNED.iter().map(|p| p.2).collect();
        assert_eq!(shas.len(), PINNED.len(), "one digest per platform");
    }

    #[tokio::test]
    async fn a_matching_download_lands_executable_and_complete() {
        let body = b"#!/bin/sh\necho minio\n".to_vec();
        let sha = hex::encode(Sha256::digest(&body));
        let base = serve("200 OK", body.clone());
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("bin/minio");
        download(&format!("{base}/minio"), &sha, &dest)
            .await
            .unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), body);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o755);
        }
        assert_eq!(entries(dest.parent().unwrap()), ["minio"]);
    }

    #[tokio::test]
    async fn a_wrong_digest_leaves_nothing_behind() {
        let base = serve("200 OK", b"not minio".to_vec());
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("minio");
        let err = download(&format!("{base}/minio"), &"0".repeat(64), &dest)
            .await
            .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("SHA-256 mismatch"), "{text}");
        assert!(
            text.contains(&hex::encode(Sha256::digest(b"not minio"))),
            "{text}"
        );
        assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
    }

    #[tokio::test]
    async fn an_interrupted_download_leaves_nothing_behind() {
        let body = vec![7u8; 100_000];
        let sha = hex::encode(Sha256::digest(&body));
        let base = serve_claiming("200 OK", body[..40_000].to_vec(), body.len());
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("minio");
        let err = download(&format!("{base}/minio"), &sha, &dest)
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("interrupted"), "{err:#}");
        assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
    }

    #[tokio::test]
    async fn an_http_error_or_a_refused_connection_is_reported() {
        let base = serve("404 Not Found", b"no such release".to_vec());
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("minio");
        let err = download(&format!("{base}/minio"), &"0".repeat(64), &dest)
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("404"), "{err:#}");

        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let err = download(
            &format!("http://127.0.0.1:{port}/minio"),
            &"0".repeat(64),
            &dest,
        )
        .await
        .unwrap_err();
        assert!(!format!("{err:#}").is_empty());
        assert!(entries(dir.path()).is_empty());
    }
}
