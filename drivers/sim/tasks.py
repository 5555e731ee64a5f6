"""The sim tasks, as gym-aloha defines them: seeded initial states, reward and success.

Initial states follow gym_aloha.utils.sample_box_pose / sample_insertion_pose (a
numpy RandomState seeded with the episode seed, the same ranges, the same draw order), and the arms
start at gym-aloha's START_ARM_POSE with the actuators holding it. The rewards replicate
gym_aloha.tasks.sim.TransferCubeTask / InsertionTask.get_reward term by term from the contact list
(tests/test_sim_tasks.py checks equality against gym-aloha's own classes on the same states).
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

# gym_aloha.constants.START_ARM_POSE: per arm 6 joints, left finger, right finger.
START_ARM_POSE = np.array(
    [0, -0.96, 1.16, 0, -0.3, 0, 0.02239, -0.02239] * 2, dtype=np.float64
)
MAX_REWARD = 4


def _uniform_pose(rng: np.random.RandomState, lo: list[float], hi: list[float]) -> np.ndarray:
    position = rng.uniform(np.array(lo), np.array(hi))
    return np.concatenate([position, [1.0, 0.0, 0.0, 0.0]])


def sample_box_pose(seed: int | None) -> np.ndarray:
    """Cube pose (x, y, z, qw, qx, qy, qz) for an episode seed, as gym-aloha samples it."""
    rng = np.random.RandomState(seed)
    return _uniform_pose(rng, [0.0, 0.4, 0.05], [0.2, 0.6, 0.05])


def sample_insertion_pose(seed: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(peg pose, socket pose) for an episode seed, as gym-aloha samples them."""
    rng = np.random.RandomState(seed)
    peg = _uniform_pose(rng, [0.1, 0.4, 0.05], [0.2, 0.6, 0.05])
    socket = _uniform_pose(rng, [-0.2, 0.4, 0.05], [-0.1, 0.6, 0.05])
    return peg, socket


def contact_pairs(model: mujoco.MjModel, data: mujoco.MjData) -> set[tuple[str, str]]:
    """The (geom1, geom2) name pairs in contact, in MuJoCo's order (as gym-aloha reads them)."""
    pairs = set()
    for i in range(data.ncon):
        c = data.contact[i]
        pairs.add(
            (
                mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_GEOM, c.geom1),
                mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_GEOM, c.geom2),
            )
        )
    return pairs


@dataclass(frozen=True)
class Task:
    name: str
    objects: tuple[str, ...]  # bodies of the task objects, in qpos order
    max_reward: int = MAX_REWARD

    def initial_objects(self, seed: int | None) -> np.ndarray:
        if self.name == "transfer_cube":
            return sample_box_pose(seed)
        return np.concatenate(sample_insertion_pose(seed))

    def reset(self, model: mujoco.MjModel, data: mujoco.MjData, seed: int | None) -> None:
        """Start an episode: arms at the start pose (held there), objects placed from the seed."""
        mujoco.mj_resetData(model, data)
        data.qpos[:16] = START_ARM_POSE
        data.ctrl[:16] = START_ARM_POSE
        objects = self.initial_objects(seed)
        data.qpos[16 : 16 + len(objects)] = objects
        mujoco.mj_forward(model, data)

    def reward(self, model: mujoco.MjModel, data: mujoco.MjData) -> int:
        pairs = contact_pairs(model, data)
        if self.name == "transfer_cube":
            return _transfer_cube_reward(pairs)
        return _insertion_reward(pairs)


def _transfer_cube_reward(pairs: set[tuple[str, str]]) -> int:
    touch_left_gripper = ("red_box", "vx300s_left/10_left_gripper_finger") in pairs
    touch_right_gripper = ("red_box", "vx300s_right/10_right_gripper_finger") in pairs
    touch_table = ("red_box", "table") in pairs
    reward = 0
    if touch_right_gripper:
        reward = 1
    if touch_right_gripper and not touch_table:  # lifted
        reward = 2
    if touch_left_gripper:  # attempted transfer
        reward = 3
    if touch_left_gripper and not touch_table:  # successful transfer
        reward = 4
    return reward


SOCKET = ("socket-1", "socket-2", "socket-3", "socket-4")


def _insertion_reward(pairs: set[tuple[str, str]]) -> int:
    touch_right_gripper = ("red_peg", "vx300s_right/10_right_gripper_finger") in pairs
    touch_left_gripper = any((s, "vx300s_left/10_left_gripper_finger") in pairs for s in SOCKET)
    peg_touch_table = ("red_peg", "table") in pairs
    socket_touch_table = any((s, "table") in pairs for s in SOCKET)
    peg_touch_socket = any(("red_peg", s) in pairs for s in SOCKET)
    pin_touched = ("red_peg", "pin") in pairs
    reward = 0
    if touch_left_gripper and touch_right_gripper:  # touch both
        reward = 1
    if touch_left_gripper and touch_right_gripper and not peg_touch_table and not socket_touch_table:
        reward = 2  # grasp both
    if peg_touch_socket and not peg_touch_table and not socket_touch_table:
        reward = 3  # peg and socket touching
    if pin_touched:  # successful insertion
        reward = 4
    return reward


TASKS = {
    "transfer_cube": Task("transfer_cube", ("box",)),
    "insertion": Task("insertion", ("peg", "socket")),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown sim task {name!r}: use one of {', '.join(TASKS)}")
    return TASKS[name]


def step_physics(model: mujoco.MjModel, data: mujoco.MjData, n_substeps: int) -> None:
    """Advance one control period the way gym-aloha's dm_control Physics.step does: the
    positions, contacts and sensors are up to date for the new state when it returns."""
    mujoco.mj_step2(model, data)
    if n_substeps > 1:
        mujoco.mj_step(model, data, n_substeps - 1)
    mujoco.mj_step1(model, data)
