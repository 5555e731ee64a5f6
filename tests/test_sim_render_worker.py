"""The real-time SimRig's render worker process: frames, the control loop's timing beside it, and
its lifecycle (disconnect, a dead parent, a dead worker), in the real MuJoCo."""

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mujoco
import numpy as np
import pytest

from drivers.config import SimConfig
from drivers.errors import ConnectionFailed
from drivers.sim.render_worker import CameraSpec, RenderWorker, SceneRenderer, pose
from drivers.sim.rig import SimRig

ROOT = Path(__file__).resolve().parents[1]


def configured(cfg, realtime=True, cameras=("top", "left_wrist", "right_wrist")):
    base = cfg.sim or SimConfig()
    return cfg.with_(
        cameras=tuple(c for c in cfg.cameras if c.name in cameras),
        sim=dataclasses.replace(base, realtime=realtime),
    )


def alive(pid: int) -> bool:
    """The process exists and has not exited (a zombie awaiting its reaper counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return not alive(pid)


class RecordingRig(SimRig):
    """Keeps every state it publishes for rendering, by sim time."""

    def __init__(self, config):
        super().__init__(config)
        self.published: dict[float, np.ndarray] = {}

    def _state_snapshot(self):
        snap = super()._state_snapshot()
        self.published[round(snap[1], 6)] = snap[0]
        return snap


def render_here(rig, qpos, cam):
    data = mujoco.MjData(rig.model)
    pose(rig.model, data, qpos)
    scene = SceneRenderer(rig.model)
    try:
        return scene.render(data, cam.sim_camera, cam.config.height, cam.config.width)
    finally:
        scene.close()


def test_worker_frames_arrive_at_fps_and_equal_an_in_process_render(sim_config):
    rig = RecordingRig(configured(sim_config))
    fps = {c.name: c.fps for c in rig.config.cameras}
    with rig:
        pid = rig.render_worker_pid
        assert pid is not None and alive(pid)
        for cam in rig.cameras.values():
            cam.wait_next(0, timeout_s=10.0)
        seq0 = {n: c.latest().seq for n, c in rig.cameras.items()}
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2.0:  # the operator moves the arms meanwhile
            rig.command(rig.read().leader)
            time.sleep(0.02)
        wall = time.monotonic() - t0
        frames = {n: c.latest() for n, c in rig.cameras.items()}
        stats = rig.stats()
    for name, f in frames.items():
        cam = rig.cameras[name]
        n = f.seq - seq0[name]
        assert 0.75 * fps[name] * wall <= n <= fps[name] * wall + 2, (name, n, stats)
        assert 0.75 * fps[name] <= stats["camera_fps"][name] <= 1.1 * fps[name], stats
        assert f.color.shape == (cam.config.height, cam.config.width, 3)
        assert f.color.dtype == np.uint8 and f.color.flags.owndata
        # the frame shows the state published at its t_device, as this process renders it
        qpos = rig.published[round(f.t_device, 6)]
        assert f.t_device > 1.0 and np.abs(qpos[:16] - rig.published[0.0][:16]).max() > 0.01
        here = render_here(rig, qpos, cam)
        assert np.abs(f.color.astype(int) - here).max() <= 1, name
        assert f.color.std() > 5.0
    assert not alive(pid)


def test_render_worker_renders_a_batch_of_one_state_pixel_equal(sim_config):
    """The worker's protocol on its own: three cameras of one state, several requests."""
    rig = SimRig(configured(sim_config, realtime=False))
    with rig:
        for _ in range(40):
            rig.command(rig.read().leader)
            rig.step()
        qpos = rig.data.qpos.copy()
    cams = list(rig.cameras.values())
    specs = [CameraSpec(c.name, c.sim_camera, c.config.height, c.config.width) for c in cams]
    worker = RenderWorker(rig.task.name, 640, 480, rig.model.nq, rig.model.nmocap, specs)
    worker.start()
    got = []
    try:
        worker.render(qpos, 0.8, [0, 1, 2], lambda i, c, t: got.append((i, c, t)))
        worker.render(qpos, 0.84, [2], lambda i, c, t: got.append((i, c, t)))
    finally:
        worker.stop()
    assert sorted(i for i, _, _ in got[:3]) == [0, 1, 2] and got[3][0] == 2
    assert [t for _, _, t in got] == [0.8, 0.8, 0.8, 0.84]
    for i, color, _ in got:
        here = render_here(rig, qpos, cams[i])
        assert np.abs(color.astype(int) - here).max() <= 1, cams[i].name
    assert not alive(worker.pid)
    worker.stop()  # idempotent


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_control_loop_keeps_its_period_while_three_cameras_render_elsewhere(sim_config):
    """The app's cameras (three at 240x320, 25 fps) render in the worker: the session's process
    spends no CPU (and no GIL) on them, and its control thread keeps its period.

    Period error on 2 shared cores is at the mercy of other processes (a spike preempts the thread
    holding the GIL): a quiet machine gives p99 under 1 ms, a clean CI machine gave best windows of
    2.6-5.2 ms. The bound is therefore a fraction of the 20 ms period, on the best of up to five
    3 s windows; the CPU split is the reliable discriminator (in-process rendering cost this
    process ~0.5 s/s more)."""
    from app.core.rig_session import RigSession
    from drivers.config import load_rig_config

    cfg = load_rig_config("sim")
    assert [(c.height, c.width, c.fps) for c in cfg.cameras] == [(240, 320, 25)] * 3
    session = RigSession(cfg)
    session.start()
    windows = []
    try:
        worker = session.rig.render_worker_pid
        for cam in session.rig.cameras.values():
            cam.wait_next(0, timeout_s=10.0)
        time.sleep(0.5)
        for _ in range(5):
            session.period_error.clear()
            w0, c0, k0 = time.monotonic(), time.process_time(), cpu_seconds(worker)
            time.sleep(3.0)
            wall = time.monotonic() - w0
            v = session.period_error.values() * 1e3
            windows.append({
                "ticks": len(v),
                "p99_ms": round(float(np.percentile(v, 99)), 3),
                "max_ms": round(float(v.max()), 3),
                "cpu_here": round((time.process_time() - c0) / wall, 3),
                "cpu_worker": round((cpu_seconds(worker) - k0) / wall, 3),
            })
            if windows[-1]["p99_ms"] <= 2.0:
                break  # a quiet window: no need for more
        st = session.status()
    finally:
        session.close()
    assert st.error == "" and all(w["ticks"] >= 140 for w in windows), (st, windows)
    assert min(w["p99_ms"] for w in windows) <= 8.0, windows  # 40% of the period
    assert min(st.camera_fps.values()) >= 10.0, st
    # 75 frames/s at ~6-9 ms each: most of a core, spent in the worker, not here
    assert all(w["cpu_worker"] >= 0.2 and w["cpu_here"] <= 0.45 for w in windows), windows


def test_worker_stops_with_disconnect_and_restarts_with_connect(sim_config):
    rig = SimRig(configured(sim_config, cameras=("top",)))
    rig.connect()
    pid = rig.render_worker_pid
    shm = Path("/dev/shm") / rig._worker._shm.name.lstrip("/")
    rig.cameras["top"].wait_next(0, timeout_s=10.0)
    assert alive(pid) and shm.exists()
    rig.disconnect()
    assert rig.render_worker_pid is None and not alive(pid) and not shm.exists()
    rig.disconnect()  # idempotent
    with rig:
        assert rig.render_worker_pid not in (None, pid)
        assert rig.cameras["top"].wait_next(0, timeout_s=10.0).color.std() > 5.0
    stepping = SimRig(configured(sim_config, realtime=False, cameras=("top",)))
    with stepping:
        assert stepping.render_worker_pid is None  # stepping mode renders in this process
        stepping.step()


PARENT = textwrap.dedent(
    """
    import dataclasses, os, sys, time
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    from drivers.config import load_rig_config
    from drivers.sim.rig import SimRig
    cfg = load_rig_config("sim")
    cams = tuple(dataclasses.replace(c, width=96, height=64) for c in cfg.cameras[:1])
    rig = SimRig(cfg.with_(cameras=cams))
    rig.connect()
    rig.cameras["top"].wait_next(0, timeout_s=20.0)
    holder = 0
    if sys.argv[1] == "fork":  # a child of the parent keeps every inherited pipe end open
        holder = os.fork()
        if holder == 0:
            time.sleep(30)
            os._exit(0)
    print(rig.render_worker_pid, holder, flush=True)
    time.sleep(60)
    """
)


@pytest.mark.parametrize("how", ["plain", "fork"])
def test_worker_exits_when_its_parent_is_killed(how):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, how], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    holder = 0
    try:
        line = parent.stdout.readline()
        assert line, f"the parent script failed (exit {parent.poll()})"
        worker, holder = (int(x) for x in line.split())
        assert alive(worker)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=5)
        # plain: the request pipe reaches EOF; fork: the pipe stays open in the parent's child,
        # and the worker notices its parent changed
        assert wait_gone(worker, 5.0), f"render worker {worker} outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
        if holder:
            os.kill(holder, signal.SIGKILL)


def test_a_killed_worker_fails_the_cameras_and_the_arms_keep_holding(sim_config):
    from app.core.rig_session import RigSession

    session = RigSession(configured(sim_config))
    session.start()
    rig = session.rig
    try:
        frame = rig.cameras["left_wrist"].wait_next(0, timeout_s=10.0)
        rig.hold()
        time.sleep(0.3)
        held = rig.read().follower
        os.kill(rig.render_worker_pid, signal.SIGKILL)
        with pytest.raises(ConnectionFailed, match=r"sim camera 'left_wrist'.*render worker"):
            rig.cameras["left_wrist"].wait_next(frame.seq + 100, timeout_s=3.0)
        for name, cam in rig.cameras.items():
            with pytest.raises(ConnectionFailed, match=rf"'{name}'.*killed by signal 9"):
                cam.latest()
        steps = rig.stats()["steps"]
        time.sleep(0.5)
        state = rig.read()  # no error: only the cameras failed
        st = session.status()
        stats = rig.stats()
    finally:
        session.close()
    assert st.running and st.error == "", st
    assert stats["steps"] >= steps + 15, stats  # physics keeps running at ~50 Hz
    assert "render worker" in stats["render_error"] and set(st.camera_fps.values()) == {0.0}
    assert not state.info["limp"] and np.abs(state.follower - held).max() < 0.05
    assert session.frames() == {}


def test_a_worker_that_cannot_start_fails_connect_cleanly(sim_config, monkeypatch):
    rig = SimRig(configured(sim_config, cameras=("top",)))
    monkeypatch.setenv("MUJOCO_GL", "no-such-backend")  # the worker's mujoco cannot load
    with pytest.raises(ConnectionFailed, match="render worker did not start.*MUJOCO_GL"):
        rig.connect()
    assert not rig.connected and rig.render_worker_pid is None
    monkeypatch.undo()
    with rig:
        assert rig.cameras["top"].wait_next(0, timeout_s=10.0).seq >= 1
