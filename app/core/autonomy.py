"""Autonomy: a chunk policy drives the followers through the asynchronous runtime.

    rig.read() -> AutonomySource.step (control thread) -> ChunkRuntime.step -> spliced action
               -> SafetyFilter (joint limits + per-step rate limit of the rig config) -> rig.command()

An AutonomySource plugs into RigSession.set_source() like a replay. Its life cycle:

    WAITING  the first chunk is being computed: the followers hold where they are
    RAMPING  from the held pose to the runtime's action at the ramp speed of the rig config
    RUNNING  one runtime action per control step through the SafetyFilter; whenever the runtime
             holds (starved, stale observation, paused, delay or policy error) the followers hold
             the last command
    STOPPED  stop() or an e-stop: the runtime is stopped and nothing is commanded any more

pause() holds the last command; resume() re-plans from the present state and ramps from the held
command to the new plan (WAITING -> RAMPING again), so a resume never jumps.

`run_stepping` drives a stepping-mode sim rig with a source, one control period per step, for
deterministic runs (tests, `main.py run`, `bench runtime`).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from drivers import clock, layout
from drivers.rig import Rig, RigState
from drivers.safety import SafetyFilter, joint_gap, ramp_delta, ramp_step
from xr0.runtime import ChunkRuntime, Flag, Observation


class AutonomyState(enum.Enum):
    WAITING = "waiting"
    RAMPING = "ramping"
    RUNNING = "running"
    STOPPED = "stopped"


@dataclass
class AutonomyStep:
    command: np.ndarray | None
    state: AutonomyState
    flags: Flag
    message: str = ""


class AutonomySource:
    """time_base: 'rig' stamps observations with drivers.clock (real time); 'sim' uses the sim's
    episode time (stepping mode, where wall time says nothing about the robot's time).
    extra: called for each observation; its dict becomes Observation.extra.
    cameras: the names of the rig cameras the policy sees (None: all of them); a rig may have
    more cameras than the policy was trained with."""

    def __init__(self, rig: Rig, runtime: ChunkRuntime, instruction: str = "",
                 time_base: str = "rig", extra: Callable[[], dict] | None = None,
                 cameras: Sequence[str] | None = None):
        if time_base not in ("rig", "sim"):
            raise ValueError(f"time_base is 'rig' or 'sim', not {time_base!r}")
        self.rig = rig
        self.cameras = tuple(rig.cameras) if cameras is None else tuple(cameras)
        self.runtime = runtime
        self.instruction = instruction
        self.time_base = time_base
        self.extra = extra
        safety = rig.config.safety
        self.filter = SafetyFilter(*rig.limits(), safety)
        self.ramp_delta = ramp_delta(safety, rig.config.control_hz)
        self.tolerance = safety.ramp_tolerance_rad
        self.state = AutonomyState.WAITING
        self.last: np.ndarray | None = None
        self.commands = 0
        self._rearm = False  # set by resume(): the control thread ramps to the new plan

    def stop(self) -> None:
        self.state = AutonomyState.STOPPED
        self.runtime.stop()

    def pause(self) -> None:
        """Hold the last command (any thread)."""
        self.runtime.pause()

    def resume(self) -> None:
        """Re-plan from the present state and ramp from the held command to it (any thread)."""
        self._rearm = True
        self.runtime.resume()

    def _time(self, st: RigState) -> float:
        if self.time_base == "sim":
            return float(st.info.get("sim_time", 0.0))
        return clock.now()

    def _observe(self, k: int, st: RigState) -> Observation:
        sim = self.time_base == "sim"
        t_obs = float(st.info.get("sim_time", 0.0)) if sim else st.t
        images = {}
        for name in self.cameras:
            try:
                f = self.rig.cameras[name].latest()
            except Exception:  # noqa: BLE001 - a dead camera makes the observation stale
                t_obs = -math.inf
                continue
            images[name] = f.color
            ft = f.t_device if sim and f.t_device is not None else f.t_host
            t_obs = min(t_obs, ft)
        extra = self.extra() if self.extra is not None else {}
        return Observation(k, t_obs, st.follower.copy(), images, self.instruction, extra)

    def step(self, st: RigState) -> AutonomyStep:
        if self.state is AutonomyState.STOPPED or self.rig.estopped:
            if self.state is not AutonomyState.STOPPED:
                self.stop()
            return AutonomyStep(None, self.state, Flag.STOPPED, "stopped")
        if self._rearm:
            self._rearm = False
            self.state = AutonomyState.WAITING
        if self.last is None:
            self.last = st.follower.copy()
        r = self.runtime.step(st.follower, self._time(st), lambda k: self._observe(k, st))
        if r.action is None:
            cmd = self.last  # hold the last command
        elif self.state in (AutonomyState.WAITING, AutonomyState.RAMPING):
            target = self.filter.clamp_limits(r.action)
            cmd = ramp_step(self.last, target, self.ramp_delta)
            g = list(layout.GRIPPER_INDICES)
            done = joint_gap(cmd, target)[0] <= self.tolerance and np.allclose(cmd[g], target[g])
            self.state = AutonomyState.RUNNING if done else AutonomyState.RAMPING
        else:
            cmd = self.filter(r.action, self.last)
        self.rig.command(cmd)
        self.last = cmd
        self.commands += 1
        return AutonomyStep(cmd, self.state, r.flags, r.message)


def warm_up(policy, obs: Observation, calls: int = 2) -> None:
    """Run a model policy on an observation before autonomy starts: its first calls pay for lazy
    initialisation (allocator, kernels, a server's first request), which would otherwise count as
    inference latency and inflate the delay estimate of the first chunks."""
    for _ in range(calls):
        policy.infer(obs, None)


def run_stepping(rig, source, steps: int, until_success: bool = False,
                 on_step: Callable[[int, RigState, AutonomyStep], None] | None = None) -> RigState:
    """Drive a stepping-mode sim rig: read, source.step, advance one control period. Returns the
    last state read."""
    st = rig.read()
    for k in range(steps):
        out = source.step(st)
        if on_step is not None:
            on_step(k, st, out)
        rig.step()
        st = rig.read()
        if until_success and st.info.get("success"):
            break
    return st


def run_sim_episode(rig, strategy: str, seed: int, delay_steps: int | str = 0,
                    chunk_length: int = 50, k: int = 15, instruction: str = "",
                    save: str | None = None, policy=None) -> dict:
    """One deterministic episode on a stepping-mode sim rig, with an inference delay in control
    steps (an int, or "measured": each chunk arrives as many steps after its request as the
    policy call took in wall time). policy: any xr0.runtime.ChunkPolicy (an XR0 checkpoint, a
    remote policy server) whose cameras the rig renders; None is the scripted-chunk policy.
    Returns success, completion time (s, None if not completed), inference latency p50/p95 (ms,
    as the runtime saw it), boundary discontinuity (mean and max over switches, x the median
    within-chunk step), RMS jerk of the commanded trajectory and the runtime's flags; with
    `save`, the run's telemetry is written there."""
    from app.core.scripted_policy import ScriptedChunkPolicy
    from xr0.runtime import RuntimeConfig
    from xr0.runtime.executor import SteppedExecutor

    rig.reset(seed)
    extra = None
    if policy is None:
        policy = ScriptedChunkPolicy(rig, chunk_length=chunk_length)
        extra = policy.capture
    rt = ChunkRuntime(policy, RuntimeConfig(dt=rig.dt, strategy=strategy, k=k),
                      executor=SteppedExecutor(policy, rig.dt, delay_steps))
    src = AutonomySource(rig, rt, instruction=instruction, time_base="sim", extra=extra)
    if extra is None:
        warm_up(policy, src._observe(0, rig.read()))
    if hasattr(policy, "reseed"):   # the model's sampling noise follows the episode's seed too
        policy.reseed(seed)
    steps = int(round(rig.sim.episode_seconds * rig.config.control_hz))
    done_at: list[float] = []
    flags = Flag.NONE

    def watch(k_: int, st: RigState, out: AutonomyStep) -> None:
        nonlocal flags
        flags |= out.flags
        if not done_at and st.info.get("success"):
            done_at.append(float(st.info.get("sim_time", 0.0)))

    st = run_stepping(rig, src, steps, on_step=watch)
    if not done_at and st.info.get("success"):
        done_at.append(float(st.info.get("sim_time", 0.0)))
    if save:
        rt.telemetry.save(save, seed=seed, delay_steps=delay_steps, task=rig.task.name,
                          instruction=instruction, success=bool(st.info.get("success")))
    rt.stop()
    return {
        "strategy": strategy, "seed": seed, "delay_steps": delay_steps,
        "success": bool(st.info.get("success")),
        # the furthest stage the task reached (transfer cube: 1 touched, 2 lifted, 3 both
        # grippers on it, 4 transferred): a near miss told from a policy gone astray
        "max_reward": st.info.get("episode_max_reward"),
        "completion_s": done_at[0] if done_at else None,
        **telemetry_metrics(rt.telemetry, rig.dt), "flags": Flag.names(int(flags)),
        "error": str(rt.error) if rt.error else "",
    }


def telemetry_metrics(telemetry, dt: float) -> dict:
    """A run's figures from its telemetry: inference latency p50/p95 (ms, as the runtime saw
    it), boundary discontinuity (mean and max over chunk switches, x the median within-chunk
    step), RMS jerk of the commanded trajectory (rad/s^3) and the number of chunks."""
    from xr0.runtime.metrics import boundary_discontinuity, rms_jerk

    if telemetry is None:
        return {"latency_ms_p50": None, "latency_ms_p95": None,
                "boundary_discontinuity": float("nan"), "boundary_discontinuity_max": float("nan"),
                "switches": 0, "rms_jerk": float("nan"), "chunks": 0}
    snap = telemetry.snapshot()
    bd = boundary_discontinuity(snap["step_action"], snap["step_chunk"], snap["step_flags"])
    lat = telemetry.latencies_ms()
    return {
        "latency_ms_p50": float(np.percentile(lat, 50)) if len(lat) else None,
        "latency_ms_p95": float(np.percentile(lat, 95)) if len(lat) else None,
        "boundary_discontinuity": bd["mean"], "boundary_discontinuity_max": bd["max"],
        "switches": bd["switches"], "rms_jerk": rms_jerk(snap["step_action"], dt),
        "chunks": len(telemetry.chunks()),
    }
