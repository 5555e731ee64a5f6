"""Synthetic RealSense recordings, written by pyrealsense2 itself.

A `rs.software_device` shaped like a D400 camera (a "Stereo Module" with a z16 depth stream and an
"RGB Camera" with an rgb8 colour stream, the extrinsics between them, a depth-units option and the
camera info a real device reports) is recorded with `rs.recorder` to a `.db3` (or `.bag`) file.
A real `rs.pipeline` plays that file back with `rs.config.enable_device_from_file`, so the driver
under test runs the SDK's own playback, syncer and rs.align code.

The content is deterministic and encodes the frame index, so a reader can check order, gaps and
duplicates, and image layout:

    colour[y, x] = (index & 0xFF, index >> 8 & 0xFF, (x + 3*y) & 0xFF)
    depth[y, x]  = 400 + 20 * block(x // 8, y // 8) + index   millimetres, constant per 8x8 block

    python -m drivers.realsense.synthetic out.db3 --width 64 --height 48 --fps 30 --frames 20
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyrealsense2 as rs

DEPTH_BLOCK = 8  # depth pixels per side of a constant-depth block
DEPTH_BASE_MM = 400
DEPTH_STEP_MM = 20


@dataclass(frozen=True)
class SyntheticSpec:
    """What to record. Depth defaults to the colour resolution; a different depth size exercises
    rs.align's resampling (the two streams share a field of view and an identity extrinsic)."""

    width: int = 64
    height: int = 48
    fps: int = 30
    frames: int = 10
    depth: bool = True
    depth_width: int | None = None
    depth_height: int | None = None
    depth_units_m: float = 0.001  # metres per depth unit, as a D400's depth_units option
    serial: str = "000000000001"
    name: str = "Intel RealSense D435 (synthetic)"
    firmware: str = "5.16.0.1"
    usb_type: str = "3.2"
    first_index: int = 0  # content index of the first frame

    @property
    def depth_size(self) -> tuple[int, int]:
        return (self.depth_width or self.width, self.depth_height or self.height)


def color_pattern(index: int, width: int, height: int) -> np.ndarray:
    """(height, width, 3) uint8 RGB frame that encodes `index` (0..65535)."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = index & 0xFF
    img[..., 1] = (index >> 8) & 0xFF
    img[..., 2] = (x + 3 * y) & 0xFF
    return img


def decode_index(color: np.ndarray) -> int:
    """The frame index encoded by color_pattern (median over the image, robust to edges)."""
    low = int(np.median(color[..., 0]))
    high = int(np.median(color[..., 1]))
    return low | (high << 8)


def depth_pattern(index: int, width: int, height: int) -> np.ndarray:
    """(height, width) uint16 millimetres: constant over DEPTH_BLOCK-sized blocks, +1 mm per frame."""
    y, x = np.mgrid[0:height, 0:width]
    blocks_x = -(-width // DEPTH_BLOCK)
    block = (x // DEPTH_BLOCK) + (y // DEPTH_BLOCK) * blocks_x
    return (DEPTH_BASE_MM + DEPTH_STEP_MM * block + index).astype(np.uint16)


def _intrinsics(width: int, height: int) -> rs.intrinsics:
    """Pinhole intrinsics with a ~64 degree horizontal field of view, the same for any size."""
    intr = rs.intrinsics()
    intr.width, intr.height = width, height
    intr.fx = intr.fy = 0.8 * width
    intr.ppx, intr.ppy = width / 2.0, height / 2.0
    intr.model = rs.distortion.none
    intr.coeffs = [0.0] * 5
    return intr


def _video_stream(kind, fmt, uid: int, width: int, height: int, fps: int, bpp: int):
    vs = rs.video_stream()
    vs.type, vs.index, vs.uid = kind, 0, uid
    vs.width, vs.height, vs.fps = width, height, fps
    vs.bpp, vs.fmt = bpp, fmt
    vs.intrinsics = _intrinsics(width, height)
    return vs


def _push(sensor, profile, pixels: np.ndarray, bpp: int, index: int, timestamp_ms: float,
          depth_units: float | None = None) -> None:
    frame = rs.software_video_frame()
    frame.pixels = np.ascontiguousarray(pixels)
    frame.bpp = bpp
    frame.stride = pixels.shape[1] * bpp
    frame.timestamp = timestamp_ms
    frame.domain = rs.timestamp_domain.hardware_clock
    frame.frame_number = index
    frame.profile = profile
    if depth_units is not None:
        frame.depth_units = depth_units
    sensor.on_video_frame(frame)


def write_recording(path: str | Path, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Record `spec.frames` synthetic frames to `path` (.db3 or .bag) and return the path."""
    path = Path(path)
    if path.suffix not in (".db3", ".bag"):
        raise ValueError(f"recording {path} must end in .db3 (ROS 2) or .bag (ROS 1)")
    if spec.frames < 1 or spec.fps < 1 or spec.width < 1 or spec.height < 1:
        raise ValueError(f"synthetic recording needs positive size, fps and frames: {spec}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()

    device = rs.software_device()
    device.register_info(rs.camera_info.name, spec.name)
    device.register_info(rs.camera_info.serial_number, spec.serial)
    device.register_info(rs.camera_info.firmware_version, spec.firmware)
    device.register_info(rs.camera_info.usb_type_descriptor, spec.usb_type)
    device.register_info(rs.camera_info.product_line, "D400")

    color_sensor = device.add_sensor("RGB Camera")
    color_profile = color_sensor.add_video_stream(
        _video_stream(rs.stream.color, rs.format.rgb8, 1, spec.width, spec.height, spec.fps, 3)
    ).as_video_stream_profile()
    sensors = [(color_sensor, color_profile)]

    depth_sensor = depth_profile = None
    if spec.depth:
        dw, dh = spec.depth_size
        depth_sensor = device.add_sensor("Stereo Module")
        depth_profile = depth_sensor.add_video_stream(
            _video_stream(rs.stream.depth, rs.format.z16, 0, dw, dh, spec.fps, 2)
        ).as_video_stream_profile()
        depth_sensor.add_read_only_option(rs.option.depth_units, spec.depth_units_m)
        identity = rs.extrinsics()
        identity.rotation = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        identity.translation = [0.0, 0.0, 0.0]
        depth_profile.register_extrinsics_to(color_profile, identity)
        sensors.append((depth_sensor, depth_profile))

    recorder = rs.recorder(str(path), device)
    for sensor, profile in sensors:
        sensor.open(profile)
        sensor.start(lambda _frame: None)
    # The recorder stamps each frame with the wall-clock time it arrives, and playback follows
    # those stamps, so frames are pushed at the stream's rate: the file then plays back like a
    # camera rather than dumping every frame in the first millisecond.
    t0 = time.monotonic()
    try:
        for k in range(spec.frames):
            index = spec.first_index + k
            t_ms = k * 1000.0 / spec.fps
            delay = t0 + t_ms / 1000.0 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if depth_sensor is not None:
                dw, dh = spec.depth_size
                mm = depth_pattern(index, dw, dh).astype(np.float64)
                raw = np.round(mm * 0.001 / spec.depth_units_m).astype(np.uint16)
                _push(depth_sensor, depth_profile, raw, 2, index, t_ms, spec.depth_units_m)
            _push(color_sensor, color_profile, color_pattern(index, spec.width, spec.height), 3,
                  index, t_ms)
    finally:
        for sensor, _ in sensors:
            sensor.stop()
            sensor.close()
        recorder.pause()
        del recorder  # closes the file
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m drivers.realsense.synthetic",
        description="Write a synthetic RealSense recording (.db3 or .bag) that the camera driver "
        "plays back with `playback = \"FILE\"` in a rig config's [[cameras]] table.",
    )
    p.add_argument("output", help="file to write, ending in .db3 or .bag")
    p.add_argument("--width", type=int, default=SyntheticSpec.width)
    p.add_argument("--height", type=int, default=SyntheticSpec.height)
    p.add_argument("--fps", type=int, default=SyntheticSpec.fps)
    p.add_argument("--frames", type=int, default=SyntheticSpec.frames)
    p.add_argument("--no-depth", action="store_true", help="colour only")
    p.add_argument("--serial", default=SyntheticSpec.serial)
    args = p.parse_args(argv)
    spec = SyntheticSpec(width=args.width, height=args.height, fps=args.fps, frames=args.frames,
                         depth=not args.no_depth, serial=args.serial)
    out = write_recording(args.output, spec)
    print(f"wrote {spec.frames} frames of {spec.width}x{spec.height} @ {spec.fps} fps "
          f"({'colour + depth' if spec.depth else 'colour'}, serial {spec.serial}) to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
