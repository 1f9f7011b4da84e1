//! The kernel's userfaultfd interface: ioctl numbers and structs (`linux/userfaultfd.h`), and
//! thin wrappers over them. Nothing here knows about regions, blocks or budgets.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const UFFDIO_API: libc::c_ulong = 0xC018_AA3F;
const UFFDIO_REGISTER: libc::c_ulong = 0xC020_AA00;
const UFFDIO_WAKE: libc::c_ulong = 0x8010_AA02;
const UFFDIO_COPY: libc::c_ulong = 0xC028_AA03;
const UFFDIO_MOVE: libc::c_ulong = 0xC028_AA05;
const UFFDIO_WRITEPROTECT: libc::c_ulong = 0xC018_AA06;
const UFFDIO_POISON: libc::c_ulong = 0xC020_AA08;
const USERFAULTFD_IOC_NEW: libc::c_ulong = 0xAA00;
const UFFD_API: u64 = 0xAA;
/// `UFFD_FEATURE_MOVE`: `UFFDIO_MOVE` (Linux >= 6.8).
pub(super) const FEATURE_MOVE: u64 = 1 << 10;
/// `UFFD_FEATURE_POISON`: `UFFDIO_POISON`.
pub(super) const FEATURE_POISON: u64 = 1 << 14;
const MOVE_MODE_DONTWAKE: u64 = 1;
const REGISTER_MISSING: u64 = 1;
const REGISTER_WP: u64 = 2;
const COPY_MODE_DONTWAKE: u64 = 1;
const COPY_MODE_WP: u64 = 2;
/// `UFFD_EVENT_PAGEFAULT`.
pub(super) const EVENT_PAGEFAULT: u8 = 0x12;
const PAGEFAULT_FLAG_WRITE: u64 = 1;
const PAGEFAULT_FLAG_WP: u64 = 1 << 1;
const UFFD_USER_MODE_ONLY: libc::c_int = 1;
/// The base page size the kernel copies and protects in.
pub(super) const PAGE: usize = 4096;

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

/// An address range of an address space (`struct uffdio_range`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct UffdioRange {
    /// First address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioMove {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    moved: i64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioPoison {
    range: UffdioRange,
    mode: u64,
    updated: i64,
}

/// One message (`struct uffd_msg`, 32 bytes). For a fork event, the low 32 bits of `flags`
/// are the new descriptor of the child's address space.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct UffdMsg {
    /// `EVENT_PAGEFAULT`, ...
    pub event: u8,
    reserved: [u8; 7],
    /// Fault flags, or the child's descriptor of a fork event.
    pub flags: u64,
    /// The faulting address.
    pub address: u64,
    ptid: u64,
}

impl UffdMsg {
    /// An all-zero message, to fill read buffers with.
    pub const EMPTY: UffdMsg = UffdMsg {
        event: 0,
        reserved: [0; 7],
        flags: 0,
        address: 0,
        ptid: 0,
    };

    /// True for a write-protect fault (a write to a protected page), false for a missing page.
    pub fn is_write_protect(&self) -> bool {
        self.flags & PAGEFAULT_FLAG_WP != 0
    }

    /// True for a missing-page fault raised by a write (the thread writes once the page is
    /// there).
    pub fn is_write(&self) -> bool {
        self.flags & PAGEFAULT_FLAG_WRITE != 0
    }
}

/// The page holding `addr`.
pub(super) fn page_range(addr: usize) -> UffdioRange {
    UffdioRange {
        start: (addr & !(PAGE - 1)) as u64,
        len: PAGE as u64,
    }
}

/// A userfaultfd descriptor (of this process's address space, or of a forked child's).
pub(super) struct Uffd(OwnedFd);

fn ioctl<T>(fd: RawFd, request: libc::c_ulong, arg: &mut T) -> std::io::Result<()> {
    // SAFETY: every caller passes the repr(C) struct `request` expects, alive for the call;
    // the requests used here only read and write that struct and the address space's page
    // tables, never memory the caller did not hand over.
    let r = unsafe { libc::ioctl(fd, request, arg as *mut T) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Uffd {
    /// A new userfaultfd and whether it serves kernel-mode faults, trying the privilege
    /// ladder: `/dev/userfaultfd`, then the syscall, then the syscall in user-mode-only mode.
    pub fn open() -> std::result::Result<(Uffd, bool), String> {
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
        if let Ok(dev) = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/userfaultfd")
        {
            // SAFETY: USERFAULTFD_IOC_NEW takes the flags as its argument and returns a new fd.
            let fd = unsafe { libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW, flags) };
            if fd >= 0 {
                // SAFETY: a fresh descriptor owned by nobody else.
                return Ok((Uffd(unsafe { OwnedFd::from_raw_fd(fd) }), true));
            }
        }
        for (extra, full) in [(0, true), (UFFD_USER_MODE_ONLY, false)] {
            // SAFETY: the userfaultfd syscall takes flags and returns a new fd or -1.
            let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags | extra) } as i32;
            if fd >= 0 {
                // SAFETY: a fresh descriptor owned by nobody else.
                return Ok((Uffd(unsafe { OwnedFd::from_raw_fd(fd) }), full));
            }
        }
        Err(format!(
            "userfaultfd is not available ({}); give this user access to /dev/userfaultfd \
             (e.g. a group with mode 0660) or set vm.unprivileged_userfaultfd=1",
            std::io::Error::last_os_error()
        ))
    }

    /// A duplicate of `fd`, a descriptor received with a fork event (its reader owns and
    /// closes `fd`), or `None` if `fd` is not usable.
    pub fn duplicate(fd: RawFd) -> Option<Uffd> {
        if fd < 0 {
            return None;
        }
        // SAFETY: dup of a descriptor open until its reader closes it, after this.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return None;
        }
        // SAFETY: a fresh descriptor owned by nobody else.
        Some(Uffd(unsafe { OwnedFd::from_raw_fd(dup) }))
    }

    /// The raw descriptor, to poll and read.
    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// The API handshake asking for `features`; returns the features the kernel offers.
    pub fn api(&self, features: u64) -> std::io::Result<u64> {
        let mut api = UffdioApi {
            api: UFFD_API,
            features,
            ..UffdioApi::default()
        };
        ioctl(self.raw(), UFFDIO_API, &mut api)?;
        Ok(api.features)
    }

    /// Registers `range` for missing-page faults (`missing`) and write-protect faults.
    pub fn register(&self, range: UffdioRange, missing: bool) -> std::io::Result<()> {
        let mut reg = UffdioRegister {
            range,
            mode: if missing { REGISTER_MISSING } else { 0 } | REGISTER_WP,
            ..UffdioRegister::default()
        };
        ioctl(self.raw(), UFFDIO_REGISTER, &mut reg)
    }

    /// Registers `range` for missing-page faults only (a forked child's inherited memory,
    /// whose writes nobody tracks).
    pub fn register_missing(&self, range: UffdioRange) -> std::io::Result<()> {
        let mut reg = UffdioRegister {
            range,
            mode: REGISTER_MISSING,
            ..UffdioRegister::default()
        };
        ioctl(self.raw(), UFFDIO_REGISTER, &mut reg)
    }

    /// Copies `src` (at least `range.len` bytes) into the missing pages `range`, wakes the
    /// threads waiting there; `protect`: the pages arrive write-protected. Pages already
    /// present fail the whole call (EEXIST), see [`Uffd::copy_missing_pages`].
    pub fn copy(&self, range: UffdioRange, src: &[u8], protect: bool) -> std::io::Result<()> {
        self.copy_mode(range, src, if protect { COPY_MODE_WP } else { 0 })
    }

    /// [`Uffd::copy`] write-protected, without waking anyone: the caller wakes the range
    /// (after lifting the protection where a waiting thread is about to write).
    pub fn copy_protected_quietly(&self, range: UffdioRange, src: &[u8]) -> std::io::Result<()> {
        self.copy_mode(range, src, COPY_MODE_WP | COPY_MODE_DONTWAKE)
    }

    fn copy_mode(&self, range: UffdioRange, src: &[u8], mode: u64) -> std::io::Result<()> {
        assert!(
            src.len() as u64 >= range.len,
            "copy source shorter than its range"
        );
        let mut copy = UffdioCopy {
            dst: range.start,
            src: src.as_ptr() as u64,
            len: range.len,
            mode,
            ..UffdioCopy::default()
        };
        ioctl(self.raw(), UFFDIO_COPY, &mut copy)
    }

    /// Copies `data` into `range` page by page (write-protected if `protect`), skipping pages
    /// that are already there (a block left partly populated by an interrupted copy, or a
    /// child's pages copied on write), then wakes the range. True if every page is in place.
    pub fn copy_missing_pages(&self, range: UffdioRange, data: &[u8], protect: bool) -> bool {
        let mut ok = true;
        'pages: for offset in (0..range.len).step_by(PAGE) {
            let page = UffdioRange {
                start: range.start + offset,
                len: PAGE as u64,
            };
            for _attempt in 0..3 {
                match self.copy(page, &data[offset as usize..], protect) {
                    Ok(()) => break,
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => break,
                    Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
                    // The address space is gone (an exited child): nothing left to fill.
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return false,
                    Err(_) => {
                        ok = false;
                        continue 'pages;
                    }
                }
            }
        }
        self.wake(range);
        ok
    }

    /// Moves `len` bytes of pages from `src` to `dst` without waking anyone; true if all
    /// moved.
    ///
    /// # Safety
    /// Both ranges are memory of this process that the caller has exclusive use of for the
    /// call: afterwards `src` has no pages (reads fault or show zeros) and `dst` shows what
    /// `src` held.
    pub unsafe fn move_pages(&self, dst: usize, src: usize, len: usize) -> bool {
        let mut mv = UffdioMove {
            dst: dst as u64,
            src: src as u64,
            len: len as u64,
            mode: MOVE_MODE_DONTWAKE,
            ..UffdioMove::default()
        };
        ioctl(self.raw(), UFFDIO_MOVE, &mut mv).is_ok()
    }

    /// Lifts the write protection of `range` and wakes the threads waiting on it.
    pub fn unprotect(&self, range: UffdioRange) -> std::io::Result<()> {
        let mut wp = UffdioWriteprotect { range, mode: 0 };
        ioctl(self.raw(), UFFDIO_WRITEPROTECT, &mut wp)
    }

    /// Wakes the threads waiting on `range`: they retry their access.
    pub fn wake(&self, mut range: UffdioRange) {
        // Waking a range nobody waits on is harmless.
        let _ = ioctl(self.raw(), UFFDIO_WAKE, &mut range);
    }

    /// Makes accesses of `range` fail with SIGBUS.
    pub fn poison(&self, range: UffdioRange) -> std::io::Result<()> {
        let mut p = UffdioPoison {
            range,
            ..UffdioPoison::default()
        };
        ioctl(self.raw(), UFFDIO_POISON, &mut p)
    }
}

/// Drops the pages of `range` (`MADV_DONTNEED`): private anonymous memory reads as zeros,
/// or faults, if registered, on the next touch.
///
/// # Safety
/// `range` is private anonymous memory of this process whose contents nobody relies on any
/// more (nothing else changes or reads them as data that must survive).
pub(super) unsafe fn discard(range: UffdioRange) -> std::io::Result<()> {
    // SAFETY: per the contract; madvise only drops pages of that range.
    let rc = unsafe {
        libc::madvise(
            range.start as *mut libc::c_void,
            range.len as usize,
            libc::MADV_DONTNEED,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
