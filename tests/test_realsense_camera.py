"""The RealSense driver against pyrealsense2 itself: synthetic recordings written by the SDK's
software device + recorder, played back through a real rs.pipeline (and rs.align for depth)."""

from __future__ import annotations

import time

import numpy as np
import pyrealsense2 as rs
import pytest

from drivers import clock
from drivers.config import CameraConfig
from drivers.errors import ConfigError, ConnectionFailed
from drivers.realsense import RealSenseCamera, list_cameras
from drivers.realsense.synthetic import (
    DEPTH_BLOCK,
    SyntheticSpec,
    color_pattern,
    decode_index,
    depth_pattern,
    write_recording,
)

pytest_plugins = ["conftest_realsense"]

WAIT_S = 5.0  # generous bound for one frame on a loaded 2-core machine


def camera_for(path, spec: SyntheticSpec, **overrides) -> RealSenseCamera:
    cfg = dict(name="top", width=spec.width, height=spec.height, fps=spec.fps,
               depth=spec.depth, playback=str(path))
    cfg.update(overrides)
    return RealSenseCamera(CameraConfig(**cfg))


def one_pass(cam: RealSenseCamera, frames: int):
    """Frames of one pass through a recording: from the first delivered frame until the content
    index wraps around (end of recording -> reopen), or `frames` frames."""
    out = [cam.wait_next(-1, WAIT_S)]
    while len(out) < frames:
        f = cam.wait_next(out[-1].seq, WAIT_S)
        if decode_index(f.color) < decode_index(out[-1].color):
            break
        out.append(f)
    return out


def test_synthetic_pattern_encodes_index_and_layout():
    a, b = color_pattern(3, 16, 8), color_pattern(300, 16, 8)
    assert decode_index(a) == 3 and decode_index(b) == 300
    assert a[1, 2, 2] != a[2, 1, 2]  # rows and columns are distinguishable
    d0, d1 = depth_pattern(0, 16, 16), depth_pattern(1, 16, 16)
    assert (d1.astype(int) - d0 == 1).all()
    assert d0[0, 0] == d0[DEPTH_BLOCK - 1, DEPTH_BLOCK - 1] != d0[0, DEPTH_BLOCK]
    with pytest.raises(ValueError, match=r"\.db3"):
        write_recording("/tmp/not-a-recording.txt", SyntheticSpec())


def test_colour_playback_in_order_with_content_and_timestamps(color_recording):
    path, spec = color_recording
    with camera_for(path, spec) as cam:
        assert cam.state == "streaming"
        frames = one_pass(cam, spec.frames)
        fps = cam.measured_fps
    indices = [decode_index(f.color) for f in frames]
    assert indices == list(range(spec.frames)), "every recorded frame, once, in order"
    for f, k in zip(frames, indices):
        assert f.color.shape == (spec.height, spec.width, 3) and f.color.dtype == np.uint8
        np.testing.assert_array_equal(f.color, color_pattern(k, spec.width, spec.height))
        assert f.depth is None
        assert f.t_device == pytest.approx(k / spec.fps, abs=1e-6)
        assert f.camera == "top"
    seqs = [f.seq for f in frames]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert all(np.diff([f.t_host for f in frames]) > 0)
    assert all(np.diff([f.t_device for f in frames]) > 0)
    # Playback is paced by the recorded device clock, so the rate matches the recording's.
    assert fps == pytest.approx(spec.fps, rel=0.35)


def test_depth_is_aligned_to_colour_in_millimetres(depth_recording):
    path, spec = depth_recording
    dw, dh = spec.depth_size
    with camera_for(path, spec) as cam:
        frames = one_pass(cam, spec.frames)
    indices = [decode_index(f.color) for f in frames]
    # The SDK's syncer may hold back the first pair while it locks onto two streams; after
    # that every frame comes once, in order, to the end of the recording.
    assert indices == list(range(indices[0], spec.frames))
    assert len(indices) >= spec.frames // 2
    scale = spec.width // dw
    for f, k in zip(frames, indices):
        assert f.depth is not None and f.depth.dtype == np.uint16
        assert f.depth.shape == f.color.shape[:2] == (spec.height, spec.width)
        expected = depth_pattern(k, dw, dh)
        # Block centres, away from resampling edges: colour pixel (x, y) sees depth (x/s, y/s).
        for by in range(0, dh, DEPTH_BLOCK):
            for bx in range(0, dw, DEPTH_BLOCK):
                cy, cx = by + DEPTH_BLOCK // 2, bx + DEPTH_BLOCK // 2
                assert f.depth[cy * scale, cx * scale] == expected[cy, cx]


def test_latest_and_wait_next_are_bounded(color_recording):
    path, spec = color_recording
    cam = camera_for(path, spec)
    with pytest.raises(ConnectionFailed, match="no frame yet"):
        cam.latest()
    with pytest.raises(ConnectionFailed, match="start"):
        cam.wait_next(-1, 0.05)
    with cam:
        first = cam.wait_next(-1, WAIT_S)
        newest = cam.latest(max_age_s=WAIT_S)
        assert newest.seq >= first.seq
        # No frame will ever have this sequence number: the wait ends at its timeout.
        t0 = clock.now()
        with pytest.raises(ConnectionFailed, match="stalled"):
            cam.wait_next(newest.seq + 10_000, 0.2)
        assert 0.2 <= clock.now() - t0 < 0.2 + 1.0


def test_stall_is_reported_then_camera_reconnects(own_recording):
    path, spec = own_recording
    away = path.with_suffix(".gone")
    with camera_for(path, spec, fps=spec.fps) as cam:
        first = cam.wait_next(-1, WAIT_S)
        path.rename(away)  # the source vanishes (the open pipeline keeps reading to its end)
        deadline = clock.now() + WAIT_S
        while cam.state != "reconnecting" and clock.now() < deadline:
            time.sleep(0.01)
        assert cam.state == "reconnecting"
        stalled_at = cam.latest().seq
        time.sleep(0.3)
        with pytest.raises(ConnectionFailed) as err:
            cam.latest(max_age_s=0.2)
        msg = str(err.value)
        assert "stalled" in msg and "top" in msg and str(path) in msg and "not found" in msg
        assert cam.latest().seq == stalled_at, "nothing delivered while the source is gone"

        away.rename(path)  # plugged back in
        resumed = cam.wait_next(stalled_at, WAIT_S)
        assert resumed.seq > stalled_at > first.seq - 1
        assert cam.state == "streaming" and cam.reconnects >= 1
        assert cam.latest(max_age_s=WAIT_S).seq >= resumed.seq


def test_missing_recording_is_a_clear_error(tmp_path, color_recording):
    _, spec = color_recording
    cam = camera_for(tmp_path / "nowhere.db3", spec)
    with pytest.raises(ConnectionFailed, match=r"nowhere\.db3 not found.*synthetic"):
        cam.start()
    assert cam.state == "stopped"


def test_unsupported_mode_names_what_the_camera_offers(color_recording):
    path, spec = color_recording
    with pytest.raises(ConfigError) as err:
        camera_for(path, spec, width=640, height=480).start()
    msg = str(err.value)
    assert "640x480" in msg and f"colour rgb8 {spec.width}x{spec.height}@{spec.fps}" in msg
    with pytest.raises(ConfigError, match=f"at {spec.fps * 2} fps"):
        camera_for(path, spec, fps=spec.fps * 2).start()
    with pytest.raises(ConfigError, match="depth"):
        camera_for(path, spec, depth=True).start()


def test_serial_not_found_names_the_serial_and_the_fix():
    cam = RealSenseCamera(CameraConfig(name="wrist_left", serial="123456789012"),
                          context=rs.context())
    connected = [c.serial for c in list_cameras()]
    with pytest.raises(ConnectionFailed) as err:
        cam.start()
    msg = str(err.value)
    assert "123456789012" in msg and "wrist_left" in msg
    assert f"connected serials: {', '.join(connected) or 'none'}" in msg
    assert "main.py cameras" in msg and "USB 3" in msg and "udev" in msg


def test_open_by_serial_lists_and_survives_unplug(color_recording):
    """A recording loaded into an rs.context is a device with a serial, as in realsense-viewer:
    the driver finds it by serial, and reconnects when it leaves the context and comes back."""
    path, spec = color_recording
    ctx = rs.context()
    device = ctx.load_device(str(path))  # the context lists it while this reference lives
    cams = list_cameras(ctx)
    assert [(c.serial, c.name, c.firmware, c.usb_type) for c in cams] == [
        (spec.serial, spec.name, spec.firmware, spec.usb_type)]

    cam = RealSenseCamera(CameraConfig(name="top", serial=spec.serial, width=spec.width,
                                       height=spec.height, fps=spec.fps), context=ctx)
    with cam:
        first = cam.wait_next(-1, WAIT_S)
        np.testing.assert_array_equal(
            first.color, color_pattern(decode_index(first.color), spec.width, spec.height))
        ctx.unload_device(str(path))  # unplugged
        del device
        deadline = clock.now() + WAIT_S
        while not (cam.state == "reconnecting" and cam.last_error is not None
                   and spec.serial in str(cam.last_error)) and clock.now() < deadline:
            time.sleep(0.01)
        assert cam.state == "reconnecting"
        assert "not found" in str(cam.last_error)
        gone_at = cam.latest().seq
        device = ctx.load_device(str(path))  # plugged back in
        resumed = cam.wait_next(gone_at, WAIT_S)
        assert resumed.seq > gone_at and cam.state == "streaming"
