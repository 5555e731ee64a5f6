"""ChunkRuntime: called by the control thread once per tick, returns the action for that tick.

One tick, in order:
  1. chunks that arrived are spliced in at this step (strategies.py), dropping what was executed
     while they were computed; a chunk that took longer than the d steps its prefix covered is
     flagged late and spliced all the same
  2. if the strategy wants the next chunk (XR0: at most k unexecuted actions remain) and none is in
     flight: d = ceil(max of the last b latencies / dt); d past what the chunk allows is an error
     (DelayTooLarge) and the runtime holds; an observation older than max_obs_age_s holds (no
     request); otherwise the observation and the next d actions (the clean prefix; at least
     min_prefix of them, so that even a chunk computed within the tick continues from the path
     being executed) are sent to the inference worker
  3. the planned action for this step, or None (hold the last command) with the reason in the
     flags: waiting for the first chunk, starved (the plan ran out), paused, stopped, error

pause() holds; resume() re-plans from the present state (the plan and any chunk in flight are
dropped, so the next request has no prefix); stop() ends the run. All three are safe from any
thread. Nothing here blocks on inference.
"""

from __future__ import annotations

import collections
import math
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

from xr0.runtime.executor import Job, Result, SteppedExecutor, ThreadedExecutor
from xr0.runtime.policy import Observation, supports_guidance
from xr0.runtime.strategies import make_strategy
from xr0.runtime.telemetry import ChunkRecord, Flag, Telemetry


class DelayTooLarge(RuntimeError):
    """The inference delay does not fit in a chunk: the robot would run out of actions."""


@dataclass(frozen=True)
class RuntimeConfig:
    dt: float  # control period (s)
    strategy: str = "xr0"
    k: int = 10  # request the next chunk when at most k unexecuted actions remain
    latency_window: int = 10  # b: the delay estimate is the max of the last b latencies
    initial_delay_steps: int = 0  # the estimate before any latency was measured
    min_prefix: int = 1  # the clean prefix holds max(d, min_prefix) planned actions
    max_obs_age_s: float = 0.25
    rtc_beta: float = 5.0
    telemetry_steps: int = 100_000
    telemetry_chunks: int = 10_000


@dataclass
class RuntimeStep:
    step: int
    action: np.ndarray | None  # None: hold the last command
    chunk: int  # id of the chunk the action came from, -1 none
    flags: Flag
    message: str = ""


class ChunkRuntime:
    def __init__(self, policy, config: RuntimeConfig, executor=None, dim: int | None = None):
        self.policy = policy
        self.config = config
        self.H = int(policy.chunk_length)
        self.dim = dim
        self.strategy = None
        if config.strategy == "rtc" and not supports_guidance(policy):
            raise ValueError(
                f"strategy 'rtc' needs a flow policy with infer_guided(); "
                f"{type(policy).__name__} has none: use 'xr0' (a checkpoint post-trained with a "
                f"clean prefix) or 'naive'/'ensemble'")
        if config.strategy == "xr0" and not getattr(policy, "supports_prefix", False):
            raise ValueError(
                f"strategy 'xr0' conditions on a clean prefix, which {type(policy).__name__} does "
                f"not support: use 'rtc' (inference-time guidance) or 'naive'")
        make_strategy(config.strategy, self.H, config.k, 1)  # validates name and k up front
        self.executor = executor if executor is not None else ThreadedExecutor(policy)
        self.telemetry: Telemetry | None = None
        self.step_index = 0
        self._lock = threading.Lock()
        self._paused = False
        self._stopped = False
        self._replan = False
        self.error: Exception | None = None
        self._next_id = 0
        self._in_flight: dict[int, ChunkRecord] = {}
        self._had_plan: dict[int, bool] = {}  # whether a plan was running when it was requested
        self._latencies: collections.deque[float] = collections.deque(maxlen=config.latency_window)
        self._last_chunk = -1
        self._ever_arrived = False

    def _setup(self, dim: int) -> None:
        self.dim = dim
        self.strategy = make_strategy(self.config.strategy, self.H, self.config.k, dim)
        self.telemetry = Telemetry(dim, self.config.telemetry_steps, self.config.telemetry_chunks)
        self.telemetry.meta.update(strategy=self.config.strategy, dt=self.config.dt, H=self.H,
                                   k=self.config.k, policy=type(self.policy).__name__)

    # -- control from any thread ---------------------------------------------------------------
    def pause(self) -> None:
        with self._lock:
            self._paused = True

    def resume(self) -> None:
        """Continue from the present state: no stale actions, the next chunk has no prefix. Also
        clears a delay or policy error (the estimate restarts)."""
        with self._lock:
            self._paused = False
            self._replan = True

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
        self.executor.close()

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def stopped(self) -> bool:
        return self._stopped

    def delay_estimate(self) -> int:
        """d: ceil(max of the last b measured latencies / dt), in steps."""
        if not self._latencies:
            return self.config.initial_delay_steps
        return int(math.ceil(max(self._latencies) / self.config.dt - 1e-9))

    # -- the control thread ------------------------------------------------------------------
    def step(self, state: np.ndarray, t: float, observe: Callable[[int], Observation]) -> RuntimeStep:
        """One control tick. `observe(step)` builds the observation; it is called only when a
        chunk is requested. `t` is now on the clock the observations are stamped with."""
        state = np.asarray(state, dtype=np.float64)
        if self.strategy is None:
            self._setup(state.shape[-1])
        s = self.step_index
        self.step_index += 1
        with self._lock:
            paused, stopped, replan = self._paused, self._stopped, self._replan
            self._replan = False
        if stopped:
            return self._hold(s, t, state, Flag.STOPPED, "stopped")
        if replan:
            self.strategy.reset()
            self._in_flight.clear()  # their prefixes are stale: results are dropped on arrival
            self._latencies.clear()
            self.error = None
            self._last_chunk = -1
            self._ever_arrived = False
        flags = self._arrivals(s)
        if paused:
            return self._hold(s, t, state, flags | Flag.PAUSED, "paused")
        if self.error is not None:
            bit = Flag.DELAY_ERROR if isinstance(self.error, DelayTooLarge) else Flag.POLICY_ERROR
            return self._hold(s, t, state, flags | bit, str(self.error))

        d = self.delay_estimate()
        if not self._in_flight and self.strategy.wants_request(s, d):
            if d > self.strategy.max_delay():
                lat = max(self._latencies) * 1e3 if self._latencies else float("nan")
                self.error = DelayTooLarge(
                    f"inference takes {lat:.0f} ms = {d} steps at {1 / self.config.dt:.0f} Hz, "
                    f"but a chunk of H = {self.H} with k = {self.config.k} leaves room for at "
                    f"most {self.strategy.max_delay()} (d must be < H - k): use a faster policy "
                    f"or a remote GPU, a longer chunk, or a smaller k; the arms hold")
                return self._hold(s, t, state, flags | Flag.DELAY_ERROR, str(self.error))
            obs = observe(s)
            age = t - obs.t
            if age > self.config.max_obs_age_s:
                return self._hold(
                    s, t, state, flags | Flag.STALE_OBS,
                    f"observation is {age * 1e3:.0f} ms old (limit "
                    f"{self.config.max_obs_age_s * 1e3:.0f} ms): a camera or the state stream "
                    f"stalled; holding until it is fresh")
            self._request(s, d, obs)
            flags |= self._arrivals(s)  # a zero-delay result is usable at once
        action, cid = self.strategy.action(s)
        if action is None:
            why = Flag.STARVED if (self._ever_arrived and self.config.strategy != "sync") \
                else Flag.WAITING
            msg = "no planned action left while the next chunk is computed" \
                if why == Flag.STARVED else "waiting for a chunk"
            return self._hold(s, t, state, flags | why, msg)
        if cid != self._last_chunk and self._last_chunk >= 0:
            flags |= Flag.SWITCH
        self._last_chunk = cid
        self.telemetry.step(s, t, action, state, cid, flags)
        return RuntimeStep(s, action.copy(), cid, flags)

    def _hold(self, s: int, t: float, state: np.ndarray, flags: Flag, msg: str) -> RuntimeStep:
        self.telemetry.step(s, t, None, state, -1, flags)
        return RuntimeStep(s, None, -1, flags, msg)

    def _request(self, s: int, d: int, obs: Observation) -> None:
        req = self.strategy.request(s, d, max(d, self.config.min_prefix))
        cid = self._next_id
        self._next_id += 1
        rec = ChunkRecord(cid, s, d, 0 if req.prefix is None else len(req.prefix))
        self._in_flight[cid] = rec
        self._had_plan[cid] = self.strategy.remaining(s) > 0
        self.telemetry.chunk_requested(rec)
        self.executor.submit(Job(cid, s, obs, req, self.config.rtc_beta))

    def _arrivals(self, s: int) -> Flag:
        flags = Flag.NONE
        for res in self.executor.poll(s):
            rec = self._in_flight.pop(res.job.id, None)
            if rec is None:
                continue  # requested before a resume: stale
            if res.error:
                self.error = RuntimeError(f"the policy failed: {res.error}; the arms hold "
                                          f"(resume to try again)")
                continue
            self._latencies.append(res.latency_s)
            # late: the robot ran past the d planned steps the request counted on (a first
            # chunk, requested with nothing planned, cannot be late)
            late = (self.config.strategy != "sync" and self._had_plan.pop(rec.id, False)
                    and s - rec.request_step > rec.d)
            if late:
                flags |= Flag.LATE
            self.telemetry.chunk_arrived(rec.id, res.actions, s, res.latency_s, late)
            if self.strategy.arrive(rec.id, rec.request_step, res.actions, s):
                self._ever_arrived = True
        return flags

    def close(self) -> None:
        self.stop()


__all__ = ["ChunkRuntime", "RuntimeConfig", "RuntimeStep", "DelayTooLarge", "SteppedExecutor",
           "ThreadedExecutor", "Result"]
