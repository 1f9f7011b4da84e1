//! Rust `tracing` events delivered to Python's `logging`: the `outcore` logger, or its child
//! named after the Rust module (`outcore::db::handle` logs to `outcore.db.handle`).
//!
//! An event is never handed to Python where it happens. The emitting thread may hold core
//! locks (a commit holds its connection's lock), and it may lack the GIL while another thread
//! holds the GIL and waits for that lock or for that thread (a fault worker loading a block
//! that a Python thread touched with the GIL held): attaching there would deadlock, and a
//! logging handler calling back into outcore could re-enter a held lock. So the event is only
//! queued, under a mutex that is never held while anything else is called, and delivered
//! later by a thread that holds no core lock:
//!
//! * events of a thread inside a native call made through [`call`] are buffered for that
//!   thread and delivered by it once the call's work is done and the GIL is taken back: in
//!   order, and before the call returns to Python (so handlers see them synchronously);
//! * every other event (fault workers, PostgreSQL heartbeats, destructors, calls that keep the
//!   GIL) goes to one bounded process-wide queue, emptied by a delivery thread that takes the
//!   GIL like any Python thread. When the queue is full the oldest events are dropped and
//!   counted; the count is logged with the next delivery. At interpreter shutdown delivery
//!   stops and what is queued is lost.
//!
//! Which events are forwarded is a `tracing` filter: `OUTCORE_LOG` (`warn` by default; e.g.
//! `info`, `outcore::vm=debug,warn`) at import, [`set_log_filter`] afterwards.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Condvar, Mutex, OnceLock};

use pyo3::exceptions::PyValueError;
use pyo3::marker::Ungil;
use pyo3::prelude::*;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::{reload, Registry};

/// Events waiting in the process-wide queue at most; older ones are dropped beyond.
const QUEUE_CAP: usize = 1024;

/// One event, formatted where it happened.
struct Record {
    level: Level,
    target: String,
    message: String,
    file: Option<&'static str>,
    line: Option<u32>,
    /// The Rust thread that emitted it (fault workers have names).
    thread: Option<String>,
}

impl Record {
    fn new(event: &Event<'_>) -> Self {
        let meta = event.metadata();
        let mut visitor = Message(String::new());
        event.record(&mut visitor);
        Record {
            level: *meta.level(),
            target: meta.target().to_string(),
            message: visitor.0,
            file: meta.file(),
            line: meta.line(),
            thread: std::thread::current().name().map(str::to_string),
        }
    }

    /// The Python logger: `outcore.` plus the target's path with dots.
    fn logger_name(&self) -> String {
        let dotted = self.target.replace("::", ".");
        if dotted == "outcore" || dotted.starts_with("outcore.") {
            dotted
        } else {
            format!("outcore.{dotted}")
        }
    }

    fn python_level(&self) -> i32 {
        match self.level {
            Level::ERROR => 40,
            Level::WARN => 30,
            Level::INFO => 20,
            Level::DEBUG => 10,
            Level::TRACE => 5,
        }
    }
}

/// The event's message, then its other fields as `name=value`.
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let sep = if self.0.is_empty() { "" } else { " " };
        let _ = if field.name() == "message" {
            write!(self.0, "{sep}{value:?}")
        } else {
            write!(self.0, "{sep}{}={value:?}", field.name())
        };
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            let sep = if self.0.is_empty() { "" } else { " " };
            let _ = write!(self.0, "{sep}{value}");
        } else {
            self.record_debug(field, &value);
        }
    }
}

thread_local! {
    /// Events of this thread while it runs a [`call`]; `None` outside one.
    static LOCAL: RefCell<Option<Vec<Record>>> = const { RefCell::new(None) };
}

/// The process-wide queue and its delivery thread.
struct Shared {
    queue: VecDeque<Record>,
    dropped: u64,
    /// The process that started the delivery thread (a forked child needs its own).
    worker_pid: Option<u32>,
}

static SHARED: Mutex<Shared> = Mutex::new(Shared {
    queue: VecDeque::new(),
    dropped: 0,
    worker_pid: None,
});
static WAKE: Condvar = Condvar::new();

fn shared() -> std::sync::MutexGuard<'static, Shared> {
    SHARED.lock().unwrap_or_else(|p| p.into_inner())
}

fn enqueue(record: Record) {
    let mut s = shared();
    if s.queue.len() >= QUEUE_CAP {
        s.queue.pop_front();
        s.dropped += 1;
    }
    s.queue.push_back(record);
    let pid = std::process::id();
    let start = s.worker_pid != Some(pid);
    if start {
        s.worker_pid = Some(pid);
    }
    drop(s);
    if start {
        let spawned = std::thread::Builder::new()
            .name("outcore-log".into())
            .spawn(deliver_forever);
        if spawned.is_err() {
            shared().worker_pid = None; // try again with the next event
        }
    }
    WAKE.notify_one();
}

/// The delivery thread: waits for queued events, then delivers them holding the GIL.
fn deliver_forever() {
    loop {
        {
            let mut s = shared();
            while s.queue.is_empty() && s.dropped == 0 {
                s = WAKE.wait(s).unwrap_or_else(|p| p.into_inner());
            }
        }
        // Taken out of the queue only with the GIL held, so events queued while waiting for
        // it are delivered in the same round.
        let attached = Python::try_attach(|py| {
            let (records, dropped) = {
                let mut s = shared();
                (std::mem::take(&mut s.queue), std::mem::take(&mut s.dropped))
            };
            if dropped > 0 {
                let note = format!("{dropped} log events were dropped (the queue was full)");
                emit(py, "outcore", 30, &note, None, None, None);
            }
            for r in records {
                deliver(py, &r);
            }
        });
        if attached.is_none() {
            return; // the interpreter is gone or going
        }
    }
}

fn deliver(py: Python<'_>, r: &Record) {
    emit(
        py,
        &r.logger_name(),
        r.python_level(),
        &r.message,
        r.file,
        r.line,
        r.thread.as_deref(),
    );
}

/// Hands one record to `logging.getLogger(name)`, if that logger wants its level.
fn emit(
    py: Python<'_>,
    name: &str,
    level: i32,
    message: &str,
    file: Option<&str>,
    line: Option<u32>,
    thread: Option<&str>,
) {
    let result = (|| -> PyResult<()> {
        let logger = py.import("logging")?.getattr("getLogger")?.call1((name,))?;
        if !logger.call_method1("isEnabledFor", (level,))?.is_truthy()? {
            return Ok(());
        }
        let none = py.None();
        let record = logger.call_method1(
            "makeRecord",
            (
                name,
                level,
                file.unwrap_or("(rust)"),
                line.unwrap_or(0),
                message,
                &none,
                &none,
            ),
        )?;
        if let Some(thread) = thread {
            record.setattr("threadName", thread)?;
        }
        logger.call_method1("handle", (record,))?;
        Ok(())
    })();
    // Handler failures are reported by `logging` itself (`Handler.handleError`); what is
    // left is an interpreter that cannot log any more: nothing sensible to do with it.
    drop(result);
}

/// Runs `f` with the GIL released (as `py.detach`), then delivers the events `f` emitted on
/// this thread, in order, before returning.
pub fn call<T, F>(py: Python<'_>, f: F) -> T
where
    F: Ungil + FnOnce() -> T,
    T: Ungil,
{
    /// Restores the outer buffer; events left in this one (a panic) go to the queue.
    struct Scope(Option<Vec<Record>>);
    impl Drop for Scope {
        fn drop(&mut self) {
            let outer = self.0.take();
            let left = LOCAL
                .try_with(|l| std::mem::replace(&mut *l.borrow_mut(), outer))
                .ok()
                .flatten();
            for r in left.into_iter().flatten() {
                enqueue(r);
            }
        }
    }
    let outer = LOCAL
        .try_with(|l| l.borrow_mut().replace(Vec::new()))
        .ok()
        .flatten();
    let scope = Scope(outer);
    let out = py.detach(f);
    let mine = LOCAL
        .try_with(|l| l.borrow_mut().as_mut().map(std::mem::take))
        .ok()
        .flatten()
        .unwrap_or_default();
    // The outer buffer is back before handlers run: a handler calling outcore nests cleanly.
    drop(scope);
    for r in &mine {
        deliver(py, r);
    }
    out
}

/// The `tracing` layer queueing events for Python.
struct ToPython;

impl<S: Subscriber> Layer<S> for ToPython {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let record = Record::new(event);
        let unbuffered = LOCAL
            .try_with(|l| match l.try_borrow_mut() {
                Ok(mut l) => match l.as_mut() {
                    Some(buf) => {
                        buf.push(record);
                        None
                    }
                    None => Some(record),
                },
                // Emitted while this thread's buffer is being swapped: queue it.
                Err(_) => Some(record),
            })
            .unwrap_or(None);
        if let Some(record) = unbuffered {
            enqueue(record);
        }
    }
}

/// Changes the filter of the installed subscriber.
static FILTER: OnceLock<reload::Handle<Targets, Registry>> = OnceLock::new();

/// Parses a filter: `warn`, `info`, `outcore::vm=debug,warn`, ...
fn parse_filter(spec: &str) -> Result<Targets, String> {
    spec.parse::<Targets>()
        .map_err(|e| format!("bad log filter {spec:?}: {e}"))
}

/// Installs the subscriber forwarding to Python (once per process), filtered by
/// `OUTCORE_LOG` or `warn`. If another subscriber was installed first, events go there.
pub fn install() {
    let default = || Targets::new().with_default(LevelFilter::WARN);
    let configured = std::env::var("OUTCORE_LOG").ok().map(|s| parse_filter(&s));
    let filter = match &configured {
        Some(Ok(f)) => f.clone(),
        _ => default(),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let subscriber = Registry::default().with(filter).with(ToPython);
    if tracing::subscriber::set_global_default(subscriber).is_ok() {
        let _ = FILTER.set(handle);
    }
    if let Some(Err(e)) = configured {
        tracing::warn!("ignoring OUTCORE_LOG: {e}");
    }
}

/// Replaces the filter of the events forwarded to Python (`OUTCORE_LOG` syntax).
#[pyfunction]
pub fn set_log_filter(spec: &str) -> PyResult<()> {
    let filter = parse_filter(spec).map_err(PyValueError::new_err)?;
    let handle = FILTER
        .get()
        .ok_or_else(|| PyValueError::new_err("another tracing subscriber was installed first"))?;
    handle
        .reload(filter)
        .map_err(|e| PyValueError::new_err(e.to_string()))
}
