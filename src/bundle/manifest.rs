//! The manifest (`platform.md` §5.2, §5.3, §5.4): its schema, the exact bytes the builder signs,
//! the reader's validation steps 4–7, and the `inspect` view.

use super::json::{dumps, Style};
use super::{BundleError, BundleKey};
use hmac::{Hmac, Mac};
use serde_json::{json, Map, Value};
use sha2::Sha256;
use std::collections::BTreeMap;

pub const FORMAT: &str = "compox-migration-bundle-v1";
pub const ENCRYPTION: &str = "aesgcm";
pub const BUNDLE_KIND: &str = "builtin_algorithm_snapshot";
pub const MANIFEST_NAME: &str = "manifest.json";
pub const HMAC_NAME: &str = "manifest.hmac";

/// One object of the bundle: where its blob is and how to check it.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectEntry {
    pub blob: String,
    pub collection: String,
    pub key: String,
    pub nonce_b64: String,
    pub sha256: String,
    pub size: Option<u64>,
}

impl ObjectEntry {
    fn to_value(&self) -> Value {
        json!({
            "blob": self.blob,
            "collection": self.collection,
            "key": self.key,
            "nonce_b64": self.nonce_b64,
            "sha256": self.sha256,
            "size": self.size.unwrap_or(0),
        })
    }
}

/// A validated manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub format: String,
    pub encryption: String,
    pub collections: Option<Vec<String>>,
    pub metadata: Map<String, Value>,
    pub objects: Vec<ObjectEntry>,
}

/// Lowercase hex HMAC-SHA256 of the exact manifest bytes.
pub fn sign(key: &BundleKey, manifest: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.bytes()).expect("any key length");
    mac.update(manifest);
    hex::encode(mac.finalize().into_bytes())
}

/// The manifest bytes of §5.2 steps 3–5, `content_sha256` included.
pub fn compose(collections: &[String], objects: &[ObjectEntry], created_at: &str) -> Vec<u8> {
    let mut sorted: Vec<String> = collections.to_vec();
    sorted.sort();
    sorted.dedup();
    let objects: Vec<Value> = objects.iter().map(ObjectEntry::to_value).collect();
    let mut metadata = json!({
        "created_at": created_at,
        "compox_version": env!("CARGO_PKG_VERSION"),
        "bundle_kind": BUNDLE_KIND,
    });
    let content = json!({
        "format": FORMAT,
        "encryption": ENCRYPTION,
        "collections": sorted,
        "metadata": metadata,
        "objects": objects,
    });
    metadata["content_sha256"] = json!(super::sha256_hex(
        dumps(&content, Style::Compact, true).as_bytes()
    ));
    let manifest = json!({
        "collections": sorted,
        "encryption": ENCRYPTION,
        "format": FORMAT,
        "metadata": metadata,
        "objects": objects,
    });
    dumps(&manifest, Style::Compact, true).into_bytes()
}

/// True for a zip member name that stays inside the archive's root: relative, no `.`/`..`
/// segments, no backslashes or NULs.
pub fn safe_member_name(name: &str) -> bool {
    let drive_letter = name.len() >= 2 && name.as_bytes()[1] == b':';
    let escapes = name.is_empty()
        || name.starts_with('/')
        || name.contains('\\')
        || name.contains('\0')
        || drive_letter;
    !escapes
        && name
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

impl Manifest {
    /// Steps 4–7 of §5.3: parse, then check `format`, `encryption` and the field types.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, BundleError> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| BundleError::InvalidManifest(format!("not JSON: {e}")))?;
        let Value::Object(map) = value else {
            return Err(BundleError::InvalidManifest("not a JSON object".into()));
        };
        let format = map
            .get("format")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if format != FORMAT {
            return Err(BundleError::UnsupportedFormat(format.into()));
        }
        let encryption = map
            .get("encryption")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if encryption != ENCRYPTION {
            return Err(BundleError::UnsupportedEncryption(encryption.into()));
        }
        let collections = match map.get("collections") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|c| c.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad("'collections' holds a non-string"))?,
            ),
            Some(_) => return Err(bad("'collections' is not a list")),
        };
        let metadata = match map.get("metadata") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return Err(bad("'metadata' is not an object")),
        };
        let Some(Value::Array(items)) = map.get("objects") else {
            return Err(bad("'objects' is not a list"));
        };
        let objects = items
            .iter()
            .enumerate()
            .map(|(i, item)| parse_entry(i, item))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Manifest {
            format: format.into(),
            encryption: encryption.into(),
            collections,
            metadata,
            objects,
        })
    }

    /// The collections the bundle declares, sorted (§4.9).
    pub fn collection_names(&self) -> Vec<String> {
        let mut names: Vec<String> = match &self.collections {
            Some(c) => c.clone(),
            None => self.objects.iter().map(|o| o.collection.clone()).collect(),
        };
        names.sort();
        names.dedup();
        names
    }

    /// The `inspect-algorithm-bundle` object (§5.4).
    pub fn inspect(&self, bundle_path: &str) -> Value {
        let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
        for o in &self.objects {
            *counts.entry(o.collection.as_str()).or_default() += 1;
        }
        json!({
            "bundle_path": bundle_path,
            "collections": self.collection_names(),
            "encryption": self.encryption,
            "format": self.format,
            "metadata": self.metadata,
            "object_count": self.objects.len(),
            "object_counts_by_collection": counts,
        })
    }
}

fn bad(what: &str) -> BundleError {
    BundleError::InvalidManifest(what.into())
}

fn parse_entry(i: usize, item: &Value) -> Result<ObjectEntry, BundleError> {
    let field = |name: &str| {
        item.get(name)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                BundleError::InvalidManifest(format!("object {i} has no string '{name}'"))
            })
    };
    let entry = ObjectEntry {
        blob: field("blob")?,
        collection: field("collection")?,
        key: field("key")?,
        nonce_b64: field("nonce_b64")?,
        sha256: field("sha256")?,
        size: item.get("size").and_then(Value::as_u64),
    };
    if !safe_member_name(&entry.blob) {
        return Err(BundleError::InvalidManifest(format!(
            "object {i} names an unsafe blob path {:?}",
            entry.blob
        )));
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(c: &str, k: &str) -> ObjectEntry {
        ObjectEntry {
            blob: "objects/00000000.bin".into(),
            collection: c.into(),
            key: k.into(),
            nonce_b64: "AAAAAAAAAAAAAAAA".into(),
            sha256: "0".repeat(64),
            size: Some(3),
        }
    }

    #[test]
    fn composed_manifest_is_sorted_compact_and_parses_back() {
        let cols: Vec<String> = vec!["module-store".into(), "algorithm-store".into()];
        let bytes = compose(
            &cols,
            &[entry("algorithm-store", "a~b~1")],
            "2026-01-02T03:04:05+00:00",
        );
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with(r#"{"collections":["algorithm-store","module-store"],"encryption":"aesgcm","format":"compox-migration-bundle-v1","metadata":{"bundle_kind":"builtin_algorithm_snapshot","compox_version":"#), "{text}");
        assert!(text.contains(r#""objects":[{"blob":"objects/00000000.bin","collection":"algorithm-store","key":"a~b~1","nonce_b64":"AAAAAAAAAAAAAAAA","sha256":""#));
        assert!(!text.contains(' '));
        let m = Manifest::parse(&bytes).unwrap();
        assert_eq!(m.objects, vec![entry("algorithm-store", "a~b~1")]);
        let content = m.metadata["content_sha256"].as_str().unwrap();
        assert_eq!(content.len(), 64);
        let inspected = m.inspect("/x.zip");
        assert_eq!(inspected["object_count"], 1);
        assert_eq!(
            inspected["object_counts_by_collection"],
            json!({"algorithm-store": 1})
        );
    }

    #[test]
    fn validation_order_and_codes() {
        let code = |v: Value| {
            Manifest::parse(v.to_string().as_bytes())
                .unwrap_err()
                .code()
        };
        assert_eq!(
            Manifest::parse(b"{nope").unwrap_err().code(),
            "invalid_bundle_manifest"
        );
        assert_eq!(
            code(json!({"format": "v2", "encryption": "x"})),
            "unsupported_bundle_format"
        );
        assert_eq!(
            code(json!({"format": FORMAT, "encryption": "x"})),
            "unsupported_bundle_encryption"
        );
        let base = json!({"format": FORMAT, "encryption": ENCRYPTION});
        let with = |k: &str, v: Value| {
            let mut m = base.clone();
            m[k] = v;
            if k != "objects" {
                m["objects"] = json!([]);
            }
            m
        };
        assert_eq!(
            code(with("collections", json!("x"))),
            "invalid_bundle_manifest"
        );
        assert_eq!(code(with("metadata", json!([]))), "invalid_bundle_manifest");
        assert_eq!(code(with("objects", json!({}))), "invalid_bundle_manifest");
        let mut evil = with("objects", json!([]));
        evil["objects"] = json!([{"blob": "../x", "collection": "c", "key": "k", "nonce_b64": "n", "sha256": "s"}]);
        assert_eq!(code(evil), "invalid_bundle_manifest");
        let ok = Manifest::parse(with("objects", json!([])).to_string().as_bytes()).unwrap();
        assert!(ok.metadata.is_empty());
        assert!(ok.collection_names().is_empty());
    }

    #[test]
    fn member_names() {
        for good in ["manifest.json", "objects/00000001.bin"] {
            assert!(safe_member_name(good), "{good}");
        }
        for evil in [
            "../x",
            "/etc/passwd",
            "objects/../../x",
            "a\\b",
            "C:/x",
            "",
            "a//b",
            "./a",
        ] {
            assert!(!safe_member_name(evil), "{evil}");
        }
    }

    #[test]
    fn signature_is_lowercase_hex_hmac() {
        let key = BundleKey([1u8; 32]);
        let sig = sign(&key, b"{}");
        assert_eq!(sig.len(), 64);
        assert_eq!(sig, sig.to_lowercase());
        assert_ne!(sig, sign(&BundleKey([2u8; 32]), b"{}"));
    }
}
