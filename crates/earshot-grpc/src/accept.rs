//! The gRPC listener's connections, each holding a place in the process's connection budget
//! (`earshot_server::conn::Slots`, shared with HTTP): past the cap a connection is closed at
//! once and counted, as on the HTTP port; one that has not sent the HTTP/2 preface within
//! the header-read timeout is closed (a client that connects and sends nothing cannot keep
//! its place), and so is one without a call for the idle timeout ([`crate::calls`]); and a
//! failed accept (out of descriptors) pauses instead of spinning — tonic's own loop
//! retries an `Err` at once.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use earshot_server::conn::{Slot, Slots};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tokio_stream::Stream;
use tonic::transport::server::Connected;

use crate::calls::{Calls, ConnInfo};

/// The client's first bytes on an HTTP/2 connection (RFC 9113 §3.4).
const PREFACE_LEN: usize = 24;

/// A connection and its place, given back when tonic drops the connection.
pub struct Held {
    io: TcpStream,
    _slot: Slot,
    slots: Slots,
    calls: Arc<Calls>,
    /// Bytes received so far, counted until the preface is in.
    received: usize,
    /// Until the preface is in: when the connection is closed without it; after: when it
    /// is closed for want of calls. One timer per connection, reset rather than re-created.
    timer: Pin<Box<Sleep>>,
}

/// The accepted connections that got a place (the others are closed on the spot).
pub fn incoming(
    listener: TcpListener,
    slots: Slots,
) -> Pin<Box<dyn Stream<Item = io::Result<Held>> + Send>> {
    Box::pin(futures_util::stream::unfold(
        (listener, slots, None),
        |(listener, slots, mut warned)| async move {
            loop {
                match listener.accept().await {
                    Ok((io, _)) => {
                        let Some(slot) = slots.admit() else { continue };
                        // Small answers go out at once, as on the HTTP side.
                        let _ = io.set_nodelay(true);
                        let by = tokio::time::sleep(slots.timeouts.header_read);
                        let held = Held {
                            io,
                            _slot: slot,
                            slots: slots.clone(),
                            calls: Calls::new(),
                            received: 0,
                            timer: Box::pin(by),
                        };
                        return Some((Ok(held), (listener, slots, warned)));
                    }
                    Err(e) => {
                        slots.accept_failed(&e, &mut warned);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        },
    ))
}

impl Connected for Held {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        ConnInfo {
            tcp: self.io.connect_info(),
            calls: self.calls.clone(),
        }
    }
}

impl Held {
    /// The socket would block: fails the read once the connection has gone without its
    /// preface, or without a call, for too long; else arms the timer for that moment.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if self.received < PREFACE_LEN {
            if self.timer.as_mut().poll(cx).is_pending() {
                return None;
            }
            self.slots.header_timed_out();
            return Some(io::Error::new(
                io::ErrorKind::TimedOut,
                "no HTTP/2 preface within the header-read timeout: closing",
            ));
        }
        let idle = self.slots.timeouts.idle;
        let at = self.calls.idle_at(idle, cx)?;
        if self.timer.deadline() != at {
            self.timer.as_mut().reset(at);
        }
        if self.timer.as_mut().poll(cx).is_pending() {
            return None;
        }
        self.slots.idle_timed_out();
        Some(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no call for {} ms: closing", idle.as_millis()),
        ))
    }
}

impl AsyncRead for Held {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.received < PREFACE_LEN {
                    this.received += buf.filled().len() - before;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
            other => other,
        }
    }
}

impl AsyncWrite for Held {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
