"""Recording demonstrations end to end on the real sim rig: RigSession -> Recorder -> episode
store (SQLite + step columns + streaming video), through `main.py record` as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from app.core.recorder import CyclePlan, EpisodeCycle
from app.core.rig_session import RigSession
from store import EpisodeStore
from store.video import VideoReader

ROOT = Path(__file__).resolve().parent.parent


def _record_cmd(store: Path, *extra: str) -> list[str]:
    return [sys.executable, "main.py", "record", "--rig", "sim", "--task", "transfer the cube",
            "--store", str(store), "--json", *extra]


def test_record_two_sim_episodes_and_read_them_back(tmp_path):
    store_dir = tmp_path / "store"
    r = subprocess.run(_record_cmd(store_dir, "--episodes", "2", "--seconds", "2"), cwd=ROOT,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    events = [json.loads(x) for x in r.stdout.splitlines()]
    saved = [e for e in events if e["event"] == "episode"]
    assert len(saved) == 2 and all(not any(e["dropped"].values()) for e in saved)
    store = EpisodeStore.open(store_dir)
    eps = store.episodes(status="complete")
    assert [e.id for e in eps] == [1, 2] and {e.task for e in eps} == {"transfer the cube"}
    for info in eps:
        data = store.episode(info.id)
        n = len(data.t)
        assert 90 <= n <= 105, n  # 2 s at 50 Hz
        dt = np.diff(data.t)
        assert np.all(dt > 0) and abs(np.median(dt) - 0.02) < 0.002
        assert data.state.shape == (n, 14) and data.action.shape == (n, 14)
        assert np.isfinite(data.leader).all() and np.isfinite(data.extra["reward"]).all()
        # the followers moved under the scripted operator
        assert np.ptp(data.state[:, :6], axis=0).max() > 0.05
        for cam, times in data.frame_times.items():
            with VideoReader(data.video_path(cam)) as v:
                assert v.frame_count == len(times) == info.frame_counts[cam]
                assert 40 <= len(times) <= 55  # 25 fps for 2 s
                assert v.frame(len(times) - 1).shape == (240, 320, 3)
            assert times[0] >= data.t[0] - 0.05 and times[-1] <= data.t[-1] + 0.05
    # episodes listing, as the user sees it
    r = subprocess.run([sys.executable, "main.py", "episodes", "--store", str(store_dir),
                        "--json"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 2


def test_killed_recording_keeps_earlier_episodes_and_leaves_the_partial_one_recoverable(tmp_path):
    store_dir = tmp_path / "store"
    p = subprocess.Popen(_record_cmd(store_dir, "--episodes", "3", "--seconds", "3"), cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        saved = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            ev = json.loads(line)
            if ev["event"] == "episode":
                saved = ev
            if saved and ev["event"] == "phase" and ev["phase"] == "recording":
                time.sleep(1.8)  # well into episode 2: at least one flush of its columns
                os.kill(p.pid, signal.SIGKILL)
                break
        assert saved is not None, p.stderr.read()
    finally:
        p.kill()
        p.wait()
    before = {f: f.read_bytes() for f in (store_dir / "episodes").glob("000001/**/*")
              if f.is_file() and f.name != ".writer.lock"}
    store = EpisodeStore.open(store_dir)
    assert store.recovered == [2]
    assert store.info(1).status == "complete" and store.info(2).status == "incomplete"
    first = store.episode(1)
    assert len(first.t) == saved["steps"]
    after = {f: f.read_bytes() for f in before}
    assert after == before, "a later crash changed an earlier episode's files"
    rec = store.recover(2)
    assert rec.status == "complete" and rec.steps >= 40
    data = store.episode(2)
    assert np.all(np.diff(data.t) > 0)


def test_rerecord_and_discard_leave_only_kept_episodes(tmp_path, sim_config):
    store = EpisodeStore.open(tmp_path / "store")
    session = RigSession(sim_config)
    events = []
    with session:
        cycle = EpisodeCycle(session, store, CyclePlan(task="t", episodes=2, seconds=1.5),
                             on_event=events.append)
        cycle.start()
        while cycle.phase.value != "recording":
            time.sleep(0.02)
        time.sleep(0.3)
        cycle.rerecord()  # episode 1 again
        while not [e for e in events if e["event"] == "rerecord"]:
            time.sleep(0.02)
        cycle.join(timeout=60)
        assert cycle.error == "" and cycle.phase.value == "done"
    kept = store.episodes(status="complete")
    assert len(kept) == 2
    assert [e.status for e in store.episodes(status=None)].count("complete") == 2
    assert not session.listener_errors


def test_episodes_that_run_to_the_sim_episode_end_all_record(tmp_path):
    """Each episode runs until the sim's own end ("done"); the next one must not take the previous
    episode's last step for its own end and finish empty. The app's own camera set (three at
    240x320, 25 fps) as `main.py record` runs it."""
    import dataclasses

    from drivers.config import load_rig_config

    full = load_rig_config("sim")
    cfg = full.with_(sim=dataclasses.replace(full.sim, episode_seconds=2.0))
    store = EpisodeStore.open(tmp_path / "store")
    with RigSession(cfg) as session:
        cycle = EpisodeCycle(session, store, CyclePlan(task="t", episodes=3, seconds=5.0))
        cycle.start()
        cycle.join(timeout=60)
        assert cycle.error == "" and cycle.phase.value == "done", cycle.error
    kept = store.episodes(status="complete")
    assert len(kept) == 3
    assert all(e.steps >= 90 for e in kept), [e.steps for e in kept]  # ~2 s at 50 Hz each


def test_stop_before_the_first_step_ends_the_cycle_cleanly(tmp_path, sim_config):
    """Stop pressed as an episode begins (before its first control step): the empty episode is
    dropped and the cycle ends done, not failed; the episodes before it are kept."""
    store = EpisodeStore.open(tmp_path / "store")
    with RigSession(sim_config) as session:
        cycle = EpisodeCycle(session, store, CyclePlan(task="t", episodes=2, seconds=5.0))
        cycle.stop()  # waiting before the first recording starts
        cycle.start()
        cycle.join(timeout=30)
        assert cycle.error == "" and cycle.phase.value == "done", cycle.error
    assert [e.status for e in store.episodes(status=None)] in ([], ["discarded"], ["complete"])


def test_stop_before_a_camera_delivered_a_frame_drops_the_episode_without_failing(tmp_path,
                                                                                sim_config):
    """Stop pressed while a camera has not yet delivered the episode's first frame (its render
    worker held up, as on a loaded machine): the episode is too short to keep, which is no camera
    fault. It is dropped with the reason, and the cycle ends done, not failed."""
    store = EpisodeStore.open(tmp_path / "store")
    events = []
    with RigSession(sim_config) as session:
        cams = session.rig.cameras
        for c in cams.values():  # the renderer is running
            c.wait_next(0, timeout_s=30.0)
        deadline = time.monotonic() + 30
        worker = session.rig.render_worker_pid
        os.kill(worker, signal.SIGSTOP)  # no frame until SIGCONT (a hang is only declared at 5 s)
        try:
            time.sleep(0.3)  # a frame already on its way is delivered before the episode starts
            cycle = EpisodeCycle(session, store, CyclePlan(task="t", episodes=2, seconds=5.0),
                                 on_event=events.append)
            cycle.start()
            while not (cycle.phase.value == "recording" and cycle.current is not None
                       and cycle.current.stats.steps >= 10):
                assert time.monotonic() < deadline
                time.sleep(0.02)
            cycle.stop()
            cycle.join(timeout=30)
        finally:
            os.kill(worker, signal.SIGCONT)
        assert cycle.error == "" and cycle.phase.value == "done", cycle.error
        assert cycle.done == []
        dropped = [e for e in events if e["event"] == "discard"]
        assert len(dropped) == 1 and "before camera" in dropped[0]["reason"], events
        assert all(repr(n) in dropped[0]["reason"] for n in cams), dropped[0]["reason"]
        assert not session.rig.render_error
    assert [e.status for e in store.episodes(status=None)] == ["discarded"]
    assert not (tmp_path / "store" / "episodes" / f"{dropped[0]['id']:06d}").exists()


def test_a_camera_silent_for_two_seconds_stops_the_recording_and_keeps_the_episode(tmp_path,
                                                                                 sim_config):
    """A camera that delivers nothing for 2 s has failed (the short waits that let a stop through
    must not reset that clock): the recording stops, the episode is kept as incomplete."""
    store = EpisodeStore.open(tmp_path / "store")
    with RigSession(sim_config) as session:
        for c in session.rig.cameras.values():
            c.wait_next(0, timeout_s=30.0)
        cycle = EpisodeCycle(session, store, CyclePlan(task="t", episodes=1, seconds=20.0))
        cycle.start()
        deadline = time.monotonic() + 30
        while not (cycle.current is not None and all(cycle.current.stats.frames.values())):
            assert time.monotonic() < deadline and cycle.phase.value != "failed", cycle.error
            time.sleep(0.02)
        worker = session.rig.render_worker_pid
        os.kill(worker, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            while cycle.phase.value != "failed":
                assert time.monotonic() - t0 < 4.0, "a silent camera went unnoticed"
                time.sleep(0.02)
            silent_s = time.monotonic() - t0
        finally:
            os.kill(worker, signal.SIGCONT)
        cycle.join(timeout=30)
        assert "stopped delivering frames" in cycle.error and "incomplete" in cycle.error
        assert 1.8 <= silent_s, silent_s
    assert [e.status for e in store.episodes(status=None)] == ["incomplete"]


def test_a_failing_listener_never_stops_the_control_loop(sim_config):
    session = RigSession(sim_config)

    def broken(rec):
        raise ValueError("boom")

    with session:
        session.add_listener(broken)
        time.sleep(0.3)
        st = session.status()
        assert st.running and st.error == ""
        assert session.listener_errors and "boom" in session.listener_errors[0]


def test_replay_plays_a_recorded_demonstration_back_after_a_safe_ramp(tmp_path):
    store_dir = tmp_path / "store"
    r = subprocess.run(_record_cmd(store_dir, "--episodes", "1"), cwd=ROOT, capture_output=True,
                       text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    saved = [e for e in map(json.loads, r.stdout.splitlines()) if e["event"] == "episode"]
    assert saved[-1]["success"] is True
    assert any(t.startswith("seed:") for t in EpisodeStore.open(store_dir).info(1).tags)
    r = subprocess.run([sys.executable, "main.py", "replay", "--store", str(store_dir),
                        "--episode", "1", "--rig", "sim", "--json"], cwd=ROOT,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.splitlines()[-1])
    assert summary["steps"] == saved[-1]["steps"] and summary["success"] is True


def test_replay_ramps_then_plays_the_actions_exactly(sim_config):
    import dataclasses

    from drivers.replay import ReplaySource, ReplayState
    from drivers.sim.rig import SimRig

    cfg = sim_config.with_(cameras=(), sim=dataclasses.replace(sim_config.sim, realtime=False))
    rig = SimRig(cfg)
    with rig:
        start = rig.read().follower
        actions = np.repeat(start[None], 30, axis=0)
        actions[:, 1] += np.linspace(0.3, 0.4, 30)  # first pose 0.3 rad away, then a slow move
        replay = ReplaySource(rig, actions)
        sent, last = [], None
        while replay.state is not ReplayState.DONE:
            out = replay.step(rig.read())
            if last is not None:
                assert np.all(np.abs(out.command - last) <= replay.filter.max_step + 1e-9)
            sent.append((out.index, out.command))
            last = out.command
            rig.step()
        ramp = [c for i, c in sent if i < 0]
        assert 10 <= len(ramp) <= 30  # 0.3 rad at 1 rad/s = 15 steps
        played = np.array([c for i, c in sent if i >= 0])
        np.testing.assert_allclose(played, actions)
        with pytest.raises(ValueError, match=r"\(N, 14\)"):
            ReplaySource(rig, np.zeros((5, 7)))


def test_estop_during_recording_stops_and_keeps_the_episode_incomplete(tmp_path, sim_config):
    store = EpisodeStore.open(tmp_path / "store")
    session = RigSession(sim_config)
    with session:
        cycle = EpisodeCycle(session, store, CyclePlan(task="t", episodes=2, seconds=3.0))
        cycle.start()
        while cycle.phase.value != "recording":
            time.sleep(0.02)
        time.sleep(1.5)
        session.estop()
        cycle.join(timeout=30)
        assert cycle.phase.value == "failed" and "e-stop pressed" in cycle.error
        assert session.rig.estopped, "recording must never release the e-stop"
    (info,) = store.episodes(status=None)
    assert info.status == "incomplete" and not store.episodes(status="complete")
    assert store.recover(info.id).status == "complete"
