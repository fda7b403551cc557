//! Ranking semantics on top of nearest-neighbour search: listening histories become taste
//! probes (`history`, `centroids`), and result lists obey constraints (`constraints`) that
//! are applied while candidates are gathered, never by cutting a top-k afterwards (`select`).

pub mod centroids;
pub mod constraints;
pub mod history;
pub mod select;
