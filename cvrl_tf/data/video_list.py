"""Video listings for the converter: a CSV / list file or a folder of class sub-folders.

Accepted inputs (relative paths start at `video_root`, default the list file's folder):
- CSV `path,label[,start,end]` (header optional; header names may also be video/filename,
  class, time_start/time_end, video_id); start/end in seconds trim a clip out of a video;
- Kinetics annotation CSVs (`label,youtube_id,time_start,time_end,split`): the clips are the
  CVDF files `<youtube_id>_<start:06d>_<end:06d>.mp4`;
- whitespace lists `path [label]` (SlowFast, UCF101 testlist); a missing label is the name of
  the video's parent folder;
- a folder `ROOT/<class name>/**/<video>` (UCF101 / HMDB51 layout).
"""
import csv
import dataclasses
import os
from typing import Optional

_COLUMNS = {
    "path": ("path", "video", "filename", "file"),
    "label": ("label", "class", "label_name"),
    "start": ("start", "time_start", "start_sec"),
    "end": ("end", "time_end", "end_sec"),
    "id": ("video_id", "id", "media_id"),
    "youtube_id": ("youtube_id",),
}


@dataclasses.dataclass(frozen=True)
class VideoSpec:
    """One video to convert: its file, class name, id and optional trim window (seconds)."""
    path: str
    label: str
    video_id: str
    start: Optional[float] = None
    end: Optional[float] = None


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _spec(path: str, label: str, video_id: str = "", start: str = "", end: str = "",
          root: str = "") -> VideoSpec:
    """A VideoSpec from text fields; a missing label is the parent folder's name."""
    path = path if os.path.isabs(path) else os.path.join(root, path)
    start_s = float(start) if start.strip() else None
    end_s = float(end) if end.strip() else None
    if not video_id:
        video_id = _stem(path)
        if start_s is not None or end_s is not None:  # Several clips may share one file.
            video_id += f"_{start_s or 0:g}_" + ("end" if end_s is None else f"{end_s:g}")
    return VideoSpec(path, label.strip() or os.path.basename(os.path.dirname(path)),
                     video_id, start_s, end_s)


def _read_csv(csv_path: str, video_root: Optional[str]) -> list[VideoSpec]:
    """Reads `path,label[,start,end]` rows (header optional) or whitespace `path [label]` lines."""
    root = video_root if video_root is not None else os.path.dirname(csv_path)
    with open(csv_path, newline="", encoding="utf-8") as f:
        lines = [line for line in f.read().splitlines()
                 if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise ValueError(f"Video list {csv_path!r} has no rows.")
    if "," not in lines[0]:  # SlowFast / UCF101 list style: `path [label]`.
        return [_spec(*(line.strip().split(None, 1) + [""])[:2], root=root) for line in lines]
    rows = list(csv.reader(lines))
    head = [cell.strip().lower() for cell in rows[0]]
    index = {key: next((head.index(n) for n in names if n in head), None)
             for key, names in _COLUMNS.items()}
    if index["path"] is None and index["youtube_id"] is None and index["label"] is None:
        index = {"path": 0, "label": 1, "start": 2, "end": 3, "id": None, "youtube_id": None}
    else:
        rows = rows[1:]
    if index["path"] is None and index["youtube_id"] is None:
        raise ValueError(f"Video list {csv_path!r} has a header without a path or youtube_id "
                         f"column.")
    specs = []
    for row in rows:
        def cell(key: str) -> str:
            i = index[key]
            return row[i].strip() if i is not None and i < len(row) else ""
        try:
            path, start, end = cell("path"), cell("start"), cell("end")
            if index["path"] is None:  # Kinetics annotations: the files are trimmed clips
                path = (f"{cell('youtube_id')}_{int(float(start)):06d}_"  # (CVDF naming).
                        f"{int(float(end)):06d}.mp4")
                start = end = ""
            if not path:
                raise ValueError("it has no path")
            specs.append(_spec(path, cell("label"), cell("id"), start, end, root))
        except ValueError as e:
            raise ValueError(f"Video list {csv_path!r} row {','.join(row)!r} is invalid: {e}.")
    return specs


def _read_dir(root: str) -> list[VideoSpec]:
    """Lists `root/<class name>/**/<video file>` (UCF101 / HMDB51 layout)."""
    specs = []
    for label in sorted(os.listdir(root)):
        class_dir = os.path.join(root, label)
        if label.startswith(".") or not os.path.isdir(class_dir):
            continue
        for folder, _, files in sorted(os.walk(class_dir)):
            for name in sorted(files):
                if not name.startswith("."):
                    specs.append(VideoSpec(os.path.join(folder, name), label, _stem(name)))
    return specs


def read_video_list(input_path: str, video_root: Optional[str] = None) -> list[VideoSpec]:
    """Lists the videos of a CSV / list file or of a folder of class sub-folders."""
    if os.path.isdir(input_path):
        specs = _read_dir(input_path)
    elif os.path.isfile(input_path):
        specs = _read_csv(input_path, video_root)
    else:
        raise ValueError(f"Input {input_path!r} is neither a video list file nor a folder.")
    if not specs:
        raise ValueError(f"Input {input_path!r} lists no videos.")
    return specs
