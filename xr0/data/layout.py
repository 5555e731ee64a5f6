"""The 32-d model layout of XR0 states and actions, and how a rig's named joint vector maps into it.

XR0 reads and writes 32-d vectors (`state_dim` = `action_dim` = 32). The bimanual layout of the
official post-training code puts each arm in a block of 14 dims:

    dims   0-2   left end-effector position        (not filled by a joint-space rig)
    dims   3-5   left end-effector axis-angle      (not filled by a joint-space rig)
    dim      6   left gripper
    dims  7-12   left arm joints: waist, shoulder, elbow, forearm roll, wrist angle, wrist rotate
    dim     13   reserved
    dims 14-26   the same for the right arm (gripper 20, joints 21-26)
    dims 27-31   reserved

A rig records its vectors with joint names (the episode store keeps them with every episode), so
the mapping is built from those names and xr0 needs no knowledge of the rig's drivers. Any subset
of the supported names works (a one-armed rig fills dims 6-12 only); dims no name maps to are
padding: zeros on the way in, dropped on the way out, and False in `mask`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MODEL_DIM = 32

_ARM_JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")
_ARM_BASE = {"left": 0, "right": 14}
_GRIPPER_OFFSET = 6
_JOINT_OFFSET = 7

# joint name -> model dim, in the order of the rig's 14-d vector
MODEL_DIMS: dict[str, int] = {}
for _side, _base in _ARM_BASE.items():
    for _i, _joint in enumerate(_ARM_JOINTS):
        MODEL_DIMS[f"{_side}_{_joint}"] = _base + _JOINT_OFFSET + _i
    MODEL_DIMS[f"{_side}_gripper"] = _base + _GRIPPER_OFFSET
SUPPORTED_NAMES: tuple[str, ...] = tuple(MODEL_DIMS)


class LayoutError(ValueError):
    """A rig's joint names do not fit the model layout, or two layouts disagree."""


def is_gripper(name: str) -> bool:
    """Grippers are normalised 0 (closed) .. 1 (open) and stay absolute in delta action mode."""
    return name.endswith("_gripper")


@dataclass(frozen=True)
class ActionLayout:
    """Where each of a rig's D named dimensions sits in the model's 32-d vector."""

    joint_names: tuple[str, ...]
    model_dims: tuple[int, ...]   # model_dims[i] = the 32-d slot of joint_names[i]

    @classmethod
    def from_joint_names(cls, names: Sequence[str]) -> ActionLayout:
        names = tuple(str(n) for n in names)
        if not names:
            raise LayoutError("no joint names given: pass the names stored with the episodes "
                              f"(supported: {', '.join(SUPPORTED_NAMES)})")
        unknown = [n for n in names if n not in MODEL_DIMS]
        if unknown:
            raise LayoutError(
                f"joint name(s) {', '.join(map(repr, unknown))} have no place in XR0's 32-d "
                f"bimanual layout; the supported names are {', '.join(SUPPORTED_NAMES)}. Record "
                f"with a rig config whose joints use these names")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise LayoutError(f"joint name(s) {', '.join(map(repr, dupes))} appear more than once "
                              f"in {list(names)}: each joint must be named once")
        return cls(names, tuple(MODEL_DIMS[n] for n in names))

    # -- shape -----------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        """D, the rig's vector width."""
        return len(self.joint_names)

    @property
    def mask(self) -> np.ndarray:
        """(32,) bool: the model dims this rig fills."""
        m = np.zeros(MODEL_DIM, dtype=bool)
        m[list(self.model_dims)] = True
        return m

    @property
    def gripper_mask(self) -> np.ndarray:
        """(D,) bool: True for grippers, in the rig's order."""
        return np.array([is_gripper(n) for n in self.joint_names], dtype=bool)

    @property
    def delta_mask(self) -> np.ndarray:
        """(D,) bool: the dims that become deltas in delta action mode (the arm joints)."""
        return ~self.gripper_mask

    # -- mapping ---------------------------------------------------------------------------------

    def to_model(self, x):
        """(..., D) -> (..., 32), zeros in the padding dims. numpy arrays or torch tensors."""
        self._check_last(x, self.dim, "to_model")
        idx = list(self.model_dims)
        if _is_torch(x):
            out = x.new_zeros((*x.shape[:-1], MODEL_DIM))
        else:
            x = np.asarray(x)
            out = np.zeros((*x.shape[:-1], MODEL_DIM), dtype=x.dtype)
        out[..., idx] = x
        return out

    def from_model(self, y):
        """(..., 32) -> (..., D): the rig's dims, padding dropped."""
        self._check_last(y, MODEL_DIM, "from_model")
        if not _is_torch(y):
            y = np.asarray(y)
        return y[..., list(self.model_dims)]

    def _check_last(self, x, want: int, what: str) -> None:
        shape = tuple(x.shape) if hasattr(x, "shape") else np.shape(x)
        if not shape or shape[-1] != want:
            raise LayoutError(f"{what} expects a last dimension of {want} "
                              f"({', '.join(self.joint_names) if want == self.dim else '32-d model layout'}), "
                              f"got shape {shape}")

    # -- comparing and saving --------------------------------------------------------------------

    def compatible(self, other: ActionLayout) -> bool:
        """True when both rigs give the same vector: the same names in the same order, hence the
        same model dims. Episodes of incompatible rigs cannot be stacked into one batch."""
        return self.joint_names == other.joint_names

    def difference(self, other: ActionLayout) -> str:
        """What differs between two layouts, in words (empty when compatible)."""
        if self.compatible(other):
            return ""
        mine, theirs = set(self.joint_names), set(other.joint_names)
        parts = []
        if mine - theirs:
            parts.append(f"only the first has {', '.join(n for n in self.joint_names if n not in theirs)}")
        if theirs - mine:
            parts.append(f"only the second has {', '.join(n for n in other.joint_names if n not in mine)}")
        if not parts:
            parts.append(f"same joints in another order ({', '.join(self.joint_names)} vs "
                         f"{', '.join(other.joint_names)})")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return {"joint_names": list(self.joint_names), "model_dims": list(self.model_dims),
                "model_dim": MODEL_DIM}

    @classmethod
    def from_dict(cls, d: dict) -> ActionLayout:
        layout = cls.from_joint_names(d["joint_names"])
        if "model_dims" in d and tuple(int(i) for i in d["model_dims"]) != layout.model_dims:
            raise LayoutError(
                f"saved layout maps {d['joint_names']} to dims {d['model_dims']}, but this version "
                f"maps them to {list(layout.model_dims)}: the checkpoint was made with another "
                f"layout; retrain or convert it")
        return layout


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")
