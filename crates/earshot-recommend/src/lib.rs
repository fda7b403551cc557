//! Ranking semantics on top of nearest-neighbour search: listening histories become taste
//! probes (`history` → `taste`, with `centroids`) or seeds of item-based strategies
//! (`strategy`: neighbours, best score; `seeded` runs them on a collection), client vectors
//! become queries (`query`),
//! and result lists obey constraints (`constraints`) that are applied while candidates are
//! gathered, never by cutting a top-k afterwards (`select`). Pure functions over a
//! collection's [`View`](earshot_core::delta::View) — the mapped version with the write log's
//! delta over it: no I/O, no HTTP.

pub mod centroids;
pub mod constraints;
pub mod history;
pub mod query;
pub mod seeded;
pub mod select;
pub mod strategy;
pub mod taste;

#[cfg(test)]
mod delta_tests;
#[cfg(test)]
mod testing;
