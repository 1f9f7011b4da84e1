//! Which object store holds a store's block bodies. Chosen when the store is created and
//! recorded in the index store itself (a metadata record under a reserved oid), so every later
//! open — from any node — finds it from the index url alone. Compiled in every build, so that
//! a build without object-storage support refuses such a store instead of reading the
//! pointer records as block bodies.

use std::sync::Arc;

use crate::db::DbOptions;
use crate::storage::{CommitRequest, Key, Oid, Storage, Tid, TxnMeta, Write};
use crate::{Error, Result};

/// The record naming the object store: an oid `new_oids` never reaches (oids count up from 1;
/// the largest signed 64-bit value, so PostgreSQL's `bigint` keeps it positive).
pub(crate) const BLOBS_KEY: Key = Key::Meta(Oid(i64::MAX as u64));

/// First line of the record; the url follows on the second.
const HEADER: &str = "outcore-blobs 1\n";

fn encode(url: &str) -> Vec<u8> {
    format!("{HEADER}{url}\n").into_bytes()
}

fn decode(bytes: &[u8], tid: Tid) -> Result<String> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.strip_prefix(HEADER))
        .and_then(|s| s.strip_suffix('\n'))
        .filter(|url| !url.is_empty() && !url.contains('\n'))
        .map(str::to_owned)
        .ok_or_else(|| Error::Corrupt {
            key: BLOBS_KEY,
            tid,
            reason: "not an object-storage record (\"outcore-blobs 1\" and a url)".into(),
        })
}

/// The object-store url recorded in `index`, if any.
pub(crate) fn recorded(index: &dyn Storage) -> Result<Option<String>> {
    match index.load(BLOBS_KEY, Tid::MAX)? {
        Some(v) => decode(&v.data, v.tid).map(Some),
        None => Ok(None),
    }
}

/// `index` as the database should use it: wrapped in the blob layer its record names, after
/// recording `requested` in a store that has no commit yet. `requested` on a store that
/// already has data but no record, or that names another object store, is refused: moving
/// bodies is not built. Returns the store and whether bodies live in an object store.
pub(crate) fn attach(
    index: Arc<dyn Storage>,
    options: &DbOptions,
) -> Result<(Arc<dyn Storage>, bool)> {
    let (requested, readonly) = (options.blobs.as_deref(), options.readonly);
    let url = match (recorded(&*index)?, requested) {
        (None, None) => return Ok((index, false)),
        (Some(url), None) => url,
        (Some(url), Some(asked)) if url == asked => url,
        (Some(url), Some(asked)) => {
            return Err(Error::InvalidArgument(format!(
                "{} keeps its block bodies in {url}, not {asked}: open it without blobs= (the \
                 store remembers where they are)",
                index.describe()
            )))
        }
        (None, Some(asked)) => {
            record(&*index, asked, readonly)?;
            // Two creators racing: whichever recorded first decides; check it is ours.
            return attach(index, options);
        }
    };
    wrap(index, &url, options).map(|s| (s, true))
}

/// Records `url` as the object store of `index`, which must have no commit yet.
fn record(index: &dyn Storage, url: &str, readonly: bool) -> Result<()> {
    check_url(url)?;
    let head = index.head()?;
    if head != Tid::ZERO {
        return Err(Error::InvalidArgument(format!(
            "{} already holds data with its block bodies inside it: object storage (blobs={url}) \
             is chosen when a store is created",
            index.describe()
        )));
    }
    if readonly {
        return Err(Error::ReadOnly(format!(
            "cannot record blobs={url} in the new store {} opened read-only",
            index.describe()
        )));
    }
    let done = index.commit(CommitRequest {
        base: Tid::ZERO,
        writes: vec![(BLOBS_KEY, Write::Store(encode(url)))],
        meta: TxnMeta::new("outcore", format!("block bodies in {url}")),
    });
    match done {
        // Another creator recorded first; `attach` compares its choice with ours.
        Ok(_) | Err(Error::Conflict { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Refuses urls the blob layer cannot use, naming them.
fn check_url(url: &str) -> Result<()> {
    let ok = url
        .strip_prefix("s3://")
        .and_then(|rest| rest.split('/').next())
        .is_some_and(|bucket| !bucket.is_empty())
        && !url.contains(['?', '#', '\n', ' ']);
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "blobs={url:?}: expected s3://bucket or s3://bucket/prefix (endpoint, region and \
             credentials come from the AWS_* environment variables)"
        )))
    }
}

#[cfg(feature = "s3")]
fn wrap(index: Arc<dyn Storage>, url: &str, options: &DbOptions) -> Result<Arc<dyn Storage>> {
    let defaults = super::BlobOptions::default();
    let budget = options
        .cache_disk_bytes
        .unwrap_or(defaults.cache_disk_bytes);
    // The default directory is a convenience: where it cannot be made, no disk cache.
    let cache_dir = match (&options.cache_dir, budget) {
        (_, 0) => None,
        (Some(dir), _) => Some(dir.clone()),
        (None, _) => {
            let endpoint = std::env::var("AWS_ENDPOINT_URL").ok();
            super::cache_home::default_cache_dir(url, endpoint.as_deref()).filter(|d| usable(d))
        }
    };
    let blob_options = super::BlobOptions {
        cache_dir,
        cache_disk_bytes: budget,
        ..defaults
    };
    let store = super::BlobStorage::new(index, url, blob_options)?;
    Ok(Arc::new(store))
}

/// True if the default cache directory `dir` exists or can be made; says why not otherwise.
#[cfg(feature = "s3")]
fn usable(dir: &std::path::Path) -> bool {
    match std::fs::create_dir_all(dir) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(
                "no disk cache of block bodies: cannot create {} ({e}); give cache_dir",
                dir.display()
            );
            false
        }
    }
}

#[cfg(not(feature = "s3"))]
fn wrap(index: Arc<dyn Storage>, url: &str, _options: &DbOptions) -> Result<Arc<dyn Storage>> {
    Err(Error::InvalidArgument(format!(
        "{} keeps its block bodies in {url}: this build of outcore has no object-storage \
         support (cargo feature \"s3\")",
        index.describe()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_bad_records_are_corrupt() {
        let url = "s3://bucket/some/prefix";
        assert_eq!(decode(&encode(url), Tid(1)).unwrap(), url);
        for bad in [
            &b"outcore-blobs 2\ns3://b\n"[..],
            b"outcore-blobs 1\n\n",
            b"\xff",
        ] {
            assert!(matches!(decode(bad, Tid(1)), Err(Error::Corrupt { .. })));
        }
    }

    #[test]
    fn urls_are_checked() {
        for good in ["s3://b", "s3://b/p", "s3://b/p/q"] {
            check_url(good).unwrap();
        }
        for bad in ["", "s3://", "s3:///p", "gs://b/p", "s3://b/p?x=1", "/tmp/x"] {
            let e = check_url(bad).unwrap_err();
            assert!(e.to_string().contains("s3://bucket"), "{e}");
        }
    }

    #[test]
    fn recorded_at_creation_then_found_without_asking() {
        let index: Arc<dyn Storage> = Arc::new(crate::storage::MemStorage::new());
        let ask = |url: &str, readonly: bool| DbOptions {
            blobs: Some(url.into()),
            readonly,
            // No disk cache: nothing made under the user's cache directory.
            cache_disk_bytes: Some(0),
            ..DbOptions::default()
        };
        // Refused where the blob layer cannot follow: bad urls, read-only, data already there.
        assert!(attach(index.clone(), &ask("nope", false)).is_err());
        assert!(matches!(
            attach(index.clone(), &ask("s3://b/p", true)),
            Err(Error::ReadOnly(_))
        ));
        assert_eq!(recorded(&*index).unwrap(), None);
        let with_data: Arc<dyn Storage> = Arc::new(crate::storage::MemStorage::new());
        with_data
            .commit(CommitRequest {
                base: Tid::ZERO,
                writes: vec![(Key::Meta(Oid(1)), Write::Store(b"x".to_vec()))],
                meta: TxnMeta::default(),
            })
            .unwrap();
        let e = attach(with_data, &ask("s3://b/p", false)).unwrap_err();
        assert!(
            e.to_string().contains("chosen when a store is created"),
            "{e}"
        );
        // Recorded in an empty store (whether or not this build can then open it).
        let _ = attach(index.clone(), &ask("s3://b/p", false));
        assert_eq!(recorded(&*index).unwrap().as_deref(), Some("s3://b/p"));
        let e = attach(index.clone(), &ask("s3://other/p", false)).unwrap_err();
        assert!(e.to_string().contains("not s3://other/p"), "{e}");
    }
}
