"""The LeRobot dataset format, codebase version v3.0: its layout, its metadata files and its stats.

A v3.0 dataset folder:
    meta/info.json                      codebase_version, fps, totals, path templates, features
    meta/stats.json                     per feature: min, max, mean, std, count, q01 ... q99
    meta/tasks.parquet                  one row per task string (the pandas index) -> task_index
    meta/episodes/chunk-000/file-000.parquet
                                        one row per episode: its tasks, length, which data and
                                        video files hold it, from/to timestamps in each video,
                                        and its own stats as stats/<feature>/<stat> columns
    data/chunk-000/file-000.parquet     one row per frame: index, episode_index, frame_index,
                                        timestamp, task_index, observation.state, action, ...
    videos/<key>/chunk-000/file-000.mp4 several episodes one after the other in one file;
                                        an episode starts at its from_timestamp

Files roll over to file-001 ... when one grows past its size limit; a chunk holds `chunks_size`
files before the next chunk starts. Readers find every frame by time: frame i of an episode is
the video frame at from_timestamp + i / fps, within LeRobot's tolerance (1e-4 s by default).

Workstation metadata that the format has no field for travels in extra columns of the episodes
table, prefixed `xr0/` (source episode id, success, tags, rig, notes); LeRobot ignores them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000               # files per chunk folder
DATA_FILES_SIZE_IN_MB = 100      # a data parquet file rolls over past this size
VIDEO_FILES_SIZE_IN_MB = 200     # a video file rolls over past this size
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_PATH = "meta/episodes/" + CHUNK_FILE + ".parquet"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"

STATE = "observation.state"
ACTION = "action"
IMAGE_PREFIX = "observation.images."
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
# Columns every v3.0 frame row carries, besides the features of the robot.
FRAME_FEATURES = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
XR0 = "xr0/"   # prefix of the workstation's extra episode columns


class LeRobotFormatError(ValueError):
    """A folder is not a readable LeRobot v3.0 dataset, or cannot become one; the message says
    what to do."""


def next_file(chunk_index: int, file_index: int, chunks_size: int = CHUNKS_SIZE) -> tuple[int, int]:
    """The (chunk, file) after this one: a chunk holds `chunks_size` files."""
    if file_index == chunks_size - 1:
        return chunk_index + 1, 0
    return chunk_index, file_index + 1


def video_key(camera: str) -> str:
    return IMAGE_PREFIX + camera


def vector_feature(names: list[str], dtype: str = "float32") -> dict:
    return {"dtype": dtype, "shape": [len(names)], "names": list(names)}


def video_feature(width: int, height: int, fps: int, codec: str, pix_fmt: str) -> dict:
    return {
        "dtype": "video", "shape": [height, width, 3], "names": ["height", "width", "channels"],
        "info": {"video.height": height, "video.width": width, "video.codec": codec,
                 "video.pix_fmt": pix_fmt, "video.is_depth_map": False, "video.fps": fps,
                 "video.channels": 3, "has_audio": False},
    }


def make_info(*, robot_type: str | None, fps: int, features: dict, total_episodes: int,
              total_frames: int, total_tasks: int, chunks_size: int = CHUNKS_SIZE,
              data_files_size_in_mb: int = DATA_FILES_SIZE_IN_MB,
              video_files_size_in_mb: int = VIDEO_FILES_SIZE_IN_MB) -> dict:
    has_video = any(f["dtype"] == "video" for f in features.values())
    return {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": robot_type,
        "total_episodes": total_episodes,
        "total_frames": total_frames,
        "total_tasks": total_tasks,
        "chunks_size": chunks_size,
        "data_files_size_in_mb": data_files_size_in_mb,
        "video_files_size_in_mb": video_files_size_in_mb,
        "fps": fps,
        "splits": {"train": f"0:{total_episodes}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if has_video else None,
        "features": {**features, **FRAME_FEATURES},
    }


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=4, ensure_ascii=False) + "\n")


# -- statistics ---------------------------------------------------------------------------------

def vector_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """Stats of a (N, D) or (N,) array over its rows: each stat has shape (D,) or (1,)."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    out = {"min": a.min(0), "max": a.max(0), "mean": a.mean(0), "std": a.std(0),
           "count": np.array([a.shape[0]])}
    for k, q in QUANTILES.items():
        out[k] = np.quantile(a, q, axis=0)
    return out


def image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel stats of sampled (N, H, W, 3) uint8 frames, in [0, 1], each of shape (3, 1, 1);
    count is the number of frames sampled."""
    px = frames.reshape(-1, 3).astype(np.float64) / 255.0
    s = vector_stats(px)
    return {k: (np.array([frames.shape[0]]) if k == "count" else v.reshape(3, 1, 1))
            for k, v in s.items()}


def aggregate_stats(per_episode: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Dataset stats from episode stats: count-weighted mean, pooled variance (within plus between
    episodes), min of mins, max of maxes, count-weighted quantiles (an approximation, as LeRobot
    does it)."""
    counts = np.array([float(s["count"][0]) for s in per_episode])
    total = counts.sum()
    shape = (-1,) + (1,) * (per_episode[0]["mean"].ndim)
    w = (counts / total).reshape(shape)
    means = np.stack([s["mean"] for s in per_episode])
    mean = (w * means).sum(0)
    var = (w * (np.stack([s["std"] for s in per_episode]) ** 2 + (means - mean) ** 2)).sum(0)
    out = {"min": np.stack([s["min"] for s in per_episode]).min(0),
           "max": np.stack([s["max"] for s in per_episode]).max(0),
           "mean": mean, "std": np.sqrt(var), "count": np.array([int(total)])}
    for k in QUANTILES:
        out[k] = (w * np.stack([s[k] for s in per_episode])).sum(0)
    return out


def stats_json(stats: dict[str, dict[str, np.ndarray]]) -> dict:
    return {f: {k: np.asarray(v).tolist() for k, v in s.items()} for f, s in stats.items()}


# -- parquet ------------------------------------------------------------------------------------

def write_tasks(root: Path, tasks: list[str]) -> None:
    """meta/tasks.parquet as pandas writes a frame indexed by the task string: a `task_index`
    column, the strings in `__index_level_0__`, and the pandas metadata that restores the index
    (LeRobot looks tasks up by that index)."""
    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()),
                      "__index_level_0__": pa.array(tasks, pa.string())})
    pandas_meta = {
        "index_columns": ["__index_level_0__"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode",
                            "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
             "numpy_type": "int64", "metadata": None},
            {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode",
             "numpy_type": "object", "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    table = table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
    path = root / TASKS_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def read_tasks(root: Path) -> list[str]:
    """Task strings by task_index, whether the strings sit in the pandas index or a column."""
    table = pq.read_table(root / TASKS_PATH)
    names = [n for n in table.column_names if n != "task_index" and (
        pa.types.is_string(table.schema.field(n).type)
        or pa.types.is_large_string(table.schema.field(n).type))]
    if "task_index" not in table.column_names or not names:
        raise LeRobotFormatError(f"{root / TASKS_PATH} has no task strings and task_index column; "
                                 f"the dataset's metadata is damaged")
    idx = table.column("task_index").to_pylist()
    strings = table.column(names[0]).to_pylist()
    out = [""] * (max(idx) + 1 if idx else 0)
    for i, s in zip(idx, strings):
        out[i] = s
    return out


def frames_table(state: np.ndarray, action: np.ndarray, timestamp: np.ndarray,
                 frame_index: np.ndarray, episode_index: np.ndarray, index: np.ndarray,
                 task_index: np.ndarray) -> pa.Table:
    """Rows of data/*.parquet; vectors as fixed-size float32 lists (LeRobot's Sequence(length))."""
    def fixed(a: np.ndarray) -> pa.Array:
        a = np.ascontiguousarray(a, dtype=np.float32)
        return pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), a.shape[1])

    return pa.table({
        STATE: fixed(state), ACTION: fixed(action),
        "timestamp": pa.array(timestamp.astype(np.float32)),
        "frame_index": pa.array(frame_index.astype(np.int64)),
        "episode_index": pa.array(episode_index.astype(np.int64)),
        "index": pa.array(index.astype(np.int64)),
        "task_index": pa.array(task_index.astype(np.int64)),
    })
