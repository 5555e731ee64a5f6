"""Camera streams as video files, encoded while recording (PyAV), and read back with random access.

VideoWriter: one per camera. `write(rgb, t)` copies the frame into a bounded queue and returns; an
encoder thread (PyAV releases the GIL inside the codec) converts, encodes and muxes it.

Policy when the encoder falls behind ("nothing dropped"):
- the queue holds `queue_s` seconds of video (default 2 s: 60 frames of 480x640 = 55 MB per
  camera), so a burst or a short CPU stall is absorbed without the caller noticing;
- when the queue is full, write() blocks until a slot frees and counts a stall (number and total
  blocked time, in `close()`'s info): the caller slows down, but no frame is ever dropped;
- if one write() stays blocked longer than `stall_timeout_s`, the encoder cannot keep up at all
  (CPU starved, disk hung): write() raises VideoWriteError so the recorder stops the episode with a
  clear message instead of silently losing frames.

Timestamps: each frame's presentation timestamp is the caller's clock time `t` (the workstation's
one monotonic clock), relative to the first frame, in the stream's time base (1/90000 s in MP4,
1/1000 s in Matroska). A late or missing camera frame therefore shows as a gap in the file's own
timestamps instead of being hidden by a constant-rate count; the first frame's absolute clock time
is kept in the container metadata (`xr0_t0`), so `VideoReader.timestamps + t0` gives back the clock.
Readers address frames by index (the frame's rank in presentation order), not by time.

Containers (chosen by the file suffix):
- `.mp4` (default, what LeRobot and every player read): written *fragmented* (a fragment per
  keyframe, empty moov up front), so a writer killed mid-episode leaves a file that decodes up to
  its last complete fragment (at most one GOP plus the encoder look-ahead is lost);
- `.mkv`: Matroska, equally crash-tolerant (cluster per keyframe).

Qualities (measured on this machine, 480x640 at 30 fps, one encoder thread; see bench/record.py):
- "high": H.264 (libx264, yuv420p), preset superfast, CRF 20, keyframe every 15 frames: about
  200 frames/s on one core, so three cameras at 30 fps use under half of one of our two cores;
- "lossless": libx264rgb at QP 0 (rgb24, bit-exact), ultrafast: about 200 frames/s, roughly 50-100x
  the size of "high"; ffv1 was measured at under half that speed, so it is not used;
- "av1": SVT-AV1 (libsvtav1, yuv420p, preset 10, CRF 30), the codec of LeRobot datasets v3.0,
  for export; it needs more CPU than "high" while recording.

GOP: a keyframe every 15 frames (0.5 s at 30 fps) bounds a random access to at most 14 extra
decoded frames (a few ms at 480x640).
"""

from __future__ import annotations

import errno
import os
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

import av
import numpy as np

GOP = 15


@dataclass(frozen=True)
class Quality:
    codec: str
    pix_fmt: str
    options: dict[str, str]
    lossless: bool = False


QUALITIES: dict[str, Quality] = {
    "high": Quality("libx264", "yuv420p", {"preset": "superfast", "crf": "20"}),
    "lossless": Quality("libx264rgb", "rgb24", {"preset": "ultrafast", "qp": "0"}, lossless=True),
    "av1": Quality("libsvtav1", "yuv420p", {"preset": "10", "crf": "30"}),
}

CONTAINERS = {".mp4": "mp4", ".mkv": "matroska"}


class VideoError(RuntimeError):
    """A video file could not be written or read; the message says what to do."""


class VideoWriteError(VideoError):
    pass


class VideoReadError(VideoError):
    pass


@dataclass
class WriterInfo:
    path: str
    frames: int            # frames encoded into the file
    duration_s: float      # last frame's timestamp - first frame's timestamp + one frame period
    bytes: int
    codec: str
    quality: str
    lag_ms_p50: float | None   # write() -> packet muxed, per frame
    lag_ms_p99: float | None
    lag_ms_max: float | None
    stalls: int            # write() calls that found the queue full and waited
    stall_s: float         # total time write() spent waiting
    pts_bumped: int        # frames whose clock time did not advance past the previous one
    t0: float | None       # clock time of the first frame
    finalise_s: float      # time close() took (flush of the queue + encoder + container)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _describe_os_error(e: BaseException, path: str) -> str:
    err = getattr(e, "errno", None)
    if err == errno.ENOSPC:
        return f"the disk holding {path} is full: free space or record to another store"
    if err in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{path} is not writable: choose a store directory you can write to"
    if err == errno.ENOENT:
        return f"the folder of {path} does not exist: create the store directory first"
    return f"{type(e).__name__}: {e}"


_STOP = object()


class VideoWriter:
    """Streaming encoder for one camera; see the module docstring for the queue policy."""

    def __init__(self, path: str | os.PathLike, width: int, height: int, fps: float,
                 quality: str = "high", queue_s: float = 2.0, queue_frames: int | None = None,
                 stall_timeout_s: float = 10.0, threads: int = 1, gop: int = GOP,
                 copy: bool = True):
        self.path = os.fspath(path)
        if quality not in QUALITIES:
            raise ValueError(f"unknown video quality {quality!r}; choose one of "
                             f"{', '.join(QUALITIES)}")
        suffix = os.path.splitext(self.path)[1].lower()
        if suffix not in CONTAINERS:
            raise ValueError(f"video path {self.path} must end in one of {', '.join(CONTAINERS)}")
        if width <= 0 or height <= 0 or fps <= 0:
            raise ValueError(f"bad video geometry {width}x{height} at {fps} fps")
        if (quality != "lossless") and (width % 2 or height % 2):
            raise ValueError(f"{quality!r} video (yuv420p) needs even width and height, "
                             f"got {width}x{height}")
        self.width, self.height, self.fps = int(width), int(height), float(fps)
        self.quality = quality
        self.copy = copy
        self.stall_timeout_s = stall_timeout_s
        q = QUALITIES[quality]
        fmt = CONTAINERS[suffix]
        # flush_packets: each muxed fragment/cluster goes to the OS at once instead of waiting in
        # a 32 KB I/O buffer, so a killed process loses only what the muxer has not finished
        cont_opts = {"flush_packets": "1"}
        if fmt == "mp4":
            cont_opts["movflags"] = "frag_keyframe+empty_moov+default_base_moof+use_metadata_tags"
        try:
            # PyAV opens the file only at the first frame; create it now so a bad path fails here
            open(self.path, "wb").close()
            self._container = av.open(self.path, "w", format=fmt, options=cont_opts)
        except OSError as e:
            raise VideoWriteError(f"cannot create video {self.path}: "
                                  f"{_describe_os_error(e, self.path)}") from e
        try:
            opts = dict(q.options)
            if q.codec.startswith("libx264"):
                opts["g"] = str(gop)
                opts["keyint_min"] = str(gop)
            else:
                opts["g"] = str(gop)
            self._stream = self._container.add_stream(q.codec, rate=Fraction(fps).limit_denominator(1001),
                                                      options=opts)
            self._stream.width, self._stream.height = self.width, self.height
            self._stream.pix_fmt = q.pix_fmt
            self._stream.codec_context.thread_count = threads
            tb = Fraction(1, 90000) if fmt == "mp4" else Fraction(1, 1000)
            self._stream.time_base = tb
            self._stream.codec_context.time_base = tb  # per-frame clock pts, not a frame count
        except Exception as e:
            self._container.close()
            raise VideoWriteError(f"cannot set up the {q.codec} encoder for {self.path}: {e}. "
                                  f"Check that PyAV's FFmpeg has {q.codec}, or choose another "
                                  f"quality") from e
        self._codec = q.codec
        n = queue_frames if queue_frames is not None else max(2, int(round(queue_s * fps)))
        self.queue_frames = n
        self._q: queue.Queue = queue.Queue(maxsize=n)
        self._error: BaseException | None = None
        self._closed = False
        self._t0: float | None = None
        self._last_pts = -1
        self._pts_bumped = 0
        self._written = 0          # frames accepted by write()
        self._encoded = 0          # frames whose packet reached the file
        self._pending: dict[int, float] = {}   # pts -> perf_counter at write()
        self._lags: list[float] = []
        self._stalls = 0
        self._stall_s = 0.0
        self._header_written = False
        self._thread = threading.Thread(target=self._run, name=f"video-{os.path.basename(self.path)}",
                                        daemon=True)
        self._thread.start()

    # -- caller side ---------------------------------------------------------------------------
    def write(self, rgb: np.ndarray, t: float) -> None:
        """Queue one HxWx3 uint8 RGB frame taken at clock time `t` (seconds)."""
        self._raise_if_failed()
        if self._closed:
            raise VideoWriteError(f"write() after close() on {self.path}")
        if rgb.shape != (self.height, self.width, 3) or rgb.dtype != np.uint8:
            raise ValueError(f"{self.path}: expected a {self.height}x{self.width}x3 uint8 RGB "
                             f"frame, got {rgb.shape} {rgb.dtype}")
        if self._t0 is None:
            self._t0 = float(t)
        pts = int(round((float(t) - self._t0) / self._stream.time_base))
        if pts <= self._last_pts:
            pts = self._last_pts + 1
            self._pts_bumped += 1
        self._last_pts = pts
        item = (np.array(rgb, copy=True) if self.copy else rgb, pts, time.perf_counter())
        try:
            self._q.put_nowait(item)
        except queue.Full:
            self._stalls += 1
            t_block = time.perf_counter()
            while True:
                try:
                    self._q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    self._raise_if_failed()
                    if time.perf_counter() - t_block > self.stall_timeout_s:
                        self._stall_s += time.perf_counter() - t_block
                        raise VideoWriteError(
                            f"the {self._codec} encoder for {self.path} has not taken a frame for "
                            f"{self.stall_timeout_s:.0f} s (queue of {self.queue_frames} frames "
                            f"full): the CPU or the disk cannot keep up. Stop other load, record "
                            f"fewer or smaller cameras, or use quality 'high'") from None
            self._stall_s += time.perf_counter() - t_block
        self._written += 1

    @property
    def frames_written(self) -> int:
        return self._written

    @property
    def queued(self) -> int:
        return self._q.qsize()

    def close(self) -> WriterInfo:
        """Encode everything queued, flush the encoder, finish the file; return what was written."""
        t_start = time.perf_counter()
        if not self._closed:
            self._closed = True
            while self._thread.is_alive():
                try:
                    self._q.put(_STOP, timeout=0.1)
                    break
                except queue.Full:
                    continue
            self._thread.join()
        self._raise_if_failed()
        lags = np.asarray(self._lags) * 1000.0
        try:
            size = os.path.getsize(self.path)
        except OSError:
            size = 0
        tb = self._stream.time_base
        dur = (self._last_pts * float(tb) + 1.0 / self.fps) if self._encoded else 0.0
        return WriterInfo(
            path=self.path, frames=self._encoded, duration_s=dur, bytes=size, codec=self._codec,
            quality=self.quality,
            lag_ms_p50=float(np.percentile(lags, 50)) if lags.size else None,
            lag_ms_p99=float(np.percentile(lags, 99)) if lags.size else None,
            lag_ms_max=float(lags.max()) if lags.size else None,
            stalls=self._stalls, stall_s=self._stall_s, pts_bumped=self._pts_bumped,
            t0=self._t0, finalise_s=time.perf_counter() - t_start)

    def abort(self) -> None:
        """Stop without raising: used when a recording is being discarded after an error."""
        try:
            self.close()
        except VideoError:
            pass

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        else:
            self.abort()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            e = self._error
            if isinstance(e, OSError) or getattr(e, "errno", None):
                why = _describe_os_error(e, self.path)
            else:
                why = f"{type(e).__name__}: {e}"
            raise VideoWriteError(f"writing video {self.path} failed ({why}); "
                                  f"{self._encoded} frames reached the file") from e

    # -- encoder thread ------------------------------------------------------------------------
    def _mux(self, packets) -> None:
        for pkt in packets:
            self._container.mux(pkt)
            if pkt.pts is not None:
                t_w = self._pending.pop(pkt.pts, None)
                if t_w is not None:
                    self._lags.append(time.perf_counter() - t_w)
                    self._encoded += 1

    def _run(self) -> None:
        stream = self._stream
        try:
            while True:
                item = self._q.get()
                if item is _STOP:
                    break
                rgb, pts, t_w = item
                if not self._header_written:
                    self._header_written = True
                    if self._t0 is not None:
                        self._container.metadata["xr0_t0"] = repr(self._t0)
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts = pts
                frame.time_base = stream.time_base
                self._pending[pts] = t_w
                self._mux(stream.encode(frame))
            self._mux(stream.encode(None))
            self._container.close()
        except BaseException as e:  # surfaced to the caller on its next write()/close()
            self._error = e
            try:
                self._container.close()
            except Exception:
                pass
            # unblock a writer waiting on a full queue
            while True:
                try:
                    self._q.get_nowait()
                except queue.Empty:
                    break


@dataclass
class _Index:
    pts: np.ndarray        # presentation timestamps in stream time base, sorted (frame i -> pts[i])
    key: np.ndarray        # bool, frame i is a keyframe
    key_before: np.ndarray  # index of the keyframe at or before frame i


class VideoReader:
    """Random access to the frames of one video file.

    Opening demuxes the packets once (no decoding) to index every frame's timestamp and keyframe
    flag. `frame(i)` seeks to the keyframe at or before i and decodes forward, unless the decoder
    already sits inside that stretch; decoded frames are kept in a small LRU cache. `size=(h, w)`
    resizes on read (PIL, bilinear) for training at small resolution.
    """

    def __init__(self, path: str | os.PathLike, cache_frames: int = 32, threads: int = 1):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise VideoReadError(f"video {self.path} is missing: the episode's camera file was "
                                 f"deleted or moved; restore it or discard the episode")
        if os.path.getsize(self.path) == 0:
            raise VideoReadError(f"video {self.path} is empty (0 bytes): the recording stopped "
                                 f"before its first frame reached disk; discard the episode")
        try:
            self._c = av.open(self.path, "r")
            vs = [s for s in self._c.streams if s.type == "video"]
            if not vs:
                raise VideoReadError(f"{self.path} has no video stream")
            self._s = vs[0]
            self._s.codec_context.thread_count = threads
            pts, key = [], []
            for pkt in self._c.demux(self._s):
                if pkt.size == 0 or pkt.pts is None:
                    continue
                pts.append(pkt.pts)
                key.append(pkt.is_keyframe)
        except VideoReadError:
            raise
        except (av.FFmpegError, OSError, ValueError) as e:
            raise VideoReadError(f"video {self.path} is corrupted or not a video ({e}); "
                                 f"re-record or discard the episode") from e
        if not pts:
            raise VideoReadError(f"video {self.path} holds no frames; discard the episode")
        order = np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")
        p = np.asarray(pts, dtype=np.int64)[order]
        k = np.asarray(key, dtype=bool)[order]
        if not k[0]:
            # a stream cut in front of its first keyframe cannot decode its first frames
            k[0] = True
        kb = np.maximum.accumulate(np.where(k, np.arange(len(p)), 0))
        self._idx = _Index(p, k, kb)
        self._pos_of_pts = {int(v): i for i, v in enumerate(p)}
        self._cache: OrderedDict[int, np.ndarray | av.VideoFrame] = OrderedDict()
        self._cache_frames = cache_frames
        self._decoder = None
        self._next = -1           # index the live decoder will produce next
        self.seeks = 0
        self.decoded = 0
        tb = self._s.time_base
        self.time_base = tb
        self.timestamps = (p - p[0]) * float(tb)          # seconds from the first frame
        meta = {k.lower(): v for k, v in {**self._c.metadata, **self._s.metadata}.items()}
        self.t0 = float(meta["xr0_t0"]) if "xr0_t0" in meta else None
        self.width = self._s.codec_context.width
        self.height = self._s.codec_context.height
        rate = self._s.average_rate or self._s.guessed_rate
        self.fps = float(rate) if rate else (
            (len(p) - 1) / self.timestamps[-1] if len(p) > 1 and self.timestamps[-1] > 0 else 0.0)
        self.codec = self._s.codec_context.name

    def __len__(self) -> int:
        return len(self._idx.pts)

    @property
    def frame_count(self) -> int:
        return len(self)

    def frame(self, i: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """Frame i as HxWx3 uint8 RGB; `size=(h, w)` resizes it."""
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"frame {i} out of range: {self.path} has {n} frames")
        img = self._cache.get(i)
        if img is None:
            img = self._decode_to(i)
        else:
            self._cache.move_to_end(i)
        if not isinstance(img, np.ndarray):
            # frames decoded on the way to another stay in the decoder's pixel format until asked
            # for: the RGB conversion costs more than decoding, and a random access passes up to
            # a GOP of frames it does not need
            img = img.to_ndarray(format="rgb24")
            self._cache[i] = img
        return _resize(img, size) if size else img

    def frames(self, indices, size: tuple[int, int] | None = None) -> np.ndarray:
        """Frames at `indices` (any order, repeats allowed) as NxHxWx3; decoded in file order."""
        idx = [int(i) + (len(self) if int(i) < 0 else 0) for i in indices]
        got = {i: self.frame(i, size) for i in sorted(set(idx))}
        return np.stack([got[i] for i in idx]) if idx else np.zeros((0, *(size or (self.height, self.width)), 3), np.uint8)

    def close(self) -> None:
        self._c.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- decoding ------------------------------------------------------------------------------
    def _decode_to(self, i: int) -> av.VideoFrame:
        k = int(self._idx.key_before[i])
        # keep decoding forward when no keyframe lies between the decoder's position and i
        if self._decoder is None or not (self._next <= i and k <= self._next):
            self._seek(k)
        try:
            while True:
                try:
                    frame = next(self._decoder)
                except StopIteration:
                    raise VideoReadError(f"video {self.path} ended before frame {i} "
                                         f"(index says {len(self)} frames): the file is "
                                         f"truncated or corrupted") from None
                j = self._pos_of_pts.get(int(frame.pts)) if frame.pts is not None else None
                if j is None:
                    continue
                self.decoded += 1
                self._next = j + 1
                self._put(j, frame)
                if j == i:
                    return frame
                if j > i:
                    break
        except av.FFmpegError as e:
            raise VideoReadError(f"decoding frame {i} of {self.path} failed ({e}): the file is "
                                 f"corrupted; re-record or discard the episode") from e
        raise VideoReadError(f"frame {i} of {self.path} could not be decoded (decoder skipped "
                             f"it): the file is corrupted")

    def _seek(self, k: int) -> None:
        self.seeks += 1
        self._c.seek(int(self._idx.pts[k]), stream=self._s, backward=True, any_frame=False)
        self._decoder = self._c.decode(self._s)
        self._next = k

    def _put(self, j: int, img) -> None:
        self._cache[j] = img
        self._cache.move_to_end(j)
        while len(self._cache) > self._cache_frames:
            self._cache.popitem(last=False)


def _resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    if img.shape[0] == h and img.shape[1] == w:
        return img
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))
