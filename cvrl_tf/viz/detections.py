"""Pictures of detections: keyframes with their ground-truth boxes and a model's detections,
each box labelled with its action names.

    draw_keyframes("detections.png", [Keyframe(key, image, truth, detected), ...])

matplotlib is imported when a picture is drawn (object API, Agg canvas): importing this module
costs nothing and changes no global backend.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np

TRUTH_COLOR, DETECTED_COLOR = "#2ca02c", "#d62728"


@dataclasses.dataclass
class Keyframe:
    """One keyframe to draw: its key, the frame (uint8 [H, W, 3]), ground truth and
    detections as (box [ymin, xmin, ymax, xmax] normalized, label text) pairs."""
    key: str
    image: np.ndarray
    truth: list
    detected: list


def _draw_box(axis, box, height: int, width: int, color: str, text: str, below: bool) -> None:
    import matplotlib.patches as patches  # pylint: disable=import-outside-toplevel
    ymin, xmin, ymax, xmax = (float(v) for v in box)
    axis.add_patch(patches.Rectangle((xmin * width, ymin * height), (xmax - xmin) * width,
                                     (ymax - ymin) * height, fill=False, edgecolor=color,
                                     linewidth=1.2))
    y = ymax * height + 1 if below else ymin * height - 1
    axis.text(xmin * width, y, text, color=color, fontsize=5, va="top" if below else "bottom",
              bbox=dict(facecolor="white", alpha=0.6, pad=0.5, linewidth=0))


def draw_keyframes(path: str, keyframes: Sequence[Keyframe], title: str = "",
                   columns: int = 3) -> str:
    """Writes the keyframes as a grid PNG (ground truth in green above each box, detections
    in red below it); returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=C0415
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
    if not keyframes:
        raise ValueError("draw_keyframes needs at least one keyframe.")
    rows = -(-len(keyframes) // columns)
    figure = Figure(figsize=(3.2 * columns, 2.4 * rows + 0.4), dpi=150)
    FigureCanvasAgg(figure)
    for i, frame in enumerate(keyframes):
        axis = figure.add_subplot(rows, columns, i + 1)
        height, width = frame.image.shape[:2]
        axis.imshow(frame.image, interpolation="nearest")
        for box, text in frame.truth:
            _draw_box(axis, box, height, width, TRUTH_COLOR, text, below=False)
        for box, text in frame.detected:
            _draw_box(axis, box, height, width, DETECTED_COLOR, text, below=True)
        axis.set_title(frame.key, fontsize=6)
        axis.set_axis_off()
    figure.suptitle(title or "ground truth (green) and detections (red)", fontsize=8)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path)
    return path
