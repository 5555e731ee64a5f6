"""The whole hardware path at once: HardwareRig with four emulated Dynamixel buses and two
RealSense cameras playing recordings through pyrealsense2, driven by RigSession's teleop loop."""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from app.core.rig_session import RigSession
from drivers.config import CameraConfig, load_rig_config
from drivers.dynamixel import control_table as ct
from drivers.dynamixel.emulator import EmulatedRig
from drivers.realsense.synthetic import decode_index

pytest_plugins = ["conftest_realsense"]


def test_teleop_with_cameras_on_the_hardware_path(tmp_path, color_recording):
    path, spec = color_recording
    cams = tuple(CameraConfig(name=n, width=spec.width, height=spec.height, fps=spec.fps,
                              playback=str(path)) for n in ("cam_high", "cam_left_wrist"))
    with EmulatedRig(load_rig_config("aloha"), tmp_path) as er:
        cfg = dataclasses.replace(er.config, cameras=cams)
        session = RigSession(cfg)
        with session:
            frames = {n: c.wait_next(0, timeout_s=5.0) for n, c in session.rig.cameras.items()}
            for f in frames.values():
                assert f.color.shape == (spec.height, spec.width, 3)
                assert 0 <= decode_index(f.color) < spec.frames
            session.engage()
            deadline = time.monotonic() + 5.0
            while session.status().teleop != "engaged" and time.monotonic() < deadline:
                time.sleep(0.05)
            assert session.status().teleop == "engaged"
            # move the left leader's elbow by 1/16 turn: the left follower follows
            er.emulators["left_leader"].set_position(4, ct.CENTER_TICKS + 256)
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                cmd = session.latest().command
                if cmd is not None and abs(cmd[2] - np.pi / 8) < 1e-3:
                    break
                time.sleep(0.05)
            assert abs(session.latest().command[2] - np.pi / 8) < 1e-3
            later = {n: c.wait_next(frames[n].seq, timeout_s=5.0)
                     for n, c in session.rig.cameras.items()}
            assert all(later[n].seq > frames[n].seq for n in frames)
            # the rate is judged over a second of ticks, not the first few after start-up
            deadline = time.monotonic() + 5.0
            while session.status().steps < 60 and time.monotonic() < deadline:
                time.sleep(0.05)
            st = session.status()
            assert st.error == "" and st.teleop == "engaged" and 45 <= st.rate_hz <= 51
        # disconnected: every servo's torque is off
        assert not any(on for arm in er.torque().values() for on in arm.values())
