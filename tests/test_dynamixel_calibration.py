"""Calibration: the guided workflow against emulated servos, the file, and its checks."""

from __future__ import annotations

import dataclasses
import json

import pytest

from drivers.config import load_rig_config
from drivers.dynamixel import control_table as ct
from drivers.dynamixel.arm import FollowerArm
from drivers.dynamixel.bus import DynamixelBus, Motor
from drivers.dynamixel.calibration import (
    ArmCalibration,
    CalibrationSession,
    Step,
    load_calibration,
)
from drivers.dynamixel.emulator import DynamixelEmulator
from drivers.errors import ConfigError, RigError


@pytest.fixture
def arm_cfg():
    return load_rig_config("aloha").arm("follower", "left")


@pytest.fixture
def emu(arm_cfg):
    with DynamixelEmulator([(j.id, j.model) for j in arm_cfg.joints]) as e:
        yield e


def bus_for(arm, port):
    return DynamixelBus(port, [Motor(j.name, j.id, j.model) for j in arm.joints], name=arm.name)


def run_workflow(emu, arm, reverse=frozenset()):
    """An operator: zero pose at arbitrary raw readings, each joint swept, gripper open/closed."""
    bus = bus_for(arm, emu.port)
    with bus:
        s = CalibrationSession(bus, arm, reverse=reverse)
        s.begin()
        assert s.step is Step.ZERO and "zero pose" in s.prompt
        raw_zero = {j.id: 900 + 53 * k for k, j in enumerate(arm.joints)}
        for i, t in raw_zero.items():
            emu.set_position(i, t)
        offsets = s.record_zero()
        assert bus.sync_read()["Present_Position"][1] == ct.CENTER_TICKS
        for j in arm.joints[:-1]:
            for t in (ct.CENTER_TICKS - 700, ct.CENTER_TICKS + 650, ct.CENTER_TICKS):
                emu.set_position(j.id, t)
                s.sample_range()
        s.finish_range()
        emu.set_position(9, 2600)
        s.record_gripper_open()
        emu.set_position(9, 1900)
        s.record_gripper_closed()
        return s.result(), offsets, raw_zero


def test_workflow_round_trip(tmp_path, emu, arm_cfg):
    cal, offsets, raw_zero = run_workflow(emu, arm_cfg, reverse=frozenset({"elbow"}))
    assert emu.get(4, "Drive_Mode") == ct.DRIVE_MODE_REVERSE
    assert offsets["waist"] == ct.CENTER_TICKS - raw_zero[1]
    assert emu.get(1, "Homing_Offset") == offsets["waist"]
    w = cal.joints["waist"]
    assert (w.range_min, w.range_max) == (ct.CENTER_TICKS - 700, ct.CENTER_TICKS + 650)
    assert (cal.gripper_open, cal.gripper_closed) == (2600, 1900)
    path = cal.save(tmp_path / "cal" / "left_follower.json")
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    again = load_calibration(path, "left_follower")
    assert again == cal
    # the follower connects with it: zero pose reads 0 rad, the gripper reads in 0..1
    arm = FollowerArm(dataclasses.replace(arm_cfg, port=emu.port), path)
    for i, t in raw_zero.items():
        emu.set_position(i, ct.CENTER_TICKS)  # wherever: shaft set so it reads 2048
    emu.set_position(9, 2250)
    arm.connect()
    try:
        q = arm.read()
        assert q[:6] == pytest.approx(0.0, abs=1e-9)
        assert q[6] == pytest.approx(0.5)
    finally:
        arm.disconnect()


def test_workflow_refuses_steps_out_of_order_and_unmoved_joints(emu, arm_cfg):
    with bus_for(arm_cfg, emu.port) as bus:
        s = CalibrationSession(bus, arm_cfg)
        with pytest.raises(RigError, match="expected step"):
            s.record_zero()
        s.begin()
        s.record_zero()
        emu.set_position(1, 3000)
        s.sample_range()
        with pytest.raises(RigError) as e:
            s.finish_range()
        assert "shoulder" in str(e.value) and "waist" not in str(e.value)
    with pytest.raises(RigError, match="unknown joint"):
        CalibrationSession(bus, arm_cfg, reverse=frozenset({"knee"})).begin()


def test_servo_mismatch_is_reported_with_the_fix(tmp_path, emu, arm_cfg):
    cal, _, _ = run_workflow(emu, arm_cfg)
    path = cal.save(tmp_path / "left_follower.json")
    emu.set(6, "Homing_Offset", 77)  # the forearm servo was recalibrated elsewhere
    arm = FollowerArm(dataclasses.replace(arm_cfg, port=emu.port), path)
    with pytest.raises(ConfigError) as e:
        arm.connect()
    msg = str(e.value)
    assert "forearm_roll' (id 6) has Homing_Offset 77" in msg
    assert str(path) in msg and "main.py calibrate" in msg and "--arm left_follower" in msg
    assert not any(emu.torque_map().values())


def test_config_mismatch_is_reported(tmp_path, arm_cfg):
    cal = ArmCalibration.nominal(arm_cfg)
    cal.joints["elbow"].id = 5
    path = cal.save(tmp_path / "c.json")
    arm = FollowerArm(dataclasses.replace(arm_cfg, port="/dev/null"), path)
    with pytest.raises(ConfigError, match="joint 'elbow' as id 5 .* rig config says id 4"):
        arm.connect()


def _write(tmp_path, data):
    p = tmp_path / "left_follower.json"
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return p


@pytest.mark.parametrize("mutate, key", [
    (lambda d: d.pop("gripper"), "key 'gripper'"),
    (lambda d: d["joints"]["elbow"].pop("homing_offset"), "joints.elbow.homing_offset"),
    (lambda d: d["joints"]["waist"].__setitem__("range_min", "low"), "joints.waist.range_min"),
    (lambda d: d["joints"]["waist"].__setitem__("model", "AX-12"), "joints.waist.model"),
    (lambda d: d["joints"]["waist"].__setitem__("range_min", 9999), "joints.waist.range_min"),
    (lambda d: d.__setitem__("version", 7), "version"),
    (lambda d: d.__setitem__("colour", "red"), "colour"),
])
def test_malformed_file_names_file_key_and_fix(tmp_path, arm_cfg, mutate, key):
    data = ArmCalibration.nominal(arm_cfg).to_dict()
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as e:
        load_calibration(path, "left_follower")
    msg = str(e.value)
    assert str(path) in msg and key in msg and "main.py calibrate" in msg


def test_not_json_and_missing_file(tmp_path):
    path = _write(tmp_path, "{not json")
    with pytest.raises(ConfigError, match="not valid JSON.*main.py calibrate"):
        load_calibration(path, "left_follower")
    with pytest.raises(ConfigError, match="no calibration file at .*calibrate the arm first"):
        load_calibration(tmp_path / "nope.json", "left_follower")
