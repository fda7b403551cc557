"""What the sync and async clients share: request building, answer decoding, the retry policy.

A public method builds a `Call` (method, path, query, body, how to decode the answer, whether it may
be retried); `Client` and `AsyncClient` only differ in how they send it and how they sleep.
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, Generic, List, Mapping, Optional, Sequence, TypeVar
from urllib.parse import quote

import httpx

from .errors import ConnectionFailedError, EarshotError, InvalidRequestError, make_error
from .models import (
    JSON,
    BatchQuery,
    Collections,
    CollectionInfo,
    HistoryEntry,
    Item,
    Items,
    Results,
    SearchQuery,
    SimilarQuery,
    TasteQuery,
    history_json,
    part_json,
)

if sys.version_info >= (3, 11):
    from typing import NotRequired, TypedDict
else:  # pragma: no cover
    from typing_extensions import NotRequired, TypedDict

__version__ = "0.1.0"

T = TypeVar("T")

#: the server's bounds (README "#### Limits"); `batch()` and `items()` split larger inputs
MAX_BATCH = 256
MAX_ITEMS = 1000


# ------------------------------------------------------------------------------------ retries


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to wait before retrying a read.

    Only side-effect-free queries are retried (all of `/v1/*`, probes; never `/admin/*`), and only
    on a 503 whose code is in `retry_codes` or on a connection failure (refused, reset, dropped
    keep-alive; a read *timeout* is not retried: the server may still be working on it).
    Wait before attempt n+1 = `Retry-After` (when the server sent one and `honour_retry_after`)
    + a uniform random share of `min(max_backoff, backoff * 2**(n-1))` ("full jitter", so callers
    refused together do not come back together). Gives up after `max_attempts` attempts, or when
    the next wait would end beyond `budget` seconds since the first attempt; the last error is raised.
    """

    max_attempts: int = 4
    budget: float = 10.0
    backoff: float = 0.1
    max_backoff: float = 2.0
    honour_retry_after: bool = True
    retry_codes: FrozenSet[str] = frozenset({"overloaded"})
    #: called as on_retry(attempt_done, error, delay) before each wait (logging, tests)
    on_retry: Optional[Callable[[int, EarshotError, float], None]] = None

    def delay(self, attempts: int, started: float, err: EarshotError, rng: random.Random) -> Optional[float]:
        """Seconds to wait before the next attempt, or None to give up."""
        if attempts >= self.max_attempts or not self.retryable(err):
            return None
        cap = min(self.max_backoff, self.backoff * 2 ** (attempts - 1))
        d = rng.uniform(0.0, cap)
        if self.honour_retry_after and err.retry_after:
            d += err.retry_after
        if time.monotonic() - started + d > self.budget:
            return None
        return d

    def retryable(self, err: EarshotError) -> bool:
        if isinstance(err, ConnectionFailedError):
            return err.code == "connection_error"
        return err.status == 503 and err.code in self.retry_codes


NO_RETRY = RetryPolicy(max_attempts=1)


# -------------------------------------------------------------------------------------- calls


@dataclass
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: Optional[Dict[str, str]] = None
    body: Any = None
    headers: Dict[str, str] = field(default_factory=dict)
    #: side-effect free: safe to send again
    idempotent: bool = True
    #: statuses handed to `parse` instead of raised
    accept: Sequence[int] = ()

    def request(self, client: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        content = None
        headers = dict(self.headers)
        if self.body is not None:
            try:
                content = json.dumps(self.body, allow_nan=False, separators=(",", ":")).encode()
            except ValueError as e:
                # JSON has no NaN/inf: refuse here, as the server would (422 invalid_vector).
                raise InvalidRequestError("invalid_vector", str(e), None) from e
            headers["content-type"] = "application/json"
        return client.build_request(self.method, self.path, params=self.params, content=content, headers=headers)


def transport_error(e: httpx.TransportError) -> ConnectionFailedError:
    # Timeouts waiting for an answer are reported but not retried (the query may still be running).
    code = "client_timeout" if isinstance(e, (httpx.ReadTimeout, httpx.WriteTimeout)) else "connection_error"
    return ConnectionFailedError(code, f"{type(e).__name__}: {e}", None)


def error_of(r: httpx.Response) -> EarshotError:
    retry_after = None
    ra = r.headers.get("retry-after")
    if ra is not None:
        try:
            retry_after = float(ra)
        except ValueError:
            retry_after = None  # an HTTP date: fall back to the backoff
    body: Any = None
    code, message = f"http_{r.status_code}", r.reason_phrase
    try:
        body = r.json()
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            code, message = err.get("code", code), err.get("message", message)
    except ValueError:
        body = r.text
    return make_error(
        code,
        message,
        r.status_code,
        request_id=r.headers.get("x-request-id"),
        retry_after=retry_after,
        body=body,
    )


def check(call: Call[T], r: httpx.Response) -> T:
    if r.is_success or r.status_code in call.accept:
        return call.parse(r)
    raise error_of(r)


# ------------------------------------------------------------------------------------ encoding


def seg(s: str) -> str:
    """One path segment, percent-encoded (IDs may hold `/`, spaces, …)."""
    if s == "items":
        return "%69tems"  # unencoded, `/v1/{c}/items` is the items-lookup route (README)
    return quote(s, safe="")


def vector_json(v: Any) -> List[float]:
    """A query vector: a 1-D numpy array (any float/int dtype) or a sequence of numbers."""
    if hasattr(v, "tolist"):
        if getattr(v, "ndim", 1) != 1:
            raise ValueError(f"a query vector must be 1-D, got shape {getattr(v, 'shape', None)}")
        v = v.tolist()
    return [float(x) for x in v]


class ListOptions(TypedDict, total=False):
    """List options of similar, search and taste (README "#### List options")."""

    k: int
    ef: int
    exclude: Sequence[str]
    filter: Any  # Filter or dict
    max_per_creator: int
    emerging: Any  # Emerging or dict
    explain: bool


class SimilarOptions(ListOptions, total=False):
    exclude_same_creator: bool
    pool: bool


class SearchOptions(ListOptions, total=False):
    pool: bool


class TasteOptions(ListOptions, total=False):
    strategy: str
    fan_out: Any  # FanOut or dict
    centroids: int
    half_life: str
    now: str
    exclude_history: bool
    history_collection: str


def options_json(opts: Mapping[str, Any]) -> JSON:
    out: JSON = {}
    for key, v in opts.items():
        if v is None:
            continue
        if key in ("filter", "emerging", "fan_out"):
            v = part_json(v)
        elif key == "exclude":
            v = list(v)
        out[key] = v
    return out


def headers_for(version: Optional[str]) -> Dict[str, str]:
    return {"x-earshot-version": version} if version else {}


def results_parser(r: httpx.Response) -> Results:
    return Results.from_json(r.json(), r.headers.get("x-earshot-version"), r.headers.get("x-request-id"))


_GET_SIMILAR = {"k", "ef", "max_per_creator", "exclude_same_creator", "explain"}


def similar_call(collection: str, id: str, version: Optional[str], opts: Mapping[str, Any]) -> Call[Results]:
    o = options_json(opts)
    path = f"/v1/{seg(collection)}/{seg(id)}/similar"
    if set(o) <= _GET_SIMILAR:
        # GET when the query string can say it all: cacheable, and what the README's curl shows.
        params = {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in o.items()}
        return Call("GET", path, results_parser, params=params, headers=headers_for(version))
    return Call("POST", path, results_parser, body=o, headers=headers_for(version))


def search_call(collection: str, vector: Any, version: Optional[str], opts: Mapping[str, Any]) -> Call[Results]:
    body = {"collection": collection, "vector": vector_json(vector), **options_json(opts)}
    return Call("POST", "/v1/search", results_parser, body=body, headers=headers_for(version))


def taste_call(
    collection: str, history: Sequence[HistoryEntry], version: Optional[str], opts: Mapping[str, Any]
) -> Call[Results]:
    body = {"history": history_json(history), **options_json(opts)}
    return Call("POST", f"/v1/taste/{seg(collection)}", results_parser, body=body, headers=headers_for(version))


def item_call(collection: str, id: str, version: Optional[str]) -> Call[Item]:
    return Call(
        "GET", f"/v1/{seg(collection)}/{seg(id)}", lambda r: Item.from_json(r.json()), headers=headers_for(version)
    )


def items_calls(collection: str, ids: Sequence[str], version: Optional[str]) -> List[Call[Items]]:
    ids = list(ids)
    if not ids:
        # Let the server say what is wrong (400 invalid_ids) rather than answer nothing.
        chunks: List[List[str]] = [[]]
    else:
        chunks = [ids[i : i + MAX_ITEMS] for i in range(0, len(ids), MAX_ITEMS)]

    def parse(r: httpx.Response) -> Items:
        d = r.json()
        return Items([Item.from_json(x) for x in d["items"]], list(d["missing"]))

    return [
        Call("POST", f"/v1/{seg(collection)}/items", parse, body={"ids": c}, headers=headers_for(version))
        for c in chunks
    ]


def merge_items(parts: Sequence[Items]) -> Items:
    return Items([i for p in parts for i in p.items], [m for p in parts for m in p.missing])


def query_json(q: BatchQuery) -> JSON:
    if isinstance(q, (SimilarQuery, SearchQuery, TasteQuery)):
        return q.to_json()
    return dict(q)


def batch_calls(queries: Sequence[BatchQuery], max_batch: int) -> List[Call[List[Any]]]:
    if not 1 <= max_batch <= MAX_BATCH:
        raise ValueError(f"max_batch must be within 1 … {MAX_BATCH}")
    qs = [query_json(q) for q in queries]
    chunks = [qs[i : i + max_batch] for i in range(0, len(qs), max_batch)] or [[]]

    def parse(r: httpx.Response) -> List[Any]:
        out: List[Any] = []
        for e in r.json()["responses"]:
            if "results" in e:
                out.append(Results.from_json(e, None, r.headers.get("x-request-id")))
            else:
                err = e.get("error", {})
                out.append(
                    make_error(
                        err.get("code", "unknown"),
                        err.get("message", ""),
                        e.get("status"),
                        request_id=r.headers.get("x-request-id"),
                        body=e,
                    )
                )
        return out

    return [Call("POST", "/v1/batch", parse, body={"queries": c}) for c in chunks]


def search_queries(collection: str, vectors: Any, opts: Mapping[str, Any]) -> List[SearchQuery]:
    o = options_json(opts)
    if getattr(vectors, "ndim", 2) != 2:
        raise ValueError(f"vectors must be 2-D (one row per query), got shape {getattr(vectors, 'shape', None)}")
    return [SearchQuery(collection, v, o) for v in vectors]


def unwrap(entries: List[Any], raise_errors: bool) -> List[Any]:
    if raise_errors:
        for e in entries:
            if isinstance(e, EarshotError):
                raise e
    return entries


def collections_call() -> Call[Collections]:
    def parse(r: httpx.Response) -> Collections:
        d = r.json()
        return Collections([CollectionInfo.from_json(c) for c in d["collections"]], d["kernels"])

    return Call("GET", "/v1/collections", parse)


def healthz_call() -> Call[bool]:
    return Call("GET", "/healthz", lambda r: r.status_code == 200)


def readyz_call() -> Call[bool]:
    # 503 not_ready is an answer here, not an error (and not retried).
    return Call("GET", "/readyz", lambda r: r.status_code == 200, accept=(503,), idempotent=False)


def metrics_call() -> Call[str]:
    return Call("GET", "/metrics", lambda r: r.text)


def openapi_call() -> Call[JSON]:
    return Call("GET", "/openapi.json", lambda r: r.json())


def reload_call() -> Call[JSON]:
    # An admin action: never sent twice by the client.
    return Call("POST", "/admin/reload", lambda r: r.json(), idempotent=False, accept=(422,))


def base_headers(api_key: Optional[str]) -> Dict[str, str]:
    h = {"user-agent": f"earshot-client-python/{__version__}", "accept": "application/json"}
    if api_key:
        h["authorization"] = f"Bearer {api_key}"
    return h
