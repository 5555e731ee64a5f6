"""Scripted teleoperation episodes: the scripted operator's leader arms drive the sim followers
through the real teleop path (Teleop and its SafetyFilter with the rig's safety config), in
stepping mode, as fast as the machine allows. Used by the operator tests and `bench rig`."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

from drivers import layout
from drivers.config import RigConfig, SimConfig
from drivers.sim.rig import SimRig
from drivers.teleop import Teleop, TeleopState

JOINTS = list(layout.JOINT_INDICES)
GRIPPERS = list(layout.GRIPPER_INDICES)


def run_episodes(config: RigConfig, task: str, seeds: Iterable[int]) -> dict[int, dict]:
    """Teleoperate each seed's episode: read, Teleop.step, advance one control period. Per seed:
    success, why teleop stopped (empty if it never did), whether it ended engaged, and the
    leader's largest per-step joint and gripper changes."""
    cfg = config.with_(
        cameras=(), sim=dataclasses.replace(config.sim or SimConfig(), task=task, realtime=False)
    )
    rig = SimRig(cfg)
    results = {}
    with rig:
        steps = int(round(rig.sim.episode_seconds * rig.config.control_hz))
        for seed in seeds:
            rig.reset(seed)
            teleop = Teleop(rig)
            teleop.engage()
            leader = []
            for _ in range(steps):
                state = rig.read()
                leader.append(state.leader)
                teleop.step(state)
                if teleop.state is TeleopState.STOPPED:
                    break
                rig.step()
            change = np.abs(np.diff(np.array(leader), axis=0))
            results[seed] = {
                "success": bool(rig.read().info["success"]),
                "stopped": teleop.stop_reason if teleop.state is TeleopState.STOPPED else "",
                "joint_step": float(change[:, JOINTS].max()),
                "gripper_step": float(change[:, GRIPPERS].max()),
                "engaged": teleop.state is TeleopState.ENGAGED,
            }
    return results
