"""AVA video files -> keyframe windows (cvrl_tf.data.ava_video): the movie-second mapping of
cut files and whole movies, edge frames, one decode and one JPEG per frame."""
import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf.data import ava_video, schema


def coded_frames(num_frames: int, size: int = 32) -> np.ndarray:
    """Grey frames whose three blocks (top left, top right, bottom) show the index in base 25,
    at 20 + 9 d grey levels."""
    frames = np.zeros((num_frames, size, size, 3), np.uint8)
    i, half = np.arange(num_frames)[:, None, None, None], size // 2
    frames[:, :half, :half] = 20 + 9 * (i % 25)
    frames[:, :half, half:] = 20 + 9 * (i // 25 % 25)
    frames[:, half:] = 20 + 9 * (i // 625)
    return frames


def frame_indices(jpegs) -> list[int]:
    """The source indices that coded frames (as JPEG bytes) show."""
    out = []
    for jpeg in jpegs:
        grey = tf.io.decode_jpeg(jpeg).numpy().mean(-1)
        q = grey.shape[0] // 4  # The middle of each block, away from its edges.
        digits = [grey[q:2 * q, q:2 * q], grey[q:2 * q, -2 * q:-q], grey[-2 * q:-q, q:-q]]
        out.append(sum(int(round((d.mean() - 20) / 9)) * 25 ** n for n, d in enumerate(digits)))
    return out


@pytest.fixture(scope="module")
def cut_file(tmp_path_factory) -> str:
    """A 15-minute cut's first 5 s at 10 fps: movie seconds 900-905."""
    path = str(tmp_path_factory.mktemp("ava_video") / "cut.mp4")
    ava_video.write_video(path, coded_frames(50), fps=10)
    return path


def test_cut_windows_repeat_the_edges_and_pull_only_what_a_window_needs():
    pulled = []

    def stream():
        for i in range(10):
            pulled.append(i)
            yield f"f{i}"
    windows = ava_video.cut_windows(stream(), 0, [0, 3, 9], 4)
    assert next(windows) == ["f0", "f0", "f0", "f1"] and pulled == [0, 1]  # centre at index 2
    assert next(windows) == ["f1", "f2", "f3", "f4"] and pulled[-1] == 4
    assert next(windows) == ["f7", "f8", "f9", "f9"]
    assert list(ava_video.cut_windows(iter("abc"), 5, [5, 6], 3)) == [list("aab"), list("abc")]
    with pytest.raises(ValueError, match="no frames decoded"):
        list(ava_video.cut_windows(iter(()), 0, [0], 2))


def test_movie_start_from_the_duration_or_as_given():
    assert ava_video.movie_start(901.0) == 900 and ava_video.movie_start(5.0) == 900
    assert ava_video.movie_start(7200.0) == 0 and ava_video.movie_start(902.0) == 0
    assert ava_video.movie_start(5.0, video_start=0) == 0


def test_a_cut_file_maps_second_902_to_file_second_2(cut_file):
    start, outside, windows = ava_video.keyframe_windows(cut_file, [906, 905, 902, 900], 10,
                                                         None, 8, 95)
    assert start == 900
    assert outside == [(906, "timestamp outside the video: the file runs from movie second 900 "
                              "for 5.0 s")]
    got = {t: frame_indices(w) for t, w in windows}
    assert got == {900: [0, 0, 0, 0, 0, 1, 2, 3],  # keyframe at index 4; before the start: 0
                   902: list(range(16, 24)),
                   905: [46, 47, 48, 49, 49, 49, 49, 49]}  # past the end: the last frame


def test_resampling_and_resizing_follow_the_settings(cut_file):
    _, _, windows = ava_video.keyframe_windows(cut_file, [903], 5, 16, 4, 95)
    ((timestamp, window),) = list(windows)
    assert timestamp == 903 and frame_indices(window) == [26, 28, 30, 32]  # 5 fps: every 2nd
    assert tf.io.decode_jpeg(window[0]).shape == (16, 16, 3)


def test_a_whole_movie_is_read_from_second_0_seeking_near_the_keyframes(tmp_path):
    path = str(tmp_path / "movie.mp4")
    ava_video.write_video(path, coded_frames(1810), fps=2)  # 905 s
    start, outside, windows = ava_video.keyframe_windows(path, [902, 1000], 2, None, 4, 95)
    assert start == 0 and [t for t, _ in outside] == [1000]
    assert [(t, frame_indices(w)) for t, w in windows] == [(902, [1802, 1803, 1804, 1805])]
    _, outside, windows = ava_video.keyframe_windows(path, [902], 2, None, 4, 95,
                                                     video_start=900)
    assert [t for t, _ in outside] == [] and frame_indices(next(windows)[1]) == [2, 3, 4, 5]


def test_overlapping_windows_encode_each_frame_once(cut_file, monkeypatch):
    calls = []
    encode = schema.encode_frames
    monkeypatch.setattr(schema, "encode_frames", lambda f, q: calls.append(1) or encode(f, q))
    _, _, windows = ava_video.keyframe_windows(cut_file, [902, 903], 10, None, 16, 90)
    assert [frame_indices(w) for _, w in windows] == [list(range(12, 28)), list(range(22, 38))]
    assert len(calls) == 26  # Frames 12-37, the 6 shared ones once.
