"""LeRobot v3.0 export and import on a real store with real videos.

The layout is checked against the v3.0 format's facts (paths, info.json keys, episode columns,
frame columns, video timing), written out here rather than taken from the exporter's constants.
The store: steps at 50 Hz with clock jitter, two cameras at 30 fps on their own clock, frames
whose brightness encodes their index (so a wrong frame shows even after lossy video).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from store import EpisodeStore
from store.lerobot import LeRobotFormatError, export_dataset, import_dataset, read_dataset
from store.video import VideoReader, VideoWriter

JOINTS = tuple(f"{side}_{j}" for side in ("left", "right") for j in
               ("waist", "shoulder", "elbow", "forearm", "wrist_angle", "wrist_rotate", "gripper"))
CAMS = {"top": (96, 64, 30.0), "left_wrist": (64, 64, 30.0)}
TASKS = ("fold the towel", "pick up the cube")


def frame_image(cam: str, k: int, w: int, h: int) -> np.ndarray:
    """Smooth image whose brightness encodes the frame number (survives lossy video)."""
    y, x = np.mgrid[0:h, 0:w]
    base = (k * 7) % 200 + 20
    img = np.empty((h, w, 3), np.uint8)
    img[..., 0] = base
    img[..., 1] = (x * 255 // max(1, w - 1))
    img[..., 2] = (y * 255 // max(1, h - 1)) // 2 + (40 if cam == "top" else 100)
    return img


def make_store(root, episodes=((0, 1.2), (1, 0.9), (0, 1.0)), seed=0) -> EpisodeStore:
    """episodes: (task number, seconds) each; returns the open store."""
    rng = np.random.default_rng(seed)
    store = EpisodeStore.open(root)
    for n, (task, secs) in enumerate(episodes):
        t0 = 100.0 + 10 * n
        steps = int(secs * 50)
        t = t0 + np.arange(steps) / 50 + rng.uniform(0, 0.002, steps)
        w = store.begin_episode(task=TASKS[task], rig="sim", control_hz=50, joint_names=JOINTS,
                                cameras=CAMS, tags=["demo", f"n{n}"])
        for i, ti in enumerate(t):
            w.add_step(float(ti), np.sin(ti + np.arange(14)), np.cos(ti + np.arange(14)))
        for cam, (cw, ch, fps) in CAMS.items():
            # cameras start a little after the first step and run on their own clock
            ft = t0 + 0.011 + np.arange(int(secs * fps) - 1) / fps + rng.uniform(0, 0.003)
            with VideoWriter(w.camera_path(cam), cw, ch, fps, quality="high") as vw:
                for k, tk in enumerate(ft):
                    vw.write(frame_image(cam, k, cw, ch), float(tk))
                    w.add_frame_time(cam, float(tk))
        w.finish(success=(n % 2 == 0) if n < 2 else None)
    return store


KEYS = [f"observation.images.{c}" for c in CAMS]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("lerobot")
    store = make_store(root / "store")
    events = []
    result = export_dataset(store, root / "out", repo_id="local/test", on_event=events.append)
    yield store, root / "out", result, events
    store.close()


def psnr(a, b) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def test_layout_and_info(exported):
    store, out, result, events = exported
    info = json.loads((out / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    for k in ("robot_type", "fps", "total_episodes", "total_frames", "total_tasks", "chunks_size",
              "data_files_size_in_mb", "video_files_size_in_mb", "data_path", "video_path",
              "features", "splits"):
        assert k in info, k
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == \
        "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    eps = store.episodes()
    assert info["fps"] == 50 and info["robot_type"] == "sim"
    assert info["total_episodes"] == len(eps) == 3
    assert info["total_frames"] == sum(e.steps for e in eps) == result.frames
    assert info["total_tasks"] == 2
    f = info["features"]
    for k in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert f[k]["shape"] == [1]
    assert f["observation.state"] == {"dtype": "float32", "shape": [14], "names": list(JOINTS)}
    assert f["action"]["names"] == list(JOINTS)
    for cam, (w, h, _) in CAMS.items():
        v = f[f"observation.images.{cam}"]
        assert v["dtype"] == "video" and v["shape"] == [h, w, 3]
        assert v["info"]["video.fps"] == 50 and v["info"]["video.codec"] == "av1"
    assert (out / "meta/tasks.parquet").is_file()
    assert (out / "data/chunk-000/file-000.parquet").is_file()
    assert (out / "meta/episodes/chunk-000/file-000.parquet").is_file()
    for key in KEYS:
        assert (out / f"videos/{key}/chunk-000/file-000.mp4").is_file()
    assert [e["event"] for e in events] == ["start", "episode", "episode", "episode", "done"]
    assert not list(out.parent.glob(".out.partial-*"))


def test_frames_parquet_rows(exported):
    store, out, result, _ = exported
    rows = pq.read_table(out / "data/chunk-000/file-000.parquet").to_pydict()
    assert set(rows) >= {"index", "episode_index", "frame_index", "timestamp", "task_index",
                         "observation.state", "action"}
    assert rows["index"] == list(range(result.frames))
    start = 0
    for k, e in enumerate(store.episodes()):
        d = store.episode(e.id)
        sl = slice(start, start + e.steps)
        assert rows["episode_index"][sl] == [k] * e.steps
        assert rows["frame_index"][sl] == list(range(e.steps))
        np.testing.assert_allclose(rows["timestamp"][sl], np.arange(e.steps) / 50, atol=1e-6)
        np.testing.assert_array_equal(np.array(rows["observation.state"][sl], np.float32),
                                      d.state.astype(np.float32))
        np.testing.assert_array_equal(np.array(rows["action"][sl], np.float32),
                                      d.action.astype(np.float32))
        start += e.steps
    tasks = pq.read_table(out / "meta/tasks.parquet").to_pydict()
    assert tasks["task_index"] == [0, 1]
    assert tasks["__index_level_0__"] == [TASKS[0], TASKS[1]]
    schema = pq.read_schema(out / "meta/tasks.parquet")
    assert json.loads(schema.metadata[b"pandas"])["index_columns"] == ["__index_level_0__"]


def test_episodes_table_and_concatenated_videos(exported):
    store, out, result, _ = exported
    eps = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    infos = store.episodes()
    assert [e["episode_index"] for e in eps] == [0, 1, 2]
    to = 0
    for e, info in zip(eps, infos):
        assert e["tasks"] == [info.task] and e["length"] == info.steps
        assert e["data/chunk_index"] == 0 and e["data/file_index"] == 0
        assert (e["dataset_from_index"], e["dataset_to_index"]) == (to, to + info.steps)
        assert e["xr0/episode_id"] == info.id and e["xr0/success"] == info.success
        assert e["xr0/tags"] == info.tags
        for key in KEYS:
            # several episodes in one file, one after the other, addressed by from/to timestamps
            assert e[f"videos/{key}/file_index"] == 0
            assert e[f"videos/{key}/from_timestamp"] == pytest.approx(to / 50)
            assert e[f"videos/{key}/to_timestamp"] == pytest.approx((to + info.steps) / 50)
        assert len(e["stats/observation.state/mean"]) == 14
        assert np.array(e[f"stats/{KEYS[0]}/mean"]).shape == (3, 1, 1)
        to += info.steps
    for key in KEYS:
        with av.open(str(out / f"videos/{key}/chunk-000/file-000.mp4")) as c:
            s = c.streams.video[0]
            pts = sorted(p.pts * float(s.time_base) for p in c.demux(s) if p.pts is not None)
        # exactly one frame per row, at k / fps: LeRobot's 1e-4 s tolerance finds each one
        np.testing.assert_allclose(pts, np.arange(result.frames) / 50, atol=1e-6)
        assert float(s.average_rate) == 50


def test_video_frame_is_latest_camera_frame_at_or_before_row(exported):
    store, out, result, _ = exported
    eps = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    k = 1
    d = store.episode(store.episodes()[k].id)
    key = "observation.images.top"
    start = eps[k][f"videos/{key}/from_timestamp"]
    rows = [0, 7, len(d.t) // 2, len(d.t) - 1]
    with VideoReader(out / f"videos/{key}/chunk-000/file-000.mp4") as exp, \
            VideoReader(d.video_path("top")) as src:
        for i in rows:
            got = exp.frame(int(round((start + i / 50) * 50)))
            j = max(0, np.searchsorted(d.frame_times["top"], d.t[i], side="right") - 1)
            assert psnr(got, src.frame(int(j))) > 30
            if j + 1 < len(src):  # and not the next camera frame
                assert psnr(got, src.frame(int(j))) > psnr(got, src.frame(int(j) + 1)) + 3


def test_stats_consistent(exported):
    store, out, result, _ = exported
    stats = json.loads((out / "meta/stats.json").read_text())
    states = np.concatenate([store.episode(e.id).state for e in store.episodes()]).astype(
        np.float32)
    s = stats["observation.state"]
    np.testing.assert_allclose(s["min"], states.min(0), rtol=1e-6)
    np.testing.assert_allclose(s["max"], states.max(0), rtol=1e-6)
    np.testing.assert_allclose(s["mean"], states.mean(0, dtype=np.float64), atol=1e-6)
    np.testing.assert_allclose(s["std"], states.std(0, dtype=np.float64), atol=1e-6)
    assert s["count"] == [result.frames]
    for q in ("q01", "q10", "q50", "q90", "q99"):
        assert len(s[q]) == 14
    for key in KEYS:
        img = stats[key]
        assert np.array(img["mean"]).shape == (3, 1, 1)
        assert 0 <= np.min(img["min"]) <= np.max(img["max"]) <= 1
    assert stats["index"]["max"] == [result.frames - 1]


def test_round_trip(exported, tmp_path):
    store, out, result, _ = exported
    dst = EpisodeStore.open(tmp_path / "imported")
    ids = import_dataset(read_dataset(out), dst)
    assert len(ids) == 3
    for src_info, eid in zip(store.episodes(), ids):
        a, b = store.episode(src_info.id), dst.episode(eid)
        assert b.info.task == src_info.task and b.info.status == "complete"
        assert b.info.success == src_info.success and b.info.tags == src_info.tags
        assert b.joint_names == JOINTS and b.info.control_hz == 50
        np.testing.assert_array_equal(b.state, a.state.astype(np.float32))
        np.testing.assert_array_equal(b.action, a.action.astype(np.float32))
        np.testing.assert_allclose(b.t, np.arange(len(a.t)) / 50, atol=1e-6)
        for cam in CAMS:
            ft = b.frame_times[cam]
            assert len(ft) == len(a.t) and np.all(np.diff(ft) > 0)
            with VideoReader(b.video_path(cam)) as rb, VideoReader(a.video_path(cam)) as ra:
                assert len(rb) == len(ft)
                for i in (0, len(ft) // 3, len(ft) - 1):
                    j = max(0, np.searchsorted(a.frame_times[cam], a.t[i], side="right") - 1)
                    assert psnr(rb.frame(i), ra.frame(int(j))) > 30
    dst.close()


def test_export_h264_subset_and_other_fps(exported, tmp_path):
    store, *_ = exported
    ids = [e.id for e in store.episodes()][:2]
    r = export_dataset(store, tmp_path / "o", episodes=[ids[1]], fps=30, vcodec="h264")
    info = json.loads((tmp_path / "o/meta/info.json").read_text())
    assert info["fps"] == 30 and info["total_episodes"] == 1
    assert info["features"]["observation.images.top"]["info"]["video.codec"] == "h264"
    d = store.episode(ids[1])
    rows = pq.read_table(tmp_path / "o/data/chunk-000/file-000.parquet").to_pydict()
    grid = d.t[0] + np.arange(r.frames) / 30
    assert grid[-1] <= d.t[-1] < grid[-1] + 1 / 30
    step = np.searchsorted(d.t, grid, side="right") - 1
    np.testing.assert_array_equal(np.array(rows["action"], np.float32),
                                  d.action[step].astype(np.float32))


def test_video_files_roll_over_by_size(exported, tmp_path):
    store, *_ = exported
    export_dataset(store, tmp_path / "o", video_files_size_in_mb=1e-9)
    eps = pq.read_table(tmp_path / "o/meta/episodes/chunk-000/file-000.parquet").to_pylist()
    key = KEYS[0]
    assert [e[f"videos/{key}/file_index"] for e in eps] == [0, 1, 2]
    assert all(e[f"videos/{key}/from_timestamp"] == 0 for e in eps)
    ds = read_dataset(tmp_path / "o")
    assert ds.video_path(eps[2], key).name == "file-002.mp4"


def test_bad_export_input(exported, tmp_path):
    store, out, *_ = exported
    with pytest.raises(LeRobotFormatError, match="not empty"):
        export_dataset(store, out)
    with pytest.raises(LeRobotFormatError, match="not complete episodes"):
        export_dataset(store, tmp_path / "x", episodes=[99])
    with pytest.raises(LeRobotFormatError, match="whole number"):
        export_dataset(store, tmp_path / "y", fps=12.5)
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".*partial*"))


def _listing(root: Path):
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*")
                  if p.is_file() and not p.name.startswith("index.db"))


@pytest.mark.parametrize("damage, match", [
    ("missing", "not a folder"),
    ("foreign", "no meta/info.json"),
    ("version", "codebase version 'v2.1'"),
    ("no_video", "lacks video files"),
])
def test_bad_import_input_leaves_store_unchanged(exported, tmp_path, damage, match):
    _, out, *_ = exported
    ds = tmp_path / "ds"
    if damage == "foreign":
        ds.mkdir()
        (ds / "README.md").write_text("not a dataset")
    elif damage != "missing":
        shutil.copytree(out, ds)
    if damage == "version":
        info = json.loads((ds / "meta/info.json").read_text())
        info["codebase_version"] = "v2.1"
        (ds / "meta/info.json").write_text(json.dumps(info))
    if damage == "no_video":
        (ds / f"videos/{KEYS[1]}/chunk-000/file-000.mp4").unlink()
    target = tmp_path / "target"
    make_store(target, episodes=((1, 0.3),), seed=3).close()
    before = _listing(target)
    from app.cli import main

    assert main(["import", "--lerobot", str(ds), "--store", str(target), "--json"]) == 2
    assert _listing(target) == before
    with EpisodeStore.open(target) as s:
        assert len(s.episodes(status=None)) == 1
    with pytest.raises(LeRobotFormatError, match=match):
        read_dataset(ds)
    # a store that does not exist yet is not created by a refused import
    assert main(["import", "--lerobot", str(ds), "--store", str(tmp_path / "new")]) == 2
    assert not (tmp_path / "new").exists()


def test_cli_export_json_and_episode_ranges(exported, tmp_path, capsys):
    store, *_ = exported
    from app.cli import main
    from app.cli.lerobot import parse_ids

    assert parse_ids("1,3,5-7") == [1, 3, 5, 6, 7]
    with pytest.raises(ValueError, match="1,3,5-9"):
        parse_ids("a-b")
    ids = [e.id for e in store.episodes()]
    rc = main(["export", "--store", str(store.root), "--out", str(tmp_path / "o"),
               "--episodes", f"{ids[0]}-{ids[1]}", "--vcodec", "h264", "--json"])
    assert rc == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert lines[0]["event"] == "start" and lines[-1]["event"] == "done"
    assert lines[-1]["episodes"] == 2
    rc = main(["export", "--store", str(tmp_path / "nostore"), "--out", str(tmp_path / "p")])
    assert rc == 2 and "not an episode store" in capsys.readouterr().err
