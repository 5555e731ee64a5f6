"""Replay a recorded action trajectory on the followers, after a safe ramp.

    RAMP: from the present follower pose to the first action at the ramp speed of the rig config
    PLAY: one recorded action per control step, through the same SafetyFilter as teleop
    DONE: the followers hold the last action

A `ReplaySource` plugs into the control loop in place of teleop (RigSession.set_source).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from drivers import layout
from drivers.rig import Rig, RigState
from drivers.safety import SafetyFilter, joint_gap, ramp_delta, ramp_step


class ReplayState(enum.Enum):
    RAMP = "ramping"
    PLAY = "playing"
    DONE = "done"


@dataclass
class ReplayStep:
    command: np.ndarray | None
    index: int  # the action played (-1 while ramping)
    state: ReplayState


class ReplaySource:
    def __init__(self, rig: Rig, actions: np.ndarray):
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[1] != layout.DIM or len(actions) == 0:
            raise ValueError(
                f"replay needs an (N, {layout.DIM}) action array with N > 0, got {actions.shape}: "
                f"the episode was recorded on a rig with another joint layout, or has no steps"
            )
        if not np.isfinite(actions).all():
            raise ValueError("the episode's actions contain NaN/inf: it cannot be replayed")
        self.rig = rig
        self.actions = actions
        safety = rig.config.safety
        self.filter = SafetyFilter(*rig.limits(), safety)
        self.ramp_delta = ramp_delta(safety, rig.config.control_hz)
        self.tolerance = safety.ramp_tolerance_rad
        self.state = ReplayState.RAMP
        self.index = -1
        self.last: np.ndarray | None = None

    @property
    def progress(self) -> float:
        return max(self.index + 1, 0) / len(self.actions)

    def step(self, st: RigState) -> ReplayStep:
        if self.last is None:
            self.last = st.follower.copy()
        if self.state is ReplayState.RAMP:
            target = self.filter.clamp_limits(self.actions[0])
            cmd = ramp_step(self.last, target, self.ramp_delta)
            if joint_gap(cmd, target)[0] <= self.tolerance and np.allclose(
                    cmd[list(layout.GRIPPER_INDICES)], target[list(layout.GRIPPER_INDICES)]):
                self.state = ReplayState.PLAY
        elif self.state is ReplayState.PLAY:
            self.index += 1
            cmd = self.filter(self.actions[self.index], self.last)
            if self.index == len(self.actions) - 1:
                self.state = ReplayState.DONE
        else:
            cmd = self.last
        self.rig.command(cmd)
        self.last = cmd
        return ReplayStep(cmd, self.index, self.state)
