//! `compox inspect-algorithm-bundle` (`platform.md` §1.11, §5.4): verifies the key and the
//! manifest's HMAC and prints the manifest summary. No object is decrypted.

use crate::bundle::json::{dumps, Style};
use crate::bundle::BundleReader;
use std::path::Path;

pub fn run(bundle_path: &str, key: &str) -> i32 {
    let path = crate::config::absolute(Path::new(bundle_path));
    match BundleReader::open(&path, key) {
        Ok(reader) => {
            let summary = reader.manifest().inspect(&path.display().to_string());
            println!("{}", dumps(&summary, Style::Indent4, true));
            0
        }
        Err(e) => {
            eprintln!("Error: {e} [{}]", e.code());
            1
        }
    }
}
