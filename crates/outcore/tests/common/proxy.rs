//! A TCP proxy on 127.0.0.1 in front of the test PostgreSQL server, to cut the network
//! deterministically: drop the server's reply to a COMMIT, or make the server unreachable
//! (every connection cut, new ones closed at once) until told otherwise.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The proxy; stops accepting when dropped (connections it forwards end with their peers).
pub struct Proxy {
    /// `host:port` to put in a url instead of the server's.
    pub addr: String,
    shared: Arc<Shared>,
}

struct Shared {
    /// While set, new connections are closed at once and forwarded ones are cut.
    down: AtomicBool,
    /// When set, the next connection sending COMMIT has it forwarded, then is cut before the
    /// reply comes back, and the proxy goes down.
    cut_at_commit: AtomicBool,
    /// Set when an armed cut happened.
    cut: AtomicBool,
    /// Clones of the client sockets, to cut them.
    clients: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
}

impl Proxy {
    /// A proxy forwarding to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let shared = Arc::new(Shared {
            down: AtomicBool::new(false),
            cut_at_commit: AtomicBool::new(false),
            cut: AtomicBool::new(false),
            clients: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let upstream = upstream.to_string();
        let s = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                if s.down.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                s.clients.lock().unwrap().push(client.try_clone().unwrap());
                forward(s.clone(), client, server);
            }
        });
        Proxy { addr, shared }
    }

    /// `url` (of the test server) pointing at this proxy instead.
    pub fn url(&self, url: &str) -> String {
        let at = url.rfind('@').unwrap() + 1;
        let end = url[at..].find('/').unwrap() + at;
        format!("{}{}{}", &url[..at], self.addr, &url[end..])
    }

    /// Takes the server off the network: cuts every connection, refuses new ones.
    pub fn go_down(&self) {
        self.shared.down.store(true, Ordering::SeqCst);
        cut_all(&self.shared);
    }

    /// Forwards again.
    pub fn come_up(&self) {
        self.shared.down.store(false, Ordering::SeqCst);
    }

    /// Arms the cut at the next COMMIT (see [`Shared::cut_at_commit`]).
    pub fn cut_at_next_commit(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
        self.shared.cut_at_commit.store(true, Ordering::SeqCst);
    }

    /// True once an armed cut happened.
    pub fn commit_was_cut(&self) -> bool {
        self.shared.cut.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        cut_all(&self.shared);
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect(&self.addr);
    }
}

fn cut_all(s: &Shared) {
    for c in s.clients.lock().unwrap().drain(..) {
        let _ = c.shutdown(Shutdown::Both);
    }
}

/// Copies both directions between `client` and `server` on two threads.
fn forward(s: Arc<Shared>, mut client: TcpStream, mut server: TcpStream) {
    let mut client_w = client.try_clone().unwrap();
    let mut server_w = server.try_clone().unwrap();
    let s2 = s.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = match client.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let chunk = &buf[..n];
            // A simple-protocol Query message whose text is COMMIT.
            let commit = chunk.windows(7).any(|w| w == b"COMMIT\0");
            if commit && s2.cut_at_commit.swap(false, Ordering::SeqCst) {
                // Down first, so the reply is dropped however fast it comes; then the
                // server gets the COMMIT and the client never hears back.
                s2.down.store(true, Ordering::SeqCst);
                let _ = server_w.write_all(chunk);
                cut_all(&s2);
                s2.cut.store(true, Ordering::SeqCst);
                break;
            }
            if s2.down.load(Ordering::SeqCst) || server_w.write_all(chunk).is_err() {
                break;
            }
        }
        let _ = server_w.shutdown(Shutdown::Both);
        let _ = client.shutdown(Shutdown::Both);
    });
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = match server.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if s.down.load(Ordering::SeqCst) || client_w.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = client_w.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
    });
}
