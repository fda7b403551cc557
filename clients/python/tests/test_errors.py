"""Errors become exceptions carrying the server's stable code (real server answers)."""

from __future__ import annotations

import math
import socket

import numpy as np
import pytest

from earshot_client import (
    NO_RETRY,
    Client,
    ConnectionFailedError,
    EarshotError,
    Emerging,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    RetryPolicy,
    UnauthorizedError,
    UnknownCollectionError,
    UnknownIdError,
    VersionUnavailableError,
)

from conftest import DIM


@pytest.fixture
def client(server):
    with Client(server.url) as c:
        yield c


@pytest.mark.parametrize(
    "call, cls, status, code",
    [
        (lambda c: c.similar("nope", "t10"), UnknownCollectionError, 404, "unknown_collection"),
        (lambda c: c.item("tracks", "nope"), UnknownIdError, 404, "unknown_id"),
        (lambda c: c.similar("tracks", "nope"), UnknownIdError, 404, "unknown_id"),
        (lambda c: c.similar("tracks", "t10", k=0), InvalidRequestError, 400, "invalid_k"),
        (lambda c: c.similar("tracks", "t10", ef=5000), InvalidRequestError, 400, "invalid_ef"),
        (lambda c: c.search("tracks", np.ones(DIM + 1)), InvalidRequestError, 422, "dimension_mismatch"),
        (lambda c: c.search("tracks", np.zeros(DIM)), InvalidRequestError, 422, "invalid_vector"),
        (lambda c: c.search(".hidden", np.ones(DIM)), InvalidRequestError, 400, "invalid_collection"),
        (lambda c: c.taste("tracks", []), InvalidRequestError, 422, "empty_history"),
        (lambda c: c.taste("tracks", [{"id": "t10", "event": "hum"}]), InvalidRequestError, 422, "unknown_event"),
        (lambda c: c.taste("tracks", ["t10"], strategy="magic"), InvalidRequestError, 422, "unknown_strategy"),
        (lambda c: c.taste("tracks", [("t10", -1.0)]), InvalidRequestError, 422, "invalid_weight"),
        (lambda c: c.search("tracks", np.ones(DIM), emerging=Emerging(1.0, min_share=2)), InvalidRequestError,
         422, "invalid_emerging"),
        (lambda c: c.items("tracks", []), InvalidRequestError, 400, "invalid_ids"),
        (lambda c: c.batch([]), InvalidRequestError, 400, "invalid_batch"),
        (lambda c: c.taste("tracks", ["t10"] * 10_001), PayloadTooLargeError, 413, "history_too_large"),
        (lambda c: c.similar("tracks", "t10", version="v-none"), VersionUnavailableError, 409,
         "version_unavailable"),
    ],
)
def test_error_codes(client, call, cls, status, code):
    with pytest.raises(cls) as e:
        call(client)
    err = e.value
    assert isinstance(err, EarshotError)
    assert (err.status, err.code) == (status, code), err
    assert err.message and err.request_id and err.attempts == 1


def test_not_found_family(client):
    for call in (lambda: client.similar("nope", "x"), lambda: client.item("tracks", "nope")):
        with pytest.raises(NotFoundError):
            call()


def test_nan_is_refused_before_sending(client):
    with pytest.raises(InvalidRequestError) as e:
        client.search("tracks", [math.nan] * DIM)
    assert e.value.code == "invalid_vector" and e.value.status is None


KEYS = {"EARSHOT_QUERY_KEYS": "qkey-0123456789abcdef", "EARSHOT_ADMIN_KEYS": "akey-0123456789abcdef"}


def test_api_keys(start_server, monkeypatch):
    s = start_server(env=KEYS)
    monkeypatch.delenv("EARSHOT_API_KEY", raising=False)
    with Client(s.url) as anon:
        with pytest.raises(UnauthorizedError) as e:
            anon.similar("tracks", "t10")
        assert (e.value.status, e.value.code) == (401, "unauthorized")
        assert anon.healthz()  # probes stay open
    with Client(s.url, api_key="wrong-key-000000") as bad, pytest.raises(UnauthorizedError):
        bad.collections()
    with Client(s.url, api_key=KEYS["EARSHOT_QUERY_KEYS"]) as q:
        assert len(q.similar("tracks", "t10", k=2)) == 2
        with pytest.raises(ForbiddenError) as e:
            q.reload()
        assert (e.value.status, e.value.code) == (403, "forbidden")
    monkeypatch.setenv("EARSHOT_API_KEY", KEYS["EARSHOT_ADMIN_KEYS"])  # the default key
    with Client(s.url) as adm:
        assert "tracks" in adm.reload()["collections"]


def test_connection_refused_is_retried_then_raised():
    with socket.socket() as sk:  # a port nobody listens on
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    seen = []
    policy = RetryPolicy(max_attempts=3, backoff=0.01, on_retry=lambda n, e, d: seen.append(e.code))
    with Client(f"http://127.0.0.1:{port}", retry=policy) as c, pytest.raises(ConnectionFailedError) as e:
        c.collections()
    assert e.value.code == "connection_error" and e.value.status is None and e.value.attempts == 3
    assert seen == ["connection_error"] * 2
    with Client(f"http://127.0.0.1:{port}", retry=NO_RETRY) as c, pytest.raises(ConnectionFailedError) as e:
        c.healthz()
    assert e.value.attempts == 1
