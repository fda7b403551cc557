//! Measuring earshot: `bench` (recall and queries/s of a collection in process),
//! `loadgen` (`bench-http`: open-loop HTTP load with HDR latencies) and `plot` (SVG charts).

pub mod bench;
pub mod loadgen;
pub mod plot;
