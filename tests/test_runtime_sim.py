"""The runtime on the sim rig: the scripted-chunk policy completes the transfer-cube task through
AutonomySource (safety filter, ramp, holds) in stepping mode, and an e-stop stops a real-time run
driven by RigSession."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from app.core.autonomy import AutonomySource, AutonomyState, run_stepping
from app.core.rig_session import RigSession
from app.core.scripted_policy import ScriptedChunkPolicy
from drivers.config import SimConfig
from drivers.sim.rig import SimRig
from xr0.runtime import ChunkRuntime, Flag, RuntimeConfig
from xr0.runtime.executor import SteppedExecutor
from xr0.runtime.metrics import boundary_discontinuity


def _stepping(cfg):
    return cfg.with_(sim=dataclasses.replace(cfg.sim or SimConfig(), realtime=False,
                                             task="transfer_cube"))


@pytest.mark.parametrize("delay", [0, 4])
def test_scripted_chunks_complete_transfer_cube_with_xr0(sim_config, delay):
    rig = SimRig(_stepping(sim_config))
    with rig:
        rig.reset(3)
        policy = ScriptedChunkPolicy(rig, chunk_length=50)
        rt = ChunkRuntime(policy, RuntimeConfig(dt=rig.dt, strategy="xr0", k=15),
                          executor=SteppedExecutor(policy, rig.dt, delay))
        src = AutonomySource(rig, rt, instruction="transfer the cube", time_base="sim",
                             extra=policy.capture)
        seen = []
        st = run_stepping(rig, src, int(rig.sim.episode_seconds * 50),
                          on_step=lambda k, s, out: seen.append(out))
        assert st.info["success"], f"reward {st.info['episode_max_reward']}"
    assert seen[-1].state is AutonomyState.RUNNING
    assert not any(o.flags & (Flag.STARVED | Flag.LATE | Flag.STALE_OBS) for o in seen)
    chunks = rt.telemetry.chunks()
    assert all(c.arrival_step - c.request_step == delay for c in chunks)
    assert all(c.prefix_length == max(delay, 1) for c in chunks[1:])
    snap = rt.telemetry.snapshot()
    bd = boundary_discontinuity(snap["step_action"], snap["step_chunk"], snap["step_flags"])
    assert bd["switches"] >= 8 and bd["mean"] <= 1.5, bd
    # the commands obeyed the rig's per-step rate limit
    cmds = np.array([o.command for o in seen])
    assert (np.abs(np.diff(cmds, axis=0)) <= src.filter.max_step + 1e-9).all()


def test_observation_has_camera_frames(sim_config):
    rig = SimRig(_stepping(sim_config))
    with rig:
        policy = ScriptedChunkPolicy(rig, chunk_length=20)
        rt = ChunkRuntime(policy, RuntimeConfig(dt=rig.dt, k=5),
                          executor=SteppedExecutor(policy, rig.dt, 1))
        src = AutonomySource(rig, rt, time_base="sim", extra=policy.capture)
        st = rig.read()
        obs = src._observe(0, st)
    assert set(obs.images) == {c.name for c in sim_config.cameras}
    assert all(im.shape == (180, 240, 3) for im in obs.images.values())
    assert "plan" in obs.extra and obs.state.shape == (14,)


def test_estop_mid_run_stops_commands(sim_config):
    cfg = sim_config.with_(cameras=sim_config.cameras[:1])
    session = RigSession(cfg)
    with session:
        rig = session.rig
        policy = ScriptedChunkPolicy(rig, chunk_length=50, latency_s=0.06)
        rt = ChunkRuntime(policy, RuntimeConfig(dt=rig.dt, k=15))
        src = AutonomySource(rig, rt, extra=policy.capture)
        session.set_source(src)
        deadline = time.monotonic() + 20
        while src.commands < 60 or src.state is not AutonomyState.RUNNING:
            assert time.monotonic() < deadline, f"no progress: {src.state}, {session.status()}"
            time.sleep(0.05)
        assert len(rt.telemetry.chunks()) >= 2
        session.estop()
        assert src.state is AutonomyState.STOPPED and rt.stopped
        n = src.commands
        targets = rig.targets()
        time.sleep(0.3)
        assert src.commands == n  # the control loop no longer calls the source
        np.testing.assert_array_equal(rig.targets(), targets)  # nothing reached the arms
        st = src.step(rig.read())  # even if it were called, it commands nothing
        assert st.command is None and st.flags & Flag.STOPPED
        assert not session.status().error
