//! Which gRPC connections are idle: each connection's calls in flight, counted by a layer in
//! front of every service ([`CountCalls`]) and read by the connection's IO (`accept::Held`),
//! which closes a connection that has had no call for the idle timeout — gRPC's
//! `MAX_CONNECTION_IDLE`: HTTP/2 pings and window updates do not count as use, an open
//! stream does (however quiet), and the clock starts when the last call ended or, before
//! the first, when the connection was accepted.
//!
//! A call ends when its response body is dropped (answered, failed, or cancelled by a client
//! that left), so a stream counts for as long as it is open. Per call: two atomic updates and
//! a clock read; no allocation.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use http_body::{Body as HttpBody, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tonic::transport::server::TcpConnectInfo;

/// One connection's calls, shared by its IO and its requests.
#[derive(Debug)]
pub struct Calls {
    opened: Instant,
    busy: AtomicU32,
    /// When the last call ended, in nanoseconds since `opened` (0: none yet).
    last_end: AtomicU64,
    /// The connection's IO, woken when its last call ends so it arms the idle timer (h2 may
    /// not read the socket again until then).
    io: AtomicWaker,
}

impl Calls {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            busy: AtomicU32::new(0),
            last_end: AtomicU64::new(0),
            io: AtomicWaker::new(),
        })
    }

    fn begin(self: &Arc<Self>) -> Call {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Call(self.clone())
    }

    /// When the connection counts as idle for `idle`, or `None` while a call is open.
    /// Registers `cx` first, so a call ending after the check wakes it.
    pub fn idle_at(&self, idle: Duration, cx: &Context<'_>) -> Option<Instant> {
        self.io.register(cx.waker());
        if self.busy.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = Duration::from_nanos(self.last_end.load(Ordering::Acquire));
        Some(self.opened + last + idle)
    }
}

/// A call in flight; ends it when dropped.
struct Call(Arc<Calls>);

impl Drop for Call {
    fn drop(&mut self) {
        let c = &self.0;
        let since = c.opened.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        c.last_end.store(since.max(1), Ordering::Release);
        if c.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            c.io.wake();
        }
    }
}

/// What a gRPC request knows of its connection (tonic puts it in the request's extensions).
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub tcp: TcpConnectInfo,
    pub calls: Arc<Calls>,
}

/// The layer that counts each connection's calls (see the module comment).
#[derive(Clone, Copy, Debug, Default)]
pub struct CountCalls;

impl<S> tower::Layer<S> for CountCalls {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Counted<S> {
    inner: S,
}

impl<S, Req, B> tower::Service<http::Request<Req>> for Counted<S>
where
    S: tower::Service<http::Request<Req>, Response = http::Response<B>>,
{
    type Response = http::Response<Tracked<B>>;
    type Error = S::Error;
    type Future = Counting<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Req>) -> Self::Future {
        let call = req.extensions().get::<ConnInfo>().map(|i| i.calls.begin());
        Counting {
            inner: self.inner.call(req),
            call,
        }
    }
}

pin_project! {
    /// A call's response on its way: the call moves into the body once there is one.
    pub struct Counting<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }
}

impl<F, B, E> Future for Counting<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<Tracked<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = std::task::ready!(this.inner.poll(cx))?;
        let call = this.call.take();
        Poll::Ready(Ok(res.map(|inner| Tracked { inner, _call: call })))
    }
}

pin_project! {
    /// A response body that holds its call open until it is dropped.
    pub struct Tracked<B> {
        #[pin]
        inner: B,
        _call: Option<Call>,
    }
}

impl<B: HttpBody> HttpBody for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
