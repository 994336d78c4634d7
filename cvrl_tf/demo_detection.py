"""`make demo-detection`: CVRL features detect the actions of moving shapes better than a random
backbone, through the whole AVA pipeline, in minutes on a CPU.

    python -m cvrl_tf.demo_detection --output_dir runs/demo_detection [--seed 0]

Steps (gin/experiments/demo_detect.gin through train.py's gin root):
1. the synthetic AVA set (`cvrl_tf.data.synthetic --detection`: videos and AVA's CSV and
   pbtxt files) in OUTPUT_DIR/ava, converted by `convert_ava` like real AVA (kept if there);
2. a CVRL pretraining of the demo's tiny R3D on the unlabeled motion set: runs/demo/pretrain
   when `make demo` left a finished one there (--pretrain_dir), else its own, as `make demo`
   runs it but for OWN_PRETRAIN_STEPS steps (OUTPUT_DIR/pretrain);
3. the RoI detection head trained on the frozen CVRL backbone and on a randomly initialized
   one of the same architecture (OUTPUT_DIR/detect_cvrl, detect_random), each scored by frame
   mAP at IoU 0.5 on the eval keyframes' proposals;
4. a table, OUTPUT_DIR/results.json ({"frame_map": {"cvrl": x, "random_init": y}, ...}) and
   OUTPUT_DIR/detections.png (eval keyframes with ground truth and the CVRL run's detections).
The runs measured: docs/DEMO.md ("Detection demo").
"""
import time

_START = time.monotonic()  # before TensorFlow's import, which the ETA counts too

if __name__ == "__main__":  # A command: settle the process before TensorFlow starts.
    from cvrl_tf.runtime import cli as _cli
    _cli.start()

# pylint: disable=wrong-import-position
import os
import shutil
from typing import Optional, Sequence

import tensorflow as tf

from cvrl_tf import demo
from cvrl_tf import train
from cvrl_tf.data import ava, convert_ava, detection, schema, synthetic_ava
from cvrl_tf.runtime import cli
from cvrl_tf.training import console
from cvrl_tf.training import demo_clock
from cvrl_tf.training import detection_eval
from cvrl_tf.training import summaries
from cvrl_tf.viz import detections as pictures

DETECT_GIN = "experiments/demo_detect.gin"
# The synthetic AVA set of the demo: videos, their size and rate, the frames kept per keyframe.
AVA_SET = dict(num_train=96, num_val=32, seconds=7, fps=10, height=64, width=96)
WINDOW_FRAMES = 24
# A detection clip's cost relative to a pretraining clip's (measured: docs/DEMO.md).
DETECT_COST = 1.4
# The demo's own pretraining (when `make demo` left none): shorter than make demo's 540 steps,
# so that the whole demo stays within 10 minutes on the slow kind of machine (docs/DEMO.md).
OWN_PRETRAIN_STEPS = 400
PICTURE_KEYFRAMES = 6


def ensure_ava(ava_dir: str, seed: int = 0, sizes: Optional[dict] = None) -> str:
    """The synthetic AVA set (AVA_SET, or `sizes`) converted to records in ava_dir/records
    (kept if there)."""
    records = os.path.join(ava_dir, "records")
    if schema.read_example_count(os.path.join(records, "eval-*")):
        print(f"Using the synthetic AVA records in {records}", flush=True)
        return records
    print(f"Writing the synthetic AVA set to {ava_dir} ...", flush=True)
    sizes = dict(AVA_SET, **(sizes or {}))
    info = synthetic_ava.write_dataset(ava_dir, seed=seed, **sizes)
    settings = convert_ava.Settings(fps=sizes["fps"], short_side=None,
                                    window_frames=WINDOW_FRAMES)
    notes = info["annotations"]
    for split, csv, extra in (
            ("train", "train.csv", {}),
            ("eval", "val.csv", dict(proposals=os.path.join(notes, "val_proposals.csv"),
                                     excluded_timestamps=os.path.join(notes,
                                                                      "val_excluded.csv")))):
        convert_ava.convert_ava(info["videos"], os.path.join(notes, csv), info["label_map"],
                                records, split, settings=settings, num_shards=4, workers=1,
                                progress=False, **extra)
    return records


def _pretrained(pretrain_dir: str) -> bool:
    """Whether pretrain_dir holds a finished demo pretraining."""
    results = summaries.read_results(pretrain_dir) if tf.io.gfile.isdir(pretrain_dir) else {}
    return bool(results) and results.get("global_step") == results.get("total_steps") \
        and results.get("mode") == "pretrain"


def _plan(output_dir: str, pretrain_dir: str, own: bool, records: str, seed: Optional[int],
          gin_params: Sequence[str], motion_videos: tuple = (600, 300)) -> tuple:
    """The runs (name, gin file, bindings, title) and their clock phases; `own`: whether
    the demo pretrains itself, into pretrain_dir."""
    data = [f"TRAIN_DATA = {os.path.join(records, 'train-*.tfrecord')!r}",
            f"EVAL_DATA = {os.path.join(records, 'eval-*.tfrecord')!r}"]
    seeds = [f"run.seed = {seed}"] if seed is not None else []
    runs = []
    if own:  # The demo's pretraining, on its data, as make demo runs it but shorter.
        demo_data = os.path.join(output_dir, "motion_data")
        demo.ensure_data(demo_data, *motion_videos)
        runs.append(("pretrain", demo.PRETRAIN_GIN, demo.data_bindings(demo_data) + seeds
                     + [f"run.train_length = {OWN_PRETRAIN_STEPS}"],
                     "CVRL pretraining on the motion set"))
    runs += [("detect_cvrl", DETECT_GIN, data + seeds + [f"PRETRAIN_DIR = {pretrain_dir!r}"],
              "Detection: frozen CVRL backbone"),
             ("detect_random", DETECT_GIN, data + seeds + ["PRETRAIN_DIR = ''"],
              "Detection: frozen random_init backbone")]
    runs = [(name, gin, params + list(gin_params), title) for name, gin, params, title in runs]
    phases = [demo.phase(name, gin, params, pretrain=name == "pretrain",
                         cost=1.0 if name == "pretrain" or runs[0][0] != "pretrain"
                         else DETECT_COST)
              for name, gin, params, _ in runs]
    return runs, phases


def run_demo(output_dir: str, pretrain_dir: str, seed: Optional[int] = None,
             gin_params: Sequence[str] = (), start: Optional[float] = None,
             verbose: bool = False, sizes: Optional[dict] = None) -> dict:
    """Runs the whole detection demo; returns (and writes) the results dict. `sizes` shrinks
    the data sets (tests): AVA_SET's keys, and 'motion_videos' (train, eval)."""
    start = time.monotonic() if start is None else start
    output_dir = os.path.abspath(output_dir)
    sizes = dict(sizes or {})
    motion_videos = sizes.pop("motion_videos", (600, 300))
    records = ensure_ava(os.path.join(output_dir, "ava"), sizes=sizes)
    own = not _pretrained(pretrain_dir)
    if own:
        if pretrain_dir:
            print(f"No finished pretraining in {pretrain_dir}: pretraining here.", flush=True)
        pretrain_dir = os.path.join(output_dir, "pretrain")
    else:
        print(f"Using the CVRL pretraining in {pretrain_dir}", flush=True)
    runs, phases = _plan(output_dir, os.path.abspath(pretrain_dir), own, records, seed,
                         gin_params, motion_videos)
    clock = demo_clock.DemoClock(phases, start)
    outputs, times = {}, {"start_up_and_data": time.monotonic() - start}
    for name, gin_file, params, title in runs:
        model_dir = os.path.join(output_dir, name)
        if tf.io.gfile.exists(model_dir):
            shutil.rmtree(model_dir)
        t = time.monotonic()
        print(f"\n== {title} ==", flush=True)
        clock.begin(name)
        outputs[name] = train.run_with_gin([gin_file], params, model_dir=model_dir,
                                           on_loop=clock.on_loop, verbose=verbose)
        times[name] = time.monotonic() - t
    results = _results(output_dir, outputs, records, times, start, clock, pretrain_dir)
    summaries.write_results(output_dir, results)
    _print_table(results)
    print(clock.summary(), flush=True)
    print(f"Detections of the CVRL run on eval keyframes: {results['picture']}", flush=True)
    return results


def _results(output_dir, outputs, records, times, start, clock, pretrain_dir) -> dict:
    runs = {"cvrl": outputs["detect_cvrl"], "random_init": outputs["detect_random"]}
    picture = draw_detections(os.path.join(output_dir, "detections.png"), records,
                              os.path.join(output_dir, "detect_cvrl"))
    return {
        "frame_map": {k: float(v["eval"]["frame_map"]) for k, v in runs.items()},
        "per_class_ap": {k: {n[3:]: a for n, a in v["eval"].items() if n.startswith("ap/")}
                         for k, v in runs.items()},
        "num_eval_keyframes": runs["cvrl"]["eval"].get("num_keyframes"),
        "seed": runs["cvrl"].get("seed"), "pretrain_dir": pretrain_dir, "picture": picture,
        "wall_time_sec": {**times, "total": time.monotonic() - start}, "eta": clock.estimate,
        "model_dirs": {k: os.path.join(output_dir, f"detect_{'cvrl' if k == 'cvrl' else 'random'}")
                       for k in runs},
    }


def _print_table(results: dict) -> None:
    maps = results["frame_map"]
    print("\nAction detection on the synthetic AVA set (7 actions, frame mAP at IoU 0.5):")
    print(f"  {'frozen backbone':<22}{'frame mAP':>10}")
    print(f"  {'CVRL pretrained':<22}{100 * maps['cvrl']:>9.1f}%")
    print(f"  {'random init':<22}{100 * maps['random_init']:>9.1f}%")
    print(f"  CVRL - random: {100 * (maps['cvrl'] - maps['random_init']):+.1f} points of frame "
          f"mAP; wall time {results['wall_time_sec']['total'] / 60:.1f} min")


def draw_detections(path: str, records: str, model_dir: str,
                    count: int = PICTURE_KEYFRAMES) -> str:
    """OUTPUT_DIR/detections.png: the first eval keyframes' middle frames with their ground
    truth and the run's detections scoring >= 0.5 (from its detections.csv)."""
    names = dict(enumerate(schema.read_label_map(schema.label_map_path(records)), start=1))
    found = {}
    for row in ava.read_detections(os.path.join(model_dir, detection_eval.DETECTIONS_CSV)):
        if row.score >= 0.5:
            found.setdefault(row.key, {}).setdefault(row.box, []).append(names[row.action_id])
    frames = []
    files = sorted(tf.io.gfile.glob(os.path.join(records, "eval-*.tfrecord")))
    for serialized in tf.data.TFRecordDataset(files).take(count):
        example = schema.parse_detection_example(serialized)
        key = example["id"].numpy().decode()
        image = tf.io.decode_jpeg(example["frames"][example["keyframe_index"]]).numpy()
        labels = detection.multi_hot(example["gt_label_index"], example["gt_label_box"],
                                     tf.shape(example["gt_boxes"])[0], len(names)).numpy()
        truth = [(box, ", ".join(names[c + 1] for c in range(len(names)) if hot[c]))
                 for box, hot in zip(example["gt_boxes"].numpy(), labels)]
        detected = [(box, ", ".join(actions)) for box, actions in found.get(key, {}).items()]
        frames.append(pictures.Keyframe(key, image, truth, detected))
    return pictures.draw_keyframes(path, frames)


@cli.guard
def main(argv: Optional[Sequence[str]] = None) -> dict:
    """CLI entry point; the last line printed names the output directory."""
    parser = demo.parser_for(__doc__, "runs/demo_detection")
    parser.add_argument("--pretrain_dir", default="runs/demo/pretrain",
                        help="a finished `make demo` pretraining to reuse (else one is run)")
    parser.add_argument("--seed", type=int, default=None, help="run.seed of every run")
    args = parser.parse_args(argv)
    console.setup_logging(args.verbose)
    return demo.written(args.output_dir, run_demo(
        args.output_dir, args.pretrain_dir, args.seed, args.gin_param, start=_START,
        verbose=args.verbose))

if __name__ == "__main__":
    main()
