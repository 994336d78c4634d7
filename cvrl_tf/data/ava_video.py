"""An AVA video file -> the JPEG frame windows around its keyframes (for convert_ava).

AVA keyframes are named by movie seconds (902-1798: minutes 15-30 of the movie). The files are
either whole movies or the 15-minute cuts that SlowFast's and MMAction2's preparation scripts
make (`ffmpeg -ss 900 -t 901`: the file starts at movie second 900). Keyframe T is the frame
at file time T - start, counted from the file's first frame, where start is 900 for a cut and
0 for a whole movie. `movie_start` tells them apart by duration: a file shorter than 902 s
holds no AVA keyframe unless it is a cut.
A window holds `size` frames resampled to fps, the keyframe at index size // 2; frames before
the file's first or after its last repeat that frame. The file is decoded once, from the first
window to the last, and each frame is JPEG-encoded once, when a window first needs it.
`write_video` writes frames as such a file (the synthetic AVA set's videos, the tests').
"""
import math
from typing import Iterable, Iterator, Optional, Sequence, TypeVar

import av
import numpy as np

from cvrl_tf.data import schema
from cvrl_tf.data.convert import decode_video

CUT_START = 900  # Movie second at which the 15-minute cut files start.
FIRST_KEYFRAME = 902  # AVA's first keyframe (SlowFast's AVA_VALID_FRAMES: 902-1798).
T = TypeVar("T")


def probe_video(path: str) -> tuple[float, float]:
    """(start, duration) in seconds of a file's first video stream: the time of its first
    frame and how long it runs (inf when the file does not say)."""
    with av.open(path) as container:
        if not container.streams.video:
            raise ValueError("it has no video stream")
        stream = container.streams.video[0]
        base = stream.time_base
        start = float(stream.start_time * base) if stream.start_time is not None and base else 0.0
        if stream.duration and base:
            return start, float(stream.duration * base)
        if container.duration:
            return start, container.duration / av.time_base
        return start, math.inf


def movie_start(duration: float, video_start: Optional[float] = None) -> float:
    """The movie second a file starts at: `video_start` when given, else CUT_START for a file
    shorter than the first keyframe's second (a cut), else 0 (a whole movie)."""
    if video_start is not None:
        return float(video_start)
    return float(CUT_START) if duration < FIRST_KEYFRAME else 0.0


def cut_windows(items: Iterable[T], first: int, centres: Sequence[int], size: int
                ) -> Iterator[list[T]]:
    """The `size` items around each centre (ascending), the centre at index size // 2, from a
    stream whose first item has index `first`; an index before it or past the stream's end
    repeats the first or last item. Holds only what the current window needs."""
    half, stream, held, following, last = size // 2, iter(items), {}, first, None
    for n, centre in enumerate(centres):
        low, high = centre - half, centre - half + size
        while following < high and stream is not None:
            item = next(stream, stream)  # The iterator itself marks its end.
            if item is stream:
                stream = None
                break
            held[following] = last = item
            following += 1
        if last is None:
            raise ValueError("no frames decoded")
        top = following - 1
        yield [held.get(min(max(j, first), top), last) for j in range(low, high)]
        if n + 1 < len(centres):
            for j in [j for j in held if j < centres[n + 1] - half]:
                del held[j]


class _Frame:
    """A decoded frame whose JPEG is made once, when a window first asks for it."""
    __slots__ = ("array", "quality", "encoded")

    def __init__(self, array: np.ndarray, quality: int):
        self.array, self.quality, self.encoded = array, quality, None

    def jpeg(self) -> bytes:
        if self.encoded is None:
            self.encoded = schema.encode_frames(self.array[None], self.quality)[0]
            self.array = None
        return self.encoded


def _lazy_frames(arrays: Iterable[np.ndarray], quality: int) -> Iterator[_Frame]:
    previous, frame = None, None
    for array in arrays:
        if array is not previous:  # decode_video repeats an upsampled frame as the same array.
            previous, frame = array, _Frame(array, quality)
        yield frame


def keyframe_windows(path: str, timestamps: Sequence[int], fps: float,
                     short_side: Optional[int], size: int, jpeg_quality: int,
                     video_start: Optional[float] = None
                     ) -> tuple[float, list[tuple[int, str]], Iterator[tuple[int, list[bytes]]]]:
    """(the movie second the file starts at, [(timestamp, why it is skipped)] for keyframes
    outside the file, an iterator of (timestamp, JPEG window) for the others in time order)."""
    first_time, duration = probe_video(path)
    start = movie_start(duration, video_start)
    inside, outside = [], []
    for timestamp in sorted(timestamps):
        offset = timestamp - start
        if 0 <= offset <= duration:
            inside.append((timestamp, round(offset * fps)))
        else:
            outside.append((timestamp, f"timestamp outside the video: the file runs from movie "
                                       f"second {start:g} for {duration:.1f} s"))
    if not inside:
        return start, outside, iter(())
    first = max(0, inside[0][1] - size // 2)
    end = inside[-1][1] - size // 2 + size
    arrays = decode_video(path, fps, short_side, start=first_time + first / fps,
                          end=first_time + end / fps)
    windows = cut_windows(_lazy_frames(arrays, jpeg_quality), first, [c for _, c in inside],
                          size)
    return start, outside, ((t, [f.jpeg() for f in window])
                            for (t, _), window in zip(inside, windows))


def write_video(path: str, frames: np.ndarray, fps: int, codec: str = "mpeg4",
                bit_rate: int = 8_000_000) -> None:
    """Writes uint8 RGB frames [L, H, W, 3] (even H and W) as a video file with PyAV. The
    default, MPEG-4 Part 2 at a rate high enough for its finest quantizer on small frames, in
    one thread, gives the same bytes for the same frames (PyAV's libx264 did not here, even
    in one thread)."""
    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.bit_rate = bit_rate
        stream.codec_context.thread_count = 1
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
