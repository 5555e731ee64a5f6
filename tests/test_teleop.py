"""Teleop on the real MuJoCo sim rig: the safe ramp, clamps, the gap stop, the e-stop, and the
control loop of RigSession."""

import dataclasses
import time

import numpy as np
import pytest

from app.core.rig_session import RigSession
from drivers import layout
from drivers.config import load_rig_config
from drivers.safety import max_step_vector
from drivers.sim.rig import SimRig
from drivers.teleop import Teleop, TeleopState


def _stepping_rig(**safety) -> SimRig:
    cfg = load_rig_config("sim")
    cfg = cfg.with_(sim=dataclasses.replace(cfg.sim, realtime=False), cameras=())
    if safety:
        cfg = cfg.with_(safety=dataclasses.replace(cfg.safety, **safety))
    rig = SimRig(cfg)
    rig.connect()
    return rig


def test_engage_ramps_followers_to_the_leader_pose_at_the_ramp_speed():
    rig = _stepping_rig()
    try:
        # put the followers away from the leader pose: shoulders and elbows 0.4 rad off
        start = rig.read().follower.copy()
        away = start.copy()
        away[[1, 2, 8, 9]] += np.array([0.4, -0.4, 0.4, -0.4])
        for _ in range(60):
            rig.command(away)
            rig.step()
        assert np.abs(rig.read().follower - rig.read().leader)[[1, 2, 8, 9]].max() > 0.3
        tp = Teleop(rig)
        tp.engage()
        assert tp.state is TeleopState.RAMPING
        ramp_delta = tp.ramp_delta
        prev = None
        steps = 0
        while tp.state is TeleopState.RAMPING and steps < 200:
            st = rig.read()
            out = tp.step(st)
            assert out is not None
            if prev is not None:
                assert np.all(np.abs(out.command - prev) <= ramp_delta + 1e-9)
            prev = out.command
            rig.step()
            steps += 1
        assert tp.state is TeleopState.ENGAGED
        # 0.4 rad at 1 rad/s (0.02 rad per 20 ms step) takes ~20 steps; the leader moves meanwhile
        assert 15 <= steps < 200
    finally:
        rig.disconnect()


def test_engaged_commands_stay_within_limits_and_per_step_clamp():
    rig = _stepping_rig()
    try:
        tp = Teleop(rig)
        tp.engage()
        lo, hi = rig.limits()
        max_step = max_step_vector(rig.config.safety)
        prev = None
        for _ in range(150):
            out = tp.step(rig.read())
            if out is not None:
                assert np.all(out.command >= lo - 1e-12) and np.all(out.command <= hi + 1e-12)
                if prev is not None:
                    assert np.all(np.abs(out.command - prev) <= max_step + 1e-9)
                prev = out.command
            rig.step()
        assert prev is not None
    finally:
        rig.disconnect()


def test_follower_losing_torque_trips_the_gap_stop_and_followers_hold():
    rig = _stepping_rig()
    try:
        tp = Teleop(rig)
        tp.engage()
        for _ in range(10):
            tp.step(rig.read())
            rig.step()
        rig.torque_off()  # the followers go limp and sag away from the leaders
        for _ in range(300):
            tp.step(rig.read())
            if tp.state is TeleopState.STOPPED:
                break
            rig.step()
        assert tp.state is TeleopState.STOPPED
        assert "gap" in tp.stop_reason and "exceeds 0.8" in tp.stop_reason
        assert any(name in tp.stop_reason for name in layout.NAMES)
        # stopped: followers hold (torque back on, targets = present pose), no more commands
        st = rig.read()
        assert not st.info["limp"]
        np.testing.assert_allclose(rig.targets(), st.follower, atol=1e-6)
        assert tp.step(st) is None
    finally:
        rig.disconnect()


def test_teleop_needs_leaders_and_no_estop():
    rig = _stepping_rig()
    try:
        tp = Teleop(rig)
        rig.estop()
        with pytest.raises(ValueError, match="e-stop is active"):
            tp.engage()
        rig.clear_estop()
        tp.engage()
        assert tp.state is TeleopState.RAMPING
    finally:
        rig.disconnect()


def test_rig_session_runs_teleop_at_the_control_rate_and_estop_stops_within_a_period():
    cfg = load_rig_config("sim").with_(cameras=())
    session = RigSession(cfg)
    with session:
        session.engage()
        time.sleep(1.5)
        st = session.status()
        assert st.running and st.teleop in ("ramping", "engaged")
        assert 45 <= st.rate_hz <= 51
        moved = session.latest().command
        assert moved is not None
        t_press = time.monotonic()
        session.estop()
        assert time.monotonic() - t_press < 1.0 / cfg.control_hz
        assert session.rig.estopped
        frozen = session.rig.targets().copy()
        time.sleep(0.3)
        st = session.status()
        assert st.teleop == "stopped" and "e-stop" in st.stop_reason
        # no command got through after the e-stop: targets unchanged, arms limp or holding
        np.testing.assert_array_equal(session.rig.targets(), frozen)
        assert session.latest().command is None
        session.release_estop()
        assert session.status().teleop == "idle"
    assert not session.status().running


def test_the_control_rate_counts_tick_intervals_and_drops_to_zero_when_the_loop_stalls():
    cfg = load_rig_config("sim").with_(cameras=())
    session = RigSession(cfg)
    with session:
        deadline = time.monotonic() + 5.0
        while session.status().steps < 20 and time.monotonic() < deadline:
            time.sleep(0.005)
        # the first ticks after start-up already give the control rate: the time the thread
        # took to start is not a tick interval
        assert 45 <= session.status().rate_hz <= 55
        session._stop.set()
        session._thread.join(timeout=2.0)
        time.sleep(5.0 / cfg.control_hz + 0.05)
        assert session.status().rate_hz == 0.0
