"""A synthetic AVA: short videos of two or three "actors" (the motion set's shapes on its
backgrounds), written in AVA's own formats so that they go through convert_ava as AVA does.

Each video stands for the start of a 15-minute cut file (movie second 900 at file time 0):
keyframes are movie seconds 902, 903, ... at 1 Hz up to 2 s before the file's end, so the
converter's time mapping is the real one. Every actor has a person id, a box track and, at each
keyframe, two actions: its direction of motion (move left / right / up / down) and what its
size does (grow / shrink / keep size). An action holds for the second centred on its keyframe
(so a clip of up to 1 s around a keyframe shows one action per actor); the actor stays inside
the frame (a direction that would leave it is not drawn) and holds still before the first and
after the last keyframe's second. Frames are grey like the motion set: a faintly textured
background, shapes (disc or square, own grey level) anti-aliased, per-pixel noise.

    python -m cvrl_tf.data.synthetic --detection --output_dir DIR

DIR/videos/<video_id>.mp4 (MPEG-4), DIR/annotations/{train,val}.csv (one row per keyframe,
person and action), action_list.pbtxt, val_proposals.csv (the ground-truth boxes jittered, with
scores, and some false ones with low scores) and val_excluded.csv (two keyframes, whose rows
stay in val.csv for the converter and the evaluator to drop). Deterministic in the seed.
"""
import os

import numpy as np

from cvrl_tf.data import ava, ava_video
from cvrl_tf.data.synthetic import background, noisy_frames, object_level, shape_alpha

ACTIONS = {1: "move left", 2: "move right", 3: "move up", 4: "move down", 5: "grow",
           6: "shrink", 7: "keep size"}
_DIRECTIONS = {1: (0.0, -1.0), 2: (0.0, 1.0), 3: (-1.0, 0.0), 4: (1.0, 0.0)}  # (dy, dx)
_SIZE_CHANGE = {5: 1.0, 6: -1.0, 7: 0.0}


def _apart(a0: np.ndarray, a1: np.ndarray, b0: np.ndarray, b1: np.ndarray) -> bool:
    """Whether two actors moving from (y, x, r) a0 to a1 and b0 to b1 stay clear of each other
    (their boxes overlap by at most a fifth of the sum of their half sides) along the way."""
    for f in np.linspace(0.0, 1.0, 5):
        a, b = a0 + f * (a1 - a0), b0 + f * (b1 - b0)
        if max(abs(a[0] - b[0]), abs(a[1] - b[1])) < 0.8 * (a[2] + b[2]):
            return False
    return True


def _start(rng: np.random.Generator, placed: list, r_min: float, r_max: float, height: int,
           width: int) -> np.ndarray:
    """A new actor's (y, x, radius) inside the frame, clear of those placed (100 tries)."""
    for _ in range(100):
        r = rng.uniform(r_min, r_max)
        state = np.array([rng.uniform(r + 1, height - r - 1), rng.uniform(r + 1, width - r - 1),
                          r])
        if all(_apart(state, state, other, other) for other in placed):
            break
    return state


def _tracks(rng: np.random.Generator, num_actors: int, num_keyframes: int, height: int,
            width: int) -> list[tuple[np.ndarray, list[tuple[int, int]]]]:
    """Each actor's (y, x, radius) in pixels at the bounds of the keyframes' seconds [K+1, 3]
    and its (direction, size) action ids per keyframe. Each second's actions are drawn among
    those that keep the actor inside the frame, preferring (in this order) to stay clear of the
    actors already moved in that second and to move at its full drawn speed."""
    r_min, r_max = 0.07 * height, 0.19 * height
    pairs = [(d, z) for d in _DIRECTIONS for z in _SIZE_CHANGE]
    speeds = (1.0, 0.5, 0.25, 0.0)

    def inside(state: np.ndarray) -> bool:
        y, x, r = state
        return r_min <= r <= r_max and r + 1 <= y <= height - r - 1 \
            and r + 1 <= x <= width - r - 1

    states = []
    for _ in range(num_actors):
        states.append([_start(rng, [s[0] for s in states], r_min, r_max, height, width)])
    actions = [[] for _ in states]
    for _ in range(num_keyframes):
        for n, track in enumerate(states):
            now, moved = track[-1], [(s[-2], s[-1]) for s in states[:n]]
            speed, change = rng.uniform(0.2, 0.38) * height, rng.uniform(0.05, 0.08) * height
            order = [pairs[i] for i in rng.permutation(len(pairs))]
            ends = {(p, f): now + [_DIRECTIONS[p[0]][0] * speed * f,
                                   _DIRECTIONS[p[0]][1] * speed * f,
                                   _SIZE_CHANGE[p[1]] * change]
                    for p in order for f in speeds}
            fits = [(p, f) for f in speeds for p in order if inside(ends[p, f])]
            clear = [c for c in fits if all(_apart(now, ends[c], a, b) for a, b in moved)]
            choice = (clear or fits)[0]
            track.append(ends[choice])
            actions[n].append(choice[0])
    return [(np.array(s), a) for s, a in zip(states, actions)]


def _render(rng: np.random.Generator, tracks: list[np.ndarray], bounds: np.ndarray,
            num_frames: int, fps: int, height: int, width: int) -> np.ndarray:
    """The video [L, H, W, 3]: each actor's state interpolated at every frame's time (held
    outside the keyframes' seconds), drawn over the background in order."""
    backdrop, bg_level = background(rng, height, width)
    grey = np.repeat(backdrop[None, :, :, 0], num_frames, axis=0)
    times = np.arange(num_frames) / fps
    rows, cols = np.arange(height) + 0.5, np.arange(width) + 0.5
    for states in tracks:
        y, x, r = (np.interp(times, bounds, states[:, i])[:, None, None] for i in range(3))
        alpha = shape_alpha(rows[None, :, None] - y, cols[None, None, :] - x, r,
                            square=rng.random() < 0.5)
        grey = alpha * object_level(rng, bg_level) + (1.0 - alpha) * grey
    return noisy_frames(grey, rng)


def _box(state: np.ndarray, height: int, width: int) -> ava.Box:
    y, x, r = state
    return ((y - r) / height, (x - r) / width, (y + r) / height, (x + r) / width)


def make_video(seed: int, split: str, index: int, seconds: int = 6, fps: int = 10,
               height: int = 64, width: int = 96) -> tuple[np.ndarray, list[ava.BoxRow]]:
    """One video and its annotation rows; depends only on (seed, split, index)."""
    rng = np.random.default_rng([seed, sum(split.encode()), index])
    video_id = f"{split}_{index:03d}"
    keyframe_times = np.arange(2, seconds - 1)  # File seconds; movie seconds 900 later.
    bounds = np.concatenate([keyframe_times - 0.5, [keyframe_times[-1] + 0.5]])
    tracks = _tracks(rng, int(rng.integers(2, 4)), len(keyframe_times), height, width)
    rows = []
    for person, (states, actions) in enumerate(tracks):
        for k, t in enumerate(keyframe_times):
            box = _box((states[k] + states[k + 1]) / 2, height, width)
            rows += [ava.BoxRow(video_id, ava_video.CUT_START + int(t), box, action, person)
                     for action in actions[k]]
    frames = _render(rng, [states for states, _ in tracks], bounds, seconds * fps, fps, height,
                     width)
    return frames, sorted(rows, key=lambda r: (r.timestamp, r.person_id, r.action_id))


def _proposals(rng: np.random.Generator, rows: list[ava.BoxRow]) -> list[ava.BoxRow]:
    """A detector's person boxes: each ground-truth box jittered (score 0.8-1), and at some
    keyframes a false box (score 0.05-0.4)."""
    out = []
    for key, persons in ava.merge_person_boxes(rows).items():
        video_id, timestamp = ava.split_key(key)
        for person in persons:
            ymin, xmin, ymax, xmax = person.box
            h, w = ymax - ymin, xmax - xmin
            jitter = rng.normal(0.0, 0.04, 4) * [h, w, h, w]
            box = np.clip(np.array(person.box) + jitter, 0.0, 1.0)
            out.append(ava.BoxRow(video_id, timestamp, tuple(box), score=rng.uniform(0.8, 1.0)))
        if rng.random() < 0.5:
            y, x, size = rng.uniform(0, 0.7), rng.uniform(0, 0.7), rng.uniform(0.15, 0.3)
            out.append(ava.BoxRow(video_id, timestamp, (y, x, y + size, x + size),
                                  score=rng.uniform(0.05, 0.4)))
    return out


def write_dataset(output_dir: str, num_train: int = 48, num_val: int = 16, seconds: int = 6,
                  fps: int = 10, height: int = 64, width: int = 96, seed: int = 0) -> dict:
    """Writes the synthetic AVA set (videos and annotation files) and returns its paths and
    counts."""
    if min(num_train, num_val) < 1 or seconds < 5 or fps < 1:
        raise ValueError(f"num_train={num_train} and num_val={num_val} must be >= 1, seconds="
                         f"{seconds} >= 5 (keyframes from file second 2 to 2 s before the end) "
                         f"and fps={fps} >= 1.")
    if height < 32 or width < 32 or height % 2 or width % 2:
        raise ValueError(f"height={height} and width={width} must be even and >= 32.")
    videos, notes = os.path.join(output_dir, "videos"), os.path.join(output_dir, "annotations")
    os.makedirs(videos, exist_ok=True)
    os.makedirs(notes, exist_ok=True)
    rows = {}
    for split, count in (("train", num_train), ("val", num_val)):
        rows[split] = []
        for index in range(count):
            frames, video_rows = make_video(seed, split, index, seconds, fps, height, width)
            ava_video.write_video(os.path.join(videos, f"{video_rows[0].video_id}.mp4"), frames,
                                  fps)
            rows[split] += video_rows
        ava.write_box_csv(os.path.join(notes, f"{split}.csv"), rows[split], "annotations")
    rng = np.random.default_rng([seed, 1])
    ava.write_box_csv(os.path.join(notes, "val_proposals.csv"), _proposals(rng, rows["val"]),
                      "proposals")
    keys = sorted({r.key for r in rows["val"]})
    excluded = [ava.split_key(keys[i]) for i in sorted(rng.choice(len(keys), 2, replace=False))]
    ava.write_excluded(os.path.join(notes, "val_excluded.csv"), excluded)
    ava.write_label_map(os.path.join(notes, "action_list.pbtxt"), ACTIONS, "PERSON_MOVEMENT")
    return {
        "videos": videos, "annotations": notes, "label_map": os.path.join(notes,
                                                                          "action_list.pbtxt"),
        "num_train_videos": num_train, "num_val_videos": num_val,
        "train_keyframes": len({r.key for r in rows["train"]}), "val_keyframes": len(keys),
        "num_classes": len(ACTIONS), "class_names": list(ACTIONS.values()),
        "seconds": seconds, "fps": fps, "height": height, "width": width,
    }


def next_commands(info: dict) -> str:
    """The commands that convert a written set's two splits with convert_ava."""
    base, notes = os.path.dirname(info["videos"]), info["annotations"]
    common = (f"--videos {info['videos']} --label_map {info['label_map']} "
              f"--fps {info['fps']} --short_side {min(info['height'], info['width'])} "
              f"--num_shards 4")
    return (f"python -m cvrl_tf.data.convert_ava {common} --annotations {notes}/train.csv "
            f"--output_dir {base}/records --split_name train\n"
            f"python -m cvrl_tf.data.convert_ava {common} --annotations {notes}/val.csv "
            f"--proposals {notes}/val_proposals.csv --excluded_timestamps "
            f"{notes}/val_excluded.csv --output_dir {base}/records --split_name eval")
