"""HardwareRig over four emulated buses (two leaders, two followers), real dynamixel-sdk."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from drivers import layout
from drivers.config import load_rig_config
from drivers.dynamixel import control_table as ct
from drivers.dynamixel.emulator import EmulatedRig
from drivers.errors import ConfigError, ConnectionFailed, ServoFault
from drivers.hardware import HardwareRig
from drivers.rig import open_rig

ALOHA = load_rig_config("aloha")


@pytest.fixture
def erig(tmp_path):
    with EmulatedRig(ALOHA, tmp_path) as er:
        yield er


def all_off(er) -> bool:
    return not any(on for arm in er.torque().values() for on in arm.values())


def followers_on(er) -> bool:
    t = er.torque()
    return all(all(t[n].values()) for n in ("left_follower", "right_follower"))


@pytest.mark.parametrize("parallel", [True, False])
def test_read_command_disconnect(erig, parallel):
    erig.emulators["right_leader"].set_position(1, ct.CENTER_TICKS + 256)
    rig = HardwareRig(erig.config, parallel=parallel)
    assert isinstance(open_rig(erig.config), HardwareRig)
    with rig:
        assert rig.has_leaders and followers_on(erig)
        st = rig.read()
        assert st.follower.shape == (14,) and st.leader.shape == (14,)
        assert st.leader[layout.arm_slice("right")][0] == pytest.approx(np.pi / 8)
        target = st.follower.copy()
        target[0], target[7 + 2] = 0.2, -0.3
        target[6] = 0.5
        rig.command(target)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            q = rig.read().follower
            if np.allclose(q, target, atol=2 * ct.RAD_PER_TICK):
                break
            time.sleep(0.05)
        assert q == pytest.approx(target, abs=2 * ct.RAD_PER_TICK)
        lo, hi = rig.limits()
        assert lo.shape == hi.shape == (14,) and np.all(lo < hi)
        assert all(s["reads"] > 0 for s in rig.bus_stats())
    assert all_off(erig)
    rig.disconnect()  # idempotent
    assert all_off(erig)


def test_velocity_and_current_on_request(erig):
    with HardwareRig(erig.config, read_velocity_current=True) as rig:
        st = rig.read()
        assert st.follower_velocity.shape == (14,) and st.follower_current.shape == (14,)


@pytest.mark.parametrize("failing", ["right_follower", "left_leader"])
def test_connect_failing_midway_leaves_every_torque_off(erig, failing):
    erig.emulators[failing].silence(7)
    rig = HardwareRig(erig.config)
    with pytest.raises(ConnectionFailed) as e:
        rig.connect()
    assert "id 7 (wrist_angle)" in str(e.value) and failing in str(e.value)
    assert all_off(erig), erig.torque()
    rig.disconnect()


def test_read_failure_leaves_followers_holding(erig):
    rig = HardwareRig(erig.config)
    with rig:
        before = {i: erig.emulators["left_follower"].get(i, "Goal_Position") for i in (1, 2, 4)}
        erig.emulators["right_leader"].silence(2)
        with pytest.raises(ConnectionFailed, match="right_leader joint 'shoulder'"):
            rig.read()
        assert followers_on(erig)
        assert {i: erig.emulators["left_follower"].get(i, "Goal_Position")
                for i in (1, 2, 4)} == before
    assert all_off(erig)


def test_servo_fault_in_command_drops_that_arm_and_holds_the_other(erig):
    rig = HardwareRig(erig.config)
    with rig:
        q = rig.read().follower
        erig.emulators["right_follower"].hardware_error(4, 0x20)
        with pytest.raises(ServoFault, match="right_follower joint 'elbow'.*overload"):
            rig.read()
        t = erig.torque()
        assert not any(t["right_follower"].values())
        assert all(t["left_follower"].values())
        left = erig.emulators["left_follower"]
        goal = left.get(1, "Goal_Position")
        assert goal == left.get(1, "Present_Position")  # the other arm holds
        rig_q = q.copy()
        rig_q[0] += 0.3
        with pytest.raises(ServoFault, match="commands refused after a servo fault.*overload"):
            rig.command(rig_q)
        assert left.get(1, "Goal_Position") == goal
    assert all_off(erig)
    # after a power-cycle of the faulted arm, a new connect clears the fault
    erig.emulators["right_follower"].servo(4).hardware_fault(0)
    with rig:
        rig.command(rig_q)
        rig.read()  # a round trip on each bus: the sync write before it has been handled
        assert left.get(1, "Goal_Position") == goal + round(0.3 / ct.RAD_PER_TICK)


def test_estop_drops_follower_torque_and_refuses_commands(erig):
    with HardwareRig(erig.config) as rig:
        q = rig.read().follower
        rig.estop()
        assert not any(erig.torque()["left_follower"].values())
        goal = erig.emulators["left_follower"].get(1, "Goal_Position")
        rig.command(q + 0.1)
        rig.read()
        assert erig.emulators["left_follower"].get(1, "Goal_Position") == goal


def test_missing_calibration_key_and_file(tmp_path, erig):
    arms = tuple(dataclasses.replace(a, calibration="") if a.name == "left_leader" else a
                 for a in erig.config.arms)
    with pytest.raises(ConfigError, match="left_leader' has no calibration file.*calibrate"):
        HardwareRig(dataclasses.replace(erig.config, arms=arms))
    arms = tuple(dataclasses.replace(a, calibration=str(tmp_path / "none.json"))
                 if a.name == "right_follower" else a for a in erig.config.arms)
    rig = HardwareRig(dataclasses.replace(erig.config, arms=arms))
    with pytest.raises(ConfigError, match="no calibration file.*--arm right_follower"):
        rig.connect()
    assert all_off(erig)


def test_followers_only_rig(erig):
    arms = tuple(a for a in erig.config.arms if a.role == "follower")
    with HardwareRig(dataclasses.replace(erig.config, arms=arms)) as rig:
        st = rig.read()
        assert not rig.has_leaders and st.leader is None


def _run_ticks(rig, seconds: float) -> dict:
    """A 50 Hz loop of rig.read() on absolute deadlines, as the control thread runs it."""
    from drivers.clock import Ticker

    ticker, reads, per_tick = Ticker(50), [], []
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        ticker.wait()
        n0, t0 = rig._health.reads, time.monotonic()
        rig.read()
        reads.append(time.monotonic() - t0)
        per_tick.append(rig._health.reads - n0)
    return {"ticks": len(reads), "read_p50_ms": float(np.percentile(reads, 50)) * 1e3,
            "missed": ticker.missed, "health_reads": sum(per_tick), "most_in_a_tick":
            max(per_tick)}


def test_servo_health_reaches_the_rig_within_two_seconds(erig):
    with HardwareRig(erig.config) as rig:
        h = rig.health()
        assert set(h) == {a.name for a in erig.config.arms}
        elbow = h["left_follower"]["elbow"]
        assert (elbow.temperature_c, elbow.limit_c, elbow.error_bits) == (32, 80, 0)
        assert not elbow.hot and not elbow.faulty and elbow.describe() == ""
        erig.emulators["left_follower"].set(4, "Present_Temperature", 74)
        erig.emulators["right_leader"].set(1, "Present_Temperature", 45)
        t0 = time.monotonic()
        deadline = t0 + 2.0
        while time.monotonic() < deadline:
            rig.read()
            h = rig.health()
            if (h["left_follower"]["elbow"].temperature_c == 74
                    and h["right_leader"]["waist"].temperature_c == 45):
                break
            time.sleep(0.02)
        elbow = h["left_follower"]["elbow"]
        assert elbow.temperature_c == 74, f"not read within 2 s: {elbow}"
        assert h["right_leader"]["waist"].temperature_c == 45
        # 74 °C is within the 10 °C margin of the 80 °C Temperature_Limit: a warning
        assert elbow.hot and not h["right_leader"]["waist"].hot
        assert "74 °C, near its limit of 80 °C" in elbow.describe()
        assert elbow.as_dict()["hot"] is True
        assert h["left_follower"]["waist"].temperature_c == 32


def test_servo_fault_shows_in_health_with_the_fix(erig):
    with HardwareRig(erig.config) as rig:
        rig.read()
        erig.emulators["right_follower"].hardware_error(4, 0x20)
        erig.emulators["right_follower"].hardware_error(6, 0x04)
        with pytest.raises(ServoFault):
            rig.read()
        h = rig.health()["right_follower"]
        assert h["elbow"].faulty and h["elbow"].errors == [ct.decode_hardware_error(0x20)[0]]
        assert h["forearm_roll"].errors[0][0] == "overheating"
        assert "reports overload: remove the load" in h["elbow"].describe()
        assert h["elbow"].as_dict()["errors"][0]["fault"] == "overload"
        assert not h["waist"].faulty and not any(s.faulty for s in rig.health()["left_follower"]
                                                 .values())
    assert all_off(erig)
    # the readings stay after disconnect (what the panel shows after the loop stopped)
    assert rig.health()["right_follower"]["elbow"].faulty


def test_health_reads_one_arm_per_tick_and_leave_the_loop_period_alone(erig):
    """Loosely: with the health reads on, no tick does more than one, about 8 happen per second
    (4 arms x 2 fields at 1 Hz per arm), and the loop keeps its rate and its typical read time."""
    with HardwareRig(erig.config, health_period_s=None) as rig:
        off = _run_ticks(rig, 2.0)
    with HardwareRig(erig.config) as rig:
        on = _run_ticks(rig, 2.0)
    assert off["health_reads"] == 0
    assert on["most_in_a_tick"] == 1, on
    assert 12 <= on["health_reads"] <= 18, on  # 2 s at 8 per second
    for run in (off, on):
        assert run["ticks"] >= 0.9 * 100 and run["missed"] <= 5, (off, on)
    # a health read is one ~1 ms sync read on one bus in one tick of ~6
    assert on["read_p50_ms"] < off["read_p50_ms"] + 3.0, (off, on)
