"""Python client of the earshot HTTP API.

    from earshot_client import Client
    with Client("http://127.0.0.1:7700") as c:
        for r in c.similar("tracks", "spotify:track:1", k=5):
            print(r.id, r.score)

`AsyncClient` (earshot_client.aio) has the same methods as coroutines. Errors are `EarshotError`
subclasses carrying the server's stable `.code`; reads are retried on 503 `overloaded` and on
connection failures (see `RetryPolicy`).
"""

from ._core import MAX_BATCH, MAX_ITEMS, NO_RETRY, RetryPolicy, __version__
from .aio import AsyncClient
from .client import DEFAULT_URL, Client
from .errors import (
    ConnectionFailedError,
    EarshotError,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    ServerError,
    ServerTimeoutError,
    UnauthorizedError,
    UnavailableError,
    UnknownCollectionError,
    UnknownIdError,
    VersionUnavailableError,
)
from .models import (
    CollectionInfo,
    Collections,
    Emerging,
    FanOut,
    Filter,
    HistoryItem,
    Item,
    Items,
    Result,
    Results,
    SearchQuery,
    SimilarQuery,
    TasteQuery,
)

__all__ = [
    "AsyncClient",
    "Client",
    "CollectionInfo",
    "Collections",
    "ConnectionFailedError",
    "DEFAULT_URL",
    "EarshotError",
    "Emerging",
    "FanOut",
    "Filter",
    "ForbiddenError",
    "HistoryItem",
    "InvalidRequestError",
    "Item",
    "Items",
    "MAX_BATCH",
    "MAX_ITEMS",
    "NO_RETRY",
    "NotFoundError",
    "OverloadedError",
    "PayloadTooLargeError",
    "Result",
    "Results",
    "RetryPolicy",
    "SearchQuery",
    "ServerError",
    "ServerTimeoutError",
    "SimilarQuery",
    "TasteQuery",
    "UnauthorizedError",
    "UnavailableError",
    "UnknownCollectionError",
    "UnknownIdError",
    "VersionUnavailableError",
    "__version__",
]
