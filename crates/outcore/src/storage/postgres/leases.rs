//! Reader leases of [`PgStorage`](super::PgStorage): rows of `outcore_lease` with a heartbeat
//! this process renews (every sixth of the lease timeout, on its own thread) for every lease
//! it holds, including the staging lease that keeps the bodies it stages or holds from pack.
//! Pack ignores leases whose heartbeat is older than the lease timeout (module docs).

use super::*;

/// Renews this process's leases until the store is dropped.
pub(super) fn spawn_heartbeat(inner: Weak<Inner>) {
    std::thread::Builder::new()
        .name("outcore-pg-heartbeat".into())
        .spawn(move || loop {
            let Some(period) = inner.upgrade().map(|i| i.lease_timeout / 6) else {
                return;
            };
            std::thread::sleep(period);
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let ids: Vec<i64> = inner
                .leases
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .copied()
                .collect();
            if !ids.is_empty() {
                let r = inner.with_client(|c| {
                    Ok(c.execute(
                        "UPDATE outcore_lease SET heartbeat = now() WHERE id = ANY($1)",
                        &[&ids],
                    )?)
                });
                if let Err(e) = r {
                    tracing::warn!("renewing outcore leases failed (will retry): {e}");
                }
            }
        })
        .ok();
}

impl Inner {
    /// This process's staging lease (a lease at the newest tid, pinning no history, renewed
    /// by the heartbeat like every lease), registered on first use.
    pub(super) fn staging_lease(&self) -> Result<i64> {
        let mut lease = self.staging_lease.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = *lease {
            return Ok(id);
        }
        let id = self.insert_lease(Tid::MAX)?;
        *lease = Some(id);
        Ok(id)
    }

    /// [`Storage::acquire_lease`]: a new lease row at `at`, renewed until released.
    pub(super) fn acquire_lease(&self, at: Tid) -> Result<u64> {
        Ok(self.insert_lease(at)? as u64)
    }

    /// A new lease row at `at`, registered for the heartbeat to renew: its id.
    fn insert_lease(&self, at: Tid) -> Result<i64> {
        let id: i64 = self.with_client(|c| {
            Ok(c.query_one(
                "INSERT INTO outcore_lease (tid) VALUES ($1) RETURNING id",
                &[&db_tid(at)],
            )?
            .get(0))
        })?;
        self.leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
        Ok(id)
    }

    /// [`Storage::renew_lease`].
    pub(super) fn renew_lease(&self, id: u64, at: Tid) -> Result<()> {
        let id = id as i64;
        let held = self
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id);
        // A held lease that expired (its process paused past the lease timeout) and was
        // deleted by pack is registered again: the reader moves on to a new snapshot. Safe
        // even if a pack slips in first: reads below its horizon fail, never show other data.
        let n = self.with_client(|c| {
            let n = if held {
                c.execute(
                    "INSERT INTO outcore_lease (id, tid) VALUES ($1, $2)
                     ON CONFLICT (id) DO UPDATE SET tid = $2, heartbeat = now()",
                    &[&id, &db_tid(at)],
                )?
            } else {
                c.execute(
                    "UPDATE outcore_lease SET tid = $2, heartbeat = now() WHERE id = $1",
                    &[&id, &db_tid(at)],
                )?
            };
            Ok(n)
        })?;
        if n == 0 {
            return Err(Error::NotFound(format!(
                "lease {id} (expired after {:?} without heartbeat?)",
                self.lease_timeout
            )));
        }
        Ok(())
    }

    /// [`Storage::release_lease`].
    pub(super) fn release_lease(&self, id: u64) {
        self.leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(id as i64));
        let id = id as i64;
        let _ =
            self.with_client(|c| Ok(c.execute("DELETE FROM outcore_lease WHERE id = $1", &[&id])?));
    }
}
