//! Test-only helpers for earshot (a dev-dependency; never part of the binary).
//!
//! [`S3Server`]: a real S3-compatible server — `s3s-fs`, the file-system-backed server of the
//! `s3s` project, used as a library — serving one bucket from a temporary directory on a
//! loopback port. It runs in its own thread with its own tokio runtime, so sync tests,
//! async tests and child processes (through [`S3Server::env`]) can all use it. It honours
//! conditional writes (`If-None-Match: *`, `If-Match`), ranged reads and multipart uploads.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use anyhow::Context;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

pub mod relay;

/// The access key the server accepts.
pub const ACCESS_KEY: &str = "earshot-test";
/// The secret key the server accepts.
pub const SECRET_KEY: &str = "earshot-test-secret";
/// The bucket created at start.
pub const BUCKET: &str = "earshot";
/// The region clients are told to sign for.
pub const REGION: &str = "us-east-1";

/// A running (or stopped) s3s-fs server; stopped when dropped.
pub struct S3Server {
    data: tempfile::TempDir,
    addr: SocketAddr,
    running: Option<Running>,
}

struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

impl S3Server {
    /// Starts a server on a free loopback port, with the bucket [`BUCKET`] created.
    /// Panics when it cannot (a test cannot go on without it).
    pub fn start() -> Self {
        Self::try_start().expect("start the s3s-fs test server")
    }

    /// [`start`](Self::start), returning the failure.
    pub fn try_start() -> anyhow::Result<Self> {
        let data = tempfile::Builder::new().prefix("earshot-s3-").tempdir()?;
        std::fs::create_dir_all(data.path().join(BUCKET))?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let running = serve(listener, data.path())?;
        Ok(Self {
            data,
            addr,
            running: Some(running),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The socket address the server listens on (kept across [`restart`](Self::restart)).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// [`BUCKET`].
    pub fn bucket(&self) -> &str {
        BUCKET
    }

    /// `s3://earshot/PREFIX`: a store URL inside the bucket (`prefix` may be empty).
    pub fn url(&self, prefix: &str) -> String {
        let prefix = prefix.trim_matches('/');
        if prefix.is_empty() {
            format!("s3://{BUCKET}")
        } else {
            format!("s3://{BUCKET}/{prefix}")
        }
    }

    /// The `AWS_*` variables that point an S3 client (earshot's, in this process through
    /// `Store::open_with_env`, or a child process's environment) at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_DEFAULT_REGION", REGION.to_string()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
            ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false".to_string()),
            ("AWS_SKIP_SIGNATURE", "false".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The directory holding the bucket's objects: the object `KEY` is the file
    /// `data_dir()/KEY` (tests damage objects there).
    pub fn data_dir(&self) -> PathBuf {
        self.data.path().join(BUCKET)
    }

    /// Whether the server is serving.
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Stops serving: the port is closed and open connections are dropped (the data stays).
    pub fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = r.stop.send(());
            let _ = r.thread.join();
        }
    }

    /// Serves again on the same port, with the same data.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        // The port was ours a moment ago; another process may grab it in between, rarely.
        let mut last = None;
        for _ in 0..50 {
            match std::net::TcpListener::bind(self.addr) {
                Ok(l) => {
                    self.running = Some(serve(l, self.data.path())?);
                    return Ok(());
                }
                Err(e) => {
                    last = Some(e);
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        }
        Err(last.expect("tried")).with_context(|| format!("cannot listen on {} again", self.addr))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Serves `root` (a directory of buckets) on `listener` from a new thread with its own
/// runtime; returns once the server accepts connections.
fn serve(listener: std::net::TcpListener, root: &Path) -> anyhow::Result<Running> {
    listener.set_nonblocking(true)?;
    let fs = s3s_fs::FileSystem::new(root)
        .map_err(|e| anyhow::anyhow!("cannot serve {}: {e:?}", root.display()))?;
    let service = {
        let mut b = S3ServiceBuilder::new(fs);
        b.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        b.build()
    };
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<()>>();
    let thread = std::thread::Builder::new()
        .name("s3s-fs".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let http = ConnBuilder::new(TokioExecutor::new());
                loop {
                    let socket = tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok((socket, _)) => socket,
                            Err(e) => {
                                tracing::warn!("s3s-fs test server: accept failed: {e}");
                                continue;
                            }
                        },
                        _ = &mut stop_rx => break,
                    };
                    let conn = http
                        .serve_connection(TokioIo::new(socket), service.clone())
                        .into_owned();
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                }
            });
            // Dropping the runtime drops every connection task: clients see the server gone.
            rt.shutdown_background();
        })?;
    ready_rx
        .recv()
        .context("the s3s-fs thread died at start")??;
    Ok(Running {
        stop: stop_tx,
        thread,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_stops_and_restarts_on_the_same_port() {
        let mut s = S3Server::start();
        let addr = s.addr();
        assert!(std::net::TcpStream::connect(addr).is_ok());
        s.stop();
        assert!(std::net::TcpStream::connect(addr).is_err());
        s.restart().unwrap();
        assert_eq!(s.addr(), addr);
        assert!(std::net::TcpStream::connect(addr).is_ok());
        assert!(s.data_dir().is_dir());
        assert_eq!(s.url("a/b/"), "s3://earshot/a/b");
        assert!(s
            .env()
            .iter()
            .any(|(k, v)| k == "AWS_ALLOW_HTTP" && v == "true"));
    }
}
