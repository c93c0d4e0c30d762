//! Sorting an algorithm folder into Python code and assets (`algorithms.md` §1.2, §1.9).

use std::path::{Path, PathBuf};

#[derive(Debug, Default)]
pub struct Scan {
    /// Python sources (or, for pre-compiled input, `.pyc` files) by forward-slash relative path.
    pub code: Vec<(String, PathBuf)>,
    pub assets: Vec<(String, PathBuf)>,
    /// True when the folder has a root `Runner.pyc` but no `Runner.py`.
    pub precompiled: bool,
    pub warnings: Vec<String>,
    /// Included files that are symbolic links (their targets may lie outside the folder).
    pub linked: Vec<PathBuf>,
}

const GIT_FILES: [&str; 3] = [".gitignore", ".gitmodules", ".gitattributes"];

/// Walks `root` and classifies every file.
pub fn scan(root: &Path) -> Result<Scan, String> {
    let has_py = root.join("Runner.py").is_file();
    let has_pyc = root.join("Runner.pyc").is_file();
    if !has_py && !has_pyc {
        return Err(format!(
            "Runner.py not found in the algorithm root {}",
            root.display()
        ));
    }
    let mut out = Scan {
        precompiled: !has_py,
        ..Default::default()
    };
    walk(root, root, &mut out, !has_py)?;
    out.code.sort_by(|a, b| a.0.cmp(&b.0));
    out.assets.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn walk(root: &Path, dir: &Path, out: &mut Scan, precompiled: bool) -> Result<(), String> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let is_link = meta.file_type().is_symlink();
        let target_is_dir = path.is_dir();
        if target_is_dir {
            // Symlinked directories are not entered; `.git` only for source input.
            if is_link || name == "__pycache__" || (name == ".git" && !precompiled) {
                continue;
            }
            if name.starts_with('.') {
                out.warnings.push(format!(
                    "hidden directory {} contributes files",
                    path.display()
                ));
            }
            if name.contains(['[', ']', '*', '?']) {
                out.warnings.push(format!(
                    "directory name {} has glob characters; included",
                    path.display()
                ));
            }
            walk(root, &path, out, precompiled)?;
            continue;
        }
        if !path.is_file() || name.starts_with('.') {
            continue;
        }
        if is_link {
            out.linked.push(path.clone());
        }
        let rel = path
            .strip_prefix(root)
            .map_err(|_| format!("{} is outside {}", path.display(), root.display()))?
            .to_string_lossy()
            .replace('\\', "/");
        if rel.split('/').any(|c| GIT_FILES.contains(&c)) {
            continue;
        }
        if precompiled {
            if name.ends_with(".pyc") {
                out.code.push((rel, path));
            } else if !name.ends_with(".py") {
                out.assets.push((rel, path));
            }
        } else if name.ends_with(".py") {
            out.code.push((rel, path));
        } else if !name.ends_with(".pyc") {
            out.assets.push((rel, path));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_rules() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for (p, body) in [
            ("Runner.py", "x"),
            ("pyproject.toml", "x"),
            ("helpers/u.py", "x"),
            ("files/w.bin", "x"),
            (".hid/m.py", "x"),
            (".env", "x"),
            ("__pycache__/c.pyc", "x"),
            ("stale.pyc", "x"),
            ("we[ird]/w.py", "x"),
            ("x.PY", "x"),
            (".git/config", "x"),
        ] {
            std::fs::create_dir_all(r.join(p).parent().unwrap()).unwrap();
            std::fs::write(r.join(p), body).unwrap();
        }
        let s = scan(r).unwrap();
        let code: Vec<&str> = s.code.iter().map(|c| c.0.as_str()).collect();
        let assets: Vec<&str> = s.assets.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(
            code,
            vec![".hid/m.py", "Runner.py", "helpers/u.py", "we[ird]/w.py"]
        );
        assert_eq!(assets, vec!["files/w.bin", "pyproject.toml", "x.PY"]);
        assert!(!s.precompiled);
    }

    #[test]
    fn missing_runner_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("pyproject.toml"), "").unwrap();
        assert!(scan(d.path()).unwrap_err().contains("Runner.py not found"));
    }
}
