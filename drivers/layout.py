"""The one place that knows the rig's 14-d joint layout.

State and action vectors are 14-d: left arm's 6 joints, left gripper, right arm's 6 joints, right
gripper. Joints are in radians; grippers are normalised to 0 (closed) .. 1 (open).
"""

from __future__ import annotations

import numpy as np

ARM_JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")
SIDES = ("left", "right")
JOINTS_PER_ARM = len(ARM_JOINTS) + 1  # + gripper
DIM = 2 * JOINTS_PER_ARM  # 14

NAMES: tuple[str, ...] = tuple(
    f"{side}_{j}" for side in SIDES for j in (*ARM_JOINTS, "gripper")
)
GRIPPER_INDICES = (6, 13)
JOINT_INDICES = tuple(i for i in range(DIM) if i not in GRIPPER_INDICES)
IS_GRIPPER = np.zeros(DIM, dtype=bool)
IS_GRIPPER[list(GRIPPER_INDICES)] = True


def arm_slice(side: str) -> slice:
    """Indices of one arm (6 joints + gripper) in the 14-d vector."""
    if side not in SIDES:
        raise ValueError(f"unknown arm side {side!r}: use 'left' or 'right'")
    start = SIDES.index(side) * JOINTS_PER_ARM
    return slice(start, start + JOINTS_PER_ARM)


def split(vec: np.ndarray) -> dict[str, np.ndarray]:
    """{'left': 7-d, 'right': 7-d} views of a 14-d vector."""
    check(vec)
    return {s: vec[arm_slice(s)] for s in SIDES}


def join(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    out = np.concatenate([np.asarray(left, np.float64), np.asarray(right, np.float64)])
    check(out)
    return out


def check(vec: np.ndarray, what: str = "joint vector") -> np.ndarray:
    vec = np.asarray(vec)
    if vec.shape != (DIM,):
        raise ValueError(
            f"{what} has shape {vec.shape}, expected ({DIM},): "
            f"left 6 joints + gripper, right 6 joints + gripper ({', '.join(NAMES)})"
        )
    if not np.all(np.isfinite(vec)):
        bad = [NAMES[i] for i in np.flatnonzero(~np.isfinite(vec))]
        raise ValueError(f"{what} has non-finite values at {', '.join(bad)}")
    return vec
