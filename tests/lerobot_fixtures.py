"""A small real store for the LeRobot tests: steps at 50 Hz with clock jitter, two cameras at
30 fps with their own timestamps, frames that carry their own index in their pixels."""

from __future__ import annotations

import numpy as np

from store import EpisodeStore
from store.video import VideoWriter

JOINTS = tuple(f"{side}_{j}" for side in ("left", "right") for j in
               ("waist", "shoulder", "elbow", "forearm", "wrist_angle", "wrist_rotate", "gripper"))
CAMS = {"top": (96, 64, 30.0), "left_wrist": (64, 64, 30.0)}
TASKS = ("fold the towel", "pick up the cube")


def frame_image(cam: str, k: int, w: int, h: int) -> np.ndarray:
    """Smooth image whose brightness encodes the frame number (survives lossy video)."""
    y, x = np.mgrid[0:h, 0:w]
    base = (k * 7) % 200 + 20
    img = np.empty((h, w, 3), np.uint8)
    img[..., 0] = base
    img[..., 1] = (x * 255 // max(1, w - 1))
    img[..., 2] = (y * 255 // max(1, h - 1)) // 2 + (40 if cam == "top" else 100)
    return img


def make_store(root, episodes=((0, 1.2), (1, 0.9), (0, 1.0)), seed=0) -> EpisodeStore:
    """episodes: (task number, seconds) each; returns the open store."""
    rng = np.random.default_rng(seed)
    store = EpisodeStore.open(root)
    for n, (task, secs) in enumerate(episodes):
        t0 = 100.0 + 10 * n
        steps = int(secs * 50)
        t = t0 + np.arange(steps) / 50 + rng.uniform(0, 0.002, steps)
        w = store.begin_episode(task=TASKS[task], rig="sim", control_hz=50, joint_names=JOINTS,
                                cameras=CAMS, tags=["demo", f"n{n}"])
        for i, ti in enumerate(t):
            w.add_step(float(ti), np.sin(ti + np.arange(14)), np.cos(ti + np.arange(14)))
        for cam, (cw, ch, fps) in CAMS.items():
            # cameras start a little after the first step and run on their own clock
            ft = t0 + 0.011 + np.arange(int(secs * fps) - 1) / fps + rng.uniform(0, 0.003)
            with VideoWriter(w.camera_path(cam), cw, ch, fps, quality="high") as vw:
                for k, tk in enumerate(ft):
                    vw.write(frame_image(cam, k, cw, ch), float(tk))
                    w.add_frame_time(cam, float(tk))
        w.finish(success=(n % 2 == 0) if n < 2 else None)
    return store
