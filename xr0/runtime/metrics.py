"""Smoothness of a commanded trajectory, from a run's step arrays.

boundary discontinuity: at each chunk switch, |a_switch - a_before| (L2 over the action) divided
by the median within-chunk step |a_t - a_{t-1}| of the run; 1 means a switch looks like any other
step. RMS jerk: sqrt(mean ||third difference of the command / dt^3||^2), held steps repeating the
last command (what the arms were told).
"""

from __future__ import annotations

import numpy as np

from xr0.runtime.telemetry import Flag


def held_filled(actions: np.ndarray) -> np.ndarray:
    """Held steps (NaN rows) replaced by the last command; leading holds dropped."""
    out = np.array(actions, dtype=np.float64)
    ok = np.isfinite(out).all(axis=1)
    if not ok.any():
        return out[:0]
    first = int(np.argmax(ok))
    out = out[first:]
    ok = ok[first:]
    for i in range(1, len(out)):
        if not ok[i]:
            out[i] = out[i - 1]
    return out


def forward_filled(actions: np.ndarray) -> np.ndarray:
    """Held steps (NaN rows) replaced by the last command, same length (leading holds stay)."""
    out = np.array(actions, dtype=np.float64)
    for i in range(1, len(out)):
        if not np.isfinite(out[i]).all():
            out[i] = out[i - 1]
    return out


def boundary_discontinuity(actions: np.ndarray, chunk: np.ndarray, flags: np.ndarray) -> dict:
    """{'mean', 'max', 'switches', 'median_step'} over the run's chunk switches. A switch after a
    hold is measured from the held command; where every step switches (temporal ensembling with
    a chunk per step) the median is over all steps."""
    a = np.asarray(actions, dtype=np.float64)
    step = np.linalg.norm(np.diff(a, axis=0), axis=1)  # step[i] = |a[i+1] - a[i]|
    chunk = np.asarray(chunk)
    both = np.isfinite(step) & (chunk[1:] == chunk[:-1]) & (chunk[1:] >= 0)
    if not both.any():
        both = np.isfinite(step)
    median = float(np.median(step[both])) if both.any() else float("nan")
    sw = np.flatnonzero((np.asarray(flags) & Flag.SWITCH) != 0)
    sw = sw[sw > 0]
    filled = np.linalg.norm(np.diff(forward_filled(a), axis=0), axis=1)
    jumps = filled[sw - 1]
    jumps = jumps[np.isfinite(jumps)]
    if not len(jumps) or not median > 0:
        return {"mean": float("nan"), "max": float("nan"), "switches": int(len(jumps)),
                "median_step": median}
    r = jumps / median
    return {"mean": float(r.mean()), "max": float(r.max()), "switches": int(len(r)),
            "median_step": median}


def rms_jerk(actions: np.ndarray, dt: float) -> float:
    a = held_filled(actions)
    if len(a) < 4:
        return float("nan")
    j = np.diff(a, n=3, axis=0) / dt**3
    return float(np.sqrt(np.mean(np.sum(j * j, axis=1))))
