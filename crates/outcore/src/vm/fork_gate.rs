//! Memory changes a `fork` must not split, and the process's `pthread_atfork` handlers.
//!
//! Some changes of array memory take several steps that must look atomic to a forked child:
//! a spill round (a block read-only behind a barrier, then mapped anew; a child inheriting
//! the middle would wait on a barrier nobody in it lowers) and a change of a fetched block's
//! mapping (registered for fetch-on-touch, retired and mapped anew; a child inheriting the
//! middle would see a block whose pages and recorded version disagree). Each runs inside a
//! [`ForkGuard`]. A fork waits until none runs and keeps new ones from starting until it is
//! done, so a child inherits memory between changes only, and the snapshot of fetched blocks
//! a child is handed (`uffd/inherit.rs`) matches its memory exactly.
//!
//! Guards nest: a thread already inside one never waits (it could be holding a lock the
//! thread it would wait for needs). The handlers, registered once here, run in this order:
//! prepare (wait for guards, then `uffd::before_fork`), parent (`uffd::after_fork_in_parent`,
//! then open the gate), child (`uffd::after_fork_in_child`, then reset the gate).

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;
use std::time::Duration;

/// Threads inside a guard now.
static ACTIVE: AtomicU32 = AtomicU32::new(0);
/// Forks waiting for guards or in progress.
static FORKING: AtomicU32 = AtomicU32::new(0);

thread_local! {
    /// This thread's nesting depth of guards.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Held across a memory change a fork must not split (see the module docs).
#[must_use = "the change is protected only while the guard lives"]
pub(crate) struct ForkGuard(());

impl ForkGuard {
    /// Waits while a fork is in progress (unless this thread holds a guard already), then
    /// enters.
    pub(crate) fn enter() -> ForkGuard {
        install_handlers();
        let depth = DEPTH.with(Cell::get);
        if depth == 0 {
            loop {
                while FORKING.load(Ordering::Acquire) != 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
                ACTIVE.fetch_add(1, Ordering::AcqRel);
                if FORKING.load(Ordering::Acquire) == 0 {
                    break;
                }
                ACTIVE.fetch_sub(1, Ordering::AcqRel);
            }
        }
        DEPTH.with(|d| d.set(depth + 1));
        ForkGuard(())
    }
}

impl Drop for ForkGuard {
    fn drop(&mut self) {
        let depth = DEPTH.with(Cell::get) - 1;
        DEPTH.with(|d| d.set(depth));
        if depth == 0 {
            ACTIVE.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Registers the handlers, once per process.
pub(crate) fn install_handlers() {
    static ONCE: Once = Once::new();
    // SAFETY: registers handlers that touch atomics, sleep, and call the uffd module's fork
    // steps, whose safety around a fork `uffd/inherit.rs` explains.
    ONCE.call_once(|| unsafe {
        libc::pthread_atfork(Some(before_fork), Some(in_parent), Some(in_child));
    });
}

/// Guards entered by the forking thread itself (it does not wait for those).
fn own_guards() -> u32 {
    u32::from(DEPTH.with(Cell::get) > 0)
}

/// `pthread_atfork` prepare handler.
extern "C" fn before_fork() {
    FORKING.fetch_add(1, Ordering::AcqRel);
    while ACTIVE.load(Ordering::Acquire) > own_guards() {
        std::thread::sleep(Duration::from_millis(1));
    }
    super::uffd::before_fork();
}

/// `pthread_atfork` parent handler.
extern "C" fn in_parent() {
    super::uffd::after_fork_in_parent();
    FORKING.fetch_sub(1, Ordering::AcqRel);
}

/// `pthread_atfork` child handler: the only thread is the forking one.
extern "C" fn in_child() {
    super::uffd::after_fork_in_child();
    ACTIVE.store(own_guards(), Ordering::Release);
    FORKING.store(0, Ordering::Release);
}
