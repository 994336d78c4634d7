"""Pictures of learned features: 2-D embedding maps coloured by class, panels side by side.

    plot_embedding_map("embeddings.png", [("random init", f0, y), ("CVRL", f1, y)],
                       class_names=names)

Each panel projects its own features to 2-D: PCA of the L2-normalized features (numpy only),
or t-SNE (`method='tsne'`, needs scikit-learn). matplotlib is imported when a picture is drawn,
through its object API and the Agg canvas, so importing this module costs nothing and no global
backend is changed.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

METHODS = ("pca", "tsne")
LEGEND_INCHES = 0.5  # The strip under the panels that holds the class legend (and title).
MAX_LEGEND_CLASSES = 20  # More classes than this: colours only, no legend.


def _normalize(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length: the similarity the contrastive loss and the probes use."""
    features = np.asarray(features, np.float64)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def project_2d(features: np.ndarray, method: str = "pca", seed: int = 0
               ) -> tuple[np.ndarray, str]:
    """Features [N, F] -> (points [N, 2], axis note), from the L2-normalized features.

    'pca': the top two principal components (the note gives their share of the variance);
    'tsne': scikit-learn's t-SNE (PCA init, perplexity min(30, (N-1)/3), seeded).
    """
    if method not in METHODS:
        raise ValueError(f"Unknown embedding method {method!r}; use one of {METHODS}.")
    features = np.asarray(features)
    if features.ndim != 2 or len(features) < 3:
        raise ValueError(f"An embedding map needs features [N >= 3, F], got {features.shape}.")
    x = _normalize(features)
    if method == "tsne":
        try:
            from sklearn.manifold import TSNE  # pylint: disable=import-outside-toplevel
            import threadpoolctl  # pylint: disable=import-outside-toplevel  # sklearn's own dep
        except ImportError as e:
            raise ValueError("method='tsne' needs scikit-learn (pip install scikit-learn); "
                             "method='pca' needs nothing.") from e
        perplexity = float(min(30.0, (len(x) - 1) / 3))
        # One OpenMP thread: for the few hundred points of an embedding map it is about as fast
        # as two on an idle 2-core machine, uses less CPU, and is faster while other work holds
        # a core (docs/NOTES.md, sixth session).
        with threadpoolctl.threadpool_limits(1, user_api="openmp"):
            points = TSNE(2, perplexity=perplexity, init="pca",
                          random_state=seed).fit_transform(x)
        return points, "t-SNE"
    x = x - x.mean(axis=0)
    _, singular, vt = np.linalg.svd(x, full_matrices=False)
    share = singular[:2] ** 2 / max(float((singular ** 2).sum()), 1e-12)
    points = x @ vt[:2].T
    if points.shape[1] < 2:  # One feature: a line.
        points = np.pad(points, ((0, 0), (0, 2 - points.shape[1])))
        share = np.pad(share, (0, 2 - len(share)))
    return points, f"PCA: PC1 {100 * share[0]:.0f}%, PC2 {100 * share[1]:.0f}% of variance"


def plot_embedding_map(output_path: str,
                       panels: Sequence[tuple[str, np.ndarray, np.ndarray]],
                       class_names: Sequence[str] | None = None, method: str = "pca",
                       title: str | None = None, seed: int = 0, panel_inches: float = 4.0,
                       dpi: int = 100) -> str:
    """Draws one 2-D map per (panel title, features [N, F], labels [N]) side by side, points
    coloured by class, and writes a PNG; returns output_path.

    The PNG is len(panels) * panel_inches * dpi pixels wide and (panel_inches + LEGEND_INCHES)
    * dpi high. Labels < 0 (unknown) are drawn grey.
    """
    # pylint: disable=import-outside-toplevel
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    import matplotlib

    if not panels:
        raise ValueError("plot_embedding_map needs at least one (title, features, labels) panel.")
    labels_all = [np.asarray(labels, np.int64) for _, _, labels in panels]
    for (name, features, _), labels in zip(panels, labels_all):
        if len(features) != len(labels):
            raise ValueError(f"Panel {name!r} has {len(features)} feature rows but "
                             f"{len(labels)} labels.")
    num_classes = max([int(labels.max()) + 1 for labels in labels_all if labels.size] +
                      [len(class_names or [])])
    cmap = matplotlib.colormaps["tab10" if num_classes <= 10 else
                                "tab20" if num_classes <= 20 else "turbo"]
    colors = [cmap(c / max(num_classes - 1, 1)) if num_classes > 20 else cmap(c)
              for c in range(num_classes)]

    figure = Figure(figsize=(len(panels) * panel_inches, panel_inches + LEGEND_INCHES), dpi=dpi)
    FigureCanvasAgg(figure)
    height = panel_inches + LEGEND_INCHES
    figure.subplots_adjust(left=0.03, right=0.97, top=1 - (0.5 if title else 0.3) / height,
                           bottom=(LEGEND_INCHES + 0.25) / height, wspace=0.08)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, features, _), labels in zip(axes, panels, labels_all):
        points, note = project_2d(features, method, seed)
        unknown = labels < 0
        ax.scatter(points[unknown, 0], points[unknown, 1], s=9, c="0.6", linewidths=0)
        for c in range(num_classes):
            mine = labels == c
            ax.scatter(points[mine, 0], points[mine, 1], s=9, color=colors[c], alpha=0.85,
                       linewidths=0)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(note, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        figure.suptitle(title, fontsize=11)
    if 0 < num_classes <= MAX_LEGEND_CLASSES:
        handles = [matplotlib.lines.Line2D([], [], marker="o", linestyle="", color=colors[c],
                                           markersize=5) for c in range(num_classes)]
        names = [class_names[c] if class_names and c < len(class_names) else str(c)
                 for c in range(num_classes)]
        figure.legend(handles, names, loc="lower center", ncol=min(num_classes, 6),
                      fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.0))
    directory = os.path.dirname(output_path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    figure.savefig(output_path, dpi=dpi)  # No bbox_inches='tight': the size stays as stated.
    return output_path
