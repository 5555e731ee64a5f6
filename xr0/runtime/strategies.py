"""How chunks become one command stream: the strategies compared on the same runs.

Every chunk is timestep-aligned: its index 0 is its request step r, so a chunk arriving at step a
is entered at index a - r and the actions the robot executed while it was being computed are
dropped.

    xr0        request when at most k unexecuted actions remain (or d, if d > k: the prefix must
               exist); the next d actions are the clean prefix; splice at arrival (XR0 deployment)
    sync       execute a chunk to its end, then hold while the next one is computed, and execute
               it from its index 0
    naive      as xr0 but without a prefix: switch to the new chunk on arrival
    ensemble   ACT temporal ensembling: request as often as the latency allows and average every
               chunk covering a step with weights w_i = exp(-m i), i = 0 for the oldest (m = 0.01)
    aggregate  LeRobot async: on arrival, the steps both chunks cover get 0.3 old + 0.7 new
    rtc        inference-time Real-Time Chunking: the policy samples guided towards the previous
               chunk under a soft mask (xr0.runtime.rtc), then splice as xr0
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xr0.runtime.rtc import soft_mask


@dataclass
class Request:
    """What a strategy wants sent to the policy at step r."""

    prefix: np.ndarray | None = None  # (d, D)
    prev_chunk: np.ndarray | None = None  # (H, D) for guided sampling
    weights: np.ndarray | None = None  # (H,)


class Strategy:
    name = ""
    uses_prefix = False
    guided = False

    def __init__(self, horizon: int, k: int, dim: int):
        self.H = horizon
        self.k = k
        self.dim = dim
        self.reset()

    # -- the plan ---------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the plan (after a pause, a stop, or an error)."""
        self.start = 0
        self.plan = np.zeros((0, self.dim))
        self.source = np.zeros(0, dtype=np.int64)  # chunk id of each plan row

    def remaining(self, s: int) -> int:
        """Unexecuted planned actions at step s (step s included)."""
        return max(self.start + len(self.plan) - s, 0)

    def action(self, s: int) -> tuple[np.ndarray | None, int]:
        i = s - self.start
        if 0 <= i < len(self.plan):
            return self.plan[i], int(self.source[i])
        return None, -1

    def planned(self, s: int, n: int) -> np.ndarray:
        """Up to n planned actions from step s."""
        i = max(s - self.start, 0)
        return self.plan[i : i + n]

    # -- requests and arrivals ------------------------------------------------------------------
    def max_delay(self) -> int:
        """The largest delay estimate (steps) the strategy can work with."""
        return self.H - self.k - 1

    def wants_request(self, s: int, d: int) -> bool:
        return self.remaining(s) <= max(self.k, d)

    def request(self, s: int, d: int, prefix_length: int) -> Request:
        return Request()

    def arrive(self, cid: int, r: int, chunk: np.ndarray, a: int) -> bool:
        """Enter chunk `cid` (requested at r) at step a; False if nothing of it is still ahead."""
        i = a - r
        if i >= len(chunk):
            return False
        self._splice(cid, chunk[i:], a)
        return True

    def _splice(self, cid: int, new: np.ndarray, a: int) -> None:
        self.start = a
        self.plan = np.array(new, dtype=np.float64)
        self.source = np.full(len(new), cid, dtype=np.int64)


class XR0(Strategy):
    name = "xr0"
    uses_prefix = True

    def request(self, s: int, d: int, prefix_length: int) -> Request:
        p = self.planned(s, prefix_length)
        return Request(prefix=p.copy() if len(p) else None)


class Naive(Strategy):
    name = "naive"


class Sync(Strategy):
    name = "sync"

    def max_delay(self) -> int:
        return 1 << 30  # holding is the strategy: any delay works, only slowly

    def wants_request(self, s: int, d: int) -> bool:
        return self.remaining(s) == 0

    def arrive(self, cid: int, r: int, chunk: np.ndarray, a: int) -> bool:
        self._splice(cid, chunk, a)  # the robot held: execute the chunk from its index 0
        return True


class Aggregate(Strategy):
    name = "aggregate"
    OLD_WEIGHT = 0.3

    def arrive(self, cid: int, r: int, chunk: np.ndarray, a: int) -> bool:
        i = a - r
        if i >= len(chunk):
            return False
        new = np.array(chunk[i:], dtype=np.float64)
        old = self.planned(a, len(new))
        n = len(old)
        new[:n] = self.OLD_WEIGHT * old + (1.0 - self.OLD_WEIGHT) * new[:n]
        self._splice(cid, new, a)
        return True


class RTC(Strategy):
    name = "rtc"
    guided = True

    def request(self, s: int, d: int, prefix_length: int) -> Request:
        old = self.planned(s, self.H)
        if len(old) == 0:
            return Request()
        prev = np.concatenate([old, np.repeat(old[-1:], self.H - len(old), axis=0)])
        return Request(prev_chunk=prev, weights=soft_mask(self.H, min(d, len(old)), len(old)))


class Ensemble(Strategy):
    name = "ensemble"
    M = 0.01

    def reset(self) -> None:
        super().reset()
        self.chunks: list[tuple[int, int, np.ndarray]] = []  # (id, start step, actions)

    def max_delay(self) -> int:
        return self.H - 1

    def remaining(self, s: int) -> int:
        return max([st + len(c) - s for _, st, c in self.chunks] + [0])

    def wants_request(self, s: int, d: int) -> bool:
        return True  # as often as the latency allows: whenever none is in flight

    def arrive(self, cid: int, r: int, chunk: np.ndarray, a: int) -> bool:
        self.chunks = [c for c in self.chunks if c[1] + len(c[2]) > a]
        if a - r >= len(chunk):
            return False
        self.chunks.append((cid, r, np.array(chunk, dtype=np.float64)))
        return True

    def action(self, s: int) -> tuple[np.ndarray | None, int]:
        acts, newest = [], -1
        for cid, st, c in self.chunks:  # oldest first
            if st <= s < st + len(c):
                acts.append(c[s - st])
                newest = cid
        if not acts:
            return None, -1
        w = np.exp(-self.M * np.arange(len(acts)))
        return (w[:, None] * np.array(acts)).sum(0) / w.sum(), newest

    def planned(self, s: int, n: int) -> np.ndarray:
        out = []
        for j in range(s, s + n):
            a, _ = self.action(j)
            if a is None:
                break
            out.append(a)
        return np.array(out).reshape(len(out), self.dim)


STRATEGIES: dict[str, type[Strategy]] = {
    c.name: c for c in (XR0, Sync, Naive, Ensemble, Aggregate, RTC)
}


def make_strategy(name: str, horizon: int, k: int, dim: int) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}: use one of {', '.join(STRATEGIES)}")
    if not 0 <= k < horizon:
        raise ValueError(f"k = {k} must be in 0..H-1 (H = {horizon}): it is how many unexecuted "
                         f"actions remain when the next chunk is requested")
    return STRATEGIES[name](horizon, k, dim)
