"""`main.py episodes`: the table and JSON listing of a store, and its error on a bad index."""

from __future__ import annotations

import json

import numpy as np

from app.cli import main
from store import EpisodeStore

NAMES = [f"j{i}" for i in range(14)]


def make_store(path):
    store = EpisodeStore.open(path)
    for k, success in enumerate((True, None)):
        w = store.begin_episode(task=f"task {k}", rig="sim", control_hz=50, joint_names=NAMES,
                                cameras={"top": (64, 48, 30), "wrist": (64, 48, 15)},
                                tags=["correction"] if k else [])
        for i in range(50 * (k + 1)):
            w.add_step(i / 50, np.zeros(14), np.zeros(14))
        for cam, n in (("top", 30), ("wrist", 15)):
            for i in range(n * (k + 1)):
                w.add_frame_time(cam, i / n)
            w.camera_path(cam).write_bytes(b"video")
        w.finish(success=success)
    w = store.begin_episode(task="task 2", rig="sim", control_hz=50, joint_names=NAMES)
    w.discard()
    return store


def test_episodes_json(tmp_path, capsys):
    store = make_store(tmp_path)
    (store.info(1).folder / "steps" / "state.f8").unlink()
    assert main(["episodes", "--store", str(tmp_path), "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(r["id"], r["task"], r["status"], r["success"]) for r in rows] == [
        (1, "task 0", "complete", True), (2, "task 1", "complete", None),
        (3, "task 2", "discarded", None)]
    assert rows[1]["frames"] == {"top": 60, "wrist": 30} and rows[1]["tags"] == ["correction"]
    assert rows[1]["duration_s"] == round(99 / 50, 2) and rows[1]["steps"] == 100
    assert "state.f8 is missing" in rows[0]["problem"] and rows[1]["problem"] is None


def test_episodes_table_and_bad_index(tmp_path, capsys):
    make_store(tmp_path / "ok")
    assert main(["episodes", "--store", str(tmp_path / "ok"), "--status", "complete"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["id", "task", "status", "duration", "frames", "success", "tags"]
    assert out[3].split() == ["2", "task", "1", "complete", "2.0", "s", "top:60", "wrist:30", "-",
                              "correction"]
    assert len(out) == 4
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "index.db").write_bytes(b"junk" * 100)
    assert main(["episodes", "--store", str(bad)]) == 2
    assert "is not a readable XR0 episode index" in capsys.readouterr().err
