"""The policy a server serves: an XR0 checkpoint behind the ChunkPolicy protocol, with what the
handshake announces (joint names, cameras, image size, model name) and a per-request noise seed,
so that a client can ask for exactly the chunk a local XR0Policy gives for the same seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xr0.runtime.policy import Observation


class ServedXR0:
    """XR0Policy served: infer(obs, prefix, seed=None), infer_guided(obs, prev, weights, beta,
    seed=None). An empty instruction falls back to `instruction`."""

    def __init__(self, policy, instruction: str = "", model_name: str = "xr0"):
        self.policy = policy
        self.instruction = instruction
        self.chunk_length = int(policy.chunk_length)
        self.supports_prefix = bool(policy.supports_prefix)
        layout = getattr(policy.space, "layout", None)
        self.joint_names = tuple(layout.joint_names) if layout is not None else None
        self.dim = int(policy.action_dim)
        self.cameras = tuple(policy.cameras or policy.cfg.view_labels)
        self.image_size = tuple(policy.image_size) if policy.image_size else None
        self.model_name = model_name

    def _instruction(self, obs: Observation) -> str:
        text = obs.instruction or self.instruction
        if not text:
            raise ValueError("no instruction: send the task with the observation, or start the "
                             "server with --instruction")
        return text

    def infer(self, obs: Observation, prefix: np.ndarray | None,
              seed: int | None = None) -> np.ndarray:
        return self.policy.infer(obs.images, obs.state, self._instruction(obs),
                                 prefix if self.supports_prefix else None, seed=seed)

    def infer_guided(self, obs: Observation, prev_chunk: np.ndarray, weights: np.ndarray,
                     beta: float, seed: int | None = None) -> np.ndarray:
        obs = Observation(obs.step, obs.t, obs.state, obs.images, self._instruction(obs))
        return self.policy.infer_guided(obs, prev_chunk, weights, beta, seed=seed)


def load_served_policy(checkpoint: str | Path, device: str = "cpu", instruction: str = "",
                       **kwargs) -> ServedXR0:
    """An XR0 checkpoint (the workstation's own or a release; kwargs go to
    XR0Policy.from_checkpoint) ready to serve."""
    from xr0.policy import XR0Policy

    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist: pass the folder a fine-tune "
                                f"wrote (runs/N/checkpoint) or a Xiaomi-Robotics-0 release folder")
    policy = XR0Policy.from_checkpoint(path, device=device, **kwargs)
    return ServedXR0(policy, instruction, model_name=f"xr0:{path.resolve().name}")
