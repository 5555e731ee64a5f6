"""The one clock of the workstation.

Every sample (joint reads, camera frames, commands, telemetry) is stamped with `now()`, a monotonic
clock in seconds (CLOCK_MONOTONIC through time.monotonic_ns). `Ticker` paces a loop against absolute
deadlines, so a loop at 50 Hz does not drift the way repeated `sleep(dt)` does.
"""

from __future__ import annotations

import time


def now() -> float:
    """Monotonic time in seconds; the only timestamp source for rig data."""
    return time.monotonic_ns() * 1e-9


class Ticker:
    """Deadline scheduler for a fixed-rate loop.

    `wait()` sleeps until the next absolute deadline t0 + k*period and returns the lateness (s) of
    the wake-up. If the loop overran by more than one period, the missed ticks are skipped (counted
    in `missed`) rather than bursting to catch up. The last stretch is spun so wake-ups land within
    tens of microseconds instead of the scheduler's ~0.1-1 ms sleep granularity.
    """

    SPIN_S = 0.0008

    def __init__(self, hz: float, spin_s: float | None = None):
        if hz <= 0:
            raise ValueError(f"control rate must be positive, got {hz} Hz")
        self.period = 1.0 / hz
        self.spin_s = self.SPIN_S if spin_s is None else spin_s
        self.t0 = now()
        self.k = 0
        self.missed = 0

    @property
    def next_deadline(self) -> float:
        return self.t0 + (self.k + 1) * self.period

    def wait(self) -> float:
        self.k += 1
        deadline = self.t0 + self.k * self.period
        t = now()
        if t - deadline > self.period:
            skip = int((t - deadline) / self.period)
            self.k += skip
            self.missed += skip
            deadline = self.t0 + self.k * self.period
        remaining = deadline - t
        if remaining > self.spin_s:
            time.sleep(remaining - self.spin_s)
        while True:
            t = now()
            if t >= deadline:
                return t - deadline
