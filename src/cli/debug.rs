//! `compox debug run …` (`platform.md` §1.14) and `compox spawn-worker` (§1.3, §3.11).
//!
//! Debugging runs an algorithm in the workers' Python environment with in-memory storage; the
//! work is done by the `compox.algorithm_debug` module, so this command only picks the
//! interpreter: the environment in `COMPOX_INFERENCE__PYTHON_ENV`, else `VIRTUAL_ENV`, else a
//! `.venv` in the current folder, else the interpreter the binary was built against.

use crate::config::ExecutorSettings;
use std::path::PathBuf;

fn python() -> PathBuf {
    match crate::worker::python_env::resolve_env(
        std::env::var("COMPOX_INFERENCE__PYTHON_ENV")
            .ok()
            .as_deref(),
    ) {
        Some(env) => env.join("bin/python"),
        None if std::path::Path::new(".venv/bin/python").is_file() => {
            crate::config::absolute(std::path::Path::new(".venv/bin/python"))
        }
        None => PathBuf::from(option_env!("COMPOX_BUILD_PYTHON").unwrap_or("python3")),
    }
}

pub fn run(args: &[String]) -> i32 {
    let has_compox = std::process::Command::new(python())
        .args(["-c", "import compox.algorithm_debug"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_compox {
        eprintln!(
            "compox debug: {} cannot import the compox package. Point VIRTUAL_ENV or \
             COMPOX_INFERENCE__PYTHON_ENV at the environment the workers use (the one with \
             compox and the algorithm's packages, e.g. .venv from scripts/setup-python.sh).",
            python().display()
        );
        return 1;
    }
    let status = std::process::Command::new(python())
        .args(["-m", "compox.algorithm_debug"])
        .args(args)
        .status();
    match status {
        Ok(s) => s.code().unwrap_or(1),
        Err(e) => {
            eprintln!("compox debug: cannot start {}: {e}", python().display());
            1
        }
    }
}

/// Only the in-process executor exists in this build, so there is never a Celery worker to run.
pub fn spawn_worker(args: &[String]) -> i32 {
    let settings = match super::run::strict_settings("spawn-worker", args) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let executor = match settings.inference.backend_settings {
        ExecutorSettings::FastapiBackgroundTasks(_) => "fastapi_background_tasks",
        // FIXME(no Celery support in this build; a broker client would be needed)
        ExecutorSettings::Celery(_) => "celery",
    };
    println!("Unsupported executor: {executor}");
    0
}
