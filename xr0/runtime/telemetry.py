"""Run telemetry: every chunk and every control step, in bounded ring buffers for live plots and
saved with the run so it can be reviewed later.

Per chunk: id, request step, arrival step (-1 if it never arrived), latency (ms, from request to
result, transport included), d (the delay estimate the request was made with), prefix length,
whether it arrived later than d steps, and the chunk itself (H, D).
Per step: step index, time, commanded action (NaN rows while holding), measured state, the id of
the chunk the action came from (-1 none), and Flag bits.

On disk a run is two files side by side:
    NAME.npz   arrays: step_index (N,), step_t (N,), step_action (N, D), step_state (N, D),
               step_chunk (N,), step_flags (N,), chunk_id (M,), chunk_request (M,),
               chunk_arrival (M,), chunk_latency_ms (M,), chunk_d (M,), chunk_prefix (M,),
               chunk_late (M,), chunk_actions (M, H, D)
    NAME.json  {"format": "xr0-runtime-run", "version": 1, "flags": {name: bit}, "meta": {...}}
               meta holds the strategy, dt, H, k and whatever the caller adds (task, seed, ...).
`load_run(path)` reads them back as a RunLog.
"""

from __future__ import annotations

import collections
import enum
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMAT = "xr0-runtime-run"
VERSION = 1


class Flag(enum.IntFlag):
    NONE = 0
    WAITING = 1  # no action yet: the first chunk (or a sync chunk) is being computed
    STARVED = 2  # the plan ran out while a chunk was in flight: holding the last command
    STALE_OBS = 4  # the observation was older than the limit: holding, no request made
    LATE = 8  # a chunk arrived later than the d steps its prefix covered
    PAUSED = 16
    DELAY_ERROR = 32  # the delay estimate leaves no room in a chunk: holding
    STOPPED = 64
    POLICY_ERROR = 128  # the policy raised: holding
    SWITCH = 256  # this step's action is the first from a newly spliced chunk

    @classmethod
    def names(cls, bits: int) -> list[str]:
        return [f.name.lower() for f in cls if f.value and bits & f.value]


HOLD_FLAGS = (Flag.WAITING | Flag.STARVED | Flag.STALE_OBS | Flag.PAUSED | Flag.DELAY_ERROR
              | Flag.STOPPED | Flag.POLICY_ERROR)


@dataclass
class ChunkRecord:
    id: int
    request_step: int
    d: int
    prefix_length: int
    actions: np.ndarray | None = None  # (H, D) once arrived
    arrival_step: int = -1
    latency_ms: float = float("nan")
    late: bool = False


@dataclass
class RunLog:
    """A saved run: the arrays of the module docstring plus meta."""

    arrays: dict[str, np.ndarray]
    meta: dict = field(default_factory=dict)

    def __getattr__(self, name: str) -> np.ndarray:
        try:
            return self.__dict__["arrays"][name]
        except KeyError:
            raise AttributeError(name) from None

    def switch_steps(self) -> np.ndarray:
        return self.arrays["step_index"][(self.arrays["step_flags"] & Flag.SWITCH) != 0]


class Telemetry:
    """Thread-safe: the control thread writes, a GUI takes snapshots."""

    def __init__(self, dim: int, max_steps: int = 100_000, max_chunks: int = 10_000):
        self.dim = dim
        self._lock = threading.Lock()
        self._steps: collections.deque = collections.deque(maxlen=max_steps)
        self._chunks: collections.OrderedDict[int, ChunkRecord] = collections.OrderedDict()
        self._max_chunks = max_chunks
        self.meta: dict = {}

    # -- writing (control thread) ---------------------------------------------------------------
    def chunk_requested(self, rec: ChunkRecord) -> None:
        with self._lock:
            self._chunks[rec.id] = rec
            while len(self._chunks) > self._max_chunks:
                self._chunks.popitem(last=False)

    def chunk_arrived(self, cid: int, actions: np.ndarray, step: int, latency_s: float,
                      late: bool) -> None:
        with self._lock:
            rec = self._chunks.get(cid)
            if rec is None:
                return
            rec.actions = np.array(actions, dtype=np.float64)
            rec.arrival_step = step
            rec.latency_ms = latency_s * 1e3
            rec.late = late

    def step(self, k: int, t: float, action: np.ndarray | None, state: np.ndarray, chunk: int,
             flags: int) -> None:
        a = np.full(self.dim, np.nan) if action is None else np.asarray(action, np.float64)
        with self._lock:
            self._steps.append((k, t, a.copy(), np.asarray(state, np.float64).copy(), chunk,
                                int(flags)))

    # -- reading (any thread) ---------------------------------------------------------------------
    def chunks(self) -> list[ChunkRecord]:
        with self._lock:
            return list(self._chunks.values())

    def snapshot(self, last: int | None = None) -> dict[str, np.ndarray]:
        """The last `last` steps (all held when None) as arrays, for a live plot."""
        with self._lock:
            rows = list(self._steps)[-last:] if last else list(self._steps)
        n = len(rows)
        return {
            "step_index": np.array([r[0] for r in rows], dtype=np.int64),
            "step_t": np.array([r[1] for r in rows], dtype=np.float64),
            "step_action": np.array([r[2] for r in rows]).reshape(n, self.dim),
            "step_state": np.array([r[3] for r in rows]).reshape(n, self.dim),
            "step_chunk": np.array([r[4] for r in rows], dtype=np.int64),
            "step_flags": np.array([r[5] for r in rows], dtype=np.int64),
        }

    def latencies_ms(self) -> np.ndarray:
        return np.array([c.latency_ms for c in self.chunks() if c.arrival_step >= 0])

    def arrays(self) -> dict[str, np.ndarray]:
        out = self.snapshot()
        out.update(chunk_arrays(self.chunks(), self.dim))
        return out

    def save(self, path: str | Path, **meta) -> Path:
        """Write NAME.npz and NAME.json (path with or without a suffix); returns the .npz path."""
        base = Path(path)
        if base.suffix in (".npz", ".json"):
            base = base.with_suffix("")
        base.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(base.with_suffix(".npz"), **self.arrays())
        doc = {"format": FORMAT, "version": VERSION,
               "flags": {f.name.lower(): int(f.value) for f in Flag if f.value},
               "meta": {**self.meta, **meta}}
        base.with_suffix(".json").write_text(json.dumps(doc, indent=1, default=str))
        return base.with_suffix(".npz")


def chunk_arrays(chunks: list[ChunkRecord], dim: int, horizon: int = 0) -> dict[str, np.ndarray]:
    """The per-chunk records as arrays (chunk_*; actions NaN-padded to the longest chunk, or to
    `horizon` when no chunk has arrived), as a saved run holds them."""
    h = max([len(c.actions) for c in chunks if c.actions is not None] or [horizon])
    acts = np.full((len(chunks), h, dim), np.nan)
    for i, c in enumerate(chunks):
        if c.actions is not None:
            acts[i, : len(c.actions)] = c.actions
    return {
        "chunk_id": np.array([c.id for c in chunks], dtype=np.int64),
        "chunk_request": np.array([c.request_step for c in chunks], dtype=np.int64),
        "chunk_arrival": np.array([c.arrival_step for c in chunks], dtype=np.int64),
        "chunk_latency_ms": np.array([c.latency_ms for c in chunks], dtype=np.float64),
        "chunk_d": np.array([c.d for c in chunks], dtype=np.int64),
        "chunk_prefix": np.array([c.prefix_length for c in chunks], dtype=np.int64),
        "chunk_late": np.array([c.late for c in chunks], dtype=bool),
        "chunk_actions": acts,
    }


def load_run(path: str | Path) -> RunLog:
    base = Path(path)
    if base.suffix in (".npz", ".json"):
        base = base.with_suffix("")
    npz, js = base.with_suffix(".npz"), base.with_suffix(".json")
    if not npz.exists() or not js.exists():
        raise FileNotFoundError(f"a saved run is {npz.name} + {js.name} side by side; "
                                f"{npz if not npz.exists() else js} is missing")
    doc = json.loads(js.read_text())
    if doc.get("format") != FORMAT:
        raise ValueError(f"{js} is not a runtime run log (format {doc.get('format')!r})")
    if doc.get("version", 0) > VERSION:
        raise ValueError(f"{js} was written by a newer version ({doc['version']}); update the "
                         f"workstation to read it")
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    return RunLog(arrays, doc.get("meta", {}))
