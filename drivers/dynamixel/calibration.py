"""Per-arm calibration: the file, its check against the servos, and the guided workflow.

A calibration file (JSON, one per arm) records for each joint the servo id and model, the drive
mode (direction) and homing offset written into the servo's EEPROM, and the range of motion in
ticks; for the gripper, the open and closed ticks. After calibration the zero pose of every joint
reads CENTER_TICKS (2048), so joint angle = (ticks - 2048) * 2*pi/4096.

The workflow is a small state machine the CLI (`python main.py calibrate`) or the GUI drives:

    s = CalibrationSession(bus, arm_config)
    s.begin()                  # torque off, offsets cleared, directions set
    s.record_zero()            # arm held in the zero pose -> homing offsets
    while moving: s.sample_range()   # operator moves every joint through its range
    s.finish_range()
    s.record_gripper_open(); s.record_gripper_closed()
    s.result().save(path)
"""

from __future__ import annotations

import enum
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from drivers.config import ArmConfig
from drivers.dynamixel import control_table as ct
from drivers.dynamixel.bus import DynamixelBus
from drivers.errors import ConfigError, RigError

FORMAT_VERSION = 1
MIN_TRAVEL_TICKS = 100  # a joint that moved less than this during the range step was forgotten
MIN_GRIPPER_TRAVEL_TICKS = 50


def recalibrate_hint(arm: str) -> str:
    return f"re-run `python main.py calibrate --rig <your rig config> --arm {arm}`"


@dataclass
class JointCalibration:
    id: int
    model: str
    drive_mode: int = 0
    homing_offset: int = 0
    range_min: int = 0
    range_max: int = ct.TICKS_PER_REV - 1


@dataclass
class ArmCalibration:
    arm: str
    joints: dict[str, JointCalibration]  # every joint of the arm, gripper included
    gripper_open: int
    gripper_closed: int
    version: int = FORMAT_VERSION

    @classmethod
    def nominal(cls, arm: ArmConfig, gripper_open: int = ct.CENTER_TICKS + 1024,
                gripper_closed: int = ct.CENTER_TICKS) -> "ArmCalibration":
        """The calibration of servos assembled at their zero (homing offset 0, no reversal,
        range from the config's joint limits): an emulated or simulated arm."""
        joints = {}
        for j in arm.joints:
            if j.name == "gripper":
                lo, hi = sorted((gripper_open, gripper_closed))
            else:
                lo = math.floor(j.min / ct.RAD_PER_TICK) + ct.CENTER_TICKS
                hi = math.ceil(j.max / ct.RAD_PER_TICK) + ct.CENTER_TICKS
            joints[j.name] = JointCalibration(id=j.id, model=j.model, range_min=lo, range_max=hi)
        return cls(arm=arm.name, joints=joints, gripper_open=gripper_open,
                   gripper_closed=gripper_closed)

    # -- file --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"version": self.version, "arm": self.arm,
                "joints": {k: asdict(v) for k, v in self.joints.items()},
                "gripper": {"open": self.gripper_open, "closed": self.gripper_closed}}

    def save(self, path: str | Path) -> Path:
        """Write atomically: a temporary file in the same folder, fsync, rename."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.to_dict(), f, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        return path

    @classmethod
    def from_dict(cls, data: object, where: str, arm: str = "") -> "ArmCalibration":
        fix = recalibrate_hint(arm or "<arm>")

        def bad(key: str, what: str) -> ConfigError:
            return ConfigError(f"calibration file {where}: {key} {what}. Fix the file or {fix}")

        def integer(d: dict, key: str, path: str) -> int:
            if key not in d:
                raise bad(f"{path}.{key}", "is missing")
            v = d[key]
            if isinstance(v, bool) or not isinstance(v, int):
                raise bad(f"{path}.{key}", f"= {v!r} must be an integer")
            return v

        if not isinstance(data, dict):
            raise bad("the top level", "must be a JSON object")
        for key in ("version", "arm", "joints", "gripper"):
            if key not in data:
                raise bad(f"key '{key}'", "is missing")
        unknown = sorted(set(data) - {"version", "arm", "joints", "gripper"})
        if unknown:
            raise bad(f"key(s) {', '.join(unknown)}", "are unknown")
        if data["version"] != FORMAT_VERSION:
            raise bad("version", f"= {data['version']!r} is not supported (expected "
                      f"{FORMAT_VERSION})")
        if not isinstance(data["joints"], dict) or not data["joints"]:
            raise bad("joints", "must be an object of joint name -> calibration")
        joints = {}
        for name, j in data["joints"].items():
            path = f"joints.{name}"
            if not isinstance(j, dict):
                raise bad(path, "must be an object")
            unknown = sorted(set(j) - set(JointCalibration.__dataclass_fields__))
            if unknown:
                raise bad(f"{path}.{unknown[0]}", "is an unknown key")
            model = j.get("model")
            if model not in ct.MODELS:
                raise bad(f"{path}.model", f"= {model!r} is not one of {', '.join(ct.MODELS)}")
            jc = JointCalibration(
                id=integer(j, "id", path), model=model,
                drive_mode=integer(j, "drive_mode", path),
                homing_offset=integer(j, "homing_offset", path),
                range_min=integer(j, "range_min", path), range_max=integer(j, "range_max", path))
            if jc.range_min >= jc.range_max:
                raise bad(f"{path}.range_min", f"= {jc.range_min} is not below range_max "
                          f"= {jc.range_max}")
            joints[name] = jc
        g = data["gripper"]
        if not isinstance(g, dict):
            raise bad("gripper", "must be an object with open and closed")
        g_open, g_closed = integer(g, "open", "gripper"), integer(g, "closed", "gripper")
        if g_open == g_closed:
            raise bad("gripper.open", "equals gripper.closed")
        arm_name = data["arm"]
        if not isinstance(arm_name, str):
            raise bad("arm", "must be a string")
        return cls(arm=arm_name, joints=joints, gripper_open=g_open, gripper_closed=g_closed)

    # -- check against config and servos -----------------------------------------------------
    def check_config(self, arm: ArmConfig, where: str) -> None:
        fix = recalibrate_hint(arm.name)
        names = [j.name for j in arm.joints]
        if list(self.joints) != names:
            raise ConfigError(
                f"calibration file {where} covers joints {', '.join(self.joints)} but arm "
                f"'{arm.name}' has {', '.join(names)}: {fix}")
        for j in arm.joints:
            c = self.joints[j.name]
            if (c.id, c.model) != (j.id, j.model):
                raise ConfigError(
                    f"calibration file {where} was made for joint '{j.name}' as id {c.id} "
                    f"({c.model}) but the rig config says id {j.id} ({j.model}): {fix}")

    def check_servos(self, bus: DynamixelBus, where: str) -> None:
        """Compare the homing offsets and drive modes in the servos' EEPROM with the file."""
        fix = recalibrate_hint(bus.name)
        problems = []
        for name, c in self.joints.items():
            offset = bus.read("Homing_Offset", c.id)
            drive = bus.read("Drive_Mode", c.id)
            if offset != c.homing_offset:
                problems.append(f"joint '{name}' (id {c.id}) has Homing_Offset {offset}, the "
                                f"file says {c.homing_offset}")
            if (drive & ct.DRIVE_MODE_REVERSE) != (c.drive_mode & ct.DRIVE_MODE_REVERSE):
                problems.append(f"joint '{name}' (id {c.id}) has Drive_Mode {drive}, the file "
                                f"says {c.drive_mode}")
        if problems:
            raise ConfigError(
                f"{bus.name}: the servos do not match calibration file {where}: "
                f"{'; '.join(problems)}. A servo was replaced or recalibrated elsewhere: {fix}")

    # -- units -------------------------------------------------------------------------------
    @property
    def gripper_span(self) -> int:
        return self.gripper_open - self.gripper_closed


def load_calibration(path: str | Path, arm: str = "") -> ArmCalibration:
    path = Path(path)
    if not path.exists():
        raise ConfigError(
            f"no calibration file at {path} for arm '{arm}': calibrate the arm first with "
            f"`python main.py calibrate --rig <your rig config> --arm {arm}`")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"calibration file {path} is not valid JSON ({e}); fix it or "
            f"{recalibrate_hint(arm)}") from e
    return ArmCalibration.from_dict(data, str(path), arm)


# -- the guided workflow -------------------------------------------------------------------------
class Step(enum.Enum):
    ZERO = "zero"
    RANGE = "range"
    GRIPPER_OPEN = "gripper_open"
    GRIPPER_CLOSED = "gripper_closed"
    DONE = "done"


PROMPTS = {
    Step.ZERO: "Move the arm to its zero pose (upper arm vertical, forearm horizontal, wrist "
               "level, gripper half open) and hold it still.",
    Step.RANGE: "Move every joint slowly through its full range of motion, one after another.",
    Step.GRIPPER_OPEN: "Open the gripper fully and hold it.",
    Step.GRIPPER_CLOSED: "Close the gripper fully and hold it.",
    Step.DONE: "Calibration complete.",
}


@dataclass
class CalibrationSession:
    """The guided calibration of one arm, step by step. Nothing here waits for a person: the
    caller shows `prompt`, waits for the operator and calls the step's function."""

    bus: DynamixelBus
    arm: ArmConfig
    reverse: frozenset[str] = frozenset()  # joints whose direction is reversed (Drive_Mode bit 0)
    step: Step | None = None
    offsets: dict[str, int] = field(default_factory=dict)
    ranges: dict[str, list[int]] = field(default_factory=dict)
    gripper_open: int | None = None
    gripper_closed: int | None = None

    @property
    def prompt(self) -> str:
        return PROMPTS[self.step] if self.step else "Press start."

    @property
    def joint_names(self) -> list[str]:
        return [j.name for j in self.arm.joints if j.name != "gripper"]

    def _id(self, name: str) -> int:
        return next(j.id for j in self.arm.joints if j.name == name)

    def _expect(self, step: Step) -> None:
        if self.step is not step:
            raise RigError(f"calibration of {self.arm.name}: expected step "
                           f"{self.step.value if self.step else 'begin'}, not {step.value}")

    def _present(self) -> dict[str, int]:
        ticks = self.bus.sync_read(("Present_Position",))["Present_Position"]
        return {j.name: ticks[j.id] for j in self.arm.joints}

    def begin(self) -> None:
        """Torque off, extended-position mode (multi-turn readings), directions set, offsets 0."""
        unknown = sorted(set(self.reverse) - {j.name for j in self.arm.joints})
        if unknown:
            raise RigError(f"cannot reverse unknown joint(s) {', '.join(unknown)}; "
                           f"joints are {', '.join(j.name for j in self.arm.joints)}")
        self.bus.torque(False)
        for j in self.arm.joints:
            self.bus.write("Operating_Mode", j.id, ct.MODE_EXTENDED_POSITION)
            self.bus.write("Drive_Mode", j.id, ct.DRIVE_MODE_REVERSE if j.name in self.reverse
                           else 0)
            self.bus.write("Homing_Offset", j.id, 0)
        self.step = Step.ZERO

    def record_zero(self) -> dict[str, int]:
        """The arm is in the zero pose: write homing offsets so every joint reads 2048 there."""
        self._expect(Step.ZERO)
        present = self._present()
        for name in self.joint_names:
            offset = ct.CENTER_TICKS - present[name]
            self.bus.write("Homing_Offset", self._id(name), offset)
            self.offsets[name] = offset
        self.offsets["gripper"] = 0
        now_ = self._present()
        self.ranges = {n: [now_[n], now_[n]] for n in self.joint_names}
        self.step = Step.RANGE
        return dict(self.offsets)

    def sample_range(self) -> dict[str, tuple[int, int, int]]:
        """Read once and widen each joint's range; returns {joint: (min, max, present)}."""
        self._expect(Step.RANGE)
        present = self._present()
        for n in self.joint_names:
            lo_hi = self.ranges[n]
            lo_hi[0] = min(lo_hi[0], present[n])
            lo_hi[1] = max(lo_hi[1], present[n])
        return {n: (*self.ranges[n], present[n]) for n in self.joint_names}

    def finish_range(self) -> None:
        self._expect(Step.RANGE)
        still = [n for n in self.joint_names
                 if self.ranges[n][1] - self.ranges[n][0] < MIN_TRAVEL_TICKS]
        if still:
            raise RigError(
                f"calibration of {self.arm.name}: joint(s) {', '.join(still)} moved less than "
                f"{MIN_TRAVEL_TICKS} ticks ({MIN_TRAVEL_TICKS * 360 / ct.TICKS_PER_REV:.0f} deg); "
                f"move every joint through its whole range, then finish the step again")
        self.step = Step.GRIPPER_OPEN

    def record_gripper_open(self) -> int:
        self._expect(Step.GRIPPER_OPEN)
        self.gripper_open = self._present()["gripper"]
        self.step = Step.GRIPPER_CLOSED
        return self.gripper_open

    def record_gripper_closed(self) -> int:
        self._expect(Step.GRIPPER_CLOSED)
        closed = self._present()["gripper"]
        if abs(closed - self.gripper_open) < MIN_GRIPPER_TRAVEL_TICKS:
            raise RigError(
                f"calibration of {self.arm.name}: the gripper moved only "
                f"{abs(closed - self.gripper_open)} ticks between open and closed; close it "
                f"fully and record again")
        self.gripper_closed = closed
        self.step = Step.DONE
        return closed

    def result(self) -> ArmCalibration:
        self._expect(Step.DONE)
        joints = {}
        for j in self.arm.joints:
            if j.name == "gripper":
                lo, hi = sorted((self.gripper_open, self.gripper_closed))
            else:
                lo, hi = self.ranges[j.name]
            joints[j.name] = JointCalibration(
                id=j.id, model=j.model,
                drive_mode=ct.DRIVE_MODE_REVERSE if j.name in self.reverse else 0,
                homing_offset=self.offsets.get(j.name, 0), range_min=lo, range_max=hi)
        return ArmCalibration(arm=self.arm.name, joints=joints, gripper_open=self.gripper_open,
                              gripper_closed=self.gripper_closed)
