"""`EpisodeStore`: the index (`DIR/index.db`, SQLite through sqlite-utils) and the episode folders.

    store = EpisodeStore.open("~/xr0-data")
    with store.begin_episode(task="fold the towel", rig="sim", control_hz=50,
                             joint_names=layout.NAMES, cameras={"top": (640, 480, 30)}) as w:
        ... w.add_step(t, state, action, leader, follower); w.add_frame_time("top", t) ...
        info = w.finish(success=True)
    store.episodes()            # complete episodes only
    data = store.episode(info.id)

The index runs in WAL mode with synchronous=FULL (commits are rare: one per episode), foreign keys
on. An episode row turns "complete" in one transaction after all its files are fsynced, so a reader
of complete episodes never sees a half-written one. Opening the store turns rows left "recording"
by a dead writer process into "incomplete" (see store.episode.WriterLock); `recover(id)` keeps what
survived, `discard(id)` drops it.
"""

from __future__ import annotations

import builtins
import json
import os
import shutil
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

import sqlite_utils

from store import columns as cols
from store.episode import (
    LOCK_FILE, EpisodeData, EpisodeInfo, EpisodeWriter, WriterLock, check_camera_spec,
)
from store.errors import (
    CorruptIndex, EpisodeNotFound, EpisodeUnreadable, StoreError, StoreNotWritable,
)
from store.schema import RUN_KINDS, STATUSES, migrate

INDEX = "index.db"
EPISODES = "episodes"


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class EpisodeStore:
    """The episode store at one folder. Use `EpisodeStore.open(dir)`. Safe to share between
    threads of one process (calls are serialised); several processes may open the same store."""

    def __init__(self, root: Path, db: sqlite_utils.Database):
        self.root = root
        self.db = db
        self.index_path = root / INDEX
        self._lock = threading.RLock()
        self._session_id: int | None = None
        self.recovered: list[int] = []  # episodes this open found dead and marked incomplete

    # -- opening --------------------------------------------------------------------------------

    @classmethod
    def open(cls, root: str | os.PathLike) -> EpisodeStore:
        root = Path(root).expanduser().absolute()
        _ensure_writable(root)
        index = root / INDEX
        # no header check with a file object of our own: closing any descriptor of the index
        # drops this process's SQLite locks on it (POSIX), and another process closing the store
        # then deletes the WAL under this process's open stores (disk I/O errors after)
        try:
            conn = sqlite3.connect(index, timeout=30, isolation_level=None,
                                   check_same_thread=False)
            db = sqlite_utils.Database(conn)
            conn.execute("PRAGMA foreign_keys = ON")
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                conn.close()
                raise CorruptIndex(_corrupt_message(index, check))
            from store.schema import version_of, SCHEMA_VERSION

            if version_of(db) > SCHEMA_VERSION:
                migrate(db, str(index))  # raises SchemaTooNew before anything is written
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            migrate(db, str(index))
        except sqlite3.DatabaseError as e:
            raise CorruptIndex(_corrupt_message(index, str(e))) from e
        store = cls(root, db)
        (root / EPISODES).mkdir(exist_ok=True)
        store._mark_dead_recordings()
        return store

    def close(self) -> None:
        with self._lock:
            self.db.conn.close()

    def __enter__(self) -> EpisodeStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- sessions and tasks ---------------------------------------------------------------------

    def begin_session(self, rig: str | None = None, notes: str = "") -> int:
        with self._tx():
            cur = self.db.conn.execute(
                "INSERT INTO sessions (started, rig, host, notes) VALUES (?, ?, ?, ?)",
                (_now_iso(), rig, socket.gethostname(), notes))
            self._session_id = cur.lastrowid
        return self._session_id

    def tasks(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self.db.execute("SELECT instruction FROM tasks ORDER BY id")]

    def _task_id(self, instruction: str) -> int:
        self.db.conn.execute("INSERT OR IGNORE INTO tasks (instruction) VALUES (?)", (instruction,))
        return self.db.conn.execute("SELECT id FROM tasks WHERE instruction = ?",
                                    (instruction,)).fetchone()[0]

    # -- recording ------------------------------------------------------------------------------

    def begin_episode(self, *, task: str, rig: str, control_hz: float,
                      joint_names: Sequence[str],
                      cameras: dict[str, tuple[int, int, float]] | None = None,
                      tags: Iterable[str] = (), extra_columns: dict[str, int] | None = None,
                      session_id: int | None = None, video_suffix: str = ".mp4",
                      flush_s: float = 1.0, opener=builtins.open) -> EpisodeWriter:
        """Start an episode (status "recording") and return its writer.

        joint_names: the names of the state/action dimensions (the rig's joint layout).
        cameras: name -> (width, height, fps); each gets a video file `camera_path(name)`.
        extra_columns: name -> width of further per-step columns (e.g. {"reward": 1}).
        opener: how column files are opened (the default `open`; a wrapper can inject faults).
        """
        task = (task or "").strip()
        if not task:
            raise ValueError("an episode needs a task instruction, e.g. --task 'fold the towel'")
        if control_hz <= 0:
            raise ValueError(f"control rate must be positive, got {control_hz} Hz")
        joint_names = tuple(str(n) for n in joint_names)
        if not joint_names:
            raise ValueError("joint_names is empty: pass the rig's joint layout names")
        cams = {n: check_camera_spec(n, s) for n, s in (cameras or {}).items()}
        extras = {cols.check_name(n, "extra column"): int(w)
                  for n, w in (extra_columns or {}).items()}
        for n, w in extras.items():
            if n in ("t", "state", "action", "leader", "follower") or w <= 0:
                raise ValueError(f"extra column {n!r} (width {w}) clashes with a step column "
                                 f"or has no width")
        tags = _tags(tags)
        videos = {n: f"{n}{video_suffix}" for n in cams}
        if session_id is None:
            session_id = self._session_id or self.begin_session(rig)
        with self._lock:
            conn = self.db.conn
            conn.execute("BEGIN IMMEDIATE")
            folder = None
            try:
                task_id = self._task_id(task)
                cur = conn.execute(
                    "INSERT INTO episodes (session_id, task_id, rig, control_hz, started, "
                    "frame_counts, videos, status, tags, folder) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, 'recording', ?, ?)",
                    (session_id, task_id, rig, float(control_hz), _now_iso(),
                     json.dumps({n: 0 for n in cams}), json.dumps(videos), json.dumps(tags),
                     f"pending-{uuid.uuid4().hex}"))
                eid = cur.lastrowid
                rel = f"{EPISODES}/{eid:06d}"
                conn.execute("UPDATE episodes SET folder = ? WHERE id = ?", (rel, eid))
                path = self.root / rel
                if path.exists():  # left by a recording that died before its row committed
                    path.rename(path.with_name(f"{path.name}.orphan-{uuid.uuid4().hex[:8]}"))
                path.mkdir(parents=True)
                folder = path
                lock = WriterLock(folder)
                lock.try_acquire()
                cols.write_manifest(folder, {
                    "joint_names": list(joint_names), "control_hz": float(control_hz),
                    "steps": {"t": 1, **{c: len(joint_names) for c in
                                         ("state", "action", "leader", "follower")}, **extras},
                    "cameras": {n: list(s) for n, s in cams.items()},
                })
                cols.fsync_dir(folder.parent)
                writer = EpisodeWriter(self, eid, folder, joint_names, cams, videos, extras, lock,
                                       flush_s=flush_s, opener=opener)
                conn.execute("COMMIT")
            except OSError as e:
                conn.execute("ROLLBACK")
                _remove_new_folder(folder)
                raise StoreNotWritable(
                    f"cannot start an episode in {self.root}: {e}. Free space or fix the "
                    f"folder's permissions; earlier episodes are intact") from e
            except BaseException:
                conn.execute("ROLLBACK")
                _remove_new_folder(folder)
                raise
        return writer

    def _complete_row(self, eid: int, *, steps: int, frame_counts: dict[str, int],
                      duration_s: float, success: bool | None) -> EpisodeInfo:
        with self._tx():
            self.db.conn.execute(
                "UPDATE episodes SET status = 'complete', ended = ?, steps = ?, frame_counts = ?, "
                "duration_s = ?, success = ? WHERE id = ?",
                (_now_iso(), steps, json.dumps(frame_counts), duration_s,
                 None if success is None else int(bool(success)), eid))
        return self.info(eid)

    def _mark_incomplete(self, eid: int) -> None:
        info = self.info(eid)
        if info.status != "recording":
            return
        steps, frames, duration = _surviving(info.folder)
        with self._tx():
            self.db.conn.execute(
                "UPDATE episodes SET status = 'incomplete', steps = ?, frame_counts = ?, "
                "duration_s = ? WHERE id = ? AND status = 'recording'",
                (steps, json.dumps(frames), duration, eid))

    def _mark_dead_recordings(self) -> None:
        with self._lock:
            rows = self.db.execute(
                "SELECT id, folder FROM episodes WHERE status = 'recording'").fetchall()
        for eid, rel in rows:
            folder = self.root / rel
            lock = WriterLock(folder)
            if folder.is_dir():
                try:
                    if not lock.try_acquire():
                        continue  # its writer is alive (another process or this one)
                except OSError:
                    continue
            try:
                self._mark_incomplete(eid)
                self.recovered.append(eid)
            finally:
                lock.release()

    # -- reading --------------------------------------------------------------------------------

    def episodes(self, status: str | Sequence[str] | None = "complete",
                 task: str | None = None) -> list[EpisodeInfo]:
        """Episodes by id. status: one status, several, or None for all (default: complete)."""
        where, params = [], []
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            for s in statuses:
                if s not in STATUSES:
                    raise ValueError(f"unknown episode status {s!r}: use one of "
                                     f"{', '.join(STATUSES)}")
            where.append(f"e.status IN ({', '.join('?' * len(statuses))})")
            params += statuses
        if task is not None:
            where.append("t.instruction = ?")
            params.append(task)
        sql = _EPISODE_SELECT + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY e.id"
        with self._lock:
            return [self._info_from_row(r) for r in self.db.execute(sql, params).fetchall()]

    def info(self, eid: int) -> EpisodeInfo:
        with self._lock:
            row = self.db.execute(_EPISODE_SELECT + " WHERE e.id = ?", [eid]).fetchone()
        if row is None:
            raise EpisodeNotFound(f"no episode {eid} in {self.root}: list them with "
                                  f"`python main.py episodes --store {self.root}`")
        return self._info_from_row(row)

    def episode(self, eid: int) -> EpisodeData:
        """The arrays of a complete (or incomplete: what survived) episode. Raises
        EpisodeUnreadable naming the reason when its files are missing or corrupt."""
        info = self.info(eid)
        if info.status == "discarded":
            raise EpisodeUnreadable(f"episode {eid} was discarded; its data was removed")
        exact = info.status == "complete"
        try:
            manifest = cols.read_manifest(info.folder)
            steps = cols.read_group(info.folder, "steps", manifest["steps"],
                                    info.steps if exact else None)
            frames = {}
            for cam in manifest["cameras"]:
                frames[cam] = cols.read_group(
                    info.folder, "frames", {cam: 1},
                    info.frame_counts.get(cam, 0) if exact else None)[cam]
                video = info.folder / info.videos[cam]
                if exact and (not video.is_file() or video.stat().st_size == 0):
                    raise ValueError(f"video {video} is missing or empty")
        except (ValueError, KeyError, OSError) as e:
            raise EpisodeUnreadable(
                f"episode {eid} is unreadable: {e}. Other episodes are not affected; restore "
                f"the file or delete the episode") from e
        extra = {k: v for k, v in steps.items() if k not in
                 ("t", "state", "action", "leader", "follower")}
        return EpisodeData(
            info=info, joint_names=tuple(manifest["joint_names"]),
            cameras={n: tuple(s) for n, s in manifest["cameras"].items()},
            t=steps["t"], state=steps["state"], action=steps["action"],
            leader=steps["leader"], follower=steps["follower"], extra=extra, frame_times=frames)

    def problem(self, eid: int) -> str | None:
        """None when the episode reads back, else the reason it does not."""
        try:
            self.episode(eid)
        except EpisodeUnreadable as e:
            return str(e)
        return None

    # -- editing --------------------------------------------------------------------------------

    def update(self, eid: int, *, success: bool | None | type(...) = ...,
               notes: str | None = None, tags: Iterable[str] | None = None) -> EpisodeInfo:
        """Mark success (True/False, None = not judged), replace notes or tags."""
        self.info(eid)
        sets, params = [], []
        if success is not ...:
            sets.append("success = ?")
            params.append(None if success is None else int(bool(success)))
        if notes is not None:
            sets.append("notes = ?")
            params.append(str(notes))
        if tags is not None:
            sets.append("tags = ?")
            params.append(json.dumps(_tags(tags)))
        if sets:
            with self._tx():
                self.db.conn.execute(f"UPDATE episodes SET {', '.join(sets)} WHERE id = ?",
                                     [*params, eid])
        return self.info(eid)

    def recover(self, eid: int) -> EpisodeInfo:
        """Make an incomplete episode complete with the rows that survived: every column is cut to
        the rows common to all of them and fsynced, then the row flips to complete."""
        info = self.info(eid)
        if info.status != "incomplete":
            raise StoreError(f"episode {eid} is {info.status}; only incomplete episodes can be "
                             f"recovered")
        try:
            manifest = cols.read_manifest(info.folder)
            steps = cols.read_group(info.folder, "steps", manifest["steps"])
        except (ValueError, OSError) as e:
            raise EpisodeUnreadable(f"episode {eid} cannot be recovered: {e}. Discard it") from e
        n = len(steps["t"])
        if n == 0:
            raise StoreError(f"episode {eid} has no surviving steps: nothing to recover. "
                             f"Discard it")
        for cam in manifest["cameras"]:
            video = info.folder / info.videos[cam]
            if not video.is_file() or video.stat().st_size == 0:
                raise EpisodeUnreadable(f"episode {eid} cannot be recovered: the video of camera "
                                        f"{cam!r} ({video}) is missing or empty. Discard it")
        counts = {}
        for cam in manifest["cameras"]:
            logged = len(cols.read_group(info.folder, "frames", {cam: 1})[cam])
            counts[cam] = min(logged, _decodable_frames(eid, cam, info.folder / info.videos[cam]))
        cols.truncate_group(info.folder, "steps", manifest["steps"], n)
        for cam, m in counts.items():
            cols.truncate_group(info.folder, "frames", {cam: 1}, m)
        cols.fsync_dir(info.folder)
        with self._tx():
            self.db.conn.execute(
                "UPDATE episodes SET status = 'complete', ended = COALESCE(ended, ?), steps = ?, "
                "frame_counts = ?, duration_s = ? WHERE id = ?",
                (_now_iso(), n, json.dumps(counts), float(steps["t"][-1] - steps["t"][0]), eid))
        (info.folder / LOCK_FILE).unlink(missing_ok=True)
        return self.info(eid)

    def discard(self, eid: int) -> None:
        """Drop an episode's data; its row stays, marked discarded. A recording in progress in
        another process cannot be discarded."""
        info = self.info(eid)
        if info.status == "recording" and self._writer_alive(info.folder):
            raise StoreError(f"episode {eid} is still being recorded; stop that recording first")
        with self._tx():
            self.db.conn.execute("UPDATE episodes SET status = 'discarded' WHERE id = ?", (eid,))
        shutil.rmtree(info.folder, ignore_errors=True)

    def delete(self, eid: int) -> None:
        """Remove an episode's files and its row."""
        info = self.info(eid)
        if info.status == "recording" and self._writer_alive(info.folder):
            raise StoreError(f"episode {eid} is still being recorded; stop that recording first")
        with self._tx():
            self.db.conn.execute("DELETE FROM episodes WHERE id = ?", (eid,))
        shutil.rmtree(info.folder, ignore_errors=True)

    # -- runs -----------------------------------------------------------------------------------

    def add_run(self, kind: str, config: dict, status: str = "created",
                paths: dict[str, str] | None = None) -> int:
        if kind not in RUN_KINDS:
            raise ValueError(f"unknown run kind {kind!r}: use one of {', '.join(RUN_KINDS)}")
        with self._tx():
            cur = self.db.conn.execute(
                "INSERT INTO runs (kind, config, status, paths, created) VALUES (?, ?, ?, ?, ?)",
                (kind, json.dumps(config), status, json.dumps(paths or {}), _now_iso()))
            return cur.lastrowid

    def update_run(self, run_id: int, *, status: str | None = None,
                   paths: dict[str, str] | None = None) -> None:
        with self._tx():
            if status is not None:
                self.db.conn.execute("UPDATE runs SET status = ? WHERE id = ?", (status, run_id))
            if paths is not None:
                self.db.conn.execute("UPDATE runs SET paths = ? WHERE id = ?",
                                     (json.dumps(paths), run_id))

    def runs(self, kind: str | None = None) -> list[dict]:
        with self._lock:
            rows = list(self.db["runs"].rows_where("kind = ?" if kind else None,
                                                   [kind] if kind else None, order_by="id"))
        for r in rows:
            r["config"] = json.loads(r["config"])
            r["paths"] = json.loads(r["paths"])
        return rows

    # -- internals ------------------------------------------------------------------------------

    def _tx(self):
        return _Transaction(self)

    def _writer_alive(self, folder: Path) -> bool:
        if not folder.is_dir():
            return False
        lock = WriterLock(folder)
        if lock.try_acquire():
            lock.release()
            return False
        return True

    def _info_from_row(self, r) -> EpisodeInfo:
        (eid, task, status, rig, hz, started, ended, duration, steps, counts, videos, success,
         notes, tags, folder, session_id) = r
        return EpisodeInfo(
            id=eid, task=task, status=status, rig=rig, control_hz=hz, started=started,
            ended=ended, duration_s=duration, steps=steps, frame_counts=json.loads(counts),
            videos=json.loads(videos), success=None if success is None else bool(success),
            notes=notes, tags=json.loads(tags), folder=self.root / folder, session_id=session_id)


_EPISODE_SELECT = (
    "SELECT e.id, t.instruction, e.status, e.rig, e.control_hz, e.started, e.ended, e.duration_s, "
    "e.steps, e.frame_counts, e.videos, e.success, e.notes, e.tags, e.folder, e.session_id "
    "FROM episodes e JOIN tasks t ON t.id = e.task_id"
)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT under the store's lock; sqlite errors become StoreError."""

    def __init__(self, store: EpisodeStore):
        self.store = store

    def __enter__(self):
        self.store._lock.acquire()
        try:
            self.store.db.conn.execute("BEGIN IMMEDIATE")
        except BaseException as e:
            self.store._lock.release()
            raise _db_error(self.store, e) from e

    def __exit__(self, exc_type, exc, tb):
        conn = self.store.db.conn
        try:
            if exc_type is None:
                conn.execute("COMMIT")
            else:
                conn.execute("ROLLBACK")
        except sqlite3.Error as e:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise _db_error(self.store, e) from e
        finally:
            self.store._lock.release()
        if isinstance(exc, sqlite3.Error):
            raise _db_error(self.store, exc) from exc
        return False


def _db_error(store: EpisodeStore, e: BaseException) -> BaseException:
    if not isinstance(e, sqlite3.Error):
        return e
    if "full" in str(e).lower():
        return StoreError(f"disk full while writing the episode index {store.index_path}: free "
                          f"space, earlier episodes are intact")
    return StoreError(f"could not write the episode index {store.index_path}: {e}")


def _remove_new_folder(folder: Path | None) -> None:
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def _tags(tags: Iterable[str]) -> list[str]:
    if isinstance(tags, str):
        tags = [tags]
    out = []
    for t in tags:
        t = str(t).strip()
        if t and t not in out:
            out.append(t)
    return out


def _surviving(folder: Path) -> tuple[int, dict[str, int], float | None]:
    """Steps and frames that reached the disk in a folder of a dead recording."""
    try:
        manifest = cols.read_manifest(folder)
        steps = cols.read_group(folder, "steps", manifest["steps"])
        frames = {c: len(cols.read_group(folder, "frames", {c: 1})[c])
                  for c in manifest["cameras"]}
    except (ValueError, OSError, KeyError):
        return 0, {}, None
    t = steps["t"]
    return len(t), frames, (float(t[-1] - t[0]) if len(t) else None)


def _decodable_frames(eid: int, camera: str, video: Path) -> int:
    """Frames a killed recording's video really holds. The video and its frame-time log are
    written by different threads, so either may be ahead: the fragmented MP4 loses its last
    unfinished fragment (up to one GOP plus the encoder look-ahead), the time log its last
    unflushed rows. Recovery keeps the frames present in both."""
    from store.video import VideoError, VideoReader

    try:
        with VideoReader(video) as r:
            return r.frame_count
    except VideoError as e:
        raise EpisodeUnreadable(f"episode {eid} cannot be recovered: the video of camera "
                                f"{camera!r} does not decode ({e}). Discard it") from e


def _ensure_writable(root: Path) -> None:
    fix = ("choose a writable folder (--store DIR) or fix its permissions "
           f"(e.g. `chown -R $USER {root}`)")
    if root.exists() and not root.is_dir():
        raise StoreNotWritable(f"episode store {root} is not a folder; {fix}")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreNotWritable(f"cannot create the episode store {root}: "
                               f"{e.strerror or e}; {fix}") from e
    probe = root / f".write-probe-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"x")
        probe.unlink()
    except OSError as e:
        raise StoreNotWritable(f"episode store {root} is not writable: "
                               f"{e.strerror or e}; {fix}") from e


def _corrupt_message(index: Path, why: str) -> str:
    return (f"{index} is not a readable XR0 episode index ({why}); nothing was changed. Move it "
            f"aside (`mv {index} {index}.bad`) and open the store again to start a fresh index; "
            f"the episode folders under {index.parent / EPISODES} stay on disk")
