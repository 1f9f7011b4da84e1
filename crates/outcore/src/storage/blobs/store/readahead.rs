//! Read-ahead for blocks loaded one at a time (the fault-filled path touches a view's blocks
//! that way, a few workers at once): when a load follows another of the same array close
//! behind it, the bodies of the next [`AHEAD`] blocks are fetched in the background, so a
//! sequential scan keeps as many GETs in flight as a parallel fetch of its objects would. A
//! later load of such a block takes the body fetched ahead (waiting for it if it is still on
//! its way) and checks it like any other. At most [`MAX_BYTES`] are held; the oldest bodies
//! fetched ahead and never asked for are dropped first.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::{BlobStorage, Body};
use crate::storage::{Key, Oid, Tid};
use crate::Result;

/// Blocks read ahead of a sequential load.
const AHEAD: u64 = 8;

/// Bytes of bodies fetched ahead (or on their way), at most.
const MAX_BYTES: u64 = 64 << 20;

/// The bodies fetched ahead, shared with the fetches in flight.
#[derive(Debug, Default)]
pub(super) struct ReadAhead {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when a body arrives or is dropped.
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// The block last loaded one at a time, and the last block read ahead of it.
    last: Option<(Oid, u64)>,
    ahead_until: Option<(Oid, u64)>,
    /// By object id, with its length.
    bodies: HashMap<u128, (u64, Slot)>,
    /// Object ids in the order they were asked for, for dropping the oldest.
    order: VecDeque<u128>,
    /// Bytes of `bodies` (their lengths, whether arrived or not).
    bytes: u64,
}

/// A body fetched ahead.
#[derive(Debug)]
enum Slot {
    /// The fetch is on its way.
    Coming,
    /// What the fetch found: the body, `None` for a missing object, or why it failed.
    Arrived(Result<Option<Body>>),
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    fn remove(&mut self, id: u128) -> Option<Slot> {
        let (len, slot) = self.bodies.remove(&id)?;
        self.bytes -= len;
        Some(slot)
    }
}

impl ReadAhead {
    /// Reserves room for object `id` of `len` bytes (dropping the oldest bodies held if
    /// needed); false if it is already asked for or larger than the whole budget.
    fn claim(&self, id: u128, len: u64) -> bool {
        let mut state = self.shared.lock();
        if len > MAX_BYTES || state.bodies.contains_key(&id) {
            return false;
        }
        while state.bytes + len > MAX_BYTES {
            let Some(old) = state.order.pop_front() else {
                break;
            };
            state.remove(old);
        }
        state.bytes += len;
        state.bodies.insert(id, (len, Slot::Coming));
        state.order.push_back(id);
        drop(state);
        self.shared.changed.notify_all();
        true
    }

    /// What the fetch ahead of object `id` found, if there was one (waiting while it is on
    /// its way).
    fn take(&self, id: u128) -> Option<Result<Option<Body>>> {
        let mut state = self.shared.lock();
        loop {
            match state.bodies.get(&id) {
                None => return None,
                Some((_, Slot::Coming)) => {
                    state = self
                        .shared
                        .changed
                        .wait(state)
                        .unwrap_or_else(|p| p.into_inner());
                }
                Some((_, Slot::Arrived(_))) => {
                    state.order.retain(|&o| o != id);
                    return match state.remove(id) {
                        Some(Slot::Arrived(got)) => Some(got),
                        _ => None,
                    };
                }
            }
        }
    }

    /// What a fetch ahead of object `id` delivers (stored unless dropped meanwhile).
    fn arrived(shared: &Shared, id: u128, got: Result<Option<Body>>) {
        let mut state = shared.lock();
        if let Some((_, slot @ Slot::Coming)) = state.bodies.get_mut(&id) {
            *slot = Slot::Arrived(got);
        }
        drop(state);
        shared.changed.notify_all();
    }
}

impl BlobStorage {
    /// The version of one block (its tid and body): from the bodies fetched ahead if
    /// there, else as `load_many` does; then, for a load close behind the previous one of the
    /// same array, the next blocks' bodies are fetched ahead.
    pub(super) fn load_block(&self, key: Key, at: Tid) -> Result<Option<(Tid, Arc<Body>)>> {
        let Some(v) = self.index.load(key, at)? else {
            return Ok(None);
        };
        let p = self.pointer(key, v.tid, &v.data)?;
        if let Key::Block { file, index } = key {
            self.read_ahead(file, index, at);
        }
        if p.has_object() {
            if let Some(got) = self.read_ahead.take(p.id) {
                let body = Arc::new(self.check(key, v.tid, &p, got?)?);
                self.keep(p.id, &body);
                return Ok(Some((v.tid, body)));
            }
        }
        let mut got = self.fetch(&[(key, v.tid, &v.data)], true)?;
        let body = got.pop().expect("one body per version")?;
        Ok(Some((v.tid, body)))
    }

    /// Starts fetching ahead of block `index` of `file` if the previous single load was of
    /// a block of the same array at most [`AHEAD`] blocks away. Best effort: failures only
    /// mean no read-ahead.
    fn read_ahead(&self, file: Oid, index: u64, at: Tid) {
        let from = {
            let mut state = self.read_ahead.shared.lock();
            let close = state
                .last
                .is_some_and(|(f, i)| f == file && i.abs_diff(index) <= AHEAD);
            state.last = Some((file, index));
            if !close {
                return;
            }
            let from = match state.ahead_until {
                Some((f, until)) if f == file && until >= index => until + 1,
                _ => index + 1,
            };
            let to = index + AHEAD;
            if from > to {
                return;
            }
            state.ahead_until = Some((file, to));
            from
        };
        let keys: Vec<Key> = (from..=index + AHEAD)
            .map(|index| Key::Block { file, index })
            .collect();
        let Ok(records) = self.index.load_many(&keys, at) else {
            return;
        };
        for (key, v) in keys.into_iter().zip(records) {
            let Some(p) = v.and_then(|v| self.pointer(key, v.tid, &v.data).ok()) else {
                continue;
            };
            let cached = self
                .cache
                .as_ref()
                .is_some_and(|c| c.get(p.id, p.len).is_some());
            if !p.has_object() || cached || !self.read_ahead.claim(p.id, p.len) {
                continue;
            }
            let shared = self.read_ahead.shared.clone();
            let id = p.id;
            let path = self.objects.path(key, id);
            self.objects.spawn_get(key, path, p.len, move |got| {
                ReadAhead::arrived(&shared, id, got)
            });
        }
    }
}
