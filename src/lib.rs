//! earshot: an approximate-nearest-neighbour search server for music recommendation.
//!
//! Crate map: [`build`] turns inputs into a collection directory ([`format`] describes it);
//! [`collection`] maps one back in place; [`search`] walks its graph; [`server`] answers HTTP.

pub mod bench;
pub mod build;
pub mod collection;
pub mod demo;
pub mod distance;
pub mod format;
pub mod loadgen;
pub mod metric;
pub mod npy;
pub mod plot;
pub mod quant;
pub mod recommend;
pub mod search;
pub mod server;
