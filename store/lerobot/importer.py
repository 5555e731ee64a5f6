"""Import a LeRobot v3.0 dataset into the store: each dataset episode becomes a complete episode.

Rows become control steps (t = the row's timestamp, control rate = the dataset fps); each video
key becomes a camera whose frames (one per row, taken from the dataset's video at the episode's
from_timestamp + row timestamp) are re-encoded into the episode's own mp4 with the row times as
frame times. The task string becomes the instruction; success, tags and notes come back from the
`xr0/` episode columns when the dataset was exported by the workstation.

Everything is checked before the store is touched (`read_dataset`): a folder that is not a
dataset, another codebase version, missing data or video files. An error while writing removes
the episodes this import had written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from store.lerobot import format as fmt
from store.lerobot.format import LeRobotFormatError
from store.lerobot.video import frames_at
from store.video import VideoWriter

Event = Callable[[dict], None]


@dataclass
class LeRobotDatasetFiles:
    """A checked v3.0 dataset on disk: its metadata, frame rows and episode table."""

    root: Path
    info: dict
    tasks: list[str]
    episodes: list[dict]          # rows of meta/episodes, by episode_index
    frames: pa.Table              # every data row, sorted by index
    joint_names: tuple[str, ...]
    cameras: dict[str, str]       # camera name in the store -> video key

    @property
    def fps(self) -> int:
        return int(self.info["fps"])

    def video_path(self, episode: dict, key: str) -> Path:
        return self.root / self.info["video_path"].format(
            video_key=key, chunk_index=episode[f"videos/{key}/chunk_index"],
            file_index=episode[f"videos/{key}/file_index"])


def read_dataset(root: str | Path) -> LeRobotDatasetFiles:
    """Open and check a LeRobot v3.0 dataset folder; raises LeRobotFormatError with the fix."""
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise LeRobotFormatError(f"{root} is not a folder: give --lerobot the dataset's root "
                                 f"folder (the one holding meta/info.json)")
    info_path = root / fmt.INFO_PATH
    if not info_path.is_file():
        raise LeRobotFormatError(f"{root} is not a LeRobot dataset: it has no {fmt.INFO_PATH}. "
                                 f"Give --lerobot the dataset's root folder")
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError) as e:
        raise LeRobotFormatError(f"{info_path} is not readable JSON ({e}): the dataset's "
                                 f"metadata is damaged; download or export it again") from e
    version = info.get("codebase_version")
    if version != fmt.CODEBASE_VERSION:
        raise LeRobotFormatError(
            f"{root} is a LeRobot dataset of codebase version {version!r}; only "
            f"{fmt.CODEBASE_VERSION} is read. Convert it with LeRobot first (`python -m "
            f"lerobot.datasets.v30.convert_dataset_v21_to_v30 --repo-id=...` for v2.1)")
    feats = info.get("features", {})
    for key in (fmt.STATE, fmt.ACTION):
        if key not in feats:
            raise LeRobotFormatError(f"{root} has no {key!r} feature; the store needs both "
                                     f"observation.state and action")
    if feats[fmt.STATE]["shape"] != feats[fmt.ACTION]["shape"]:
        raise LeRobotFormatError(
            f"{root}: observation.state has shape {feats[fmt.STATE]['shape']} but action has "
            f"{feats[fmt.ACTION]['shape']}; the store keeps state and action over one joint layout")
    joints = _names(feats[fmt.STATE])
    cameras: dict[str, str] = {}
    for key, f in feats.items():
        if f.get("dtype") == "video":
            cam = re.sub(r"[^A-Za-z0-9_-]", "_", key.removeprefix(fmt.IMAGE_PREFIX))[:64]
            cameras[cam] = key
        elif f.get("dtype") == "image":
            raise LeRobotFormatError(f"{root}: feature {key!r} stores images as PNG frames; only "
                                     f"video features are imported. Re-encode the dataset with "
                                     f"videos in LeRobot first")
    try:
        tasks = fmt.read_tasks(root)
        ep_files = sorted((root / "meta" / "episodes").glob("*/*.parquet"))
        data_files = sorted((root / "data").glob("*/*.parquet"))
        if not ep_files or not data_files:
            raise LeRobotFormatError(f"{root} has no episode table (meta/episodes/) or no data "
                                     f"files (data/): the dataset is incomplete; download or "
                                     f"export it again")
        episodes = pa.concat_tables(
            [pq.read_table(p).select([c for c in pq.read_schema(p).names
                                      if not c.startswith("stats/")]) for p in ep_files],
            promote_options="default").to_pylist()
        cols = [fmt.STATE, fmt.ACTION, "timestamp", "frame_index", "episode_index", "index",
                "task_index"]
        frames = pa.concat_tables([pq.read_table(p, columns=cols) for p in data_files])
    except (OSError, pa.ArrowException, KeyError) as e:
        raise LeRobotFormatError(f"{root}: the dataset's parquet files are unreadable ({e}); "
                                 f"download or export it again") from e
    frames = frames.sort_by("index")
    episodes.sort(key=lambda e: e["episode_index"])
    ds = LeRobotDatasetFiles(root, info, tasks, episodes, frames, joints, cameras)
    missing = [str(ds.video_path(e, key)) for e in episodes for key in cameras.values()
               if not ds.video_path(e, key).is_file()]
    if missing:
        raise LeRobotFormatError(f"{root} lacks video files: {', '.join(sorted(set(missing)))}; "
                                 f"download the dataset with its videos")
    return ds


def _names(feature: dict) -> tuple[str, ...]:
    names = feature.get("names")
    if isinstance(names, dict):  # older datasets: {"motors": [...]}
        names = next(iter(names.values()), None)
    n = int(feature["shape"][0])
    if not names or len(names) != n:
        return tuple(f"joint_{i}" for i in range(n))
    return tuple(str(x) for x in names)


def import_dataset(ds: LeRobotDatasetFiles, store, on_event: Event | None = None,
                   quality: str = "high") -> list[int]:
    """Write every episode of a checked dataset into `store`; returns the new episode ids."""
    emit = on_event or (lambda e: None)
    ep_index = ds.frames.column("episode_index").to_numpy()
    written: list[int] = []
    emit({"event": "start", "episodes": len(ds.episodes), "fps": ds.fps,
          "cameras": list(ds.cameras)})
    try:
        for done, ep in enumerate(ds.episodes, 1):
            sel = np.flatnonzero(ep_index == ep["episode_index"])
            if len(sel) != ep["length"]:
                raise LeRobotFormatError(
                    f"{ds.root}: episode {ep['episode_index']} should have {ep['length']} rows "
                    f"but the data files hold {len(sel)}; the dataset is damaged")
            rows = ds.frames.take(pa.array(sel))
            written.append(_import_episode(ds, ep, rows, store, quality))
            emit({"event": "episode", "episode_index": ep["episode_index"],
                  "episode": written[-1], "frames": len(sel), "done": done,
                  "total": len(ds.episodes)})
    except BaseException:
        for eid in written:
            store.delete(eid)
        raise
    emit({"event": "done", "episodes": written})
    return written


def _import_episode(ds: LeRobotDatasetFiles, ep: dict, rows: pa.Table, store, quality) -> int:
    order = np.argsort(rows.column("frame_index").to_numpy(), kind="stable")
    t = rows.column("timestamp").to_numpy().astype(np.float64)[order]
    if len(t) == 0 or np.any(np.diff(t) <= 0):
        raise LeRobotFormatError(f"{ds.root}: episode {ep['episode_index']} has no rows or its "
                                 f"timestamps do not increase; the dataset is damaged")
    state = np.stack(rows.column(fmt.STATE).to_numpy(zero_copy_only=False))[order]
    action = np.stack(rows.column(fmt.ACTION).to_numpy(zero_copy_only=False))[order]
    task_idx = int(rows.column("task_index")[int(order[0])].as_py())
    task = ds.tasks[task_idx] if 0 <= task_idx < len(ds.tasks) else (ep.get("tasks") or ["?"])[0]
    feats = ds.info["features"]
    cams = {cam: (int(feats[k]["shape"][1]), int(feats[k]["shape"][0]), float(ds.fps))
            for cam, k in ds.cameras.items()}
    tags = list(ep.get(fmt.XR0 + "tags") or [])
    writer = store.begin_episode(task=task, rig=ds.info.get("robot_type") or "lerobot",
                                 control_hz=float(ds.fps), joint_names=ds.joint_names,
                                 cameras=cams, tags=tags)
    try:
        for i in range(len(t)):
            writer.add_step(float(t[i]), state[i], action[i])
        for cam, key in ds.cameras.items():
            w, h, _ = cams[cam]
            start = float(ep[f"videos/{key}/from_timestamp"])
            with VideoWriter(writer.camera_path(cam), w, h, ds.fps, quality=quality) as vw:
                for ti, img in zip(t, frames_at(ds.video_path(ep, key), start + t,
                                                tolerance_s=0.5 / ds.fps)):
                    vw.write(img, float(ti))
                    writer.add_frame_time(cam, float(ti))
        info = writer.finish(success=ep.get(fmt.XR0 + "success"))
    except BaseException:
        writer.discard()
        store.delete(writer.id)
        raise
    notes = ep.get(fmt.XR0 + "notes")
    if notes:
        store.update(info.id, notes=notes)
    return info.id
