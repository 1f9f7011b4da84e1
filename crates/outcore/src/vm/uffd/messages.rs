//! The fault thread: receives the fault messages of this process's userfaultfd and of the
//! forked children's, and the children's descriptors arriving on control sockets, and
//! dispatches each ([`FaultServer::fault`], [`FaultServer::write_fault`],
//! [`FaultServer::child_fault`]).
//!
//! One thread both reads and handles: a fault costs one thread wake-up to get here. (Reading
//! was a thread of its own while kernel fork events were used, which must be read even while
//! the handling waits for a lock; `inherit.rs` needs none.) Messages that arrive while a
//! fault is being handled wait in the kernel's queue meanwhile.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::fork::{release_slot, Child, CHILDREN, CHILD_SLOTS};
use super::inherit::{self, Controls, CONTROLS, CONTROL_SLOTS};
use super::sys::{UffdMsg, EVENT_PAGEFAULT};
use super::FaultServer;

/// Starts the fault thread of `server`.
pub(super) fn spawn(server: &'static FaultServer) {
    std::thread::Builder::new()
        .name("outcore-faults".into())
        .spawn(move || server.serve_messages())
        .expect("spawn the fault thread");
}

/// What the fault thread knows of the forked children it serves.
#[derive(Default)]
struct Children {
    /// By descriptor (the one in a `CHILDREN` slot).
    served: HashMap<RawFd, Arc<Child>>,
    /// The control sockets and their snapshots.
    controls: Controls,
    /// When the children were last asked whether they are alive.
    last_probe: Option<Instant>,
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
    /// The fault thread's loop: polls this process's descriptor, the children's and the
    /// control sockets, and dispatches what arrives.
    fn serve_messages(&'static self) {
        let mut msgs = [UffdMsg::EMPTY; 64];
        let empty = libc::pollfd {
            fd: -1,
            events: libc::POLLIN,
            revents: 0,
        };
        let mut pfds = [empty; 1 + CHILD_SLOTS + CONTROL_SLOTS];
        let mut children = Children::default();
        // The fetch buffer of faults fetched on this thread (writable regions copy from it).
        let mut scratch = Vec::new();
        loop {
            pfds[0].fd = self.uffd.raw();
            pfds[0].revents = 0;
            let (child_fds, control_fds) = pfds[1..].split_at_mut(CHILD_SLOTS);
            poll_slots(&CHILDREN, child_fds);
            poll_slots(&CONTROLS, control_fds);
            // SAFETY: valid pollfds for the duration of the call.
            unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 1000) };
            for (i, pfd) in pfds.iter().enumerate() {
                if pfd.fd < 0 || pfd.revents == 0 {
                    continue;
                }
                if i > CHILD_SLOTS {
                    let slot = &CONTROLS[i - 1 - CHILD_SLOTS];
                    self.receive_children(pfd.fd, slot, &mut children);
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
                        self.dispatch(pfd.fd, msg, &children, &mut scratch);
                    }
                }
            }
            children.forget_dead();
        }
    }

    /// Hands one message read from descriptor `from` to the fault path.
    fn dispatch(
        &'static self,
        from: RawFd,
        msg: &UffdMsg,
        children: &Children,
        scratch: &mut Vec<u8>,
    ) {
        if msg.event != EVENT_PAGEFAULT {
            return;
        }
        let addr = msg.address as usize;
        if from == self.uffd.raw() {
            if msg.is_write_protect() {
                self.write_fault(addr)
            } else {
                self.fault(addr, msg.is_write(), scratch)
            }
        } else if let Some(child) = children.served.get(&from) {
            self.child_fault(child, addr);
        }
    }

    /// Step 4 of `inherit.rs`: takes the descriptors of forked children arriving on control
    /// socket `control` (held in `slot`) and serves them from now on (polled from the next
    /// round, so no fault of a child is read before it is known here).
    fn receive_children(&self, control: RawFd, slot: &AtomicI32, children: &mut Children) {
        loop {
            match inherit::receive(control) {
                Ok(Some(fd)) => {
                    let free = CHILDREN.iter().find(|s| {
                        s.compare_exchange(-1, fd, Ordering::AcqRel, Ordering::Relaxed)
                            .is_ok()
                    });
                    if free.is_some() {
                        let child = children
                            .controls
                            .snapshot(control)
                            .and_then(|s| Child::new(fd, s));
                        match child {
                            Some(c) => {
                                children.served.insert(fd, c);
                            }
                            None => release_slot(fd),
                        }
                    } else {
                        // SAFETY: closes the descriptor received just now.
                        unsafe { libc::close(fd) };
                        eprintln!(
                            "outcore: too many forked children to serve; the newest cannot \
                             read fetched memory it has not read before"
                        );
                        // Hang up on the child, so that it answers its faults itself (fails
                        // them loudly) instead of waiting for this process.
                        children.controls.hung_up(control, slot);
                        return;
                    }
                }
                Ok(None) => return,
                Err(()) => {
                    children.controls.hung_up(control, slot);
                    return;
                }
            }
        }
    }
}

impl Children {
    /// An exited child sends nothing: asks the kernel about every child now and then, and
    /// stops serving (and closes the descriptors of) the dead ones.
    fn forget_dead(&mut self) {
        if self
            .last_probe
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.served.retain(|&fd, c| {
            let alive = c.alive();
            if !alive {
                release_slot(fd);
            }
            alive
        });
        self.last_probe = Some(Instant::now());
    }
}
