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
        self._cached: tuple[tuple[int, float], dict[str, float]] | None = None

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
        """count, mean, p50, p99, max (values multiplied by `scale`, e.g. 1e3 for ms). The GUI's
        views ask for it several times per refresh: the summary of a given sample count is
        computed once (one partial sort for both percentiles) and reused until a sample comes."""
        with self._lock:
            key = (self._n, scale)
            if self._cached is not None and self._cached[0] == key:
                return dict(self._cached[1])
        v = self.values() * scale
        if not len(v):
            out = {"count": 0, "mean": float("nan"), "p50": float("nan"),
                   "p99": float("nan"), "max": float("nan")}
        else:
            p50, p99 = np.percentile(v, (50, 99))
            out = {"count": int(key[0]), "mean": float(v.mean()), "p50": float(p50),
                   "p99": float(p99), "max": float(v.max())}
        with self._lock:
            if self._n == key[0]:
                self._cached = (key, out)
        return dict(out)

    def clear(self) -> None:
        with self._lock:
            self._n = 0
            self._cached = None
