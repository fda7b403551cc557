//! [`Live`]: what requests read — the engine over one consistent set of collections (with
//! the write log's deltas), the version of each in service, and the replaced versions kept
//! for pinned requests.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use earshot_core::collection::Collection;
use earshot_core::delta::Delta;

use super::Served;
use crate::engine::{Engine, QueryError};
use crate::error_code::ErrorCode;
use crate::recall::Sampler;

/// What requests read: the engine over one consistent set of collections, which version
/// of each is in service, and the replaced versions still kept for pinned requests.
pub struct Live {
    pub engine: Engine,
    pub versions: BTreeMap<String, Served>,
    /// Per collection, versions replaced less than `retain_previous` ago, oldest first.
    pub retained: BTreeMap<String, Vec<Retained>>,
}

/// A replaced version kept loaded for requests pinned to it.
pub struct Retained {
    pub served: Served,
    /// Answers from this version of the collection (and the current version of every other).
    pub engine: Engine,
    /// Pinned requests are answered from it until then; it is unloaded soon after.
    pub until: Instant,
}

impl Live {
    /// Builds a snapshot; each retained version gets an engine over the current collections
    /// with it in place of its collection's current version.
    pub(super) fn new(
        collections: BTreeMap<String, Arc<Collection>>,
        deltas: BTreeMap<String, Arc<Delta>>,
        versions: BTreeMap<String, Served>,
        retained: BTreeMap<String, Vec<(Served, Arc<Collection>, Instant)>>,
        default_ef: usize,
        recall: &Option<Sampler>,
    ) -> Self {
        let retained = retained
            .into_iter()
            .map(|(name, list)| {
                let list = list
                    .into_iter()
                    .map(|(served, col, until)| {
                        let mut pinned = collections.clone();
                        pinned.insert(name.clone(), col);
                        Retained {
                            served,
                            // Only the version in service is sampled for recall.
                            // A pinned version answers without the write log (its delta
                            // was dropped with the swap); other collections keep theirs.
                            engine: Engine {
                                collections: pinned,
                                deltas: deltas
                                    .iter()
                                    .filter(|(n, _)| **n != name)
                                    .map(|(n, d)| (n.clone(), d.clone()))
                                    .collect(),
                                default_ef,
                                recall: None,
                            },
                            until,
                        }
                    })
                    .collect();
                (name, list)
            })
            .collect();
        Self {
            engine: Engine {
                collections,
                deltas,
                default_ef,
                recall: recall.clone(),
            },
            versions,
            retained,
        }
    }

    /// The retained versions of every collection, to carry into the next snapshot.
    pub(super) fn retained_parts(
        &self,
    ) -> BTreeMap<String, Vec<(Served, Arc<Collection>, Instant)>> {
        self.retained
            .iter()
            .map(|(name, list)| {
                let list = list
                    .iter()
                    .filter_map(|r| {
                        let col = r.engine.collections.get(name)?.clone();
                        Some((r.served.clone(), col, r.until))
                    })
                    .collect();
                (name.clone(), list)
            })
            .collect()
    }

    /// The engine that answers a request about `collection`, and the version it answers
    /// from: the current one, or with `pin` (the request's `x-earshot-version`) that version
    /// if it is current or still retained; any other pin is `version_unavailable`. A
    /// collection this server does not serve gets the current engine (which answers
    /// `unknown_collection`) and no version.
    pub fn pinned(
        &self,
        collection: &str,
        pin: Option<&str>,
    ) -> Result<(&Engine, Option<&Served>), QueryError> {
        let current = self.versions.get(collection);
        let Some(pin) = pin else {
            return Ok((&self.engine, current));
        };
        let Some(cur) = current else {
            return Ok((&self.engine, None));
        };
        if cur.version == pin {
            return Ok((&self.engine, current));
        }
        let retained = self.retained.get(collection).map_or(&[][..], Vec::as_slice);
        if let Some(r) = retained.iter().rev().find(|r| r.served.version == pin) {
            if r.until > Instant::now() {
                return Ok((&r.engine, Some(&r.served)));
            }
        }
        let mut loaded = format!("{} (current)", cur.version);
        for r in retained.iter().rev().filter(|r| r.until > Instant::now()) {
            loaded.push_str(", ");
            loaded.push_str(&r.served.version);
        }
        Err(QueryError::new(
            ErrorCode::VersionUnavailable,
            format!(
                "version {pin:?} of collection {collection:?} is not loaded here; loaded: {loaded}"
            ),
        ))
    }

    /// Versions of `collection` pinned requests can still use, oldest first.
    pub fn retained_versions(&self, collection: &str) -> impl Iterator<Item = &str> {
        let now = Instant::now();
        self.retained
            .get(collection)
            .into_iter()
            .flatten()
            .filter(move |r| r.until > now)
            .map(|r| r.served.version.as_str())
    }
}
