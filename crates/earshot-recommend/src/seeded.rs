//! The seed-based strategies ([`crate::strategy`]) on one collection: a walk per seed into
//! one reusable buffer, the lists aggregated into one pool, and the list picked from that
//! pool by [`select::pick`] under the same constraints as every other list.

use std::cell::RefCell;

use earshot_core::delta::View;
use earshot_core::search::Hit;

use crate::constraints::{HardFilter, Shape, QUOTA_WINDOW};
use crate::query;
use crate::select::{self, Selection, MAX_WALK, WIDEN};
use crate::strategy::{Aggregator, Strategy};
use crate::taste::{Seed, Taste, TasteError};

/// Cost (measured, EVALUATION.md): the walks dominate — H = 50 seeds × k′ = 100 on the
/// 17,632 × 64 Last.fm index answered in 20.8 ms p50 / 73.9 ms p99 through HTTP against
/// 1.3 / 11.3 ms for `mean` (validation run, 2 concurrent clients on a shared 2-core VM);
/// latency grows about linearly with H × k′.
///
/// Buffers reused across requests on one thread (walk output, list bounds, seed queries,
/// aggregation map, the pool): after the first requests a seed-based query allocates only
/// its result list.
#[derive(Default)]
struct Buffers {
    hits: Vec<Hit>,
    bounds: Vec<usize>,
    weights: Vec<f32>,
    /// The history row of each walked seed (same order as `weights`).
    rows: Vec<u32>,
    query: Vec<f32>,
    aggregator: Aggregator,
    pool: Vec<Hit>,
}

thread_local! {
    static BUFFERS: RefCell<Buffers> = RefCell::new(Buffers::default());
}

/// Why a picked item is in a seed-based list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Support {
    /// Positive seeds whose lists hold the item.
    pub seeds: usize,
    /// The seed (its row in the history's source) contributing the most to its score.
    pub strongest: Option<u32>,
}

/// What a seed-based list is: the selection, and (when asked) each pick's [`Support`].
pub struct SeededSelection {
    pub selection: Selection,
    pub support: Vec<Support>,
    /// Seeds walked (after skipping seeds that are no query, e.g. zero vectors).
    pub seeds: usize,
}

/// Picks up to `shape.k` items of `c` for `taste` with a seed-based `strategy` under
/// `filter` and `shape`; `ef` is the beam width of each seed's walk (raised to k′).
/// If the list comes out short while the seeds' lists were cut off, k′ grows ×4 (up to an
/// exact scan).
pub fn recommend(
    c: View<'_>,
    taste: &Taste,
    strategy: Strategy,
    filter: &HardFilter,
    shape: &Shape,
    ef: usize,
    explain: bool,
) -> Result<SeededSelection, TasteError> {
    let fan = strategy
        .fan_out()
        .expect("seeded::recommend takes a seed-based strategy");
    let metric = c.base.manifest.metric;
    let mut seeds: Vec<Seed> = Vec::with_capacity(fan.items.min(64) * 2);
    taste.seeds(fan.items, &mut seeds);
    // Shaped lists need a deeper pool, as in `select::initial_pool_size`.
    let shaped = shape.max_per_creator.is_some() || shape.emerging.is_some();
    let mut per_item = if shaped {
        fan.per_item.max(QUOTA_WINDOW * shape.k)
    } else {
        fan.per_item.max(shape.k)
    };
    BUFFERS.with(|b| {
        let b = &mut *b.borrow_mut();
        loop {
            b.hits.clear();
            b.bounds.clear();
            b.weights.clear();
            b.rows.clear();
            b.bounds.push(0);
            let mut cut = false;
            let mut walked = 0;
            for s in &seeds {
                // A seed that is no query (a zero vector under cosine or dot) has no
                // neighbours; it is skipped.
                if query::prepare_into(metric, c.dim(), s.vector, &mut b.query).is_err() {
                    continue;
                }
                let complete = select::pool_into(c, &b.query, filter, per_item, ef, &mut b.hits);
                cut |= !complete;
                b.bounds.push(b.hits.len());
                b.weights.push(s.weight);
                b.rows.push(s.row);
                walked += (s.weight > 0.0) as usize;
            }
            if walked == 0 {
                return Err(TasteError::Degenerate);
            }
            let lists: Vec<&[Hit]> = b.bounds.windows(2).map(|w| &b.hits[w[0]..w[1]]).collect();
            let sim = |d| crate::strategy::similarity(metric, d);
            b.aggregator
                .aggregate(&c, sim, strategy, &b.weights, &lists, &mut b.pool);
            let selection = select::pick(&c, &[1.0], std::slice::from_ref(&b.pool), shape);
            let exhausted = !cut || per_item >= MAX_WALK.max(c.len());
            if selection.picks.len() >= shape.k || exhausted {
                let support = if explain {
                    selection
                        .picks
                        .iter()
                        .map(|p| support(p.row, &b.rows, &b.weights, &lists, metric))
                        .collect()
                } else {
                    Vec::new()
                };
                return Ok(SeededSelection {
                    selection,
                    support,
                    seeds: lists.len(),
                });
            }
            per_item = (per_item * WIDEN).min(c.len());
        }
    })
}

/// How many positive seeds' lists hold `row`, and which seed (history row) adds the most to
/// its score.
fn support(
    row: u32,
    rows: &[u32],
    weights: &[f32],
    lists: &[&[Hit]],
    metric: earshot_core::metric::Metric,
) -> Support {
    let mut n = 0;
    let mut best: Option<(f32, u32)> = None;
    for ((&w, &seed), hits) in weights.iter().zip(rows).zip(lists) {
        if w <= 0.0 {
            continue;
        }
        if let Some(h) = hits.iter().find(|h| h.row == row) {
            n += 1;
            let s = w * crate::strategy::similarity(metric, h.dist);
            if best.is_none_or(|(b, _)| s > b) {
                best = Some((s, seed));
            }
        }
    }
    Support {
        seeds: n,
        strongest: best.map(|(_, r)| r),
    }
}
