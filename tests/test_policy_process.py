"""A checkpoint served by a local policy server process (app.core.policy_process): the same chunks
as in this process for the same noise seed, stopped on close and when the app that started it is
killed, a clear error for a broken checkpoint; and per-chunk latency in the Autonomy tab on the
real-time sim rig, in the app's process against the local server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from test_autonomy_run import H, save_tiny_checkpoint

from app.core.policy_process import LocalPolicyServer, LocalServerError, serve_checkpoint
from drivers import layout
from xr0.runtime.policy import Observation

ROOT = Path(__file__).resolve().parents[1]
CAMERAS = ["top", "left_wrist"]
TASK = "transfer the cube"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), CAMERAS)


def gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaped yet counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def wait_gone(pid: int, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while not gone(pid):
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def test_served_chunks_equal_in_process_chunks_and_close_stops_the_server(ckpt):
    import torch

    from xr0.policy import XR0Policy

    torch.set_num_threads(1)  # as the server's (default_threads() on 2 cores)
    rng = np.random.default_rng(0)
    images = {c: rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for c in CAMERAS}
    state = rng.normal(0, 0.3, layout.DIM)
    prefix = np.tile(state, (5, 1)) + rng.normal(0, 0.01, (5, layout.DIM))
    local = XR0Policy.from_checkpoint(ckpt)

    policy = serve_checkpoint(ckpt, TASK, joint_names=layout.NAMES, seed=7, threads=1)
    server = policy.server
    try:
        assert server.running and server.port > 0 and policy.chunk_length == H
        assert policy.meta["cameras"] == CAMERAS and policy.meta["seeded"]
        obs = Observation(0, 0.0, state, images, TASK)
        for pre in (None, prefix):
            remote = policy.infer(obs, pre)
            want = local.infer(images, state, TASK, pre, seed=7)
            assert remote.shape == (H, layout.DIM)
            np.testing.assert_allclose(remote, want, rtol=1e-5, atol=1e-5)
        assert not np.allclose(policy.infer(obs, None), local.infer(images, state, TASK,
                                                                    seed=8))  # the seed counts
        if policy.supports_prefix:
            np.testing.assert_allclose(policy.infer(obs, prefix)[:5], prefix, atol=1e-6)
        t = policy.last_timing
        print(f"\nlocal server: round trip {t['round_trip_ms']:.1f} ms, inference "
              f"{t['server_infer_ms']:.1f} ms, transport {t['transport_ms']:.1f} ms")
        # a wrong token is refused: the random token is the server's only door
        from xr0.serve import RemotePolicy, RemoteServerError
        with pytest.raises(RemoteServerError, match="token"):
            RemotePolicy(server.host, server.port, token="guess")
    finally:
        pid = server.pid
        policy.shutdown()
    assert server.proc.returncode is not None and gone(pid)
    policy.shutdown()  # idempotent


PARENT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from app.core.policy_process import LocalPolicyServer
    server = LocalPolicyServer({ckpt!r}, threads=1).start()
    print(server.pid, flush=True)
    time.sleep(600)
""")


def test_server_dies_with_the_app_that_started_it(ckpt, tmp_path):
    """The app is SIGKILLed (no cleanup runs): its server exits within a few seconds."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT.format(root=str(ROOT),
                                                                  ckpt=str(ckpt))],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = parent.stdout.readline()
        assert line.strip().isdigit(), parent.stderr.read()[-2000:] if not line else line
        pid = int(line)
        assert not gone(pid)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        t0 = time.monotonic()
        died = wait_gone(pid, 5.0)
        print(f"\nthe server exited {time.monotonic() - t0:.2f} s after its parent was killed")
        if not died:
            os.kill(pid, signal.SIGKILL)
        assert died, "the policy server outlived the app that started it"
    finally:
        if parent.poll() is None:
            parent.kill()


def test_a_broken_checkpoint_gives_the_servers_error_with_the_fix(ckpt, tmp_path):
    import shutil

    from app.core.policies import load_chunk_policy

    with pytest.raises(ValueError, match="no such checkpoint folder"):
        LocalPolicyServer(tmp_path / "missing").start()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LocalServerError) as e:
        load_chunk_policy(str(empty), instruction=TASK, process=True)
    msg = str(e.value)
    assert "exited (code 2) before serving" in msg and "neither a workstation checkpoint" in msg
    assert "main.py train" in msg

    broken = tmp_path / "broken"
    shutil.copytree(ckpt, broken)
    weights = max(broken.rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0)
    weights.write_bytes(weights.read_bytes()[:1000])  # a copy cut short
    server = LocalPolicyServer(broken, threads=1)
    with pytest.raises(LocalServerError, match=r"exited \(code 2\) before serving") as e:
        server.start()
    said = str(e.value).split("before serving:")[1]  # the server's own error, with its fix
    assert "corrupt or truncated" in said and "copy it again" in said
    assert gone(server.pid)
