"""Retries on 503 overloaded (real server made to overload, and a relay for exact counts), full jitter,
attempt and time budgets, and connection reuse."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest

from earshot_client import NO_RETRY, Client, OverloadedError, RetryPolicy, ServerTimeoutError

from conftest import DIM

QUEUE_FULL = 'earshot_rejected_total{reason="queue_full"}'


def slow_batch(catalogue) -> dict:
    """128 wide searches: about a second of one slot on this small collection (256 took 2 s here)."""
    rng = np.random.default_rng(3)
    return {"queries": [{"type": "search", "collection": "tracks", "vector": rng.normal(size=DIM).tolist(),
                         "k": 200, "ef": 4096} for _ in range(128)]}


class Hog:
    """Holds the only execution slot of a `--max-concurrent 1 --max-queue 0` server with one slow
    batch, and returns once a probe has been refused, i.e. the slot is provably taken."""

    def __init__(self, server, catalogue) -> None:
        body = slow_batch(catalogue)
        self.status: int | None = None
        self.thread = threading.Thread(target=self._run, args=(server.url, body))
        self.thread.start()
        deadline = time.monotonic() + 30
        with httpx.Client(base_url=server.url) as probe:
            while probe.get("/v1/tracks/t10/similar", params={"k": 1}).status_code != 503:
                assert time.monotonic() < deadline and self.thread.is_alive(), "the slot never got busy"
                time.sleep(0.01)

    def _run(self, url, body) -> None:
        # A probe may hold the slot at the instant the batch arrives: send again until it runs.
        for _ in range(100):
            self.status = httpx.post(url + "/v1/batch", json=body, timeout=120).status_code
            if self.status != 503:
                return

    def join(self) -> None:
        self.thread.join()
        assert self.status == 200


@pytest.fixture
def one_slot(start_server):
    return start_server("--max-concurrent", "1", "--max-queue", "0")


def test_overloaded_real_server_is_retried_after_retry_after(one_slot, catalogue):
    seen = []
    policy = RetryPolicy(max_attempts=20, budget=60, on_retry=lambda n, e, d: seen.append((e.code, e.retry_after, d)))
    with Client(one_slot.url, retry=policy) as c:
        hog = Hog(one_slot, catalogue)
        r = c.search("tracks", catalogue.vectors[5], k=3)
        hog.join()
    assert r.ids[0] == "t5"
    assert seen, "the first attempt was not refused although the slot was taken"
    assert all(code == "overloaded" and ra == 1.0 and d >= 1.0 for code, ra, d in seen), seen
    assert one_slot.metric(QUEUE_FULL) >= 1 + len(seen)  # the probe's refusal + the client's


def test_overloaded_real_server_without_retries_raises_at_once(one_slot, catalogue):
    with Client(one_slot.url, retry=NO_RETRY) as c:
        hog = Hog(one_slot, catalogue)
        t = time.monotonic()
        with pytest.raises(OverloadedError) as e:
            c.similar("tracks", "t10", k=1)
        took = time.monotonic() - t
        hog.join()
    assert (e.value.status, e.value.code, e.value.retry_after, e.value.attempts) == (503, "overloaded", 1.0, 1)
    assert took < 1.0


def test_budget_stops_retries_that_would_end_too_late(one_slot, catalogue):
    # Retry-After 1 s does not fit a 0.5 s budget: raised after one attempt, without waiting.
    with Client(one_slot.url, retry=RetryPolicy(budget=0.5)) as c:
        hog = Hog(one_slot, catalogue)
        t = time.monotonic()
        with pytest.raises(OverloadedError) as e:
            c.similar("tracks", "t10", k=1)
        took = time.monotonic() - t
        hog.join()
    assert e.value.attempts == 1 and took < 0.5


def test_exact_attempts_and_waits_through_a_relay(relay):
    rl = relay(fail=2, retry_after="1")
    delays = []
    with Client(rl.url, retry=RetryPolicy(on_retry=lambda n, e, d: delays.append(d))) as c:
        assert c.similar("tracks", "t10", k=2).ids
    assert rl.requests == 3 and len(delays) == 2
    # Retry-After plus full jitter within the backoff cap (0.1 s, then 0.2 s).
    assert 1.0 <= delays[0] <= 1.1 and 1.0 <= delays[1] <= 1.2, delays
    assert all(b - a >= 1.0 for a, b in zip(rl.times, rl.times[1:])), rl.times


def test_max_attempts(relay):
    rl = relay(fail=10, retry_after=None)
    with Client(rl.url, retry=RetryPolicy(max_attempts=3, backoff=0.01)) as c, pytest.raises(OverloadedError) as e:
        c.collections()
    assert e.value.attempts == 3 and rl.requests == 3


def test_time_budget(relay):
    rl = relay(fail=10, retry_after="1")
    t = time.monotonic()
    with Client(rl.url, retry=RetryPolicy(max_attempts=10, budget=1.5)) as c, pytest.raises(OverloadedError) as e:
        c.collections()
    # 1st attempt, wait ~1 s, 2nd attempt; a 2nd wait of ≥ 1 s would end past 1.5 s.
    assert e.value.attempts == 2 and rl.requests == 2 and time.monotonic() - t < 1.5


def test_full_jitter_without_retry_after(relay):
    rl = relay(fail=6, retry_after=None)
    delays = []
    policy = RetryPolicy(max_attempts=7, backoff=0.05, max_backoff=0.1, on_retry=lambda n, e, d: delays.append(d))
    with Client(rl.url, retry=policy, seed=1) as c:
        c.healthz()
    caps = [0.05, 0.1, 0.1, 0.1, 0.1, 0.1]
    assert len(delays) == 6 and all(0 <= d <= cap for d, cap in zip(delays, caps)), delays
    assert len(set(delays)) == 6  # jittered, not a fixed schedule


def test_only_retryable_codes_and_idempotent_calls_are_retried(relay):
    rl = relay(fail=1, code="timeout")
    with Client(rl.url) as c, pytest.raises(ServerTimeoutError):
        c.similar("tracks", "t10")
    assert rl.requests == 1
    rl = relay(fail=1)
    with Client(rl.url) as c, pytest.raises(OverloadedError):
        c.reload()  # an admin action is never sent twice
    assert rl.requests == 1


def test_connections_are_reused(relay, catalogue):
    rl = relay()
    with Client(rl.url) as c:
        for i in range(10, 30):
            c.similar("tracks", f"t{i}", k=1)
        c.search("tracks", catalogue.vectors[0], k=1)
        c.items("tracks", ["t10"])
    assert rl.requests == 22 and rl.connections == 1
