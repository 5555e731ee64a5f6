"""Stepping-mode sim recording (`main.py record --stepping`): the real sim rig, the real teleop
path, real video files and a real store; every step and every frame, deterministic per seed, and a
failure mid-episode leaves the earlier episodes complete."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.core.sim_record import SimRecordError, record_stepping
from drivers.config import SimConfig
from drivers.sim.rig import SimRig
from store import EpisodeStore
from store.video import VideoReader
from xr0.data.dataset import EpisodeDataset

ROOT = Path(__file__).resolve().parents[1]


def test_the_cli_records_every_step_and_every_frame_at_its_sim_time(tmp_path):
    store = tmp_path / "store"
    r = subprocess.run([sys.executable, str(ROOT / "main.py"), "record", "--rig", "sim", "--task",
                        "transfer the cube", "--episodes", "2", "--seconds", "1", "--store",
                        str(store), "--stepping", "--seed", "7", "--json"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    events = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert events[-1] == {"event": "summary", "store": str(store), "episodes": [1, 2], "error": ""}
    eps = [e for e in events if e["event"] == "episode"]
    assert [e["seed"] for e in eps] == [7, 8]        # --seed: the first scene, then the next
    with EpisodeStore.open(store) as st:
        for e in eps:
            info = st.info(e["id"])
            assert info.status == "complete" and info.steps == 50
            assert f"seed:{e['seed']}" in info.tags
            data = st.episode(e["id"])
            assert np.allclose(np.diff(data.t), 0.02, atol=1e-6)      # 50 Hz of sim time
            for cam, (_, _, fps) in data.cameras.items():
                ft = data.frame_times[cam]
                assert len(ft) == round(1.0 * fps), (cam, len(ft))     # none lost
                assert VideoReader(info.folder / info.videos[cam]).frame_count == len(ft)
    # the training view pairs every step with a frame at most one control period old
    ds = EpisodeDataset(store, [1, 2], cameras=["top"], image_size=(48, 64), chunk=10)
    ep = ds._episodes[0]
    ages = [ep.t[s] - ep.frame_times["top"][ds.frame_index(0, "top", s)] for s in range(1, 50)]
    assert 0 <= min(ages) and max(ages) <= 0.02 + 1e-6


def test_the_same_seed_records_the_same_episode(sim_config, tmp_path):
    cfg = sim_config.with_(cameras=sim_config.cameras[:1])
    runs = []
    for k in range(2):
        with EpisodeStore.open(tmp_path / f"s{k}") as st:
            [info] = record_stepping(cfg, st, "transfer the cube", 1, seconds=0.6, seeds=[11])
            runs.append(st.episode(info.id))
    a, b = runs
    assert len(a.t) == 30 and np.array_equal(a.state, b.state)
    assert np.array_equal(a.action, b.action) and np.array_equal(a.leader, b.leader)
    # the action is the teleop command: it leads the follower, which tracks it
    assert np.abs(a.action[-1] - a.state[-1]).max() < 0.2
    assert np.abs(a.state[-1] - a.state[0]).max() > 0.01               # the arms moved


def test_a_failure_mid_episode_keeps_the_earlier_episodes(sim_config, tmp_path, monkeypatch):
    cfg = sim_config.with_(cameras=sim_config.cameras[:1])
    calls = {"n": 0}
    step = SimRig.step

    def failing_step(self):
        calls["n"] += 1
        if calls["n"] == 30 + 10:          # the second episode's 10th step
            raise RuntimeError("the sim failed")
        step(self)

    monkeypatch.setattr(SimRig, "step", failing_step)
    with EpisodeStore.open(tmp_path / "store") as st:
        with pytest.raises(RuntimeError, match="the sim failed"):
            record_stepping(cfg, st, "transfer the cube", 2, seconds=0.6, seeds=[3, 4])
        first, second = st.episodes(status=None)
        assert first.status == "complete" and first.steps == 30 and st.problem(first.id) is None
        assert second.status == "incomplete"


def test_hardware_rigs_and_bad_arguments_are_refused(sim_config, tmp_path):
    from drivers.config import load_rig_config

    with EpisodeStore.open(tmp_path / "store") as st:
        with pytest.raises(SimRecordError, match="needs a sim rig"):
            record_stepping(load_rig_config("aloha"), st, "transfer the cube", 1)
        with pytest.raises(ValueError, match="at least 1"):
            record_stepping(sim_config, st, "transfer the cube", 0)
        with pytest.raises(ValueError, match="seeds given"):
            record_stepping(sim_config, st, "transfer the cube", 2, seeds=[1])
        assert st.episodes(status=None) == []


def test_seed_needs_a_stepping_recording(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "main.py"), "record", "--rig", "sim", "--task",
                        "transfer the cube", "--store", str(tmp_path / "s"), "--seed", "3"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode != 0 and "--stepping" in r.stderr
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("option, value, tag, refused", [
    # the first reach misses the cube by a seeded offset and is corrected
    ("--aim-noise", "0.02", "aim-noise:0.02", [("sim", "-0.01", ">= 0"),
                                               ("aloha", "0.02", "hardware")]),
    # the hand-over waits a seeded extra time
    ("--handover-delay", "0.4", "handover-delay:0.4", [("sim", "-0.1", "0 to 0.6"),
                                                       ("sim", "0.7", "0 to 0.6"),
                                                       ("aloha", "0.2", "hardware")]),
])
def test_the_scripted_operators_variations_tag_the_episodes_and_are_checked(
        tmp_path, option, value, tag, refused):
    """--aim-noise M and --handover-delay S record demonstrations that vary the scripted
    operator's moves; the episodes carry them as tags, and a value out of range or a hardware rig
    is refused before the store is touched."""
    store = tmp_path / "store"
    cmd = [sys.executable, str(ROOT / "main.py"), "record", "--task", "transfer the cube",
           "--episodes", "1", "--seconds", "0.2", "--stepping", "--seed", "4", "--json"]
    r = subprocess.run([*cmd, "--rig", "sim", "--store", str(store), option, value],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    with EpisodeStore.open(store) as st:
        [info] = st.episodes(status="complete")
        assert {"seed:4", tag} <= set(info.tags)
    for rig, bad, says in refused:
        r = subprocess.run([*cmd, "--rig", rig, "--store", str(tmp_path / "bad"), option, bad],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert r.returncode != 0 and says in r.stderr, r.stderr[-2000:]
        assert not (tmp_path / "bad").exists()


def test_grasp_error_reports_the_handover_of_a_stores_demonstrations(sim_config, tmp_path):
    """scripts/grasp_error.py --store: the hand-over of each recorded demonstration; with
    --handover-delay the left arm comes in and closes later by each seed's delay, and waits as
    long between the two as on time."""
    seeds = [3, 4]
    for delay, name in ((0.0, "on_time"), (0.5, "delayed")):
        cfg = sim_config.with_(cameras=(), sim=dataclasses.replace(
            sim_config.sim or SimConfig(), task="transfer_cube", realtime=False,
            handover_delay=delay))
        with EpisodeStore.open(tmp_path / name) as st:
            record_stepping(cfg, st, "transfer the cube", len(seeds), seeds=seeds)
    rows = {}
    for name in ("on_time", "delayed"):
        r = subprocess.run([sys.executable, str(ROOT / "scripts/grasp_error.py"), "--store",
                            str(tmp_path / name), "--json"], capture_output=True, text=True,
                           timeout=120, cwd=ROOT)
        assert r.returncode == 0, r.stderr[-3000:]
        rows[name] = [json.loads(x)["handover"] for x in r.stdout.splitlines()]
        assert len(rows[name]) == 2
    with SimRig(sim_config.with_(cameras=(), sim=dataclasses.replace(
            sim_config.sim or SimConfig(), task="transfer_cube", realtime=False,
            handover_delay=0.5))) as rig:
        shifts = [int(round(rig.operator._draw_delay(s) * rig.config.control_hz))
                  for s in seeds]
    for on, late, shift in zip(rows["on_time"], rows["delayed"], shifts):
        assert on["left_close_step"] - on["left_arrive_step"] >= 15, on
        assert abs(late["left_arrive_step"] - (on["left_arrive_step"] + shift)) <= 1, (late, on)
        assert abs(late["left_close_step"] - (on["left_close_step"] + shift)) <= 1, (late, on)
        assert 8.0 < late["left_x_cm"] < 9.5 and late["tips_cm"] < 2.5, late
    text = subprocess.run([sys.executable, str(ROOT / "scripts/grasp_error.py"), "--store",
                           str(tmp_path / "delayed")], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert text.returncode == 0 and text.stdout.startswith("2 episodes: left fingertip past")
    both = subprocess.run([sys.executable, str(ROOT / "scripts/grasp_error.py"), "--store",
                           str(tmp_path / "delayed"), str(tmp_path)], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert both.returncode == 2 and "--store" in both.stderr
    # a path that holds no store is refused, and no store is made there
    missing = subprocess.run([sys.executable, str(ROOT / "scripts/grasp_error.py"), "--store",
                              str(tmp_path / "typo")], capture_output=True, text=True,
                             timeout=60, cwd=ROOT)
    assert missing.returncode == 2 and "no episode store" in missing.stderr
    assert not (tmp_path / "typo").exists()
