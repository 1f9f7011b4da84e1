//! The disk cache as the store uses it: hits are answered at once, fetched bodies are written
//! by a background thread. Writing and syncing a body costs more than fetching it over a
//! fast network (a cold scan from the test server ran at half the speed with the writes on
//! the fetch path), and whoever fetched it needs the bytes, not the file. The queue shares
//! each body with its fetcher (no copy). A body that finds [`MAX_QUEUED`] bytes already
//! waiting is not cached (it is fetched again next time).

use std::collections::VecDeque;
use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::body::Body;
use super::cache::DiskCache;
use crate::{Error, Result};

/// Bytes of bodies waiting to be written, at most.
const MAX_QUEUED: u64 = 128 << 20;

/// Bodies written and synced together, at most.
const BATCH: usize = 32;

/// A [`DiskCache`] with its writer thread.
#[derive(Debug)]
pub(crate) struct CachedBodies {
    cache: Arc<DiskCache>,
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
    /// The process that started `writer`: a forked child has no such thread to wait for.
    pid: u32,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<Queue>,
    /// Signalled when a body is queued, written, or the store closes.
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Queue {
    bodies: VecDeque<(u128, Arc<Body>)>,
    /// Bytes queued or being written.
    bytes: u64,
    /// Bodies being written (taken off the queue, not yet in the cache).
    writing: usize,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl CachedBodies {
    /// The cache in `dir` (created if missing) of at most about `budget` bytes.
    pub fn open(dir: &Path, budget: u64) -> Result<CachedBodies> {
        let cache = Arc::new(DiskCache::open(dir, budget)?);
        let shared = Arc::new(Shared::default());
        let writer = {
            let (cache, shared) = (cache.clone(), shared.clone());
            std::thread::Builder::new()
                .name("outcore-cache".into())
                .spawn(move || write_queued(&cache, &shared))
                .map_err(|e| Error::io("starting the disk cache's writer thread", e))?
        };
        Ok(CachedBodies {
            cache,
            shared,
            writer: Some(writer),
            pid: std::process::id(),
        })
    }

    /// The cached body `id` of `len` bytes (see [`DiskCache::get`]).
    pub fn get(&self, id: u128, len: u64) -> Option<File> {
        self.cache.get(id, len)
    }

    /// Queues body `id` for the cache, unless too much is waiting (or this is a forked
    /// child, without the writer thread).
    pub fn put(&self, id: u128, body: Arc<Body>) {
        let len = body.len() as u64;
        let mut queue = self.shared.lock();
        let forked = std::process::id() != self.pid;
        if forked || queue.closed || queue.bytes + len > MAX_QUEUED {
            return;
        }
        queue.bytes += len;
        queue.bodies.push_back((id, body));
        drop(queue);
        self.shared.changed.notify_all();
    }

    /// Waits until every body queued so far is in the cache (or failed to be written); in a
    /// forked child, which has no writer thread, returns at once.
    pub fn flush(&self) {
        if std::process::id() != self.pid {
            return;
        }
        let mut queue = self.shared.lock();
        while !queue.bodies.is_empty() || queue.writing > 0 {
            queue = self
                .shared
                .changed
                .wait(queue)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// The writer thread: writes queued bodies, up to [`BATCH`] at a time (synced together),
/// until the store closes and the queue is empty.
fn write_queued(cache: &DiskCache, shared: &Shared) {
    let mut queue = shared.lock();
    loop {
        if !queue.bodies.is_empty() {
            let n = queue.bodies.len().min(BATCH);
            let batch: Vec<(u128, Arc<Body>)> = queue.bodies.drain(..n).collect();
            queue.writing += n;
            drop(queue);
            let bodies: Vec<(u128, &Body)> = batch.iter().map(|(id, b)| (*id, &**b)).collect();
            cache.put_all(&bodies);
            queue = shared.lock();
            queue.writing -= n;
            queue.bytes -= batch.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
            shared.changed.notify_all();
        } else if queue.closed {
            return;
        } else {
            queue = shared
                .changed
                .wait(queue)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Drop for CachedBodies {
    /// Writes what is queued, then ends the writer; in a forked child (which has no writer
    /// thread) drops the queue.
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
        if std::process::id() == self.pid {
            if let Some(writer) = self.writer.take() {
                let _ = writer.join();
            }
        }
    }
}
