"""AVA's own files: box CSVs (annotations, detections, person proposals), the action label map
(pbtxt) and the excluded timestamps; readers, writers and the keyframe key.

Pure Python and NumPy (no TensorFlow), so the metric and its command load fast.
- Annotations: `video_id,timestamp,x1,y1,x2,y2,action_id,person_id` (corners normalized to
  [0, 1]; the ActivityNet evaluator also takes 7 columns, without the person id).
- Detections: the same with a score in place of the person id (7 columns: score 1.0, as the
  evaluator reads them).
- Person proposals: SlowFast's `ava_*_predicted_boxes.csv` rows, `video_id,timestamp,x1,y1,x2,
  y2,,score` (empty action; an action there is ignored), or 7 columns ending in the score; or
  MMAction2's `ava_dense_proposals_*.pkl` ({"video_id,0902": [N, 5] x1, y1, x2, y2, score}),
  loaded without running any code from the file.
- Label map: `item { name: "..." id: N }` or `label { name: "..." label_id: N label_type: ... }`.
- Excluded timestamps: `video_id,timestamp`.
A keyframe is named everywhere by the ActivityNet evaluator's image key, `keyframe_key`.
Boxes read from a CSV are held in TensorFlow's order (ymin, xmin, ymax, xmax); `box_from_csv`
and `csv_from_box` are the one place where the corner order turns.
"""
import csv
import io
import math
import os
import pickle
import re
import sys
from typing import Iterable, Iterator, Mapping, NamedTuple, Optional, Sequence

import numpy as np

Box = tuple[float, float, float, float]  # (ymin, xmin, ymax, xmax), normalized


def keyframe_key(video_id: str, timestamp: int) -> str:
    """The ActivityNet AVA evaluator's image key of a keyframe: "<video_id>,<seconds:04d>"."""
    return "%s,%04d" % (video_id, int(timestamp))


def split_key(key: str) -> tuple[str, int]:
    """(video_id, timestamp) of a keyframe key; ValueError if it is not "<video_id>,<seconds>"."""
    video_id, _, seconds = str(key).rpartition(",")
    if not video_id or not seconds.isdigit():
        raise ValueError(f"Keyframe key {key!r} is not '<video_id>,<seconds>'.")
    return video_id, int(seconds)


def box_from_csv(x1: float, y1: float, x2: float, y2: float) -> Box:
    """An AVA CSV box (x1, y1, x2, y2) as (ymin, xmin, ymax, xmax)."""
    return (y1, x1, y2, x2)


def csv_from_box(box: Sequence[float]) -> tuple[float, float, float, float]:
    """(ymin, xmin, ymax, xmax) as the AVA CSV's corners (x1, y1, x2, y2)."""
    ymin, xmin, ymax, xmax = box
    return (xmin, ymin, xmax, ymax)


def box_problem(box: Sequence[float]) -> Optional[str]:
    """Why a (ymin, xmin, ymax, xmax) box cannot be a person box, or None when it can."""
    x1, y1, x2, y2 = csv_from_box(box)
    if not all(0.0 <= v <= 1.0 for v in (x1, y1, x2, y2)):
        return f"box corner outside [0, 1] (x1={x1:g}, y1={y1:g}, x2={x2:g}, y2={y2:g})"
    if x1 >= x2:
        return f"box with x1 >= x2 ({x1:g} >= {x2:g})"
    if y1 >= y2:
        return f"box with y1 >= y2 ({y1:g} >= {y2:g})"
    return None


class BoxRow(NamedTuple):
    """One row of an AVA box file: the keyframe, its box (ymin, xmin, ymax, xmax), the action id
    (None for a proposal), the person id (annotations) or score (detections, proposals), and
    the row's line in its file (0 when made in memory)."""
    video_id: str
    timestamp: int
    box: Box
    action_id: Optional[int] = None
    person_id: Optional[int] = None
    score: Optional[float] = None
    line: int = 0

    @property
    def key(self) -> str:
        return keyframe_key(self.video_id, self.timestamp)


class RowError(ValueError):
    """A row of an AVA file that cannot be read; the message names the file and line."""


def _fail(path: str, line: int, cause: str) -> RowError:
    return RowError(f"AVA file {path}, line {line}: {cause}.")


def _number(text: str, what: str, path: str, line: int) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _fail(path, line, f"{what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise _fail(path, line, f"{what} {text!r} is not finite")
    return value


def _integer(text: str, what: str, path: str, line: int, minimum: Optional[int] = None) -> int:
    value = _number(text, what, path, line)
    if value != int(value) or (minimum is not None and value < minimum):
        need = "a whole number" + (f" >= {minimum}" if minimum is not None else "")
        raise _fail(path, line, f"{what} {text!r} is not {need}")
    return int(value)


def _rows(path: str) -> Iterable[tuple[int, list[str]]]:
    """(line number, stripped cells) of every non-blank line of a CSV file."""
    if not os.path.isfile(path):
        raise ValueError(f"AVA file {path} does not exist.")
    with open(path, newline="", encoding="utf-8") as f:
        for number, cells in enumerate(csv.reader(f), start=1):
            cells = [c.strip() for c in cells]
            if any(cells):
                yield number, cells


def _box_row(path: str, line: int, cells: list[str], kind: str) -> BoxRow:
    """Parses one box row of `kind` (annotations / detections / proposals)."""
    if len(cells) not in (7, 8):
        raise _fail(path, line, f"expected 8 columns (video_id, timestamp, x1, y1, x2, y2, "
                                f"{'score' if kind == 'proposals' else 'action_id'}, ...) or "
                                f"7, got {len(cells)}")
    if not cells[0]:
        raise _fail(path, line, "the video id is empty")
    timestamp = _integer(cells[1], "timestamp", path, line, minimum=0)
    x1, y1, x2, y2 = (_number(c, n, path, line) for c, n in zip(cells[2:6], "x1 y1 x2 y2".split()))
    row = BoxRow(sys.intern(cells[0]), timestamp, box_from_csv(x1, y1, x2, y2), line=line)
    if kind == "proposals":  # 8 columns: an empty (or ignored) action, then the score.
        score = _number(cells[-1], "score", path, line)
        return row._replace(score=score)
    action_id = _integer(cells[6], "action id", path, line, minimum=1)
    extra = cells[7] if len(cells) == 8 else None
    if kind == "annotations":
        person = _integer(extra, "person id", path, line) if extra is not None else None
        return row._replace(action_id=action_id, person_id=person)
    score = _number(extra, "score", path, line) if extra is not None else 1.0
    return row._replace(action_id=action_id, score=score)


def read_annotations(path: str, check_boxes: bool = True) -> list[BoxRow]:
    """Ground-truth rows of an AVA annotation CSV (`ava_{train,val}_v2.2.csv`).

    check_boxes refuses a box outside [0, 1] or with x1 >= x2 (y1 >= y2); the converter turns
    it off to skip and report such rows instead (`box_problem`).
    """
    rows = []
    for line, cells in _rows(path):
        row = _box_row(path, line, cells, "annotations")
        problem = box_problem(row.box) if check_boxes else None
        if problem:
            raise _fail(path, line, problem)
        rows.append(row)
    return rows


def iter_detections(path: str) -> Iterator[BoxRow]:
    """Scored detections in AVA CSV format, one row at a time (a detection file can hold
    millions of rows; the evaluator keeps 50 per keyframe). Box values are not checked: the
    evaluator drops boxes with ymin >= ymax or xmin >= xmax itself (cvrl_tf.frame_map)."""
    for line, cells in _rows(path):
        yield _box_row(path, line, cells, "detections")


def read_detections(path: str) -> list[BoxRow]:
    """All the rows of `iter_detections`."""
    return list(iter_detections(path))


def read_proposals(path: str) -> list[BoxRow]:
    """Person proposals with detector scores: SlowFast's CSV or MMAction2's pickle."""
    if path.endswith(".pkl"):
        return _read_proposal_pickle(path)
    return [_box_row(path, line, cells, "proposals") for line, cells in _rows(path)]


class _ArraysOnly(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays only; any other class is refused, so a
    downloaded pickle cannot run code."""
    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"),
                ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"it holds a {module}.{name} object, which is not "
                                         f"loaded (only dicts of NumPy arrays are)")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = module.replace("numpy.core.", "numpy._core.")
        return super().find_class(module, name)


def _read_proposal_pickle(path: str) -> list[BoxRow]:
    """MMAction2's proposals: {"video_id,0902": array [N, 5] (x1, y1, x2, y2, score)}."""
    if not os.path.isfile(path):
        raise ValueError(f"AVA file {path} does not exist.")
    try:
        with open(path, "rb") as f:
            proposals = _ArraysOnly(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise ValueError(f"AVA proposal file {path} cannot be read: {e}.") from None
    if not isinstance(proposals, dict):
        raise ValueError(f"AVA proposal file {path} holds a {type(proposals).__name__}, not a "
                         f"dict of keyframe key -> [N, 5] boxes.")
    rows = []
    for key, boxes in proposals.items():
        boxes = np.asarray(boxes, dtype=np.float64)
        if boxes.ndim != 2 or boxes.shape[1] not in (4, 5):
            raise ValueError(f"AVA proposal file {path}: entry {key!r} needs boxes [N, 4 or 5] "
                             f"(x1, y1, x2, y2[, score]), got shape {boxes.shape}.")
        try:
            video_id, seconds = split_key(key)
        except ValueError as e:
            raise ValueError(f"AVA proposal file {path}: {e}") from None
        for x1, y1, x2, y2, *score in boxes.tolist():
            rows.append(BoxRow(video_id, seconds, box_from_csv(x1, y1, x2, y2),
                               score=score[0] if score else 1.0))
    return rows


def read_excluded(path: str) -> set[str]:
    """The keyframe keys of an excluded-timestamps CSV (`video_id,timestamp` rows)."""
    keys = set()
    for line, cells in _rows(path):
        if len(cells) != 2 or not cells[0]:
            raise _fail(path, line, f"expected 2 columns (video_id, timestamp), got "
                                    f"{len(cells)}")
        keys.add(keyframe_key(cells[0], _integer(cells[1], "timestamp", path, line, 0)))
    return keys


_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|[A-Za-z_][\w.]*|-?\d+|[{}:]|#[^\n]*|\S')


def _tokens(text: str) -> list[tuple[str, int]]:
    """(token, line) pairs of a pbtxt text; comments dropped."""
    out = []
    for match in _TOKEN.finditer(text):
        if not match.group().startswith("#"):
            out.append((match.group(), text.count("\n", 0, match.start()) + 1))
    return out


def read_label_map(path: str) -> dict[int, str]:
    """{action id: name} of an AVA label map pbtxt (`ava_action_list_v2.2*.pbtxt`), by id.

    Takes `item { name: "..." id: N }` and `label { name: "..." label_id: N label_type: T }`
    blocks in any layout; a block without a name or id, a repeated id or an id < 1 is refused.
    """
    if not os.path.isfile(path):
        raise ValueError(f"AVA label map {path} does not exist.")
    with open(path, encoding="utf-8") as f:
        tokens = _tokens(f.read())
    classes, i = {}, 0
    while i < len(tokens):
        word, line = tokens[i]
        if word not in ("item", "label") or i + 1 >= len(tokens) or tokens[i + 1][0] != "{":
            raise _fail(path, line, f"expected 'item {{' or 'label {{', got {word!r}")
        fields, i = {}, i + 2
        while i < len(tokens) and tokens[i][0] != "}":
            if i + 2 >= len(tokens) or tokens[i + 1][0] != ":":
                raise _fail(path, tokens[i][1], f"expected 'field: value', got {tokens[i][0]!r}")
            fields[tokens[i][0]] = tokens[i + 2][0]
            i += 3
        if i >= len(tokens):
            raise _fail(path, line, "this block has no closing '}'")
        i += 1
        name, ident = fields.get("name", ""), fields.get("id", fields.get("label_id"))
        if not (name.startswith('"') and ident and ident.lstrip("-").isdigit()):
            raise _fail(path, line, "a block needs a quoted name and an integer id")
        if int(ident) in classes:
            raise _fail(path, line, f"id {ident} is repeated")
        if int(ident) < 1:
            raise _fail(path, line, f"id {ident} is < 1")
        classes[int(ident)] = name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if not classes:
        raise ValueError(f"AVA label map {path} has no classes.")
    return dict(sorted(classes.items()))


def _write_text(path: str, text: str) -> None:
    """Writes via a temporary file and a rename, so a reader never sees half a file."""
    tmp_path = os.path.join(os.path.dirname(path) or ".", ".tmp-" + os.path.basename(path))
    with open(tmp_path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    os.replace(tmp_path, path)


def write_label_map(path: str, classes: Mapping[int, str],
                    label_type: Optional[str] = None) -> None:
    """Writes an AVA label map pbtxt: `label { name, label_id, label_type }` blocks when a
    label_type is given (the full list's style), else `item { name, id }` blocks."""
    blocks = []
    for ident, name in sorted(classes.items()):
        quoted = name.replace("\\", "\\\\").replace('"', '\\"')
        if label_type:
            blocks.append(f'label {{\n  name: "{quoted}"\n  label_id: {ident}\n'
                          f"  label_type: {label_type}\n}}\n")
        else:
            blocks.append(f'item {{\n  name: "{quoted}"\n  id: {ident}\n}}\n')
    _write_text(path, "".join(blocks))


def _csv_text(records: Iterable[Sequence[str]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(records)
    return out.getvalue()


def write_box_csv(path: str, rows: Iterable[BoxRow], kind: str,
                  decimals: Optional[int] = 3) -> None:
    """Writes rows in AVA CSV format for `kind`: annotations (person id last), detections
    (score last) or proposals (empty action, score last, as SlowFast's predicted boxes).

    Boxes get `decimals` digits, AVA's 3 by default; decimals=None writes every digit (repr),
    so that a file read back evaluates exactly as the arrays it was written from.
    """
    if kind not in ("annotations", "detections", "proposals"):
        raise ValueError(f"kind must be annotations, detections or proposals, got {kind!r}.")

    def num(value: float) -> str:
        return repr(float(value)) if decimals is None else f"{value:.{decimals}f}"

    def cells(row: BoxRow) -> list[str]:
        head = [row.video_id, "%04d" % row.timestamp] + [num(v) for v in csv_from_box(row.box)]
        if kind == "annotations":
            return head + [str(row.action_id), str(row.person_id)]
        score = repr(float(row.score)) if decimals is None else f"{row.score:.6f}"
        return head + ["" if kind == "proposals" else str(row.action_id), score]
    _write_text(path, _csv_text(cells(row) for row in rows))


def write_excluded(path: str, keyframes: Iterable[tuple[str, int]]) -> None:
    """Writes an excluded-timestamps CSV from (video_id, timestamp) pairs."""
    _write_text(path, _csv_text([video, "%04d" % t] for video, t in keyframes))


class PersonBox(NamedTuple):
    """One person at one keyframe: the box, its actions (ids, first-seen order, no repeats)
    and the person id of its first row."""
    box: Box
    action_ids: tuple[int, ...]
    person_id: Optional[int]


def merge_person_boxes(rows: Iterable[BoxRow]) -> dict[str, list[PersonBox]]:
    """{keyframe key: person boxes}: rows of one keyframe with the same box coordinates are one
    person with several actions, as SlowFast merges them. Keys and boxes keep file order."""
    merged: dict[str, dict[Box, PersonBox]] = {}
    for row in rows:
        boxes = merged.setdefault(row.key, {})
        person = boxes.get(row.box)
        if person is None:
            person = boxes[row.box] = PersonBox(row.box, (), row.person_id)
        if row.action_id is not None and row.action_id not in person.action_ids:
            boxes[row.box] = person._replace(action_ids=person.action_ids + (row.action_id,))
    return {key: list(boxes.values()) for key, boxes in merged.items()}
