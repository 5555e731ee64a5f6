"""Normalisation statistics of states and action chunks, and the normalisation itself.

What is computed, from a set of episodes (each a (N, D) state and a (N, D) action array):
- `state`: per-dim count, mean, std, min, max and quantiles q01, q10, q90, q99 over all state rows;
- `chunk_mean`, `chunk_std` (H, D): per chunk position k, over every unpadded entry at k, i.e.
  the chunk at step s has `action[s + k]` (delta mode: minus `state[s]` in the delta dims) for
  s = 0 .. N-1-k; padded positions past an episode's end are excluded. These are the per-timestep
  statistics XR0 checkpoints carry (`action_config.{robot}.{mean,std}`, T x 32);
- `action`: the same entries pooled over all positions (per-dim count, mean, std, min, max,
  quantiles), as openpi computes action statistics over whole chunks.

How, and how exact:
- means and stds: each episode's (and each position's) mean and sum of squared deviations are
  computed in float64 with numpy and merged with Chan et al.'s pairwise update, so the result
  equals a two-pass computation over the concatenated data up to float64 rounding. std is the
  population std (ddof = 0).
- quantiles: exact, numpy's default "linear" rule (Hyndman-Fan type 7) over the multiset of
  entries. State quantiles sort all state rows. For an absolute action dim the entry multiset is
  the action rows, row j of an episode counted min(j + 1, H) times (the chunks that contain it),
  so the rows are sorted once with those weights; a delta dim materialises its entries, one dim
  at a time (8 N H bytes: 12 MB for 50,000 steps at H = 30).

Normalisation modes:
- "mean_std": (x - mean) / max(std, std_floor); action chunks use the per-position mean/std;
- "quantile": 2 (x - q01) / max(q99 - q01, std_floor) - 1, so q01..q99 maps to -1..1 (openpi).
`std_floor` (default 1e-4, tiny next to radians and 0..1 grippers) keeps constant dims finite and
keeps their model-layout std above XR0's mask threshold of 1e-5.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from xr0.data.chunks import check_mode, position_entries
from xr0.data.layout import ActionLayout

STD_FLOOR = 1e-4
QUANTILES = {"q01": 0.01, "q10": 0.10, "q90": 0.90, "q99": 0.99}
NORM_MODES = ("mean_std", "quantile")
FORMAT_VERSION = 1


@dataclass
class DimStats:
    """Per-dimension statistics; every array has shape (D,)."""

    count: int
    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray
    q01: np.ndarray
    q10: np.ndarray
    q90: np.ndarray
    q99: np.ndarray

    def to_dict(self) -> dict:
        return {f.name: (getattr(self, f.name) if f.name == "count"
                         else getattr(self, f.name).tolist()) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> DimStats:
        return cls(count=int(d["count"]), **{f.name: np.asarray(d[f.name], dtype=np.float64)
                                             for f in fields(cls) if f.name != "count"})


class _Moments:
    """Count, mean and sum of squared deviations (M2) of rows, merged exactly (Chan et al.)."""

    def __init__(self, dim: int):
        self.n = 0
        self.mean = np.zeros(dim)
        self.m2 = np.zeros(dim)

    def add(self, x: np.ndarray) -> None:
        nb = len(x)
        if nb == 0:
            return
        mb = x.mean(axis=0)
        m2b = ((x - mb) ** 2).sum(axis=0)
        n = self.n + nb
        d = mb - self.mean
        self.mean = self.mean + d * (nb / n)
        self.m2 = self.m2 + m2b + d * d * (self.n * nb / n)
        self.n = n

    def merge(self, other: _Moments) -> None:
        if other.n == 0:
            return
        n = self.n + other.n
        d = other.mean - self.mean
        self.mean = self.mean + d * (other.n / n)
        self.m2 = self.m2 + other.m2 + d * d * (self.n * other.n / n)
        self.n = n

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / self.n) if self.n else np.full_like(self.mean, np.nan)


def weighted_quantiles(values: np.ndarray, weights: np.ndarray | None,
                       qs: Sequence[float]) -> np.ndarray:
    """Quantiles of the multiset in which values[i] occurs weights[i] times (integer weights),
    by numpy's "linear" rule, without materialising the repeats."""
    values = np.asarray(values, dtype=np.float64)
    if weights is None:
        return np.quantile(values, qs)
    order = np.argsort(values, kind="stable")
    v = values[order]
    cw = np.cumsum(np.asarray(weights, dtype=np.int64)[order])
    n = int(cw[-1])
    out = []
    for q in qs:
        pos = q * (n - 1)
        lo = int(np.floor(pos))
        hi = min(lo + 1, n - 1)
        a = v[np.searchsorted(cw, lo, side="right")]
        b = v[np.searchsorted(cw, hi, side="right")]
        g = pos - lo
        # numpy's lerp, including its switch for g >= 0.5, so results match np.quantile
        out.append(b - (b - a) * (1 - g) if g >= 0.5 else a + (b - a) * g)
    return np.asarray(out)


def _dim_stats(m: _Moments, lo: np.ndarray, hi: np.ndarray, q: np.ndarray) -> DimStats:
    return DimStats(count=int(m.n), mean=m.mean.copy(), std=m.std, min=lo, max=hi,
                    **{name: q[i] for i, name in enumerate(QUANTILES)})


def compute_stats(states: Sequence[np.ndarray], actions: Sequence[np.ndarray],
                  joint_names: Sequence[str], *, chunk: int, action_mode: str = "absolute",
                  delta_mask: np.ndarray | None = None,
                  episode_ids: Sequence[int] = ()) -> NormStats:
    """Statistics of the episodes given as parallel lists of (N_e, D) state and action arrays.

    delta_mask: (D,) bool, which dims are deltas in delta mode; default: the arm joints of the
    layout built from `joint_names` (grippers stay absolute).
    """
    check_mode(action_mode)
    if chunk < 1:
        raise ValueError(f"chunk length must be at least 1, got {chunk}")
    if len(states) != len(actions) or not states:
        raise ValueError("give one state and one action array per episode, at least one episode")
    names = tuple(joint_names)
    dim = len(names)
    if action_mode == "absolute":
        delta_mask = np.zeros(dim, dtype=bool)
    elif delta_mask is None:
        delta_mask = ActionLayout.from_joint_names(names).delta_mask
    delta_mask = np.asarray(delta_mask, dtype=bool)
    if delta_mask.shape != (dim,):
        raise ValueError(f"delta_mask has shape {delta_mask.shape}, expected ({dim},)")
    states = [np.asarray(s, dtype=np.float64) for s in states]
    actions = [np.asarray(a, dtype=np.float64) for a in actions]
    for i, (s, a) in enumerate(zip(states, actions)):
        if s.shape != a.shape or s.ndim != 2 or s.shape[1] != dim or len(s) == 0:
            raise ValueError(f"episode #{i}: state {s.shape} and action {a.shape} must both be "
                             f"(N, {dim}) with N > 0")

    state_m = _Moments(dim)
    pos_m = [_Moments(dim) for _ in range(chunk)]
    a_lo, a_hi = np.full(dim, np.inf), np.full(dim, -np.inf)
    for s, a in zip(states, actions):
        state_m.add(s)
        for k in range(min(chunk, len(a))):
            x = position_entries(s, a, k, action_mode, delta_mask)
            pos_m[k].add(x)
            a_lo = np.minimum(a_lo, x.min(axis=0))
            a_hi = np.maximum(a_hi, x.max(axis=0))

    all_states = np.concatenate(states)
    state = _dim_stats(state_m, all_states.min(axis=0), all_states.max(axis=0),
                       np.quantile(all_states, list(QUANTILES.values()), axis=0))
    del all_states

    pooled = _Moments(dim)
    for m in pos_m:
        pooled.merge(m)
    qs = list(QUANTILES.values())
    aq = np.empty((len(qs), dim))
    weights = np.concatenate([np.minimum(np.arange(len(a)) + 1, chunk) for a in actions])
    for d in range(dim):
        if delta_mask[d]:
            vals = np.concatenate([position_entries(s[:, [d]], a[:, [d]], k, "delta",
                                                    np.ones(1, bool))[:, 0]
                                   for s, a in zip(states, actions)
                                   for k in range(min(chunk, len(a)))])
            aq[:, d] = np.quantile(vals, qs)
        else:
            aq[:, d] = weighted_quantiles(np.concatenate([a[:, d] for a in actions]),
                                          weights, qs)
    action = _dim_stats(pooled, a_lo, a_hi, aq)

    # positions no episode reaches (all episodes shorter than H) take the pooled statistics
    cmean = np.stack([m.mean if m.n else pooled.mean for m in pos_m])
    cstd = np.stack([m.std if m.n else pooled.std for m in pos_m])
    return NormStats(joint_names=names, action_mode=action_mode, delta_mask=delta_mask,
                     chunk=chunk, state=state, action=action, chunk_mean=cmean, chunk_std=cstd,
                     chunk_count=np.array([m.n for m in pos_m], dtype=np.int64),
                     episodes=tuple(int(e) for e in episode_ids))


@dataclass
class NormStats:
    """Statistics of one training set, saved next to a checkpoint (`save`/`load`, JSON)."""

    joint_names: tuple[str, ...]
    action_mode: str
    delta_mask: np.ndarray       # (D,) bool; all False in absolute mode
    chunk: int                   # H
    state: DimStats
    action: DimStats
    chunk_mean: np.ndarray       # (H, D)
    chunk_std: np.ndarray        # (H, D)
    chunk_count: np.ndarray      # (H,) entries at each position
    episodes: tuple[int, ...] = ()
    std_floor: float = STD_FLOOR
    extra: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return len(self.joint_names)

    @property
    def layout(self) -> ActionLayout:
        return ActionLayout.from_joint_names(self.joint_names)

    # -- normalisation ---------------------------------------------------------------------------

    def normalize_state(self, x, mode: str = "mean_std"):
        """(..., D) raw state -> normalised. numpy arrays or torch tensors."""
        shift, scale = self._affine(self.state, None, mode)
        return (x - _like(shift, x)) / _like(scale, x) - (1.0 if mode == "quantile" else 0.0)

    def unnormalize_state(self, y, mode: str = "mean_std"):
        shift, scale = self._affine(self.state, None, mode)
        return (y + (1.0 if mode == "quantile" else 0.0)) * _like(scale, y) + _like(shift, y)

    def normalize_actions(self, a, mode: str = "mean_std"):
        """(..., h, D) action chunk in this stats' action mode, h <= H -> normalised. In
        "mean_std" mode position k uses chunk_mean[k] / chunk_std[k]."""
        shift, scale = self._affine(self.action, self._positions(a), mode)
        return (a - _like(shift, a)) / _like(scale, a) - (1.0 if mode == "quantile" else 0.0)

    def unnormalize_actions(self, y, mode: str = "mean_std"):
        shift, scale = self._affine(self.action, self._positions(y), mode)
        return (y + (1.0 if mode == "quantile" else 0.0)) * _like(scale, y) + _like(shift, y)

    def _positions(self, a) -> int:
        shape = tuple(a.shape)
        if len(shape) < 2 or shape[-1] != self.dim or shape[-2] > self.chunk:
            raise ValueError(f"action chunk of shape {shape}: expected (..., h, {self.dim}) with "
                             f"h <= {self.chunk}, the chunk length these statistics were made for")
        return shape[-2]

    def _affine(self, s: DimStats, h: int | None, mode: str) -> tuple[np.ndarray, np.ndarray]:
        if mode == "mean_std":
            if h is None:
                return s.mean, np.maximum(s.std, self.std_floor)
            return self.chunk_mean[:h], np.maximum(self.chunk_std[:h], self.std_floor)
        if mode == "quantile":
            return s.q01, np.maximum(s.q99 - s.q01, self.std_floor) / 2.0
        raise ValueError(f"unknown normalisation {mode!r}: use one of {', '.join(NORM_MODES)}")

    # -- the model layout ------------------------------------------------------------------------

    def model_action_config(self) -> dict[str, np.ndarray]:
        """The action statistics in XR0's 32-d layout, as checkpoints carry them
        (`action_config.{robot_type}`): mean and std of shape (H, 32). Padding dims have mean 0
        and std 0, active dims std >= std_floor, so `std > 1e-5` gives the action mask and the
        chunk length. Also the (32,) state mean/std (XR0 feeds the state raw; for reference)."""
        layout = self.layout
        std = np.maximum(self.chunk_std, self.std_floor)
        return {
            "mean": layout.to_model(self.chunk_mean),
            "std": layout.to_model(std),
            "state_mean": layout.to_model(self.state.mean),
            "state_std": layout.to_model(np.maximum(self.state.std, self.std_floor)),
        }

    # -- saving ----------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "format": "xr0-norm-stats", "version": FORMAT_VERSION,
            "joint_names": list(self.joint_names), "action_mode": self.action_mode,
            "delta_mask": self.delta_mask.astype(bool).tolist(), "chunk": self.chunk,
            "state": self.state.to_dict(), "action": self.action.to_dict(),
            "chunk_mean": self.chunk_mean.tolist(), "chunk_std": self.chunk_std.tolist(),
            "chunk_count": self.chunk_count.tolist(), "episodes": list(self.episodes),
            "std_floor": self.std_floor, "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict) -> NormStats:
        if d.get("format") != "xr0-norm-stats":
            raise ValueError("not an XR0 normalisation statistics file (no 'format': "
                             "'xr0-norm-stats'); compute the statistics again from the episodes")
        if int(d.get("version", 0)) > FORMAT_VERSION:
            raise ValueError(f"normalisation statistics format {d['version']} is newer than this "
                             f"version reads ({FORMAT_VERSION}); update the workstation")
        return cls(joint_names=tuple(d["joint_names"]), action_mode=check_mode(d["action_mode"]),
                   delta_mask=np.asarray(d["delta_mask"], dtype=bool), chunk=int(d["chunk"]),
                   state=DimStats.from_dict(d["state"]), action=DimStats.from_dict(d["action"]),
                   chunk_mean=np.asarray(d["chunk_mean"], dtype=np.float64),
                   chunk_std=np.asarray(d["chunk_std"], dtype=np.float64),
                   chunk_count=np.asarray(d["chunk_count"], dtype=np.int64),
                   episodes=tuple(d.get("episodes", ())),
                   std_floor=float(d.get("std_floor", STD_FLOOR)), extra=d.get("extra", {}))

    def save(self, path: str | os.PathLike) -> Path:
        """Write JSON atomically (a temporary file renamed over the target)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> NormStats:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"no normalisation statistics at {path}: compute them from "
                                    f"the training episodes (xr0.data.compute_stats)") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}): the file is damaged; compute the "
                             f"statistics again from the training episodes") from e
        return cls.from_dict(d)


def _like(arr: np.ndarray, x):
    """The statistic as the same kind of array as x (torch tensor on x's device and dtype)."""
    if hasattr(x, "new_tensor"):
        return x.new_tensor(arr)
    return arr
