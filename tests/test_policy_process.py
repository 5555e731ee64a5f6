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


def policy_servers() -> list[int]:
    """The pids of this process's children that are running local policy servers."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (d / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and b"serve" in cmd and b"--exit-with-parent" in cmd \
                and not gone(int(d.name)):
            pids.append(int(d.name))
    return pids


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

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the server's (threads=1 below)
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
        assert policy.supports_prefix  # the clean prefix comes back as the chunk's first rows
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
        torch.set_num_threads(threads)
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


# -- the Autonomy tab on the real-time sim rig: in the app's process against the local server ------

def chunk_latencies(qtbot, tab, chunks: int, seconds: float, restart=None):
    """Per-chunk latency (ms) of the tab's runs: until `chunks` arrived or `seconds` passed.
    restart: starts the run again after it failed (a policy too slow for the chunk fails the
    run once its chunk arrived, which is counted); None: the run must keep running. Returns the
    latencies and the failures' messages."""
    got: list[float] = []
    failures: list[str] = []
    end = time.monotonic() + seconds

    def settled() -> bool:
        tel = tab.run.telemetry
        return (tab.run.state != "running" or time.monotonic() > end
                or (tel is not None and len(got) + len(tel.latencies_ms()) >= chunks))

    while True:
        qtbot.waitUntil(settled, timeout=int(seconds * 1e3) + 10_000)
        if tab.run.telemetry is not None:
            got += tab.run.telemetry.latencies_ms().tolist()
        if tab.run.state == "failed" and restart is not None:
            failures.append(tab.run.error)
            if len(got) < chunks and time.monotonic() < end:
                restart()
                qtbot.waitUntil(lambda: tab.state in ("running", "failed"), timeout=60_000)
                continue
        elif restart is None:
            assert tab.run.state == "running", tab.run.error
        return np.array(got), failures


@pytest.mark.gui
def test_chunk_latency_in_the_tab_in_process_and_through_the_local_server(
        qtbot, isolated_settings, sim_config, tmp_path, ckpt):
    """The real tab (30 Hz live plots on the GUI thread) on the real-time sim rig (control and
    physics threads, cameras rendered): the same checkpoint run in the app's process, as the tab
    did before, then as Start runs it now, in a local server process."""
    import torch
    from PySide6.QtCore import Qt

    from app.core.policies import load_chunk_policy
    from app.core.policy_process import LocalPolicy
    from app.core.rig_session import RigSession
    from app.qt.autonomy_tab import AutonomyTab

    session = RigSession(sim_config)  # three cameras, the policy sees two
    session.start()
    tab = AutonomyTab(session, tmp_path / "store")
    try:
        qtbot.addWidget(tab)
        errors: list[str] = []
        tab.error.connect(lambda title, text: errors.append(f"{title}: {text}"))
        tab.resize(1500, 900)
        tab.show()
        tab.policy.setCurrentText(str(ckpt))
        tab.instruction.setCurrentText(TASK)

        # in the app's process (torch's default threads, as the app has them)
        threads = torch.get_num_threads()
        in_app = load_chunk_policy(str(ckpt), instruction=TASK)
        tab._begin(in_app)
        qtbot.waitUntil(lambda: tab.state in ("running", "failed"), timeout=60_000)
        in_process, failures = chunk_latencies(qtbot, tab, 8, 40.0,
                                               restart=lambda: tab._begin(in_app))
        if tab.state == "running":
            qtbot.mouseClick(tab.stop_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: tab.state in ("stopped", "failed"), timeout=10_000)
        qtbot.wait(100)  # the failures' error dialogs are queued; they are reported below
        assert len(in_process) >= 1, failures
        assert all("inference takes" in f for f in failures), failures  # too slow, never else
        errors.clear()

        # Start: the checkpoint is served by a local server process for this run
        qtbot.mouseClick(tab.start_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: tab.state == "running", timeout=60_000)
        policy = tab.run.policy
        assert isinstance(policy, LocalPolicy) and policy_servers() == [policy.server.pid]
        served, _ = chunk_latencies(qtbot, tab, 8, 40.0)
        server_ms = np.array([t["server_infer_ms"] for t in policy.timings])
        pid = policy.server.pid
        qtbot.mouseClick(tab.stop_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: tab.state == "stopped", timeout=10_000)
        assert wait_gone(pid, 5.0), "the local server outlived its run"

        def p(x, q):
            return float(np.percentile(x, q)) if len(x) else float("nan")

        print(f"\nper-chunk latency in the Autonomy tab on the real-time sim rig: in the app's "
              f"process ({threads} torch threads) p50 {p(in_process, 50):.0f} ms p95 "
              f"{p(in_process, 95):.0f} ms over {len(in_process)} chunks, {len(failures)} runs "
              f"failed as too slow for the chunk; through the local "
              f"server ({policy.server.threads} thread(s)) p50 {p(served, 50):.0f} ms p95 "
              f"{p(served, 95):.0f} ms over {len(served)} chunks (its inference p50 "
              f"{p(server_ms, 50):.0f} ms)")
        assert len(served) >= 8 and p(served, 50) < 500.0, served

        # a run going when the app closes: shutdown() stops its server before it returns
        qtbot.mouseClick(tab.start_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: tab.state == "running", timeout=60_000)
        pid = tab.run.policy.server.pid
        tab.shutdown()
        assert tab.run.state == "stopped" and gone(pid) and not policy_servers()
        assert not errors, errors
    finally:
        tab.shutdown()
        session.close()
