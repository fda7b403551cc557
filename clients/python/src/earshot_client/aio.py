"""The asyncio client: the same methods as `Client`, as coroutines (httpx.AsyncClient)."""

from __future__ import annotations

import os
import random
import sys
import asyncio
import time
from typing import Any, List, Optional, Sequence, TypeVar, Union

import httpx

from . import _core
from ._core import Call, ListOptions, RetryPolicy, SearchOptions, SimilarOptions, TasteOptions
from .errors import EarshotError
from .models import JSON, BatchQuery, Collections, HistoryEntry, Item, Items, Results

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # pragma: no cover
    from typing_extensions import Unpack

T = TypeVar("T")

from .client import DEFAULT_URL


class AsyncClient:
    """Talks to one `earshot serve` (or `earshot route`) over HTTP.

    `Client("http://127.0.0.1:7700", api_key=...)`; the key defaults to `$EARSHOT_API_KEY` and is
    sent as `Authorization: Bearer KEY`. Connections are kept alive and reused (one httpx pool per
    client: share one client between tasks). Use as `async with` or call `await aclose()`.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: Optional[str] = None,
        timeout: float = 30.0,
        retry: Optional[RetryPolicy] = None,
        max_connections: int = 16,
        http_client: Optional[httpx.AsyncClient] = None,
        seed: Optional[int] = None,
    ) -> None:
        api_key = api_key if api_key is not None else os.environ.get("EARSHOT_API_KEY")
        self.retry = retry if retry is not None else RetryPolicy()
        self._rng = random.Random(seed)
        self._http = http_client or httpx.AsyncClient(
            base_url=base_url,
            timeout=timeout,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )
        self._http.headers.update(_core.base_headers(api_key))

    # ------------------------------------------------------------------------------- plumbing

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def _run(self, call: Call[T]) -> T:
        policy = self.retry if call.idempotent else _core.NO_RETRY
        started = time.monotonic()
        attempts = 0
        while True:
            attempts += 1
            try:
                r = await self._http.send(call.request(self._http))
                return _core.check(call, r)
            except httpx.TransportError as e:
                err: EarshotError = _core.transport_error(e)
                err.__cause__ = e
            except EarshotError as e:
                err = e
            delay = policy.delay(attempts, started, err, self._rng)
            if delay is None:
                err.attempts = attempts
                raise err
            if policy.on_retry:
                policy.on_retry(attempts, err, delay)
            await asyncio.sleep(delay)

    # -------------------------------------------------------------------------------- queries

    async def similar(
        self, collection: str, id: str, *, version: Optional[str] = None, **options: Unpack[SimilarOptions]
    ) -> Results:
        """Nearest items to an item, the item itself excluded (`GET`, or `POST` for body-only options)."""
        return await self._run(_core.similar_call(collection, id, version, options))

    async def search(
        self, collection: str, vector: Any, *, version: Optional[str] = None, **options: Unpack[SearchOptions]
    ) -> Results:
        """Nearest items to a raw vector (a list or a 1-D numpy array)."""
        return await self._run(_core.search_call(collection, vector, version, options))

    async def taste(
        self,
        collection: str,
        history: Sequence[HistoryEntry],
        *,
        version: Optional[str] = None,
        **options: Unpack[TasteOptions],
    ) -> Results:
        """Items matching a listening history (IDs, `(id, weight)` pairs, `HistoryItem`s or dicts)."""
        return await self._run(_core.taste_call(collection, history, version, options))

    async def item(self, collection: str, id: str, *, version: Optional[str] = None) -> Item:
        """One stored item with its vector; `UnknownIdError` when absent."""
        return await self._run(_core.item_call(collection, id, version))

    async def items(self, collection: str, ids: Sequence[str], *, version: Optional[str] = None) -> Items:
        """Many items at once (split into requests of 1,000 IDs); missing IDs are listed, not raised."""
        return _core.merge_items([await self._run(c) for c in _core.items_calls(collection, ids, version)])

    async def batch(
        self, queries: Sequence[BatchQuery], *, max_batch: int = _core.MAX_BATCH, raise_errors: bool = False
    ) -> List[Union[Results, EarshotError]]:
        """Many queries via `POST /v1/batch`, split into requests of at most `max_batch` (server
        limit 256) and answered in input order. A failed entry is an `EarshotError` in the list
        (the others still answer), or raised with `raise_errors=True`."""
        out: List[Any] = []
        for c in _core.batch_calls(queries, max_batch):
            part: List[Any] = await self._run(c)
            out += part
        return _core.unwrap(out, raise_errors)

    async def search_many(
        self, collection: str, vectors: Any, *, max_batch: int = _core.MAX_BATCH, **options: Unpack[SearchOptions]
    ) -> List[Results]:
        """One search per row of `vectors` (a 2-D numpy array or a list of vectors), through `batch`;
        raises the first failed entry."""
        return await self.batch(_core.search_queries(collection, vectors, options), max_batch=max_batch, raise_errors=True)  # type: ignore[return-value]

    async def collections(self) -> Collections:
        return await self._run(_core.collections_call())

    # ----------------------------------------------------------------------------- operations

    async def healthz(self) -> bool:
        return await self._run(_core.healthz_call())

    async def readyz(self) -> bool:
        """True when serving; False while starting, shutting down or waiting for a collection."""
        return await self._run(_core.readyz_call())

    async def metrics(self) -> str:
        """Prometheus text."""
        return await self._run(_core.metrics_call())

    async def openapi(self) -> JSON:
        return await self._run(_core.openapi_call())

    async def reload(self) -> JSON:
        """`POST /admin/reload` (an admin key, or loopback without keys); never retried. A refused
        swap (422 `swap_refused`) is returned too: its body still lists every collection."""
        return await self._run(_core.reload_call())


__all__ = ["AsyncClient"]
