//! The test S3 server (scripts/s3-test-server.sh): where test stores keep block bodies, and
//! access to its objects behind the stores' backs.

use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

/// A fresh `s3://bucket/prefix` on the test server for a store named `name`, or `None` (and a
/// loud skip message) without a server.
pub fn s3_store_url(name: &str) -> Option<String> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let Ok(base) = std::env::var("OUTCORE_TEST_S3_URL") else {
        s3_missing("OUTCORE_TEST_S3_URL is not set (scripts/test.sh starts an S3 server)");
        return None;
    };
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Some(format!(
        "{}/{name}-{}-{n}-{:08x}",
        base.trim_end_matches('/'),
        std::process::id(),
        rand::random::<u32>()
    ))
}

/// Says that an object-storage test cannot run and why: a loud skip, or a failure where the
/// test command promised a server (`OUTCORE_REQUIRE_S3`, set by scripts/test.sh).
pub fn s3_missing(why: &str) {
    if std::env::var_os("OUTCORE_REQUIRE_S3").is_some() {
        panic!("{why}, but OUTCORE_REQUIRE_S3 says this run has an S3 server");
    }
    eprintln!("SKIPPED: {why}");
}

/// The bucket of an `s3://bucket/...` url, as a client of the test server.
fn client(url: &str) -> impl ObjectStore {
    let bucket = url
        .strip_prefix("s3://")
        .and_then(|r| r.split('/').next())
        .expect("an s3:// url");
    AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .build()
        .expect("test S3 client")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Flips bit 5 of byte `at` of the object `path` in the bucket of `url`.
pub fn damage_object(url: &str, path: &str, at: usize) {
    let c = client(url);
    let path = Path::from(path);
    runtime().block_on(async {
        let mut bytes = c.get(&path).await.unwrap().bytes().await.unwrap().to_vec();
        bytes[at] ^= 0x20;
        c.put(&path, PutPayload::from(bytes)).await.unwrap();
    });
}

/// Writes `bytes` to the object `path` in the bucket of `url`.
pub fn put_object(url: &str, path: &str, bytes: Vec<u8>) {
    let c = client(url);
    runtime().block_on(async {
        c.put(&Path::from(path), PutPayload::from(bytes))
            .await
            .unwrap();
    });
}

/// The paths of every object under the prefix of `url` (`s3://bucket/prefix`), sorted.
pub fn list_objects(url: &str) -> Vec<String> {
    use futures::TryStreamExt;
    let c = client(url);
    let prefix = url
        .strip_prefix("s3://")
        .and_then(|r| r.split_once('/'))
        .map_or("", |(_, p)| p);
    let mut paths: Vec<String> = runtime().block_on(async {
        c.list(Some(&Path::from(prefix)))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap()
    });
    paths.sort();
    paths
}

/// Deletes the object `path` in the bucket of `url`.
pub fn delete_object(url: &str, path: &str) {
    let c = client(url);
    runtime().block_on(async { c.delete(&Path::from(path)).await.unwrap() });
}

/// The ETag the server gives the object `path` in the bucket of `url` (a multipart upload's
/// ends in `-<parts>`).
pub fn etag(url: &str, path: &str) -> String {
    let c = client(url);
    runtime()
        .block_on(async { c.head(&Path::from(path)).await.unwrap() })
        .e_tag
        .unwrap_or_default()
}
