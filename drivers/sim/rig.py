"""SimRig: the simulated bimanual ALOHA behind the same interface as the hardware rig.

Two ways to run, chosen by `[sim] realtime` in the rig config:

- real time (realtime = true): `connect()` starts a physics thread paced by drivers.clock.Ticker
  at the control rate. Each tick the scripted operator moves the leader arms, the latest follower
  targets are applied (like real servos, the arms keep holding or moving whether or not anyone
  commands) and the physics advances one control period. The cameras are rendered in a separate
  process (drivers.sim.render_worker): mujoco's renderer holds the GIL through parts of every frame
  (~6-9 ms of CPU at 240x320 on software GL), so in this process it would stall physics, the
  control loop and the GUI, and take about half a core from them. A render thread here schedules every camera at its own fps, publishes a snapshot of the
  state to the worker through shared memory and hands the frames it gets back to the cameras; it
  only blocks in calls that release the GIL. If the worker dies, the cameras raise
  ConnectionFailed naming themselves and the cause; the arms keep running and holding.
- stepping (realtime = false): no threads. `step()` advances exactly one control period and renders
  the cameras whose next frame is due by sim time, in this process (see `_render_due`). For fast
  recording, evaluation and tests.

Followers read and command in the rig's units: joints in radians, grippers 0 (closed) .. 1 (open)
with gym-aloha's normalisation of the finger slide. `read().leader` is what the scripted operator's
leader arms read; `read().info` carries the task reward (0..4), max_reward, success (the episode
reached the full reward) and the sim time.

torque_off() makes the follower arms limp: the position actuators' gains are zeroed, so the arms
sag under gravity against their joint friction, as unpowered servos do. Targets written while limp
are kept but have no effect; hold() (or reset()) torques the arms on again at their present pose.
"""

from __future__ import annotations

import dataclasses

import collections
import functools
import threading

import mujoco
import numpy as np

from drivers import clock, layout
from drivers.config import CameraConfig, RigConfig, SimConfig
from drivers.errors import ConfigError, ConnectionFailed, RigError
from drivers.rig import Camera, Frame, Rig, RigState
from drivers.sim.operator import SceneView, ScriptedOperator
from drivers.sim.render_worker import CameraSpec, RenderWorker, SceneRenderer
from drivers.sim.scene import SceneIndex, build_model, normalize_gripper
from drivers.sim.tasks import get_task, step_physics


class SimCamera(Camera):
    """A camera of the sim scene. Its frames are rendered by the SimRig (the render worker in
    real time, `step()` in stepping mode); t_device is the sim time the frame shows."""

    def __init__(self, config: CameraConfig):
        super().__init__(config)
        self.sim_camera = config.sim_camera or config.name
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._seq = 0
        self._arrivals: collections.deque[float] = collections.deque(maxlen=31)
        self._running = False
        self._failure = ""  # why frames stopped coming (the render worker died), once they have

    def start(self) -> None:
        with self._cond:
            self._running = True
            self._failure = ""
            self._arrivals.clear()

    def fail(self, reason: str) -> None:
        """Frames stopped for good (until the rig reconnects): latest() and wait_next() raise
        ConnectionFailed with the reason."""
        with self._cond:
            self._failure = reason
            self._cond.notify_all()

    def _failed(self) -> ConnectionFailed:
        return ConnectionFailed(
            f"sim camera '{self.name}' has no new frames: {self._failure}; disconnect and "
            f"connect the rig again"
        )

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

    def seq(self) -> int:
        """The sequence number of the latest frame (0 before the first)."""
        with self._cond:
            return self._seq

    def latest(self, max_age_s: float | None = None) -> Frame:
        with self._cond:
            frame = self._frame
            if self._failure:
                raise self._failed()
        if frame is None:
            raise ConnectionFailed(
                f"sim camera '{self.name}' has no frame yet: connect the rig first (in stepping "
                f"mode, frames come from rig.step())"
            )
        if max_age_s is not None and clock.now() - frame.t_host > max_age_s:
            raise ConnectionFailed(
                f"sim camera '{self.name}' is stale: last frame {clock.now() - frame.t_host:.3f} s "
                f"ago (limit {max_age_s} s); the rig's renderer is behind or stopped"
            )
        return frame

    def wait_next(self, after_seq: int, timeout_s: float) -> Frame:
        deadline = clock.now() + timeout_s
        with self._cond:
            while self._frame is None or self._frame.seq <= after_seq:
                if self._failure:
                    raise self._failed()
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
            if self._failure:
                return 0.0
        if len(a) < 2 or a[-1] <= a[0]:
            return 0.0
        return (len(a) - 1) / (a[-1] - a[0])


class _Renderers:
    """Stepping mode's in-process renderers, bound to the thread that created them."""

    def __init__(self, model: mujoco.MjModel):
        self.thread = threading.get_ident()
        self.scene = SceneRenderer(model)

    def render(self, data: mujoco.MjData, cam: SimCamera) -> np.ndarray:
        if threading.get_ident() != self.thread:
            raise RigError(
                "the sim cameras render in the thread that first rendered them (a GL context is "
                "bound to one thread): call rig.step() from one thread"
            )
        return self.scene.render(data, cam.sim_camera, cam.config.height, cam.config.width)

    def close(self) -> None:
        self.scene.close()


class SimRig(Rig):
    # real time: how long reset() waits for each camera's first frame of the new scene
    RESET_FRAME_TIMEOUT_S = 1.0

    def __init__(self, config: RigConfig):
        super().__init__(config)
        self.sim: SimConfig = config.sim or SimConfig()
        self.task = get_task(self.sim.task)
        width = max([c.width for c in config.cameras] + [640])
        height = max([c.height for c in config.cameras] + [480])
        self._offscreen = (width, height)
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
        self.operator = ScriptedOperator(self.model, self.task.name, self.dt,
                                         aim_noise=self.sim.aim_noise,
                                         handover_delay=self.sim.handover_delay)
        self.view = SceneView(self.model, self.data)
        self._finger_dof = {
            side: int(self.model.jnt_dofadr[list(self.model.jnt_qposadr).index(arm.finger_qpos[0])])
            for side, arm in self.index.arms.items()
        }
        self._gripper_scale = normalize_gripper(1.0) - normalize_gripper(0.0)  # (0..1)/s per m/s
        self._gain = self.model.actuator_gainprm[:, 0].copy()
        self._bias = self.model.actuator_biasprm[:, 1].copy()

        self._lock = threading.RLock()  # guards data, leader, episode
        # Targets and the published state have their own small lock so that the control thread's
        # read() and command() never wait for a physics step (operator IK + 10 substeps, up to
        # ~15 ms): like servos, the sim takes the latest target and reports its latest state.
        self._io_lock = threading.Lock()
        self._published: RigState | None = None
        self._targets = np.zeros(layout.DIM)
        self._leader = self.operator.start_pose()
        self._limp = False
        self.seed = self.sim.seed
        self._next_seed = self.sim.seed
        self._t0 = 0.0  # sim time at the episode start
        self._best = 0
        self._reward = 0
        # what the cameras render: (qpos, sim time, mocap_pos, mocap_quat), replaced whole
        self._snapshot: tuple | None = None
        # episodes since connect: a frame rendered from an earlier episode's snapshot (in flight
        # at a reset) is dropped, not delivered; the lock orders a reset against deliveries
        self._episode = 0
        self._episode_lock = threading.Lock()
        self._next_frame: dict[str, float] = {}
        self._renderers: _Renderers | None = None
        self._worker: RenderWorker | None = None
        self.render_error = ""  # why the real-time cameras stopped, once they have
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
        self._error = None
        self.render_error = ""
        if self.realtime and self.cameras:
            worker = RenderWorker(
                self.task.name, *self._offscreen, self.model.nq, self.model.nmocap,
                [
                    CameraSpec(c.name, c.sim_camera, c.config.height, c.config.width)
                    for c in self.cameras.values()
                ],
            )
            worker.start()  # raises ConnectionFailed (GL missing, ...) before anything runs
            self._worker = worker
        try:
            self.reset(self.sim.seed)
        except BaseException:
            if self._worker is not None:
                self._worker.stop()
                self._worker = None
            raise
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
            t.join(timeout=3.0)
            if t.is_alive() and self._worker is not None:
                self._worker.kill()  # a hung worker: its EOF ends the render thread's wait
                t.join(timeout=3.0)
        self._threads = []
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
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
            self.operator.reset(self.view, seed=self.seed)
            self._leader = self.operator.start_pose()
            with self._io_lock:
                self._targets = self.index.targets_from_ctrl(self.data.ctrl)
            self._reward = self.task.reward(self.model, self.data)
            self._best = self._reward
            self._next_frame = {name: 0.0 for name in self.cameras}
            with self._episode_lock:
                self._episode += 1
                seen = {n: c.seq() for n, c in self.cameras.items()}
            self._snapshot = self._state_snapshot()
            self._publish()
            self._wall0, self._sim0 = clock.now(), 0.0
        if self.realtime and self._connected:
            # real time: return once every camera shows the new scene, so that the episode's
            # first observation is not the previous episode's last frame (one frame period;
            # a camera that fails to deliver is reported by the camera itself, not here)
            for name, cam in self.cameras.items():
                try:
                    cam.wait_next(seen[name], self.RESET_FRAME_TIMEOUT_S)
                except ConnectionFailed:
                    pass
        if not self.realtime and self._connected:
            # stepping: the cameras show the new scene from the episode's first read on, as a
            # streaming camera would, instead of the previous episode's last frame until the
            # first step() (connect() renders its own first frames)
            self._render_now()

    # -- stepping ----------------------------------------------------------------------------
    @property
    def episode_time(self) -> float:
        return float(self.data.time) - self._t0

    def _advance(self) -> None:
        """One control period: operator moves the leaders, targets applied, physics steps."""
        t = self.episode_time
        self._leader = self.operator.act(t, self.view)
        if not self._limp:
            with self._io_lock:
                targets = self._targets
            self.index.ctrl_from_targets(targets, self.data.ctrl)
        step_physics(self.model, self.data, self.n_substeps)
        self._reward = self.task.reward(self.model, self.data)
        self._best = max(self._best, self._reward)
        self.steps += 1
        self._snapshot = self._state_snapshot()
        self._publish()

    def _state_snapshot(self) -> tuple:
        if self.model.nmocap:
            mocap = (self.data.mocap_pos.copy(), self.data.mocap_quat.copy())
        else:
            mocap = (None, None)
        return (self.data.qpos.copy(), self.episode_time, *mocap, self._episode)

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

    def _render_now(self) -> None:
        """Stepping mode: a frame of every camera at the current instant, off the fps schedule
        (the frames due by sim time still come from step())."""
        if self._renderers is None:
            self._renderers = _Renderers(self.model)
        for cam in self.cameras.values():
            cam.deliver(self._renderers.render(self.data, cam), self.episode_time)

    def _render_due(self, force: bool = False) -> None:
        # Stepping mode renders here, in the caller's thread, not in the render worker: step() is
        # synchronous, so the caller waits for its frames either way and no control thread runs
        # beside it; rendering self.data directly keeps stepping free of a process start, IPC and
        # scheduling between processes (deterministic, and its capacity is what bench/rig_sim.py
        # measures).
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
        """Schedules the cameras at their fps (wall time); the worker renders. Every camera due
        within a millisecond goes in one request, all of the same state snapshot."""
        worker = self._worker
        cams = list(self.cameras.values())
        if worker is None or not cams:
            return
        index = {c.name: i for i, c in enumerate(cams)}
        due = {c.name: clock.now() for c in cams}

        def on_frame(episode: int, i: int, color: np.ndarray, t_sim: float) -> None:
            cam = cams[i]
            with self._episode_lock:
                if episode == self._episode:      # not a frame of the scene before a reset
                    cam.deliver(color, t_sim)
            period = 1.0 / cam.config.fps
            due[cam.name] = max(due[cam.name] + period, clock.now() - period)

        try:
            while not self._stop.is_set():
                first = min(due.values())
                wait = first - clock.now()
                if wait > 0 and self._stop.wait(wait):
                    break
                batch = [index[n] for n, t in due.items() if t <= first + 1e-3]
                qpos, t_sim, mocap_pos, mocap_quat, episode = self._snapshot
                worker.render(qpos, t_sim, batch, functools.partial(on_frame, episode),
                              mocap_pos, mocap_quat)
        except ConnectionFailed as e:  # the worker died, hung or failed: cameras only
            self._camera_failure(str(e))
        except BaseException as e:  # noqa: BLE001
            self._camera_failure(f"the render thread failed: {e!r}")

    def _camera_failure(self, reason: str) -> None:
        """The cameras stop with the reason; physics keeps running, so the arms keep holding or
        following their targets."""
        self.render_error = reason
        for cam in self.cameras.values():
            cam.fail(reason)

    @property
    def render_worker_pid(self) -> int | None:
        """The pid of the real-time cameras' render process (None when there is none)."""
        return None if self._worker is None else self._worker.pid

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
            "render_error": self.render_error,
        }

    # -- motion ----------------------------------------------------------------------------------
    @property
    def has_leaders(self) -> bool:
        return True

    def _publish(self) -> None:
        """Publish the state just stepped (caller holds self._lock); read() returns it."""
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
        st = RigState(clock.now(), follower, leader, follower_velocity=velocity, info=info)
        with self._io_lock:
            self._published = st

    def read(self) -> RigState:
        if self._error is not None:
            raise RigError(
                f"the sim rig's physics thread failed: {self._error!r}; "
                f"disconnect and connect again"
            )
        with self._io_lock:
            st = self._published
        if st is None:
            raise RigError("the sim rig is not connected: call rig.connect() first")
        # copies: a caller may keep or modify what it read
        return dataclasses.replace(st, follower=st.follower.copy(), leader=st.leader.copy(),
                                   follower_velocity=st.follower_velocity.copy(),
                                   info=dict(st.info))

    def _write_targets(self, q: np.ndarray) -> None:
        lo, hi = self.limits()
        with self._io_lock:
            self._targets = np.clip(q, lo, hi)

    def targets(self) -> np.ndarray:
        with self._io_lock:
            return self._targets.copy()

    def hold(self) -> None:
        with self._lock:
            with self._io_lock:
                self._targets = self.index.follower(self.data.qpos)
            self._set_limp(False)
            self._publish()

    def torque_off(self) -> None:
        with self._lock:
            self._set_limp(True)
            self._publish()

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
