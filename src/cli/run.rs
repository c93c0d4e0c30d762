//! `compox run [--config PATH] [OVERRIDES...]`: the server itself, in this process.

use crate::config::{load_settings, parse_strict_overrides, ConfigError};

const HELP: &str = "Usage: compox run [--config PATH] [--<dotted.setting> VALUE]...

Runs the compox server. Settings come from, highest first: these dotted overrides
(e.g. --port 6000 --storage.backend_settings.port 7000), the YAML file given with --config,
COMPOX_* environment variables (e.g. COMPOX_PORT, COMPOX_STORAGE__BACKEND_SETTINGS__PORT),
then the defaults. `compox generate-config` writes a file with every setting.";

pub fn run(args: &[String]) -> i32 {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{HELP}");
        return 0;
    }
    let (config, overrides) = match parse_strict_overrides(args) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("compox run: {e}");
            return 2;
        }
    };
    let settings = match load_settings(
        config.as_deref().map(std::path::Path::new),
        &overrides,
        std::env::vars(),
    ) {
        Ok(s) => s,
        Err(ConfigError::Usage(e)) => {
            eprintln!("compox run: {e}");
            return 2;
        }
        Err(ConfigError::Invalid(e)) => {
            eprintln!("compox run: {e}");
            return 1;
        }
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
            3
        }
    }
}
