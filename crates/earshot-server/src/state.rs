//! What the handlers share: the served collections and the server's operational state.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::auth::Keys;
use crate::metrics::Metrics;
use crate::overload::Limiter;
use crate::registry::{Live, Registry};

pub struct AppState {
    /// The served collections; swapped whole on reload.
    pub registry: Arc<Registry>,
    /// Each middleware takes its own part as its state (see `router`).
    pub metrics: Arc<Metrics>,
    pub limiter: Arc<Limiter>,
    pub keys: Arc<Keys>,
    pub ready: AtomicBool,
}

impl AppState {
    /// The collections a request works on (lock-free; keeps them mapped while held).
    pub fn live(&self) -> Arc<Live> {
        self.registry.live()
    }
}
