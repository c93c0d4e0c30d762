//! `compox build-algorithm-bundle` (`platform.md` §1.9, §5.2): writes every algorithm, module,
//! asset and checkpoint manifest of the configured storage into an encrypted bundle. Runs offline
//! through an in-process storage gateway; creates no collections.

use super::bundle_common;
use crate::bundle::build::build_bundle;
use crate::bundle::{BundleKey, KeyUse};
use std::path::Path;

pub fn run(config: &str, output: &str, key: Option<&str>) -> i32 {
    let settings = match bundle_common::settings(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    crate::logging::init_default();
    let key = match key {
        Some(text) => match BundleKey::parse(text, KeyUse::Build) {
            Ok(k) => k,
            Err(e) => {
                eprintln!("Error: {e}");
                return 1;
            }
        },
        None => {
            let k = BundleKey::generate();
            println!("Generated algorithm bundle key: {}", k.to_text());
            k
        }
    };
    let output = crate::config::absolute(Path::new(output));
    let system = actix::System::new();
    let work = async {
        let signer = crate::storage::filesystem::UrlSigner::new(format!(
            "http://127.0.0.1:{}",
            settings.port
        ));
        let storage = match crate::server::start_storage_gateway(&settings, signer) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("Error: {e:#}");
                return 1;
            }
        };
        let (bar, progress) = bundle_common::progress("bundling");
        let result = build_bundle(&storage, &output, key, progress).await;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        match result {
            Ok(n) => {
                println!("Algorithm bundle created: {}", output.display());
                println!("Objects bundled: {n}");
                0
            }
            Err(e) => {
                eprintln!("Error: {e}");
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
