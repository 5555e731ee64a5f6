"""`main.py run` with a model: an XR0 checkpoint in this process, and the same checkpoint behind a
policy server, drive the sim rig through the runtime (random weights: the arms move, the task is
not expected to succeed; what is checked is the path, the cameras and the delays)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from xr0.data.layout import ActionLayout
from xr0.data.stats import compute_stats
from xr0.data.synthetic import RIG_JOINT_NAMES, step_vectors
from xr0.model.checkpoint import save_checkpoint
from xr0.model.config import preset
from xr0.model.tokenizer import load_tokenizer
from xr0.model.xr0 import XR0Model
from xr0.serve import PolicyServer, load_served_policy

ROOT = Path(__file__).resolve().parents[1]
T = 30


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("ckpt")
    cfg = preset("xr0-tiny", action_length=T, image_size=(64, 64))
    states, actions = zip(*(step_vectors(60, len(RIG_JOINT_NAMES), s) for s in range(3)))
    ns = compute_stats(list(states), list(actions), RIG_JOINT_NAMES, chunk=T,
                       action_mode="absolute")
    stats = {"norm_stats": ns.to_dict(),
             "layout": ActionLayout.from_joint_names(RIG_JOINT_NAMES).to_dict(),
             "cameras": ["top", "left_wrist"], "view_labels": list(cfg.view_labels),
             "action_mode": "absolute", "image_size": [64, 64], "chunk": T,
             "async_post_trained": True}
    save_checkpoint(XR0Model.from_config(cfg), cfg, d, stats=stats, tokenizer=load_tokenizer())
    return d


def run_cli(*args, timeout=240):
    r = subprocess.run([sys.executable, str(ROOT / "main.py"), "run", "--json", *args],
                       capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    return r, lines


def test_run_checkpoint_in_process(ckpt, tmp_path):
    r, lines = run_cli("--policy", str(ckpt), "--task", "transfer the cube", "--k", "10",
                       "--inject-delay-steps", "4", "--save", str(tmp_path / "runs"))
    assert r.returncode == 0, r.stderr[-3000:]
    [ep] = [x for x in lines if x["event"] == "episode"]
    assert ep["error"] == "" and ep["delay_steps"] == 4 and ep["chunks"] >= 10
    assert np.isfinite(ep["rms_jerk"]) and ep["latency_ms_p50"] == pytest.approx(80.0)
    from xr0.runtime.telemetry import load_run
    log = load_run(tmp_path / "runs" / "episode_0")
    assert log.meta["seed"] == 0 and log.meta["delay_steps"] == 4


def test_a_sim_episode_with_a_model_replays_exactly(ckpt, tmp_path):
    """The sim, the injected delay and the model's sampling noise all follow the episode's seed:
    the same seed commands the same trajectory, another seed another."""
    runs = {}
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        r, _ = run_cli("--policy", str(ckpt), "--task", "transfer the cube", "--seed", seed,
                       "--inject-delay-steps", "2", "--save",
                       str(tmp_path / name))
        assert r.returncode == 0, r.stderr[-3000:]
        with np.load(tmp_path / name / f"episode_{seed}.npz") as z:
            runs[name] = (z["step_action"], z["chunk_actions"])
    np.testing.assert_array_equal(runs["a"][0], runs["b"][0])
    np.testing.assert_array_equal(runs["a"][1], runs["b"][1])
    assert not np.array_equal(runs["a"][1], runs["c"][1])


def test_measured_delay_turns_inference_time_into_steps():
    """Stepping runs of a real model: a chunk arrives as many steps after its request as the
    policy call took (the sim waits meanwhile)."""
    import time

    from xr0.runtime import ChunkRuntime, Observation, RuntimeConfig
    from xr0.runtime.executor import SteppedExecutor

    class Slow:
        chunk_length, supports_prefix = 20, True

        def infer(self, obs, prefix):
            time.sleep(0.05)                 # 50 ms = 2.5 steps at 50 Hz -> 3 steps
            out = np.repeat(obs.state[None], self.chunk_length, 0) + 0.01 * np.arange(20)[:, None]
            if prefix is not None:
                out[:len(prefix)] = prefix
            return out

    pol = Slow()
    rt = ChunkRuntime(pol, RuntimeConfig(dt=0.02, k=8), executor=SteppedExecutor(pol, 0.02,
                                                                                  "measured"))
    state = np.zeros(3)
    for k in range(60):
        rt.step(state, k * 0.02, lambda i: Observation(i, i * 0.02, state.copy()))
    chunks = rt.telemetry.chunks()
    assert len(chunks) >= 3
    delays = [c.arrival_step - c.request_step for c in chunks if c.arrival_step >= 0]
    assert all(d >= 3 for d in delays), delays


def test_run_through_a_policy_server(ckpt):
    served = load_served_policy(ckpt, instruction="transfer the cube")
    with PolicyServer(served, port=0) as server:
        server.start()
        host, port = server.address
        r, lines = run_cli("--policy", f"tcp://{host}:{port}", "--task", "transfer the cube",
                           "--k", "10", "--inject-delay-steps", "3")
    assert r.returncode == 0, r.stderr[-3000:]
    [ep] = [x for x in lines if x["event"] == "episode"]
    assert ep["error"] == "" and ep["delay_steps"] == 3 and ep["chunks"] >= 10


def test_run_refuses_a_policy_that_needs_missing_cameras(ckpt, tmp_path):
    other = tmp_path / "other"
    import shutil
    shutil.copytree(ckpt, other)
    stats = json.loads((other / "stats.json").read_text())
    stats["cameras"] = ["top", "cam_low"]
    (other / "stats.json").write_text(json.dumps(stats))
    r, lines = run_cli("--policy", str(other), "--task", "x")
    assert r.returncode == 2
    assert "cam_low" in (r.stderr + r.stdout) and "does not have" in (r.stderr + r.stdout)


def test_grasp_error_locates_the_fingertip_against_the_cube(ckpt, tmp_path):
    """scripts/grasp_error.py on saved stepping runs: the scripted operator closes the right
    gripper on the cube (offset under 1 cm) wherever the cube lies (localisation gain 1) and
    hands it over (the right lets go after the left closes); an untrained checkpoint does not
    come near it."""
    for policy, folder, n in (("scripted", "scripted", "3"), (str(ckpt), "untrained", "1")):
        r, _ = run_cli("--policy", policy, "--task", "transfer the cube", "--seed", "7",
                       "--episodes", n, "--inject-delay-steps", "2", "--save", str(tmp_path / folder))
        assert r.returncode == 0, r.stderr[-3000:]
    out, gains = {}, {}
    for folder in ("scripted", "untrained"):
        r = subprocess.run([sys.executable, str(ROOT / "scripts/grasp_error.py"),
                            str(tmp_path / folder), "--json"], capture_output=True, text=True,
                           timeout=120, cwd=ROOT)
        assert r.returncode == 0, r.stderr[-3000:]
        lines = [json.loads(x) for x in r.stdout.splitlines()]
        out[folder] = [x for x in lines if "seed" in x]
        gains[folder] = [x["localisation_gain"] for x in lines if "localisation_gain" in x]
    assert [e["seed"] for e in out["scripted"]] == [7, 8, 9]
    for s in out["scripted"]:
        assert s["success"] and s["closest_cm"] < 1.0
        assert s["close_step"] is not None and float(np.linalg.norm(s["offset_cm"])) < 1.0
        h = s["handover"]   # the left closes on the cube held out to it; the right lets go later
        assert h["left_close_step"] > s["close_step"] and h["tips_cm"] < 2.5, h
        # it comes in, then waits (the operator: 22 steps) and closes with the cube in reach
        assert s["close_step"] < h["left_arrive_step"] <= h["left_close_step"] - 15, h
        assert 8.0 < h["left_x_cm"] < 9.5, h
        assert h["right_open_step"] > h["left_close_step"] and 35 <= h["release_gap"] <= 50, h
        rel = s["release"]  # commanded before the gripper moves; the chunk before planned it too
        assert rel["request"] <= rel["step"] <= h["right_open_step"], rel
        assert rel["earlier_plans"][-1] == rel["step"], rel
    [gain] = gains["scripted"]
    assert all(0.9 < gain[a]["gain"] < 1.1 and gain[a]["residual_cm"] < 1.0 for a in "xy"), gain
    [u] = out["untrained"]
    assert not u["success"] and u["closest_cm"] > 3.0
    assert gains["untrained"] == []                          # one episode: no line to fit
    empty = subprocess.run([sys.executable, str(ROOT / "scripts/grasp_error.py"),
                            str(tmp_path / "nothing")], capture_output=True, text=True, timeout=60)
    assert empty.returncode == 2 and "--save" in empty.stderr
