//! What the bundle commands share: loading settings the original's way (YAML plus environment,
//! no dotted overrides) and a byte progress bar on a terminal.

use crate::config::{load_settings, Settings};
use std::path::Path;

/// Settings from `--config` and `COMPOX_*`; the error text is printed by the caller.
pub fn settings(config: &str) -> Result<Settings, String> {
    load_settings(
        Some(Path::new(config)),
        &crate::config::parse_loose_overrides(&[]),
        std::env::vars(),
    )
    .map_err(|e| e.to_string())
}

/// A byte progress bar on stderr when it is a terminal, as a callback the bundle code drives.
pub fn progress(
    label: &'static str,
) -> (
    Option<indicatif::ProgressBar>,
    Option<crate::bundle::build::Progress>,
) {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return (None, None);
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(label);
    let handle = bar.clone();
    let callback: crate::bundle::build::Progress = std::sync::Arc::new(move |done, total| {
        handle.set_length(total);
        handle.set_position(done);
    });
    (Some(bar), Some(callback))
}
