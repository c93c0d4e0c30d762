//! `compox run [--config PATH] [OVERRIDES...]`: the server itself, in this process.

use crate::config::{load_settings, parse_strict_overrides, ConfigError};

const HELP: &str = "Usage: compox run [--config PATH] [--<dotted.setting> VALUE]...

Runs the compox server. Settings come from, highest first: these dotted overrides
(e.g. --port 6000 --storage.backend_settings.port 7000), the YAML file given with --config,
COMPOX_* environment variables (e.g. COMPOX_PORT, COMPOX_STORAGE__BACKEND_SETTINGS__PORT),
then the defaults. `compox generate-config` writes a file with every setting.";

/// Settings of a server-style entry point (`--config` + strict overrides, `platform.md` §1.15.A).
/// On failure prints the reason and returns the exit code: 2 for usage, 1 for invalid settings.
pub fn strict_settings(command: &str, args: &[String]) -> Result<crate::config::Settings, i32> {
    let report = |e: &ConfigError| eprintln!("compox {command}: {e}");
    let (config, overrides) = parse_strict_overrides(args).map_err(|e| {
        report(&e);
        2
    })?;
    load_settings(
        config.as_deref().map(std::path::Path::new),
        &overrides,
        std::env::vars(),
    )
    .map_err(|e| {
        report(&e);
        match e {
            ConfigError::Usage(_) => 2,
            ConfigError::Invalid(_) => 1,
        }
    })
}

pub fn run(args: &[String]) -> i32 {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{HELP}");
        return 0;
    }
    let settings = match strict_settings("run", args) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if let Err(e) = crate::logging::init(&settings) {
        eprintln!("compox run: cannot set up logging: {e}");
        return 1;
    }
    match crate::server::run(settings) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("server failed to start: {e:#}");
            eprintln!("compox run: {e:#}");
            if e.is::<crate::storage::minio_binary::Unavailable>() {
                1
            } else {
                3
            }
        }
    }
}
