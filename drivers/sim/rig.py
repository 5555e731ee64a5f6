"""SimRig: the simulated bimanual ALOHA behind the same interface as the hardware rig.

Two ways to run, chosen by `[sim] realtime` in the rig config:

- real time (realtime = true): `connect()` starts a physics thread paced by drivers.clock.Ticker
  at the control rate. Each tick the scripted operator moves the leader arms, the latest follower
  targets are applied (like real servos, the arms keep holding or moving whether or not anyone
  commands) and the physics advances one control period. A render thread owns the GL context and
  renders every camera at its own fps from a snapshot of the state into a private MjData, so
  physics never waits for rendering.
- stepping (realtime = false): no threads. `step()` advances exactly one control period and renders
  the cameras whose next frame is due by sim time. For fast recording, evaluation and tests.

Followers read and command in the rig's units: joints in radians, grippers 0 (closed) .. 1 (open)
with gym-aloha's normalisation of the finger slide. `read().leader` is what the scripted operator's
leader arms read; `read().info` carries the task reward (0..4), max_reward, success (the episode
reached the full reward) and the sim time.

torque_off() makes the follower arms limp: the position actuators' gains are zeroed, so the arms
sag under gravity against their joint friction, as unpowered servos do. Targets written while limp
are kept but have no effect; hold() (or reset()) torques the arms on again at their present pose.
"""

from __future__ import annotations

import collections
import threading

import mujoco
import numpy as np

from drivers import clock, layout
from drivers.config import CameraConfig, RigConfig, SimConfig
from drivers.errors import ConfigError, ConnectionFailed, RigError
from drivers.rig import Camera, Frame, Rig, RigState
from drivers.sim.operator import SceneView, ScriptedOperator
from drivers.sim.scene import SceneIndex, build_model, normalize_gripper
from drivers.sim.tasks import get_task, step_physics


class SimCamera(Camera):
    """A camera of the sim scene. Its frames are rendered by the SimRig (render thread in real
    time, `step()` in stepping mode); t_device is the sim time the frame shows."""

    def __init__(self, config: CameraConfig):
        super().__init__(config)
        self.sim_camera = config.sim_camera or config.name
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._seq = 0
        self._arrivals: collections.deque[float] = collections.deque(maxlen=31)
        self._running = False

    def start(self) -> None:
        self._running = True

    def stop(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify_all()

    def deliver(self, color: np.ndarray, t_sim: float) -> Frame:
        with self._cond:
            self._seq += 1
            t = clock.now()
            self._frame = Frame(self.name, color, t, self._seq, t_device=t_sim)
            self._arrivals.append(t)
            self._cond.notify_all()
            return self._frame

    def latest(self, max_age_s: float | None = None) -> Frame:
        with self._cond:
            frame = self._frame
        if frame is None:
            raise ConnectionFailed(
                f"sim camera '{self.name}' has no frame yet: connect the rig first (in stepping "
                f"mode, frames come from rig.step())"
            )
        if max_age_s is not None and clock.now() - frame.t_host > max_age_s:
            raise ConnectionFailed(
                f"sim camera '{self.name}' is stale: last frame {clock.now() - frame.t_host:.3f} s "
                f"ago (limit {max_age_s} s); the rig's render thread is behind or stopped"
            )
        return frame

    def wait_next(self, after_seq: int, timeout_s: float) -> Frame:
        deadline = clock.now() + timeout_s
        with self._cond:
            while self._frame is None or self._frame.seq <= after_seq:
                remaining = deadline - clock.now()
                if remaining <= 0 or not self._running:
                    raise ConnectionFailed(
                        f"sim camera '{self.name}' delivered no frame after seq {after_seq} within "
                        f"{timeout_s} s" + ("" if self._running else ": the rig is disconnected")
                    )
                self._cond.wait(remaining)
            return self._frame

    @property
    def measured_fps(self) -> float:
        with self._cond:
            a = list(self._arrivals)
        if len(a) < 2 or a[-1] <= a[0]:
            return 0.0
        return (len(a) - 1) / (a[-1] - a[0])


class _Renderers:
    """One mujoco.Renderer per image size, all bound to the thread that created them."""

    def __init__(self, model: mujoco.MjModel):
        self.model = model
        self.thread = threading.get_ident()
        self.by_size: dict[tuple[int, int], mujoco.Renderer] = {}

    def render(self, data: mujoco.MjData, cam: SimCamera) -> np.ndarray:
        if threading.get_ident() != self.thread:
            raise RigError(
                "the sim cameras render in the thread that first rendered them (a GL context is "
                "bound to one thread): call rig.step() from one thread"
            )
        size = (cam.config.height, cam.config.width)
        r = self.by_size.get(size)
        if r is None:
            try:
                r = mujoco.Renderer(self.model, *size)
            except Exception as e:  # GL backend missing or broken
                raise ConnectionFailed(
                    f"cannot render the sim cameras offscreen ({e}). Set MUJOCO_GL=egl or "
                    f"MUJOCO_GL=osmesa before starting (install libegl1 or libosmesa6: "
                    f"`bash scripts/dev setup` does)"
                ) from e
            # software GL: shadows and reflections cost ~5x the frame time
            r.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            r.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
            self.by_size[size] = r
        r.update_scene(data, camera=cam.sim_camera)
        return r.render()

    def close(self) -> None:
        for r in self.by_size.values():
            r.close()
        self.by_size.clear()


class SimRig(Rig):
    def __init__(self, config: RigConfig):
        super().__init__(config)
        self.sim: SimConfig = config.sim or SimConfig()
        self.task = get_task(self.sim.task)
        width = max([c.width for c in config.cameras] + [640])
        height = max([c.height for c in config.cameras] + [480])
        self.model = build_model(self.task.name, width, height)
        self.data = mujoco.MjData(self.model)
        self.index = SceneIndex.of(self.model)
        self.dt = 1.0 / config.control_hz
        n = self.dt / self.model.opt.timestep
        self.n_substeps = int(round(n))
        if self.n_substeps < 1 or abs(n - self.n_substeps) > 1e-6:
            raise ConfigError(
                f"{config.source or config.name}: control_hz = {config.control_hz} does not divide "
                f"the sim's {1 / self.model.opt.timestep:.0f} Hz physics; use 50 (ALOHA), 25 or 100"
            )
        known = [
            mujoco.mj_id2name(self.model, mujoco.mjtObj.mjOBJ_CAMERA, i)
            for i in range(self.model.ncam)
        ]
        for c in config.cameras:
            name = c.sim_camera or c.name
            if name not in known:
                raise ConfigError(
                    f"{config.source or config.name}: camera '{c.name}' names sim_camera "
                    f"'{name}', which the sim scene lacks; use one of {', '.join(known)}"
                )
        self.cameras = {c.name: SimCamera(c) for c in config.cameras}
        self.operator = ScriptedOperator(self.model, self.task.name, self.dt)
        self.view = SceneView(self.model, self.data)
        self._finger_dof = {
            side: int(self.model.jnt_dofadr[list(self.model.jnt_qposadr).index(arm.finger_qpos[0])])
            for side, arm in self.index.arms.items()
        }
        self._gripper_scale = normalize_gripper(1.0) - normalize_gripper(0.0)  # (0..1)/s per m/s
        self._gain = self.model.actuator_gainprm[:, 0].copy()
        self._bias = self.model.actuator_biasprm[:, 1].copy()

        self._lock = threading.RLock()  # guards data, targets, leader, episode
        self._targets = np.zeros(layout.DIM)
        self._leader = self.operator.start_pose()
        self._limp = False
        self.seed = self.sim.seed
        self._next_seed = self.sim.seed
        self._t0 = 0.0  # sim time at the episode start
        self._best = 0
        self._reward = 0
        self._snapshot: tuple[np.ndarray, float] | None = None
        self._next_frame: dict[str, float] = {}
        self._renderers: _Renderers | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._connected = False
        self.steps = 0
        self.missed_ticks = 0
        self._wall0 = 0.0
        self._sim0 = 0.0
        self._error: BaseException | None = None

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def realtime(self) -> bool:
        return self.sim.realtime

    @property
    def connected(self) -> bool:
        return self._connected

    def connect(self) -> None:
        if self._connected:
            return
        self.reset(self.sim.seed)
        for cam in self.cameras.values():
            cam.start()
        self._stop.clear()
        self._connected = True
        if self.realtime:
            self._threads = [
                threading.Thread(target=self._physics_loop, name="sim-physics", daemon=True),
                threading.Thread(target=self._render_loop, name="sim-render", daemon=True),
            ]
            for t in self._threads:
                t.start()
        else:
            self._render_due(force=True)

    def disconnect(self) -> None:
        if not self._connected:
            return
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5.0)
        self._threads = []
        for cam in self.cameras.values():
            cam.stop()
        if self._renderers is not None and self._renderers.thread == threading.get_ident():
            self._renderers.close()
        self._renderers = None
        with self._lock:
            self._set_limp(True)
        self._connected = False

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode: task objects placed from the seed (the config's seed first, then
        seed+1, seed+2, ... when none is given), arms at the start pose, operator re-planned."""
        with self._lock:
            self.seed = self._next_seed if seed is None else int(seed)
            self._next_seed = self.seed + 1
            self.task.reset(self.model, self.data, self.seed)
            self._set_limp(False)
            self._t0 = float(self.data.time)
            self.operator.reset(self.view)
            self._leader = self.operator.start_pose()
            self._targets = self.index.targets_from_ctrl(self.data.ctrl)
            self._reward = self.task.reward(self.model, self.data)
            self._best = self._reward
            self._next_frame = {name: 0.0 for name in self.cameras}
            self._snapshot = (self.data.qpos.copy(), 0.0)
            self._wall0, self._sim0 = clock.now(), 0.0

    # -- stepping ----------------------------------------------------------------------------
    @property
    def episode_time(self) -> float:
        return float(self.data.time) - self._t0

    def _advance(self) -> None:
        """One control period: operator moves the leaders, targets applied, physics steps."""
        t = self.episode_time
        self._leader = self.operator.act(t, self.view)
        if not self._limp:
            self.index.ctrl_from_targets(self._targets, self.data.ctrl)
        step_physics(self.model, self.data, self.n_substeps)
        self._reward = self.task.reward(self.model, self.data)
        self._best = max(self._best, self._reward)
        self.steps += 1
        self._snapshot = (self.data.qpos.copy(), self.episode_time)

    def step(self) -> None:
        """Stepping mode: advance one control period and render the cameras that are due."""
        if self.realtime:
            raise RigError(
                "rig.step() is for stepping mode; this rig runs in real time (its physics thread "
                "steps it). Set [sim] realtime = false to step it yourself"
            )
        if not self._connected:
            raise RigError("the sim rig is not connected: call rig.connect() first")
        with self._lock:
            self._advance()
        self._render_due()

    def _render_due(self, force: bool = False) -> None:
        t = self.episode_time
        if self._renderers is None:
            self._renderers = _Renderers(self.model)
        for name, cam in self.cameras.items():
            if force or t + 1e-9 >= self._next_frame[name]:
                color = self._renderers.render(self.data, cam)
                cam.deliver(color, t)
                period = 1.0 / cam.config.fps
                self._next_frame[name] = max(self._next_frame[name] + period, t)

    # -- real-time threads ------------------------------------------------------------------------
    def _physics_loop(self) -> None:
        ticker = clock.Ticker(self.config.control_hz)
        self._wall0, self._sim0 = clock.now(), self.episode_time
        try:
            while not self._stop.is_set():
                with self._lock:
                    self._advance()
                ticker.wait()
                self.missed_ticks = ticker.missed
        except BaseException as e:  # surfaced by read()
            self._error = e

    def _render_loop(self) -> None:
        renderers = _Renderers(self.model)
        rdata = mujoco.MjData(self.model)
        cams = list(self.cameras.values())
        due = {c.name: clock.now() for c in cams}
        try:
            while not self._stop.is_set() and cams:
                cam = min(cams, key=lambda c: due[c.name])
                wait = due[cam.name] - clock.now()
                if wait > 0 and self._stop.wait(wait):
                    break
                qpos, t_sim = self._snapshot
                rdata.qpos[:] = qpos
                mujoco.mj_kinematics(self.model, rdata)
                mujoco.mj_comPos(self.model, rdata)
                mujoco.mj_camlight(self.model, rdata)
                cam.deliver(renderers.render(rdata, cam), t_sim)
                period = 1.0 / cam.config.fps
                due[cam.name] = max(due[cam.name] + period, clock.now() - period)
        except BaseException as e:
            self._error = e
        finally:
            renderers.close()

    def stats(self) -> dict:
        """Real-time health: sim seconds per wall second since the episode (or connect) began,
        control steps, ticks the physics thread missed, and each camera's measured fps."""
        wall = clock.now() - self._wall0
        sim = self.episode_time - self._sim0
        return {
            "rtf": sim / wall if wall > 0 else 0.0,
            "steps": self.steps,
            "missed_ticks": self.missed_ticks,
            "camera_fps": {n: c.measured_fps for n, c in self.cameras.items()},
        }

    # -- motion ----------------------------------------------------------------------------------
    @property
    def has_leaders(self) -> bool:
        return True

    def read(self) -> RigState:
        if self._error is not None:
            raise RigError(
                f"the sim rig's physics or render thread failed: {self._error!r}; "
                f"disconnect and connect again"
            )
        with self._lock:
            qpos = self.data.qpos
            qvel = self.data.qvel
            follower = self.index.follower(qpos)
            velocity = np.empty(layout.DIM)
            for side, arm in self.index.arms.items():
                s = layout.arm_slice(side)
                velocity[s.start : s.start + 6] = qvel[list(arm.dof)]
                velocity[s.start + 6] = qvel[self._finger_dof[side]] * self._gripper_scale
            info = {
                "task": self.task.name,
                "seed": self.seed,
                "reward": self._reward,
                "max_reward": self.task.max_reward,
                "success": self._best >= self.task.max_reward,
                "episode_max_reward": self._best,
                "sim_time": self.episode_time,
                "done": self.episode_time >= self.sim.episode_seconds - 0.5 * self.dt,
                "limp": self._limp,
            }
            leader = self._leader.copy()
        return RigState(clock.now(), follower, leader, follower_velocity=velocity, info=info)

    def _write_targets(self, q: np.ndarray) -> None:
        lo, hi = self.limits()
        with self._lock:
            self._targets = np.clip(q, lo, hi)

    def targets(self) -> np.ndarray:
        with self._lock:
            return self._targets.copy()

    def hold(self) -> None:
        with self._lock:
            self._targets = self.index.follower(self.data.qpos)
            self._set_limp(False)

    def torque_off(self) -> None:
        with self._lock:
            self._set_limp(True)

    def _set_limp(self, limp: bool) -> None:
        self._limp = limp
        if limp:
            self.model.actuator_gainprm[:, 0] = 0.0
            self.model.actuator_biasprm[:, 1] = 0.0
            self.data.ctrl[:] = 0.0
        else:
            self.model.actuator_gainprm[:, 0] = self._gain
            self.model.actuator_biasprm[:, 1] = self._bias

    def limits(self) -> tuple[np.ndarray, np.ndarray]:
        return self.index.limits(self.model)
