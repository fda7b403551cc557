//! A delaying, lossy TCP relay for fault tests: put it between a client and one server to make
//! that server slow or flaky without touching it (this kernel has no `netem`).
//!
//! [`Relay::start`] listens on a free loopback port and forwards every connection to a target
//! address. Faults can be changed while it runs:
//!
//! - [`Relay::set_delay`]: every chunk read from the client waits this long before it is
//!   forwarded (chunks stay in order). For keep-alive HTTP, where a request is one chunk, this
//!   adds the delay to every request. Answers flow back without delay.
//! - [`Relay::set_drop_every`]: every n-th accepted connection is closed after its first chunk
//!   arrives, without forwarding it — the client has sent a request and sees the connection end
//!   with no answer, as when a server dies mid-request.
//! - [`Relay::set_refuse`]: close every new connection at once and every open one at its next
//!   chunk (a replica that is gone), until turned off again.
//!
//! Like [`S3Server`](crate::S3Server) it runs on its own thread with its own tokio runtime, so
//! sync tests, async tests and child processes can all use it; it stops (closing every
//! connection) when dropped.
//!
//! ```no_run
//! use std::time::Duration;
//! let relay = earshot_testkit::relay::Relay::start("127.0.0.1:7700".parse().unwrap()).unwrap();
//! relay.set_delay(Duration::from_millis(50));
//! let slow_replica = format!("http://{}", relay.addr());
//! # let _ = slow_replica;
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Counters of what the relay has done since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Chunks forwarded from a client to the target.
    pub chunks: u64,
    /// Connections the relay closed on purpose (drop-every, refuse).
    pub dropped: u64,
    /// Connections whose target could not be reached.
    pub connect_failures: u64,
}

#[derive(Default)]
struct Shared {
    delay_us: AtomicU64,
    drop_every: AtomicU64,
    refuse: AtomicBool,
    accepted: AtomicU64,
    chunks: AtomicU64,
    dropped: AtomicU64,
    connect_failures: AtomicU64,
}

/// A running relay; stopped (every connection closed) when dropped.
pub struct Relay {
    addr: SocketAddr,
    target: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    /// Listens on a free loopback port and forwards to `target`, with no fault set.
    pub fn start(target: SocketAddr) -> anyhow::Result<Relay> {
        Self::start_on("127.0.0.1:0".parse().expect("a socket address"), target)
    }

    /// [`start`](Self::start) on a given listening address (port 0: any free port).
    pub fn start_on(listen: SocketAddr, target: SocketAddr) -> anyhow::Result<Relay> {
        let std_listener =
            std::net::TcpListener::bind(listen).with_context(|| format!("relay: bind {listen}"))?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<()>>();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("relay-{}", addr.port()))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.into()));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    tokio::select! {
                        _ = stop_rx => {}
                        _ = accept_loop(listener, target, thread_shared) => {}
                    }
                });
                // Dropping the runtime here cancels every connection task and closes its sockets.
                drop(runtime);
            })
            .context("relay: spawn its thread")?;
        ready_rx
            .recv()
            .context("relay: its thread ended before it was ready")??;
        Ok(Relay {
            addr,
            target,
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address the relay forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Delay every chunk from a client by `delay` before forwarding it (zero: none).
    pub fn set_delay(&self, delay: Duration) {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.shared.delay_us.store(us, Ordering::Relaxed);
    }

    /// Close every `n`-th accepted connection after its first chunk, unanswered (0: never).
    pub fn set_drop_every(&self, n: u64) {
        self.shared.drop_every.store(n, Ordering::Relaxed);
    }

    /// While `true`, close new connections at once and open ones at their next chunk.
    pub fn set_refuse(&self, refuse: bool) {
        self.shared.refuse.store(refuse, Ordering::Relaxed);
    }

    /// What the relay has done so far.
    pub fn stats(&self) -> RelayStats {
        RelayStats {
            accepted: self.shared.accepted.load(Ordering::Relaxed),
            chunks: self.shared.chunks.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            connect_failures: self.shared.connect_failures.load(Ordering::Relaxed),
        }
    }

    /// Stops listening and closes every connection (also done on drop).
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    loop {
        let (client, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!("relay: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let n = shared.accepted.fetch_add(1, Ordering::Relaxed) + 1;
        if shared.refuse.load(Ordering::Relaxed) {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            drop(client);
            continue;
        }
        let every = shared.drop_every.load(Ordering::Relaxed);
        let drop_this = every > 0 && n.is_multiple_of(every);
        tokio::spawn(relay_one(client, target, shared.clone(), drop_this));
    }
}

async fn relay_one(client: TcpStream, target: SocketAddr, shared: Arc<Shared>, drop_this: bool) {
    let _ = client.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    if drop_this {
        // Wait for the request, then hang up without forwarding it.
        let mut buf = [0u8; 1];
        let _ = client_read.read(&mut buf).await;
        shared.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let upstream = match TcpStream::connect(target).await {
        Ok(s) => s,
        Err(_) => {
            shared.connect_failures.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let (mut up_read, mut up_write) = upstream.into_split();
    let forward = {
        let shared = shared.clone();
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match client_read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if shared.refuse.load(Ordering::Relaxed) {
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                let delay = shared.delay_us.load(Ordering::Relaxed);
                if delay > 0 {
                    tokio::time::sleep(Duration::from_micros(delay)).await;
                }
                if up_write.write_all(&buf[..n]).await.is_err() {
                    return true;
                }
                shared.chunks.fetch_add(1, Ordering::Relaxed);
            }
            let _ = up_write.shutdown().await;
            false
        }
    };
    let back = async move {
        let _ = tokio::io::copy(&mut up_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    // A fault (or the target closing) ends both directions at once; a clean client EOF still
    // lets the answer flow back.
    tokio::pin!(back);
    tokio::select! {
        fault = forward => {
            if !fault {
                back.await;
            }
        }
        _ = &mut back => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream as StdStream;
    use std::time::Instant;

    /// An echo server on a loopback port, answering each read with the same bytes.
    fn echo_server() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    loop {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if conn.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    fn connect(relay: &Relay) -> StdStream {
        let s = StdStream::connect(relay.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    fn round_trip(s: &mut StdStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        s.write_all(msg)?;
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got)?;
        Ok(got)
    }

    #[test]
    fn relay_forwards_both_ways() {
        let relay = Relay::start(echo_server()).unwrap();
        let mut s = connect(&relay);
        for i in 0..20u8 {
            let msg = [i; 100];
            assert_eq!(round_trip(&mut s, &msg).unwrap(), msg);
        }
        let stats = relay.stats();
        assert_eq!(stats.accepted, 1);
        assert_eq!(stats.chunks, 20);
        assert_eq!(stats.dropped, 0);
    }

    #[test]
    fn relay_delays_each_chunk_and_can_be_changed_live() {
        let relay = Relay::start(echo_server()).unwrap();
        let mut s = connect(&relay);
        round_trip(&mut s, b"warm").unwrap();
        relay.set_delay(Duration::from_millis(60));
        for _ in 0..3 {
            let t = Instant::now();
            round_trip(&mut s, b"ping").unwrap();
            assert!(
                t.elapsed() >= Duration::from_millis(60),
                "{:?}",
                t.elapsed()
            );
        }
        relay.set_delay(Duration::ZERO);
        let t = Instant::now();
        round_trip(&mut s, b"ping").unwrap();
        assert!(t.elapsed() < Duration::from_millis(60), "{:?}", t.elapsed());
    }

    #[test]
    fn relay_drop_every_closes_the_nth_connection_unanswered() {
        let relay = Relay::start(echo_server()).unwrap();
        relay.set_drop_every(2);
        let mut first = connect(&relay);
        let mut second = connect(&relay);
        let mut third = connect(&relay);
        assert_eq!(round_trip(&mut first, b"a").unwrap(), b"a");
        // The second connection sends its request and gets end-of-stream (or a reset).
        second.write_all(b"b").unwrap();
        let mut buf = [0u8; 1];
        assert!(matches!(second.read(&mut buf), Ok(0) | Err(_)));
        assert_eq!(round_trip(&mut third, b"c").unwrap(), b"c");
        assert_eq!(relay.stats().dropped, 1);
    }

    #[test]
    fn relay_refuse_cuts_open_and_new_connections_until_lifted() {
        let relay = Relay::start(echo_server()).unwrap();
        let mut open = connect(&relay);
        assert_eq!(round_trip(&mut open, b"x").unwrap(), b"x");
        relay.set_refuse(true);
        assert!(round_trip(&mut open, b"y").is_err());
        let mut fresh = connect(&relay);
        assert!(round_trip(&mut fresh, b"z").is_err());
        relay.set_refuse(false);
        let mut again = connect(&relay);
        assert_eq!(round_trip(&mut again, b"w").unwrap(), b"w");
        assert!(relay.stats().dropped >= 2);
    }

    #[test]
    fn relay_counts_unreachable_targets_and_stops_cleanly() {
        // A port that was free a moment ago: nothing listens there.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let mut relay = Relay::start(dead).unwrap();
        let mut s = connect(&relay);
        assert!(round_trip(&mut s, b"q").is_err());
        // The failure is counted once the relay's task has run.
        let deadline = Instant::now() + Duration::from_secs(5);
        while relay.stats().connect_failures == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(relay.stats().connect_failures, 1);
        let addr = relay.addr();
        relay.stop();
        assert!(StdStream::connect(addr).is_err());
    }
}
