//! The process's budget of uncommitted writes held in private memory, and the thread that
//! keeps them under it by spilling blocks (see `mapped/spill.rs`).
//!
//! Writes to privately mapped blocks are anonymous memory the kernel cannot write back: a
//! transaction writing more than RAM would be killed. Writable memories of stores that can
//! stage register here ([`watch`]). A background thread (`outcore-spill`) checks every
//! [`POLL`] how much anonymous memory the process holds (`/proc/self/statm`, cheap); only when
//! that exceeds the budget does it scan the registered memories' page tables for written
//! blocks, and spills the most written ones until they hold at most half the budget. While it
//! does, writes to the memories' blocks not written yet wait (`BlockMemory::throttle`):
//! a program writing faster than the disk takes would otherwise outgrow the budget while
//! spilling runs behind.
//!
//! The budget is `OUTCORE_DIRTY_BYTES`, [`set_dirty_budget`], or by default a quarter of the
//! memory available to the process (RAM, or the memory cgroup's limit if lower).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::BlockMemory;

/// How often the spill thread looks at the process's anonymous memory.
const POLL: Duration = Duration::from_millis(10);

/// 0 until set or first computed.
static BUDGET: AtomicU64 = AtomicU64::new(0);

/// Writable memories that can spill, and the process that started the spill thread (a forked
/// child starts its own).
static WATCHED: Mutex<Watched> = Mutex::new(Watched {
    memories: Vec::new(),
    thread_of: 0,
});

struct Watched {
    memories: Vec<Weak<BlockMemory>>,
    thread_of: u32,
}

/// Sets the process-wide budget of uncommitted writes kept in private memory, in bytes.
pub fn set_dirty_budget(bytes: u64) {
    BUDGET.store(bytes.max(1), Ordering::Relaxed);
}

/// The process-wide budget of uncommitted writes kept in private memory, in bytes.
pub fn dirty_budget() -> u64 {
    match BUDGET.load(Ordering::Relaxed) {
        0 => {
            let computed = std::env::var("OUTCORE_DIRTY_BYTES")
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|&v| v > 0)
                .unwrap_or_else(|| available_memory() / 4);
            let _ = BUDGET.compare_exchange(0, computed, Ordering::Relaxed, Ordering::Relaxed);
            BUDGET.load(Ordering::Relaxed)
        }
        b => b,
    }
}

/// Registers `memory` with the spill thread (started on first use).
pub(crate) fn watch(memory: &Arc<BlockMemory>) {
    let mut w = WATCHED.lock().unwrap_or_else(|p| p.into_inner());
    w.memories.retain(|m| m.strong_count() > 0);
    w.memories.push(Arc::downgrade(memory));
    let pid = std::process::id();
    if w.thread_of != pid {
        let started = std::thread::Builder::new()
            .name("outcore-spill".into())
            .spawn(run);
        match started {
            Ok(_) => w.thread_of = pid,
            Err(e) => tracing::warn!("cannot start the spill thread ({e}): writes stay in RAM"),
        }
    }
}

/// The spill thread: never ends (it holds no resource a process exit would need).
fn run() {
    // Anonymous memory at the last scan that found the writes within budget: memory the
    // process holds for other things is not scanned for again until it grows.
    let mut quiet_at: Option<u64> = None;
    loop {
        std::thread::sleep(POLL);
        let budget = dirty_budget();
        let anon = anonymous_memory();
        if anon <= budget || quiet_at.is_some_and(|q| anon < q.saturating_add(budget / 4)) {
            continue;
        }
        match spill_round(budget) {
            // Within budget before any spilling: the anonymous memory is the program's own.
            Ok((before, _)) if before <= budget => quiet_at = Some(anon),
            Ok(_) => quiet_at = None,
            Err(e) => {
                tracing::warn!("spilling uncommitted writes failed: {e}");
                quiet_at = Some(anon);
            }
        }
    }
}

/// If the watched memories hold more than `budget` bytes of written private pages, spills
/// blocks (most written first) until they hold at most half of it. Returns the written bytes
/// left in private memory.
pub fn spill_over(budget: u64) -> crate::Result<u64> {
    spill_round(budget).map(|(_, after)| after)
}

/// [`spill_over`], returning the written bytes in private memory before and after.
fn spill_round(budget: u64) -> crate::Result<(u64, u64)> {
    // No fork while blocks are read-only behind barriers (the child could not lower them).
    let _moving = super::barrier::MovingMemory::begin()?;
    let memories: Vec<Arc<BlockMemory>> = {
        let mut w = WATCHED.lock().unwrap_or_else(|p| p.into_inner());
        w.memories.retain(|m| m.strong_count() > 0);
        w.memories.iter().filter_map(Weak::upgrade).collect()
    };
    let mut candidates: Vec<(usize, u64, usize)> = Vec::new();
    for (i, m) in memories.iter().enumerate() {
        candidates.extend(m.spillable()?.into_iter().map(|(b, n)| (i, b, n)));
    }
    let mut failed: Option<crate::Error> = None;
    let mut dirty: u64 = candidates.iter().map(|c| c.2 as u64).sum();
    let before = dirty;
    if dirty <= budget {
        return Ok((before, dirty));
    }
    // Writers faster than the disk would outrun the spilling: writes to blocks not written
    // yet wait until it is done (writes to written blocks go on).
    let mut throttles = Vec::with_capacity(memories.len());
    for (i, m) in memories.iter().enumerate() {
        let written: std::collections::BTreeSet<u64> = candidates
            .iter()
            .filter(|c| c.0 == i)
            .map(|c| c.1)
            .collect();
        match m.throttle(&written) {
            Ok(t) => throttles.extend(t),
            Err(e) => tracing::warn!("cannot hold up writers while spilling: {e}"),
        }
    }
    // Most written first; among equals, lower blocks (a sequential writer is past them).
    candidates.sort_by_key(|&(i, b, n)| (std::cmp::Reverse(n), i, b));
    let target = budget / 2;
    let mut refused = vec![false; memories.len()];
    for (i, b, n) in candidates {
        if dirty <= target {
            break;
        }
        if refused[i] {
            continue;
        }
        match memories[i].spill(b) {
            Ok(true) => dirty -= n as u64,
            // No space staged for it (compressed or remote store, file system nearly full):
            // its writes stay in memory.
            Ok(false) => refused[i] = true,
            Err(e) => {
                // One memory failing (its database closed, a write error) leaves the others.
                refused[i] = true;
                failed.get_or_insert(e);
            }
        }
    }
    drop(throttles);
    match failed {
        Some(e) if dirty > budget => Err(e),
        _ => Ok((before, dirty)),
    }
}

/// Anonymous memory of this process (resident minus file-backed and shared), in bytes.
fn anonymous_memory() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return u64::MAX;
    };
    let fields: Vec<u64> = statm
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    match fields[..] {
        [_, resident, shared, ..] => resident.saturating_sub(shared) * page_size(),
        _ => u64::MAX,
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// RAM, or the memory cgroup's limit where that is lower (cgroup v2 `memory.max`, v1
/// `memory.limit_in_bytes`).
fn available_memory() -> u64 {
    let ram = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(u64::MAX, |kb| kb * 1024);
    ram.min(cgroup_limit().unwrap_or(u64::MAX))
}

fn cgroup_limit() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut limit = None::<u64>;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let file = if controllers.is_empty() {
            format!("/sys/fs/cgroup{path}/memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes")
        } else {
            continue;
        };
        if let Some(v) = std::fs::read_to_string(file)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            limit = Some(limit.map_or(v, |l| l.min(v)));
        }
    }
    limit
}
