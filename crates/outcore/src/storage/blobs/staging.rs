//! Staged block bodies in object storage: written by one process (a dask worker) before the
//! commit another process makes publishes them (see `storage/staged.rs`).
//!
//! * **Stage**: upload the body now, as the object `<prefix>/<file>/<block>/<id>` a commit of
//!   that block would write (a random 128-bit id: no collision, nothing overwritten). The
//!   reference is the id, length and checksum.
//! * **Publish**: the commit checks each such object is there with the reference's length and
//!   young enough (below half the grace period) that pack cannot delete it before the index
//!   commit ends, then commits the index with pointer records to them, exactly as for bodies
//!   it uploads itself.
//! * **Reclaim**: nothing extra. An object no index version points at is garbage to pack once
//!   older than the grace period — the rule that already removes the uploads of failed
//!   commits — so a body staged by a process that crashed, or never published, goes with the
//!   first pack after the grace. The grace is the only hold: a body staged longer ago than
//!   half of it can no longer be published (stage it again).

use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::objects::Objects;
use super::pointer::Pointer;
use crate::storage::codec::checksum;
use crate::storage::delta::used_len;
use crate::storage::{Key, StagedHold, StagedPlace, StagedRef, Write};
use crate::{Error, Result};

/// [`Storage::stage_body`](crate::storage::Storage::stage_body) for object storage.
pub(super) fn stage(objects: &Objects, key: Key, bytes: &[u8]) -> Result<Option<StagedRef>> {
    if !key.is_block() {
        return Err(Error::InvalidArgument(format!(
            "{key}: only block versions can be staged"
        )));
    }
    let body = &bytes[..used_len(bytes)];
    let id = if body.is_empty() {
        0
    } else {
        let id = rand::random::<u128>().max(1);
        objects.put_all(vec![(objects.path(key, id), Bytes::copy_from_slice(body))])?;
        id
    };
    Ok(Some(StagedRef {
        key,
        place: StagedPlace::Object(id),
        len: body.len() as u64,
        checksum: checksum(body),
    }))
}

/// The object id of a body this kind of store staged.
fn object_of(version: &StagedRef) -> Result<u128> {
    match version.place {
        StagedPlace::Object(id) if (id == 0) == (version.len == 0) => Ok(id),
        _ => Err(version.foreign("an object store")),
    }
}

/// Checks that the objects of `versions` are there with their length, and were written less
/// than `within` ago; `what` says what for, in messages.
fn check(objects: &Objects, versions: &[StagedRef], within: Duration, what: &str) -> Result<()> {
    let mut paths = Vec::new();
    let mut with_object = Vec::new();
    for r in versions {
        if object_of(r)? != 0 {
            paths.push(objects.path(r.key, object_of(r)?));
            with_object.push(r);
        }
    }
    let now = SystemTime::now();
    for ((r, path), found) in with_object
        .iter()
        .zip(&paths)
        .zip(objects.head_all(&paths)?)
    {
        let Some((size, written)) = found else {
            return Err(Error::NotFound(format!(
                "{r} is gone (object {path} of {}: reclaimed by a pack after the grace \
                 period); {what}",
                objects.url()
            )));
        };
        if size != r.len {
            return Err(Error::InvalidArgument(format!(
                "{r}: object {path} holds {size} bytes; {what}"
            )));
        }
        let age = now.duration_since(written).unwrap_or_default();
        if age >= within {
            return Err(Error::InvalidArgument(format!(
                "{r} was staged {age:?} ago, too close to the grace period after which pack \
                 deletes unpublished objects ({within:?} at most); {what}: stage it again"
            )));
        }
    }
    Ok(())
}

/// [`Storage::hold_staged`](crate::storage::Storage::hold_staged) for object storage: checks
/// the object is there; the grace period keeps it, so the hold holds nothing.
pub(super) fn hold(objects: &Objects, grace: Duration, version: &StagedRef) -> Result<StagedHold> {
    check(
        objects,
        std::slice::from_ref(version),
        grace / 2,
        "it cannot be published",
    )?;
    Ok(StagedHold::new(format!(
        "{version} (kept by the grace period)"
    )))
}

/// Turns the writes that publish staged objects ([`Write::Adopt`]) into the pointer records
/// the index keeps, after checking the objects (see the module docs).
pub(super) fn publish(
    objects: &Objects,
    grace: Duration,
    writes: &mut [(Key, Write)],
) -> Result<()> {
    let adopted = crate::storage::types::adopted(writes)?;
    if adopted.is_empty() {
        return Ok(());
    }
    let refs: Vec<StagedRef> = adopted.iter().map(|(_, r)| *r).collect();
    check(objects, &refs, grace / 2, "nothing was committed")?;
    for (i, r) in adopted {
        let pointer = Pointer {
            id: object_of(&r)?,
            len: r.len,
            checksum: r.checksum,
        };
        writes[i].1 = Write::Store(pointer.encode());
    }
    Ok(())
}
