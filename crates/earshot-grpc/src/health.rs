//! `grpc.health.v1` (Kubernetes' gRPC probes): the overall service `""` and
//! `earshot.v1.Earshot` are SERVING exactly when HTTP's `/readyz` answers 200, and each
//! collection is SERVING under its own name while the process is ready.

use std::collections::BTreeMap;
use std::time::Duration;

use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::SERVICE_NAME;

/// How often readiness is looked at: a probe sees a drain start within this.
const POLL: Duration = Duration::from_millis(200);

/// What the health service reports: whether `/readyz` would answer 200, and the
/// collections served.
pub type Readiness = Box<dyn Fn() -> (bool, Vec<String>) + Send + Sync>;

/// Keeps `reporter` equal to `readiness` (runs until aborted).
pub async fn track(readiness: Readiness, reporter: HealthReporter) {
    let mut shown: BTreeMap<String, ServingStatus> = BTreeMap::new();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (ready, collections) = readiness();
        let overall = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        let mut now: Vec<(&str, ServingStatus)> = vec![("", overall), (SERVICE_NAME, overall)];
        // Collections that went away keep their last status (the HTTP side serves a
        // missing entry's loaded version until a restart, too).
        now.extend(collections.iter().map(|c| (c.as_str(), overall)));
        for (name, status) in now {
            if shown.get(name) != Some(&status) {
                reporter.set_service_status(name, status).await;
                shown.insert(name.to_owned(), status);
            }
        }
    }
}
