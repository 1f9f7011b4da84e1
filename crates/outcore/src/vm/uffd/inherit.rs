//! Forked children inherit fetched memory: what happens at a `fork`, in both processes.
//!
//! A child gets the parent's fetched memory copied on write, but not its userfaultfd
//! registrations: untouched pages would read as zeros. So the child registers the blocks
//! with a userfaultfd of its own before any code of it runs, and hands that descriptor to
//! the process serving fetched memory (the *server*: the process that opened the arrays),
//! which fetches the blocks the child lacks, as they were at the fork, and copies them in
//! (`fork.rs`). No kernel fork events are needed (they need `CAP_SYS_PTRACE`, which
//! containers usually lack), and because the child holds its own descriptor, its memory
//! stays registered if the server exits: its faults then wait for the child itself, which
//! fails them loudly instead of letting them read zeros.
//!
//! # At a fork, step by step
//!
//! 1. [`before_fork`] (prepare; in the server, only while it has fetched memory; after
//!    `vm::fork_gate` has waited out every mapping change in flight, so nothing below races
//!    one): takes the [`Snapshot`] of every registered block and its version, and makes the
//!    *control socket* pair of this child.
//! 2. [`after_fork_in_parent`]: passes the server's end and the snapshot to the fault
//!    thread (`CONTROLS`, `NEW_CONTROLS`); closes the child's end.
//! 3. [`after_fork_in_child`] (the child's only thread, before the fork returns there):
//!    closes the server's descriptors it inherited; registers the snapshot's blocks with a new
//!    userfaultfd (missing pages only: the child's writes are its own); sends it over the
//!    control socket; starts the watcher thread.
//! 4. The server's fault thread receives the descriptor, polls it from then on, and serves
//!    the child's faults from the snapshot of that control socket.
//! 5. Grandchildren: a child forking runs step 3 with the control socket and snapshot it
//!    inherited, so the server serves them as it serves their parent (the snapshot is what
//!    the server had at the first fork; what the child changed since is in its own pages,
//!    which the grandchild inherits).
//! 6. The watcher waits until the control socket hangs up — the server has exited (the
//!    server keeps its end open until every holder of the child's end is gone). Then it wakes
//!    the threads waiting on a fault the server read but never answered, and answers every
//!    later fault itself: it says which array and block cannot be read, and poisons the page
//!    (SIGBUS; without `UFFDIO_POISON` the child aborts). Fetching in the child instead
//!    would need the server's storage objects, whose locks another thread of the server may
//!    have held at the fork: a hang is worse than a clear failure.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::fork::{describe, Snapshot, CHILDREN};
use super::sys::{page_range, Uffd, UffdMsg, UffdioRange, EVENT_PAGEFAULT, FEATURE_POISON};
use super::{lock, FORKED, SERVER, THREADS};

/// Most control sockets (children of the server, with their descendants) served at once.
pub(super) const CONTROL_SLOTS: usize = 256;

/// The server's ends of the control sockets the fault thread polls: -1 free, `fd` polled.
pub(super) static CONTROLS: [AtomicI32; CONTROL_SLOTS] =
    [const { AtomicI32::new(-1) }; CONTROL_SLOTS];

/// Control sockets made by [`after_fork_in_parent`] and their snapshots, not yet seen by the
/// fault thread.
pub(super) static NEW_CONTROLS: Mutex<Vec<(RawFd, Arc<Snapshot>)>> = Mutex::new(Vec::new());

/// Held from [`before_fork`] to [`after_fork_in_parent`]: one fork of a server at a time,
/// so the pending socket and snapshot below belong to the fork in progress.
static FORK_SERIAL: AtomicBool = AtomicBool::new(false);
/// The fork in progress: the control socket's two ends and the snapshot.
static PENDING_SERVER_END: AtomicI32 = AtomicI32::new(-1);
static PENDING_CHILD_END: AtomicI32 = AtomicI32::new(-1);
static PENDING_SNAPSHOT: Mutex<Option<Arc<Snapshot>>> = Mutex::new(None);

/// In a forked child: its end of the control socket (inherited by its own children) and the
/// snapshot its fetched memory was registered from.
static CONTROL: AtomicI32 = AtomicI32::new(-1);
static INHERITED: Mutex<Option<Arc<Snapshot>>> = Mutex::new(None);

/// The server, if this process is one with fetched memory a child would inherit.
fn serving() -> Option<&'static super::FaultServer> {
    if FORKED.load(Ordering::Relaxed) || THREADS.get().is_none() {
        return None;
    }
    let Some(Ok(server)) = SERVER.get() else {
        return None;
    };
    (server.serves_forks && !super::read(&server.regions).is_empty()).then_some(*server)
}

/// Writes `msg` to stderr: with write(2), not Rust's stderr, whose lock another thread of
/// the parent may have held at the fork.
fn say(msg: &str) {
    // SAFETY: writes our buffer to stderr.
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
}

/// Step 1 (prepare).
pub(in crate::vm) fn before_fork() {
    let Some(server) = serving() else {
        return;
    };
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
    if rc != 0 {
        say(&format!(
            "outcore: warning: no control socket for a forked child ({}): it cannot read \
             fetched memory it has not read before\n",
            std::io::Error::last_os_error()
        ));
        FORK_SERIAL.store(false, Ordering::Release);
        return;
    }
    *lock(&PENDING_SNAPSHOT) = Some(Arc::new(server.snapshot()));
    PENDING_SERVER_END.store(ends[0], Ordering::Release);
    PENDING_CHILD_END.store(ends[1], Ordering::Release);
}

/// Step 2 (parent handler).
pub(in crate::vm) fn after_fork_in_parent() {
    if !FORK_SERIAL.load(Ordering::Acquire) {
        return;
    }
    let server_end = PENDING_SERVER_END.swap(-1, Ordering::AcqRel);
    let child_end = PENDING_CHILD_END.swap(-1, Ordering::AcqRel);
    let snapshot = lock(&PENDING_SNAPSHOT).take();
    if child_end >= 0 {
        // SAFETY: the child's end, made by before_fork; the child has its own copy.
        unsafe { libc::close(child_end) };
    }
    if let (true, Some(snapshot)) = (server_end >= 0, snapshot) {
        lock(&NEW_CONTROLS).push((server_end, snapshot));
        let free = CONTROLS.iter().find(|s| {
            s.compare_exchange(-1, server_end, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        });
        if free.is_none() {
            lock(&NEW_CONTROLS).retain(|(fd, _)| *fd != server_end);
            // SAFETY: our end, never polled: the child sees it hang up.
            unsafe { libc::close(server_end) };
            say(
                "outcore: too many forked children to serve; the newest cannot read fetched \
                 memory it has not read before\n",
            );
        }
    }
    FORK_SERIAL.store(false, Ordering::Release);
}

/// Step 3 (child handler), also in grandchildren (step 5).
pub(in crate::vm) fn after_fork_in_child() {
    FORKED.store(true, Ordering::Relaxed);
    FORK_SERIAL.store(false, Ordering::Relaxed);
    // The server's descriptors are of no use here, and holding its control ends would keep
    // other children from seeing the server hang up.
    for slot in CONTROLS.iter().chain(CHILDREN.iter()) {
        let fd = slot.swap(-1, Ordering::Relaxed);
        if fd >= 0 {
            // SAFETY: a descriptor of the server's tables, inherited, closed once here.
            unsafe { libc::close(fd) };
        }
    }
    let server_end = PENDING_SERVER_END.swap(-1, Ordering::Relaxed);
    if server_end >= 0 {
        // SAFETY: the inherited copy of the server's end, unused here.
        unsafe { libc::close(server_end) };
    }
    let child_end = PENDING_CHILD_END.swap(-1, Ordering::Relaxed);
    // A child of the server, or a descendant of one. (No other thread exists here: the
    // mutexes are free unless a thread of the parent held one at the fork.)
    let (control, snapshot) = if child_end >= 0 {
        let snapshot = PENDING_SNAPSHOT.try_lock().ok().and_then(|mut s| s.take());
        (child_end, snapshot)
    } else {
        let inherited = INHERITED.try_lock().ok().and_then(|s| s.clone());
        (CONTROL.load(Ordering::Relaxed), inherited)
    };
    let (true, Some(snapshot)) = (control >= 0, snapshot) else {
        warn_if_not_inherited();
        return;
    };
    CONTROL.store(control, Ordering::Relaxed);
    if let Ok(mut inherited) = INHERITED.try_lock() {
        *inherited = Some(snapshot.clone());
    }
    let poison = SERVER
        .get()
        .and_then(|s| s.as_ref().ok())
        .is_some_and(|s| s.poison);
    match register_snapshot(&snapshot, poison) {
        Ok(own) => {
            send_fd(control, own.raw());
            start_watcher(Watch {
                own,
                control,
                snapshot,
                poison,
            });
        }
        Err(why) => {
            // Untouched pages would read as zeros: make them fault instead.
            protect_snapshot(&snapshot);
            say(&format!(
                "outcore: warning: this forked child cannot read fetched (compressed or \
                 PostgreSQL) memory it inherited ({why}): touching it is a segfault; use the \
                 'spawn' or 'forkserver' start method\n"
            ));
        }
    }
}

/// With inheritance turned off (`OUTCORE_NO_UFFD_FORK`), says why touching the parent's
/// fetched memory is a segfault here (it is `MADV_DONTFORK`: not inherited).
fn warn_if_not_inherited() {
    let Some(Ok(server)) = SERVER.get() else {
        return;
    };
    let has_regions = server.regions.try_read().map_or(true, |r| !r.is_empty());
    if !server.serves_forks && has_regions {
        say(
            "outcore: warning: this forked child cannot read fetched (compressed or \
             PostgreSQL) arrays of its parent (OUTCORE_NO_UFFD_FORK): touching them is a \
             segfault\n",
        );
    }
}

/// Each run of consecutive registered blocks of `snapshot`, as an address range.
fn registered_runs(snapshot: &Snapshot) -> Vec<UffdioRange> {
    let mut runs = Vec::new();
    for (&base, region) in snapshot {
        let mut blocks: Vec<u64> = region.blocks.keys().copied().collect();
        blocks.sort_unstable();
        let mut run: Option<(u64, u64)> = None;
        for b in blocks {
            match run {
                Some((first, last)) if b == last + 1 => run = Some((first, b)),
                _ => {
                    if let Some((first, last)) = run {
                        runs.push(region.run_range(base, first..last + 1));
                    }
                    run = Some((b, b));
                }
            }
        }
        if let Some((first, last)) = run {
            runs.push(region.run_range(base, first..last + 1));
        }
    }
    runs
}

/// Registers the blocks of `snapshot` with a new userfaultfd of this process (missing pages
/// only) and returns it.
fn register_snapshot(snapshot: &Snapshot, poison: bool) -> Result<Uffd, String> {
    let (uffd, _) = Uffd::open()?;
    let features = if poison { FEATURE_POISON } else { 0 };
    uffd.api(features).map_err(|e| format!("UFFDIO_API: {e}"))?;
    for run in registered_runs(snapshot) {
        uffd.register_missing(run)
            .map_err(|e| format!("registering {:#x}+{:#x}: {e}", run.start, run.len))?;
    }
    Ok(uffd)
}

/// Makes the registered blocks of `snapshot` inaccessible (the fallback when they cannot be
/// registered).
fn protect_snapshot(snapshot: &Snapshot) {
    for run in registered_runs(snapshot) {
        // SAFETY: memory of this process's reservations, inherited; nothing of this library
        // uses it in the child, and a touch should fault rather than read zeros.
        unsafe {
            libc::mprotect(
                run.start as *mut libc::c_void,
                run.len as usize,
                libc::PROT_NONE,
            )
        };
    }
}

/// What the watcher of a forked child needs.
struct Watch {
    /// The child's own userfaultfd.
    own: Uffd,
    /// Its end of the control socket.
    control: RawFd,
    /// What its fetched memory holds, for messages.
    snapshot: Arc<Snapshot>,
    /// The kernel has `UFFDIO_POISON`.
    poison: bool,
}

/// Starts the watcher thread (step 6), with `pthread_create`: std's spawn keeps bookkeeping
/// that another thread of the parent may have held locked at the fork. (glibc resets its
/// allocator in the child before running child handlers, so allocating is fine.)
fn start_watcher(what: Watch) {
    let arg = Box::into_raw(Box::new(what));
    let mut thread: libc::pthread_t = 0;
    // SAFETY: starts a thread running `watch`, which takes ownership of `arg`.
    let rc = unsafe { libc::pthread_create(&mut thread, std::ptr::null(), watch, arg.cast()) };
    if rc == 0 {
        // SAFETY: `thread` was just created and is detached once.
        unsafe { libc::pthread_detach(thread) };
    } else {
        // SAFETY: not handed over: ours to free.
        drop(unsafe { Box::from_raw(arg) });
    }
}

/// Step 6: the watcher thread of a forked child.
extern "C" fn watch(arg: *mut libc::c_void) -> *mut libc::c_void {
    // SAFETY: the Box leaked by start_watcher for this thread alone.
    let watch = unsafe { Box::from_raw(arg.cast::<Watch>()) };
    loop {
        // No events asked: poll reports the hang-up of the server's end (and errors) only.
        let mut pfd = libc::pollfd {
            fd: watch.control,
            events: 0,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, -1) };
        if n > 0 && pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            break;
        }
    }
    take_over(&watch);
    std::ptr::null_mut()
}

/// Answers the faults of this process, whose server is gone.
fn take_over(watch: &Watch) {
    // Threads whose fault the server read but never answered wait until woken.
    for run in registered_runs(&watch.snapshot) {
        watch.own.wake(run);
    }
    let mut msgs = [UffdMsg::EMPTY; 16];
    loop {
        let mut pfd = libc::pollfd {
            fd: watch.own.raw(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, -1) };
        // SAFETY: reads fault messages into a buffer of that many messages.
        let n = unsafe {
            libc::read(
                watch.own.raw(),
                msgs.as_mut_ptr().cast(),
                std::mem::size_of_val(&msgs),
            )
        };
        let count = usize::try_from(n).unwrap_or(0) / std::mem::size_of::<UffdMsg>();
        for msg in msgs[..count].iter().filter(|m| m.event == EVENT_PAGEFAULT) {
            refuse(watch, msg.address as usize);
        }
    }
}

/// A missing page at `addr` nobody can fill: says so, then poisons it (the access gets
/// SIGBUS), or aborts where the kernel cannot poison.
fn refuse(watch: &Watch, addr: usize) {
    let what =
        describe(&watch.snapshot, addr).unwrap_or_else(|| format!("fetched memory at {addr:#x}"));
    say(&format!(
        "outcore: {what} cannot be read in this forked child: the process that served its \
         fetched memory has exited, and this child had not read this block before. Load what \
         a child needs before forking (A.load()), or open the store in the child.\n"
    ));
    if watch.poison && watch.own.poison(page_range(addr)).is_ok() {
        return;
    }
    std::process::abort();
}

/// The buffers of a one-byte message carrying at most one descriptor: the byte, its iovec
/// and room for one control message, aligned as `cmsghdr` wants.
struct Buffers {
    byte: [u8; 1],
    iov: libc::iovec,
    space: [u64; 4],
}

impl Default for Buffers {
    fn default() -> Self {
        Buffers {
            byte: [0],
            iov: libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 1,
            },
            space: [0; 4],
        }
    }
}

impl Buffers {
    /// A message header pointing into these buffers, with `control_len` bytes (at most 32)
    /// of control space: valid while the buffers are neither moved nor dropped.
    fn message(&mut self, control_len: usize) -> libc::msghdr {
        self.iov.iov_base = self.byte.as_mut_ptr().cast();
        // SAFETY: an all-zero msghdr is a valid empty message.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut self.iov;
        msg.msg_iovlen = 1;
        msg.msg_control = self.space.as_mut_ptr().cast();
        msg.msg_controllen = control_len.min(std::mem::size_of_val(&self.space));
        msg
    }
}

/// Step 4 in the server's fault thread: receives a child's descriptor from control socket
/// `control`, without blocking and without allocating. `Ok(Some(fd))`: a descriptor;
/// `Ok(None)`: nothing (yet); `Err(())`: the socket hung up (every holder of the child's end
/// is gone).
pub(super) fn receive(control: RawFd) -> Result<Option<RawFd>, ()> {
    let mut buffers = Buffers::default();
    let mut msg = buffers.message(std::mem::size_of::<[u64; 4]>());
    // SAFETY: receives into the buffers `msg` points to, alive for the call.
    let n = unsafe {
        libc::recvmsg(
            control,
            &mut msg,
            libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT,
        )
    };
    if n == 0 {
        return Err(());
    }
    if n < 0 {
        let e = std::io::Error::last_os_error().raw_os_error();
        return match e {
            Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
            _ => Err(()),
        };
    }
    // SAFETY: the kernel filled the control buffer; the header, if any, lies within it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
        {
            return Ok(None);
        }
        Ok(Some(std::ptr::read_unaligned(
            libc::CMSG_DATA(cmsg).cast::<i32>(),
        )))
    }
}

/// Sends descriptor `fd` over socket `sock` (SCM_RIGHTS).
fn send_fd(sock: RawFd, fd: RawFd) {
    let mut buffers = Buffers::default();
    // SAFETY: CMSG_SPACE only computes a size.
    let msg = buffers.message(unsafe { libc::CMSG_SPACE(4) } as usize);
    // SAFETY: the control buffer holds CMSG_SPACE(4) bytes (32 >= 24), so the first header
    // and its 4 data bytes lie within it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(4) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>(), fd);
        // A server that exited: no SIGPIPE (the watcher then takes over).
        libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL);
    }
}

/// The fault thread's table of control sockets: their snapshots, by the server's end.
#[derive(Default)]
pub(super) struct Controls(HashMap<RawFd, Arc<Snapshot>>);

impl Controls {
    /// The snapshot of control socket `fd` (taking in the sockets made since).
    pub fn snapshot(&mut self, fd: RawFd) -> Option<Arc<Snapshot>> {
        self.0.extend(lock(&NEW_CONTROLS).drain(..));
        self.0.get(&fd).cloned()
    }

    /// Control socket `fd`, polled from `slot`, hung up: forgets and closes it, and frees
    /// the slot (on the fault thread, the only one polling it, so the number is never polled
    /// after its reuse).
    pub fn hung_up(&mut self, fd: RawFd, slot: &AtomicI32) {
        self.0.extend(lock(&NEW_CONTROLS).drain(..));
        self.0.remove(&fd);
        // SAFETY: the server's end of a control socket, polled only by the calling thread,
        // which stops now; closed once.
        unsafe { libc::close(fd) };
        slot.store(-1, Ordering::Release);
    }
}
