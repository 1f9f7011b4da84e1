//! One body's upload: a single PUT, or for large bodies a multipart upload whose parts go up
//! in parallel. On the test SeaweedFS over loopback (2 cores) multipart was 1.1–1.2× one PUT
//! from 32 MiB on and no better below; on S3 proper one connection carries far less than a
//! node's bandwidth, so parallel parts matter more there.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

/// Bodies of at least this many bytes are uploaded in parts (S3 wants parts of 5 MiB or more
/// but the last).
pub(crate) const MULTIPART_BYTES: usize = 32 << 20;

/// Bytes per part of a multipart upload.
const PART_BYTES: usize = 8 << 20;

/// Parts of one body in flight at once.
const PARTS_IN_FLIGHT: usize = 8;

/// Uploads `body` as the object `path`. A failed multipart upload is aborted (its parts
/// deleted) before the error is returned.
pub(crate) async fn put_body(
    client: &Arc<dyn ObjectStore>,
    path: &Path,
    body: Bytes,
) -> object_store::Result<()> {
    if body.len() < MULTIPART_BYTES {
        return client.put(path, PutPayload::from(body)).await.map(drop);
    }
    let mut parts =
        WriteMultipart::new_with_chunk_size(client.put_multipart(path).await?, PART_BYTES);
    let mut at = 0;
    while at < body.len() {
        if let Err(e) = parts.wait_for_capacity(PARTS_IN_FLIGHT).await {
            let _ = parts.abort().await;
            return Err(e);
        }
        let end = (at + PART_BYTES).min(body.len());
        parts.put(body.slice(at..end));
        at = end;
    }
    parts.finish().await.map(drop)
}
