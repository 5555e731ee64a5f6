"""Bimanual teleoperation: leader arms drive the follower arms, safely.

    leader arms -> rig.read() -> map_leader_to_follower -> SafetyFilter -> rig.command() -> followers

Life cycle: IDLE -> engage() -> RAMPING (followers move to the leader pose at the ramp speed) ->
ENGAGED (followers track the leaders, clamped) -> disengage() -> IDLE. A leader-follower gap above
`max_gap_rad`, an e-stop or an error -> STOPPED with the reason; the followers hold.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from drivers import layout
from drivers.rig import Rig, RigState
from drivers.safety import SafetyFilter, joint_gap, ramp_step


class TeleopState(enum.Enum):
    IDLE = "idle"
    RAMPING = "ramping"
    ENGAGED = "engaged"
    STOPPED = "stopped"


@dataclass(frozen=True)
class GripperMap:
    """Linear map of the leader gripper range onto the follower gripper range (both 0..1 after
    calibration; a follower range narrower than 0..1 keeps the fingers off their hard stops)."""

    leader_closed: float = 0.0
    leader_open: float = 1.0
    follower_closed: float = 0.0
    follower_open: float = 1.0

    def __call__(self, g: float) -> float:
        u = (g - self.leader_closed) / (self.leader_open - self.leader_closed)
        u = min(max(u, 0.0), 1.0)
        return self.follower_closed + u * (self.follower_open - self.follower_closed)


def map_leader_to_follower(leader: np.ndarray, grippers: GripperMap = GripperMap()) -> np.ndarray:
    """Joint targets for the followers from a 14-d leader reading: joints one to one (both arms
    are calibrated to the same zero and direction), grippers through the range map."""
    target = np.array(layout.check(leader, "leader reading"), dtype=np.float64)
    for i in layout.GRIPPER_INDICES:
        target[i] = grippers(target[i])
    return target


@dataclass
class TeleopStep:
    t: float
    leader: np.ndarray
    follower: np.ndarray
    command: np.ndarray
    state: TeleopState


class Teleop:
    """Leader -> follower control, one `step()` per control period (called by the control loop)."""

    def __init__(self, rig: Rig, grippers: GripperMap = GripperMap()):
        self.rig = rig
        self.grippers = grippers
        safety = rig.config.safety
        self.safety = safety
        lo, hi = rig.limits()
        self.filter = SafetyFilter(lo, hi, safety)
        self.ramp_delta = np.where(
            layout.IS_GRIPPER, safety.max_step_gripper,
            safety.ramp_speed_rad_s / rig.config.control_hz,
        )
        self.state = TeleopState.IDLE
        self.stop_reason = ""
        self.last_command: np.ndarray | None = None

    def engage(self) -> None:
        """Start the safe ramp towards the leader pose; teleop engages once it is reached."""
        if not self.rig.has_leaders:
            raise ValueError(
                f"rig '{self.rig.config.name}' has no leader arms: add [[arms]] with role = "
                f"\"leader\" to its config to teleoperate"
            )
        if self.rig.estopped:
            raise ValueError("the e-stop is active: release it before engaging teleop")
        self.state = TeleopState.RAMPING
        self.stop_reason = ""
        self.last_command = None

    def disengage(self) -> None:
        if self.state is not TeleopState.STOPPED:
            self.state = TeleopState.IDLE
        self.rig.hold()
        self.last_command = None

    def stop(self, reason: str) -> None:
        """Stop teleop with a reason; followers hold where they are."""
        self.state = TeleopState.STOPPED
        self.stop_reason = reason
        self.last_command = None
        self.rig.hold()

    def reset(self) -> None:
        """Acknowledge a stop: back to IDLE."""
        self.state = TeleopState.IDLE
        self.stop_reason = ""

    def step(self, st: RigState) -> TeleopStep | None:
        if self.state in (TeleopState.IDLE, TeleopState.STOPPED) or st.leader is None:
            return None
        target = map_leader_to_follower(st.leader, self.grippers)
        target = self.filter.clamp_limits(target)
        if self.last_command is None:
            self.last_command = st.follower.copy()
        if self.state is TeleopState.RAMPING:
            # The ramp is done once the commanded pose has caught up with the leader pose; from
            # then on the followers track the leaders and the gap check guards them.
            cmd = ramp_step(self.last_command, target, self.ramp_delta)
            remaining, _ = joint_gap(target, cmd)
            if remaining <= self.safety.ramp_tolerance_rad:
                self.state = TeleopState.ENGAGED
        else:
            gap, joint = joint_gap(target, st.follower)
            if gap > self.safety.max_gap_rad:
                self.stop(
                    f"leader-follower gap {gap:.2f} rad at {joint} exceeds {self.safety.max_gap_rad}"
                    f" rad: the follower is blocked or lagging. Check the arm, then engage again."
                )
                return None
            cmd = self.filter(target, self.last_command)
        self.rig.command(cmd)
        self.last_command = cmd
        return TeleopStep(st.t, st.leader, st.follower, cmd, self.state)
