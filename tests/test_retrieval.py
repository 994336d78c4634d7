"""Tests for cvrl_tf.retrieval against brute-force NumPy references."""
import json
from collections import Counter

import numpy as np
import pytest

from cvrl_tf import retrieval


def _brute_neighbors(queries, gallery, k):
    """Python-loop reference: cosine similarity, sorted by (-sim, index)."""
    out = []
    for q in queries:
        sims = [float(np.dot(q, g) / (np.linalg.norm(q) * np.linalg.norm(g))) for g in gallery]
        out.append(sorted(range(len(gallery)), key=lambda i: (-sims[i], i))[:k])
    return np.array(out)


def _brute_knn(queries, gallery, gallery_labels, k, vote, temperature=0.07):
    preds = []
    for row in _brute_neighbors(queries, gallery, k):
        scores, first_rank = Counter(), {}
        for rank, i in enumerate(row):
            label = int(gallery_labels[i])
            sim = np.dot(queries[len(preds)], gallery[i]) / (
                np.linalg.norm(queries[len(preds)]) * np.linalg.norm(gallery[i]))
            scores[label] += 1.0 if vote == "majority" else np.exp(sim / temperature)
            first_rank.setdefault(label, rank)
        best = max(scores.values())
        tied = [c for c in scores if np.isclose(scores[c], best, rtol=1e-9, atol=0)]
        preds.append(min(tied, key=lambda c: first_rank[c]))
    return np.array(preds)


def _brute_recall(queries, query_labels, gallery, gallery_labels, k):
    rows = _brute_neighbors(queries, gallery, k)
    return float(np.mean([np.any(gallery_labels[r] == l) for r, l in zip(rows, query_labels)]))


def _planted(rng, num_classes, per_class, dim, noise):
    centers = rng.normal(size=(num_classes, dim))
    labels = np.repeat(np.arange(num_classes), per_class)
    return centers[labels] + noise * rng.normal(size=(len(labels), dim)), labels


@pytest.mark.parametrize("k", [1, 3, 7, 40])
def test_nearest_neighbors_matches_brute_force(k):
    rng = np.random.default_rng(k)
    queries, gallery = rng.normal(size=(13, 6)), rng.normal(size=(40, 6))
    idx, sims = retrieval.nearest_neighbors(queries, gallery, k)
    np.testing.assert_array_equal(idx, _brute_neighbors(queries, gallery, k))
    assert np.all(np.diff(sims, axis=1) <= 1e-7)


def test_nearest_neighbors_is_chunked_consistently(monkeypatch):
    rng = np.random.default_rng(0)
    queries, gallery = rng.normal(size=(25, 5)), rng.normal(size=(30, 5))
    full = retrieval.nearest_neighbors(queries, gallery, 4)
    monkeypatch.setattr(retrieval, "_CHUNK", 7)
    chunked = retrieval.nearest_neighbors(queries, gallery, 4)
    np.testing.assert_array_equal(full[0], chunked[0])


@pytest.mark.parametrize("vote", ["majority", "weighted"])
@pytest.mark.parametrize("k", [1, 4, 9])
def test_knn_accuracy_matches_brute_force(vote, k):
    rng = np.random.default_rng(10 * k + len(vote))
    train_x, train_y = _planted(rng, 5, 12, 8, noise=1.5)
    test_x, test_y = _planted(rng, 5, 6, 8, noise=1.5)
    expected = np.mean(_brute_knn(test_x, train_x, train_y, k, vote) == test_y)
    got = retrieval.knn_accuracy(train_x, train_y, test_x, test_y, k=k, vote=vote)
    assert got == pytest.approx(expected)


def test_majority_tie_goes_to_nearest_class():
    # Neighbours ranked: class 2, class 1, class 1, class 2 -> tie 2:2, class 2 ranked first.
    labels = np.array([[2, 1, 1, 2], [0, 0, 3, 3], [1, 2, 2, 2]])
    sims = np.tile(np.array([0.9, 0.8, 0.7, 0.6]), (3, 1))
    pred = retrieval.knn_predict(labels, sims, num_classes=4, vote="majority")
    np.testing.assert_array_equal(pred, [2, 0, 2])
    # A weighted vote lets one very close neighbour outvote two far ones.
    pred = retrieval.knn_predict(np.array([[1, 2, 2]]), np.array([[0.99, 0.5, 0.5]]),
                                 num_classes=3, vote="weighted", temperature=0.1)
    np.testing.assert_array_equal(pred, [1])


@pytest.mark.parametrize("k", [1, 5, 10, 20])
def test_retrieval_recall_matches_brute_force(k):
    rng = np.random.default_rng(k)
    train_x, train_y = _planted(rng, 8, 5, 6, noise=2.0)
    test_x, test_y = _planted(rng, 8, 3, 6, noise=2.0)
    got = retrieval.retrieval_recall(train_x, train_y, test_x, test_y, ks=(1, 5, 10, 20))
    assert got[k] == pytest.approx(_brute_recall(test_x, test_y, train_x, train_y, k))
    values = [got[j] for j in (1, 5, 10, 20)]
    assert values == sorted(values)  # recall@k never decreases with k


def test_planted_clusters_are_found():
    rng = np.random.default_rng(1)
    train_x, train_y = _planted(rng, 6, 10, 16, noise=0.05)
    # Test clips near the train clusters (one train clip per class as the centre).
    test_y = np.repeat(np.arange(6), 4)
    test_x = train_x[::10][test_y] + 0.05 * rng.normal(size=(24, 16))
    assert retrieval.knn_accuracy(train_x, train_y, test_x, test_y, k=5) == 1.0
    assert retrieval.retrieval_recall(train_x, train_y, test_x, test_y, ks=(1,))[1] == 1.0
    shuffled = rng.permutation(train_y)
    assert retrieval.knn_accuracy(train_x, shuffled, test_x, test_y, k=5) < 0.6


def test_bad_inputs_raise_clear_errors(tmp_path):
    x = np.ones((4, 3))
    with pytest.raises(ValueError, match="same F"):
        retrieval.nearest_neighbors(x, np.ones((4, 2)), 1)
    with pytest.raises(ValueError, match="between 1 and the gallery size"):
        retrieval.nearest_neighbors(x, x, 5)
    with pytest.raises(ValueError, match="vote='mean' is unknown"):
        retrieval.knn_predict(np.zeros((1, 1), int), np.zeros((1, 1)), 1, vote="mean")
    with pytest.raises(FileNotFoundError, match="missing.npz does not exist"):
        retrieval.load_features(str(tmp_path / "missing.npz"))
    path = tmp_path / "unlabelled.npz"
    np.savez(path, features=x, labels=np.array([0, -1, 1, 2]), ids=np.array(["a"] * 4))
    with pytest.raises(ValueError, match="1 clips without a label"):
        retrieval.load_features(str(path))


def test_cli_prints_table_and_writes_json(tmp_path, capsys):
    rng = np.random.default_rng(3)
    train_x, train_y = _planted(rng, 4, 8, 5, noise=0.5)
    test_x = train_x[::2] + 0.1 * rng.normal(size=(16, 5))
    test_y = train_y[::2]
    for name, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        ids = np.array([f"{name}{i}" for i in range(len(y))])
        np.savez(tmp_path / f"{name}.npz", ids=ids, labels=y, features=x.astype(np.float32))
    out = tmp_path / "metrics.json"
    results = retrieval.main(["--train", str(tmp_path / "train.npz"), "--test",
                              str(tmp_path / "test.npz"), "--knn_k", "3", "--vote", "weighted",
                              "--output", str(out)])
    printed = capsys.readouterr().out
    assert "kNN top-1 (k=3, weighted)" in printed and "retrieval R@20" in printed
    saved = json.loads(out.read_text())
    assert saved["recall"] == results["recall"] and set(saved["recall"]) == {"1", "5", "10", "20"}
    expected = np.mean(_brute_knn(test_x, train_x, train_y, 3, "weighted") == test_y)
    assert saved["knn"]["top1"] == pytest.approx(expected)
    assert saved["recall"]["1"] == pytest.approx(
        _brute_recall(test_x, test_y, train_x, train_y, 1))
