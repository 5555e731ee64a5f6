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
