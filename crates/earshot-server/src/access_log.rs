//! `--access-log`: one INFO line per answered request (`all`), per failed one (`errors`,
//! the default: 5xx answers only, so a busy server's logs stay quiet), or none (`off`).
//! The line sits in the request's span, so `--log-format json` gives request id, trace id,
//! method and URI beside status and latency.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use axum::response::Response;

/// Which answers get a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum AccessLog {
    Off = 0,
    Errors = 1,
    All = 2,
}

// One process-wide setting, read once per request: a switch, not per-server state.
static LEVEL: AtomicU8 = AtomicU8::new(AccessLog::Errors as u8);

/// Set once at start (`serve`/`route`).
pub fn set(level: AccessLog) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

pub fn on_response(resp: &Response, latency: Duration, _span: &tracing::Span) {
    let level = LEVEL.load(Ordering::Relaxed);
    let status = resp.status().as_u16();
    if level == AccessLog::All as u8 || (level == AccessLog::Errors as u8 && status >= 500) {
        tracing::info!(status, latency_us = latency.as_micros() as u64, "answered");
    }
}
