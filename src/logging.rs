//! Console and file logging through `tracing` (`platform.md` §3.10): separate levels, the file at
//! `log_path` (parent folders created). Polls and transfers log at DEBUG, so INFO shows what an
//! operator needs.

use crate::config::{LogLevel, Settings};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

fn level(l: LogLevel) -> LevelFilter {
    match l {
        LogLevel::Trace => LevelFilter::TRACE,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Info | LogLevel::Success => LevelFilter::INFO,
        LogLevel::Warning => LevelFilter::WARN,
        LogLevel::Error | LogLevel::Critical => LevelFilter::ERROR,
    }
}

fn filter(l: LogLevel) -> EnvFilter {
    let lvl = level(l);
    // Third-party crates are quieter than ours unless the operator asked for DEBUG or TRACE.
    let deps = if lvl >= LevelFilter::DEBUG {
        lvl
    } else {
        LevelFilter::WARN
    };
    EnvFilter::new(format!("{lvl},actix_server={deps},actix_web={deps},mio={deps},h2={deps},hyper={deps},reqwest={deps}"))
}

/// Installs the console and file sinks. `RUST_LOG`, when set, overrides the console filter.
pub fn init(settings: &Settings) -> anyhow::Result<()> {
    let console_filter = std::env::var("RUST_LOG")
        .ok()
        .map(EnvFilter::new)
        .unwrap_or_else(|| filter(settings.logging.console_level));
    let console = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .with_filter(console_filter);
    let file_layer = if settings.log_path.is_empty() {
        None
    } else {
        let path = std::path::Path::new(&settings.log_path);
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let file = RotatingFile::open(path, ROTATE_AT_BYTES, RETENTION)?;
        Some(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(Mutex::new(file))
                .with_filter(filter(settings.logging.file_level)),
        )
    };
    tracing_subscriber::registry()
        .with(console)
        .with(file_layer)
        .try_init()
        .ok();
    tracing::info!("Logger successfully configured.");
    Ok(())
}

/// Logging for commands that run before (or without) settings: stderr, INFO.
pub fn init_default() {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .map(EnvFilter::new)
        .unwrap_or_else(|| filter(LogLevel::Info));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .with_env_filter(filter)
        .try_init()
        .ok();
}

/// The log file is rotated once it would grow past 8 MB (decimal, as the original).
const ROTATE_AT_BYTES: u64 = 8_000_000;
/// Rotated files older than this are deleted (at start-up and at each rotation).
const RETENTION: Duration = Duration::from_secs(10 * 24 * 3600);

/// An append-only log file that moves itself aside when it reaches its size limit: `compox.log`
/// becomes `compox.2025-01-01_12-00-00_000000.log` (local time of the rotation) and a fresh
/// `compox.log` is started. An event never straddles two files: the limit is checked before each
/// write, and a file that is still empty takes an event of any size.
pub struct RotatingFile {
    path: PathBuf,
    file: std::fs::File,
    len: u64,
    limit: u64,
    retention: Duration,
}

impl RotatingFile {
    pub fn open(path: &Path, limit: u64, retention: Duration) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let len = file.metadata()?.len();
        let me = RotatingFile {
            path: path.to_path_buf(),
            file,
            len,
            limit,
            retention,
        };
        me.remove_expired();
        Ok(me)
    }

    /// `(stem, extension)` of the live file: `("compox", ".log")`.
    fn name_parts(&self) -> (String, String) {
        let stem = self
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ext = self
            .path
            .extension()
            .map(|e| format!(".{}", e.to_string_lossy()))
            .unwrap_or_default();
        (stem, ext)
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        let (stem, ext) = self.name_parts();
        let stamp = chrono::Local::now().format("%Y-%m-%d_%H-%M-%S_%6f");
        let mut target = self.path.with_file_name(format!("{stem}.{stamp}{ext}"));
        let mut n = 1;
        while target.exists() {
            target = self.path.with_file_name(format!("{stem}.{stamp}.{n}{ext}"));
            n += 1;
        }
        std::fs::rename(&self.path, &target)?;
        self.file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.len = 0;
        self.remove_expired();
        Ok(())
    }

    /// Deletes rotated siblings (`<stem>.<anything><ext>`, never the live file) whose last change
    /// is older than the retention.
    fn remove_expired(&self) {
        let (stem, ext) = self.name_parts();
        let prefix = format!("{stem}.");
        let Some(dir) = self.path.parent() else {
            return;
        };
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let live = self.path.file_name();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let text = name.to_string_lossy();
            if Some(name.as_os_str()) == live
                || !text.starts_with(&prefix)
                || !text.ends_with(&ext)
                || text.len() <= prefix.len() + ext.len()
            {
                continue;
            }
            let expired = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > self.retention);
            if expired {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.len > 0 && self.len + buf.len() as u64 > self.limit {
            // A failed rotation keeps logging into the current file.
            if let Err(e) = self.rotate() {
                eprintln!("compox: cannot rotate {}: {e}", self.path.display());
            }
        }
        let n = self.file.write(buf)?;
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn rotates_past_the_limit_without_splitting_an_event() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("compox.log");
        let mut f = RotatingFile::open(&path, 100, RETENTION).unwrap();
        let line = [b'a'; 40];
        for _ in 0..5 {
            f.write_all(&line).unwrap();
        }
        f.flush().unwrap();
        let all = names(dir.path());
        assert_eq!(all.len(), 3, "{all:?}");
        assert!(all.contains(&"compox.log".to_string()));
        for rotated in all.iter().filter(|n| *n != "compox.log") {
            // compox.YYYY-MM-DD_HH-MM-SS_ffffff[.n].log
            assert!(
                rotated.starts_with("compox.20") && rotated.ends_with(".log"),
                "{rotated}"
            );
            assert_eq!(
                std::fs::metadata(dir.path().join(rotated)).unwrap().len(),
                80
            );
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 40);
        // An event larger than the limit goes whole into an empty file.
        let mut big = RotatingFile::open(&dir.path().join("big.log"), 10, RETENTION).unwrap();
        big.write_all(&[b'b'; 50]).unwrap();
        assert_eq!(
            std::fs::metadata(dir.path().join("big.log")).unwrap().len(),
            50
        );
    }

    #[test]
    fn reopening_continues_the_size_and_old_rotations_expire() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("compox.log");
        std::fs::write(&path, [b'x'; 90]).unwrap();
        let old = dir.path().join("compox.2020-01-01_00-00-00_000000.log");
        std::fs::write(&old, b"old").unwrap();
        let unrelated = dir.path().join("other.log");
        std::fs::write(&unrelated, b"keep").unwrap();
        let ancient = SystemTime::now() - Duration::from_secs(11 * 24 * 3600);
        for p in [&old, &unrelated] {
            std::fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(ancient)
                .unwrap();
        }
        let mut f = RotatingFile::open(&path, 100, RETENTION).unwrap();
        assert!(!old.exists(), "expired rotation removed at open");
        assert!(unrelated.exists(), "only this log's rotations are touched");
        f.write_all(&[b'y'; 20]).unwrap();
        assert_eq!(names(dir.path()).len(), 3, "90 + 20 > 100 rotated");
        assert_eq!(std::fs::read(&path).unwrap(), [b'y'; 20]);
    }
}
