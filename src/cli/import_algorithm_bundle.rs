//! `compox import-algorithm-bundle` (`platform.md` §1.12): runs the start-up import routine
//! (hash gate, state document, semantic import) against the configured storage, offline.
//! `--bundle-path` and `--key` replace the configured ones; the path's dynamic prefixes are
//! expanded (the original forgets to).
//!
//! Like the original it only holds an in-process lock: a server running on the same storage at
//! the same time can race with it. Such a server's deployer sees the imported records at its next
//! index refresh; when one answers on the configured port the command says so.

use super::bundle_common;
use crate::actors::bundle_importer::StartupOutcome;
use crate::actors::deployer::INDEX_REFRESH_INTERVAL;

pub fn run(config: &str, bundle_path: Option<String>, key: Option<String>) -> i32 {
    let mut settings = match bundle_common::settings(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    if let Some(p) = bundle_path {
        settings.storage.builtin_storage_bundle_path =
            Some(crate::config::paths::expand_prefix(&p, &settings.info));
    }
    if let Some(k) = key {
        settings.storage.builtin_storage_bundle_key = Some(k);
    }
    crate::logging::init_default();
    let system = actix::System::new();
    let work = async {
        let (bar, progress) = bundle_common::progress("importing");
        let base = format!("http://127.0.0.1:{}", settings.port);
        let result = crate::server::start_core_with(&settings, base, false, progress).await;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        match result.map(|core| core.startup_import) {
            Ok(StartupOutcome::Imported(n)) => {
                println!("Algorithm bundle import completed.");
                println!("Algorithms imported: {n}");
                if super::deploy_algorithms::server_running(&settings) {
                    // One interval until the next refresh, plus a second for its reads.
                    let within = INDEX_REFRESH_INTERVAL.as_secs() + 1;
                    println!(
                        "A server answers on port {}: if it uses this store, it picks up the \
                         imported algorithms within {within} seconds.",
                        settings.port
                    );
                }
                0
            }
            Ok(StartupOutcome::AlreadyImported) => {
                println!("Algorithm bundle import skipped: this bundle file was already imported.");
                0
            }
            Ok(StartupOutcome::NotConfigured) => {
                println!("Algorithm bundle import skipped: no bundle path or key configured.");
                0
            }
            Ok(StartupOutcome::FileNotFound(p)) => {
                println!(
                    "Algorithm bundle import skipped: no bundle file at {}.",
                    p.display()
                );
                0
            }
            Err(e) => {
                eprintln!("Error: {e:#}");
                1
            }
        }
    };
    system.block_on(async {
        crate::server::with_minio(&settings, work)
            .await
            .unwrap_or_else(|e| {
                eprintln!("Error: {e:#}");
                1
            })
    })
}
