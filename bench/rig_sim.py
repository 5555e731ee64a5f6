"""Sim real-time factor: the simulated rig with two cameras at 240x320 on 2 CPU cores.

The figure is the sim's capacity: sim seconds per wall second when the rig is stepped as fast as it
goes (stepping mode, one thread), with physics at the control rate (10 physics steps per 20 ms),
the scripted operator's IK and teleop mapping every step, and both cameras rendered at their fps.
Real-time mode renders in a separate worker process beside the physics thread, so >= 1.0 here
means the paced rig keeps up; the paced run's own RTF, missed ticks and camera rates are in the
detail.
"""

from __future__ import annotations

import dataclasses
import os
import time

from bench import Figure

ANCHOR = "gym-aloha renders three 480x640 cameras per step (about 5 steps/s on 2 CPU cores)"
CAMERAS = ("top", "left_wrist")


def _config(realtime: bool):
    from drivers.config import SimConfig, load_rig_config

    cfg = load_rig_config("sim")
    cams = tuple(
        dataclasses.replace(c, width=320, height=240) for c in cfg.cameras if c.name in CAMERAS
    )
    sim = cfg.sim or SimConfig()
    return cfg.with_(cameras=cams, sim=dataclasses.replace(sim, realtime=realtime))


def _two_cores() -> set[int] | None:
    """Restrict this process to 2 CPU cores (where the OS allows); returns the old set."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, sorted(old)[:2])
    return old


def sim_rtf(quick: bool) -> list[Figure]:
    from drivers.sim.rig import SimRig

    old = _two_cores()
    try:
        sim_seconds = 2.0 if quick else 8.0
        rig = SimRig(_config(realtime=False))
        with rig:
            steps = int(round(sim_seconds * rig.config.control_hz))
            t0 = time.perf_counter()
            for _ in range(steps):
                state = rig.read()
                rig.command(state.leader)
                rig.step()
            wall = time.perf_counter() - t0
            frames = {n: c.latest().seq for n, c in rig.cameras.items()}
        rtf = sim_seconds / wall

        paced_seconds = 2.0 if quick else 5.0
        rig = SimRig(_config(realtime=True))
        with rig:
            time.sleep(0.3)  # renderers created, first frames out
            rig.reset()
            t_end = time.perf_counter() + paced_seconds
            while time.perf_counter() < t_end:
                state = rig.read()
                rig.command(state.leader)
                time.sleep(0.005)
            paced = rig.stats()
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    finally:
        if old is not None:
            os.sched_setaffinity(0, old)
    return [
        Figure(
            bench="rig",
            name="sim_rtf",
            value=round(rtf, 3),
            unit="sim s / wall s",
            goal=">= 1.0 with two 240x320 cameras on 2 cores",
            anchor=ANCHOR,
            met=rtf >= 1.0,
            detail={
                "task": rig.task.name,
                "sim_seconds": sim_seconds,
                "wall_seconds": round(wall, 3),
                "control_hz": rig.config.control_hz,
                "cameras": {c.name: f"{c.height}x{c.width}@{c.fps}" for c in rig.config.cameras},
                "frames_rendered": frames,
                "cores": cores,
                "gl": os.environ.get("MUJOCO_GL", ""),
                "paced_rtf": round(paced["rtf"], 3),
                "paced_seconds": paced_seconds,
                "paced_missed_ticks": paced["missed_ticks"],
                "paced_camera_fps": {k: round(v, 1) for k, v in paced["camera_fps"].items()},
            },
        )
    ]
