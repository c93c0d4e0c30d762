//! The bundle key (`platform.md` §5.1): 32 random bytes, written as unpadded base64url. The same
//! key drives AES-256-GCM for the objects and HMAC-SHA256 for the manifest.

use super::BundleError;
use base64::alphabet::URL_SAFE;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;

pub const KEY_BYTES: usize = 32;

/// A decoded key. `Debug` never shows the bytes.
#[derive(Clone)]
pub struct BundleKey(pub(crate) [u8; KEY_BYTES]);

impl std::fmt::Debug for BundleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BundleKey(<redacted>)")
    }
}

/// Which side decodes: the reader and the builder word their errors differently.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum KeyUse {
    Read,
    Build,
}

const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

impl BundleKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        BundleKey(rand::random())
    }

    /// The 43-character text form.
    pub fn to_text(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0)
    }

    /// Decodes the text form: whitespace trimmed, both base64 alphabets accepted, padding
    /// optional, anything else refused.
    pub fn parse(text: &str, side: KeyUse) -> Result<Self, BundleError> {
        let encoding_error = || BundleError::InvalidKey {
            message: match side {
                KeyUse::Read => "Invalid bundle key encoding".into(),
                KeyUse::Build => {
                    "Invalid bundle key format. Expected base64url-encoded 32-byte key.".into()
                }
            },
            actual_bytes: None,
        };
        let normalized: String = text
            .trim()
            .trim_end_matches('=')
            .chars()
            .map(|c| match c {
                '+' => '-',
                '/' => '_',
                c => c,
            })
            .collect();
        if !normalized
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(encoding_error());
        }
        let bytes = LENIENT
            .decode(normalized.as_bytes())
            .map_err(|_| encoding_error())?;
        let n = bytes.len();
        let array: [u8; KEY_BYTES] = bytes.try_into().map_err(|_| BundleError::InvalidKey {
            message: match side {
                KeyUse::Read => "Bundle key must decode to 32 bytes (AES-256 key)".into(),
                KeyUse::Build => {
                    format!("Invalid bundle key length: expected 32 bytes, got {n} bytes.")
                }
            },
            actual_bytes: Some(n),
        })?;
        Ok(BundleKey(array))
    }

    pub fn bytes(&self) -> &[u8; KEY_BYTES] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_alphabets() {
        let key = BundleKey::generate();
        let text = key.to_text();
        assert_eq!(text.len(), 43);
        assert!(!text.contains('='));
        let back = BundleKey::parse(&format!("  {text}\n"), KeyUse::Read).unwrap();
        assert_eq!(back.0, key.0);
        let standard = text.replace('-', "+").replace('_', "/") + "=";
        assert_eq!(BundleKey::parse(&standard, KeyUse::Read).unwrap().0, key.0);
    }

    #[test]
    fn errors_name_the_problem() {
        let short = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([1u8; 16]);
        match BundleKey::parse(&short, KeyUse::Read) {
            Err(BundleError::InvalidKey {
                message,
                actual_bytes,
            }) => {
                assert_eq!(message, "Bundle key must decode to 32 bytes (AES-256 key)");
                assert_eq!(actual_bytes, Some(16));
            }
            other => panic!("{other:?}"),
        }
        let e = BundleKey::parse(&short, KeyUse::Build).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Invalid bundle key length: expected 32 bytes, got 16 bytes."
        );
        let e = BundleKey::parse("not*base64", KeyUse::Read).unwrap_err();
        assert_eq!(e.to_string(), "Invalid bundle key encoding");
        assert_eq!(e.code(), "invalid_bundle_key");
        assert!(BundleKey::parse("abcde", KeyUse::Read).is_err());
    }
}
