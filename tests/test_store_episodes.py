"""Episode store: life cycle, reading back, index schema and bad input."""

from __future__ import annotations

import json
import os
import sqlite3

import numpy as np
import pytest
import sqlite_utils

from store import (
    CorruptIndex, EmptyEpisode, EpisodeStore, EpisodeUnreadable, SchemaTooNew, StoreError,
    StoreNotWritable,
)
from store import schema

NAMES = [f"joint{i}" for i in range(14)]


def record(store, n_steps=120, task="put the cube in the bowl", cams=("top",), success=True,
           seed=0, **kw):
    rng = np.random.default_rng(seed)
    w = store.begin_episode(task=task, rig="sim", control_hz=50, joint_names=NAMES,
                            cameras={c: (64, 48, 30) for c in cams}, **kw)
    steps = {"t": [], "state": [], "action": [], "leader": []}
    for i in range(n_steps):
        t = 100.0 + i / 50
        s, a, lead = rng.normal(size=(3, 14))
        w.add_step(t, s, a, leader=lead)
        for k, v in zip(steps, (t, s, a, lead)):
            steps[k].append(v)
    frame_t = {}
    for c in cams:
        frame_t[c] = 100.0 + np.arange(n_steps * 3 // 5) / 30
        for t in frame_t[c]:
            w.add_frame_time(c, t)
        w.camera_path(c).write_bytes(rng.bytes(1000))  # stands in for the encoded video
    info = w.finish(success=success)
    return info, {k: np.array(v) for k, v in steps.items()}, frame_t


def test_episode_round_trip(tmp_path):
    store = EpisodeStore.open(tmp_path / "data")
    info, steps, frame_t = record(store, tags=["correction"])
    assert info.status == "complete" and info.steps == 120 and info.success is True
    assert info.frame_counts == {"top": len(frame_t["top"])}
    assert info.tags == ["correction"]
    assert info.duration_s == pytest.approx(steps["t"][-1] - steps["t"][0])
    d = store.episode(info.id)
    assert d.joint_names == tuple(NAMES)
    np.testing.assert_array_equal(d.t, steps["t"])
    np.testing.assert_array_equal(d.state, steps["state"])
    np.testing.assert_array_equal(d.action, steps["action"])
    np.testing.assert_array_equal(d.leader, steps["leader"])
    assert d.follower.shape == (120, 14) and np.isnan(d.follower).all()
    np.testing.assert_array_equal(d.frame_times["top"], frame_t["top"])
    assert d.video_path("top").read_bytes() == (info.folder / "top.mp4").read_bytes()
    # the index file is in WAL mode with foreign keys declared
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db["episodes"].foreign_keys


def test_only_finished_episodes_are_listed_and_editing(tmp_path):
    store = EpisodeStore.open(tmp_path)
    done, _, _ = record(store, task="fold the towel")
    w = store.begin_episode(task="fold the towel", rig="sim", control_hz=50, joint_names=NAMES)
    w.add_step(1.0, np.zeros(14), np.zeros(14))
    assert [e.id for e in store.episodes()] == [done.id]
    assert {e.status for e in store.episodes(status=None)} == {"complete", "recording"}
    other = EpisodeStore.open(tmp_path)  # a second process-like handle sees the same
    assert [e.id for e in other.episodes(status="recording")] == [w.id]
    assert other.recovered == []  # the live writer holds its lock: not taken for dead
    second = w.finish()
    assert second.success is None
    assert [e.id for e in other.episodes(task="fold the towel")] == [done.id, second.id]
    assert store.tasks() == ["fold the towel"]
    store.update(second.id, success=False, notes="dropped it", tags=["correction", "retry"])
    e = other.info(second.id)
    assert (e.success, e.notes, e.tags) == (False, "dropped it", ["correction", "retry"])
    store.discard(second.id)
    assert store.info(second.id).status == "discarded" and not e.folder.exists()
    with pytest.raises(EpisodeUnreadable, match="discarded"):
        store.episode(second.id)
    store.delete(done.id)
    assert [x.id for x in store.episodes(status=None)] == [second.id]
    run = store.add_run("finetune", {"steps": 100}, paths={"checkpoint": "ckpt/"})
    store.update_run(run, status="done")
    assert store.runs("finetune")[0]["status"] == "done"
    assert store.runs()[0]["config"] == {"steps": 100}


def test_extra_columns_and_input_checks(tmp_path):
    store = EpisodeStore.open(tmp_path)
    w = store.begin_episode(task="t", rig="sim", control_hz=50, joint_names=NAMES,
                            extra_columns={"reward": 1})
    with pytest.raises(ValueError, match=r"expected \(14,\)"):
        w.add_step(0.0, np.zeros(13), np.zeros(14), extra={"reward": 0})
    w.add_step(0.0, np.zeros(14), np.zeros(14), extra={"reward": 0.5})
    with pytest.raises(ValueError, match="not after the previous step"):
        w.add_step(0.0, np.zeros(14), np.zeros(14), extra={"reward": 0.5})
    w.add_step(0.02, np.zeros(14), np.zeros(14), extra={"reward": 1.0})
    info = w.finish()
    np.testing.assert_array_equal(store.episode(info.id).extra["reward"], [0.5, 1.0])
    with pytest.raises(ValueError, match="file name"):
        store.begin_episode(task="t", rig="sim", control_hz=50, joint_names=NAMES,
                            cameras={"../top": (1, 1, 1)})


def test_episode_without_steps_or_frames_is_refused_then_discarded(tmp_path):
    store = EpisodeStore.open(tmp_path)
    w = store.begin_episode(task="t", rig="sim", control_hz=50, joint_names=NAMES,
                            cameras={"wrist": (64, 48, 30)})
    with pytest.raises(EmptyEpisode, match="no steps"):
        w.finish()
    w.add_step(0.0, np.zeros(14), np.zeros(14))
    with pytest.raises(EmptyEpisode, match="camera 'wrist' has no frames"):
        w.finish()
    w.add_frame_time("wrist", 0.0)
    with pytest.raises(EmptyEpisode, match="video .* is missing"):
        w.finish()
    w.discard()
    assert store.info(w.id).status == "discarded"
    assert store.episodes() == []


def test_unwritable_store_path_is_reported(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreNotWritable, match=r"cannot create the episode store .*file/data"):
        EpisodeStore.open(blocker / "data")
    with pytest.raises(StoreNotWritable, match="is not a folder"):
        EpisodeStore.open(blocker)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through folder permissions")
def test_read_only_store_folder_is_reported(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(StoreNotWritable, match=r"ro is not writable.*fix its permissions"):
            EpisodeStore.open(ro)
    finally:
        ro.chmod(0o700)


def test_corrupted_index_is_refused_and_left_untouched(tmp_path):
    index = tmp_path / "index.db"
    junk = b"these are not the pages of a database\n" * 100
    index.write_bytes(junk)
    with pytest.raises(CorruptIndex, match=r"not a readable XR0 episode index .*nothing was changed.*`mv "):
        EpisodeStore.open(tmp_path)
    assert index.read_bytes() == junk
    # a real database whose pages were damaged after its header
    other = tmp_path / "other"
    first = EpisodeStore.open(other)
    record(first)
    first.close()  # checkpoints the WAL into index.db
    data = bytearray((other / "index.db").read_bytes())
    assert len(data) > 8192
    data[4096:8192] = b"\xff" * 4096
    (other / "index.db").write_bytes(bytes(data))
    for p in other.glob("index.db-*"):
        p.unlink()
    with pytest.raises(CorruptIndex):
        EpisodeStore.open(other)
    assert (other / "index.db").read_bytes() == bytes(data)


def test_newer_schema_is_refused(tmp_path):
    EpisodeStore.open(tmp_path).close()
    db = sqlite_utils.Database(tmp_path / "index.db")
    db.execute("UPDATE schema_version SET version = ?", [schema.SCHEMA_VERSION + 5])
    db.conn.commit()
    db.conn.close()
    before = (tmp_path / "index.db").read_bytes()
    with pytest.raises(SchemaTooNew, match=rf"written by a newer XR0 Workstation \(schema "
                       rf"{schema.SCHEMA_VERSION + 5} > {schema.SCHEMA_VERSION}\): update the app"):
        EpisodeStore.open(tmp_path)
    assert (tmp_path / "index.db").read_bytes() == before


def test_migration_from_version_1_keeps_episodes(tmp_path):
    # build a version-1 index with the real first migration, holding one finished episode
    db = sqlite_utils.Database(sqlite3.connect(tmp_path / "index.db", isolation_level=None))
    assert schema.migrate(db, "v1", target=1) == 0
    assert schema.version_of(db) == 1
    db.conn.execute("INSERT INTO tasks (instruction) VALUES ('stack')")
    db.conn.execute(
        "INSERT INTO episodes (task_id, rig, control_hz, started, status, folder) "
        "VALUES (1, 'sim', 50, '2025-01-01T00:00:00', 'complete', 'episodes/000001')")
    assert "steps" not in db["episodes"].columns_dict
    db.conn.close()
    store = EpisodeStore.open(tmp_path)
    assert schema.version_of(store.db) == schema.SCHEMA_VERSION > 1
    [e] = store.episodes()
    assert (e.task, e.steps, e.status) == ("stack", 0, "complete")
    # its folder is gone: reported unreadable with the reason, the store still works
    assert "columns.json is missing" in store.problem(e.id)
    info, _, _ = record(store)
    assert store.problem(info.id) is None


def test_damaged_episode_is_unreadable_others_fine(tmp_path):
    store = EpisodeStore.open(tmp_path)
    a, _, _ = record(store, seed=1)
    b, _, _ = record(store, seed=2)
    c, _, _ = record(store, seed=3)
    (a.folder / "steps" / "action.f8").unlink()
    with open(b.folder / "steps" / "state.f8", "r+b") as f:
        f.truncate(100)
    (c.folder / "columns.json").write_text("{not json")
    assert "action.f8 is missing" in store.problem(a.id)
    assert "truncated or corrupt" in store.problem(b.id)
    assert "columns.json is corrupt" in store.problem(c.id)
    d, _, _ = record(store, seed=4)
    assert store.problem(d.id) is None
    assert store.episode(d.id).state.shape == (120, 14)
    with pytest.raises(StoreError, match="only incomplete"):
        store.recover(d.id)


def test_tags_json_in_index(tmp_path):
    store = EpisodeStore.open(tmp_path)
    info, _, _ = record(store, tags=("correction", "correction", " slow "))
    raw = store.db.execute("SELECT tags, frame_counts FROM episodes WHERE id = ?",
                           [info.id]).fetchone()
    assert json.loads(raw[0]) == ["correction", "slow"]
    assert json.loads(raw[1]) == {"top": 72}
