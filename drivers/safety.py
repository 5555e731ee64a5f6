"""Safety clamps on follower commands: joint limits, per-step change, ramps, leader-follower gap.

Every command that reaches `rig.command()` from teleop, replay or the policy runtime passes through
a SafetyFilter built from the rig config, so one set of rules guards every path.
"""

from __future__ import annotations

import numpy as np

from drivers import layout
from drivers.config import SafetyConfig


def max_step_vector(safety: SafetyConfig) -> np.ndarray:
    """14-d per-control-step change limit: radians for joints, 0..1 units for grippers."""
    return np.where(layout.IS_GRIPPER, safety.max_step_gripper, safety.max_step_rad)


def joint_gap(a: np.ndarray, b: np.ndarray) -> tuple[float, str]:
    """Largest |a - b| over the arm joints (grippers excluded) and the joint's name."""
    d = np.abs(np.asarray(a) - np.asarray(b))
    d[list(layout.GRIPPER_INDICES)] = 0.0
    i = int(np.argmax(d))
    return float(d[i]), layout.NAMES[i]


def ramp_step(current: np.ndarray, target: np.ndarray, max_delta: np.ndarray) -> np.ndarray:
    """One step from `current` towards `target`, each dimension moving at most `max_delta`."""
    return current + np.clip(target - current, -max_delta, max_delta)


class SafetyFilter:
    """Clamp a 14-d target to the joint limits, then limit its change from the last command."""

    def __init__(self, lower: np.ndarray, upper: np.ndarray, safety: SafetyConfig):
        self.lower = layout.check(np.asarray(lower, np.float64), "lower joint limits")
        self.upper = layout.check(np.asarray(upper, np.float64), "upper joint limits")
        if np.any(self.lower >= self.upper):
            bad = [layout.NAMES[i] for i in np.flatnonzero(self.lower >= self.upper)]
            raise ValueError(f"joint limits are empty for {', '.join(bad)}: fix min/max in the rig config")
        self.safety = safety
        self.max_step = max_step_vector(safety)
        self.clamped_limit = 0  # how many commands hit a joint limit
        self.clamped_rate = 0  # how many commands hit the per-step change limit

    def clamp_limits(self, q: np.ndarray) -> np.ndarray:
        out = np.clip(q, self.lower, self.upper)
        if np.any(np.abs(out - q) > 1e-9):
            self.clamped_limit += 1
        return out

    def __call__(self, target: np.ndarray, last_command: np.ndarray | None) -> np.ndarray:
        q = self.clamp_limits(layout.check(np.asarray(target, np.float64), "command"))
        if last_command is None:
            return q
        delta = q - last_command
        if np.all(np.abs(delta) <= self.max_step):
            return q
        self.clamped_rate += 1
        return last_command + np.clip(delta, -self.max_step, self.max_step)



def ramp_delta(safety: SafetyConfig, control_hz: float) -> np.ndarray:
    """Per-step limit of a safe ramp to a first target: joints at the ramp speed of the rig
    config, grippers at their largest step."""
    return np.where(layout.IS_GRIPPER, safety.max_step_gripper,
                    safety.ramp_speed_rad_s / control_hz)
