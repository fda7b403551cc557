"""Two-tower taste (tools/ease_factors.py) end to end: the factors reproduce EASE, and a real server
answering `taste` over the history table into the items table ranks exactly as the model does."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np

from earshot_client import Client

from conftest import REPO, Server

spec = importlib.util.spec_from_file_location("ease_factors", REPO / "tools" / "ease_factors.py")
assert spec is not None and spec.loader is not None
ease = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ease)

N_USERS, N_ITEMS, GENRES = 400, 150, 6


def listening(seed: int = 3) -> list[tuple[int, int]]:
    """Users who mostly listen within one or two genres (item i's genre is i % GENRES)."""
    rng = np.random.default_rng(seed)
    pairs = set()
    for u in range(N_USERS):
        liked = rng.choice(GENRES, size=rng.integers(1, 3), replace=False)
        for _ in range(rng.integers(5, 20)):
            g = rng.choice(liked) if rng.random() < 0.85 else rng.integers(GENRES)
            pairs.add((u, int(g + GENRES * rng.integers(N_ITEMS // GENRES))))
    return sorted(pairs)


def ease_closed_form(pairs: list[tuple[int, int]], lam: float) -> np.ndarray:
    X = np.zeros((N_USERS, N_ITEMS))
    for u, i in pairs:
        X[u, i] = 1
    P = np.linalg.inv(X.T @ X + lam * np.eye(N_ITEMS))
    B = np.eye(N_ITEMS) - P / np.diag(P)[None, :]
    np.fill_diagonal(B, 0)
    return B


def test_full_rank_factors_are_the_ease_matrix() -> None:
    pairs = listening()
    row_of = {i: i for i in range(N_ITEMS)}
    U, V = ease.ease_factors(pairs, row_of, 10.0, N_ITEMS)
    assert U.shape == V.shape == (N_ITEMS, N_ITEMS)
    np.testing.assert_allclose(U.astype(np.float64) @ V.T, ease_closed_form(pairs, 10.0), atol=2e-4)


def test_dropped_pairs_are_not_trained_on(tmp_path: Path) -> None:
    pairs = listening()
    (tmp_path / "pairs.tsv").write_text("user\titem\n" + "".join(f"{u}\t{i}\n" for u, i in pairs))
    (tmp_path / "drop.tsv").write_text(f"user\titem\n{pairs[0][0]}\t{pairs[0][1]}\n")
    kept = ease.read_pairs(tmp_path / "pairs.tsv", [tmp_path / "drop.tsv"])
    assert kept == pairs[1:]


def test_taste_over_the_history_table_ranks_as_the_model(tmp_path: Path, earshot_bin: Path) -> None:
    pairs = listening()
    (tmp_path / "items.csv").write_text("id,n\n" + "".join(f"{100 + i},{i}\n" for i in range(N_ITEMS)))
    # Item IDs are 100 + row in both files: the tool maps them to rows through --items.
    (tmp_path / "pairs.tsv").write_text("user\titem\tcount\n" + "".join(f"{u}\t{100 + i}\t1\n" for u, i in pairs))
    out = tmp_path / "ease"
    subprocess.run([sys.executable, str(REPO / "tools" / "ease_factors.py"), "--pairs", str(tmp_path / "pairs.tsv"),
                    "--items", str(tmp_path / "items.csv"), "--id-column", "id", "--lam", "10", "--rank", "32",
                    "--out", str(out)], check=True, capture_output=True)
    U, V = np.load(out / "history.npy"), np.load(out / "items.npy")
    assert U.shape == V.shape == (N_ITEMS, 32)
    root = tmp_path / "indexes"
    for name, vectors in [("history", out / "history.npy"), ("ease", out / "items.npy")]:
        subprocess.run([str(earshot_bin), "build", "--vectors", str(vectors), "--meta", str(tmp_path / "items.csv"),
                        "--id-column", "id", "--metric", "dot", "--out", str(root / name)],
                       check=True, capture_output=True)
    server = Server(earshot_bin, root)
    try:
        with Client(server.url) as client:
            for u in range(0, N_USERS, 40):
                hist = [i for v, i in pairs if v == u]
                ids = [str(100 + i) for i in hist]
                got = client.taste("ease", ids, k=10, ef=N_ITEMS, history_collection="history", exclude=ids)
                scores = V.astype(np.float64) @ U[hist].astype(np.float64).sum(0)
                scores[hist] = -np.inf
                want = [str(100 + int(r)) for r in np.argsort(-scores, kind="stable")[:10]]
                assert [r.id for r in got.results] == want, f"user {u}"
                assert not set(ids) & {r.id for r in got.results}
    finally:
        server.stop()
