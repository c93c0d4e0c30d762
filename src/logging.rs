//! Console and file logging through `tracing` (`platform.md` §3.10): separate levels, the file at
//! `log_path` (parent folders created). Polls and transfers log at DEBUG, so INFO shows what an
//! operator needs.

use crate::config::{LogLevel, Settings};
use std::sync::Mutex;
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
        .with_target(false)
        .with_filter(console_filter);
    let file_layer = if settings.log_path.is_empty() {
        None
    } else {
        let path = std::path::Path::new(&settings.log_path);
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        // FIXME(size-based rotation at 8 MB of the original is not implemented; needs a rotating writer)
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
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
        .with_target(false)
        .with_env_filter(filter)
        .try_init()
        .ok();
}
