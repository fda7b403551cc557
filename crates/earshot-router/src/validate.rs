//! The checks `serve` makes before it searches, made here before any shard is asked: the
//! server's own ([`earshot_server::engine::list::check_list`] and, for histories,
//! [`earshot_server::engine::history`]), so the codes and messages are the same.

use earshot_recommend::constraints::Shape;
use earshot_server::api::ListSpec;
use earshot_server::engine::list::check_list;
use earshot_server::engine::QueryError;
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
    let (shape, ef) = check_list(
        spec,
        meta.default_ef,
        &meta.name,
        meta.has_popularity && meta.creators != 0,
    )?;
    let filter = spec.filter.map(|f| {
        let mut out = Map::new();
        if let Some(names) = &f.creators {
            out.insert("creators".into(), json!(names));
        }
        if let Some(names) = &f.exclude_creators {
            out.insert("exclude_creators".into(), json!(names));
        }
        if let Some(v) = f.min_popularity {
            out.insert("min_popularity".into(), json!(v));
        }
        if let Some(v) = f.max_popularity {
            out.insert("max_popularity".into(), json!(v));
        }
        out
    });
    Ok(Plan { shape, ef, filter })
}
