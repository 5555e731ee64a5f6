"""Action chunks from the sim's scripted operator: a planner that looks ahead.

The sim rig's operator moves the leader arms one control step at a time, closing the loop on the
scene (where the cube is now, where a gripper tip is now). `ChunkPlanner` plans the next H leader
commands at once: `capture()` copies the operator's progress through its script and the scene's
state at one instant (under the rig's lock, so a real-time physics thread is never caught half
way), and `plan()` rolls a copy of the operator forward from there kinematically: each planned
step moves the copy's follower arms to the planned joints (as servos tracking their targets
would) while the objects stay where they were seen. Goals the script resolves from the scene
during the look-ahead therefore come from the predicted arm poses and the last seen objects; the
next chunk, planned from a fresh capture, corrects them.

Index 0 of a plan is the command for the control step that follows the capture: the one the
rig's own operator computes next.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import mujoco
import numpy as np

from drivers import layout
from drivers.sim.operator import ArmIK, ArmScript, SceneView


@dataclass
class PlanState:
    """The operator and the scene at one instant."""

    t: float  # episode time of the next operator step
    scripts: dict[str, ArmScript]
    qpos: np.ndarray
    mocap_pos: np.ndarray | None
    mocap_quat: np.ndarray | None


class ChunkPlanner:
    def __init__(self, rig):
        """`rig` is a connected drivers.sim.rig.SimRig."""
        self.rig = rig
        self.model = rig.model
        self.dt = rig.dt
        self.ik = {side: ArmIK(self.model, rig.index, side) for side in layout.SIDES}
        self.data = mujoco.MjData(self.model)  # the look-ahead scene
        self.view = SceneView(self.model, self.data)

    def capture(self) -> PlanState:
        rig = self.rig
        with rig._lock:  # noqa: SLF001 - the sim package's own lock around its physics state
            if not rig.operator.scripts:
                rig.operator.reset(rig.view, seed=rig.seed)
            # shallow copies: an ArmScript replaces (never mutates) its arrays as it advances
            scripts = {s: copy.copy(sc) for s, sc in rig.operator.scripts.items()}
            d = rig.data
            mocap = (d.mocap_pos.copy(), d.mocap_quat.copy()) if self.model.nmocap else (None,
                                                                                        None)
            return PlanState(rig.episode_time, scripts, d.qpos.copy(), *mocap)

    def plan(self, state: PlanState, horizon: int) -> np.ndarray:
        """(horizon, 14) leader commands from the captured instant on. Runs on the planner's
        own copies (callable from any one thread at a time)."""
        self.data.qpos[:] = state.qpos
        if state.mocap_pos is not None:
            self.data.mocap_pos[:] = state.mocap_pos
            self.data.mocap_quat[:] = state.mocap_quat
        mujoco.mj_kinematics(self.model, self.data)
        scripts = {}
        for side, sc in state.scripts.items():
            sc = copy.copy(sc)  # the capture stays reusable
            sc.ik = self.ik[side]
            scripts[side] = sc
        out = np.empty((horizon, layout.DIM))
        arms = self.rig.index.arms
        for i in range(horizon):
            t = state.t + i * self.dt
            a = layout.join(scripts["left"].act(t, self.view), scripts["right"].act(t, self.view))
            out[i] = a
            for side in layout.SIDES:  # the followers track the plan (kinematically)
                s = layout.arm_slice(side)
                self.data.qpos[list(arms[side].qpos)] = a[s][:6]
            mujoco.mj_kinematics(self.model, self.data)
        return out
