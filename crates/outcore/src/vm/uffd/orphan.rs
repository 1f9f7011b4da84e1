//! A forked child that outlives its parent.
//!
//! While the parent lives, it serves the child's fetched memory (`fork.rs`). The kernel gives
//! the child's userfaultfd to the parent alone, so when the parent exits that descriptor
//! closes, the child's registrations go with it, and the child's untouched fetched memory
//! silently becomes ordinary anonymous memory: zeros. To prevent that, the parent also hands
//! the descriptor to the child itself, whose registrations then outlive the parent (its
//! faults wait instead of reading zeros), and a thread of the child takes over when the
//! parent is gone: an access to a page the child never received fails with SIGBUS after a
//! message naming the array and block. (Fetching in the child instead would need the
//! parent's storage objects, whose locks another thread of the parent may have held at the
//! fork: a hang is worse than a clear failure.)
//!
//! # The hand-over, step by step
//!
//! 1. [`before_fork`] (`pthread_atfork` prepare, in the parent, only while it has fetched
//!    memory and fork events): forks are serialised, and a socket pair is made.
//! 2. The kernel queues the fork event. The parent's reader receives the child's descriptor
//!    and sends it over the socket ([`send_to_child`], never allocating, as the reader must).
//! 3. [`after_fork_in_parent`]: the fork returned, so its event (if the fork made one) was
//!    read; it waits until the reader has handled every message it read, closes the
//!    parent's end if no event took it, closes the child's end, and lets the next fork in.
//! 4. [`after_fork_in_child`]: closes its copy of the parent's end and starts the watcher
//!    thread with the child's end.
//! 5. The watcher receives the descriptor (or end of file: the fork made no event, there is
//!    nothing to watch), then waits for the parent to exit (a pidfd).
//! 6. Then it wakes every thread waiting on a fault the parent read but never answered, and
//!    answers the child's faults itself: write-protect faults lift the protection (the
//!    child's writes are its own); missing pages are poisoned after a message (without
//!    `UFFDIO_POISON` the child aborts). Fork events of grandchildren made from then on are
//!    read (the fork waits for that) and their faults answered the same way.
//!
//! Grandchildren forked while the original parent lives are served by it, but are not
//! handed their descriptor: if it exits first, their untouched fetched memory reads as zeros
//! (documented in README, "Forked children").

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::sys::{page_range, Uffd, UffdMsg, UffdioRange, EVENT_FORK, EVENT_PAGEFAULT, PAGE};
use super::{FaultServer, FORKED, SERVER, THREADS};

/// Held from [`before_fork`] to [`after_fork_in_parent`]: one fork at a time, so the one fork
/// event of this process's descriptor between them belongs to the fork that made the socket.
static FORK_SERIAL: AtomicBool = AtomicBool::new(false);
/// The parent's end of the socket of the fork in progress (-1: none, or taken).
static PARENT_END: AtomicI32 = AtomicI32::new(-1);
/// The child's end of that socket.
static CHILD_END: AtomicI32 = AtomicI32::new(-1);
/// Reads of fault messages the reader started, and those whose messages it has handled.
static READS_STARTED: AtomicU64 = AtomicU64::new(0);
static READS_DONE: AtomicU64 = AtomicU64::new(0);
/// The parent's pid, in the child (set before the watcher starts).
static PARENT_PID: AtomicI32 = AtomicI32::new(0);

/// How long [`after_fork_in_parent`] waits for the reader (it handles a batch in
/// microseconds; the bound only keeps a wedged reader from blocking every fork).
const READER_WAIT: Duration = Duration::from_secs(2);

/// The reader starts a `read` of fault messages.
pub(super) fn read_started() {
    READS_STARTED.fetch_add(1, Ordering::AcqRel);
}

/// The reader has handled every message of the `read` it started last.
pub(super) fn read_done() {
    READS_DONE.fetch_add(1, Ordering::AcqRel);
}

/// The server, if this process runs one that serves forked children and has fetched memory
/// a child would inherit.
fn serving_forks() -> Option<&'static FaultServer> {
    if FORKED.load(Ordering::Relaxed) || THREADS.get().is_none() {
        return None;
    }
    let Some(Ok(server)) = SERVER.get() else {
        return None;
    };
    // A write lock held by another thread now: assume there are regions.
    let has_regions = server.regions.try_read().map_or(true, |r| !r.is_empty());
    (server.serves_forks && has_regions).then_some(*server)
}

/// Step 1 (`pthread_atfork` prepare): waits for any other fork in progress, then makes the
/// socket that carries the child's descriptor.
pub(super) extern "C" fn before_fork() {
    if serving_forks().is_none() {
        return;
    }
    while FORK_SERIAL
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
        .is_err()
    {
        std::thread::sleep(Duration::from_micros(100));
    }
    let mut ends = [-1; 2];
    // SAFETY: creates a socket pair into the two descriptors of `ends`.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            ends.as_mut_ptr(),
        )
    };
    if rc == 0 {
        PARENT_END.store(ends[0], Ordering::Release);
        CHILD_END.store(ends[1], Ordering::Release);
    }
}

/// Step 2 (the reader, on this process's fork event): sends a duplicate of the child's
/// descriptor `fd` to the child. Never allocates nor locks (see `read_messages`).
pub(super) fn send_to_child(fd: RawFd) {
    let sock = PARENT_END.swap(-1, Ordering::AcqRel);
    if sock < 0 {
        return;
    }
    send_fd(sock, fd);
    // SAFETY: the parent's end, taken from PARENT_END by this thread alone, closed once.
    unsafe { libc::close(sock) };
}

/// Step 3 (`pthread_atfork` parent handler).
pub(super) extern "C" fn after_fork_in_parent() {
    if !FORK_SERIAL.load(Ordering::Acquire) {
        return; // before_fork did nothing
    }
    let started = READS_STARTED.load(Ordering::Acquire);
    let since = Instant::now();
    while READS_DONE.load(Ordering::Acquire) < started && since.elapsed() < READER_WAIT {
        std::thread::sleep(Duration::from_micros(50));
    }
    for end in [&PARENT_END, &CHILD_END] {
        let fd = end.swap(-1, Ordering::AcqRel);
        if fd >= 0 {
            // SAFETY: a socket end made by before_fork, taken from its static, closed once.
            unsafe { libc::close(fd) };
        }
    }
    FORK_SERIAL.store(false, Ordering::Release);
}

/// Step 4 (in the child, from the `pthread_atfork` child handler).
pub(super) fn after_fork_in_child() {
    FORK_SERIAL.store(false, Ordering::Relaxed);
    let parent_end = PARENT_END.swap(-1, Ordering::Relaxed);
    if parent_end >= 0 {
        // SAFETY: the child's inherited copy of the parent's end; the child never uses it,
        // and holding it would keep the watcher from seeing end of file.
        unsafe { libc::close(parent_end) };
    }
    let child_end = CHILD_END.swap(-1, Ordering::Relaxed);
    if child_end < 0 {
        return;
    }
    // SAFETY: getppid cannot fail.
    PARENT_PID.store(unsafe { libc::getppid() }, Ordering::Relaxed);
    let mut thread: libc::pthread_t = 0;
    // SAFETY: starts a detached thread running `watch`, which takes ownership of the
    // descriptor passed as its argument. pthread_create (not std's spawn, whose bookkeeping
    // may be locked by a thread of the parent at the fork) is usable in a forked child of
    // glibc, which resets its allocator before running child handlers.
    let rc = unsafe {
        libc::pthread_create(
            &mut thread,
            std::ptr::null(),
            watch,
            child_end as usize as *mut libc::c_void,
        )
    };
    if rc == 0 {
        // SAFETY: `thread` was just created and is detached once.
        unsafe { libc::pthread_detach(thread) };
    } else {
        // SAFETY: the descriptor was not handed over: ours to close.
        unsafe { libc::close(child_end) };
    }
}

/// Steps 5 and 6: the watcher thread of a forked child.
extern "C" fn watch(arg: *mut libc::c_void) -> *mut libc::c_void {
    // SAFETY: the child's end of the socket, handed over by after_fork_in_child alone.
    let sock = unsafe { OwnedFd::from_raw_fd(arg as usize as RawFd) };
    let Some(own) = recv_fd(sock.as_raw_fd()) else {
        return std::ptr::null_mut(); // the fork made no event: no fetched memory to watch
    };
    drop(sock);
    wait_for_parent_exit(PARENT_PID.load(Ordering::Relaxed));
    take_over(own);
    std::ptr::null_mut()
}

/// Returns once process `parent` has exited (at once if this process is no longer its child).
fn wait_for_parent_exit(parent: libc::pid_t) {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, parent, 0) } as RawFd;
    // SAFETY: getppid cannot fail.
    let still_child = unsafe { libc::getppid() } == parent;
    if pidfd < 0 {
        // No pidfd (old kernel): notice the re-parenting instead.
        // SAFETY: getppid cannot fail.
        while unsafe { libc::getppid() } == parent {
            std::thread::sleep(Duration::from_millis(100));
        }
        return;
    }
    // SAFETY: a fresh descriptor owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    // Opened while `parent` was still our parent, so it is that process, not a reused pid.
    if !still_child {
        return;
    }
    loop {
        let mut pfd = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        if unsafe { libc::poll(&mut pfd, 1, -1) } > 0 {
            return;
        }
    }
}

/// Step 6: answers the faults of this process (and of grandchildren forked from now on),
/// whose memory nobody else will serve any more.
fn take_over(own: Uffd) {
    let server = SERVER.get().and_then(|s| s.as_ref().ok()).copied();
    let poison = server.is_some_and(|s| s.poison);
    // Threads whose fault the parent read but never answered wait until woken.
    wake_everything(&own, server);
    let mut served = vec![own];
    let mut msgs = [UffdMsg::EMPTY; 16];
    loop {
        let mut pfds: Vec<libc::pollfd> = served
            .iter()
            .map(|u| libc::pollfd {
                fd: u.raw(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: valid pollfds for the duration of the call.
        unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) };
        let mut forked = Vec::new();
        for (uffd, pfd) in served.iter().zip(&pfds) {
            if pfd.revents == 0 {
                continue;
            }
            // SAFETY: reads fault messages into a buffer of that many messages.
            let n = unsafe {
                libc::read(
                    uffd.raw(),
                    msgs.as_mut_ptr().cast(),
                    std::mem::size_of_val(&msgs),
                )
            };
            let count = usize::try_from(n).unwrap_or(0) / std::mem::size_of::<UffdMsg>();
            for msg in &msgs[..count] {
                match msg.event {
                    EVENT_PAGEFAULT if msg.is_write_protect() => {
                        let range = page_range(msg.address as usize);
                        if uffd.unprotect(range).is_err() {
                            uffd.wake(range);
                        }
                    }
                    EVENT_PAGEFAULT => refuse(uffd, msg.address as usize, server, poison),
                    // SAFETY: the descriptor this event gave us, owned by nobody else.
                    EVENT_FORK => forked.push(Uffd::from_owned(unsafe {
                        OwnedFd::from_raw_fd(msg.fork_fd())
                    })),
                    _ => {}
                }
            }
        }
        served.extend(forked);
    }
}

/// Wakes every thread waiting on a fault in this process's fetched regions (or anywhere, if
/// their table cannot be read now).
fn wake_everything(uffd: &Uffd, server: Option<&FaultServer>) {
    if let Some(regions) = server.and_then(|s| s.regions.try_read().ok()) {
        for region in regions.values().filter_map(std::sync::Weak::upgrade) {
            uffd.wake(UffdioRange {
                start: region.base as u64,
                len: region.len as u64,
            });
        }
    }
    // Also the whole user address space (x86-64 and arm64 with 48-bit addresses): regions
    // whose table entry was being changed at the fork.
    const LOW: u64 = 1 << 16;
    const HIGH: u64 = (1 << 47) - PAGE as u64;
    uffd.wake(UffdioRange {
        start: LOW,
        len: HIGH - LOW,
    });
}

/// A missing page at `addr` nobody can fill: says so, then poisons it (the access gets
/// SIGBUS), or aborts where the kernel cannot poison.
fn refuse(uffd: &Uffd, addr: usize, server: Option<&FaultServer>, poison: bool) {
    let what = server
        .and_then(|s| {
            let regions = s.regions.try_read().ok()?;
            let (_, weak) = regions.range(..=addr).next_back()?;
            let region = weak.upgrade()?;
            let block = region.block_of(addr)?;
            Some(format!("block {block} of {}", region.what))
        })
        .unwrap_or_else(|| format!("fetched memory at {addr:#x}"));
    let msg = format!(
        "outcore: {what} cannot be read in this forked child: the parent process (pid {}) that \
         served its fetched memory has exited, and the child had not read this block before. \
         Load what a child needs before forking (A.load()), or open the store in the child.\n",
        PARENT_PID.load(Ordering::Relaxed)
    );
    // SAFETY: writes our buffer to stderr (not Rust's stderr, whose lock another thread of
    // the parent may have held at the fork).
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
    if poison && uffd.poison(page_range(addr)).is_ok() {
        return;
    }
    std::process::abort();
}

/// Sends descriptor `fd` over socket `sock` (SCM_RIGHTS), without allocating or blocking.
fn send_fd(sock: RawFd, fd: RawFd) {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // Room for one control message carrying one descriptor, aligned as cmsghdr wants.
    let mut control = [0u64; 4];
    // SAFETY: an all-zero msghdr is a valid empty message.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a size.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as usize;
    // SAFETY: the control buffer holds CMSG_SPACE(4) bytes (32 >= 24), so the first header
    // and its 4 data bytes lie within it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(4) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>(), fd);
        // A child that exec'd or exited closed its end: no SIGPIPE, no wait.
        libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT);
    }
}

/// Receives one descriptor sent by [`send_fd`] on `sock`; `None` at end of file.
fn recv_fd(sock: RawFd) -> Option<Uffd> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = [0u64; 4];
    // SAFETY: an all-zero msghdr is a valid empty message.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    loop {
        // SAFETY: receives into the buffers `msg` points to, alive for the call.
        let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if n <= 0 {
            return None;
        }
        break;
    }
    // SAFETY: the kernel filled `msg`'s control buffer; the header, if any, lies within it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
        {
            return None;
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>());
        Some(Uffd::from_owned(OwnedFd::from_raw_fd(fd)))
    }
}
