"""Videos of a LeRobot dataset: written at one constant frame rate, read back by time.

LeRobot finds frame i of an episode at `from_timestamp + i / fps` and accepts it only within a
tolerance of 1e-4 s, so every file written here has exactly one frame per dataset row, frame k of
the file at pts k in a time base of 1/fps (the MP4 track timescale is a multiple of fps, so the
timestamps stay exact), no B-frames, and episodes appended one after another.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from store.lerobot.format import LeRobotFormatError

# name on the command line -> (encoder, options). A keyframe every 2 frames, as LeRobot encodes
# its own datasets: a random frame costs at most one extra decode when training samples frames.
CODECS = {
    "av1": ("libsvtav1", {"preset": "10", "crf": "30", "g": "2"}),
    "h264": ("libx264", {"preset": "veryfast", "crf": "18", "g": "2", "bf": "0"}),
}


class RateVideoFile:
    """One videos/<key>/chunk-*/file-*.mp4 being written: frames appended at a constant rate."""

    def __init__(self, path: Path, width: int, height: int, fps: int, vcodec: str = "av1"):
        if vcodec not in CODECS:
            raise ValueError(f"unknown video codec {vcodec!r}: choose one of {', '.join(CODECS)}")
        if width % 2 or height % 2:
            raise LeRobotFormatError(f"{width}x{height} video cannot be stored as yuv420p: "
                                     f"width and height must be even")
        encoder, options = CODECS[vcodec]
        if encoder == "libsvtav1":
            os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its banner unless told
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps = int(fps)
        self.frames = 0
        self._c = av.open(str(self.path), "w", format="mp4")
        try:
            self._s = self._c.add_stream(encoder, rate=self.fps, options=dict(options))
        except (av.FFmpegError, ValueError) as e:
            self._c.close()
            raise LeRobotFormatError(f"PyAV's FFmpeg cannot encode {vcodec} ({e}): export with "
                                     f"--vcodec h264") from e
        self._s.width, self._s.height = int(width), int(height)
        self._s.pix_fmt = "yuv420p"
        self._s.codec_context.thread_count = 1
        # the muxer picks the track timescale (a multiple of fps); frames count in 1/fps
        self._tb = Fraction(1, self.fps)
        self._s.codec_context.time_base = self._tb
        self.codec = self._s.codec_context.codec.canonical_name if hasattr(
            self._s.codec_context.codec, "canonical_name") else vcodec
        self.pix_fmt = "yuv420p"

    @property
    def duration_s(self) -> float:
        return self.frames / self.fps

    def size_mb(self) -> float:
        try:
            return os.path.getsize(self.path) / 1e6
        except OSError:
            return 0.0

    def write(self, rgb: np.ndarray) -> None:
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self.frames
        frame.time_base = self._tb
        for pkt in self._s.encode(frame):
            self._c.mux(pkt)
        self.frames += 1

    def close(self) -> None:
        for pkt in self._s.encode(None):
            self._c.mux(pkt)
        self._c.close()


def frames_at(path: Path, times: np.ndarray, tolerance_s: float):
    """Yield the RGB frame of `path` nearest each time in `times` (seconds, ascending), decoding
    forward from the keyframe before the first one. Raises LeRobotFormatError when the nearest
    frame is further than `tolerance_s` from the time asked for."""
    try:
        container = av.open(str(path), "r")
    except (av.FFmpegError, OSError) as e:
        raise LeRobotFormatError(f"video {path} cannot be opened ({e}): the dataset's video is "
                                 f"damaged; download or export it again") from e
    with container:
        stream = container.streams.video[0]
        tb = float(stream.time_base)
        if len(times):
            container.seek(max(0, int(times[0] / tb) - 1), stream=stream, backward=True,
                           any_frame=False)
        decoded = ((f.pts * tb, f) for f in container.decode(stream) if f.pts is not None)
        prev = cur = None
        for t in times:
            while cur is None or cur[0] < t - 1e-9:
                nxt = next(decoded, None)
                if nxt is None:
                    break
                prev, cur = cur, nxt
            best = min((c for c in (prev, cur) if c is not None),
                       key=lambda c: abs(c[0] - t), default=None)
            if best is None or abs(best[0] - t) > tolerance_s:
                got = "no frame" if best is None else f"nearest frame at {best[0]:.4f} s"
                raise LeRobotFormatError(
                    f"video {path} has no frame at {t:.4f} s ({got}): the video is shorter than "
                    f"the dataset's rows or damaged; download or export the dataset again")
            yield best[1].to_ndarray(format="rgb24")
