"""A chunk policy without a model: the sim's scripted operator planning ahead, for runtime tests,
benchmarks and `main.py run --policy scripted`.

Each chunk is H leader commands planned by drivers.sim.chunk_planner from the sim's state at the
observation (which `capture()` adds to the observation: `obs.extra["plan"]`). A clean prefix is
honoured as a clean-prefix-trained model does: its d actions are the chunk's first rows, and the
plan continues from the prefix's last action, the difference between the two fading out over
`blend` steps on a cosine. An artificial latency (seconds, slept in the inference worker) stands
in for a model's inference time in real-time runs; stepping runs inject it in control steps with
xr0.runtime.executor.SteppedExecutor.
"""

from __future__ import annotations

import time

import numpy as np

from drivers.sim.chunk_planner import ChunkPlanner
from xr0.runtime import Observation


class ScriptedChunkPolicy:
    supports_prefix = True

    def __init__(self, rig, chunk_length: int = 50, latency_s: float = 0.0, blend: int = 10):
        if getattr(rig.config, "kind", "") != "sim":
            raise ValueError("the scripted policy plans with the sim's scripted operator: run it "
                             "on the sim rig (--rig sim), or give a checkpoint for hardware")
        self.planner = ChunkPlanner(rig)
        self.chunk_length = int(chunk_length)
        self.latency_s = float(latency_s)
        self.blend = max(int(blend), 1)

    def capture(self) -> dict:
        """The sim state this observation's chunk is planned from (for Observation.extra)."""
        return {"plan": self.planner.capture()}

    def infer(self, obs: Observation, prefix: np.ndarray | None) -> np.ndarray:
        if "plan" not in obs.extra:
            raise ValueError("the scripted policy needs the sim state in the observation: build "
                             "the AutonomySource with extra=policy.capture")
        t0 = time.monotonic()
        out = self.planner.plan(obs.extra["plan"], self.chunk_length)
        if prefix is not None and len(prefix):
            d = len(prefix)
            resid = prefix[-1] - out[d - 1]
            out[:d] = prefix
            u = np.minimum((np.arange(d, self.chunk_length) - d + 1) / self.blend, 1.0)
            out[d:] += resid[None, :] * (0.5 * (1.0 + np.cos(np.pi * u)))[:, None]
        left = self.latency_s - (time.monotonic() - t0)
        if left > 0:
            time.sleep(left)
        return out
