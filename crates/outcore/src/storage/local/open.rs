//! Opening a [`LocalStorage`](super::LocalStorage): creating or checking the directory, the
//! index and the format, writable or on read-only media.

use super::*;

impl Shared {
    pub(super) fn open(dir: PathBuf, options: &LocalOptions) -> Result<Self> {
        let mut env_options = EnvOpenOptions::new().read_txn_without_tls();
        env_options.map_size(options.map_size).max_dbs(8);
        // SAFETY: the registry guarantees this process opens the environment once, and no
        // code of ours truncates or writes the LMDB files other than through LMDB.
        let env = unsafe { env_options.open(dir.join("index")) }?;
        // Readers left behind by killed processes would otherwise pin pages forever.
        env.clear_stale_readers()?;
        let mut wtxn = env.write_txn()?;
        let versions = env.create_database(&mut wtxn, Some("versions"))?;
        let log = env.create_database(&mut wtxn, Some("log"))?;
        let meta: Database<Str, Bytes> = env.create_database(&mut wtxn, Some("meta"))?;
        let format = get_u64(&meta, &wtxn, META_FORMAT)?;
        let compression = if format == 0 {
            put_u64(&meta, &mut wtxn, META_FORMAT, FORMAT_VERSION)?;
            put_u64(&meta, &mut wtxn, META_NEXT_OID, 1)?;
            meta.put(&mut wtxn, META_COMPRESSION, &[options.compression.code()])?;
            options.compression
        } else if !(OLDEST_FORMAT..=FORMAT_VERSION).contains(&format) {
            return Err(Error::Format {
                path: dir,
                reason: format!(
                    "format version {format}, this build reads {OLDEST_FORMAT} to {FORMAT_VERSION}"
                ),
            });
        } else {
            stored_compression(&meta, &wtxn, &dir)?
        };
        wtxn.commit()?;
        let stager = staging::Stager::new(&dir);
        Ok(Shared {
            identity: dir_identity(&dir.join("index"))?,
            segments: SegmentDir::open(dir.join("segments"), true)?,
            leases: LeaseDir::open(dir.join("leases"), true)?,
            dir,
            env,
            versions,
            log,
            meta,
            compression,
            segment_bytes: options.segment_bytes.max(segment::PAGE),
            writable: true,
            spare_oids: std::sync::Mutex::new(0..0),
            stager,
        })
    }

    /// Opens an existing store without writing anything: the index read-only (without LMDB's
    /// lock file if it cannot be written), no directory created, readers unleased.
    pub(super) fn open_readonly(dir: PathBuf, options: &LocalOptions) -> Result<Self> {
        let index = dir.join("index");
        let open = |flags: EnvFlags| {
            let mut env_options = EnvOpenOptions::new().read_txn_without_tls();
            env_options.map_size(options.map_size).max_dbs(8);
            // SAFETY: READ_ONLY makes LMDB write nothing. NO_LOCK (only tried when the lock
            // file cannot be written) drops the reader table: LMDB then cannot keep writers
            // of other processes from reusing pages this reader is on, the documented
            // limit of read-only opens of media others still write (module comment). The
            // registry guarantees this process opens the environment once.
            unsafe {
                env_options.flags(flags);
                env_options.open(&index)
            }
        };
        let env = match open(EnvFlags::READ_ONLY) {
            Err(heed::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::PermissionDenied
                        | std::io::ErrorKind::ReadOnlyFilesystem
                        | std::io::ErrorKind::StorageFull
                        | std::io::ErrorKind::QuotaExceeded
                ) =>
            {
                open(EnvFlags::READ_ONLY | EnvFlags::NO_LOCK)?
            }
            other => other?,
        };
        let rtxn = env.read_txn()?;
        let not_a_store = || Error::Format {
            path: dir.clone(),
            reason: "the index holds no outcore store".into(),
        };
        let versions = env
            .open_database(&rtxn, Some("versions"))?
            .ok_or_else(not_a_store)?;
        let log = env
            .open_database(&rtxn, Some("log"))?
            .ok_or_else(not_a_store)?;
        let meta: Database<Str, Bytes> = env
            .open_database(&rtxn, Some("meta"))?
            .ok_or_else(not_a_store)?;
        let format = get_u64(&meta, &rtxn, META_FORMAT)?;
        if !(OLDEST_FORMAT..=FORMAT_VERSION).contains(&format) {
            return Err(Error::Format {
                path: dir,
                reason: format!(
                    "format version {format}, this build reads {OLDEST_FORMAT} to {FORMAT_VERSION}"
                ),
            });
        }
        let compression = stored_compression(&meta, &rtxn, &dir)?;
        // Makes the database handles valid beyond this transaction.
        rtxn.commit()?;
        let stager = staging::Stager::new(&dir);
        Ok(Shared {
            identity: dir_identity(&index)?,
            segments: SegmentDir::open(dir.join("segments"), false)?,
            leases: LeaseDir::open(dir.join("leases"), false)?,
            dir,
            env,
            versions,
            log,
            meta,
            compression,
            segment_bytes: options.segment_bytes.max(segment::PAGE),
            writable: false,
            spare_oids: std::sync::Mutex::new(0..0),
            stager,
        })
    }
}
