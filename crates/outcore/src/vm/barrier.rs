//! A write barrier for mapped memory: while a block's memory is being moved (spilled), it is
//! made read-only, and a thread that writes to it meanwhile waits instead of losing the write.
//!
//! # How
//!
//! 1. [`Barrier::raise`] records the address range in a free slot of a fixed table, *then*
//!    the caller makes the range read-only (`mprotect`). From then on no write can change it.
//! 2. A thread writing there takes `SIGSEGV` (`SEGV_ACCERR`). The process-wide handler
//!    ([`on_segv`], installed once, chaining to the handler it replaced) finds the address in
//!    an active slot and waits on the slot's futex until the barrier is lowered; returning
//!    from the handler re-runs the faulting write, which now lands in the new memory.
//! 3. The caller replaces the range's mapping (writable again), *then* drops the barrier:
//!    the slot is freed, waiters are woken, and [`LOWERED`] is bumped.
//!
//! A fault that finds no active slot may come from a barrier lowered between the fault and
//! the handler's look at the table: the handler lets the thread retry once per
//! (thread, address, [`LOWERED`] count). A second fault at the same address with nothing
//! lowered since is a real one and goes to the previous handler (Python's `faulthandler`,
//! or the default action: the process dies as it would have without outcore).
//!
//! **Limits** (wendelin.core's approach has the same): the kernel does not raise signals for
//! its own accesses, so a system call writing into a block while it is being spilled (e.g.
//! `read(fd, view)`) fails with `EFAULT`; and a library that later replaces the `SIGSEGV`
//! handler without chaining to the previous one turns such a wait into a crash. Spilling
//! takes a few milliseconds per block and only happens above the dirty budget.
//!
//! Everything the handler touches is async-signal-safe: atomics, a `const`-initialised
//! thread-local `Cell`, and the `futex`, `sigaction` and handler-call paths.

use std::cell::Cell;
use std::ops::Range;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use super::fork_gate::ForkGuard;
use crate::{Error, Result};

/// `si_code` of a fault on a page mapped without the access (`<asm-generic/siginfo.h>`).
const SEGV_ACCERR: libc::c_int = 2;

/// Barriers that can be up at once: one per block being spilled, and one per throttled
/// memory (throttling takes a slot only while [`THROTTLE_LEAVES`] stay free).
const SLOTS: usize = 64;

/// Slots throttling leaves free, so spilling a block never waits for a slot that only the
/// end of the same spill round would free.
pub(crate) const THROTTLE_LEAVES: usize = 4;

/// One barrier's address range. `state` is the futex word: [`FREE`], [`CLAIMED`] (being
/// filled in, not yet active) or [`ACTIVE`].
struct Slot {
    state: AtomicU32,
    start: AtomicUsize,
    end: AtomicUsize,
}

const FREE: u32 = 0;
const CLAIMED: u32 = 1;
const ACTIVE: u32 = 2;

#[allow(clippy::declare_interior_mutable_const)] // only used to initialise `TABLE`
const EMPTY: Slot = Slot {
    state: AtomicU32::new(FREE),
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
};

static TABLE: [Slot; SLOTS] = [EMPTY; SLOTS];

/// Barriers lowered so far (see the module docs: a fault after a lowering retries once).
static LOWERED: AtomicU64 = AtomicU64::new(0);

/// The `SIGSEGV` action before ours, written once before ours is installed.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// Serialises claiming slots, so a thread waits for a free one instead of spinning.
static CLAIM: Mutex<()> = Mutex::new(());

thread_local! {
    /// The (address, lowered count) this thread last retried a fault for.
    static RETRIED: Cell<(usize, u64)> = const { Cell::new((0, u64::MAX)) };
}

/// While alive, writes to its range wait (see the module docs). Raise it before making the
/// range read-only; drop it after the range is writable again.
#[must_use]
pub(crate) struct Barrier {
    slot: usize,
}

impl Barrier {
    /// Marks `range` (addresses) as being moved. Installs the handler on first use.
    pub(crate) fn raise(range: Range<usize>) -> Result<Barrier> {
        install()?;
        let _claim = CLAIM.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(barrier) = claim(&range) {
                return Ok(barrier);
            }
            // Every slot is taken (more than SLOTS threads spilling): wait for one.
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Like [`Barrier::raise`], but without waiting: `None` unless, after taking a slot, at
    /// least `leave_free` slots stay free.
    pub(crate) fn try_raise(range: Range<usize>, leave_free: usize) -> Result<Option<Barrier>> {
        install()?;
        let _claim = CLAIM.lock().unwrap_or_else(|p| p.into_inner());
        let free = TABLE
            .iter()
            .filter(|s| s.state.load(Ordering::Acquire) == FREE)
            .count();
        Ok(if free > leave_free {
            claim(&range)
        } else {
            None
        })
    }
}

/// Takes a free slot for `range` and activates it (callers hold [`CLAIM`]).
fn claim(range: &Range<usize>) -> Option<Barrier> {
    for (i, slot) in TABLE.iter().enumerate() {
        if slot
            .state
            .compare_exchange(FREE, CLAIMED, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            slot.start.store(range.start, Ordering::Relaxed);
            slot.end.store(range.end, Ordering::Relaxed);
            // Release: a handler that sees ACTIVE sees the range.
            slot.state.store(ACTIVE, Ordering::Release);
            return Some(Barrier { slot: i });
        }
    }
    None
}

impl Drop for Barrier {
    fn drop(&mut self) {
        let slot = &TABLE[self.slot];
        slot.state.store(FREE, Ordering::Release);
        LOWERED.fetch_add(1, Ordering::AcqRel);
        futex_wake(&slot.state);
    }
}

/// Held while memory is being moved behind barriers (a spill round): a `fork` waits until
/// no such round runs and keeps new ones from starting (a [`ForkGuard`]), so a child never
/// inherits memory made read-only by a barrier that nobody in the child would lower (its
/// writers would wait forever).
pub(crate) struct MovingMemory {
    /// Held for its `Drop`.
    _guard: ForkGuard,
}

impl MovingMemory {
    /// Waits while a fork is in progress, then marks a round as running.
    pub(crate) fn begin() -> Result<MovingMemory> {
        install()?;
        Ok(MovingMemory {
            _guard: ForkGuard::enter(),
        })
    }
}

/// Installs [`on_segv`] as the process's `SIGSEGV` handler, once.
fn install() -> Result<()> {
    static INSTALLED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            // SAFETY: a zeroed sigaction is a valid value to fill in; sigaction(2) reads
            // `ours` and writes the previous action into `previous`, both valid for the call.
            unsafe {
                let mut ours: libc::sigaction = std::mem::zeroed();
                ours.sa_sigaction = on_segv as *const () as usize;
                ours.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
                libc::sigemptyset(&mut ours.sa_mask);
                let mut previous: libc::sigaction = std::mem::zeroed();
                // Read the previous action first and publish it, so the handler can chain
                // from its first run.
                if libc::sigaction(libc::SIGSEGV, std::ptr::null(), &mut previous) != 0 {
                    return Err(std::io::Error::last_os_error().to_string());
                }
                let _ = PREVIOUS.set(previous);
                if libc::sigaction(libc::SIGSEGV, &ours, std::ptr::null_mut()) != 0 {
                    return Err(std::io::Error::last_os_error().to_string());
                }
            }
            Ok(())
        })
        .clone()
        .map_err(|e| {
            Error::io(
                "installing the SIGSEGV handler of the write barrier",
                std::io::Error::other(e),
            )
        })
}

/// The `SIGSEGV` handler: waits out barriers, retries once after a lowering, else chains.
extern "C" fn on_segv(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    if code == SEGV_ACCERR {
        for slot in &TABLE {
            if slot.state.load(Ordering::Acquire) == ACTIVE
                && (slot.start.load(Ordering::Relaxed)..slot.end.load(Ordering::Relaxed))
                    .contains(&addr)
            {
                while slot.state.load(Ordering::Acquire) == ACTIVE {
                    futex_wait(&slot.state, ACTIVE);
                }
                return;
            }
        }
        let lowered = LOWERED.load(Ordering::Acquire);
        if RETRIED.with(|r| r.replace((addr, lowered))) != (addr, lowered) {
            return;
        }
    }
    chain(sig, info, ctx);
}

/// Hands the signal to the action that was installed before ours.
fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let Some(previous) = PREVIOUS.get() else {
        return reset_default(sig);
    };
    let handler = previous.sa_sigaction;
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // Ignoring a fault would re-run it forever: take the default action (the faulting
        // instruction runs again and the process dies of it).
        return reset_default(sig);
    }
    if previous.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous handler was installed with SA_SIGINFO, so it has this
        // signature and expects exactly these arguments.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(handler) };
        f(sig, info, ctx);
    } else {
        // SAFETY: a handler installed without SA_SIGINFO takes the signal number only.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
        f(sig);
    }
}

fn reset_default(sig: libc::c_int) {
    // SAFETY: signal(2) with SIG_DFL is async-signal-safe and takes no pointers.
    unsafe { libc::signal(sig, libc::SIG_DFL) };
}

fn futex_wait(word: &AtomicU32, expected: u32) {
    // SAFETY: FUTEX_WAIT reads the aligned u32 behind `word`, valid for the call (a static);
    // it returns at once if the value differs, else sleeps until woken (or a signal).
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            std::ptr::null::<libc::timespec>(),
        );
    }
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE only uses the address of `word` as a key.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        );
    }
}
