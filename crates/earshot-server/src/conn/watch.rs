//! The per-connection watchdog: a TCP stream that fails its own reads once the client has
//! been silent for too long, so hyper closes the connection.
//!
//! Three deadlines, checked whenever hyper waits on the socket (a pending read or write),
//! none while a request is being handled (that is `--request-timeout-ms`'s job):
//! - a connection that has not yet sent a whole first request head: `header_read_timeout`
//!   from the moment it was accepted (a client that connects and sends nothing, or half a
//!   request line, is closed after it);
//! - bytes of a new request head received but not all of it: `header_read_timeout` from
//!   its first byte (slowloris);
//! - between requests on a kept-alive connection: `idle_timeout` from the end of the last
//!   answer (longer: a caller's connection pool keeps connections idle on purpose).
//!
//! Done in the IO rather than with hyper's own `header_read_timeout` because hyper's timer
//! also runs between requests, which would make the idle timeout no longer than the header
//! timeout. The bookkeeping per request is two atomic increments and one store (the
//! request-side half is [`ConnState::begin`]); the clock is read only when a read returns
//! bytes or the socket would block.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::ConnMetrics;

/// What the request side tells the IO side, shared by one connection's two halves.
#[derive(Debug)]
pub struct ConnState {
    opened: Instant,
    /// Requests being handled (HTTP/2 may have several).
    busy: AtomicU32,
    /// Requests started so far: a change tells the reader its pending head became a request.
    started: AtomicU64,
    /// When the last answer was made, in nanoseconds since `opened`.
    last_end: AtomicU64,
}

impl ConnState {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            busy: AtomicU32::new(0),
            started: AtomicU64::new(0),
            last_end: AtomicU64::new(0),
        })
    }

    /// A request has been parsed and is about to be handled; the guard ends it.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.busy.fetch_add(1, Ordering::AcqRel);
        self.started.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }
}

/// Ends its request when dropped: answered, failed, or abandoned by a client that left.
pub struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let s = &self.0;
        let since = s.opened.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        s.last_end.store(since, Ordering::Release);
        s.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub header_read: Duration,
    pub idle: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expiry {
    Header,
    Idle,
}

pub struct Watched {
    io: TcpStream,
    state: Arc<ConnState>,
    timeouts: Timeouts,
    metrics: ConnMetrics,
    /// One timer per connection, moved rather than re-created.
    timer: Pin<Box<Sleep>>,
    /// `state.started` when this side last looked.
    seen_started: u64,
    /// First byte of a request head not yet handed to the service.
    head_since: Option<Instant>,
}

impl Watched {
    pub fn new(io: TcpStream, state: Arc<ConnState>, t: Timeouts, metrics: ConnMetrics) -> Self {
        let first = state.opened + t.header_read;
        Self {
            io,
            state,
            timeouts: t,
            metrics,
            timer: Box::pin(tokio::time::sleep_until(first)),
            seen_started: 0,
            head_since: None,
        }
    }

    /// Forget a head that has since become a request.
    fn sync(&mut self) {
        let started = self.state.started.load(Ordering::Acquire);
        if started != self.seen_started {
            self.seen_started = started;
            self.head_since = None;
        }
    }

    fn deadline(&mut self) -> Option<(Instant, Expiry)> {
        if self.state.busy.load(Ordering::Acquire) > 0 {
            return None;
        }
        self.sync();
        if let Some(t) = self.head_since {
            return Some((t + self.timeouts.header_read, Expiry::Header));
        }
        if self.seen_started == 0 {
            return Some((
                self.state.opened + self.timeouts.header_read,
                Expiry::Header,
            ));
        }
        let last = Duration::from_nanos(self.state.last_end.load(Ordering::Acquire));
        Some((self.state.opened + last + self.timeouts.idle, Expiry::Idle))
    }

    /// After an answer is written: hyper may not read again until something wakes it (its
    /// last read was while the request was being handled), so the idle deadline's timer is
    /// armed here, to wake the connection for the read that will then fail.
    fn arm(&mut self, cx: &mut Context<'_>) {
        if let Some((at, _)) = self.deadline() {
            if self.timer.deadline() != at {
                self.timer.as_mut().reset(at);
            }
            if self.timer.as_mut().poll(cx).is_ready() {
                cx.waker().wake_by_ref();
            }
        }
    }

    /// A write's outcome: a client that stops reading its answers stalls the write, which
    /// counts as idle too; a finished write may end an answer, so the idle timer is armed.
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match r {
            Poll::Pending => match self.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
            ready => {
                self.arm(cx);
                ready
            }
        }
    }

    /// Called when the socket would block: arms the timer, or fails once it has fired.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let (at, why) = self.deadline()?;
        if self.timer.deadline() != at {
            self.timer.as_mut().reset(at);
        }
        self.timer.as_mut().poll(cx).is_ready().then(|| {
            let (reason, what) = match why {
                Expiry::Header => ("header_timeout", "no complete request head within"),
                Expiry::Idle => ("idle_timeout", "idle for"),
            };
            self.metrics.closed(reason);
            let limit = match why {
                Expiry::Header => self.timeouts.header_read,
                Expiry::Idle => self.timeouts.idle,
            };
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{what} {} ms: closing", limit.as_millis()),
            )
        })
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                // Bytes while no request is being handled start (or continue) a head;
                // bytes during one are its body, bounded by the request timeout.
                if buf.filled().len() > before && this.state.busy.load(Ordering::Acquire) == 0 {
                    this.sync();
                    this.head_since.get_or_insert_with(Instant::now);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
            ready => ready,
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.wrote(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wrote(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let done = Pin::new(&mut this.io).poll_flush(cx);
        if done.is_ready() {
            this.arm(cx);
        }
        done
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
