//! The OpenAPI 3.1 document of the HTTP API, served at `GET /openapi.json` and committed as
//! `docs/openapi.json` (`tests/openapi.rs` fails when the two differ).
//!
//! Everything comes from the code: operations from the `#[utoipa::path]` attributes on the
//! handlers, schemas from the request and response types (`#[derive(utoipa::ToSchema)]`),
//! the error responses of each operation from [`OPERATION_ERRORS`] (codes of
//! [`ErrorCode`]), and what the middleware adds (API keys, the concurrency limiter, request
//! IDs) from [`Layers`] below, next to the router that installs it.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder};
use utoipa::openapi::security::{SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::api::{
    BatchSearchQuery, BatchSimilarQuery, BatchTasteQuery, EmergingSpec, ErrorBody, FanOutSpec,
    FilterSpec, HistoryItem, ReloadOutcome, SimilarBody,
};
use crate::error_code::ErrorCode::*;
use crate::{admin, routes, writes};

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
        routes::item,
        routes::items,
        routes::taste,
        routes::search,
        routes::batch,
        routes::collections,
        routes::healthz,
        routes::readyz,
        routes::metrics,
        admin::reload,
        writes::http::upsert,
        writes::http::delete,
        writes::http::poll,
        serve,
    ),
    components(schemas(
        SimilarBody,
        BatchSimilarQuery,
        BatchSearchQuery,
        BatchTasteQuery,
        FilterSpec,
        EmergingSpec,
        FanOutSpec,
        HistoryItem,
        ReloadOutcome,
        ErrorBody,
    )),
    // In this order: `Layers` adds headers to the error responses `OperationErrors` adds.
    modifiers(&OperationErrors, &Pinning, &Layers, &CollectionNames),
    tags(
        (name = "query", description = "The query API (`/v1/*`): API key when keys are configured, bounded concurrency"),
        (name = "operations", description = "Probes, metrics, this document and admin endpoints"),
        (name = "writes", description = "Upserts and deletes through the write log (`/admin/*`: admin key; `serve --store` only)"),
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
// The errors of each operation.

mod errors;
pub use errors::{Documented, OPERATION_ERRORS};

/// "`code`note, `code`note": the description of a response that answers with these codes.
fn describe(errors: &[Documented], separator: &str) -> String {
    let items: Vec<String> = errors
        .iter()
        .map(|(code, note)| format!("`{}`{note}", code.as_str()))
        .collect();
    items.join(separator)
}

/// An error response with the [`ErrorBody`] schema.
fn error_response(description: String) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        "application/json",
        Content::new(Some(Ref::from_schema_name(ErrorBody::name()))),
    )
}

/// Adds [`OPERATION_ERRORS`] to the operations: one response per status.
struct OperationErrors;

impl Modify for OperationErrors {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        for item in doc.paths.paths.values_mut() {
            for op in [&mut item.get, &mut item.post, &mut item.delete]
                .into_iter()
                .flatten()
            {
                let Some((_, errors)) = OPERATION_ERRORS
                    .iter()
                    .find(|(id, _)| op.operation_id.as_deref() == Some(*id))
                else {
                    continue;
                };
                let mut by_status: BTreeMap<u16, Vec<Documented>> = BTreeMap::new();
                for &e in errors.iter() {
                    by_status.entry(e.0.status()).or_default().push(e);
                }
                for (status, errors) in by_status {
                    let r = error_response(describe(&errors, ", ")).build();
                    op.responses
                        .responses
                        .insert(status.to_string(), RefOr::T(r));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Version pinning (`x-earshot-version`, see `crate::extract::Pin`).

/// The operations about one collection: they take a version pin and name the version that
/// answered.
pub const PINNED_OPERATIONS: &[&str] = &[
    "similar",
    "similar_post",
    "item",
    "items",
    "search",
    "taste",
];

/// Adds the `x-earshot-version` request and response headers and the 409 of a pin that
/// cannot be honoured to [`PINNED_OPERATIONS`].
struct Pinning;

impl Modify for Pinning {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::Required;
        let components = doc.components.get_or_insert_with(Default::default);
        components.headers.insert(
            "Version".into(),
            RefOr::T(string_header(
                "The version of the collection that answered (as `GET /v1/collections` names \
                 it); on errors about an existing collection too",
            )),
        );
        let unavailable = [(
            VersionUnavailable,
            ": `x-earshot-version` names a version this server does not have loaded (the \
             message lists those it has)",
        )];
        for item in doc.paths.paths.values_mut() {
            for op in [&mut item.get, &mut item.post].into_iter().flatten() {
                let pinned = op
                    .operation_id
                    .as_deref()
                    .is_some_and(|id| PINNED_OPERATIONS.contains(&id));
                if !pinned {
                    continue;
                }
                let param = ParameterBuilder::new()
                    .name("x-earshot-version")
                    .parameter_in(ParameterIn::Header)
                    .required(Required::False)
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                    .description(Some(
                        "Answer from this version of the collection: the current one, or one \
                         replaced less than `--retain-previous` seconds ago (`earshot route` \
                         pins every shard of a request to one version)",
                    ))
                    .build();
                op.parameters
                    .get_or_insert_with(Vec::new)
                    .push(RefOr::T(param));
                // Answers and errors from a version name it (not the layers' 5xx).
                for (status, r) in op.responses.responses.iter_mut() {
                    if let (RefOr::T(r), false) = (r, status.starts_with('5')) {
                        r.headers.insert(
                            "x-earshot-version".into(),
                            RefOr::Ref(Ref::new("#/components/headers/Version")),
                        );
                    }
                }
                op.responses.responses.insert(
                    VersionUnavailable.status().to_string(),
                    RefOr::T(error_response(describe(&unavailable, "; ")).build()),
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// What the middleware adds to every operation (see `crate::router`).

/// API keys (`auth.rs`), the limiter (`overload.rs`), request IDs and the error bodies of the
/// layers, added to the operations they apply to.
struct Layers;

/// The responses the layers add, by component name: the codes they answer with.
const SHARED: [(&str, &[Documented]); 5] = [
    (
        "Unauthorized",
        &[(
            Unauthorized,
            ": API keys are configured and the request has none or a wrong one",
        )],
    ),
    (
        "Forbidden",
        &[(
            Forbidden,
            ": a query key on `/admin/*`, or `/admin/*` from a non-loopback client when no \
             keys are configured",
        )],
    ),
    (
        "PayloadTooLarge",
        &[(PayloadTooLarge, ": the body is over 4 MiB")],
    ),
    (
        "Unavailable",
        &[
            (
                Overloaded,
                ": every execution slot busy and the queue full, or no slot in time \
                 (`--queue-timeout-ms`; `--queue-burst-ms` through a burst)",
            ),
            (Timeout, ": not finished within `--request-timeout-ms`"),
            (
                ShardUnavailable,
                ": `earshot route` only, no live replica of a shard the query needs",
            ),
        ],
    ),
    (
        "Internal",
        &[(Internal, ": a bug; the server log has the details")],
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
        for (name, errors) in SHARED {
            let mut r = error_response(describe(errors, "; "))
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
            for op in [&mut item.get, &mut item.post, &mut item.delete] {
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

/// What `earshot_core::layout::check_name` accepts as a collection name (else 400 `invalid_collection`):
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
            for op in [&mut item.get, &mut item.post, &mut item.delete]
                .into_iter()
                .flatten()
            {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error_code::ErrorCode;
    use crate::limits::*;

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
                || ["FilterSpec", "EmergingSpec", "FanOutSpec", "HistoryItem"]
                    .contains(&name.as_str());
            if request {
                assert_eq!(
                    schema["additionalProperties"], false,
                    "{name} has deny_unknown_fields"
                );
            }
        }
    }

    /// Every `code` an error response mentions, with the statuses it is documented under.
    fn documented_codes(d: &serde_json::Value) -> Vec<(String, u16, String)> {
        let mut out = Vec::new();
        let shared = &d["components"]["responses"];
        for (path, item) in d["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                for (status, r) in op["responses"].as_object().unwrap() {
                    let status: u16 = status.parse().unwrap();
                    if status < 400 {
                        continue;
                    }
                    let r = match r["$ref"].as_str() {
                        Some(name) => &shared[name.trim_start_matches("#/components/responses/")],
                        None => r,
                    };
                    let text = r["description"].as_str().unwrap();
                    // Codes are the backticked words made of `a-z` and `_` only.
                    for (i, word) in text.split('`').enumerate() {
                        if i % 2 == 1 && word.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                            out.push((word.to_string(), status, format!("{method} {path}")));
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn error_responses_name_codes_of_their_status() {
        let d = doc();
        let known = |code: &str, status: u16| {
            ErrorCode::ALL
                .iter()
                .any(|c| c.as_str() == code && c.status() == status)
        };
        // Backticked words that are field names, not codes.
        let fields = ["collection", "id"];
        for (code, status, op) in documented_codes(&d) {
            assert!(
                known(&code, status) || fields.contains(&code.as_str()),
                "{op} documents `{code}` under {status}: not an ErrorCode with that status"
            );
        }
    }

    #[test]
    fn every_code_is_documented_where_it_is_answered() {
        let documented: std::collections::HashSet<(String, u16)> = documented_codes(&doc())
            .into_iter()
            .map(|(code, status, _)| (code, status))
            .collect();
        for c in ErrorCode::ALL {
            // The router's fallbacks answer routes the document does not have.
            if matches!(c, NotFound | MethodNotAllowed) {
                continue;
            }
            assert!(
                documented.contains(&(c.as_str().to_string(), c.status())),
                "{c:?} ({} {}) is in no operation's responses",
                c.status(),
                c.as_str()
            );
        }
    }

    #[test]
    fn operation_errors_name_real_operations() {
        let d = doc();
        let ids: Vec<&str> = d["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .filter_map(|op| op["operationId"].as_str())
            .collect();
        for (id, errors) in OPERATION_ERRORS {
            assert!(
                ids.contains(id),
                "OPERATION_ERRORS names no operation {id:?}"
            );
            assert!(!errors.is_empty(), "{id}");
        }
    }
}
