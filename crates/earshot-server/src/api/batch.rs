//! `POST /v1/batch`: several queries in one request, each answered on its own.
//!
//! A batch query is a request body of the other endpoints plus a `"type"` tag (and the
//! `collection` / `id` their paths carry otherwise). Serde's internally tagged enum is more
//! than utoipa can describe, so the schemas of the three query kinds are derived here from
//! the request types.

use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{
    ArrayBuilder, Discriminator, Object, ObjectBuilder, OneOfBuilder, Schema, Type,
};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};

use super::request::{object_of, SearchRequest, SimilarRequest, TasteRequest};
use super::response::{ErrorDetail, ResultItem};
use crate::limits::MAX_BATCH;

/// One query of a batch: `{"type": "similar"|"search"|"taste", …}`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum BatchQuery {
    Similar(SimilarRequest),
    Search(SearchRequest),
    Taste(TasteRequest),
}

/// `POST /v1/batch` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"queries": [
    {"type": "similar", "collection": "tracks", "id": "demo:track:0000001", "k": 3},
    {"type": "search", "collection": "tracks", "vector": [0.12, -0.5, 0.33, 0.9, -0.07, 0.21, 0.4, -0.18], "k": 3, "explain": true},
    {"type": "taste", "collection": "tracks", "history": [{"id": "demo:track:0000002"}, {"id": "demo:track:0000003", "event": "like"}], "k": 3},
    {"type": "similar", "collection": "tracks", "id": "no-such-id"}
]}))]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// Answered in this order, each on its own.
    #[schema(schema_with = batch_queries_schema)]
    pub queries: Vec<BatchQuery>,
}

/// One query's answer in a batch.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum BatchEntry<'a> {
    Ok {
        /// Sorted by score, highest first; no duplicates; at most `k`.
        results: Vec<ResultItem<'a>>,
    },
    Err {
        error: ErrorDetail<'a>,
        /// The HTTP status this query alone would have had.
        #[schema(minimum = 400, maximum = 599)]
        status: u16,
    },
}

/// `POST /v1/batch` answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct BatchResponse<'a> {
    /// One per query, in request order.
    pub responses: Vec<BatchEntry<'a>>,
}

/// A required, non-null string property.
fn required_string(o: &mut Object, name: &str, description: &str) {
    o.properties.insert(
        name.into(),
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(description))
            .into(),
    );
    if !o.required.iter().any(|r| r == name) {
        o.required.push(name.into());
    }
}

/// A batch query: the request type's object plus its `"type"` tag.
fn tagged(mut o: Object, tag: &str) -> Schema {
    o.properties.insert(
        "type".into(),
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some([tag]))
            .into(),
    );
    o.required.insert(0, "type".into());
    o.into()
}

/// `{"type": "similar", "collection", "id", …}` in a batch.
pub struct BatchSimilarQuery;

impl PartialSchema for BatchSimilarQuery {
    fn schema() -> RefOr<Schema> {
        let mut o = object_of::<SimilarRequest>();
        required_string(&mut o, "collection", "Collection name");
        required_string(&mut o, "id", "The item whose neighbours are wanted");
        o.description =
            Some("`similar` in a batch: the body form plus `collection` and `id`".into());
        RefOr::T(tagged(o, "similar"))
    }
}

impl ToSchema for BatchSimilarQuery {}

/// `{"type": "search", …}` in a batch.
pub struct BatchSearchQuery;

impl PartialSchema for BatchSearchQuery {
    fn schema() -> RefOr<Schema> {
        let mut o = object_of::<SearchRequest>();
        o.description = Some("`search` in a batch: the `POST /v1/search` body".into());
        o.example = None;
        RefOr::T(tagged(o, "search"))
    }
}

impl ToSchema for BatchSearchQuery {}

/// `{"type": "taste", "collection", …}` in a batch.
pub struct BatchTasteQuery;

impl PartialSchema for BatchTasteQuery {
    fn schema() -> RefOr<Schema> {
        let mut o = object_of::<TasteRequest>();
        required_string(&mut o, "collection", "Collection to recommend from");
        o.description = Some("`taste` in a batch: the body form plus `collection`".into());
        o.example = None;
        RefOr::T(tagged(o, "taste"))
    }
}

impl ToSchema for BatchTasteQuery {}

/// `schema_with` of `BatchRequest.queries`.
fn batch_queries_schema() -> Schema {
    let variants = [
        ("similar", BatchSimilarQuery::name()),
        ("search", BatchSearchQuery::name()),
        ("taste", BatchTasteQuery::name()),
    ];
    let mut one_of = OneOfBuilder::new().discriminator(Some(Discriminator::with_mapping(
        "type",
        variants
            .clone()
            .map(|(tag, name)| (tag, format!("#/components/schemas/{name}"))),
    )));
    for (_, name) in variants {
        one_of = one_of.item(Ref::from_schema_name(name));
    }
    ArrayBuilder::new()
        .items(one_of)
        .min_items(Some(1))
        .max_items(Some(MAX_BATCH))
        .description(Some(
            "Answered in this order, each on its own (1 to 256 queries)",
        ))
        .build()
        .into()
}
