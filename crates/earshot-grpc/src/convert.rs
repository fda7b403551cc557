//! Protobuf messages to and from the HTTP API's own request and answer types: a gRPC
//! request becomes the very struct the HTTP handler deserialises, so both transports share
//! every check the engine makes (and its error codes and messages).
//!
//! proto3 cannot tell an empty list or string from an absent one: empty reads as absent.

use earshot_server::api::{
    CollectionsResponse, EmergingSpec, Explanation, FanOutSpec, FilterSpec, HistoryItem, Item,
    ListExplanation, ResultItem, SearchRequest, SimilarRequest, TasteRequest,
};
use earshot_server::engine::{answer, Answer};
use earshot_server::error_code::ErrorCode;

use crate::pb;
use crate::wire::Outcome;

fn size(v: Option<u32>) -> Option<usize> {
    v.map(|v| v as usize)
}

fn list(v: Vec<String>) -> Option<Vec<String>> {
    (!v.is_empty()).then_some(v)
}

fn text(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn filter(f: Option<pb::Filter>) -> Option<FilterSpec> {
    f.map(|f| FilterSpec {
        creators: list(f.creators),
        exclude_creators: list(f.exclude_creators),
        min_popularity: f.min_popularity,
        max_popularity: f.max_popularity,
    })
}

fn emerging(e: Option<pb::Emerging>) -> Option<EmergingSpec> {
    e.map(|e| EmergingSpec {
        max_popularity: e.max_popularity,
        min_share: e.min_share,
        boost: e.boost,
    })
}

/// A `similar` query; `batch` keeps its collection and ID in the request (a batch entry
/// names them in its body, a single request in its path).
pub fn similar(r: pb::SimilarRequest, batch: bool) -> (String, String, SimilarRequest) {
    let (collection, id) = (r.collection, r.id);
    let (c, i) = if batch {
        (text(collection.clone()), text(id.clone()))
    } else {
        (None, None)
    };
    let req = SimilarRequest {
        collection: c,
        id: i,
        k: size(r.k),
        ef: size(r.ef),
        exclude: list(r.exclude),
        filter: filter(r.filter),
        max_per_creator: size(r.max_per_creator),
        emerging: emerging(r.emerging),
        explain: r.explain,
        exclude_same_creator: r.exclude_same_creator,
        pool: r.pool,
    };
    (collection, id, req)
}

pub fn search(r: pb::SearchRequest) -> SearchRequest {
    SearchRequest {
        collection: r.collection,
        vector: r.vector,
        k: size(r.k),
        ef: size(r.ef),
        exclude: list(r.exclude),
        filter: filter(r.filter),
        max_per_creator: size(r.max_per_creator),
        emerging: emerging(r.emerging),
        explain: r.explain,
        pool: r.pool,
    }
}

/// A `taste` query (collection kept in the request for a batch entry, as [`similar`]).
pub fn taste(r: pb::TasteRequest, batch: bool) -> (String, TasteRequest) {
    let collection = r.collection;
    let req = TasteRequest {
        collection: if batch {
            text(collection.clone())
        } else {
            None
        },
        history: r
            .history
            .into_iter()
            .map(|h| HistoryItem {
                id: h.id,
                weight: h.weight,
                played_at: h.played_at,
                event: h.event,
            })
            .collect(),
        exclude_history: r.exclude_history,
        history_collection: r.history_collection,
        half_life: r.half_life,
        now: r.now,
        centroids: size(r.centroids),
        strategy: r.strategy,
        fan_out: r.fan_out.map(|f| FanOutSpec {
            items: size(f.items),
            per_item: size(f.per_item),
            damping: f.damping,
        }),
        k: size(r.k),
        ef: size(r.ef),
        exclude: list(r.exclude),
        filter: filter(r.filter),
        max_per_creator: size(r.max_per_creator),
        emerging: emerging(r.emerging),
        explain: r.explain,
    };
    (collection, req)
}

fn explanation(e: Explanation) -> pb::Explanation {
    pb::Explanation {
        similarity: e.similarity,
        centroid: e.centroid as u32,
        centroid_weight: e.centroid_weight,
        rank: e.rank as u32,
        emerging_quota: e.emerging_quota,
        emerging_boost: e.emerging_boost,
        in_share: e.in_share,
        moved_by: e.moved_by.into_iter().map(str::to_owned).collect(),
        support: e.support.map(|n| n as u32),
        because: e.because,
    }
}

pub fn list_explanation(e: ListExplanation) -> pb::ListExplanation {
    pb::ListExplanation {
        strategy: e.strategy.map(str::to_owned),
        seeds: e.seeds.map(|n| n as u32),
        centroid_weights: e.centroid_weights,
        emerging_slots_requested: e.emerging_slots_requested as u32,
        emerging_slots_reserved: e.emerging_slots_reserved as u32,
    }
}

pub fn result_item(r: ResultItem<'_>) -> pb::ResultItem {
    pb::ResultItem {
        id: r.id.to_owned(),
        score: r.score,
        creator: r.creator.map(str::to_owned),
        popularity: r.popularity,
        creator_popularity: r.creator_popularity.flatten(),
        explain: r.explain.map(explanation),
    }
}

/// The results alone, as a batch entry carries them.
pub fn result_list(a: &Answer) -> pb::Results {
    pb::Results {
        results: a.items().into_iter().map(result_item).collect(),
        ..Default::default()
    }
}

/// A whole answer, as the HTTP API renders it.
pub fn results(a: &Answer) -> pb::Results {
    let (requested, reserved) = answer::emerging_slots(a.quota);
    pb::Results {
        explain: a.list_explanation().map(list_explanation),
        emerging_slots_requested: requested.map(|n| n as u32),
        emerging_slots_reserved: reserved.map(|n| n as u32),
        item: a.query_item().map(item),
        ..result_list(a)
    }
}

/// A `SimilarStream` answer: a plain list is encoded straight from the answer
/// (`wire::encode_results`), anything else built as `results` does.
pub fn stream_outcome(a: &Answer) -> Outcome {
    if a.is_plain_list() {
        if let Some(bytes) = crate::wire::encode_results(a.item_iter()) {
            return Outcome::Encoded(bytes);
        }
    }
    Outcome::Ok(results(a))
}

/// A query's error as a batch entry (or stream message) carries it: code, HTTP status, message.
pub fn batch_error(code: ErrorCode, message: String) -> pb::BatchError {
    pb::BatchError {
        code: code.as_str().to_owned(),
        status: code.status().into(),
        message,
    }
}

pub fn item(i: Item<'_>) -> pb::Item {
    pb::Item {
        id: i.id.to_owned(),
        creator: i.creator.map(str::to_owned),
        popularity: i.popularity,
        creator_popularity: i.creator_popularity,
        vector: i.vector.to_vec(),
    }
}

pub fn collections(c: CollectionsResponse<'_>) -> pb::CollectionsResponse {
    pb::CollectionsResponse {
        collections: c
            .collections
            .into_iter()
            .map(|c| pb::CollectionInfo {
                name: c.name.to_owned(),
                metric: c.metric.name().to_owned(),
                dim: c.dim,
                count: c.count,
                creators: c.creators,
                has_popularity: c.has_popularity,
                m: c.m,
                ef_construction: c.ef_construction,
                default_ef: c.default_ef as u32,
                built_at: c.built_at.to_owned(),
                builder: c.builder.to_owned(),
                mapped_bytes: c.mapped_bytes,
                version: c.version.to_owned(),
                loaded_at: c.loaded_at,
                retained: c.retained.into_iter().map(str::to_owned).collect(),
                shard: c.shard.map(|s| pb::ShardInfo {
                    index: s.index,
                    count: s.count,
                    hash: s.hash.to_owned(),
                }),
                taste_history: c.taste_history.map(str::to_owned),
            })
            .collect(),
        kernels: c.kernels.to_owned(),
    }
}
