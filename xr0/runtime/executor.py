"""Where inference runs: never on the control thread.

ThreadedExecutor: one inference worker thread serves the requests in order; a result becomes
available to the control thread at the first tick after it is done. Latency is measured from the
request to the result being ready, so a remote policy's transport time counts as it should.

SteppedExecutor: deterministic runs (stepping-mode sims, tests) on step-indexed time. The policy
runs when the request is made and its result is released `delay_steps` control steps later; its
latency is delay_steps x dt, so the runtime sees exactly the delay that was injected.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from xr0.runtime.policy import Observation
from xr0.runtime.strategies import Request


@dataclass
class Job:
    id: int
    step: int  # the request step: the chunk's index 0
    obs: Observation
    request: Request
    beta: float = 5.0
    t_submit: float = 0.0


@dataclass
class Result:
    job: Job
    actions: np.ndarray | None
    latency_s: float
    error: str = ""


def run_policy(policy, job: Job) -> np.ndarray:
    """Call the policy for a job and check what comes back."""
    req = job.request
    if req.prev_chunk is not None:
        out = policy.infer_guided(job.obs, req.prev_chunk, req.weights, job.beta)
    else:
        out = policy.infer(job.obs, req.prefix if policy.supports_prefix else None)
    out = np.asarray(out, dtype=np.float64)
    h, dim = policy.chunk_length, job.obs.state.shape[-1]
    if out.shape != (h, dim):
        raise ValueError(f"the policy returned a chunk of shape {out.shape}, expected "
                         f"(H={h}, D={dim}): its chunk_length or action layout does not match "
                         f"the rig")
    if not np.isfinite(out).all():
        raise ValueError("the policy returned NaN/inf actions")
    return out


class ThreadedExecutor:
    def __init__(self, policy, clock: Callable[[], float] = time.monotonic):
        self.policy = policy
        self.clock = clock
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._done: list[Result] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="inference", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        job.t_submit = self.clock()
        self._jobs.put(job)

    def poll(self, step: int) -> list[Result]:
        with self._lock:
            out, self._done = self._done, []
        return out

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                actions, err = run_policy(self.policy, job), ""
            except Exception as e:  # noqa: BLE001 - reported to the runtime, which holds
                actions, err = None, f"{type(e).__name__}: {e}"
            res = Result(job, actions, self.clock() - job.t_submit, err)
            with self._lock:
                self._done.append(res)

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=0.5)  # a policy stuck in a call is left to die with the process


class SteppedExecutor:
    """delay_steps: an int, or a function of the request's id giving its delay (None: the policy
    never answers, for watchdog tests), or "measured": the chunk arrives ceil(wall time of the
    policy call / dt) steps later, so that a stepping-mode run of a real model sees the delay its
    inference time would cause in real time, while the world waits for it."""

    def __init__(self, policy, dt: float,
                 delay_steps: int | str | Callable[[int], int | None] = 0):
        self.policy = policy
        self.dt = dt
        self.measured = delay_steps == "measured"
        if self.measured:
            self.delay = None
        elif callable(delay_steps):
            self.delay = delay_steps
        else:
            self.delay = (lambda _i, d=int(delay_steps): d)
        self._pending: list[tuple[int, Result]] = []

    def submit(self, job: Job) -> None:
        delay = None if self.measured else self.delay(job.id)
        t0 = time.perf_counter()
        try:
            actions, err = run_policy(self.policy, job), ""
        except Exception as e:  # noqa: BLE001
            actions, err = None, f"{type(e).__name__}: {e}"
        if self.measured:
            delay = max(int(np.ceil((time.perf_counter() - t0) / self.dt - 1e-9)), 0)
        if delay is not None:
            self._pending.append((job.step + delay, Result(job, actions, delay * self.dt, err)))

    def poll(self, step: int) -> list[Result]:
        out = [r for s, r in self._pending if s <= step]
        self._pending = [(s, r) for s, r in self._pending if s > step]
        return out

    def close(self) -> None:
        self._pending = []
