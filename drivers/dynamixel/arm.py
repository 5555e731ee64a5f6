"""Leader and follower arms: one bus each, calibrated, in rig units.

Units: radians for the six joints (0 at the calibration's zero pose), 0 (closed) .. 1 (open) for
the gripper; a 7-vector per arm in drivers.layout order (waist .. wrist_rotate, gripper).

- LeaderArm: torque off, the operator moves it; optionally the gripper is held open by a small
  current in current-based position mode, like a spring.
- FollowerArm: extended-position mode for the joints, current-based position mode with the
  configured Current_Limit for the gripper; on connect the goal is set to where it is, then torque
  on, so it holds still. A hardware fault drops the arm's torque before the error is raised.
"""

from __future__ import annotations

import abc
from pathlib import Path

import numpy as np

from drivers import layout
from drivers.config import ArmConfig
from drivers.dynamixel import control_table as ct
from drivers.dynamixel.bus import DynamixelBus, Motor
from drivers.dynamixel.calibration import ArmCalibration, load_calibration
from drivers.errors import ConnectionFailed, ServoFault


class DynamixelArm(abc.ABC):
    role = ""

    def __init__(self, config: ArmConfig, calibration: ArmCalibration | str | Path, *,
                 latency_timer_ms: float = 16.0):
        self.config = config
        self.name = config.name
        self._calibration_source = calibration
        self.calibration: ArmCalibration | None = (
            calibration if isinstance(calibration, ArmCalibration) else None)
        self.bus = DynamixelBus(
            config.port, [Motor(j.name, j.id, j.model) for j in config.joints],
            baud=config.baud, name=config.name, retries=config.protocol_retries,
            latency_timer_ms=latency_timer_ms)
        self.ids = [j.id for j in config.joints]
        self.connected = False
        lo = np.array([j.min for j in config.joints])
        hi = np.array([j.max for j in config.joints])
        self.lower, self.upper = lo, hi

    # -- calibration and units ---------------------------------------------------------------
    def _load_calibration(self) -> ArmCalibration:
        if self.calibration is None:
            self.calibration = load_calibration(self._calibration_source, self.name)
            where = str(self._calibration_source)
        else:
            where = f"(calibration of {self.name})"
        self.calibration.check_config(self.config, where)
        return self.calibration

    def _tables(self) -> None:
        c = self.calibration
        joints = [c.joints[j.name] for j in self.config.joints]
        self._range_lo = np.array([j.range_min for j in joints], dtype=np.float64)
        self._range_hi = np.array([j.range_max for j in joints], dtype=np.float64)
        g = layout.JOINTS_PER_ARM - 1
        self._g = g
        self._closed, self._span = float(c.gripper_closed), float(c.gripper_span)
        self._current_unit = np.array(
            [ct.MODELS[j.model].current_unit_ma or np.nan for j in self.config.joints])

    def ticks_to_units(self, ticks: np.ndarray) -> np.ndarray:
        q = (np.asarray(ticks, dtype=np.float64) - ct.CENTER_TICKS) * ct.RAD_PER_TICK
        q[self._g] = (ticks[self._g] - self._closed) / self._span
        return q

    def units_to_ticks(self, q: np.ndarray) -> np.ndarray:
        """Targets in ticks, clamped to the configured limits and the calibrated range."""
        q = np.clip(np.asarray(q, dtype=np.float64), self.lower, self.upper)
        ticks = q / ct.RAD_PER_TICK + ct.CENTER_TICKS
        ticks[self._g] = self._closed + np.clip(q[self._g], 0.0, 1.0) * self._span
        return np.rint(np.clip(ticks, self._range_lo, self._range_hi)).astype(np.int64)

    # -- lifecycle ---------------------------------------------------------------------------
    def connect(self) -> None:
        """Open the bus, check ids/models and the calibration, configure. On failure the bus is
        left closed and no torque is left on."""
        calibration = self._load_calibration()
        self._tables()
        self.bus.open()
        try:
            self.bus.verify()
            self.bus.torque(False)  # EEPROM writes (modes, limits, delay) need torque off
            calibration.check_servos(self.bus, str(self._calibration_source))
            for i in self.ids:
                self.bus.write("Return_Delay_Time", i, 0)
            self._configure()
        except BaseException:
            self._safe_torque_off()
            self.bus.close()
            raise
        self.connected = True

    @abc.abstractmethod
    def _configure(self) -> None:
        """Operating modes and torque for this role (leader or follower), after the checks."""

    def disconnect(self) -> None:
        """Torque off and close; safe to call twice and after failures."""
        if self.bus.is_open:
            self._safe_torque_off()
        self.bus.close()
        self.connected = False

    def _safe_torque_off(self) -> list[str]:
        """Best effort: every servo that answers gets torque off. Returns what failed."""
        failed = []
        if not self.bus.is_open:
            return failed
        for i in self.ids:
            try:
                self.bus.write("Torque_Enable", i, 0)
            except Exception as e:  # keep going: every other servo must still be released
                failed.append(f"{self.bus.describe(i)}: {e}")
        return failed

    # -- reading -----------------------------------------------------------------------------
    def read_ticks(self) -> np.ndarray:
        pos = self.bus.sync_read(("Present_Position",))["Present_Position"]
        return np.array([pos[i] for i in self.ids], dtype=np.float64)

    def read(self) -> np.ndarray:
        """7-d position: radians and gripper 0..1."""
        return self.ticks_to_units(self.read_ticks())

    def read_state(self, velocity: bool = True, current: bool = True) -> dict[str, np.ndarray]:
        """Position (+ velocity rad/s, current mA) in one contiguous sync read."""
        fields = ["Present_Position"]
        if velocity:
            fields.append("Present_Velocity")
        if current:
            fields.append("Present_Current")
        raw = self.bus.sync_read(fields)
        pos = np.array([raw["Present_Position"][i] for i in self.ids], dtype=np.float64)
        out = {"position": self.ticks_to_units(pos)}
        if velocity:
            v = np.array([raw["Present_Velocity"][i] for i in self.ids], dtype=np.float64)
            v *= ct.RAD_S_PER_VELOCITY_UNIT
            v[self._g] = v[self._g] / ct.RAD_PER_TICK / self._span
            out["velocity"] = v
        if current:
            c = np.array([raw["Present_Current"][i] for i in self.ids], dtype=np.float64)
            out["current"] = c * self._current_unit
        return out


class LeaderArm(DynamixelArm):
    role = "leader"

    def _configure(self) -> None:
        for j in self.config.joints:
            self.bus.write("Operating_Mode", j.id, ct.MODE_EXTENDED_POSITION)
        spring = self.config.gripper_spring_current
        gripper = self.config.joints[-1]
        if spring > 0 and ct.MODELS[gripper.model].has_current_control:
            self.bus.write("Operating_Mode", gripper.id, ct.MODE_CURRENT_POSITION)
            self.bus.write("Goal_Current", gripper.id, spring)
            self.bus.write("Goal_Position", gripper.id, int(self.calibration.gripper_open))
            self.bus.write("Torque_Enable", gripper.id, 1)


class FollowerArm(DynamixelArm):
    role = "follower"

    def _configure(self) -> None:
        gripper = self.config.joints[-1]
        for j in self.config.joints[:-1]:
            self.bus.write("Operating_Mode", j.id, ct.MODE_EXTENDED_POSITION)
        if ct.MODELS[gripper.model].has_current_control:
            self.bus.write("Operating_Mode", gripper.id, ct.MODE_CURRENT_POSITION)
            self.bus.write("Current_Limit", gripper.id, self.config.gripper_current_limit)
            self.bus.write("Goal_Current", gripper.id, self.config.gripper_current_limit)
        else:
            self.bus.write("Operating_Mode", gripper.id, ct.MODE_EXTENDED_POSITION)
        self.hold()
        self.bus.torque(True)

    def _guard(self, fn, *args):
        try:
            return fn(*args)
        except ServoFault:
            self._safe_torque_off()
            raise

    def read(self) -> np.ndarray:
        return self._guard(super().read)

    def read_state(self, velocity: bool = True, current: bool = True) -> dict[str, np.ndarray]:
        return self._guard(super().read_state, velocity, current)

    def write(self, q: np.ndarray) -> np.ndarray:
        """Send 7-d targets (clamped to limits and calibrated range); returns the ticks sent."""
        ticks = self.units_to_ticks(q)
        self._guard(self.bus.sync_write, "Goal_Position",
                    {i: int(t) for i, t in zip(self.ids, ticks)})
        return ticks

    def hold(self) -> None:
        """Goal := present position for every servo."""
        present = self._guard(self.read_ticks)
        self._guard(self.bus.sync_write, "Goal_Position",
                    {i: int(t) for i, t in zip(self.ids, present)})

    def torque_off(self) -> None:
        failed = self._safe_torque_off()
        if failed:
            raise ConnectionFailed(
                f"{self.name}: could not turn torque off on {'; '.join(failed)}. Cut the arm's "
                f"power if it is moving")
