//! The commit path of [`LocalStorage`](super::LocalStorage): checking conflicts, writing
//! block bodies into the segments (or recording staged ones), and the index transaction
//! that publishes them.

use super::*;

impl Shared {
    pub(super) fn commit(&self, req: CommitRequest) -> Result<Tid> {
        let s = self;
        // Outside the writer lock: make staged versions durable, and describe them.
        let staged = s.staged_records(&req)?;
        let mut txn = s.env.write_txn()?;
        // Versions other processes staged: their segments must still exist, and stay until
        // this commit names them (pack deletes staging segments under the exclusive lock).
        let _adopting = s.check_adopted(&req)?;
        let mut tips = Vec::with_capacity(req.writes.len());
        for (key, _) in &req.writes {
            let current = s.newest(&txn, *key, Tid::MAX)?;
            if let Some((committed, _)) = current {
                if committed > req.base {
                    return Err(Error::Conflict {
                        key: *key,
                        base: req.base,
                        committed,
                    });
                }
            }
            tips.push(current.and_then(|(_, rec)| rec.tip()));
        }
        let tid = Tid::next_after(Tid(get_u64(&s.meta, &txn, META_HEAD)?));
        let mut seg_state = (
            get_u64(&s.meta, &txn, META_SEGMENT)? as u32,
            get_u64(&s.meta, &txn, META_TAIL)?,
        );
        // Declared before the segment file so that the file is closed first on failure.
        let appended = Uncommitted::new(&s.segments, seg_state.0, seg_state.1);
        let mut segment_file = None;
        let mut records = Vec::with_capacity(req.writes.len());
        for (((key, write), tip), staged) in req.writes.iter().zip(tips).zip(&staged) {
            let record = match staged {
                Some(record) => record.clone(),
                None => s.prepare(*key, write, tip, &mut segment_file, &mut seg_state)?,
            };
            records.push((*key, record));
        }
        if records.iter().any(|(_, r)| r.delta().is_some())
            && get_u64(&s.meta, &txn, META_FORMAT)? < FORMAT_VERSION
        {
            // The first delta in a store written by format 1 upgrades it, atomically with
            // the commit: builds that read only format 1 refuse it from now on.
            put_u64(&s.meta, &mut txn, META_FORMAT, FORMAT_VERSION)?;
        }
        if let Some((file, _)) = &segment_file {
            file.sync_data()
                .map_err(|e| Error::io("syncing segment", e))?;
        }
        let mut keys: Vec<Key> = Vec::with_capacity(records.len());
        for (key, record) in &records {
            s.versions
                .put(&mut txn, &version_key(*key, tid)[..], &record.encode())?;
            keys.push(*key);
        }
        keys.sort();
        let entry = encode_log(&req.meta.user, &req.meta.description, &keys);
        s.log.put(&mut txn, &tid.0.to_be_bytes()[..], &entry)?;
        put_u64(&s.meta, &mut txn, META_HEAD, tid.0)?;
        put_u64(&s.meta, &mut txn, META_SEGMENT, u64::from(seg_state.0))?;
        put_u64(&s.meta, &mut txn, META_TAIL, seg_state.1)?;
        txn.commit()?;
        appended.keep();
        for ((key, write), staged) in req.writes.iter().zip(&staged) {
            if let (Write::Staged { extent, .. }, true, Some(record)) =
                (write, key.is_block(), staged)
            {
                extent.publish(record.raw_len);
            }
        }
        Ok(tid)
    }

    /// For a commit that publishes versions other processes staged: the shared staging lock,
    /// held until the commit is done, after checking each such version lies in an existing
    /// staging segment. A version a pack reclaimed fails the commit (nothing written).
    fn check_adopted(&self, req: &CommitRequest) -> Result<Option<File>> {
        let adopted: Vec<(Key, super::StagedRef)> = req
            .writes
            .iter()
            .filter_map(|(k, w)| match w {
                Write::Adopt(r) => Some((*k, *r)),
                _ => None,
            })
            .collect();
        if adopted.is_empty() {
            return Ok(None);
        }
        let lock = self.stager.lock(false)?;
        for (key, r) in adopted {
            let (segment, offset) = staging::place_of(&r)?;
            let size = std::fs::metadata(self.segments.path(segment)).map(|m| m.len());
            if !size.is_ok_and(|size| size >= offset + r.len) {
                return Err(Error::NotFound(format!(
                    "{key}: the staged version {r:?} is gone (its writer ended and a pack \
                     reclaimed it before this commit); nothing was committed: compute it again"
                )));
            }
        }
        Ok(Some(lock))
    }

    /// The records of the writes of `req` that publish space this store staged (`None` for
    /// the others), after syncing their files: a published extent must be durable before the
    /// index names it.
    fn staged_records(&self, req: &CommitRequest) -> Result<Vec<Option<VersionRecord>>> {
        let mut synced: Vec<u32> = Vec::new();
        let mut out = Vec::with_capacity(req.writes.len());
        for (key, write) in &req.writes {
            if let Write::Adopt(r) = write {
                let (seg, offset) = staging::place_of(r)?;
                if !key.is_block() || r.key != *key {
                    return Err(Error::InvalidArgument(format!(
                        "{key}: {r} was staged for another block"
                    )));
                }
                out.push(Some(VersionRecord {
                    codec: Compression::None,
                    checksum: r.checksum,
                    raw_len: r.len,
                    body: Body::Segment {
                        seg,
                        offset,
                        stored_len: r.len,
                    },
                }));
                continue;
            }
            let Write::Staged { extent, from } = write else {
                out.push(None);
                continue;
            };
            if !key.is_block()
                || !extent.belongs_to(self.identity)
                || self.compression != Compression::None
            {
                // Stored like any other new version (its bytes copied).
                out.push(None);
                continue;
            }
            let bytes = from.bytes();
            if bytes.len() as u64 > extent.len() {
                return Err(Error::InvalidArgument(format!(
                    "{key}: {} bytes do not fit the {} bytes staged for them",
                    bytes.len(),
                    extent.len()
                )));
            }
            let used = crate::storage::delta::used_len(bytes);
            if used == 0 {
                out.push(Some(VersionRecord::tombstone()));
                continue;
            }
            if !synced.contains(&extent.segment()) {
                extent
                    .file()
                    .sync_data()
                    .map_err(|e| Error::io("syncing staged versions", e))?;
                synced.push(extent.segment());
            }
            out.push(Some(VersionRecord {
                codec: Compression::None,
                checksum: codec::checksum(&bytes[..used]),
                raw_len: used as u64,
                body: Body::Segment {
                    seg: extent.segment(),
                    offset: extent.offset(),
                    stored_len: used as u64,
                },
            }));
        }
        Ok(out)
    }
}
