//! The checks `serve` makes before it searches, made here before any shard is asked, with
//! the same codes and messages (`earshot-server/src/engine/list.rs` and `history.rs`; those
//! resolve IDs to rows of a local collection, which a router does not have).

use std::fmt::Display;

use earshot_recommend::constraints::{Emerging, Shape};
use earshot_recommend::history::{self, Evidence};
use earshot_server::api::{ListSpec, TasteRequest};
use earshot_server::engine::QueryError;
use earshot_server::error_code::ErrorCode;
use earshot_server::limits::{DEFAULT_K, MAX_EF, MAX_EXCLUDE, MAX_HISTORY, MAX_K};
use serde_json::{json, Map, Value};

use crate::cluster::Meta;

/// A validated list request: its shape (applied by the router on the merged pool), beam
/// width, and the hard filter as the shards take it.
pub struct Plan {
    pub shape: Shape,
    pub ef: usize,
    /// `filter` for the shards (creators, exclude_creators, popularity bounds), or None.
    pub filter: Option<Map<String, Value>>,
}

pub fn list(spec: &ListSpec, meta: &Meta) -> Result<Plan, QueryError> {
    let k = spec.k.unwrap_or(DEFAULT_K);
    if k == 0 || k > MAX_K {
        return Err(QueryError::new(
            ErrorCode::InvalidK,
            format!("k must be between 1 and {MAX_K} (got {k})"),
        ));
    }
    let ef = match spec.ef {
        Some(ef) if ef == 0 || ef > MAX_EF => {
            return Err(QueryError::new(
                ErrorCode::InvalidEf,
                format!("ef must be between 1 and {MAX_EF} (got {ef})"),
            ))
        }
        Some(ef) => ef,
        None => meta.default_ef,
    }
    .max(k);
    if let Some(ids) = spec.exclude {
        if ids.len() > MAX_EXCLUDE {
            return Err(QueryError::new(
                ErrorCode::ExcludeTooLarge,
                format!(
                    "exclude holds at most {MAX_EXCLUDE} IDs (got {})",
                    ids.len()
                ),
            ));
        }
    }
    let mut filter = None;
    if let Some(f) = spec.filter {
        let mut out = Map::new();
        for (field, names) in [
            ("creators", &f.creators),
            ("exclude_creators", &f.exclude_creators),
        ] {
            if let Some(names) = names {
                if names.len() > MAX_EXCLUDE {
                    return Err(QueryError::new(
                        ErrorCode::FilterTooLarge,
                        format!("filter.{field} holds at most {MAX_EXCLUDE} names"),
                    ));
                }
                out.insert(field.into(), json!(names));
            }
        }
        if let (Some(allow), Some(deny)) = (&f.creators, &f.exclude_creators) {
            if let Some(both) = allow.iter().find(|a| deny.contains(a)) {
                return Err(QueryError::new(
                    ErrorCode::ConflictingFilters,
                    format!("creator {both:?} is both allowed and excluded"),
                ));
            }
        }
        for (name, v) in [
            ("min_popularity", f.min_popularity),
            ("max_popularity", f.max_popularity),
        ] {
            if v.is_some_and(|v| !v.is_finite()) {
                return Err(QueryError::new(
                    ErrorCode::InvalidFilter,
                    format!("filter.{name} must be a finite number"),
                ));
            }
            if let Some(v) = v {
                out.insert(name.into(), json!(v));
            }
        }
        if let (Some(lo), Some(hi)) = (f.min_popularity, f.max_popularity) {
            if lo > hi {
                return Err(QueryError::new(
                    ErrorCode::ConflictingFilters,
                    format!("filter.min_popularity {lo} is above filter.max_popularity {hi}"),
                ));
            }
        }
        filter = Some(out);
    }
    if spec.max_per_creator == Some(0) {
        return Err(QueryError::new(
            ErrorCode::InvalidMaxPerCreator,
            "max_per_creator must be at least 1",
        ));
    }
    let emerging = match spec.emerging {
        Some(e) => {
            let share = e.min_share.unwrap_or(0.3);
            if !(0.0..=1.0).contains(&share) || !e.max_popularity.is_finite() {
                return Err(QueryError::new(
                    ErrorCode::InvalidEmerging,
                    "emerging.min_share must be within 0…1 and emerging.max_popularity finite",
                ));
            }
            if !meta.has_popularity || meta.creators == 0 {
                return Err(QueryError::new(
                    ErrorCode::NoPopularity,
                    format!(
                        "collection {:?} has no creator popularity to tell emerging creators apart",
                        meta.name
                    ),
                ));
            }
            Some(Emerging {
                max_popularity: e.max_popularity,
                min_share: share,
            })
        }
        None => None,
    };
    Ok(Plan {
        shape: Shape {
            k,
            max_per_creator: spec.max_per_creator,
            emerging,
        },
        ef,
        filter,
    })
}

/// The history's global options: its size, `half_life` and `now`.
pub struct HistoryClock {
    half_life: Option<std::time::Duration>,
    now: jiff::Timestamp,
}

pub fn history_clock(req: &TasteRequest) -> Result<HistoryClock, QueryError> {
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

/// Each history item's evidence, its ID resolved by `resolve` (None: unknown in
/// `source`), in the order and with the errors of `serve`.
pub fn evidence(
    req: &TasteRequest,
    clock: &HistoryClock,
    source: &str,
    resolve: impl Fn(&str) -> Option<u32>,
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
                let played_at = parse_time(t, &format_args!("history[{i}].played_at"))?;
                clock
                    .half_life
                    .map_or(1.0, |h| history::recency(played_at, clock.now, h))
            }
            None => 1.0,
        };
        let row = resolve(&item.id).ok_or_else(|| {
            QueryError::new(
                ErrorCode::UnknownId,
                format!("no item with id {:?} in collection {:?}", item.id, source),
            )
        })?;
        out.push(Evidence {
            row,
            weight: w as f64 * ew as f64 * recency as f64,
        });
    }
    Ok(out)
}

fn parse_time(t: &str, field: &dyn Display) -> Result<jiff::Timestamp, QueryError> {
    t.parse::<jiff::Timestamp>().map_err(|_| {
        QueryError::new(
            ErrorCode::InvalidTimestamp,
            format!("{field} {t:?} is not an RFC 3339 time such as \"2026-11-26T08:00:00Z\""),
        )
    })
}
