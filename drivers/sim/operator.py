"""The scripted operator: plays the two leader arms so the sim rig can record demonstrations.

Each arm follows a list of end-effector waypoints (fingertip position, gripper orientation,
gripper opening). Between waypoints the pose moves on a minimum-jerk profile (position linearly,
orientation by slerp, both along s(t) = 10t^3 - 15t^4 + 6t^5), and every control step a damped
least-squares IK turns the pose into the 6 joint angles of that arm, solved incrementally from the
last solution on the operator's own MjData (the follower's physics is never touched), held near it
by a posture term and bounded to MAX_JOINT_STEP. Large reorientations that carry the wrist through
its straight (singular) pose, like the first reach from the start pose, are joint-space segments
instead: the goal's IK is solved once from a posture on the wanted branch and the joints move on
the same minimum-jerk profile. A waypoint's pose may depend on the scene when its segment begins
(where the cube is now, where the socket sits in the left gripper), so the script closes the loop
on the objects it handles.

With an aiming error (`aim_noise`, metres), each arm's first reach towards an object it picks
aims at a point off that object by a random horizontal offset (per axis Gaussian, drawn from the
episode's seed, clipped at 2.5 standard deviations), and the next segment, resolved from where
the object really is, corrects it on the way down. Demonstrations then show what a person's
show and perfectly aimed scripted ones never do: an arm off its target and the move that
brings it back, so a policy learns to read the object against the gripper instead of
inferring the target from how the arm has moved so far.

With a hand-over delay (`handover_delay`, seconds; transfer cube), the left arm waits at its
waiting pose a random extra time, uniform in [0, handover_delay] and drawn from the episode's
seed, before it comes in for the cube; it closes once it is there, and the right arm holds the
cube until then. Every perfectly timed demonstration closes the left gripper at the same step,
so a policy can learn the clock; with the delay, the closing follows the left arm's arrival.

The output of `act()` is what leader arms would read: 14-d joint targets, grippers 0..1, moving as
a person moves leader arms: every joint under 2.5 rad/s with a continuous velocity, each gripper
opened or closed over half a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import mujoco
import numpy as np

from drivers import layout
from drivers.sim.scene import SceneIndex
from drivers.sim.tasks import START_ARM_POSE

TIP = np.array([0.150, 0.0, 0.0])  # a point between the fingertips, in the gripper link frame
# The most an incremental IK solve moves a joint in one control step (50 Hz): 2 rad/s, a brisk
# human pace. Joint-space segments are timed to stay near it (min-jerk peak: 1.875 x distance / time).
MAX_JOINT_STEP = 0.04


def _rot(x: tuple[float, float, float], y: tuple[float, float, float]) -> np.ndarray:
    """Rotation whose columns are the gripper axes: x along the fingers, y the closing axis."""
    x_ = np.asarray(x, float) / np.linalg.norm(x)
    y_ = np.asarray(y, float) - np.dot(y, x_) * x_
    y_ /= np.linalg.norm(y_)
    return np.stack([x_, y_, np.cross(x_, y_)], axis=1)


def _quat(rot: np.ndarray) -> np.ndarray:
    q = np.zeros(4)
    mujoco.mju_mat2Quat(q, np.ascontiguousarray(rot).flatten())
    return q


def _slerp(q0: np.ndarray, q1: np.ndarray, s: float) -> np.ndarray:
    d = float(np.dot(q0, q1))
    if d < 0.0:
        q1, d = -q1, -d
    if d > 0.9995:
        q = q0 + s * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = np.arccos(d)
    return (np.sin((1 - s) * theta) * q0 + np.sin(s * theta) * q1) / np.sin(theta)


def min_jerk(s: float) -> float:
    s = min(max(s, 0.0), 1.0)
    return s * s * s * (10.0 + s * (-15.0 + 6.0 * s))


@dataclass
class Pose:
    pos: np.ndarray  # fingertip point, world frame (m)
    quat: np.ndarray  # gripper orientation (w, x, y, z)


@dataclass
class Waypoint:
    """Reach `pose` (or what `resolve(scene)` returns when the segment begins; with `track`,
    what it returns at every step) with the gripper at `gripper` by `t` seconds into the
    episode."""

    t: float
    gripper: float
    pose: Pose | None = None
    resolve: Callable[["SceneView"], Pose] | None = None
    track: bool = False
    joint: bool = False  # move in joint space to the goal's IK solution
    seed: np.ndarray | None = None  # joint posture the joint-space goal is solved from


class SceneView:
    """What the operator sees of the follower scene: object poses and gripper frames."""

    def __init__(self, model: mujoco.MjModel, data: mujoco.MjData):
        self.model = model
        self.data = data

    def body_pos(self, name: str) -> np.ndarray:
        return self.data.body(name).xpos.copy()

    def body_mat(self, name: str) -> np.ndarray:
        return self.data.body(name).xmat.reshape(3, 3).copy()

    def tip(self, side: str) -> Pose:
        b = self.data.body(f"vx300s_{side}/gripper_link")
        rot = b.xmat.reshape(3, 3)
        return Pose(b.xpos + rot @ TIP, _quat(rot))


class ArmIK:
    """Damped least-squares IK of one 6-joint arm for the fingertip pose, on a private MjData.

    `solve` is incremental: it starts from the previous solution and minimises the pose error
    plus a posture term that keeps the joints near a reference (by default where they were), so
    near a singular wrist the arm stays on its branch instead of flipping to another; its total
    change can be bounded to what a hand moves in one control step."""

    def __init__(self, model: mujoco.MjModel, index: SceneIndex, side: str):
        self.model = model
        self.data = mujoco.MjData(model)
        self.arm = index.arms[side]
        self.qadr = list(self.arm.qpos)
        self.dofs = list(self.arm.dof)
        jnt = [int(np.flatnonzero(model.jnt_qposadr == a)[0]) for a in self.arm.qpos]
        self.lo = model.jnt_range[jnt, 0].copy()
        self.hi = model.jnt_range[jnt, 1].copy()
        # joint costs: rolling the forearm is made costly so that the wrist bends (and turns)
        # instead; this keeps the arm off the forearm-roll/wrist-rotate flip at a straight wrist
        self.cost = np.diag([1.0, 1.0, 1.0, 6.0, 1.0, 1.0])
        self.jacp = np.zeros((3, model.nv))
        self.jacr = np.zeros((3, model.nv))

    def fk(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.data.qpos[self.qadr] = q
        mujoco.mj_kinematics(self.model, self.data)
        b = self.arm.gripper_body
        rot = self.data.xmat[b].reshape(3, 3)
        return self.data.xpos[b] + rot @ TIP, rot.copy()

    def solve(
        self,
        q: np.ndarray,
        pos: np.ndarray,
        quat: np.ndarray,
        iters: int = 30,
        damping: float = 0.02,
        posture: np.ndarray | None = None,
        posture_weight: float = 0.02,
        max_step: float | None = None,
    ) -> np.ndarray:
        """Joint angles for the fingertip at `pos` with orientation `quat`, from `q`.

        Each iteration solves (J'J + damping^2 C + w^2 C) dq = J'e - w^2 C (q - posture), with
        C the joint costs and w the posture weight; posture defaults to the starting `q`. With
        `max_step`, the result moves no joint more than that from `q` (the move is scaled as a
        whole, so its direction is kept)."""
        q_in = np.array(q, dtype=np.float64)
        q = q_in.copy()
        ref = q_in if posture is None else np.asarray(posture, dtype=np.float64)
        target_rot = np.zeros(9)
        mujoco.mju_quat2Mat(target_rot, quat)
        target_rot = target_rot.reshape(3, 3)
        err_quat = np.zeros(4)
        err_rot = np.zeros(3)
        reg = (damping**2 + posture_weight**2) * self.cost
        pull = posture_weight**2 * self.cost
        for _ in range(iters):
            p, rot = self.fk(q)
            e_pos = pos - p
            mujoco.mju_mat2Quat(err_quat, (target_rot @ rot.T).flatten())
            mujoco.mju_quat2Vel(err_rot, err_quat, 1.0)
            mujoco.mj_comPos(self.model, self.data)
            mujoco.mj_jac(self.model, self.data, self.jacp, self.jacr, p, self.arm.gripper_body)
            jac = np.vstack([self.jacp[:, self.dofs], 0.5 * self.jacr[:, self.dofs]])
            err = np.concatenate([e_pos, 0.5 * err_rot])
            grad = jac.T @ err - pull @ (q - ref)
            if np.linalg.norm(grad) < 1e-7:
                break
            dq = np.linalg.solve(jac.T @ jac + reg, grad)
            step = np.max(np.abs(dq))
            if step > 0.2:
                dq *= 0.2 / step
            q = np.clip(q + dq, self.lo, self.hi)
        if max_step is not None:
            move = np.max(np.abs(q - q_in))
            if move > max_step:
                q = q_in + (q - q_in) * (max_step / move)
        return q

    def reach(self, pos: np.ndarray, quat: np.ndarray, seed: np.ndarray) -> np.ndarray:
        """A whole-arm solution for a far pose, found from `seed` (a posture on the wanted branch:
        which way the elbow and wrist bend), for a move made in joint space."""
        q = np.array(seed, dtype=np.float64)
        for _ in range(20):
            q = self.solve(q, pos, quat, iters=30, posture=seed, posture_weight=0.01)
        return self.solve(q, pos, quat, iters=50, posture_weight=0.0)


class ArmScript:
    """One arm's waypoints, interpolated and solved step by step.

    A Cartesian segment moves the fingertip pose on a minimum-jerk profile and solves the IK
    incrementally each step, bounded to MAX_JOINT_STEP. A joint-space segment (`Waypoint.joint`)
    solves its goal once, when it begins, and moves the joints on the same profile: how a hand
    carries the arm through a large reorientation, the wrist straightening and bending the other
    way, with no IK to flip branches where the straight wrist loses a degree of freedom."""

    def __init__(self, ik: ArmIK, q0: np.ndarray, gripper0: float, waypoints: list[Waypoint]):
        self.ik = ik
        self.q = np.array(q0, dtype=np.float64)
        pos, rot = ik.fk(self.q)
        self.start = Pose(pos, _quat(rot))
        self.gripper_start = gripper0
        self.waypoints = waypoints
        self.k = -1  # index of the segment in progress
        self.t_start = 0.0
        self.goal = self.start
        self.gripper = gripper0
        self.q_start = self.q.copy()
        self.q_goal = self.q.copy()

    def act(self, t: float, scene: SceneView) -> np.ndarray:
        # advance to the segment that contains t, resolving its goal from the scene as it begins
        while self.k + 1 < len(self.waypoints) and (self.k < 0 or t >= self.waypoints[self.k].t):
            if self.k >= 0:
                self.start, self.gripper_start = self.goal, self.waypoints[self.k].gripper
                self.t_start = self.waypoints[self.k].t
            self.k += 1
            wp = self.waypoints[self.k]
            self.goal = wp.resolve(scene) if wp.resolve is not None else wp.pose
            if wp.joint:
                seed = self.q if wp.seed is None else wp.seed
                self.q_start = self.q.copy()
                self.q_goal = self.ik.reach(self.goal.pos, self.goal.quat, seed)
                pos, rot = self.ik.fk(self.q_goal)
                self.goal = Pose(pos, _quat(rot))  # where the joint move really ends
        wp = self.waypoints[self.k]
        span = max(wp.t - self.t_start, 1e-9)
        s = min_jerk((t - self.t_start) / span)
        self.gripper = (1 - s) * self.gripper_start + s * wp.gripper
        if wp.joint:
            self.q = (1 - s) * self.q_start + s * self.q_goal
        else:
            if wp.track and wp.resolve is not None:
                self.goal = wp.resolve(scene)
            pos = (1 - s) * self.start.pos + s * self.goal.pos
            quat = _slerp(self.start.quat, self.goal.quat, s)
            self.q = self.ik.solve(self.q, pos, quat, max_step=MAX_JOINT_STEP)
        return np.concatenate([self.q, [self.gripper]])


# Gripper orientations (columns: along the fingers, closing axis, their cross product)
RIGHT_DOWN = _quat(_rot((0, 0, -1), (0, -1, 0)))  # pointing down, closing along world y
LEFT_DOWN = _quat(_rot((0, 0, -1), (0, 1, 0)))  # pointing down, closing along world y


# A posture with the elbow up and the wrist bent well down: the branch the arms reach down on
REACH_DOWN = np.array([0.0, -0.1, 0.3, 0.0, 1.3, 0.0])


def _at(pos, quat) -> Pose:
    return Pose(np.asarray(pos, dtype=np.float64), np.asarray(quat, dtype=np.float64))


class ScriptedOperator:
    """Plays both leader arms through a task from whatever initial state the seed produced."""

    def __init__(self, model: mujoco.MjModel, task: str, control_dt: float,
                 aim_noise: float = 0.0, handover_delay: float = 0.0):
        if not (aim_noise >= 0.0 and np.isfinite(aim_noise)):
            raise ValueError(f"aim_noise is a standard deviation in metres, >= 0: {aim_noise}")
        check_handover_delay(handover_delay, task)
        self.model = model
        self.task = task
        self.control_dt = control_dt
        self.aim_noise = float(aim_noise)
        self.aim: dict[str, np.ndarray] = {side: np.zeros(3) for side in layout.SIDES}
        self.handover_delay = float(handover_delay)
        self.delay = 0.0  # this episode's extra wait before the hand-over (s)
        self.index = SceneIndex.of(model)
        self.ik = {side: ArmIK(model, self.index, side) for side in layout.SIDES}
        self.scripts: dict[str, ArmScript] = {}
        self.last = self.start_pose()

    @staticmethod
    def start_pose() -> np.ndarray:
        from drivers.sim.scene import normalize_gripper

        arm = START_ARM_POSE[:6]
        g = normalize_gripper(START_ARM_POSE[6])
        return np.concatenate([arm, [g], arm, [g]])

    @property
    def duration(self) -> float:
        return max(s.waypoints[-1].t for s in self.scripts.values())

    def reset(self, scene: SceneView, seed: int | None = None) -> None:
        """Plan an episode from the scene's initial state (call after the task reset). `seed`
        draws the aiming errors and the hand-over delay (with aim_noise or handover_delay > 0;
        the same seed, the same draws)."""
        start = self.start_pose()
        plans = TRANSFER_CUBE if self.task == "transfer_cube" else INSERTION
        self.aim = self._draw_aim(seed)
        self.delay = self._draw_delay(seed)
        self.scripts = {}
        for side in layout.SIDES:
            s = layout.arm_slice(side)
            self.scripts[side] = ArmScript(
                self.ik[side], start[s][:6], float(start[s][6]),
                plans[side](scene, self.aim[side], self.delay)
            )
        self.last = start

    def _draw_aim(self, seed: int | None) -> dict[str, np.ndarray]:
        """Each arm's horizontal aiming error for its first reach (zero without aim_noise)."""
        if self.aim_noise == 0.0:
            return {side: np.zeros(3) for side in layout.SIDES}
        rng = np.random.default_rng([0x41494D, 0 if seed is None else int(seed) & 0xFFFFFFFF])
        out = {}
        for side in layout.SIDES:
            xy = np.clip(rng.normal(0.0, self.aim_noise, 2), -2.5 * self.aim_noise,
                         2.5 * self.aim_noise)
            out[side] = np.array([xy[0], xy[1], 0.0])
        return out

    def _draw_delay(self, seed: int | None) -> float:
        """This episode's extra wait before the hand-over (0 without handover_delay), rounded
        to whole control steps."""
        if self.handover_delay == 0.0:
            return 0.0
        rng = np.random.default_rng([0x484F44, 0 if seed is None else int(seed) & 0xFFFFFFFF])
        steps = round(rng.uniform(0.0, self.handover_delay) / self.control_dt)
        return steps * self.control_dt

    def act(self, t: float, scene: SceneView) -> np.ndarray:
        """14-d leader joint targets for sim time t (seconds since the episode began)."""
        if not self.scripts:
            self.reset(scene)
        self.last = layout.join(self.scripts["left"].act(t, scene), self.scripts["right"].act(t, scene))
        return self.last


# -- transfer cube ----------------------------------------------------------------------------
# The right arm picks the cube from above, gripping its upper half, lifts it to the meeting point
# and tilts so the lower half sticks out towards the left arm, pointing down-left; the left arm
# comes in head-on from below-left with its fingers closing crosswise to the right fingers (so the
# two grippers never collide), grips the free half, and the right arm lets go and backs off. The
# right wrist straightens only in its first, joint-space reach; after it both wrists stay bent
# (the meeting point and tilt keep the right wrist angle above ~0.7 rad and the left one between
# -1.1 and -1.45 rad, clear of both the straight wrist and the left's -1.87 rad stop).

MEET = np.array([0.1, 0.5, 0.35])  # right fingertip at the hand-over
HANDOVER_TILT = np.radians(30.0)
_D = np.array([-np.cos(HANDOVER_TILT), 0.0, -np.sin(HANDOVER_TILT)])  # right gripper's pointing
RIGHT_HANDOVER = _quat(_rot(_D, (0, -1, 0)))
LEFT_HANDOVER = _quat(_rot(-_D, np.cross(_D, (0, -1, 0))))  # head-on, closing crosswise
GRASP_HEIGHT = 0.003  # right fingertips this far above the cube's centre: the upper half in hand
LEFT_REACH = 0.010  # left fingertips this far past the cube's centre, towards the right gripper
# The longest extra wait before the hand-over: the left arm then lifts the cube by 7.6 s of 8.
MAX_HANDOVER_DELAY = 0.6


def check_handover_delay(delay: float, task: str) -> None:
    """A ValueError unless `delay` is a hand-over delay the task's episode can hold."""
    if not 0.0 <= delay <= MAX_HANDOVER_DELAY:
        raise ValueError(f"the hand-over delay is the longest extra wait in seconds, 0 to "
                         f"{MAX_HANDOVER_DELAY} (the 8 s episode holds no more): {delay}")
    if delay > 0 and task != "transfer_cube":
        raise ValueError(f"the hand-over delay times transfer cube's hand-over; the task {task} "
                         f"has none")


def _cube(scene: SceneView) -> np.ndarray:
    return scene.body_pos("box")


def _corrected(aim: np.ndarray, target: Callable[[SceneView], np.ndarray],
               quat: np.ndarray) -> list[Waypoint]:
    """After a first reach aimed `aim` off the object: bring the open fingers over the object,
    CORRECTION_HEIGHT above where they grip it, before they come down, so that no finger lands
    on it (none without an aiming error: the way down is one straight segment then)."""
    if not np.any(aim):
        return []
    def over(sc: SceneView) -> Pose:
        return _at(target(sc) + [0, 0, CORRECTION_HEIGHT], quat)

    return [Waypoint(CORRECTED_BY, 1.0, resolve=over)]


CORRECTED_BY = 1.95  # s: the aiming error is gone by then, 0.25 s before the grip height
CORRECTION_HEIGHT = 0.03  # m above the grip height


def _transfer_right(scene: SceneView, aim: np.ndarray, delay: float = 0.0) -> list[Waypoint]:
    c = _cube(scene) + aim  # the first reach aims here; the way down corrects any error
    grip = lambda sc: _cube(sc) + [0, 0, GRASP_HEIGHT]  # noqa: E731
    return [
        Waypoint(1.6, 1.0, _at(c + [0, 0, 0.10], RIGHT_DOWN), joint=True, seed=REACH_DOWN),
        *_corrected(aim, grip, RIGHT_DOWN),
        Waypoint(2.2, 1.0, resolve=lambda sc: _at(grip(sc), RIGHT_DOWN)),
        Waypoint(2.7, 0.0, resolve=lambda sc: sc.tip("right")),
        Waypoint(3.3, 0.0, resolve=lambda sc: _at(sc.tip("right").pos + [0, 0, 0.10], RIGHT_DOWN)),
        Waypoint(4.4, 0.0, _at(MEET, RIGHT_HANDOVER)),
        # holds the cube until the left gripper has closed on it, then lets go and backs off
        Waypoint(5.7 + delay, 0.0, _at(MEET, RIGHT_HANDOVER)),
        Waypoint(6.2 + delay, 1.0, _at(MEET, RIGHT_HANDOVER)),
        Waypoint(7.0 + delay, 1.0, _at(MEET - 0.10 * _D, RIGHT_HANDOVER)),
        Waypoint(8.0, 1.0, _at(MEET - 0.10 * _D, RIGHT_HANDOVER)),
    ]


def _left_grip_target(scene: SceneView) -> Pose:
    return _at(_cube(scene) + LEFT_REACH * _D, LEFT_HANDOVER)


def _transfer_left(scene: SceneView, aim: np.ndarray, delay: float = 0.0) -> list[Waypoint]:
    # its first move goes to a fixed waiting pose, not to an object: nothing to aim. It waits
    # there `delay` s longer, then comes in, closes and lifts the cube away
    wait = MEET + 0.12 * _D
    d = delay
    return [
        Waypoint(3.0, 1.0, _at(wait, LEFT_HANDOVER), joint=True),
        Waypoint(4.4 + d, 1.0, _at(wait, LEFT_HANDOVER)),
        Waypoint(5.1 + d, 1.0, resolve=_left_grip_target),
        Waypoint(5.6 + d, 0.0, resolve=lambda sc: sc.tip("left")),
        Waypoint(6.2 + d, 0.0, resolve=lambda sc: sc.tip("left")),
        Waypoint(7.0 + d, 0.0,
                 resolve=lambda sc: _at(sc.tip("left").pos + 0.06 * _D, LEFT_HANDOVER)),
        Waypoint(8.0, 0.0, resolve=lambda sc: sc.tip("left")),
    ]


TRANSFER_CUBE = {"left": _transfer_left, "right": _transfer_right}


# -- insertion ----------------------------------------------------------------------------------
def _insertion_right(scene: SceneView, aim: np.ndarray, delay: float = 0.0) -> list[Waypoint]:
    p = scene.body_pos("peg") + aim
    grip = lambda sc: sc.body_pos("peg") + [0, 0, -0.005]  # noqa: E731
    return [
        Waypoint(1.6, 1.0, _at(p + [0, 0, 0.10], RIGHT_DOWN), joint=True, seed=REACH_DOWN),
        *_corrected(aim, grip, RIGHT_DOWN),
        Waypoint(2.2, 1.0, resolve=lambda sc: _at(grip(sc), RIGHT_DOWN)),
        Waypoint(2.7, 0.0, resolve=lambda sc: sc.tip("right")),
        Waypoint(3.4, 0.0, resolve=lambda sc: _at(sc.tip("right").pos + [0, 0, 0.15], RIGHT_DOWN)),
        Waypoint(4.6, 0.0, resolve=lambda sc: _peg_goal(sc, 0.05), track=True),
        Waypoint(5.4, 0.0, resolve=lambda sc: _peg_goal(sc, 0.01), track=True),
        Waypoint(6.5, 0.0, resolve=lambda sc: _peg_goal(sc, -0.026)),
        Waypoint(8.0, 0.0, resolve=lambda sc: sc.tip("right")),
    ]


def _insertion_left(scene: SceneView, aim: np.ndarray, delay: float = 0.0) -> list[Waypoint]:
    s = scene.body_pos("socket") + aim
    grip = lambda sc: sc.body_pos("socket") + [0, 0, -0.005]  # noqa: E731
    return [
        Waypoint(1.6, 1.0, _at(s + [0, 0, 0.10], LEFT_DOWN), joint=True, seed=REACH_DOWN),
        *_corrected(aim, grip, LEFT_DOWN),
        Waypoint(2.2, 1.0, resolve=lambda sc: _at(grip(sc), LEFT_DOWN)),
        Waypoint(2.7, 0.0, resolve=lambda sc: sc.tip("left")),
        Waypoint(3.4, 0.0, resolve=lambda sc: _at(sc.tip("left").pos + [0, 0, 0.15], LEFT_DOWN)),
        Waypoint(4.6, 0.0, resolve=lambda sc: _socket_goal(sc)),
        Waypoint(8.0, 0.0, resolve=lambda sc: sc.tip("left")),
    ]


SOCKET_AT = np.array([-0.08, 0.5, 0.22])


def _socket_goal(scene: SceneView) -> Pose:
    """Left fingertip pose that brings the socket's centre to SOCKET_AT."""
    tip = scene.tip("left")
    offset = scene.body_pos("socket") - tip.pos
    return _at(SOCKET_AT - offset, LEFT_DOWN)


def _peg_goal(scene: SceneView, gap: float) -> Pose:
    """Right fingertip pose that puts the peg's left end on the socket's axis, `gap` metres
    outside its right mouth (negative: inside), wherever the socket and the peg in hand are now."""
    tip = scene.tip("right")
    peg_end = scene.body_pos("peg") - PEG_HALF * scene.body_mat("peg")[:, 0]
    axis = scene.body_mat("socket")[:, 0]
    mouth = scene.body_pos("socket") + SOCKET_HALF * axis
    return _at(tip.pos + (mouth + gap * axis - peg_end), RIGHT_DOWN)


PEG_HALF = 0.06  # half length of gym-aloha's peg (red_peg box size 0.06 0.01 0.01)
SOCKET_HALF = 0.06  # half length of its socket walls


INSERTION = {"left": _insertion_left, "right": _insertion_right}
