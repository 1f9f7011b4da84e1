//! Races in the fault path (userfaultfd), through the public API: many threads faulting the
//! same and different blocks while others re-map, discard and evict them (a small RAM budget),
//! create and drop memories, and commit, abort and invalidate through connections. Every value
//! read is checked: it must belong to its block and offset and to a version the block can hold
//! at that moment.
//!
//! Also run under ThreadSanitizer by `scripts/sanitizers.sh`. `OUTCORE_RACE_SCALE` (default 1)
//! multiplies the iteration counts.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use outcore::array::Order;
use outcore::db::{Database, DbOptions};
use outcore::vm::{Backing, BlockMemory, BlockSource, Fetch};
use outcore::{Error, Result};

/// The tests change the process-wide budget: one at a time.
static BUDGET: Mutex<()> = Mutex::new(());

fn available() -> bool {
    common::uffd_available()
}

fn scale(n: u64) -> u64 {
    let s: u64 = std::env::var("OUTCORE_RACE_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    n * s.max(1)
}

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// ---- BlockMemory with fetch backings -------------------------------------------------------

const BLK: usize = 256 << 10;
const WORDS: usize = BLK / 8;

/// Word `i` of version `generation` of `block`.
fn word(block: u64, generation: u64, i: usize) -> u64 {
    (block << 44) | (generation << 24) | i as u64
}

struct Versioned {
    block: u64,
    generation: u64,
}

impl Fetch for Versioned {
    fn fetch(&self) -> Result<Vec<u8>> {
        let words: Vec<u64> = (0..WORDS)
            .map(|i| word(self.block, self.generation, i))
            .collect();
        Ok(words.iter().flat_map(|w| w.to_le_bytes()).collect())
    }
    fn describe(&self) -> String {
        format!("block {} generation {}", self.block, self.generation)
    }
}

/// Backings at the current generation of each block.
struct Source(Arc<Vec<AtomicU64>>);

impl BlockSource for Source {
    fn backing(&self, block: u64) -> Result<Backing> {
        Ok(Backing::Fetch(Arc::new(Versioned {
            block,
            generation: self.0[block as usize].load(Ordering::SeqCst),
        })))
    }
}

fn read_word(mem: &BlockMemory, block: u64, i: usize) -> u64 {
    // SAFETY (test): the block is mapped for the memory's life; reading faults it in.
    unsafe { std::ptr::read_volatile(mem.block_ptr(block).cast::<u64>().add(i)) }
}

#[test]
fn faults_race_discards_and_evictions() {
    block_memory_races(false, false);
}

/// Without the uffd fixes of main's a204eb2 ("re-registration keeps the registered mapping"),
/// a reader racing a re-map of its block reads zeros.
#[test]
fn faults_race_remaps() {
    block_memory_races(true, false);
}

/// Without the uffd fixes of main's a204eb2 ("closed regions refuse late copies"), a new
/// memory at the address of a dropped one can show the dropped one's data.
#[test]
fn faults_race_memories_created_and_dropped() {
    block_memory_races(false, true);
}

/// Readers fault random words (half of them on 4 hot blocks) of a memory over a small budget
/// while a thread discards blocks, and, if asked, another re-maps blocks to new versions and
/// another creates, faults and drops other memories.
fn block_memory_races(remaps: bool, drops: bool) {
    if !available() {
        return;
    }
    let _serial = BUDGET.lock().unwrap_or_else(|p| p.into_inner());
    let nblocks = 32u64; // 8 MiB through a 2 MiB budget
    outcore::vm::set_cache_budget(2 << 20);
    let generations: Arc<Vec<AtomicU64>> =
        Arc::new((0..nblocks).map(|_| AtomicU64::new(0)).collect());
    let source = Source(generations.clone());
    let mem = BlockMemory::new(BLK, nblocks, false).unwrap();
    mem.ensure_mapped(0..nblocks, &source).unwrap();
    let reads = AtomicU64::new(0);
    std::thread::scope(|s| {
        // Readers: random words of random blocks (half of them on 4 hot blocks, so threads
        // fault the same block at once); sometimes a whole block.
        for t in 0..4u64 {
            let (mem, generations, reads) = (&mem, &generations, &reads);
            s.spawn(move || {
                let mut rng = Rng::new(t);
                let mut last_seen = vec![0u64; nblocks as usize];
                for n in 0..scale(3000) {
                    let b = if rng.below(2) == 0 {
                        rng.below(4)
                    } else {
                        rng.below(nblocks)
                    };
                    let is: Vec<usize> = if n % 500 == 0 {
                        (0..WORDS).collect()
                    } else {
                        vec![rng.below(WORDS as u64) as usize]
                    };
                    for i in is {
                        let w = read_word(mem, b, i);
                        let g = (w >> 24) & 0xF_FFFF;
                        assert_eq!(
                            w,
                            word(b, g, i),
                            "block {b} word {i}: read {w:#x}, which belongs elsewhere"
                        );
                        let now = generations[b as usize].load(Ordering::SeqCst);
                        assert!(
                            g <= now,
                            "block {b}: generation {g} read, {now} is the newest"
                        );
                        assert!(
                            g >= last_seen[b as usize],
                            "block {b}: generation {g} read after {}",
                            last_seen[b as usize]
                        );
                        last_seen[b as usize] = g;
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        // Re-mapper: new versions of random blocks (as another transaction's commit does).
        let (mem_r, source_r, generations_r) = (&mem, &source, &generations);
        s.spawn(move || {
            if !remaps {
                return;
            }
            let mut rng = Rng::new(100);
            for _ in 0..scale(150) {
                let b = rng.below(nblocks);
                generations_r[b as usize].fetch_add(1, Ordering::SeqCst);
                mem_r.remap(&[b], source_r).unwrap();
                std::thread::sleep(std::time::Duration::from_micros(300));
            }
        });
        // Discarder: drops blocks' pages; the next touch fetches them again.
        let mem_d = &mem;
        s.spawn(move || {
            let mut rng = Rng::new(200);
            for _ in 0..scale(300) {
                mem_d.discard(&[rng.below(nblocks)]).unwrap();
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        });
        // Other memories created, faulted from two threads, and dropped meanwhile.
        s.spawn(move || {
            if !drops {
                return;
            }
            let mut rng = Rng::new(300);
            for round in 0..scale(30) {
                let gens: Arc<Vec<AtomicU64>> =
                    Arc::new((0..4).map(|_| AtomicU64::new(round)).collect());
                let m = BlockMemory::new(BLK, 4, false).unwrap();
                m.ensure_mapped(0..4, &Source(gens)).unwrap();
                std::thread::scope(|s2| {
                    for _ in 0..2 {
                        let (m, b, i) = (&m, rng.below(4), rng.below(WORDS as u64) as usize);
                        s2.spawn(move || assert_eq!(read_word(m, b, i), word(b, round, i)));
                    }
                });
                drop(m);
            }
        });
    });
    // Everything reads back as the newest generation.
    for b in 0..nblocks {
        let g = generations[b as usize].load(Ordering::SeqCst);
        for i in [0, WORDS / 2, WORDS - 1] {
            assert_eq!(read_word(&mem, b, i), word(b, g, i), "block {b}");
        }
    }
    drop(mem);
    outcore::vm::set_cache_budget(1 << 30);
    eprintln!(
        "fault races: {} reads checked",
        reads.load(Ordering::Relaxed)
    );
}

// ---- Connections over a compressed in-memory store -----------------------------------------

const E: u64 = 8192; // i64 per 64 KiB block
const NB: u64 = 48; // 3 MiB array through a 1 MiB budget

/// The value every element of `block` holds in version `version`.
fn stamp(block: u64, version: u64) -> i64 {
    (block * 1_000_000 + version) as i64
}

/// Committed versions per block: (commit tid, stamp), in commit order.
type Model = Mutex<BTreeMap<u64, Vec<(u64, i64)>>>;

fn expected(model: &Model, block: u64, snapshot: u64) -> i64 {
    model.lock().unwrap()[&block]
        .iter()
        .rev()
        .find(|(tid, _)| *tid <= snapshot)
        .expect("a version at the snapshot")
        .1
}

#[test]
fn connections_commit_abort_invalidate_and_drop_while_faulting() {
    if !available() {
        return;
    }
    let _serial = BUDGET.lock().unwrap_or_else(|p| p.into_inner());
    let db = Database::open_with(
        "mem:",
        DbOptions {
            compression: outcore::storage::Compression::Lz4,
            cache_bytes: Some(1 << 20),
            ..DbOptions::default()
        },
    )
    .unwrap();
    let conn = db.connect().unwrap();
    let mut a = conn
        .create_raw("a", "<i8", 8, &[NB * E], Order::C, (E * 8) as usize)
        .unwrap();
    {
        let mut v = a.view_mut::<i64>().unwrap();
        for b in 0..NB {
            v.as_slice_mut().unwrap()[(b * E) as usize..((b + 1) * E) as usize].fill(stamp(b, 0));
        }
    }
    let setup = conn.commit().unwrap().0;
    drop((a, conn));
    let model: Model = Mutex::new((0..NB).map(|b| (b, vec![(setup, stamp(b, 0))])).collect());
    // Held while committing and recording, so a reader that takes it finds every commit its
    // snapshot holds.
    let commit_lock = Mutex::new(());
    let (commits, conflicts, checked) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|s| {
        for w in 0..2u64 {
            let (db, model, commit_lock, commits, conflicts) =
                (&db, &model, &commit_lock, &commits, &conflicts);
            s.spawn(move || {
                let mut rng = Rng::new(10 + w);
                let mut conn = db.connect().unwrap();
                for n in 0..scale(60) {
                    let version = (w + 1) * 100_000 + n + 1;
                    conn.begin().unwrap();
                    let mut a = conn.array("a").unwrap();
                    let blocks: Vec<u64> = (0..1 + rng.below(2)).map(|_| rng.below(NB)).collect();
                    {
                        let mut v = a.view_mut::<i64>().unwrap();
                        let v = v.as_slice_mut().unwrap();
                        for &b in &blocks {
                            v[(b * E) as usize..((b + 1) * E) as usize].fill(stamp(b, version));
                        }
                    }
                    match rng.below(10) {
                        0 | 1 => conn.abort().unwrap(),
                        2 => {
                            // Drop the array and the connection with the changes uncommitted.
                            drop(a);
                            conn = db.connect().unwrap();
                            continue;
                        }
                        _ => {
                            let _g = commit_lock.lock().unwrap();
                            match conn.commit() {
                                Ok(tid) => {
                                    let mut m = model.lock().unwrap();
                                    for &b in &blocks {
                                        m.get_mut(&b).unwrap().push((tid.0, stamp(b, version)));
                                    }
                                    commits.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(Error::Conflict { .. }) => {
                                    conflicts.fetch_add(1, Ordering::Relaxed);
                                    conn.abort().unwrap();
                                }
                                Err(e) => panic!("writer {w}: {e}"),
                            }
                        }
                    }
                    // After commit or abort: the connection reads the newest data.
                    let snap = conn.tid().unwrap().0;
                    let v = a.view::<i64>().unwrap();
                    let got: Vec<i64> = blocks
                        .iter()
                        .map(|&b| v[(b * E + E - 1) as usize])
                        .collect();
                    let _g = commit_lock.lock().unwrap();
                    for (&b, x) in blocks.iter().zip(got) {
                        assert_eq!(x, expected(model, b, snap), "writer {w}: block {b}");
                    }
                }
            });
        }
        for r in 0..2u64 {
            let (db, model, commit_lock, checked) = (&db, &model, &commit_lock, &checked);
            s.spawn(move || {
                let mut rng = Rng::new(20 + r);
                let mut conn = db.connect().unwrap();
                for n in 0..scale(40) {
                    if n % 10 == 9 {
                        conn = db.connect().unwrap(); // the old one (and its arrays) dropped
                    }
                    conn.begin().unwrap();
                    let snap = conn.tid().unwrap().0;
                    let a = conn.array("a").unwrap();
                    let v = a.view::<i64>().unwrap();
                    let picks: Vec<Vec<(u64, u64)>> = (0..3)
                        .map(|_| {
                            (0..20)
                                .map(|_| {
                                    let b = if rng.below(2) == 0 {
                                        rng.below(3)
                                    } else {
                                        rng.below(NB)
                                    };
                                    (b, rng.below(E))
                                })
                                .collect()
                        })
                        .collect();
                    // Three threads fault the same view's blocks at once.
                    let seen: Vec<Vec<(u64, i64)>> = std::thread::scope(|s2| {
                        let hs: Vec<_> = picks
                            .iter()
                            .map(|p| {
                                let v = &v;
                                s2.spawn(move || {
                                    p.iter()
                                        .map(|&(b, i)| (b, v[(b * E + i) as usize]))
                                        .collect::<Vec<_>>()
                                })
                            })
                            .collect();
                        hs.into_iter().map(|h| h.join().unwrap()).collect()
                    });
                    let _g = commit_lock.lock().unwrap();
                    for (b, x) in seen.into_iter().flatten() {
                        assert_eq!(
                            x,
                            expected(model, b, snap),
                            "reader {r}: block {b} at snapshot {snap}"
                        );
                        checked.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    // The final state, element by element.
    let conn = db.connect().unwrap();
    let head = conn.tid().unwrap().0;
    let a = conn.array("a").unwrap();
    let v = a.view::<i64>().unwrap();
    let v = v.as_slice().unwrap();
    for b in 0..NB {
        let want = expected(&model, b, head);
        assert!(
            v[(b * E) as usize..((b + 1) * E) as usize]
                .iter()
                .all(|&x| x == want),
            "block {b}"
        );
    }
    outcore::vm::set_cache_budget(1 << 30);
    eprintln!(
        "connection races: {} commits, {} conflicts, {} reads checked",
        commits.load(Ordering::Relaxed),
        conflicts.load(Ordering::Relaxed),
        checked.load(Ordering::Relaxed)
    );
}
