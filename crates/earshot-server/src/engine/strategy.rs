//! A taste request's `strategy` and `fan_out`, checked into an
//! [`earshot_recommend::strategy::Strategy`]. Public: the router makes the same checks.

use earshot_recommend::strategy::{
    FanOut, Strategy, DEFAULT_FAN_OUT, MAX_DAMPING, MAX_PER_ITEM, MAX_SEED_ITEMS, STRATEGIES,
};

use super::error::QueryError;
use crate::api::TasteRequest;
use crate::error_code::ErrorCode;

/// The strategy of a request that names none.
pub const DEFAULT_STRATEGY: &str = "mean";

/// The strategy `req` asks for (default [`DEFAULT_STRATEGY`]), with its fan-out checked:
/// `fan_out` only with a seed-based strategy, `damping` only with `neighbours`, and no
/// `centroids` above 1 with a seed-based strategy (seeds are the history items themselves).
pub fn check_strategy(req: &TasteRequest) -> Result<Strategy, QueryError> {
    let name = req.strategy.as_deref().unwrap_or(DEFAULT_STRATEGY);
    let spec = req.fan_out.unwrap_or_default();
    let fan = FanOut {
        items: spec.items.unwrap_or(DEFAULT_FAN_OUT.items),
        per_item: spec.per_item.unwrap_or(DEFAULT_FAN_OUT.per_item),
        damping: spec.damping.unwrap_or(DEFAULT_FAN_OUT.damping),
    };
    let strategy = Strategy::parse(name, fan).ok_or_else(|| {
        QueryError::new(
            ErrorCode::UnknownStrategy,
            format!("strategy {name:?} is not one of: {STRATEGIES}"),
        )
    })?;
    let bad = |m: String| Err(QueryError::new(ErrorCode::InvalidFanOut, m));
    match strategy {
        Strategy::Mean if req.fan_out.is_some() => {
            return bad("fan_out applies to the neighbours and best_score strategies".into())
        }
        Strategy::Mean => return Ok(strategy),
        Strategy::BestScore(_) if spec.damping.is_some() => {
            return bad("fan_out.damping applies to the neighbours strategy only".into())
        }
        _ => {}
    }
    if req.centroids.is_some_and(|n| n > 1) {
        return bad(format!(
            "centroids apply to the mean strategy; {name} walks from the history items"
        ));
    }
    if fan.items == 0 || fan.items > MAX_SEED_ITEMS {
        return bad(format!(
            "fan_out.items must be between 1 and {MAX_SEED_ITEMS} (got {})",
            fan.items
        ));
    }
    if fan.per_item == 0 || fan.per_item > MAX_PER_ITEM {
        return bad(format!(
            "fan_out.per_item must be between 1 and {MAX_PER_ITEM} (got {})",
            fan.per_item
        ));
    }
    if !(0.0..=MAX_DAMPING).contains(&fan.damping) {
        return bad(format!(
            "fan_out.damping must be within 0…{MAX_DAMPING} (got {})",
            fan.damping
        ));
    }
    Ok(strategy)
}
