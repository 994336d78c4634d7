"""summaries: the clip-pair picture, the config text and results.json, on their own."""
import json
import os

import numpy as np
import tensorflow as tf

from cvrl_tf.training import summaries


def test_clip_pair_images_put_view_1_above_view_2_of_the_same_video():
    b, t, s = 2, 8, 4
    video = np.zeros([2 * b, t, s, s, 3], np.float32)
    for row in range(2 * b):
        for frame in range(t):
            video[row, frame] = (100 * row + frame) / 1000.0  # row and frame in the pixels
    images = summaries.clip_pair_images(video, num_videos=2, num_frames=4).numpy()
    assert images.shape == (b, 2 * s, 4 * s, 3)
    frames = [0, 2, 5, 7]  # round(linspace(0, 7, 4))
    for video_index in range(b):
        for view in range(2):
            for k, frame in enumerate(frames):
                tile = images[video_index, view * s:(view + 1) * s, k * s:(k + 1) * s]
                expected = (100 * (view * b + video_index) + frame) / 1000.0
                np.testing.assert_allclose(tile, expected, atol=1e-6)


def test_classifier_batches_make_one_row_and_out_of_range_pixels_are_rescaled():
    video = np.linspace(-2.0, 3.0, 2 * 4 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 4, 3)
    images = summaries.clip_pair_images(video, num_frames=2, pretrain=False).numpy()
    assert images.shape == (2, 4, 8, 3)
    assert images.min() >= 0.0 and images.max() <= 1.0 and images.max() > 0.9


def test_config_and_results_are_written_where_users_look(tmp_path):
    model_dir = str(tmp_path / "run")
    summaries.write_config(model_dir, os.path.join(model_dir, "train"), "run.seed = 3\n")
    with open(os.path.join(model_dir, "config.gin")) as f:
        assert f.read() == "run.seed = 3\n"
    events = tf.io.gfile.glob(os.path.join(model_dir, "train", "events.out.tfevents.*"))
    texts = [v for e in tf.compat.v1.train.summary_iterator(events[0]) for v in e.summary.value
             if v.tag == "config/gin"]
    assert tf.make_ndarray(texts[0].tensor).item().decode() == "    run.seed = 3"
    assert summaries.read_results(model_dir) == {}
    path = summaries.write_results(model_dir, {"top1": np.float32(0.5), "steps": np.int64(4),
                                               "ids": np.arange(2), "t": tf.constant(1.5)})
    with open(path) as f:
        assert json.load(f) == {"ids": [0, 1], "steps": 4, "t": 1.5, "top1": 0.5}
    assert summaries.read_results(model_dir) == {"ids": [0, 1], "steps": 4, "t": 1.5, "top1": 0.5}
