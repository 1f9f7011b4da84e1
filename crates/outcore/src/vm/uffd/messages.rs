//! The two threads that receive fault messages: the reader (from the kernel into a pipe,
//! never allocating) and the handler (from the pipe to [`FaultServer::fault`],
//! [`FaultServer::write_fault`] and the forked children's faults).

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::fork::{release_slot, Child, CHILDREN, CHILD_SLOTS};
use super::inherit::{self, Controls, CONTROLS, CONTROL_SLOTS};
use super::sys::{UffdMsg, EVENT_PAGEFAULT};
use super::FaultServer;

/// What a [`Tagged`] record carries.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A message of a userfaultfd.
    Message,
    /// A forked child's userfaultfd (in `msg.flags`), received on control socket `from`.
    Adopt,
    /// Control socket `from` hung up.
    HungUp,
}

/// A record passed from reader to handler: a message and the descriptor it was read from.
#[repr(C)]
#[derive(Clone, Copy)]
struct Tagged {
    kind: Kind,
    from: RawFd,
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

/// Writes `rec` to the handler's pipe (atomic: smaller than PIPE_BUF; the pipe holds
/// thousands of records, and each faulting thread has one message outstanding at most).
fn pass(pipe: &OwnedFd, rec: Tagged) {
    // SAFETY: writes one plain struct to our pipe.
    unsafe {
        libc::write(
            pipe.as_raw_fd(),
            (&rec as *const Tagged).cast(),
            std::mem::size_of::<Tagged>(),
        )
    };
}

/// Takes the descriptors to poll from `slots` (-1 free, below -1 not polled) into `pfds`.
fn poll_slots(slots: &[AtomicI32], pfds: &mut [libc::pollfd]) {
    for (slot, pfd) in slots.iter().zip(pfds) {
        let fd = slot.load(Ordering::Acquire);
        pfd.fd = fd.max(-1); // -1: ignored by poll
        pfd.revents = 0;
    }
}

impl FaultServer {
    /// The reader: moves every message of this process's descriptor and of the children's
    /// into `pipe`, each tagged with the descriptor it came from, and the children's
    /// descriptors arriving on control sockets (`inherit.rs`).
    ///
    /// It never allocates nor takes a lock after it starts: the handler may wait for
    /// anything, and the messages must keep flowing meanwhile.
    fn read_messages(&'static self, pipe: OwnedFd) {
        let mut msgs = [UffdMsg::EMPTY; 64];
        let empty = libc::pollfd {
            fd: -1,
            events: libc::POLLIN,
            revents: 0,
        };
        let mut pfds = [empty; 1 + CHILD_SLOTS + CONTROL_SLOTS];
        loop {
            pfds[0].fd = self.uffd.raw();
            pfds[0].revents = 0;
            for slot in &CHILDREN {
                let fd = slot.load(Ordering::Acquire);
                if fd < -1 {
                    // The handler is done with this child: close its descriptor here, where
                    // it is polled, so the number is never polled after its reuse.
                    // SAFETY: the descriptor was received by this thread and is closed once.
                    unsafe { libc::close(-fd - 2) };
                    slot.store(-1, Ordering::Release);
                }
            }
            let (children, controls) = pfds[1..].split_at_mut(CHILD_SLOTS);
            poll_slots(&CHILDREN, children);
            poll_slots(&CONTROLS, controls);
            // SAFETY: valid pollfds for the duration of the call.
            unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 1000) };
            for (i, pfd) in pfds.iter().enumerate() {
                if pfd.fd < 0 || pfd.revents == 0 {
                    continue;
                }
                if i > CHILD_SLOTS {
                    self.receive_children(pfd.fd, &CONTROLS[i - 1 - CHILD_SLOTS], &pipe);
                    continue;
                }
                loop {
                    // SAFETY: reading fault messages into a buffer of that many messages.
                    let n = unsafe {
                        libc::read(
                            pfd.fd,
                            msgs.as_mut_ptr().cast(),
                            std::mem::size_of_val(&msgs),
                        )
                    };
                    if n <= 0 {
                        break; // EAGAIN: no more messages for now
                    }
                    for msg in &msgs[..n as usize / std::mem::size_of::<UffdMsg>()] {
                        let kind = Kind::Message;
                        let (from, msg) = (pfd.fd, *msg);
                        pass(&pipe, Tagged { kind, from, msg });
                    }
                }
            }
        }
    }

    /// Step 4 of `inherit.rs`: takes the descriptors of forked children arriving on control
    /// socket `control` (held in `slot`), polls them from now on, and tells the handler.
    fn receive_children(&self, control: RawFd, slot: &AtomicI32, pipe: &OwnedFd) {
        let record = |kind, fd: RawFd| {
            let mut msg = UffdMsg::EMPTY;
            msg.flags = fd as u32 as u64;
            Tagged {
                kind,
                from: control,
                msg,
            }
        };
        loop {
            match inherit::receive(control) {
                Ok(Some(fd)) => {
                    let free = CHILDREN.iter().find(|s| {
                        s.compare_exchange(-1, fd, Ordering::AcqRel, Ordering::Relaxed)
                            .is_ok()
                    });
                    if free.is_some() {
                        // Polled from the next round on: the handler sees this record
                        // before any fault of the child.
                        pass(pipe, record(Kind::Adopt, fd));
                    } else {
                        const FULL: &[u8] = b"outcore: too many forked children to serve; the \
newest cannot read fetched memory it has not read before\n";
                        // SAFETY: writes a static buffer to stderr; closes the descriptor
                        // received just now.
                        unsafe {
                            libc::write(2, FULL.as_ptr().cast(), FULL.len());
                            libc::close(fd);
                        }
                        // Hang up on the child, so that it answers its faults itself (fails
                        // them loudly) instead of waiting for this process.
                        slot.store(-control - 2, Ordering::Release);
                        pass(pipe, record(Kind::HungUp, -1));
                        return;
                    }
                }
                Ok(None) => return,
                Err(()) => {
                    // Stop polling it; the handler forgets and closes it.
                    slot.store(-control - 2, Ordering::Release);
                    pass(pipe, record(Kind::HungUp, -1));
                    return;
                }
            }
        }
    }

    /// The handler: dispatches fault messages (from [`FaultServer::read_messages`]) for
    /// this process (steps 3 and 5 of the fault path) and for the forked children it serves.
    fn handle_faults(&'static self, pipe: OwnedFd) {
        let own = self.uffd.raw();
        let mut children: HashMap<RawFd, Arc<Child>> = HashMap::new();
        let mut controls = Controls::default();
        let mut last_probe = std::time::Instant::now();
        let mut rec = Tagged {
            kind: Kind::Message,
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
                // SAFETY: reads one plain struct from our pipe (non-blocking); only the
                // reader writes there, whole records with a valid `kind`.
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
                match rec.kind {
                    Kind::Adopt => {
                        let fd = msg.flags as u32 as RawFd;
                        match controls.snapshot(rec.from).and_then(|s| Child::new(fd, s)) {
                            Some(c) => {
                                children.insert(fd, c);
                            }
                            None => release_slot(fd),
                        }
                    }
                    Kind::HungUp => controls.hung_up(rec.from),
                    Kind::Message if msg.event != EVENT_PAGEFAULT => {}
                    Kind::Message if rec.from == own => {
                        if msg.is_write_protect() {
                            self.write_fault(addr)
                        } else {
                            self.fault(addr, msg.is_write())
                        }
                    }
                    Kind::Message => {
                        if let Some(child) = children.get(&rec.from).cloned() {
                            self.child_fault(&child, addr);
                        }
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
