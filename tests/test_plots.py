"""Tests for cvrl_tf.viz.plots: embedding maps written as PNGs of the stated size, quickly."""
import time

import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf.viz import plots


def _clustered(num_classes=6, per_class=20, dim=16, spread=0.3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(num_classes, dim))
    labels = np.repeat(np.arange(num_classes), per_class)
    return centers[labels] + spread * rng.normal(size=(len(labels), dim)), labels


def _png_shape(path):
    with open(path, "rb") as f:
        return tuple(tf.io.decode_png(f.read()).shape)


def test_two_panel_map_is_a_png_of_the_stated_size(tmp_path):
    clustered, labels = _clustered()
    noise = np.random.default_rng(1).normal(size=clustered.shape)
    start = time.perf_counter()
    path = plots.plot_embedding_map(
        str(tmp_path / "sub" / "map.png"), [("random init", noise, labels),
                                            ("CVRL", clustered, labels)],
        class_names=[f"class {c}" for c in range(6)], title="eval set")
    assert time.perf_counter() - start < 20  # Seconds even on a busy 2-core machine.
    assert path == str(tmp_path / "sub" / "map.png")
    assert _png_shape(path)[:2] == (int((4.0 + plots.LEGEND_INCHES) * 100), 2 * 400)
    one = plots.plot_embedding_map(str(tmp_path / "one.png"), [("CVRL", clustered, labels)],
                                   panel_inches=3.0, dpi=50)
    assert _png_shape(one)[:2] == (int((3.0 + plots.LEGEND_INCHES) * 50), 150)


def test_pca_separates_clusters_and_reports_variance():
    clustered, labels = _clustered(num_classes=2, per_class=30)
    points, note = plots.project_2d(clustered)
    assert points.shape == (60, 2) and note.startswith("PCA: PC1 ")
    # Two well separated clusters lie apart along the first component.
    a, b = points[labels == 0, 0], points[labels == 1, 0]
    assert min(a.max(), b.max()) < max(a.min(), b.min())


@pytest.mark.slow  # t-SNE takes seconds even for 30 points.
def test_tsne_when_scikit_learn_is_installed():
    pytest.importorskip("sklearn")
    clustered, _ = _clustered(num_classes=3, per_class=10)
    points, note = plots.project_2d(clustered, "tsne")
    assert points.shape == (30, 2) and note == "t-SNE"


def test_tsne_runs_on_one_openmp_thread(monkeypatch):
    """Two threads cost 2-3x the time while another thread holds a core (the demo's case)."""
    manifold = pytest.importorskip("sklearn.manifold")
    threadpoolctl = pytest.importorskip("threadpoolctl")
    seen = []

    def fit_transform(self, x):
        seen.extend(p["num_threads"] for p in threadpoolctl.threadpool_info()
                    if p["user_api"] == "openmp")
        return np.zeros((len(x), 2))

    monkeypatch.setattr(manifold.TSNE, "fit_transform", fit_transform)
    plots.project_2d(np.random.default_rng(0).normal(size=(9, 4)), "tsne")
    assert seen and set(seen) == {1}


def test_bad_input_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="Unknown embedding method 'umap'"):
        plots.project_2d(np.zeros((5, 3)), "umap")
    with pytest.raises(ValueError, match=r"features \[N >= 3, F\]"):
        plots.project_2d(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="Panel 'x' has 5 feature rows but 4 labels"):
        plots.plot_embedding_map(str(tmp_path / "m.png"), [("x", np.ones((5, 3)), [0] * 4)])
