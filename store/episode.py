"""One episode on disk: the writer the recorder feeds, and the data a reader gets back.

Folder of an episode (`DIR/episodes/000042/`):
    columns.json          column names and widths, joint names, cameras (see store.columns)
    steps/<column>.f8     per-step rows at the control rate: t, state, action, leader, follower, extras
    frames/<camera>.f8    each camera's frame timestamps (one per frame written to its video)
    <camera>.mp4          the camera's video, written by the recorder through store.video
    .writer.lock          held (flock) by the recording process; gone or unlocked = writer is dead

Life cycle: `EpisodeStore.begin_episode` -> `EpisodeWriter` (status "recording") -> `finish()`
(status "complete", the only status readers of the dataset see) or `discard()`. A writer process
that dies leaves its lock unlocked; the next `EpisodeStore.open` marks the episode "incomplete".
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from store.columns import ColumnGroup, check_name, fsync_dir
from store.errors import EmptyEpisode, StoreError, StoreWriteError

if TYPE_CHECKING:
    from store.db import EpisodeStore

LOCK_FILE = ".writer.lock"
STEP_COLUMNS = ("t", "state", "action", "leader", "follower")
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


@dataclass(frozen=True)
class EpisodeInfo:
    """One row of the episode index."""

    id: int
    task: str
    status: str
    rig: str
    control_hz: float
    started: str
    ended: str | None
    duration_s: float | None
    steps: int
    frame_counts: dict[str, int]
    videos: dict[str, str]
    success: bool | None
    notes: str
    tags: list[str]
    folder: Path
    session_id: int | None


@dataclass
class EpisodeData:
    """A readable episode: numpy arrays of its steps and frame timestamps.

    t: (N,) monotonic seconds; state, action, leader, follower: (N, D) with D = len(joint_names)
    (leader/follower rows are NaN where the recorder had none); extra: name -> (N,) or (N, W);
    frame_times: camera -> (M,) monotonic seconds of each video frame.
    """

    info: EpisodeInfo
    joint_names: tuple[str, ...]
    cameras: dict[str, tuple[int, int, float]]
    t: np.ndarray
    state: np.ndarray
    action: np.ndarray
    leader: np.ndarray
    follower: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    frame_times: dict[str, np.ndarray] = field(default_factory=dict)

    def video_path(self, camera: str) -> Path:
        if camera not in self.info.videos:
            raise KeyError(f"episode {self.info.id} has no camera {camera!r}; it has "
                           f"{', '.join(self.info.videos) or 'none'}")
        return self.info.folder / self.info.videos[camera]


class WriterLock:
    """An exclusive flock on the episode's lock file, held while its writer lives. The kernel drops
    it when the process dies (even on kill -9), which is how the store tells a crashed recording
    from one still in progress in another process."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK_FILE
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self, remove: bool = False) -> None:
        if self._fd is None:
            return
        if remove:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        os.close(self._fd)  # closing drops the flock
        self._fd = None


class EpisodeWriter:
    """Streams one episode to disk. Made by `EpisodeStore.begin_episode`; not thread-safe except
    that its own writer thread flushes rows in the background.

    `add_step` costs a few microseconds: it checks shapes and queues the row; the writer thread
    writes queued rows about every `flush_s` seconds (or sooner past `max_pending` rows). A write
    error stops the recording: the next call raises `StoreWriteError` with the reason and the fix.
    """

    def __init__(self, store: EpisodeStore, id: int, folder: Path, joint_names: tuple[str, ...],
                 cameras: dict[str, tuple[int, int, float]], videos: dict[str, str],
                 extra_columns: dict[str, int], lock: WriterLock, flush_s: float = 1.0,
                 max_pending: int = 500, opener=open):
        self.store = store
        self.id = id
        self.folder = folder
        self.joint_names = joint_names
        self.dim = len(joint_names)
        self.cameras = cameras
        self.videos = videos
        self.extra_columns = extra_columns
        self._lock = lock
        self._flush_s = flush_s
        self._max_pending = max_pending
        self._nan = np.full(self.dim, np.nan)
        widths = {"t": 1, "state": self.dim, "action": self.dim, "leader": self.dim,
                  "follower": self.dim, **extra_columns}
        self._steps = ColumnGroup(folder, "steps", widths, opener=opener)
        self._frames = {c: ColumnGroup(folder, "frames", {c: 1}, opener=opener) for c in cameras}
        self._last_t = -np.inf
        self._last_frame_t = {c: -np.inf for c in cameras}
        self._error: StoreWriteError | None = None
        self._closed = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._flush_loop, name=f"episode-{id}-writer",
                                        daemon=True)
        self._thread.start()

    # -- recording ------------------------------------------------------------------------------

    @property
    def steps(self) -> int:
        return self._steps.rows

    def frames(self, camera: str) -> int:
        return self._frames[camera].rows

    def add_step(self, t: float, state, action, leader=None, follower=None,
                 extra: dict | None = None) -> None:
        """Queue one control step; t in monotonic seconds (drivers.clock.now()), increasing."""
        self._check_open()
        if not t > self._last_t:
            raise ValueError(f"step time {t} is not after the previous step ({self._last_t}): "
                             f"stamp steps with the one monotonic clock")
        row = {"t": np.array([t], dtype=np.float64),
               "state": self._vec(state, "state"), "action": self._vec(action, "action"),
               "leader": self._nan if leader is None else self._vec(leader, "leader"),
               "follower": self._nan if follower is None else self._vec(follower, "follower")}
        extra = extra or {}
        if extra.keys() != self.extra_columns.keys():
            raise ValueError(f"step extras {sorted(extra)} differ from the columns declared at "
                             f"begin_episode {sorted(self.extra_columns)}")
        for name, w in self.extra_columns.items():
            v = np.asarray(extra[name], dtype=np.float64).reshape(-1)
            if v.shape != (w,):
                raise ValueError(f"extra column {name!r} takes {w} values, got {v.size}")
            row[name] = v
        self._last_t = t
        self._steps.append(row)
        if self._steps.pending >= self._max_pending:
            self._wake.set()

    def camera_path(self, camera: str) -> Path:
        """Where the recorder writes this camera's video (through store.video.VideoWriter)."""
        if camera not in self.videos:
            raise KeyError(f"camera {camera!r} was not declared at begin_episode; declared: "
                           f"{', '.join(self.videos) or 'none'}")
        return self.folder / self.videos[camera]

    def add_frame_time(self, camera: str, t: float) -> None:
        """Record the timestamp of the next frame written to `camera`'s video."""
        self._check_open()
        group = self._frames.get(camera)
        if group is None:
            raise KeyError(f"camera {camera!r} was not declared at begin_episode; declared: "
                           f"{', '.join(self.videos) or 'none'}")
        if not t > self._last_frame_t[camera]:
            raise ValueError(f"frame time {t} of camera {camera!r} is not after the previous "
                             f"one ({self._last_frame_t[camera]})")
        self._last_frame_t[camera] = t
        group.append({camera: np.array([t], dtype=np.float64)})

    # -- ending ---------------------------------------------------------------------------------

    def finish(self, success: bool | None = None) -> EpisodeInfo:
        """Flush and fsync every array, then mark the episode complete in one transaction.

        Refused (EmptyEpisode, the writer stays open so it can still be discarded) when there are
        no steps, when a declared camera has no frames or when a camera's video file is missing.
        """
        self._check_open()
        if self._steps.rows == 0:
            raise EmptyEpisode(
                f"episode {self.id} has no steps: nothing was recorded, so it cannot be finished. "
                f"Discard it and record again.")
        for cam, group in self._frames.items():
            if group.rows == 0:
                raise EmptyEpisode(
                    f"camera {cam!r} has no frames in episode {self.id}: check that the camera "
                    f"streams, then discard the episode and record again.")
            video = self.camera_path(cam)
            if not video.is_file() or video.stat().st_size == 0:
                raise EmptyEpisode(
                    f"camera {cam!r} of episode {self.id} has {group.rows} frame times but its "
                    f"video {video} is missing or empty: close the camera's VideoWriter before "
                    f"finishing, or discard the episode.")
        self._stop_thread()
        try:
            if self._error is not None:
                raise self._error.__cause__
            for g in (self._steps, *self._frames.values()):
                g.sync()
            fsync_dir(self.folder / "steps")
            if self._frames:
                fsync_dir(self.folder / "frames")
            for cam in self.cameras:
                fd = os.open(self.camera_path(cam), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            fsync_dir(self.folder)
        except OSError as e:
            self._fail(e)
            self._check_open()
        counts = {c: g.rows for c, g in self._frames.items()}
        t0, t1 = self._first_t(), self._last_t
        info = self.store._complete_row(self.id, steps=self._steps.rows, frame_counts=counts,
                                        duration_s=float(t1 - t0), success=success)
        self._close(remove_lock=True)
        return info

    def discard(self) -> None:
        """Stop recording and drop the episode (its files are removed, the row says discarded)."""
        if not self._closed:
            self._stop_thread()
            self._close(remove_lock=True)
        self.store.discard(self.id)

    def abandon(self) -> None:
        """Stop recording and keep what was written as an incomplete, recoverable episode."""
        if self._closed:
            return
        self._stop_thread()
        try:
            for g in (self._steps, *self._frames.values()):
                g.sync()
        except OSError:
            pass
        self._close(remove_lock=False)
        try:
            self.store._mark_incomplete(self.id)
        except StoreError:
            pass  # the index could not be written (full disk): the next open marks it

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._closed:
            self.abandon()

    # -- internals ------------------------------------------------------------------------------

    def _vec(self, v, what: str) -> np.ndarray:
        a = np.asarray(v, dtype=np.float64)
        if a.shape != (self.dim,):
            raise ValueError(f"{what} has shape {a.shape}, expected ({self.dim},) for joints "
                             f"{', '.join(self.joint_names)}")
        return a

    def _first_t(self) -> float:
        from store.columns import column_path

        with open(column_path(self.folder, "steps", "t"), "rb") as f:
            return float(np.frombuffer(f.read(8), dtype="<f8")[0])

    def _check_open(self) -> None:
        if self._error is not None:
            if not self._closed:  # the recording stops here: keep what reached the disk
                self.abandon()
            raise self._error
        if self._closed:
            raise StoreError(f"episode {self.id} is no longer recording (finished, discarded or "
                             f"stopped); begin a new episode")

    def _flush_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._flush_s)
            self._wake.clear()
            try:
                self._steps.flush()
                for g in self._frames.values():
                    g.flush()
            except OSError as e:
                self._fail(e)
                return

    def _stop_thread(self) -> None:
        self._stop.set()
        self._wake.set()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _fail(self, e: OSError) -> StoreWriteError:
        """Stop the recording after a write error; keep what reached the disk as incomplete."""
        if self._error is None:
            if e.errno in DISK_FULL_ERRNOS:
                msg = (f"disk full while writing episode {self.id} to {self.folder}: free space, "
                       f"earlier episodes are intact")
            else:
                msg = (f"write error while writing episode {self.id} to {self.folder} ({e}): check "
                       f"the disk, earlier episodes are intact")
            self._error = StoreWriteError(msg)
            self._error.__cause__ = e
            self._stop.set()
        return self._error

    def _close(self, remove_lock: bool) -> None:
        self._closed = True
        for g in (self._steps, *self._frames.values()):
            g.close()
        self._lock.release(remove=remove_lock)


def check_camera_spec(name: str, spec) -> tuple[int, int, float]:
    check_name(name, "camera")
    try:
        w, h, fps = spec
        w, h, fps = int(w), int(h), float(fps)
    except (TypeError, ValueError):
        raise ValueError(f"camera {name!r}: give (width, height, fps), got {spec!r}") from None
    if w <= 0 or h <= 0 or fps <= 0:
        raise ValueError(f"camera {name!r}: width, height and fps must be positive, got {spec!r}")
    return w, h, fps
