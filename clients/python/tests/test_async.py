"""Every method of the asyncio client against a real `earshot serve`."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from earshot_client import AsyncClient, Filter, RetryPolicy, SimilarQuery, UnknownCollectionError, UnknownIdError

from conftest import DIM, N_TRACKS

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def test_every_method(server, catalogue):
    async with AsyncClient(server.url) as c:
        r = await c.similar("tracks", "t100", k=5)
        assert len(r) == 5 and "t100" not in r.ids and r.version
        p = await c.similar("tracks", "t100", k=5, filter=Filter(creators=["c3"]))
        assert {x.creator for x in p} == {"c3"}
        s = await c.search("tracks", catalogue.vectors[30], k=3)
        assert s.ids[0] == "t30"
        t = await c.taste("tracks", ["t30", ("t31", 3.0)], k=4)
        assert len(t) == 4
        it = await c.item("tracks", "a/b")
        assert it.id == "a/b" and len(it.vector) == DIM
        its = await c.items("tracks", ["t7", "zz"])
        assert [i.id for i in its.items] == ["t7"] and its.missing == ["zz"]
        b = await c.batch([SimilarQuery("tracks", "t7", {"k": 2}), SimilarQuery("tracks", "zz")])
        assert len(b[0]) == 2 and isinstance(b[1], UnknownIdError)
        many = await c.search_many("tracks", catalogue.vectors[:300], k=1)
        assert [m.ids[0] for m in many] == catalogue.ids[:300]
        cs = await c.collections()
        assert cs["tracks"].count == N_TRACKS
        assert await c.healthz() and await c.readyz()
        assert "earshot_rejected_total" in await c.metrics()
        assert "paths" in await c.openapi()
        assert "tracks" in (await c.reload())["collections"]
        with pytest.raises(UnknownCollectionError) as e:
            await c.search("nope", np.ones(DIM))
        assert e.value.code == "unknown_collection" and e.value.status == 404


async def test_concurrent_requests_share_the_pool(server, relay, catalogue):
    rl = relay()
    async with AsyncClient(rl.url, max_connections=4) as c:
        outs = await asyncio.gather(*(c.similar("tracks", f"t{i}", k=2) for i in range(10, 50)))
    assert all(len(o) == 2 for o in outs)
    assert rl.requests == 40 and rl.connections <= 4


async def test_async_retry_honours_retry_after(relay):
    rl = relay(fail=1, retry_after="1")
    seen = []
    policy = RetryPolicy(on_retry=lambda n, e, d: seen.append((n, e.code, d)))
    async with AsyncClient(rl.url, retry=policy) as c:
        assert len(await c.similar("tracks", "t10", k=1)) == 1
    assert rl.requests == 2 and [s[:2] for s in seen] == [(1, "overloaded")]
    assert rl.times[1] - rl.times[0] >= 1.0
