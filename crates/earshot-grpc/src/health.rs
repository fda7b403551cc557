//! `grpc.health.v1` (Kubernetes' gRPC probes): the overall service `""` and
//! `earshot.v1.Earshot` are SERVING exactly when HTTP's `/readyz` answers 200, and each
//! loaded collection is SERVING under its own name while the server is ready.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use earshot_server::state::AppState;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::SERVICE_NAME;

/// How often readiness is looked at: a probe sees a drain start within this.
const POLL: Duration = Duration::from_millis(200);

/// Keeps `reporter` equal to the server's readiness (runs until aborted).
pub async fn track(state: Arc<AppState>, reporter: HealthReporter) {
    let mut shown: BTreeMap<String, ServingStatus> = BTreeMap::new();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let ready = state.not_ready().is_none();
        let overall = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        let live = state.live();
        let mut now: Vec<(&str, ServingStatus)> = vec![("", overall), (SERVICE_NAME, overall)];
        // Collections that went away keep their last status (the HTTP side serves a
        // missing entry's loaded version until a restart, too).
        now.extend(live.versions.keys().map(|c| (c.as_str(), overall)));
        for (name, status) in now {
            if shown.get(name) != Some(&status) {
                reporter.set_service_status(name, status).await;
                shown.insert(name.to_owned(), status);
            }
        }
    }
}
