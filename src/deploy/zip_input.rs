//! Zip input for HTTP deploys (`algorithms.md` §1.10): safe extraction (no zip-slip, no symlinks)
//! and choice of the algorithm root.

use std::path::{Component, Path, PathBuf};

/// Why a zip was refused.
#[derive(Debug)]
pub enum ZipInputError {
    NotAZip(String),
    Unsafe(String),
    Io(String),
}

/// Extracts `zip_path` into `dest` and returns the algorithm root inside it.
pub fn extract(zip_path: &Path, dest: &Path) -> Result<PathBuf, ZipInputError> {
    let file = std::fs::File::open(zip_path).map_err(|e| ZipInputError::Io(e.to_string()))?;
    let mut archive =
        zip::ZipArchive::new(file).map_err(|e| ZipInputError::NotAZip(e.to_string()))?;
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
        std::io::copy(&mut entry, &mut out).map_err(|e| ZipInputError::NotAZip(e.to_string()))?;
    }
    Ok(pick_root(dest))
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
