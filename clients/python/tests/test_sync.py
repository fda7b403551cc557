"""Every method of the sync client against a real `earshot serve`."""

from __future__ import annotations

import numpy as np
import pytest

from earshot_client import (
    Client,
    Emerging,
    FanOut,
    Filter,
    HistoryItem,
    SearchQuery,
    SimilarQuery,
    TasteQuery,
    UnknownIdError,
)

from conftest import DIM, N_TRACKS, SPECIAL_IDS


@pytest.fixture
def client(server):
    with Client(server.url) as c:
        yield c


def exact_top(catalogue, q, k, banned=()):
    s = catalogue.vectors.astype(np.float64) @ (q / np.linalg.norm(q))
    for b in banned:
        s[catalogue.ids.index(b)] = -np.inf
    return [catalogue.ids[i] for i in np.argsort(-s, kind="stable")[:k]]


def test_similar_get_and_post(client, catalogue):
    r = client.similar("tracks", "t100", k=5)
    assert len(r) == 5 and "t100" not in r.ids
    assert r.version and r.request_id
    assert r.ids == exact_top(catalogue, catalogue.vectors[100], 5, banned=["t100"])
    assert [x.score for x in r] == sorted((x.score for x in r), reverse=True)
    assert r[0].creator.startswith("c") and r[0].popularity is not None
    # Body-only options go by POST.
    p = client.similar("tracks", "t100", k=5, exclude=r.ids[:2], exclude_same_creator=True,
                       filter=Filter(max_popularity=50))
    assert len(p) == 5 and not set(p.ids) & set(r.ids[:2])
    assert all(x.creator != catalogue.creators[100] and x.popularity <= 50 for x in p)
    # GET query options, including booleans.
    e = client.similar("tracks", "t100", k=3, ef=100, max_per_creator=1, explain=True)
    assert len({x.creator for x in e}) == 3 and e[0].explain is not None


@pytest.mark.parametrize("vid", SPECIAL_IDS)
def test_ids_needing_encoding(client, vid):
    assert client.item("tracks", vid).id == vid
    assert vid not in client.similar("tracks", vid, k=3).ids


def test_search_accepts_lists_and_numpy(client, catalogue):
    q = catalogue.vectors[7]
    want = exact_top(catalogue, q, 10)
    for v in (q, q.astype(np.float64), q.tolist(), tuple(float(x) for x in q)):
        assert client.search("tracks", v, k=10).ids == want
    r = client.search("tracks", q, k=4, emerging=Emerging(max_popularity=1e9, min_share=0.5))
    assert r.emerging_slots_requested == 2
    with pytest.raises(ValueError):
        client.search("tracks", np.zeros((2, DIM)))


def test_search_pool_mode(client, catalogue):
    r = client.search("tracks", catalogue.vectors[3], k=3, pool=True)
    assert all(x.creator_popularity is not None for x in r)


def test_taste_history_forms(client):
    hist = ["t10", ("t11", 2.0), HistoryItem("t12", event="like", played_at="2026-11-20T18:00:00Z"),
            {"id": "t13", "event": "skip"}]
    r = client.taste("tracks", hist, k=8, half_life="30d", now="2026-11-26T00:00:00Z", centroids=2,
                     explain=True)
    assert len(r) == 8 and not {"t10", "t11", "t12", "t13"} & set(r.ids)
    assert len(r.explain["centroid_weights"]) == 2
    n = client.taste("tracks", ["t10", "t11", "t12"], k=5, strategy="neighbours",
                     fan_out=FanOut(items=3, per_item=20))
    assert len(n) == 5
    # A history of tracks querying the derived creators collection.
    c = client.taste("creators", ["t10"], k=3, history_collection="tracks")
    assert len(c) == 3 and all(x.id.startswith("c") for x in c)


def test_item_and_items(client, catalogue):
    it = client.item("tracks", "t42")
    assert it.creator == catalogue.creators[42] and it.popularity == catalogue.popularity[42]
    np.testing.assert_allclose(it.array(), catalogue.vectors[42], atol=1e-6)
    got = client.items("tracks", ["t5", "nope", "t6", "items"])
    assert [i.id for i in got.items] == ["t5", "t6", "items"] and got.missing == ["nope"]


def test_items_split_at_the_server_limit(client, server):
    before = server.metric('earshot_http_requests_total{method="POST",route="/v1/{collection}/items",status="200"}')
    ids = [f"t{i}" for i in range(N_TRACKS - 1, N_TRACKS - 2501, -1)] + ["missing-1"]
    got = client.items("tracks", ids)
    assert [i.id for i in got.items] == ids[:-1] and got.missing == ["missing-1"]
    after = server.metric('earshot_http_requests_total{method="POST",route="/v1/{collection}/items",status="200"}')
    assert after - before == 3


def test_batch_mixed_queries_in_order(client, catalogue):
    qs = [SimilarQuery("tracks", "t20", {"k": 3}), SearchQuery("tracks", catalogue.vectors[9], {"k": 2}),
          TasteQuery("tracks", ["t21", "t22"], {"k": 4}), SimilarQuery("tracks", "no-such-id"),
          {"type": "similar", "collection": "tracks", "id": "t8", "k": 1}]
    out = client.batch(qs)
    assert [len(x) for x in out[:3]] == [3, 2, 4] and len(out[4]) == 1
    assert isinstance(out[3], UnknownIdError) and out[3].code == "unknown_id" and out[3].status == 404
    assert out[0].ids == client.similar("tracks", "t20", k=3).ids
    with pytest.raises(UnknownIdError):
        client.batch(qs, raise_errors=True)


def test_batch_splits_at_the_server_limit_and_keeps_order(client, server, catalogue):
    route = 'earshot_http_requests_total{method="POST",route="/v1/batch",status="200"}'
    vecs = catalogue.vectors[:600]
    before = server.metric(route)
    out = client.search_many("tracks", vecs, k=1)
    assert server.metric(route) - before == 3  # 256 + 256 + 88
    # Each vector is its own track: the nearest item is the row itself, so order is checkable.
    assert [r.ids[0] for r in out] == catalogue.ids[:600]
    before = server.metric(route)
    out = client.batch([SimilarQuery("tracks", f"t{i}", {"k": 1}) for i in range(10, 260)], max_batch=100)
    assert server.metric(route) - before == 3
    assert len(out) == 250 and all(len(r) == 1 for r in out)


def test_collections_probes_metrics_openapi_reload(client):
    cs = client.collections()
    assert set(cs.names) == {"tracks", "creators"}
    t = cs["tracks"]
    assert (t.metric, t.dim, t.count, t.creators) == ("cosine", DIM, N_TRACKS, N_TRACKS // 50)
    assert cs.kernels
    assert client.healthz() is True and client.readyz() is True
    assert "earshot_http_requests_total" in client.metrics()
    assert client.openapi()["openapi"].startswith("3.1")
    rl = client.reload()  # loopback without keys: allowed
    assert rl["collections"]["tracks"]["outcome"] == "unchanged"


def test_version_pinning(client):
    v = client.similar("tracks", "t20", k=1).version
    assert client.similar("tracks", "t20", k=1, version=v).version == v
    assert client.item("tracks", "t20", version=v).id == "t20"


def test_readyz_is_false_while_draining(start_server):
    import signal
    import time

    s = start_server("--drain-seconds", "5")
    with Client(s.url) as c:
        assert c.readyz() is True
        s.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 4
        while c.readyz():
            assert time.monotonic() < deadline, "/readyz stayed 200 after SIGTERM"
            time.sleep(0.05)
        assert c.healthz() is True  # still up while draining
