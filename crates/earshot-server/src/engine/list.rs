//! The list options every query takes (`k`, `ef`, `exclude`, `filter`, `max_per_creator`,
//! `emerging`), validated into the constraints [`earshot_recommend::select`] enforces.

use earshot_core::delta::View;
use earshot_recommend::constraints::{Emerging, HardFilter, Shape};

use super::error::QueryError;
use crate::api::ListSpec;
use crate::error_code::ErrorCode;
use crate::limits::{DEFAULT_K, MAX_BOOST, MAX_EF, MAX_EXCLUDE, MAX_K};

/// The hard filter (with `always_exclude` rows left out), the list's shape and the beam
/// width of `spec` on `c` (`default_ef` when it gives none).
pub(super) fn constraints(
    c: View<'_>,
    spec: &ListSpec,
    default_ef: usize,
    always_exclude: &[u32],
) -> Result<(HardFilter, Shape, usize), QueryError> {
    let (shape, ef) = check_list(
        spec,
        default_ef,
        &c.base.name,
        c.base.manifest.has_popularity && c.base.creator_count() != 0,
    )?;
    let mut filter = HardFilter::default();
    let mut exclude: Vec<u32> = always_exclude.to_vec();
    // Unknown IDs cannot be returned anyway.
    exclude.extend(
        spec.exclude
            .into_iter()
            .flatten()
            .filter_map(|id| c.row_of(id)),
    );
    exclude.sort_unstable();
    exclude.dedup();
    filter.exclude = exclude;
    if let Some(f) = spec.filter {
        let creators = |names: &[String]| -> Vec<u32> {
            let mut v: Vec<u32> = names.iter().filter_map(|n| c.creator_named(n)).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        filter.allow_creators = f.creators.as_deref().map(creators);
        if let Some(deny) = &f.exclude_creators {
            filter.deny_creators = creators(deny);
        }
        filter.min_popularity = f.min_popularity;
        filter.max_popularity = f.max_popularity;
    }
    Ok((filter, shape, ef))
}

/// Every check of `spec` that needs no rows of a collection, in `serve`'s order, with its
/// codes and messages: `k`, `ef` (`default_ef` when it gives none; never below `k`), the
/// sizes of `exclude` and of the creator filters, conflicting filters, popularity bounds,
/// `max_per_creator`, `emerging` — which the collection named `collection` can only take
/// when it `has_creator_popularity` (popularity and at least one creator). Returns the
/// list's shape and the beam width. The router makes these checks before it asks any shard.
pub fn check_list(
    spec: &ListSpec,
    default_ef: usize,
    collection: &str,
    has_creator_popularity: bool,
) -> Result<(Shape, usize), QueryError> {
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
        None => default_ef,
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
    if let Some(f) = spec.filter {
        for (field, names) in [
            ("creators", &f.creators),
            ("exclude_creators", &f.exclude_creators),
        ] {
            if names.as_ref().is_some_and(|n| n.len() > MAX_EXCLUDE) {
                return Err(QueryError::new(
                    ErrorCode::FilterTooLarge,
                    format!("filter.{field} holds at most {MAX_EXCLUDE} names"),
                ));
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
        }
        if let (Some(lo), Some(hi)) = (f.min_popularity, f.max_popularity) {
            if lo > hi {
                return Err(QueryError::new(
                    ErrorCode::ConflictingFilters,
                    format!("filter.min_popularity {lo} is above filter.max_popularity {hi}"),
                ));
            }
        }
    }
    if spec.max_per_creator == Some(0) {
        return Err(QueryError::new(
            ErrorCode::InvalidMaxPerCreator,
            "max_per_creator must be at least 1",
        ));
    }
    let emerging = match spec.emerging {
        Some(e) => {
            // A boost alone reserves no slots unless a share is asked for as well.
            let boost = e.boost.unwrap_or(0.0);
            let share = e
                .min_share
                .unwrap_or(if e.boost.is_some() { 0.0 } else { 0.3 });
            if !(0.0..=1.0).contains(&share)
                || !e.max_popularity.is_finite()
                || !(0.0..=MAX_BOOST).contains(&boost)
            {
                return Err(QueryError::new(
                    ErrorCode::InvalidEmerging,
                    format!(
                        "emerging.min_share must be within 0…1, emerging.boost within \
                         0…{MAX_BOOST} and emerging.max_popularity finite"
                    ),
                ));
            }
            if !has_creator_popularity {
                return Err(QueryError::new(
                    ErrorCode::NoPopularity,
                    format!(
                        "collection {collection:?} has no creator popularity to tell emerging \
                         creators apart"
                    ),
                ));
            }
            Some(Emerging {
                max_popularity: e.max_popularity,
                min_share: share,
                boost,
            })
        }
        None => None,
    };
    let shape = Shape {
        k,
        max_per_creator: spec.max_per_creator,
        emerging,
    };
    Ok((shape, ef))
}
