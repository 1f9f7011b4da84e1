//! The two threads that receive fault messages: the reader (from the kernel into a pipe,
//! never allocating) and the handler (from the pipe to [`FaultServer::fault`],
//! [`FaultServer::write_fault`] and the forked children's faults).

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::fork::{release_slot, Child, CHILDREN, CHILD_SLOTS};
use super::orphan;
use super::sys::{UffdMsg, EVENT_FORK, EVENT_PAGEFAULT};
use super::FaultServer;

/// A message and the descriptor it was read from, passed from reader to handler.
#[repr(C)]
#[derive(Clone, Copy)]
struct Tagged {
    from: i32,
    msg: UffdMsg,
}

/// Starts the reader and handler threads of `server`, joined by a pipe.
pub(super) fn spawn(server: &'static FaultServer) {
    let mut ends = [-1; 2];
    // SAFETY: creates a pipe into the two descriptors of `ends`.
    let rc = unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "a pipe for fault messages");
    // SAFETY: fresh descriptors owned by nobody else.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
    // SAFETY: fcntl on our own pipe: non-blocking reads, and room for many messages.
    unsafe {
        libc::fcntl(rd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK);
        libc::fcntl(wr.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20);
    }
    std::thread::Builder::new()
        .name("outcore-faults".into())
        .spawn(move || server.handle_faults(rd))
        .expect("spawn the fault handler");
    std::thread::Builder::new()
        .name("outcore-uffd-read".into())
        .spawn(move || server.read_messages(wr))
        .expect("spawn the fault reader");
}

impl FaultServer {
    /// The reader: moves every message of this process's descriptor and of the children's
    /// into `pipe`, each tagged with the descriptor it came from.
    ///
    /// A fork waits in the kernel until its fork event is read, and glibc holds every
    /// malloc arena lock across the fork: so this thread never allocates (nor takes a lock)
    /// after it starts; everything else happens in [`FaultServer::handle_faults`].
    fn read_messages(&'static self, pipe: OwnedFd) {
        let mut msgs = [UffdMsg::EMPTY; 64];
        loop {
            let mut pfds = [libc::pollfd {
                fd: -1,
                events: libc::POLLIN,
                revents: 0,
            }; 1 + CHILD_SLOTS];
            pfds[0].fd = self.uffd.raw();
            for (slot, pfd) in CHILDREN.iter().zip(&mut pfds[1..]) {
                let fd = slot.load(Ordering::Acquire);
                if fd < -1 {
                    // The handler is done with this child: close its descriptor here, where
                    // it is polled, so the number is never polled after its reuse.
                    // SAFETY: the descriptor was received by this thread and is closed once.
                    unsafe { libc::close(-fd - 2) };
                    slot.store(-1, Ordering::Release);
                } else {
                    pfd.fd = fd; // -1: ignored by poll
                }
            }
            // SAFETY: valid pollfds for the duration of the call.
            unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 1000) };
            for pfd in pfds.iter().filter(|p| p.fd >= 0 && p.revents != 0) {
                loop {
                    // Counted, so a fork can wait until its event was handled (orphan.rs).
                    orphan::read_started();
                    // SAFETY: reading fault messages into a buffer of that many messages.
                    let n = unsafe {
                        libc::read(
                            pfd.fd,
                            msgs.as_mut_ptr().cast(),
                            std::mem::size_of_val(&msgs),
                        )
                    };
                    if n <= 0 {
                        orphan::read_done();
                        break; // EAGAIN: no more messages for now
                    }
                    for msg in &msgs[..n as usize / std::mem::size_of::<UffdMsg>()] {
                        if msg.event == EVENT_FORK {
                            // Poll the child from now on (its faults may come before the
                            // handler sees this message).
                            let fd = msg.fork_fd();
                            let free = CHILDREN.iter().find(|s| {
                                s.compare_exchange(-1, fd, Ordering::AcqRel, Ordering::Relaxed)
                                    .is_ok()
                            });
                            if free.is_none() {
                                const FULL: &[u8] = b"outcore: too many forked children to \
serve; the newest cannot read fetched memory\n";
                                // SAFETY: writes a static buffer to stderr.
                                unsafe { libc::write(2, FULL.as_ptr().cast(), FULL.len()) };
                            }
                            if pfd.fd == self.uffd.raw() {
                                // The child holds its descriptor too, to outlive this process.
                                orphan::send_to_child(fd);
                            }
                        }
                        let rec = Tagged {
                            from: pfd.fd,
                            msg: *msg,
                        };
                        // Atomic (smaller than PIPE_BUF); the pipe holds thousands of them,
                        // and each faulting thread has one message outstanding at most.
                        // SAFETY: writes one plain struct to our pipe.
                        unsafe {
                            libc::write(
                                pipe.as_raw_fd(),
                                (&rec as *const Tagged).cast(),
                                std::mem::size_of::<Tagged>(),
                            )
                        };
                    }
                    orphan::read_done();
                }
            }
        }
    }

    /// The handler: dispatches fault messages (from [`FaultServer::read_messages`]) for
    /// this process (steps 3 and 5 of the fault path) and for the forked children it serves.
    fn handle_faults(&'static self, pipe: OwnedFd) {
        let own = self.uffd.raw();
        let mut children: HashMap<i32, Arc<Child>> = HashMap::new();
        let mut last_probe = std::time::Instant::now();
        let mut rec = Tagged {
            from: -1,
            msg: UffdMsg::EMPTY,
        };
        loop {
            let mut pfd = libc::pollfd {
                fd: pipe.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut pfd, 1, 1000) };
            loop {
                // SAFETY: reads one plain struct from our pipe (non-blocking).
                let n = unsafe {
                    libc::read(
                        pipe.as_raw_fd(),
                        (&mut rec as *mut Tagged).cast(),
                        std::mem::size_of::<Tagged>(),
                    )
                };
                if n != std::mem::size_of::<Tagged>() as isize {
                    break;
                }
                let msg = rec.msg;
                let addr = msg.address as usize;
                let wp = msg.is_write_protect();
                if rec.from == own {
                    match msg.event {
                        EVENT_PAGEFAULT if wp => self.write_fault(addr),
                        EVENT_PAGEFAULT => self.fault(addr, msg.is_write()),
                        EVENT_FORK => {
                            let snapshot = Arc::new(self.snapshot());
                            if let Some(c) = Child::new(&msg, snapshot) {
                                children.insert(msg.fork_fd(), c);
                            }
                        }
                        _ => {}
                    }
                } else if let Some(child) = children.get(&rec.from).cloned() {
                    match msg.event {
                        EVENT_PAGEFAULT if wp => child.write_fault(addr),
                        EVENT_PAGEFAULT => self.child_fault(&child, addr),
                        // A grandchild sees what its parent saw.
                        EVENT_FORK => {
                            if let Some(c) = Child::new(&msg, child.snapshot.clone()) {
                                children.insert(msg.fork_fd(), c);
                            }
                        }
                        _ => {}
                    }
                }
            }
            // An exited child sends nothing: ask the kernel now and then; the reader closes
            // the descriptor of a dead one.
            if last_probe.elapsed() >= Duration::from_secs(1) {
                children.retain(|&fd, c| {
                    let alive = c.alive();
                    if !alive {
                        release_slot(fd);
                    }
                    alive
                });
                last_probe = std::time::Instant::now();
            }
        }
    }
}
