"""kNN classification and video retrieval recall@k on extracted features (cosine similarity).

The protocol video SSL papers report on UCF101/HMDB51: test clips are queries, train clips are
the gallery. kNN accuracy votes over the k nearest train clips; retrieval recall@k counts a
query as a hit when any of its k nearest train clips has the query's label.

    python -m cvrl_tf.retrieval --train features_train.npz --test features_test.npz
"""
from __future__ import annotations

if __name__ == "__main__":  # A command: settle the process before TensorFlow starts.
    from cvrl_tf.runtime import cli as _cli
    _cli.start()

# pylint: disable=wrong-import-position
import argparse
import json
import os
from typing import Sequence

import numpy as np

from cvrl_tf.runtime import cli

DEFAULT_RECALL_KS = (1, 5, 10, 20)
_CHUNK = 1024  # At most this many queries per similarity block ...
_BLOCK_FLOATS = 2**25  # ... and at most 128 MB of similarities per block.


def l2_normalize(features: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), as float32."""
    features = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, eps)


def nearest_neighbors(queries: np.ndarray, gallery: np.ndarray,
                      k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices [Q, k] and cosine similarities [Q, k] of each query's k most similar gallery rows.

    Sorted by decreasing similarity; equal similarities are ordered by gallery index.
    """
    queries, gallery = _check_pair(queries, gallery)
    if not 1 <= k <= len(gallery):
        raise ValueError(f"k={k} must be between 1 and the gallery size {len(gallery)}.")
    q, g = l2_normalize(queries), l2_normalize(gallery)
    indices = np.empty((len(q), k), dtype=np.int64)
    sims = np.empty((len(q), k), dtype=np.float32)
    chunk = max(1, min(_CHUNK, _BLOCK_FLOATS // len(g)))
    for start in range(0, len(q), chunk):
        block = q[start:start + chunk] @ g.T  # [chunk, N] cosine similarities
        if k < block.shape[1]:
            top = np.argpartition(-block, k - 1, axis=1)[:, :k]
        else:
            top = np.broadcast_to(np.arange(block.shape[1]), block.shape)
        top_sims = np.take_along_axis(block, top, axis=1)
        # Sort by similarity (descending), then by gallery index, so the order is deterministic.
        order = np.lexsort((top, -top_sims), axis=1)
        indices[start:start + chunk] = np.take_along_axis(top, order, axis=1)
        sims[start:start + chunk] = np.take_along_axis(top_sims, order, axis=1)
    return indices, sims


def knn_predict(neighbor_labels: np.ndarray, neighbor_sims: np.ndarray, num_classes: int,
                vote: str = "majority", temperature: float = 0.07) -> np.ndarray:
    """Predicted class [Q] from the labels and similarities [Q, k] of ranked neighbours.

    `majority`: most frequent label, ties going to the tied class ranked nearest.
    `weighted`: sum of exp(similarity / temperature) per class (Wu et al. 2018), same ties rule.
    """
    if vote == "majority":
        weights = np.ones_like(neighbor_sims, dtype=np.float64)
    elif vote == "weighted":
        if temperature <= 0:
            raise ValueError(f"temperature={temperature} must be positive for a weighted vote.")
        # exp((s - 1) / T) is exp(s / T) times a constant: same vote, no overflow at small T.
        weights = np.exp((neighbor_sims.astype(np.float64) - 1.0) / temperature)
    else:
        raise ValueError(f"vote={vote!r} is unknown; use 'majority' or 'weighted'.")
    rows = np.repeat(np.arange(len(neighbor_labels)), neighbor_labels.shape[1])
    scores = np.zeros((len(neighbor_labels), num_classes), dtype=np.float64)
    np.add.at(scores, (rows, neighbor_labels.reshape(-1)), weights.reshape(-1))
    score_at_rank = np.take_along_axis(scores, neighbor_labels, axis=1)
    best = scores.max(axis=1, keepdims=True)
    # The first rank whose class reaches the best score: the nearest of the tied classes.
    first = np.argmax(np.isclose(score_at_rank, best, rtol=1e-12, atol=0.0), axis=1)
    return neighbor_labels[np.arange(len(neighbor_labels)), first]


def knn_accuracy(train_features: np.ndarray, train_labels: np.ndarray,
                 test_features: np.ndarray, test_labels: np.ndarray, k: int = 20,
                 vote: str = "majority", temperature: float = 0.07) -> float:
    """Top-1 accuracy of k-nearest-neighbour classification of test clips by train clips."""
    train_labels, test_labels = _check_labels(train_labels, test_labels)
    idx, sims = nearest_neighbors(test_features, train_features, k)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    pred = knn_predict(train_labels[idx], sims, num_classes, vote, temperature)
    return float(np.mean(pred == test_labels))


def retrieval_recall(train_features: np.ndarray, train_labels: np.ndarray,
                     test_features: np.ndarray, test_labels: np.ndarray,
                     ks: Sequence[int] = DEFAULT_RECALL_KS) -> dict[int, float]:
    """Recall@k: share of test queries with a same-label clip among their k nearest train clips."""
    train_labels, test_labels = _check_labels(train_labels, test_labels)
    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1 or ks[-1] > len(train_labels):
        raise ValueError(f"recall ks={ks} must lie between 1 and the number of train clips "
                         f"{len(train_labels)}.")
    idx, _ = nearest_neighbors(test_features, train_features, ks[-1])
    hit = train_labels[idx] == test_labels[:, None]  # [Q, kmax]
    first_hit = np.where(hit.any(axis=1), hit.argmax(axis=1), np.iinfo(np.int64).max)
    return {k: float(np.mean(first_hit < k)) for k in ks}


def evaluate(train: dict, test: dict, knn_k: int = 20, vote: str = "majority",
             temperature: float = 0.07,
             recall_ks: Sequence[int] = DEFAULT_RECALL_KS) -> dict:
    """All metrics for two feature dicts ({'features', 'labels'}), as a JSON-ready dict."""
    args = (train["features"], train["labels"], test["features"], test["labels"])
    return {
        "num_train": int(len(train["labels"])),
        "num_test": int(len(test["labels"])),
        "knn": {"k": knn_k, "vote": vote, "temperature": temperature,
                "top1": knn_accuracy(*args, k=knn_k, vote=vote, temperature=temperature)},
        "recall": {str(k): v for k, v in retrieval_recall(*args, ks=recall_ks).items()},
    }


def load_features(path: str) -> dict:
    """Reads a features .npz written by cvrl_tf.features ({'ids', 'labels', 'features'})."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"Features file {path} does not exist; write it with "
                                "`python -m cvrl_tf.features`.")
    with np.load(path, allow_pickle=False) as data:
        missing = {"features", "labels"} - set(data.files)
        if missing:
            raise ValueError(f"Features file {path} lacks {sorted(missing)}; it holds "
                             f"{sorted(data.files)}.")
        out = {key: data[key] for key in data.files}
    if out["features"].ndim != 2 or len(out["features"]) != len(out["labels"]):
        raise ValueError(f"Features file {path} has features of shape {out['features'].shape} "
                         f"and {len(out['labels'])} labels; expected [N, F] and N labels.")
    if np.any(out["labels"] < 0):
        raise ValueError(f"Features file {path} has {int(np.sum(out['labels'] < 0))} clips "
                         "without a label (label < 0); kNN and retrieval need labelled clips.")
    return out


def format_table(results: dict) -> str:
    """A plain-text table of the metrics in `results` (from `evaluate`)."""
    knn = results["knn"]
    rows = [(f"kNN top-1 (k={knn['k']}, {knn['vote']})", knn["top1"])]
    rows += [(f"retrieval R@{k}", v) for k, v in results["recall"].items()]
    width = max(len(name) for name, _ in rows)
    lines = [f"{'metric'.ljust(width)}  value (%)", f"{'-' * width}  ---------"]
    lines += [f"{name.ljust(width)}  {100.0 * value:9.2f}" for name, value in rows]
    lines.append(f"({results['num_test']} test queries, {results['num_train']} train clips)")
    return "\n".join(lines)


def _check_pair(queries: np.ndarray, gallery: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    queries, gallery = np.asarray(queries), np.asarray(gallery)
    if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"Test features {queries.shape} and train features {gallery.shape} must "
                         "both be [N, F] with the same F.")
    return queries, gallery


def _check_labels(train_labels: np.ndarray,
                  test_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    train_labels = np.asarray(train_labels).astype(np.int64).reshape(-1)
    test_labels = np.asarray(test_labels).astype(np.int64).reshape(-1)
    if train_labels.size == 0 or test_labels.size == 0:
        raise ValueError("kNN and retrieval need at least one train and one test clip.")
    if train_labels.min() < 0 or test_labels.min() < 0:
        raise ValueError("Labels must be non-negative class indices.")
    return train_labels, test_labels


@cli.guard
def main(argv: Sequence[str] | None = None) -> dict:
    """CLI: prints the metrics table and writes them as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True, help="features .npz of the train split")
    parser.add_argument("--test", required=True, help="features .npz of the test split")
    parser.add_argument("--knn_k", type=int, default=20, help="neighbours in the kNN vote")
    parser.add_argument("--vote", choices=("majority", "weighted"), default="majority")
    parser.add_argument("--temperature", type=float, default=0.07,
                        help="temperature of the weighted vote, exp(sim / T)")
    parser.add_argument("--recall_k", default="1,5,10,20", help="comma-separated recall ks")
    parser.add_argument("--output", default=None,
                        help="JSON path (default: retrieval.json next to --test)")
    args = parser.parse_args(argv)
    try:
        recall_ks = [int(k) for k in args.recall_k.split(",") if k.strip()]
    except ValueError:
        parser.error(f"--recall_k={args.recall_k!r} must be comma-separated integers.")
    train, test = load_features(args.train), load_features(args.test)
    gallery = len(train["labels"])
    if not 1 <= args.knn_k <= gallery or max(recall_ks, default=1) > gallery:
        cli.fail(f"--knn_k={args.knn_k} and --recall_k={args.recall_k} must lie between 1 and "
                 f"the {gallery} clips of --train {args.train}; lower them.")
    results = evaluate(train, test, args.knn_k, args.vote, args.temperature, recall_ks)
    results.update(train=args.train, test=args.test)
    output = args.output or os.path.join(os.path.dirname(os.path.abspath(args.test)),
                                         "retrieval.json")
    with open(output, "w") as f:
        json.dump(results, f, indent=2)
    print(format_table(results))
    print(f"Wrote {output}")
    return results


if __name__ == "__main__":
    main()
