"""The policy server with a tiny XR0 checkpoint, in-process and as `python main.py serve` in a
subprocess: the remote chunk equals the local XR0Policy's for the same observation and seed;
tokens; unreachable, slow and misbehaving servers give clear errors and the runtime holds; a
layout mismatch is refused at connect; a dropped connection is re-opened once."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
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
from xr0.policy import XR0Policy
from xr0.runtime import ChunkRuntime, Flag, Observation, RuntimeConfig
from xr0.serve import (LayoutMismatch, PolicyServer, RemotePolicy, RemoteReplyError,
                       RemoteServerError, RemoteTimeout, RemoteUnreachable, check_bind,
                       load_served_policy)

torch.set_num_threads(2)
ROOT = Path(__file__).resolve().parents[1]
T = 8
CAMERAS = ["cam_high", "cam_left_wrist"]
TASK = "transfer the cube"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    cfg = preset("xr0-tiny", action_length=T, image_size=(64, 64))
    states, actions = zip(*(step_vectors(40 + 7 * s, len(RIG_JOINT_NAMES), s) for s in range(3)))
    ns = compute_stats(list(states), list(actions), RIG_JOINT_NAMES, chunk=T)
    ns.extra = {"normalization": "mean_std", "state": "raw"}
    stats = {"norm_stats": ns.to_dict(),
             "layout": ActionLayout.from_joint_names(RIG_JOINT_NAMES).to_dict(),
             "cameras": CAMERAS, "image_size": [64, 64], "chunk": T}
    save_checkpoint(XR0Model.from_config(cfg), cfg, d, stats=stats, tokenizer=load_tokenizer())
    return d


@pytest.fixture(scope="module")
def local(ckpt):
    return XR0Policy.from_checkpoint(ckpt)


def observation(step=3, size=(48, 64)):
    rng = np.random.default_rng(step)
    images = {c: rng.integers(0, 255, (*size, 3), dtype=np.uint8) for c in CAMERAS}
    s, _ = step_vectors(20, len(RIG_JOINT_NAMES), 5)
    return Observation(step, 0.0, s[10], images, TASK)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Slow:
    chunk_length, supports_prefix, joint_names = 4, True, tuple(RIG_JOINT_NAMES)

    def __init__(self, sleep_s=0.0, rows=4):
        self.sleep_s, self.rows = sleep_s, rows

    def infer(self, obs, prefix):
        time.sleep(self.sleep_s)
        return np.tile(obs.state, (self.rows, 1))


def test_remote_chunk_equals_local_in_process(ckpt, local):
    obs = observation()
    prefix = local.infer(obs.images, obs.state, TASK, seed=1)[:3]
    with PolicyServer(load_served_policy(ckpt)) as server:
        remote = RemotePolicy(*server.address, seed=7, joint_names=RIG_JOINT_NAMES,
                              cameras=CAMERAS)
        assert (remote.chunk_length, remote.supports_prefix) == (T, local.supports_prefix)
        assert remote.meta["joint_names"] == list(RIG_JOINT_NAMES)
        assert remote.meta["cameras"] == CAMERAS and remote.meta["image_size"] == [64, 64]
        assert callable(remote.infer_guided)
        want = local.infer(obs.images, obs.state, TASK, prefix, seed=7)
        got = remote.infer(obs, prefix)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got[:3], prefix)
        w = np.linspace(1, 0, T)
        np.testing.assert_allclose(remote.infer_guided(obs, want, w, 5.0),
                                   local.infer_guided(obs, want, w, 5.0, seed=7))
        t = remote.last_timing
        assert t["round_trip_ms"] >= t["server_infer_ms"] > 0 and t["transport_ms"] > 0
        # a rig with other joints or cameras is refused before any run
        with pytest.raises(LayoutMismatch, match="fine-tuned on this rig"):
            RemotePolicy(*server.address, joint_names=RIG_JOINT_NAMES[:7])
        with pytest.raises(LayoutMismatch, match="cam_left_wrist"):
            RemotePolicy(*server.address, cameras=["cam_high"])
        remote.seed = None
        with pytest.raises(LayoutMismatch, match="cam_left_wrist"):
            remote.infer(Observation(3, 0.0, obs.state, {"cam_high": obs.images["cam_high"]}),
                         None)
        remote.close()


def test_main_py_serve_subprocess(ckpt, local):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    # as many torch threads as this process uses (other tests may have set it): a float sum split
    # over another number of threads rounds differently, and the chunks must be equal
    proc = subprocess.Popen([sys.executable, "main.py", "serve", "--policy", str(ckpt),
                             "--port", str(port), "--token", "s3cret", "--json",
                             "--threads", str(torch.get_num_threads())], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        first = json.loads(proc.stdout.readline())
        assert first["event"] == "serving" and first["port"] == port and first["token"]
        assert first["chunk_length"] == T and first["host"] == "127.0.0.1"
        with pytest.raises(RemoteServerError, match="wrong or missing token"):
            RemotePolicy("127.0.0.1", port, token="guess")
        with pytest.raises(RemoteServerError, match="unauthorized"):
            RemotePolicy("127.0.0.1", port)
        obs = observation(step=9)
        remote = RemotePolicy("127.0.0.1", port, token="s3cret", seed=11, timeout_s=30)
        np.testing.assert_array_equal(remote.infer(obs, None),
                                      local.infer(obs.images, obs.state, TASK, seed=11))
        remote.close()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        lines = [json.loads(x) for x in out.splitlines()]
        assert proc.returncode == 0, err
        assert any("infer #0" in x.get("message", "") for x in lines)
        assert lines[-1] == {"event": "stopped", "requests": 1, "errors": 2}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_non_localhost_bind_needs_a_token(ckpt):
    with pytest.raises(PermissionError, match="--token"):
        check_bind("0.0.0.0", None)
    check_bind("::1", None)
    with pytest.raises(PermissionError):
        PolicyServer(Slow(), host="0.0.0.0")
    r = subprocess.run([sys.executable, "main.py", "serve", "--policy", str(ckpt), "--host",
                        "0.0.0.0", "--port", "0"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60, env={k: v for k, v in os.environ.items()
                                        if k != "XR0_SERVE_TOKEN"})
    assert r.returncode == 2 and "without a token" in r.stderr


def test_unreachable_and_dropped_connections():
    port = free_port()
    with pytest.raises(RemoteUnreachable, match="main.py serve"):
        RemotePolicy("127.0.0.1", port, connect_timeout_s=1)
    obs = observation()
    server = PolicyServer(Slow(), port=port).start()
    remote = RemotePolicy("127.0.0.1", port)
    remote.infer(obs, None)
    server.disconnect_all()  # a dropped connection is re-opened once, transparently
    time.sleep(0.1)
    np.testing.assert_array_equal(remote.infer(obs, None), np.tile(obs.state, (4, 1)))
    server.close()
    with pytest.raises(RemoteUnreachable, match="no policy server"):
        remote.infer(obs, None)


def run_until_hold(policy, ticks=200) -> list:
    rt = ChunkRuntime(policy, RuntimeConfig(dt=0.02, strategy="naive", k=2))
    obs = observation()
    steps = []
    try:
        for _ in range(ticks):
            r = rt.step(obs.state, 0.0, lambda k: Observation(k, 0.0, obs.state, obs.images, TASK))
            steps.append(r)
            if r.flags & Flag.POLICY_ERROR:
                break
            time.sleep(0.01)
    finally:
        rt.stop()
    return steps


def test_slow_server_times_out_and_the_runtime_holds():
    with PolicyServer(Slow(sleep_s=1.0)) as server:
        remote = RemotePolicy(*server.address, timeout_s=0.2)
        t0 = time.monotonic()
        with pytest.raises(RemoteTimeout, match="did not answer within 0.2 s"):
            remote.infer(observation(), None)
        assert time.monotonic() - t0 < 0.9
        steps = run_until_hold(remote)
        last = steps[-1]
        assert last.flags & Flag.POLICY_ERROR and last.action is None
        assert "did not answer" in last.message and "arms hold" in last.message
        assert all(s.action is None for s in steps)
        remote.close()


def test_a_reply_of_the_wrong_shape_is_rejected_and_the_runtime_holds():
    with PolicyServer(Slow(rows=3)) as server:  # announces H = 4, returns 3 rows
        remote = RemotePolicy(*server.address)
        with pytest.raises(RemoteReplyError, match=r"shape \(3, 14\).*expected \(4, 14\)"):
            remote.infer(observation(), None)
        last = run_until_hold(remote)[-1]
        assert last.flags & Flag.POLICY_ERROR and "shape (3, 14)" in last.message
        remote.close()
