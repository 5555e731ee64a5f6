"""Rolling statistics for latencies and loop timing (per-read latency, period error, fps)."""

from __future__ import annotations

import threading

import numpy as np


class RollingStats:
    """The last `capacity` samples of a quantity; thread-safe append and summary."""

    def __init__(self, capacity: int = 2048):
        self._buf = np.zeros(capacity, dtype=np.float64)
        self._n = 0  # total samples ever added
        self._lock = threading.Lock()

    def add(self, value: float) -> None:
        with self._lock:
            self._buf[self._n % len(self._buf)] = value
            self._n += 1

    @property
    def count(self) -> int:
        return self._n

    def values(self) -> np.ndarray:
        with self._lock:
            n = min(self._n, len(self._buf))
            if self._n <= len(self._buf):
                return self._buf[:n].copy()
            i = self._n % len(self._buf)
            return np.concatenate([self._buf[i:], self._buf[:i]])

    def percentile(self, q: float) -> float:
        v = self.values()
        return float(np.percentile(v, q)) if len(v) else float("nan")

    def summary(self, scale: float = 1.0) -> dict[str, float]:
        """count, mean, p50, p99, max (values multiplied by `scale`, e.g. 1e3 for ms)."""
        v = self.values() * scale
        if not len(v):
            return {"count": 0, "mean": float("nan"), "p50": float("nan"),
                    "p99": float("nan"), "max": float("nan")}
        return {
            "count": int(self._n),
            "mean": float(v.mean()),
            "p50": float(np.percentile(v, 50)),
            "p99": float(np.percentile(v, 99)),
            "max": float(v.max()),
        }

    def clear(self) -> None:
        with self._lock:
            self._n = 0
