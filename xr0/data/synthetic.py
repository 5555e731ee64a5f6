"""Synthetic episodes written through the episode store's own writers, for tests and benchmarks.

Each frame carries its frame index and its camera number in pixels, as black/white vertical bands
(bit b of the index is band b of the top half, the camera number is in the bottom strip), wide
enough to read back after lossy compression and after resizing; the rest is a moving texture with
sensor-like noise so the encoder sees camera-like content. `read_code` decodes an image of any size.

Timing: steps at `control_hz` from t0; camera c's frames at its fps starting `first_frame_s` later
(so the first steps precede every frame) with a small per-frame jitter, and `drop_every` removes
every n-th frame (a camera hiccup, visible as a gap in the frame times).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from store import EpisodeStore, EpisodeInfo
from store.video import VideoWriter

RIG_JOINT_NAMES = tuple(f"{side}_{j}" for side in ("left", "right") for j in (
    "waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper"))
INDEX_BITS = 10
CAMERA_BITS = 3


def frame_image(i: int, camera: int, width: int, height: int,
                rng: np.random.Generator | None = None) -> np.ndarray:
    """An HxWx3 uint8 frame showing index i and camera number `camera` in bands."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    tex = 128 + 60 * np.sin((xx + 3 * i) / 23.0 + camera) * np.cos(yy / 31.0)
    img = np.stack([tex, np.roll(tex, width // 3, 1), np.roll(tex, height // 3, 0)], -1)
    if rng is not None:
        img = img + rng.integers(0, 6, size=img.shape)
    img = img.clip(0, 255).astype(np.uint8)
    _bands(img[: height // 2], i, INDEX_BITS)
    _bands(img[height - height // 4:], camera, CAMERA_BITS)
    return img


def _bands(region: np.ndarray, value: int, bits: int) -> None:
    w = region.shape[1] // bits
    for b in range(bits):
        region[:, b * w:(b + 1) * w] = 255 if (value >> b) & 1 else 0


def _read_bands(region: np.ndarray, bits: int) -> int:
    h, width = region.shape[:2]
    w = width / bits
    value = 0
    for b in range(bits):
        x0, x1 = int(b * w + w / 3), int(b * w + 2 * w / 3)
        cell = region[h // 4: h - h // 4 or 1, x0:max(x1, x0 + 1)]
        if cell.mean() > 127:
            value |= 1 << b
    return value


def read_code(img: np.ndarray) -> tuple[int, int]:
    """(frame index, camera number) of a frame made by `frame_image`, at any size."""
    h = img.shape[0]
    return (_read_bands(img[: h // 2], INDEX_BITS),
            _read_bands(img[h - h // 4:], CAMERA_BITS))


def step_vectors(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Smooth joint trajectories: state follows the action target one step late, plus noise."""
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, dim)
    freq = rng.uniform(0.2, 1.0, dim)
    tt = np.arange(n + 1)[:, None] / 50.0
    target = 0.8 * np.sin(2 * np.pi * freq * tt + phase)
    action = target[1:]
    state = target[:-1] + rng.normal(0, 0.01, size=(n, dim))
    grip = [i for i in range(dim) if i % 7 == 6]          # grippers 0..1
    action[:, grip] = (action[:, grip] + 0.8) / 1.6
    state[:, grip] = (state[:, grip] + 0.8) / 1.6
    return state, action


def write_episode(store: EpisodeStore, *, steps: int, cameras: dict[str, tuple[int, int, float]],
                  task: str = "put the cube in the bowl", quality: str = "high", seed: int = 0,
                  joint_names: Sequence[str] = RIG_JOINT_NAMES, control_hz: float = 50.0,
                  t0: float = 1000.0, first_frame_s: float = 0.05, jitter_s: float = 0.004,
                  drop_every: int = 0, state: np.ndarray | None = None,
                  action: np.ndarray | None = None, noise: bool = True) -> EpisodeInfo:
    """Record one complete episode: step columns plus a real video per camera."""
    dim = len(joint_names)
    if state is None or action is None:
        state, action = step_vectors(steps, dim, seed)
    rng = np.random.default_rng(seed + 1)
    w = store.begin_episode(task=task, rig="synthetic", control_hz=control_hz,
                            joint_names=joint_names, cameras=cameras)
    try:
        for s in range(steps):
            w.add_step(t0 + s / control_hz, state[s], action[s])
        duration = steps / control_hz
        for c, (name, (width, height, fps)) in enumerate(cameras.items()):
            n = int(duration * fps)
            with VideoWriter(w.camera_path(name), width, height, fps, quality=quality) as vw:
                for i in range(n):
                    if drop_every and i % drop_every == drop_every - 1:
                        continue
                    t = t0 + first_frame_s + i / fps + (jitter_s if i % 3 == 1 else 0.0)
                    vw.write(frame_image(vw.frames_written, c, width, height,
                                         rng if noise else None), t)
                    w.add_frame_time(name, t)
        return w.finish(success=True)
    except BaseException:
        w.abandon()
        raise
