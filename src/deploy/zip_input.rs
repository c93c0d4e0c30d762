//! Zip input for HTTP deploys (`algorithms.md` §1.10): safe extraction (no zip-slip, no symlinks,
//! no zip bombs) and choice of the algorithm root.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// What one deploy zip may expand to. The archive is extracted into the server's temporary
/// folder while the one deploy permit is held, so an unbounded archive can fill the disk and
/// block every other deploy; a folder deploy has no such limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZipLimits {
    /// Members in the central directory, directories included.
    pub max_entries: usize,
    /// Bytes written for all members together.
    pub max_total_bytes: u64,
    /// Once more than `ratio_floor_bytes` are written, the total may not exceed this many times
    /// the size of the zip file itself.
    pub max_ratio: u64,
    pub ratio_floor_bytes: u64,
}

/// The limits every deploy zip is held to.
///
/// * 100,000 entries: more than an algorithm folder holds even with a packed `.venv` (tens of
///   thousands of files), far fewer than it takes to exhaust inodes.
/// * 8 GiB in total: room for several GiB of model weights, well below a server's scratch space.
/// * 100:1 past 64 MiB: weights and photographs barely compress and code compresses about 5:1,
///   so a bigger expansion is almost surely a bomb (the 3 MB archive that expanded to 3 GiB was
///   1000:1). The price: a big, nearly empty asset (a sparse mask) needs a folder deploy.
pub const ZIP_LIMITS: ZipLimits = ZipLimits {
    max_entries: 100_000,
    max_total_bytes: 8 << 30,
    max_ratio: 100,
    ratio_floor_bytes: 64 << 20,
};

/// Why a zip was refused.
#[derive(Debug)]
pub enum ZipInputError {
    NotAZip(String),
    Unsafe(String),
    Io(String),
    /// Beyond [`ZipLimits`]; the text names the limit.
    TooLarge(String),
}

/// Extracts `zip_path` into `dest` within [`ZIP_LIMITS`] and returns the algorithm root inside
/// it. On an error `dest` may hold a partial extraction; the caller removes it.
pub fn extract(zip_path: &Path, dest: &Path) -> Result<PathBuf, ZipInputError> {
    extract_within(zip_path, dest, &ZIP_LIMITS)
}

/// [`extract`] with explicit limits. The byte budget is enforced on the bytes actually written,
/// since the sizes in the headers are the archive's own claims.
pub fn extract_within(
    zip_path: &Path,
    dest: &Path,
    limits: &ZipLimits,
) -> Result<PathBuf, ZipInputError> {
    let file = std::fs::File::open(zip_path).map_err(|e| ZipInputError::Io(e.to_string()))?;
    let zip_len = file
        .metadata()
        .map_err(|e| ZipInputError::Io(e.to_string()))?
        .len();
    let mut archive =
        zip::ZipArchive::new(file).map_err(|e| ZipInputError::NotAZip(e.to_string()))?;
    if archive.len() > limits.max_entries {
        return Err(ZipInputError::TooLarge(format!(
            "it has {} entries, more than the limit of {}",
            archive.len(),
            limits.max_entries
        )));
    }
    let budget = Budget::new(limits, zip_len);
    if let Some(declared) = archive.decompressed_size() {
        if declared > u128::from(budget.bytes) {
            return Err(budget.exceeded());
        }
    }

    let mut written = 0u64;
    for i in 0..archive.len() {
        let mut entry = archive
            .by_index(i)
            .map_err(|e| ZipInputError::NotAZip(e.to_string()))?;
        let raw = entry.name().to_string();
        let rel = safe_relative(&raw)
            .ok_or_else(|| ZipInputError::Unsafe(format!("unsafe zip entry {raw:?}")))?;
        if entry.is_symlink() {
            return Err(ZipInputError::Unsafe(format!(
                "symbolic link entry {raw:?} is not allowed"
            )));
        }
        let target = dest.join(&rel);
        if entry.is_dir() {
            std::fs::create_dir_all(&target).map_err(|e| ZipInputError::Io(e.to_string()))?;
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| ZipInputError::Io(e.to_string()))?;
        }
        let mut out =
            std::fs::File::create(&target).map_err(|e| ZipInputError::Io(e.to_string()))?;
        // One byte past the budget is enough to know it is exceeded.
        let left = budget.bytes - written;
        let n = std::io::copy(&mut (&mut entry).take(left.saturating_add(1)), &mut out)
            .map_err(|e| ZipInputError::NotAZip(e.to_string()))?;
        if n > left {
            return Err(budget.exceeded());
        }
        written += n;
    }
    Ok(pick_root(dest))
}

/// The bytes one archive may expand to, and which limit sets that number.
struct Budget {
    bytes: u64,
    by_ratio: bool,
    limits: ZipLimits,
    zip_len: u64,
}

impl Budget {
    fn new(limits: &ZipLimits, zip_len: u64) -> Budget {
        let ratio_cap = limits
            .max_ratio
            .saturating_mul(zip_len)
            .max(limits.ratio_floor_bytes);
        Budget {
            bytes: ratio_cap.min(limits.max_total_bytes),
            by_ratio: ratio_cap < limits.max_total_bytes,
            limits: *limits,
            zip_len,
        }
    }

    fn exceeded(&self) -> ZipInputError {
        ZipInputError::TooLarge(if self.by_ratio {
            format!(
                "it expands to more than {}: a deploy zip may expand past {} only up to {} times \
                 its own size ({})",
                human(self.bytes),
                human(self.limits.ratio_floor_bytes),
                self.limits.max_ratio,
                human(self.zip_len)
            )
        } else {
            format!(
                "it expands to more than {}, the limit for a deploy zip",
                human(self.bytes)
            )
        })
    }
}

/// `8 GiB`, `64 MiB`, or a plain byte count when no unit divides it.
fn human(n: u64) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{} {unit}", n >> shift);
        }
    }
    format!("{n} bytes")
}

/// A member name as a relative path with no `..`, root or drive; `None` when unsafe.
fn safe_relative(name: &str) -> Option<PathBuf> {
    if name.contains('\0') || name.starts_with('/') || name.starts_with('\\') || name.contains(':')
    {
        return None;
    }
    let normalized = name.replace('\\', "/");
    let mut out = PathBuf::new();
    for comp in Path::new(&normalized).components() {
        match comp {
            Component::Normal(c) => out.push(c),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

/// The single top-level directory when it holds `pyproject.toml` (ignoring `__MACOSX`), else `dest`.
fn pick_root(dest: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(dest)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.path().is_dir() && e.file_name() != "__MACOSX")
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    match dirs.as_slice() {
        [only] if only.join("pyproject.toml").is_file() => only.clone(),
        _ => dest.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn make_zip(path: &Path, entries: &[(&str, &str)]) {
        let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
        for (name, body) in entries {
            z.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            z.write_all(body.as_bytes()).unwrap();
        }
        z.finish().unwrap();
    }

    #[test]
    fn zip_slip_is_rejected() {
        let d = tempfile::tempdir().unwrap();
        for bad in ["../evil.py", "/abs.py", "a/../../x"] {
            let zp = d.path().join("a.zip");
            make_zip(&zp, &[("algo/pyproject.toml", ""), (bad, "x")]);
            let dest = tempfile::tempdir().unwrap();
            assert!(
                matches!(extract(&zp, dest.path()), Err(ZipInputError::Unsafe(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn single_folder_with_pyproject_is_root_and_macosx_is_ignored() {
        let d = tempfile::tempdir().unwrap();
        let zp = d.path().join("a.zip");
        make_zip(
            &zp,
            &[
                ("algo/pyproject.toml", ""),
                ("algo/Runner.py", ""),
                ("__MACOSX/algo/._x", ""),
            ],
        );
        let dest = tempfile::tempdir().unwrap();
        assert_eq!(extract(&zp, dest.path()).unwrap(), dest.path().join("algo"));
    }

    fn limits(max_entries: usize, max_total_bytes: u64) -> ZipLimits {
        ZipLimits {
            max_entries,
            max_total_bytes,
            max_ratio: u64::MAX,
            ratio_floor_bytes: 0,
        }
    }

    fn is_empty(dir: &Path) -> bool {
        std::fs::read_dir(dir).unwrap().next().is_none()
    }

    fn too_large(r: Result<PathBuf, ZipInputError>) -> String {
        match r {
            Err(ZipInputError::TooLarge(m)) => m,
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn too_many_entries_are_refused_before_extracting() {
        let d = tempfile::tempdir().unwrap();
        let zp = d.path().join("a.zip");
        make_zip(&zp, &[("a/pyproject.toml", ""), ("a/x", ""), ("a/y", "")]);
        let dest = tempfile::tempdir().unwrap();
        let m = too_large(extract_within(&zp, dest.path(), &limits(2, 1 << 20)));
        assert!(m.contains("3 entries, more than the limit of 2"), "{m}");
        assert!(is_empty(dest.path()));
        assert!(extract_within(&zp, dest.path(), &limits(3, 1 << 20)).is_ok());
    }

    #[test]
    fn declared_sizes_over_the_limit_are_refused_before_extracting() {
        let d = tempfile::tempdir().unwrap();
        let zp = d.path().join("a.zip");
        let big = "x".repeat(600);
        make_zip(
            &zp,
            &[("a/pyproject.toml", ""), ("a/b", &big), ("a/c", &big)],
        );
        let dest = tempfile::tempdir().unwrap();
        let m = too_large(extract_within(&zp, dest.path(), &limits(10, 1 << 10)));
        assert!(
            m.contains("more than 1 KiB, the limit for a deploy zip"),
            "{m}"
        );
        assert!(is_empty(dest.path()));
        assert!(extract_within(&zp, dest.path(), &limits(10, 1200)).is_ok());
    }

    /// A stored entry whose headers claim 10 bytes while it holds 1,000.
    fn lying_zip(path: &Path) {
        let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let stored = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        z.start_file("a/big", stored).unwrap();
        z.write_all(&[b'a'; 1000]).unwrap();
        let mut bytes = z.finish().unwrap().into_inner();
        for (signature, offset) in [(b"PK\x03\x04", 22), (b"PK\x01\x02", 24)] {
            let at = bytes.windows(4).position(|w| w == signature).unwrap() + offset;
            assert_eq!(bytes[at..at + 4], 1000u32.to_le_bytes());
            bytes[at..at + 4].copy_from_slice(&10u32.to_le_bytes());
        }
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn the_budget_counts_bytes_written_not_declared_sizes() {
        let d = tempfile::tempdir().unwrap();
        let zp = d.path().join("a.zip");
        lying_zip(&zp);
        let dest = tempfile::tempdir().unwrap();
        let m = too_large(extract_within(&zp, dest.path(), &limits(10, 100)));
        assert!(m.contains("more than 100 bytes"), "{m}");
        let written = std::fs::metadata(dest.path().join("a/big")).unwrap().len();
        assert_eq!(written, 101, "extraction stops one byte past the budget");
    }

    #[test]
    fn a_high_compression_ratio_past_the_floor_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let zp = d.path().join("a.zip");
        let zeros = "0".repeat(200_000);
        make_zip(&zp, &[("a/pyproject.toml", ""), ("a/zeros", &zeros)]);
        let zip_len = std::fs::metadata(&zp).unwrap().len();
        let bomb = ZipLimits {
            max_entries: 10,
            max_total_bytes: 1 << 30,
            max_ratio: 10,
            ratio_floor_bytes: 1000,
        };
        let dest = tempfile::tempdir().unwrap();
        let m = too_large(extract_within(&zp, dest.path(), &bomb));
        assert!(
            m.contains(&format!("up to 10 times its own size ({zip_len} bytes)")),
            "{m}"
        );
        // A high floor lets the same archive through.
        let lenient = ZipLimits {
            ratio_floor_bytes: 1 << 20,
            ..bomb
        };
        let dest = tempfile::tempdir().unwrap();
        assert!(extract_within(&zp, dest.path(), &lenient).is_ok());
    }

    #[test]
    fn the_default_limits_read_well() {
        assert_eq!(human(ZIP_LIMITS.max_total_bytes), "8 GiB");
        assert_eq!(human(ZIP_LIMITS.ratio_floor_bytes), "64 MiB");
        assert_eq!(human(1500), "1500 bytes");
    }

    #[test]
    fn garbage_is_not_a_zip() {
        let d = tempfile::tempdir().unwrap();
        let zp = d.path().join("a.zip");
        std::fs::write(&zp, "not a zip").unwrap();
        assert!(matches!(
            extract(&zp, d.path()),
            Err(ZipInputError::NotAZip(_))
        ));
    }
}
