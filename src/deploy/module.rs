//! Building the module zip and its content id (`algorithms.md` §2.3). The Python steps
//! (import rewriting, minifying, byte-compiling) run in a child process, `compox python-tool
//! deploy-module`, with the interpreter that will run the algorithm; never in the server.

use super::scan::Scan;
use md5::{Digest, Md5};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

const OUTER_INIT: &str = "# Init file for the module\n";
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// How to reach the Python side of the build.
#[derive(Debug, Clone)]
pub struct PythonTool {
    /// The `compox` executable (normally the running binary).
    pub exe: PathBuf,
    /// `inference.python_env`, forwarded so the tool uses the workers' interpreter and packages.
    pub python_env: Option<String>,
}

/// A built module: its id and the zip on disk (inside `workdir`).
pub struct BuiltModule {
    pub module_id: String,
    pub zip_path: PathBuf,
    pub warnings: Vec<String>,
}

/// Stages, processes, hashes and zips the code of `scan` inside `workdir`.
pub async fn build(
    scan: &Scan,
    obfuscate: bool,
    pyc_only: bool,
    tool: &PythonTool,
    workdir: &Path,
) -> Result<BuiltModule, String> {
    let build_dir = workdir.join("module_build");
    let pkg = build_dir.join("__module__");
    std::fs::create_dir_all(&pkg).map_err(|e| format!("cannot stage module: {e}"))?;
    std::fs::write(build_dir.join("__init__.py"), OUTER_INIT)
        .map_err(|e| format!("cannot stage module: {e}"))?;
    for (rel, src) in &scan.code {
        let dst = pkg.join(rel);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("cannot stage {rel}: {e}"))?;
        }
        std::fs::copy(src, &dst).map_err(|e| format!("cannot stage {rel}: {e}"))?;
    }
    let mut warnings = Vec::new();
    if !scan.precompiled {
        add_missing_inits(&pkg).map_err(|e| format!("cannot stage module: {e}"))?;
        warnings = run_tool(tool, &pkg, obfuscate, pyc_only).await?;
    }
    let module_id = content_id(&pkg).map_err(|e| format!("cannot hash module: {e}"))?;
    let final_pkg = build_dir.join(&module_id);
    std::fs::rename(&pkg, &final_pkg).map_err(|e| format!("cannot stage module: {e}"))?;
    let zip_path = workdir.join(format!("{module_id}.zip"));
    write_zip(&build_dir, &zip_path).map_err(|e| format!("cannot zip module: {e}"))?;
    Ok(BuiltModule {
        module_id,
        zip_path,
        warnings,
    })
}

/// Step 3: an empty `__init__.py` in every staged directory lacking one.
fn add_missing_inits(dir: &Path) -> std::io::Result<()> {
    let init = dir.join("__init__.py");
    if !init.exists() {
        std::fs::write(&init, "")?;
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            add_missing_inits(&entry.path())?;
        }
    }
    Ok(())
}

async fn run_tool(
    tool: &PythonTool,
    pkg: &Path,
    obfuscate: bool,
    pyc_only: bool,
) -> Result<Vec<String>, String> {
    let mut cmd = tokio::process::Command::new(&tool.exe);
    cmd.arg("python-tool")
        .arg("deploy-module")
        .arg(pkg)
        .arg("--obfuscate")
        .arg(obfuscate.to_string())
        .arg("--pyc-only")
        .arg(pyc_only.to_string())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(env) = &tool.python_env {
        cmd.env("COMPOX_PYTHON_ENV", env);
    }
    let out = tokio::time::timeout(TOOL_TIMEOUT, cmd.output())
        .await
        .map_err(|_| "the Python module build timed out".to_string())?
        .map_err(|e| {
            format!(
                "cannot start the Python module build ({}): {e}",
                tool.exe.display()
            )
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or("");
    let parsed: serde_json::Value = serde_json::from_str(last).unwrap_or(serde_json::Value::Null);
    if let Some(err) = parsed.get("error").and_then(|e| e.as_str()) {
        return Err(err.to_string());
    }
    if !out.status.success() || parsed.is_null() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!("the Python module build failed: {}", stderr.trim()));
    }
    Ok(parsed
        .get("warnings")
        .and_then(|w| w.as_array())
        .map(|w| {
            w.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

/// `check_importable`: imports the built zip in a child process with a 20 s limit.
pub async fn check_import(tool: &PythonTool, module: &BuiltModule) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new(&tool.exe);
    cmd.arg("python-tool")
        .arg("check-import")
        .arg(&module.zip_path)
        .arg(&module.module_id)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(env) = &tool.python_env {
        cmd.env("COMPOX_PYTHON_ENV", env);
    }
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .map_err(|_| "importing the module took longer than 20 s".to_string())?
        .map_err(|e| format!("cannot start the import check: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let parsed: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_default();
    Err(parsed["error"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string()))
}

fn files_under(dir: &Path, base: &Path, out: &mut Vec<(String, PathBuf)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            if entry.file_name() != "__pycache__" {
                files_under(&path, base, out)?;
            }
        } else {
            let rel = path
                .strip_prefix(base)
                .unwrap_or(&path)
                .to_string_lossy()
                .replace('\\', "/");
            out.push((rel, path));
        }
    }
    Ok(())
}

/// Step 8: MD5 over `path || 0x00 || bytes` of every package file in code-point order.
pub fn content_id(pkg: &Path) -> std::io::Result<String> {
    let mut files = Vec::new();
    files_under(pkg, pkg, &mut files)?;
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = Md5::new();
    for (rel, path) in files {
        h.update(rel.as_bytes());
        h.update([0u8]);
        h.update(std::fs::read(path)?);
    }
    Ok(hex::encode(h.finalize()))
}

/// Step 9: zips `module_build/` with directory entries, DEFLATE.
fn write_zip(build_dir: &Path, zip_path: &Path) -> std::io::Result<()> {
    let file = std::fs::File::create(zip_path)?;
    let mut zip = zip::ZipWriter::new(file);
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    fn add(
        zip: &mut zip::ZipWriter<std::fs::File>,
        dir: &Path,
        base: &Path,
        opts: zip::write::SimpleFileOptions,
    ) -> std::io::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let rel = path
                .strip_prefix(base)
                .unwrap_or(&path)
                .to_string_lossy()
                .replace('\\', "/");
            if entry.file_type()?.is_dir() {
                if entry.file_name() == "__pycache__" {
                    continue;
                }
                zip.add_directory(format!("{rel}/"), opts)
                    .map_err(std::io::Error::other)?;
                add(zip, &path, base, opts)?;
            } else {
                zip.start_file(rel, opts).map_err(std::io::Error::other)?;
                zip.write_all(&std::fs::read(&path)?)?;
            }
        }
        Ok(())
    }
    add(&mut zip, build_dir, build_dir, opts)?;
    zip.finish().map_err(std::io::Error::other)?;
    Ok(())
}

/// `body` unchanged, except that once it ends, the MD5 of what passed through must be
/// `expected`; otherwise it ends with an error instead, so storage keeps nothing (an asset is
/// stored under the MD5 of its bytes, and a file rewritten while it is deployed would break
/// that). `changed` then holds the MD5 that was read.
pub fn md5_checked(
    body: crate::storage::ByteStream,
    expected: String,
    changed: std::sync::Arc<std::sync::Mutex<Option<String>>>,
) -> crate::storage::ByteStream {
    use futures_util::StreamExt;
    futures_util::stream::unfold(
        (body, Md5::new(), Some(expected)),
        move |(mut body, mut hash, expected)| {
            let changed = changed.clone();
            async move {
                let expected = expected?;
                match body.next().await {
                    Some(Ok(chunk)) => {
                        hash.update(&chunk);
                        Some((Ok(chunk), (body, hash, Some(expected))))
                    }
                    Some(Err(e)) => Some((Err(e), (body, hash, None))),
                    None => {
                        let read = hex::encode(hash.clone().finalize());
                        if read == expected {
                            return None;
                        }
                        let e = std::io::Error::other(format!(
                            "the file changed while it was stored (MD5 {read}, expected {expected})"
                        ));
                        if let Ok(mut slot) = changed.lock() {
                            *slot = Some(read);
                        }
                        Some((Err(e), (body, hash, None)))
                    }
                }
            }
        },
    )
    .boxed()
}

/// MD5 hex of a file, read in chunks (asset ids).
pub fn file_md5(path: &Path) -> std::io::Result<(String, u64)> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        h.update(&buf[..n]);
    }
    Ok((hex::encode(h.finalize()), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn md5_checked_passes_what_matches_and_fails_what_changed() {
        use futures_util::StreamExt;
        let chunks = || {
            futures_util::stream::iter(
                [&b"hello "[..], b"world"].map(|c| Ok(bytes::Bytes::from_static(c))),
            )
            .boxed()
        };
        let hello_world = hex::encode(Md5::digest(b"hello world"));

        let changed = std::sync::Arc::new(std::sync::Mutex::new(None));
        let out: Vec<_> = md5_checked(chunks(), hello_world.clone(), changed.clone())
            .collect()
            .await;
        assert!(out.iter().all(Result::is_ok) && out.len() == 2);
        assert!(changed.lock().unwrap().is_none());

        let other = hex::encode(Md5::digest(b"hello there"));
        let out: Vec<_> = md5_checked(chunks(), other, changed.clone())
            .collect()
            .await;
        assert_eq!(out.len(), 3);
        let error = out[2].as_ref().unwrap_err().to_string();
        assert!(
            error.contains("the file changed while it was stored"),
            "{error}"
        );
        assert_eq!(
            changed.lock().unwrap().as_deref(),
            Some(hello_world.as_str())
        );
    }

    #[test]
    fn content_id_recipe() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("b.py"), "B").unwrap();
        std::fs::write(d.path().join("sub/a.py"), "A").unwrap();
        let mut h = Md5::new();
        h.update(b"b.py\0B");
        h.update(b"sub/a.py\0A");
        assert_eq!(content_id(d.path()).unwrap(), hex::encode(h.finalize()));
    }
}
