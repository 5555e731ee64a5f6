"""Control-loop period error at 50 Hz: RigSession's control thread (read -> teleop -> command on
absolute deadlines) with both follower arms and both leader arms on emulated Dynamixel buses at
1 Mbps wire time (each bus its own process, as each real bus is its own USB adapter) and two
RealSense cameras streaming 480x640 at 30 fps through pyrealsense2 (recordings played by a real
rs.pipeline). Period error = how late each tick woke up against its absolute deadline.
"""

from __future__ import annotations

import dataclasses
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench import Figure

BENCH = "rig"
GOAL_P99_MS = 1.0


def _session_period_error(config, seconds: float, settle: float) -> tuple[np.ndarray, dict]:
    from app.core.rig_session import RigSession

    session = RigSession(config)
    with session:
        session.engage()
        time.sleep(settle)  # buses warm, cameras streaming, ramp done
        session.period_error.clear()
        session.cycle_time.clear()
        steps0 = session.status().steps
        t0 = time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - t0
        st = session.status()
        errors = session.period_error.values()
    detail = {
        "seconds": round(elapsed, 1),
        "rate_hz": round((st.steps - steps0) / elapsed, 2),
        "missed_ticks": st.missed_ticks,
        "cycle_ms": {k: round(v, 3) for k, v in st.cycle_ms.items()},
        "priority": session.priority,
        "teleop": st.teleop,
        "camera_fps": {k: round(v, 1) for k, v in st.camera_fps.items()},
        "error": st.error,
    }
    return errors, detail


def loop_period_error(quick: bool) -> list[Figure]:
    from drivers.config import CameraConfig, load_rig_config
    from drivers.dynamixel.emulator import EmulatedRig
    from drivers.realsense.synthetic import SyntheticSpec, write_recording

    seconds = 5.0 if quick else 30.0
    settle = 1.0
    with tempfile.TemporaryDirectory() as tmp:
        # Recordings long enough to cover the whole measurement: a live camera streams without
        # end, while a recording that ends is reopened, and pipeline start/stop hold the GIL for
        # milliseconds. The recorder stamps frames as they are pushed, so writing takes real
        # time: both are written at once.
        frames = int((seconds + settle + 2.0) * 30)
        cams, writers = [], []
        for i, name in enumerate(("cam_left_wrist", "cam_right_wrist")):
            spec = SyntheticSpec(width=640, height=480, fps=30, frames=frames, depth=False,
                                 serial=f"00000000010{i}")
            path = Path(tmp) / f"{name}.db3"
            writers.append(threading.Thread(target=write_recording, args=(path, spec)))
            cams.append(CameraConfig(name=name, width=640, height=480, fps=30,
                                     playback=str(path)))
        for w in writers:
            w.start()
        for w in writers:
            w.join()
        with EmulatedRig(load_rig_config("aloha"), tmp, processes=True) as er:
            config = dataclasses.replace(er.config, cameras=tuple(cams))
            errors, detail = _session_period_error(config, seconds, settle)
    ms = errors * 1e3
    p50, p99 = (float(np.percentile(ms, q)) for q in (50, 99))
    detail.update({"ticks": int(len(ms)), "max_ms": round(float(ms.max()), 3),
                   "arms": "2 leaders + 2 followers, 7 servos each, one bus per arm",
                   "cameras": "2 x 480x640 rgb8 @ 30 fps"})
    anchor = "ALOHA rejects episodes whose mean rate falls below 42 Hz"
    return [
        Figure(bench=BENCH, name="loop_period_error_p50", value=round(p50, 4), unit="ms",
               goal="", anchor=anchor, detail=detail),
        Figure(bench=BENCH, name="loop_period_error_p99", value=round(p99, 4), unit="ms",
               goal=f"<= {GOAL_P99_MS}", anchor=anchor, met=p99 <= GOAL_P99_MS, detail=detail),
    ]


def sim_loop_period_error(quick: bool) -> list[Figure]:
    """The same control loop on the app's default rig: the real-time MuJoCo sim with its three
    cameras at 240x320 / 25 fps rendering in the render worker, teleop engaged."""
    from drivers.config import load_rig_config

    seconds = 5.0 if quick else 20.0
    errors, detail = _session_period_error(load_rig_config("sim"), seconds, settle=1.0)
    ms = errors * 1e3
    detail.update({"ticks": int(len(ms)), "max_ms": round(float(ms.max()), 3),
                   "rig": "sim (transfer cube, scripted operator)",
                   "cameras": "top, left_wrist, right_wrist at 240x320 @ 25 fps"})
    p99 = float(np.percentile(ms, 99))
    return [Figure(bench=BENCH, name="sim_loop_period_error_p99", value=round(p99, 4), unit="ms",
                   goal=f"<= {GOAL_P99_MS}", anchor="ALOHA: 50 Hz control",
                   met=p99 <= GOAL_P99_MS, detail=detail)]
