"""What the runtime asks of a policy: an observation in, a chunk of H actions out.

A chunk's index 0 is the step at which its observation was taken (the request step): action i is
meant for step request + i. Actions are in the rig's units (radians, grippers 0..1), not
normalised; a policy that works in a normalised space converts on its side.

The clean prefix is the d actions the robot will execute from step `request` while the chunk is
being computed (d = the delay in steps). A policy post-trained for asynchronous execution (XR0's
clean-prefix training) conditions on it and returns it unchanged as its first d rows, so the new
chunk continues from where the robot will be when it arrives. `supports_prefix = False` says the
policy ignores it.

A flow-matching policy that was not post-trained for asynchronous execution can still join chunks
smoothly with inference-time Real-Time Chunking: it implements `infer_guided`, sampling with its
velocity field guided towards the previous chunk (xr0.runtime.rtc.guided_sample does the sampling
given the velocity field).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass
class Observation:
    """What the policy sees at one control step.

    step: the runtime's step index (the chunk's index 0); t: when the observation was taken,
    on the clock the runtime is stepped with (the oldest of its state and images); state: (D,);
    images: camera name -> HxWx3 uint8; extra: anything else a policy's observation builder adds
    (a simulator's oracle state, for a scripted policy)."""

    step: int
    t: float
    state: np.ndarray
    images: dict[str, np.ndarray] = field(default_factory=dict)
    instruction: str = ""
    extra: dict = field(default_factory=dict)


@runtime_checkable
class ChunkPolicy(Protocol):
    """The seam between the runtime and a policy (local model, remote server, scripted planner).

    chunk_length: H, the number of actions per chunk.
    supports_prefix: whether `infer` conditions on the clean prefix.
    infer(obs, prefix): prefix is None or (d, D) with d < H; returns (H, D) float actions whose
      index 0 is obs.step. Called from the inference worker thread, never the control thread.
    Optional: infer_guided(obs, prev_chunk (H, D), weights (H,), beta) -> (H, D) for the `rtc`
      strategy: prev_chunk holds the previous plan on the new chunk's steps (rows past its end
      repeat its last action and have weight 0).
    """

    chunk_length: int
    supports_prefix: bool

    def infer(self, obs: Observation, prefix: np.ndarray | None) -> np.ndarray: ...


def supports_guidance(policy) -> bool:
    return callable(getattr(policy, "infer_guided", None))
