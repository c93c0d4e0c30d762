//! `compox generate-algorithm-bundle-key` (`platform.md` §1.10): prints one fresh key.

pub fn run() -> i32 {
    println!("{}", crate::bundle::BundleKey::generate().to_text());
    0
}
