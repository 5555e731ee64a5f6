"""Export episodes of the store as a LeRobot v3.0 dataset.

Rate: LeRobot keeps one row per frame at one fps, while the store keeps control steps at the
control rate (50 Hz) and each camera at its own rate (30 fps) with its own timestamps. The dataset
fps defaults to the control rate: every recorded state/action row is exported exactly once (no
action is dropped or invented, and a policy trained on the export acts at the rate the robot is
driven), and each camera is re-encoded at that rate with, for each row, the latest frame taken at
or before the row's time (a repeated frame costs almost nothing once encoded). With another
`fps`, rows are laid on a grid t0 + k / fps and take the latest step at or before each grid time.

Writing happens in a hidden folder beside `out`, renamed to `out` when complete, so a failed
export leaves nothing behind.
"""

from __future__ import annotations

import math
import shutil
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from store.lerobot import format as fmt
from store.lerobot.format import LeRobotFormatError
from store.lerobot.video import RateVideoFile
from store.video import VideoReader

Event = Callable[[dict], None]
IMAGE_STATS_FRAMES = 100     # frames per episode sampled for the image stats
IMAGE_STATS_MAX_SIDE = 300   # sampled frames are subsampled below this size


@dataclass
class ExportResult:
    out: Path
    episodes: list[int]           # store episode ids, in dataset episode order
    frames: int                   # dataset rows
    fps: int
    video_files: dict[str, int] = field(default_factory=dict)  # video key -> files written


def rows_for(t: np.ndarray, control_hz: float, fps: int) -> tuple[np.ndarray, np.ndarray]:
    """(row times, step index of each row): the steps themselves when fps is the control rate,
    else a grid t0 + k / fps with the latest step at or before each grid time."""
    if abs(control_hz - fps) < 1e-6:
        return t.copy(), np.arange(len(t))
    n = int(math.floor((t[-1] - t[0]) * fps + 1e-9)) + 1
    grid = t[0] + np.arange(n) / fps
    return grid, np.clip(np.searchsorted(t, grid, side="right") - 1, 0, len(t) - 1)


def latest_frame(frame_times: np.ndarray, row_t: np.ndarray) -> np.ndarray:
    """Index of the latest frame taken at or before each row time (the first frame for rows
    before it)."""
    return np.clip(np.searchsorted(frame_times, row_t, side="right") - 1, 0, len(frame_times) - 1)


def export_dataset(store, out: str | Path, episodes: Iterable[int] | None = None,
                   repo_id: str = "local/xr0", fps: float | None = None, vcodec: str = "av1",
                   on_event: Event | None = None,
                   video_files_size_in_mb: int = fmt.VIDEO_FILES_SIZE_IN_MB,
                   data_files_size_in_mb: int = fmt.DATA_FILES_SIZE_IN_MB) -> ExportResult:
    """Write the complete episodes `episodes` (store ids; default all) of `store` to `out`."""
    emit = on_event or (lambda e: None)
    out = Path(out).expanduser().absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LeRobotFormatError(f"{out} already exists and is not empty: export into a new or "
                                 f"empty folder (LeRobot datasets are not merged in place)")
    infos = _choose(store, episodes)
    first = store.episode(infos[0].id)
    joints, cams = first.joint_names, first.cameras
    for info in infos[1:]:
        d = store.episode(info.id)
        if d.joint_names != joints or {c: s[:2] for c, s in d.cameras.items()} != {
                c: s[:2] for c, s in cams.items()}:
            raise LeRobotFormatError(
                f"episode {info.id} has other joints or cameras than episode {infos[0].id}: a "
                f"LeRobot dataset has one shape per feature. Export them separately with "
                f"--episodes")
    rate = _fps(infos, fps)
    stage = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    stage.mkdir(parents=True)
    try:
        result = _write(store, stage, infos, joints, cams, rate, repo_id, vcodec, emit,
                        video_files_size_in_mb, data_files_size_in_mb)
        if out.exists():
            out.rmdir()
        stage.rename(out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    result.out = out
    emit({"event": "done", "out": str(out), "episodes": len(infos), "frames": result.frames,
          "fps": rate})
    return result


def _choose(store, episodes):
    complete = store.episodes(status="complete")
    if not complete:
        raise LeRobotFormatError(f"the store {store.root} has no complete episodes to export: "
                                 f"record some first (`python main.py record`)")
    if episodes is None:
        return complete
    by_id = {e.id: e for e in complete}
    wanted = list(dict.fromkeys(int(i) for i in episodes))
    missing = [i for i in wanted if i not in by_id]
    if missing:
        raise LeRobotFormatError(
            f"episodes {', '.join(map(str, missing))} are not complete episodes of {store.root}; "
            f"complete ones: {', '.join(map(str, sorted(by_id)))} (see `python main.py episodes "
            f"--store {store.root}`)")
    return [by_id[i] for i in wanted]


def _fps(infos, fps) -> int:
    if fps is None:
        rates = {float(e.control_hz) for e in infos}
        if len(rates) > 1:
            raise LeRobotFormatError(f"the episodes were recorded at different control rates "
                                     f"({', '.join(f'{r:g}' for r in sorted(rates))} Hz): choose "
                                     f"the dataset rate with --fps")
        fps = rates.pop()
    if fps <= 0 or abs(fps - round(fps)) > 1e-6:
        raise LeRobotFormatError(f"a LeRobot dataset needs a whole number of frames per second, "
                                 f"got {fps:g}: pass --fps with a whole number (e.g. --fps 50)")
    return int(round(fps))


class _Files:
    """The (chunk, file) a kind of file is being written to, rolled over by size."""

    def __init__(self, limit_mb: float):
        self.chunk, self.file, self.limit_mb = 0, 0, limit_mb

    def roll(self) -> None:
        self.chunk, self.file = fmt.next_file(self.chunk, self.file)


def _write(store, root: Path, infos, joints, cams, fps, repo_id, vcodec, emit,
           video_mb, data_mb) -> ExportResult:
    tasks: list[str] = []
    keys = {c: fmt.video_key(c) for c in cams}
    videos: dict[str, RateVideoFile] = {}
    vpos = {k: _Files(video_mb) for k in keys.values()}
    dpos = _Files(data_mb)
    data_rows: list[pa.Table] = []
    data_bytes = 0
    episode_rows: list[dict] = []
    ep_stats: list[dict] = []
    all_state, all_action = [], []
    index = 0
    files_written = {k: 0 for k in keys.values()}
    emit({"event": "start", "episodes": len(infos), "fps": fps, "cameras": list(cams),
          "repo_id": repo_id})

    def flush_data():
        nonlocal data_rows, data_bytes
        if data_rows:
            path = root / fmt.DATA_PATH.format(chunk_index=dpos.chunk, file_index=dpos.file)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.concat_tables(data_rows), path)
            data_rows, data_bytes = [], 0
            dpos.roll()

    for k, info in enumerate(infos):
        d = store.episode(info.id)
        row_t, step = rows_for(d.t, float(info.control_hz), fps)
        n = len(row_t)
        if info.task not in tasks:
            tasks.append(info.task)
        task_index = tasks.index(info.task)
        state = d.state[step].astype(np.float32)
        action = d.action[step].astype(np.float32)
        ts = np.arange(n) / fps
        table = fmt.frames_table(state, action, ts, np.arange(n), np.full(n, k),
                                 index + np.arange(n), np.full(n, task_index))
        if data_rows and data_bytes + table.nbytes > data_mb * 1e6:
            flush_data()
        row = {"episode_index": k, "tasks": [info.task], "length": n,
               "data/chunk_index": dpos.chunk, "data/file_index": dpos.file,
               "dataset_from_index": index, "dataset_to_index": index + n}
        data_rows.append(table)
        data_bytes += table.nbytes
        stats = {fmt.STATE: fmt.vector_stats(state), fmt.ACTION: fmt.vector_stats(action),
                 "timestamp": fmt.vector_stats(ts.astype(np.float32)),
                 "frame_index": fmt.vector_stats(np.arange(n)),
                 "episode_index": fmt.vector_stats(np.full(n, k)),
                 "index": fmt.vector_stats(index + np.arange(n)),
                 "task_index": fmt.vector_stats(np.full(n, task_index))}
        for cam, key in keys.items():
            w, h, _ = cams[cam]
            v = videos.get(key)
            if v is not None and v.frames and v.size_mb() >= video_mb:
                v.close()
                vpos[key].roll()
                v = None
            if v is None:
                path = root / fmt.VIDEO_PATH.format(video_key=key, chunk_index=vpos[key].chunk,
                                                    file_index=vpos[key].file)
                v = videos[key] = RateVideoFile(path, w, h, fps, vcodec)
                files_written[key] += 1
            start = v.duration_s
            src = latest_frame(d.frame_times[cam], row_t)
            sample = set(np.linspace(0, n - 1, min(n, IMAGE_STATS_FRAMES)).round().astype(int))
            sampled = []
            with VideoReader(d.video_path(cam)) as reader:
                if len(reader) != len(d.frame_times[cam]):
                    raise LeRobotFormatError(
                        f"episode {info.id}: camera {cam!r} has {len(d.frame_times[cam])} frame "
                        f"times but its video holds {len(reader)} frames; the episode is damaged, "
                        f"leave it out with --episodes")
                for i, j in enumerate(src):
                    img = reader.frame(int(j))
                    v.write(img)
                    if i in sample:
                        step_px = max(1, math.ceil(max(img.shape[:2]) / IMAGE_STATS_MAX_SIDE))
                        sampled.append(img[::step_px, ::step_px])
            stats[key] = fmt.image_stats(np.stack(sampled))
            row.update({f"videos/{key}/chunk_index": vpos[key].chunk,
                        f"videos/{key}/file_index": vpos[key].file,
                        f"videos/{key}/from_timestamp": start,
                        f"videos/{key}/to_timestamp": v.duration_s})
        row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        for feat, s in stats.items():
            for name, value in s.items():
                row[f"stats/{feat}/{name}"] = np.asarray(value).tolist()
        row.update({fmt.XR0 + "episode_id": info.id, fmt.XR0 + "success": info.success,
                    fmt.XR0 + "tags": list(info.tags), fmt.XR0 + "rig": info.rig,
                    fmt.XR0 + "notes": info.notes})
        episode_rows.append(row)
        ep_stats.append(stats)
        all_state.append(state)
        all_action.append(action)
        index += n
        emit({"event": "episode", "episode": info.id, "episode_index": k, "frames": n,
              "done": k + 1, "total": len(infos)})
    flush_data()
    for v in videos.values():
        v.close()

    features = {fmt.ACTION: fmt.vector_feature(list(joints)),
                fmt.STATE: fmt.vector_feature(list(joints))}
    for cam, key in keys.items():
        w, h, _ = cams[cam]
        v = videos[key]
        features[key] = fmt.video_feature(w, h, fps, v.codec, v.pix_fmt)
    dataset_stats = {f: fmt.aggregate_stats([s[f] for s in ep_stats]) for f in ep_stats[0]}
    # state and action: exact stats over every row instead of the per-episode approximation
    dataset_stats[fmt.STATE] = fmt.vector_stats(np.concatenate(all_state))
    dataset_stats[fmt.ACTION] = fmt.vector_stats(np.concatenate(all_action))
    rigs = {e.rig for e in infos}
    info_json = fmt.make_info(robot_type=rigs.pop() if len(rigs) == 1 else None, fps=fps,
                              features=features, total_episodes=len(infos), total_frames=index,
                              total_tasks=len(tasks), data_files_size_in_mb=data_mb,
                              video_files_size_in_mb=video_mb)
    fmt.write_json(root / fmt.INFO_PATH, info_json)
    fmt.write_json(root / fmt.STATS_PATH, fmt.stats_json(dataset_stats))
    fmt.write_tasks(root, tasks)
    path = root / fmt.EPISODES_PATH.format(chunk_index=0, file_index=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(_episodes_table(episode_rows), path)
    return ExportResult(out=root, episodes=[e.id for e in infos], frames=index, fps=fps,
                        video_files=files_written)


_XR0_TYPES = {"episode_id": pa.int64(), "success": pa.bool_(), "tags": pa.list_(pa.string()),
              "rig": pa.string(), "notes": pa.string()}


def _episodes_table(rows: list[dict]) -> pa.Table:
    """meta/episodes rows; the xr0/ columns typed explicitly so that a column that is empty in
    every episode (no success judged, no tags) still has its type."""
    table = pa.Table.from_pylist(rows)
    for name, typ in _XR0_TYPES.items():
        i = table.schema.get_field_index(fmt.XR0 + name)
        table = table.set_column(i, fmt.XR0 + name, table.column(i).cast(typ))
    return table
