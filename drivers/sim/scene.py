"""The simulated ALOHA scene: gym-aloha's bimanual ViperX joint-space models, with wrist cameras.

The physics is gym-aloha's, untouched: its MJCF files (bimanual_viperx_transfer_cube.xml and
bimanual_viperx_insertion.xml) are loaded with MjSpec from the installed gym_aloha package. Only
what is seen changes:

- wrist cameras: gym-aloha's gripper links carry cameras named left_wrist / right_wrist that sit
  behind the gripper with a 20 degree field of view aimed at a point 15 cm ahead. They are moved
  to where ALOHA mounts its wrist cameras: on top of the gripper, looking forward and down past the
  fingers, with a wide (D405-like) field of view;
- the offscreen buffer is sized for the largest configured camera;
- multi-sample anti-aliasing is off (software GL renders 3x faster; see `FAST_RENDER`).

The joint layout of the model: qpos[0:8] left arm (6 joints, left finger, right finger),
qpos[8:16] right arm, then the free joints of the task objects; ctrl has the same 16 entries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import mujoco
import numpy as np

from drivers import layout

TASK_XML = {
    "transfer_cube": "bimanual_viperx_transfer_cube.xml",
    "insertion": "bimanual_viperx_insertion.xml",
}
CONTROL_DT = 0.02  # gym-aloha's control period (50 Hz), 10 physics steps of 2 ms
ARM_PREFIX = {"left": "vx300s_left", "right": "vx300s_right"}
WRIST_CAMERAS = ("left_wrist", "right_wrist")
SCENE_CAMERAS = ("top", "angle", "front_close", "left_pillar", "right_pillar", *WRIST_CAMERAS)

# gym-aloha's follower ("puppet") gripper normalisation: finger slide position in metres,
# 0 = closed, 1 = open (gym_aloha.constants.PUPPET_GRIPPER_POSITION_CLOSE / _OPEN).
GRIPPER_POSITION_CLOSE = 0.01844
GRIPPER_POSITION_OPEN = 0.05800

# The wrist camera mount in the gripper link frame (x forward along the fingers, z up when the
# wrist is level): 8 cm above the wrist-rotate axis, 2 cm behind it, pitched 35 degrees down.
WRIST_CAMERA_POS = (-0.02, 0.0, 0.08)
WRIST_CAMERA_PITCH_DEG = 35.0
WRIST_CAMERA_FOVY_DEG = 58.0


def normalize_gripper(finger_position: np.ndarray | float) -> np.ndarray | float:
    """Finger slide position (m) -> 0 (closed) .. 1 (open), as gym-aloha normalises it."""
    return (finger_position - GRIPPER_POSITION_CLOSE) / (
        GRIPPER_POSITION_OPEN - GRIPPER_POSITION_CLOSE
    )


def unnormalize_gripper(g: np.ndarray | float) -> np.ndarray | float:
    """0..1 -> finger slide position (m), as gym-aloha maps a gripper action."""
    return g * (GRIPPER_POSITION_OPEN - GRIPPER_POSITION_CLOSE) + GRIPPER_POSITION_CLOSE


def gym_aloha_assets() -> Path:
    try:
        import importlib.util

        spec = importlib.util.find_spec("gym_aloha")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the sim rig needs the gym-aloha package (its MuJoCo models); install it with "
            "`pip install gym-aloha==0.1.5` or run `bash scripts/dev setup`"
        )
    assets = Path(list(spec.submodule_search_locations)[0]) / "assets"
    if not (assets / TASK_XML["transfer_cube"]).exists():
        raise RuntimeError(f"gym-aloha's models are missing from {assets}; reinstall gym-aloha")
    return assets


def _wrist_camera_quat() -> np.ndarray:
    """Camera orientation in the gripper frame: looking along +x pitched down, image up ~ +z."""
    a = math.radians(WRIST_CAMERA_PITCH_DEG)
    x_cam = np.array([0.0, -1.0, 0.0])  # image right
    y_cam = np.array([math.sin(a), 0.0, math.cos(a)])  # image up
    z_cam = np.cross(x_cam, y_cam)  # the camera looks along -z_cam
    rot = np.stack([x_cam, y_cam, z_cam], axis=1)
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, rot.flatten())
    return quat


def build_spec(task: str, max_width: int = 640, max_height: int = 480) -> mujoco.MjSpec:
    if task not in TASK_XML:
        raise ValueError(f"unknown sim task {task!r}: use one of {', '.join(TASK_XML)}")
    spec = mujoco.MjSpec.from_file(str(gym_aloha_assets() / TASK_XML[task]))
    quat = _wrist_camera_quat()
    for name in WRIST_CAMERAS:
        cam = spec.camera(name)
        if cam is None:
            raise RuntimeError(f"gym-aloha's model has no camera {name!r}; check its version")
        cam.mode = mujoco.mjtCamLight.mjCAMLIGHT_FIXED
        cam.targetbody = ""
        cam.pos = WRIST_CAMERA_POS
        cam.quat = quat
        cam.fovy = WRIST_CAMERA_FOVY_DEG
    spec.visual.global_.offwidth = max(int(max_width), 640)
    spec.visual.global_.offheight = max(int(max_height), 480)
    spec.visual.quality.offsamples = 0
    return spec


@lru_cache(maxsize=8)
def _compiled_xml(task: str, max_width: int, max_height: int) -> str:
    return build_spec(task, max_width, max_height).to_xml()


def build_model(task: str, max_width: int = 640, max_height: int = 480) -> mujoco.MjModel:
    """A fresh MjModel of the task scene (each rig owns its own model)."""
    return build_spec(task, max_width, max_height).compile()


@dataclass(frozen=True)
class ArmIndex:
    """Where one arm lives in the model."""

    side: str
    qpos: tuple[int, ...]  # 6 arm joints
    finger_qpos: tuple[int, int]  # left finger, right finger slide joints
    ctrl: tuple[int, ...]  # 6 arm actuators
    finger_ctrl: tuple[int, int]
    dof: tuple[int, ...]  # 6 arm dofs (columns of a Jacobian)
    gripper_body: int


@dataclass(frozen=True)
class SceneIndex:
    arms: dict[str, ArmIndex]
    object_qpos: int  # first qpos of the task objects' free joints

    @classmethod
    def of(cls, model: mujoco.MjModel) -> "SceneIndex":
        arms = {}
        for side, prefix in ARM_PREFIX.items():
            jids = [
                mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, f"{prefix}/{j}")
                for j in layout.ARM_JOINTS
            ]
            fids = [
                mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, f"{prefix}/{f}")
                for f in ("left_finger", "right_finger")
            ]
            if min(jids + fids) < 0:
                raise RuntimeError(f"the sim model lacks {prefix}'s joints; check gym-aloha")
            act = {int(model.actuator_trnid[a, 0]): a for a in range(model.nu)}
            arms[side] = ArmIndex(
                side=side,
                qpos=tuple(int(model.jnt_qposadr[j]) for j in jids),
                finger_qpos=tuple(int(model.jnt_qposadr[j]) for j in fids),
                ctrl=tuple(act[j] for j in jids),
                finger_ctrl=tuple(act[j] for j in fids),
                dof=tuple(int(model.jnt_dofadr[j]) for j in jids),
                gripper_body=mujoco.mj_name2id(
                    model, mujoco.mjtObj.mjOBJ_BODY, f"{prefix}/gripper_link"
                ),
            )
        return cls(arms=arms, object_qpos=16)

    def follower(self, qpos: np.ndarray) -> np.ndarray:
        """14-d rig state (joints rad, grippers 0..1) from the model's qpos."""
        out = np.empty(layout.DIM)
        for side, arm in self.arms.items():
            s = layout.arm_slice(side)
            out[s.start : s.start + 6] = qpos[list(arm.qpos)]
            out[s.start + 6] = normalize_gripper(qpos[arm.finger_qpos[0]])
        return out

    def ctrl_from_targets(self, q14: np.ndarray, ctrl: np.ndarray) -> None:
        """Write 14-d targets into the 16 position actuators (gripper 0..1 -> both fingers)."""
        for side, arm in self.arms.items():
            s = layout.arm_slice(side)
            ctrl[list(arm.ctrl)] = q14[s.start : s.start + 6]
            finger = unnormalize_gripper(q14[s.start + 6])
            ctrl[arm.finger_ctrl[0]] = finger
            ctrl[arm.finger_ctrl[1]] = -finger

    def targets_from_ctrl(self, ctrl: np.ndarray) -> np.ndarray:
        out = np.empty(layout.DIM)
        for side, arm in self.arms.items():
            s = layout.arm_slice(side)
            out[s.start : s.start + 6] = ctrl[list(arm.ctrl)]
            out[s.start + 6] = normalize_gripper(ctrl[arm.finger_ctrl[0]])
        return out

    def limits(self, model: mujoco.MjModel) -> tuple[np.ndarray, np.ndarray]:
        """14-d (lower, upper) from the MJCF joint ranges; grippers 0..1."""
        lo = np.zeros(layout.DIM)
        hi = np.ones(layout.DIM)
        for side, arm in self.arms.items():
            s = layout.arm_slice(side)
            for k, adr in enumerate(arm.qpos):
                j = int(np.flatnonzero(model.jnt_qposadr == adr)[0])
                lo[s.start + k], hi[s.start + k] = model.jnt_range[j]
        return lo, hi
