//! A fetch that panics (a bug in a store or decoder) fails like a fetch that keeps returning
//! errors: `populate` returns an error, touches get SIGBUS after a message, nobody hangs, and
//! the fetch workers survive for later faults.

mod common;

use std::ops::Range;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use outcore::vm::{Backing, BlockMemory, BlockSource, Fetch};
use outcore::Result;

const BLK: usize = 2 << 20;

fn content(block: u64) -> Vec<u8> {
    (0..BLK)
        .map(|i| (i as u64 * 3 + block * 17) as u8)
        .collect()
}

/// Panics in blocks `panicking`, returns `content` elsewhere.
struct Flaky {
    block: u64,
    panics: bool,
}

impl Fetch for Flaky {
    fn fetch(&self) -> Result<Vec<u8>> {
        if self.panics {
            panic!("decoder bug {}", self.block);
        }
        Ok(content(self.block))
    }
    fn describe(&self) -> String {
        format!("test block {}", self.block)
    }
}

struct Source(Range<u64>);

impl BlockSource for Source {
    fn backing(&self, block: u64) -> Result<Backing> {
        Ok(Backing::Fetch(Arc::new(Flaky {
            block,
            panics: self.0.contains(&block),
        })))
    }
}

fn available() -> bool {
    common::uffd_available()
}

/// Ends the process with a message if the test is still running after two minutes (a hang:
/// a suspended thread cannot be cancelled). Dropping the guard disarms it.
struct Watchdog(#[allow(dead_code)] mpsc::Sender<()>);

fn watchdog(what: &'static str) -> Watchdog {
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(120)) {
            eprintln!("HUNG: {what}");
            std::process::exit(3);
        }
    });
    Watchdog(tx)
}

fn byte(mem: &BlockMemory, block: u64, at: usize) -> u8 {
    // SAFETY (test): the block is mapped; reading it faults it in.
    unsafe { std::ptr::read_volatile(mem.block_ptr(block).add(at)) }
}

#[test]
fn load_of_a_panicking_block_is_an_error_naming_it() {
    if !available() {
        return;
    }
    let _guard = watchdog("populate of a block whose fetch panics");
    let mem = BlockMemory::new(BLK, 4, true).unwrap();
    mem.ensure_mapped(0..4, &Source(1..2)).unwrap();
    let err = mem.populate(BLK..2 * BLK).unwrap_err().to_string();
    assert!(err.contains("test block 1"), "{err}");
    assert!(err.contains("panicked: decoder bug 1"), "{err}");
    mem.populate(2 * BLK..3 * BLK).unwrap();
    assert_eq!(byte(&mem, 2, 12345), content(2)[12345]);
}

#[test]
fn kernel_reads_of_panicking_blocks_fail_and_later_faults_work() {
    if !available() {
        return;
    }
    let _guard = watchdog("a system call reading blocks whose fetch panics");
    // More panicking blocks than fetch workers: a worker that died with its block would leave
    // none for the last block.
    let n = 10;
    let mem = BlockMemory::new(BLK, n + 1, false).unwrap();
    mem.ensure_mapped(0..n + 1, &Source(0..n)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = std::fs::File::create(dir.path().join("x")).unwrap();
    for b in 0..n {
        // The kernel's access to a poisoned page fails the call instead of raising SIGBUS.
        // SAFETY (test): the source range is mapped memory of `mem`.
        let r = unsafe { libc::write(out.as_raw_fd(), mem.block_ptr(b).cast(), BLK) };
        assert_eq!(r, -1, "block {b}");
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EFAULT),
            "block {b}"
        );
    }
    assert_eq!(byte(&mem, n, 777), content(n)[777]);
}

#[test]
fn touch_child_entry() {
    if std::env::var_os("OUTCORE_TOUCH_CHILD").is_none() {
        return;
    }
    let _guard = watchdog("a touch of a block whose fetch panics");
    let mem = BlockMemory::new(BLK, 2, false).unwrap();
    mem.ensure_mapped(0..2, &Source(1..2)).unwrap();
    byte(&mem, 1, 5);
    eprintln!("NO SIGNAL: the touch returned");
}

#[test]
fn touching_a_panicking_block_raises_sigbus_after_a_message() {
    if !available() {
        return;
    }
    use std::os::unix::process::ExitStatusExt;
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "touch_child_entry", "--nocapture"])
        .env("OUTCORE_TOUCH_CHILD", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGBUS), "{stderr}");
    assert!(
        stderr.contains("outcore: cannot load test block 1 of ")
            && stderr.contains("panicked: decoder bug 1"),
        "{stderr}"
    );
}
