//! A taste request's history: validated and resolved to evidence, then handed to
//! [`earshot_recommend::taste`] for probes.

use std::fmt::Display;

use earshot_core::delta::View;
use earshot_recommend::history::{self, Evidence};
use earshot_recommend::select::Probe;
use earshot_recommend::taste::{Taste, TasteError};

use super::error::QueryError;
use super::unknown_id;
use crate::api::TasteRequest;
use crate::error_code::ErrorCode;
use crate::limits::{MAX_CENTROIDS, MAX_HISTORY};

/// Resolves the history to rows of `source` and signed evidence weights.
pub(super) fn evidence(source: View<'_>, req: &TasteRequest) -> Result<Vec<Evidence>, QueryError> {
    let clock = check_history(req)?;
    weigh_history(req, &clock, &source.base.name, |id| source.row_of(id))
}

/// The history's `half_life` and `now`, once [`check_history`] has accepted them.
pub struct HistoryClock {
    half_life: Option<std::time::Duration>,
    now: jiff::Timestamp,
}

/// The checks of a history that come before its items: at least one item and at most
/// [`MAX_HISTORY`], `half_life` a positive duration, `now` an RFC 3339 time (default: now).
pub fn check_history(req: &TasteRequest) -> Result<HistoryClock, QueryError> {
    if req.history.is_empty() {
        return Err(QueryError::new(
            ErrorCode::EmptyHistory,
            "history must list at least one item",
        ));
    }
    if req.history.len() > MAX_HISTORY {
        return Err(QueryError::new(
            ErrorCode::HistoryTooLarge,
            format!(
                "history holds at most {MAX_HISTORY} items (got {})",
                req.history.len()
            ),
        ));
    }
    let half_life = req
        .half_life
        .as_deref()
        .map(|h| {
            humantime::parse_duration(h)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    QueryError::new(
                        ErrorCode::InvalidHalfLife,
                        format!(
                            "half_life {h:?} is not a positive duration such as \"30d\" or \"12h\""
                        ),
                    )
                })
        })
        .transpose()?;
    let now = match &req.now {
        Some(t) => parse_time(t, &"now")?,
        None => jiff::Timestamp::now(),
    };
    Ok(HistoryClock { half_life, now })
}

/// Each history item's evidence, in order, each item checked (weight, event, `played_at`)
/// before its ID is resolved by `row_of` (None: no such item in the collection named
/// `source`). `serve` resolves to rows of the collection; the router to positions of the
/// vectors it fetched from the shards.
pub fn weigh_history(
    req: &TasteRequest,
    clock: &HistoryClock,
    source: &str,
    row_of: impl Fn(&str) -> Option<u32>,
) -> Result<Vec<Evidence>, QueryError> {
    let mut out = Vec::with_capacity(req.history.len());
    for (i, item) in req.history.iter().enumerate() {
        let w = item.weight.unwrap_or(1.0);
        if !(w.is_finite() && w > 0.0) {
            return Err(QueryError::new(
                ErrorCode::InvalidWeight,
                format!(
                    "history[{i}].weight must be a finite number > 0 (got {w}); use \"event\" \
                     for negative evidence"
                ),
            ));
        }
        let event = item.event.as_deref().unwrap_or("play");
        let ew = history::event_weight(event).ok_or_else(|| {
            QueryError::new(
                ErrorCode::UnknownEvent,
                format!(
                    "history[{i}].event {event:?} is not one of: {}",
                    history::EVENTS
                ),
            )
        })?;
        let recency = match &item.played_at {
            Some(t) => {
                // Checked even without a half-life: a bad time is a client bug either way.
                let played_at = parse_time(t, &format_args!("history[{i}].played_at"))?;
                clock
                    .half_life
                    .map_or(1.0, |h| history::recency(played_at, clock.now, h))
            }
            None => 1.0,
        };
        let row = row_of(&item.id).ok_or_else(|| unknown_id(source, &item.id))?;
        out.push(Evidence {
            row,
            weight: w as f64 * ew as f64 * recency as f64,
        });
    }
    Ok(out)
}

/// `field` is only formatted into the message of an error.
fn parse_time(t: &str, field: &dyn Display) -> Result<jiff::Timestamp, QueryError> {
    t.parse::<jiff::Timestamp>().map_err(|_| {
        QueryError::new(
            ErrorCode::InvalidTimestamp,
            format!("{field} {t:?} is not an RFC 3339 time such as \"2026-11-26T08:00:00Z\""),
        )
    })
}

/// One probe of `c` per taste centroid of the evidence (rows of `source`).
pub(super) fn probes(
    c: View<'_>,
    source: View<'_>,
    evidence: &[Evidence],
    centroids: Option<usize>,
) -> Result<Vec<Probe>, QueryError> {
    let taste = Taste::new(&source, evidence).map_err(taste_error)?;
    let n = check_centroids(centroids)?;
    taste.probes(c, n).map_err(taste_error)
}

/// How many taste centroids a request asks for (default 1, at most [`MAX_CENTROIDS`]).
pub fn check_centroids(centroids: Option<usize>) -> Result<usize, QueryError> {
    let n = centroids.unwrap_or(1);
    if n == 0 || n > MAX_CENTROIDS {
        return Err(QueryError::new(
            ErrorCode::InvalidCentroids,
            format!("centroids must be between 1 and {MAX_CENTROIDS} (got {n})"),
        ));
    }
    Ok(n)
}

/// Why a history gives no taste, as `serve` (and the router) words it.
pub fn taste_error(e: TasteError) -> QueryError {
    match e {
        TasteError::NoPositiveEvidence => QueryError::new(
            ErrorCode::NoPositiveHistory,
            "the history holds only negative evidence (skips, dislikes): nothing says what to \
             recommend",
        ),
        TasteError::TooManyCentroids { asked, available } => QueryError::new(
            ErrorCode::TooManyCentroids,
            format!(
                "centroids {asked} is more than the {available} distinct positively weighted \
                 history items"
            ),
        ),
        TasteError::Degenerate => QueryError::new(
            ErrorCode::DegenerateHistory,
            "the history's vectors cancel out: there is no taste direction to search",
        ),
    }
}
