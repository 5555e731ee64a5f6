"""Leader and follower arms on emulated servos: configuration, units, faults."""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import pytest

from drivers.config import load_rig_config
from drivers.dynamixel import control_table as ct
from drivers.dynamixel.arm import FollowerArm, LeaderArm
from drivers.dynamixel.calibration import ArmCalibration
from drivers.dynamixel.emulator import DynamixelEmulator
from drivers.errors import ServoFault

RIG = load_rig_config("aloha")


def make(role, emu, **changes):
    cfg = dataclasses.replace(RIG.arm(role, "left"), port=emu.port, **changes)
    cls = FollowerArm if role == "follower" else LeaderArm
    return cls(cfg, ArmCalibration.nominal(cfg, gripper_open=2800, gripper_closed=1800))


@pytest.fixture
def emu():
    with DynamixelEmulator([(j.id, j.model) for j in RIG.arm("follower", "left").joints]) as e:
        for k, j in enumerate(RIG.arm("follower", "left").joints):
            e.set_position(j.id, ct.CENTER_TICKS + 100 * k)
        yield e


def test_follower_connect_configures_and_holds(emu):
    arm = make("follower", emu, gripper_current_limit=250)
    arm.connect()
    try:
        for i in (1, 2, 4, 6, 7, 8):
            assert emu.get(i, "Operating_Mode") == ct.MODE_EXTENDED_POSITION
        assert emu.get(9, "Operating_Mode") == ct.MODE_CURRENT_POSITION
        assert emu.get(9, "Current_Limit") == 250
        assert all(emu.get(i, "Return_Delay_Time") == 0 for i in arm.ids)
        assert all(emu.torque_map().values())
        # holds where it was: goal == present, nothing moves
        assert [emu.get(i, "Goal_Position") for i in arm.ids] == \
            [ct.CENTER_TICKS + 100 * k for k in range(7)]
    finally:
        arm.disconnect()
    assert not any(emu.torque_map().values())
    arm.disconnect()  # idempotent


def test_units_round_trip_radians_and_gripper(emu):
    arm = make("follower", emu)
    arm.connect()
    try:
        target = np.array([0.3, -0.5, 0.7, -1.0, 0.2, 1.5, 0.25])
        ticks = arm.write(target)
        assert ticks[0] == round(0.3 / ct.RAD_PER_TICK) + ct.CENTER_TICKS
        assert ticks[6] == 1800 + 250
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            q = arm.read()
            if np.allclose(q, target, atol=ct.RAD_PER_TICK):
                break
            time.sleep(0.05)
        assert q[:6] == pytest.approx(target[:6], abs=ct.RAD_PER_TICK)
        assert q[6] == pytest.approx(0.25, abs=1e-3)
        state = arm.read_state()
        assert set(state) == {"position", "velocity", "current"}
        assert np.all(np.isfinite(state["current"]))
    finally:
        arm.disconnect()


def test_targets_are_clamped_to_limits(emu):
    arm = make("follower", emu)
    arm.connect()
    try:
        ticks = arm.write(np.array([10.0, -10.0, 0.0, 0.0, 0.0, 0.0, 3.0]))
        waist_max = RIG.arm("follower", "left").joints[0].max
        shoulder_min = RIG.arm("follower", "left").joints[1].min
        assert ticks[0] <= waist_max / ct.RAD_PER_TICK + ct.CENTER_TICKS + 1
        assert ticks[1] >= shoulder_min / ct.RAD_PER_TICK + ct.CENTER_TICKS - 1
        assert ticks[6] == 2800  # gripper fully open, not beyond
    finally:
        arm.disconnect()


def test_hardware_fault_drops_follower_torque(emu):
    arm = make("follower", emu)
    arm.connect()
    try:
        emu.hardware_error(4, 0x20)
        with pytest.raises(ServoFault) as e:
            arm.read()
        assert "joint 'elbow' (id 4" in str(e.value) and "overload" in str(e.value)
        assert not any(emu.torque_map().values()), emu.torque_map()
    finally:
        arm.disconnect()


def test_leader_torque_off_and_gripper_spring():
    with DynamixelEmulator([(j.id, j.model) for j in RIG.arm("leader", "left").joints]) as e1:
        leader = make("leader", e1)
        leader.connect()
        try:
            assert not any(e1.torque_map().values())
            e1.set_position(1, ct.CENTER_TICKS + 512)
            assert leader.read()[0] == pytest.approx(math.pi / 4)
        finally:
            leader.disconnect()
    # models in the leader config are XM430/XL430: use an XM430 gripper with a spring
    with DynamixelEmulator([(j.id, "XM430-W350" if j.name == "gripper" else j.model)
                            for j in RIG.arm("leader", "left").joints]) as e2:
        cfg = RIG.arm("leader", "left")
        joints = tuple(dataclasses.replace(j, model="XM430-W350") if j.name == "gripper" else j
                       for j in cfg.joints)
        cfg = dataclasses.replace(cfg, port=e2.port, joints=joints, gripper_spring_current=40)
        spring = LeaderArm(cfg, ArmCalibration.nominal(cfg, 2800, 1800))
        spring.connect()
        try:
            torque = e2.torque_map()
            assert torque[9] and not any(v for k, v in torque.items() if k != 9)
            assert e2.get(9, "Operating_Mode") == ct.MODE_CURRENT_POSITION
            assert e2.get(9, "Goal_Current") == 40 and e2.get(9, "Goal_Position") == 2800
        finally:
            spring.disconnect()
        assert not any(e2.torque_map().values())


def test_connect_failing_midway_leaves_torque_off(emu):
    arm = make("follower", emu)
    emu.silence(9)  # the gripper drops off the chain
    with pytest.raises(Exception, match="id 9 \\(gripper\\)"):
        arm.connect()
    assert not any(emu.torque_map().values())
    assert not arm.bus.is_open
