"""Typed answers (dataclasses) and the request parts that have a shape of their own.

Request parts (`Filter`, `Emerging`, `FanOut`, `HistoryItem`, the batch queries) may also be given as
plain dicts with the wire field names. Every answer keeps the decoded JSON in `.raw`, so fields added
by a newer server are never lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

JSON = Dict[str, Any]


def _drop_none(d: Mapping[str, Any]) -> JSON:
    return {k: v for k, v in d.items() if v is not None}


# ------------------------------------------------------------------------------ request parts


@dataclass
class Filter:
    """`filter`: creator allow/deny lists and popularity bounds, applied during the graph walk."""

    creators: Optional[List[str]] = None
    exclude_creators: Optional[List[str]] = None
    min_popularity: Optional[float] = None
    max_popularity: Optional[float] = None

    def to_json(self) -> JSON:
        return _drop_none(self.__dict__)


@dataclass
class Emerging:
    """`emerging`: reserve slots for (or boost) items whose creator popularity is ≤ `max_popularity`."""

    max_popularity: float
    min_share: Optional[float] = None
    boost: Optional[float] = None

    def to_json(self) -> JSON:
        return _drop_none(self.__dict__)


@dataclass
class FanOut:
    """`fan_out` of the seed-based taste strategies (`neighbours`, `best_score`)."""

    items: Optional[int] = None
    per_item: Optional[int] = None
    damping: Optional[float] = None

    def to_json(self) -> JSON:
        return _drop_none(self.__dict__)


@dataclass
class HistoryItem:
    """One listening-history entry of a taste request."""

    id: str
    weight: Optional[float] = None
    event: Optional[str] = None
    #: RFC 3339 time, e.g. "2026-11-20T18:00:00Z"
    played_at: Optional[str] = None

    def to_json(self) -> JSON:
        return _drop_none(self.__dict__)


Part = Union[Filter, Emerging, FanOut, Mapping[str, Any]]
#: a history entry: a `HistoryItem`, a wire dict, a bare ID, or an `(id, weight)` pair
HistoryEntry = Union[HistoryItem, Mapping[str, Any], str, "tuple[str, float]"]


def part_json(p: Any) -> Any:
    if p is None:
        return None
    if hasattr(p, "to_json"):
        return p.to_json()
    return dict(p)


def history_json(history: Sequence[HistoryEntry]) -> List[JSON]:
    out: List[JSON] = []
    for h in history:
        if isinstance(h, str):
            out.append({"id": h})
        elif isinstance(h, tuple):
            out.append({"id": h[0], "weight": float(h[1])})
        else:
            out.append(part_json(h))
    return out


# -------------------------------------------------------------------------------- batch queries


@dataclass
class SimilarQuery:
    """A `{"type": "similar"}` batch entry; `options` are the list options (k, ef, filter, …)."""

    collection: str
    id: str
    options: JSON = field(default_factory=dict)

    def to_json(self) -> JSON:
        return {"type": "similar", "collection": self.collection, "id": self.id, **self.options}


@dataclass
class SearchQuery:
    """A `{"type": "search"}` batch entry; `vector` may be a numpy array."""

    collection: str
    vector: Any
    options: JSON = field(default_factory=dict)

    def to_json(self) -> JSON:
        from ._core import vector_json

        return {
            "type": "search",
            "collection": self.collection,
            "vector": vector_json(self.vector),
            **self.options,
        }


@dataclass
class TasteQuery:
    """A `{"type": "taste"}` batch entry."""

    collection: str
    history: Sequence[HistoryEntry]
    options: JSON = field(default_factory=dict)

    def to_json(self) -> JSON:
        return {
            "type": "taste",
            "collection": self.collection,
            "history": history_json(self.history),
            **self.options,
        }


BatchQuery = Union[SimilarQuery, SearchQuery, TasteQuery, Mapping[str, Any]]


# ---------------------------------------------------------------------------------------- answers


@dataclass
class Result:
    """One result: higher `score` is closer."""

    id: str
    score: float
    creator: Optional[str]
    popularity: Optional[float]
    #: only in pool mode
    creator_popularity: Optional[float] = None
    #: only with `explain=True`
    explain: Optional[JSON] = None

    @classmethod
    def from_json(cls, d: JSON) -> "Result":
        return cls(
            id=d["id"],
            score=d["score"],
            creator=d.get("creator"),
            popularity=d.get("popularity"),
            creator_popularity=d.get("creator_popularity"),
            explain=d.get("explain"),
        )


@dataclass
class Item:
    """One stored item; `vector` is the stored f32 vector (unit length under cosine)."""

    id: str
    creator: Optional[str]
    popularity: Optional[float]
    creator_popularity: Optional[float]
    vector: List[float]

    @classmethod
    def from_json(cls, d: JSON) -> "Item":
        return cls(
            id=d["id"],
            creator=d.get("creator"),
            popularity=d.get("popularity"),
            creator_popularity=d.get("creator_popularity"),
            vector=d["vector"],
        )

    def array(self) -> Any:
        """The vector as a float32 numpy array (needs numpy)."""
        import numpy as np

        return np.asarray(self.vector, dtype=np.float32)


@dataclass
class Results:
    """A result list (`similar`, `search`, `taste`, one batch entry)."""

    results: List[Result]
    #: per-list explanation with `explain=True`
    explain: Optional[JSON] = None
    emerging_slots_requested: Optional[int] = None
    emerging_slots_reserved: Optional[int] = None
    #: the queried item (`similar` in pool mode)
    item: Optional[Item] = None
    #: `x-earshot-version` of the collection that answered (not set for batch entries)
    version: Optional[str] = None
    request_id: Optional[str] = None
    raw: JSON = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(
        cls, d: JSON, version: Optional[str] = None, request_id: Optional[str] = None
    ) -> "Results":
        return cls(
            results=[Result.from_json(r) for r in d["results"]],
            explain=d.get("explain"),
            emerging_slots_requested=d.get("emerging_slots_requested"),
            emerging_slots_reserved=d.get("emerging_slots_reserved"),
            item=Item.from_json(d["item"]) if d.get("item") else None,
            version=version,
            request_id=request_id,
            raw=d,
        )

    @property
    def ids(self) -> List[str]:
        return [r.id for r in self.results]

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.results)

    def __getitem__(self, i: int) -> Result:
        return self.results[i]


@dataclass
class Items:
    """`POST /v1/{collection}/items`: the items found and the IDs missing, both in request order."""

    items: List[Item]
    missing: List[str]


@dataclass
class CollectionInfo:
    name: str
    metric: str
    dim: int
    count: int
    creators: int
    has_popularity: bool
    m: int
    ef_construction: int
    default_ef: int
    built_at: str
    builder: str
    mapped_bytes: int
    version: str
    loaded_at: Optional[str]
    retained: List[Any]
    shard: Optional[JSON] = None
    raw: JSON = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, d: JSON) -> "CollectionInfo":
        names = set(cls.__dataclass_fields__) - {"raw", "shard"}
        fields: Dict[str, Any] = {k: d.get(k) for k in names}
        return cls(**fields, shard=d.get("shard"), raw=d)


@dataclass
class Collections:
    collections: List[CollectionInfo]
    #: the SIMD kernels the server uses
    kernels: str

    def __getitem__(self, name: str) -> CollectionInfo:
        for c in self.collections:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def names(self) -> List[str]:
        return [c.name for c in self.collections]
