//! The OpenAPI 3.1 document of the HTTP API, served at `GET /openapi.json` and committed as
//! `docs/openapi.json` (`tests/openapi.rs` fails when the two differ).
//!
//! Everything comes from the code: operations from the `#[utoipa::path]` attributes on the
//! handlers, schemas from the request and response types (`#[derive(utoipa::ToSchema)]`),
//! and what the middleware adds (API keys, the concurrency limiter, request IDs) from
//! [`Layers`] below, next to the router that installs it. The few schemas serde cannot
//! describe to utoipa (the batch query union, enums defined outside the server) are derived
//! here from the same types.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::schema::{
    ArrayBuilder, Discriminator, ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type,
};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder};
use utoipa::openapi::security::{SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

use super::error::ErrorBody;
use super::query::{SearchRequest, SimilarRequest, TasteRequest};
use super::{admin, routes};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "earshot",
        description = "Approximate-nearest-neighbour search for music recommendation: similar \
                       items, raw vector search and listener taste over memory-mapped HNSW \
                       indexes. See README.md for the semantics of every option."
    ),
    paths(
        routes::similar,
        routes::similar_post,
        routes::taste,
        routes::search,
        routes::batch,
        routes::collections,
        routes::healthz,
        routes::readyz,
        routes::metrics,
        admin::reload,
        serve,
    ),
    components(schemas(
        SimilarBody,
        BatchSimilarQuery,
        BatchSearchQuery,
        BatchTasteQuery,
        super::query::FilterSpec,
        super::query::EmergingSpec,
        super::query::HistoryItem,
        ReloadOutcome,
    )),
    modifiers(&Layers, &CollectionNames),
    tags(
        (name = "query", description = "The query API (`/v1/*`): API key when keys are configured, bounded concurrency"),
        (name = "operations", description = "Probes, metrics, this document and admin endpoints"),
    )
)]
pub struct ApiDoc;

/// The document as served (pretty JSON, built once).
pub fn json() -> &'static str {
    static DOC: LazyLock<String> = LazyLock::new(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serializes")
    });
    &DOC
}

/// This document (OpenAPI 3.1).
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json", body = serde_json::Value)),
)]
pub async fn serve() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], json()).into_response()
}

// ---------------------------------------------------------------------------------------
// What the middleware adds to every operation (see `super::router`).

/// API keys (`auth.rs`), the limiter (`overload.rs`), request IDs and the error bodies of the
/// layers, added to the operations they apply to.
struct Layers;

const SHARED: [(&str, &str); 5] = [
    (
        "Unauthorized",
        "`unauthorized`: API keys are configured and the request has none or a wrong one",
    ),
    (
        "Forbidden",
        "`forbidden`: a query key on `/admin/*`, or `/admin/*` from a non-loopback client \
         when no keys are configured",
    ),
    (
        "PayloadTooLarge",
        "`payload_too_large`: the body is over 4 MiB",
    ),
    (
        "Unavailable",
        "`overloaded`: every execution slot busy and the queue full, or no slot within \
         `--queue-timeout-ms`; `timeout`: not finished within `--request-timeout-ms`",
    ),
    (
        "Internal",
        "`internal`: a bug; the server log has the details",
    ),
];

fn string_header(description: &str) -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
        .description(Some(description))
        .build()
}

impl Modify for Layers {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`Authorization: Bearer KEY` with a query or admin key (README \"API keys\")",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "x-api-key",
                "`x-api-key: KEY`, the same keys as `bearer`",
            ))),
        );
        components.headers.insert(
            "RequestId".into(),
            RefOr::T(string_header(
                "The request's ID, also in every log line of the request",
            )),
        );
        for (name, description) in SHARED {
            let mut r = ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    Content::new(Some(Ref::from_schema_name(ErrorBody::name()))),
                )
                .header_ref("x-request-id", Ref::new("#/components/headers/RequestId"));
            match name {
                "Unauthorized" => {
                    r = r.header(
                        "www-authenticate",
                        string_header("`Bearer realm=\"earshot\"`"),
                    )
                }
                "Unavailable" => {
                    r = r.header("retry-after", string_header("`1`: retry after a second"))
                }
                _ => {}
            }
            components
                .responses
                .insert(name.into(), RefOr::T(r.build()));
        }
        let shared = |name: &str| RefOr::Ref(Ref::new(format!("#/components/responses/{name}")));
        for (path, item) in doc.paths.paths.iter_mut() {
            let query_api = path.starts_with("/v1/");
            let admin_api = path.starts_with("/admin/");
            for op in [&mut item.get, &mut item.post] {
                let Some(op) = op.as_mut() else { continue };
                let responses = &mut op.responses.responses;
                for r in responses.values_mut() {
                    if let RefOr::T(r) = r {
                        r.headers.insert(
                            "x-request-id".into(),
                            RefOr::Ref(Ref::new("#/components/headers/RequestId")),
                        );
                    }
                }
                if query_api || admin_api {
                    // Keys are optional: without any configured, `/v1/*` is open and
                    // `/admin/*` answers loopback clients.
                    op.security = Some(vec![
                        SecurityRequirement::new("bearer", Vec::<String>::new()),
                        SecurityRequirement::new("api_key", Vec::<String>::new()),
                        SecurityRequirement::default(),
                    ]);
                    responses.insert("401".into(), shared("Unauthorized"));
                }
                if admin_api {
                    responses.insert("403".into(), shared("Forbidden"));
                }
                if query_api {
                    // The limiter reads every body (also a GET's) before taking a slot.
                    responses
                        .entry("413".into())
                        .or_insert_with(|| shared("PayloadTooLarge"));
                    responses.insert("503".into(), shared("Unavailable"));
                    responses.insert("500".into(), shared("Internal"));
                }
            }
        }
    }
}

/// What `registry::valid_name` accepts as a collection name (else 400 `invalid_collection`):
/// no leading `.`, no `..`, no `/`, `\` or control characters.
pub const COLLECTION_NAME_PATTERN: &str =
    r"^[^./\\\x00-\x1F\x7F-\x9F](\.?[^./\\\x00-\x1F\x7F-\x9F])*\.?$";

/// Puts [`COLLECTION_NAME_PATTERN`] and the length bounds on every collection name: the
/// `collection` path parameters and the `collection` / `history_collection` body fields.
struct CollectionNames;

fn constrain_name(schema: &mut RefOr<Schema>) {
    if let RefOr::T(Schema::Object(o)) = schema {
        o.min_length = Some(1);
        o.max_length = Some(255);
        o.pattern = Some(COLLECTION_NAME_PATTERN.into());
    }
}

impl Modify for CollectionNames {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        if let Some(c) = doc.components.as_mut() {
            for schema in c.schemas.values_mut() {
                if let RefOr::T(Schema::Object(o)) = schema {
                    for (name, p) in o.properties.iter_mut() {
                        if name == "collection" || name == "history_collection" {
                            constrain_name(p);
                        }
                    }
                }
            }
        }
        for item in doc.paths.paths.values_mut() {
            for op in [&mut item.get, &mut item.post].into_iter().flatten() {
                for p in op.parameters.iter_mut().flatten() {
                    if let RefOr::T(p) = p {
                        if p.name == "collection" {
                            p.schema.as_mut().map(constrain_name);
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Schemas serde cannot spell out to utoipa.

/// `schema_with` of `HistoryItem.event`: the events `recommend::history` knows.
pub fn event_schema() -> Schema {
    let mut events: Vec<serde_json::Value> = earshot_recommend::history::EVENTS
        .split(',')
        .map(|e| e.trim().into())
        .collect();
    events.push(serde_json::Value::Null);
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .enum_values(Some(events))
        .description(Some(
            "What happened: `play` (default, weight 1), `like` 2, `save` 2, `share` 1.5, \
             `skip` −0.5, `dislike` −2",
        ))
        .build()
        .into()
}

/// `schema_with` of `CollectionInfo.metric`: the names serde gives [`earshot_core::metric::Metric`].
pub fn metric_schema() -> Schema {
    let names = earshot_core::metric::Metric::ALL.map(|m| serde_json::Value::from(m.name()));
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(names))
        .description(Some(
            "How closeness is measured: `cosine` (score: cosine similarity), `l2` (score: \
             negative Euclidean distance), `dot` (score: inner product)",
        ))
        .build()
        .into()
}

/// The object schema a request type derives.
fn object_of<T: PartialSchema>() -> utoipa::openapi::schema::Object {
    match T::schema() {
        RefOr::T(Schema::Object(o)) => o,
        _ => unreachable!("request types are structs"),
    }
}

/// A required, non-null string property.
fn required_string(o: &mut utoipa::openapi::schema::Object, name: &str, description: &str) {
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
fn tagged(mut o: utoipa::openapi::schema::Object, tag: &str) -> Schema {
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

/// The body of `POST /v1/{collection}/{id}/similar`: [`SimilarRequest`] without the
/// batch-only `collection` and `id` (the path names them; sending them is a 400).
pub struct SimilarBody;

impl PartialSchema for SimilarBody {
    fn schema() -> RefOr<Schema> {
        let mut o = object_of::<SimilarRequest>();
        o.properties.remove("collection");
        o.properties.remove("id");
        o.required.retain(|r| r != "collection" && r != "id");
        o.description = Some("List options for the neighbours of the item the path names".into());
        o.example = Some(serde_json::json!({
            "k": 5,
            "max_per_creator": 1,
            "exclude_same_creator": true,
            "emerging": {"max_popularity": 200.0, "min_share": 0.4},
            "explain": true
        }));
        RefOr::T(o.into())
    }
}

impl ToSchema for SimilarBody {}

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
pub fn batch_queries_schema() -> Schema {
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
        .max_items(Some(super::limits::MAX_BATCH))
        .description(Some(
            "Answered in this order, each on its own (1 to 256 queries)",
        ))
        .build()
        .into()
}

/// The per-collection outcome of `POST /admin/reload`, as `registry::Outcome` serializes
/// (the registry's type stays free of documentation concerns; a test below keeps the two
/// equal).
#[derive(Serialize, ToSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ReloadOutcome {
    /// The version in service is still the current one.
    Unchanged { version: String },
    /// A new version passed every check and serves now.
    Swapped {
        /// The version it replaced (null for a new collection).
        #[schema(required = true)]
        from: Option<String>,
        to: String,
        /// How long opening, checking and warming took.
        ms: u64,
    },
    /// The new version failed a check; the old one keeps serving.
    Refused {
        /// The refused version (null when the entry itself is unusable).
        #[schema(required = true)]
        version: Option<String>,
        /// The file and the problem.
        reason: String,
        /// The version that keeps serving (null for a collection that never loaded).
        #[schema(required = true)]
        serving: Option<String>,
    },
    /// The entry is gone from the index root; the loaded version serves until a restart.
    Missing { serving: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::*;
    use crate::registry::Outcome;

    /// Field for field, so a new variant or field of `Outcome` fails to compile here.
    fn mirror(o: &Outcome) -> ReloadOutcome {
        match o.clone() {
            Outcome::Unchanged { version } => ReloadOutcome::Unchanged { version },
            Outcome::Swapped { from, to, ms } => ReloadOutcome::Swapped { from, to, ms },
            Outcome::Refused {
                version,
                reason,
                serving,
            } => ReloadOutcome::Refused {
                version,
                reason,
                serving,
            },
            Outcome::Missing { serving } => ReloadOutcome::Missing { serving },
        }
    }

    #[test]
    fn reload_outcome_mirrors_the_registry() {
        let s = |x: &str| x.to_string();
        for o in [
            Outcome::Unchanged { version: s("v1") },
            Outcome::Swapped {
                from: None,
                to: s("v2"),
                ms: 3,
            },
            Outcome::Swapped {
                from: Some(s("v1")),
                to: s("v2"),
                ms: 3,
            },
            Outcome::Refused {
                version: Some(s("v3")),
                reason: s("bad"),
                serving: None,
            },
            Outcome::Missing { serving: s("v1") },
        ] {
            assert_eq!(
                serde_json::to_value(&o).unwrap(),
                serde_json::to_value(mirror(&o)).unwrap()
            );
        }
    }

    fn doc() -> serde_json::Value {
        serde_json::from_str(json()).unwrap()
    }

    #[test]
    fn bounds_follow_the_limits() {
        let d = doc();
        let s = &d["components"]["schemas"];
        for schema in ["BatchSearchQuery", "BatchTasteQuery", "SimilarBody"] {
            let p = &s[schema]["properties"];
            assert_eq!(p["k"]["maximum"], MAX_K, "{schema}.k");
            assert_eq!(p["ef"]["maximum"], MAX_EF, "{schema}.ef");
            assert_eq!(p["exclude"]["maxItems"], MAX_EXCLUDE, "{schema}.exclude");
        }
        let f = &s["FilterSpec"]["properties"];
        assert_eq!(f["creators"]["maxItems"], MAX_EXCLUDE);
        assert_eq!(f["exclude_creators"]["maxItems"], MAX_EXCLUDE);
        let t = &s["BatchTasteQuery"]["properties"];
        assert_eq!(t["history"]["maxItems"], MAX_HISTORY);
        assert_eq!(t["centroids"]["maximum"], MAX_CENTROIDS);
        let params = d["paths"]["/v1/{collection}/{id}/similar"]["get"]["parameters"]
            .as_array()
            .unwrap();
        let param = |n: &str| &params.iter().find(|p| p["name"] == n).unwrap()["schema"];
        assert_eq!(param("k")["maximum"], MAX_K);
        assert_eq!(param("ef")["maximum"], MAX_EF);
    }

    #[test]
    fn request_bodies_refuse_unknown_fields() {
        let d = doc();
        for (name, schema) in d["components"]["schemas"].as_object().unwrap() {
            let request = name.ends_with("Query")
                || [
                    "SimilarBody",
                    "SearchRequest",
                    "TasteRequest",
                    "BatchRequest",
                ]
                .contains(&name.as_str())
                || ["FilterSpec", "EmergingSpec", "HistoryItem"].contains(&name.as_str());
            if request {
                assert_eq!(
                    schema["additionalProperties"], false,
                    "{name} has deny_unknown_fields"
                );
            }
        }
    }
}
