//! Builds a bundle from storage (`platform.md` §5.2): every object of the four algorithm
//! collections, streamed from the storage gateway through the encryptor into the zip, so memory
//! stays at a few chunks whatever the store's size.
//!
//! The zip is written with blocking file I/O between the gateway's chunks; this runs in the
//! offline `build-algorithm-bundle` command, never on a server's request path.

use super::writer::BundleWriter;
use super::{BundleError, BundleKey, BUNDLE_COLLECTIONS};
use crate::actors::storage_gateway::{flatten, GetStream, ListObjects, StorageGateway};
use actix::Addr;
use futures_util::StreamExt;
use std::path::Path;
use std::sync::Arc;

/// Called with (bytes done, bytes in total) as objects stream through.
pub type Progress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Writes the bundle to `output`; returns the number of objects bundled.
///
/// The filesystem backend cannot tell an empty collection from a missing one, so all four are
/// listed in the manifest (the original lists only the existing ones, and then refuses to
/// import a bundle that lacks one).
pub async fn build_bundle(
    storage: &Addr<StorageGateway>,
    output: &Path,
    key: BundleKey,
    progress: Option<Progress>,
) -> Result<usize, BundleError> {
    let mut listing = Vec::new();
    for collection in BUNDLE_COLLECTIONS {
        let objects = flatten(storage.send(ListObjects { collection }).await)?;
        listing.push((collection, objects));
    }
    let total: u64 = listing
        .iter()
        .flat_map(|(_, objects)| objects.iter().map(|o| o.size))
        .sum();
    let mut done = 0u64;
    let mut writer = BundleWriter::create(output, key)?;
    for (collection, objects) in listing {
        writer.add_collection(collection);
        for info in objects {
            let (size, mut body) = flatten(
                storage
                    .send(GetStream {
                        collection,
                        key: info.key.clone(),
                    })
                    .await,
            )?;
            let mut object = writer.begin_object(collection, &info.key, size)?;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| {
                    BundleError::WriteFailed(format!("reading {collection}/{}: {e}", info.key))
                })?;
                object.write(&chunk)?;
                done += chunk.len() as u64;
                if let Some(p) = &progress {
                    p(done, total.max(done));
                }
            }
            object.finish()?;
            tracing::debug!(collection, key = %info.key, size, "object bundled");
        }
    }
    writer.finish()
}
