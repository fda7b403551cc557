//! Another transport served beside HTTP on its own listener (gRPC: the `earshot-grpc`
//! crate, which depends on this one, so it comes in as a value): bound with the HTTP
//! listener (a bad address stops start-up), started on the same state once ready, and
//! stopped by the same shutdown — when the HTTP listener closes, after the drain.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::conn::Slots;
use crate::state::AppState;

pub type RunFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// A transport to serve beside HTTP.
pub struct Sidecar {
    /// Its name in the `NAME listening on http://ADDR` line and the log.
    pub name: &'static str,
    pub addr: SocketAddr,
    /// Serves on the bound listener until the shutdown resolves, then finishes the
    /// requests in flight; every connection it accepts takes a place in the `Slots`
    /// shared with HTTP (the process's one descriptor budget).
    pub run: Box<dyn FnOnce(TcpListener, Arc<AppState>, Slots, Shutdown) -> RunFuture + Send>,
}

/// Resolves when the server stops listening.
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    pub async fn wait(mut self) {
        // An error means the sender is gone: the server is stopping anyway.
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// Binds every sidecar's listener.
pub async fn bind(sidecars: Vec<Sidecar>) -> anyhow::Result<Vec<(Sidecar, TcpListener)>> {
    let mut bound = Vec::with_capacity(sidecars.len());
    for s in sidecars {
        let l = TcpListener::bind(s.addr)
            .await
            .with_context(|| format!("cannot listen on {} (--{}-addr)", s.addr, s.name))?;
        bound.push((s, l));
    }
    Ok(bound)
}

/// The running sidecars and their stop switch.
pub struct Running {
    stop: StopHandle,
    tasks: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)>,
}

/// Starts the bound sidecars, printing `NAME listening on http://ADDR` for each (before
/// the HTTP line, so that a script waiting for that one has seen these too).
pub fn start(bound: Vec<(Sidecar, TcpListener)>, state: &Arc<AppState>, slots: &Slots) -> Running {
    let (stop, rx) = watch::channel(false);
    let tasks = bound
        .into_iter()
        .map(|(s, l)| {
            if let Ok(a) = l.local_addr() {
                tracing::info!(addr = %a, "{} listening", s.name);
                println!("{} listening on http://{a}", s.name);
            }
            let task = tokio::spawn((s.run)(
                l,
                state.clone(),
                slots.clone(),
                Shutdown(rx.clone()),
            ));
            (s.name, task)
        })
        .collect();
    Running {
        stop: StopHandle(Arc::new(stop)),
        tasks,
    }
}

/// Closes the sidecars' listeners (their in-flight requests finish).
#[derive(Clone)]
pub struct StopHandle(Arc<watch::Sender<bool>>);

impl StopHandle {
    pub fn stop(&self) {
        let _ = self.0.send(true);
    }
}

impl Running {
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Waits for every sidecar to finish; a sidecar's failure is logged.
    pub async fn join(self) {
        self.stop.stop();
        for (name, task) in self.tasks {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!("{name} server failed: {e:#}"),
                Err(e) => tracing::error!("{name} server panicked: {e}"),
            }
        }
    }
}
