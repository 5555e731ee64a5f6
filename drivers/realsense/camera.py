"""RealSense camera on pyrealsense2: colour (rgb8) and optional depth aligned to colour.

    cam = RealSenseCamera(CameraConfig(name="top", serial="123456789012", depth=True))
    cam.start()                           # opens the device; raises with the fix if it cannot
    frame = cam.wait_next(-1, timeout_s=2.0)
    frame = cam.latest(max_age_s=0.1)     # raises ConnectionFailed if the stream stalled
    cam.state                             # "streaming", "reconnecting", ...
    cam.stop()

A background thread owns the rs.pipeline. When the stream stops (cable pulled, device reset, end of
a recording) the thread closes the pipeline and keeps trying to reopen the camera by serial number
(or the recording by path) with exponential back-off, then resumes; sequence numbers keep counting
up across reconnects. `config.playback` plays a recorded .db3/.bag through the same pipeline
(rs.config.enable_device_from_file) with the SDK's real-time mode off, so no frame is dropped
however slowly the host reads, and the driver paces frames by their recorded device timestamps.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyrealsense2 as rs

from drivers import clock
from drivers.config import CameraConfig
from drivers.errors import ConfigError, ConnectionFailed
from drivers.rig import Camera, Frame

CHECKS = (
    "check the USB 3 cable and port (a USB 2 link cannot carry colour + depth at full rate), "
    "install librealsense's udev rules (99-realsense-libusb.rules) so the camera is readable "
    "without root, and `sudo apt install libusb-1.0-0`"
)

STATES = ("stopped", "connecting", "streaming", "reconnecting")


@dataclass(frozen=True)
class CameraInfo:
    """One connected RealSense device, as `python main.py cameras` lists it."""

    serial: str
    name: str
    firmware: str
    usb_type: str
    product_line: str


def _info(dev, key) -> str:
    return dev.get_info(key) if dev.supports(key) else ""


def list_cameras(context: rs.context | None = None) -> list[CameraInfo]:
    """The RealSense devices the SDK sees now (an rs.context, a fresh one by default)."""
    ctx = context if context is not None else rs.context()
    out = []
    for dev in ctx.query_devices():
        out.append(CameraInfo(
            serial=_info(dev, rs.camera_info.serial_number),
            name=_info(dev, rs.camera_info.name),
            firmware=_info(dev, rs.camera_info.firmware_version),
            usb_type=_info(dev, rs.camera_info.usb_type_descriptor) or "unknown",
            product_line=_info(dev, rs.camera_info.product_line),
        ))
    return out


def _modes(device) -> list[str]:
    """'colour rgb8 640x480@30'-style list of what a device can stream, for error messages."""
    modes = set()
    for sensor in device.query_sensors():
        for p in sensor.get_stream_profiles():
            if p.stream_type() not in (rs.stream.color, rs.stream.depth) or not p.is_video_stream_profile():
                continue
            v = p.as_video_stream_profile()
            kind = "colour" if p.stream_type() == rs.stream.color else "depth"
            modes.add((kind, str(p.format()).split(".")[-1], v.width(), v.height(), p.fps()))
    return [f"{k} {f} {w}x{h}@{fps}" for k, f, w, h, fps in sorted(modes)]


class RealSenseCamera(Camera):
    """A RealSense camera (or a recording of one) delivering Frames from a capture thread.

    context: the rs.context to look devices up in (a fresh one by default).
    stall_timeout_s: no frame for this long means the stream has stopped and the camera is
        reopened (default: 10 frame periods, at least 1 s).
    backoff_s: (first, longest) wait between reopen attempts; doubles after each failure.
    """

    def __init__(self, config: CameraConfig, *, context: rs.context | None = None,
                 stall_timeout_s: float | None = None,
                 backoff_s: tuple[float, float] = (0.05, 2.0)):
        super().__init__(config)
        if not (config.serial or config.playback):
            raise ConfigError(
                f"camera '{config.name}' has neither a serial nor a playback file. Set serial "
                f"(see `python main.py cameras`) or playback = \"recording.db3\" in its "
                f"[[cameras]] table."
            )
        self._ctx = context
        self.stall_timeout_s = stall_timeout_s or max(1.0, 10.0 / config.fps)
        self.backoff_s = backoff_s
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._seq = -1
        self._arrivals: collections.deque[float] = collections.deque(maxlen=max(2, config.fps))
        self._state = "stopped"
        self._last_error: Exception | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pipeline: rs.pipeline | None = None
        self._playback = None  # rs.playback while a recording is open
        self._align = rs.align(rs.stream.color) if config.depth else None
        self.reconnects = 0
        self.dropped_incomplete = 0  # framesets without depth while depth was asked for

    # -- public ----------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """'stopped', 'connecting', 'streaming' or 'reconnecting'."""
        return self._state

    @property
    def last_error(self) -> Exception | None:
        """Why the latest open attempt failed (while reconnecting)."""
        return self._last_error

    @property
    def source(self) -> str:
        return (f"recording {self.config.playback}" if self.config.playback
                else f"serial {self.config.serial}")

    def start(self) -> None:
        """Open the camera (raising ConnectionFailed/ConfigError with the fix if it cannot) and
        start the capture thread."""
        if self._thread is not None:
            return
        self._state = "connecting"
        try:
            self._open()
        except Exception:
            self._state = "stopped"
            raise
        self._stop.clear()
        self._state = "streaming"
        self._thread = threading.Thread(target=self._run, name=f"realsense-{self.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        self._close()
        self._state = "stopped"
        with self._cond:
            self._cond.notify_all()

    def __enter__(self) -> "RealSenseCamera":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def latest(self, max_age_s: float | None = None) -> Frame:
        with self._cond:
            frame = self._latest
        if frame is None:
            raise ConnectionFailed(
                f"camera '{self.name}' ({self.source}) has delivered no frame yet (state "
                f"{self.state}{self._error_note()}). Start it and wait_next() for the first "
                f"frame; if it never comes, {CHECKS}."
            )
        if max_age_s is not None:
            age = clock.now() - frame.t_host
            if age > max_age_s:
                raise ConnectionFailed(self._stalled(age))
        return frame

    def wait_next(self, after_seq: int, timeout_s: float) -> Frame:
        deadline = clock.now() + timeout_s
        with self._cond:
            while self._latest is None or self._latest.seq <= after_seq:
                remaining = deadline - clock.now()
                if remaining <= 0 or self._state == "stopped":
                    break
                self._cond.wait(remaining)
            frame = self._latest
        if frame is None or frame.seq <= after_seq:
            if self._state == "stopped":
                raise ConnectionFailed(
                    f"camera '{self.name}' is stopped; call start() before waiting for frames"
                )
            age = None if frame is None else clock.now() - frame.t_host
            raise ConnectionFailed(self._stalled(age, waited=timeout_s))
        return frame

    @property
    def measured_fps(self) -> float:
        """Frames per second over the last second's worth of arrivals (0 before two frames)."""
        with self._cond:
            t = list(self._arrivals)
        if len(t) < 2 or t[-1] <= t[0]:
            return 0.0
        return (len(t) - 1) / (t[-1] - t[0])

    # -- messages --------------------------------------------------------------------------
    def _error_note(self) -> str:
        return f"; last error: {self._last_error}" if self._last_error else ""

    def _stalled(self, age: float | None, waited: float | None = None) -> str:
        what = (f"no new frame within {waited:.3g} s" if waited is not None
                else f"newest frame is {age:.3g} s old")
        if age is not None and waited is not None:
            what += f" (newest is {age:.3g} s old)"
        if self.config.playback:
            fix = (f"check that the recording {self.config.playback} exists and is readable; "
                   f"a recording also stops at its end")
        else:
            fix = CHECKS
        return (f"camera '{self.name}' ({self.source}) stalled: {what}, state {self.state}"
                f"{self._error_note()}. Check that it is plugged in: {fix}.")

    # -- opening ---------------------------------------------------------------------------
    def _context(self) -> rs.context:
        if self._ctx is None:
            self._ctx = rs.context()
        return self._ctx

    def _find_device(self):
        """The connected device with our serial, or ConnectionFailed naming what is connected."""
        devices = list(self._context().query_devices())
        serials = [_info(d, rs.camera_info.serial_number) for d in devices]
        for dev, serial in zip(devices, serials):
            if serial == self.config.serial:
                return dev
        connected = ", ".join(serials) if serials else "none"
        raise ConnectionFailed(
            f"RealSense camera '{self.name}' with serial {self.config.serial} not found; "
            f"connected serials: {connected}. Plug it in or fix `serial` in the rig config "
            f"(`python main.py cameras` lists connected cameras); {CHECKS}."
        )

    def _stream_config(self, source_cfg, modes) -> rs.config:
        """Enable colour (and depth) at the configured mode, or raise ConfigError listing the
        modes the device offers."""
        c = self.config
        cfg = source_cfg()
        cfg.enable_stream(rs.stream.color, c.width, c.height, rs.format.rgb8, c.fps)
        if not cfg.can_resolve(rs.pipeline_wrapper(rs.pipeline(self._context()))):
            raise ConfigError(
                f"camera '{c.name}' ({self.source}) cannot stream colour rgb8 "
                f"{c.width}x{c.height} at {c.fps} fps; it offers: {', '.join(modes())}. "
                f"Set width, height and fps in its [[cameras]] table to one of these."
            )
        if c.depth:
            # Depth at the colour resolution where the device has it, else any size at the fps:
            # rs.align resamples depth onto the colour image either way.
            for w, h in ((c.width, c.height), (0, 0)):
                trial = source_cfg()
                trial.enable_stream(rs.stream.color, c.width, c.height, rs.format.rgb8, c.fps)
                trial.enable_stream(rs.stream.depth, w, h, rs.format.z16, c.fps)
                if trial.can_resolve(rs.pipeline_wrapper(rs.pipeline(self._context()))):
                    return trial
            raise ConfigError(
                f"camera '{c.name}' ({self.source}) cannot stream depth z16 at {c.fps} fps "
                f"together with colour {c.width}x{c.height}; it offers: "
                f"{', '.join(modes())}. Pick a mode both streams share, or set "
                f"depth = false."
            )
        return cfg

    def _open(self) -> None:
        """Open the pipeline on the device or recording. Raises ConnectionFailed / ConfigError."""
        c = self.config
        if c.playback:
            recording = Path(c.playback).expanduser()
            if not recording.is_file():
                raise ConnectionFailed(
                    f"camera '{c.name}': recording {recording} not found. Fix `playback` in its "
                    f"[[cameras]] table, or write one with `python -m drivers.realsense.synthetic "
                    f"{recording}`."
                )
            modes = lambda: _modes(rs.context().load_device(str(recording)))  # noqa: E731
        else:
            device = self._find_device()
            modes = lambda: _modes(device)  # noqa: E731
            # A recording loaded into the context (rs.context.load_device, as realsense-viewer's
            # "load recorded sequence") stands in for the device with its serial.
            recording = Path(device.as_playback().file_name()) if device.is_playback() else None

        def source_cfg() -> rs.config:
            cfg = rs.config()
            if recording is not None:
                cfg.enable_device_from_file(str(recording), repeat_playback=False)
            else:
                cfg.enable_device(c.serial)
            return cfg

        cfg = self._stream_config(source_cfg, modes)
        pipeline = rs.pipeline(self._context())
        try:
            profile = pipeline.start(cfg)
        except RuntimeError as e:
            raise ConnectionFailed(
                f"camera '{c.name}' ({self.source}) found but could not start streaming: {e}. "
                f"Close other programs using it (realsense-viewer, another workstation) and "
                f"{CHECKS}."
            ) from e
        dev = profile.get_device()
        self._playback = None
        if dev.is_playback():
            self._playback = dev.as_playback()
            self._playback.set_real_time(False)
        self._pipeline = pipeline
        self._last_error = None

    def _close(self) -> None:
        pipeline, self._pipeline, self._playback = self._pipeline, None, None
        if pipeline is not None:
            try:
                pipeline.stop()
            except RuntimeError:
                pass  # already stopped, or the device is gone

    # -- capture thread --------------------------------------------------------------------
    def _run(self) -> None:
        delay = self.backoff_s[0]
        while not self._stop.is_set():
            if self._pipeline is None:
                try:
                    self._open()
                except (ConnectionFailed, ConfigError, RuntimeError) as e:
                    self._last_error = e
                    self._stop.wait(delay)
                    delay = min(delay * 2.0, self.backoff_s[1])
                    continue
                self.reconnects += 1
                self._state = "streaming"
                delay = self.backoff_s[0]
            try:
                self._stream()
            except RuntimeError as e:  # the SDK reports a removed device this way
                self._last_error = e
            self._close()
            if not self._stop.is_set():
                self._state = "reconnecting"
                with self._cond:
                    self._cond.notify_all()

    def _stream(self) -> None:
        """Deliver frames until the stream stops (stall, end of recording) or stop() is called."""
        pipeline = self._pipeline
        poll_ms = 100
        last_arrival = clock.now()
        pace_host = pace_dev = None  # playback pacing anchors
        last_dev = None
        while not self._stop.is_set():
            ok, frames = pipeline.try_wait_for_frames(poll_ms)
            if not ok:
                ended = (self._playback is not None
                         and self._playback.current_status() == rs.playback_status.stopped)
                if ended or clock.now() - last_arrival > self.stall_timeout_s:
                    self._last_error = ConnectionFailed(
                        "end of recording" if ended
                        else f"no frame for {self.stall_timeout_s:.3g} s")
                    return
                continue
            color = frames.get_color_frame()
            if not color:
                continue
            t_dev = color.get_timestamp() * 1e-3
            if last_dev is not None and t_dev <= last_dev:
                continue  # the SDK re-sent an older frame; keep device time monotonic
            depth_mm = None
            if self._align is not None:
                frames = self._align.process(frames)
                color = frames.get_color_frame()
                depth = frames.get_depth_frame()
                if not depth:
                    self.dropped_incomplete += 1
                    continue
                depth_mm = self._depth_mm(depth)
            rgb = np.array(color.get_data(), dtype=np.uint8, copy=True)
            if self._playback is not None:
                # Real-time playback is off (no drops), so pace by the recorded device clock.
                if pace_host is None:
                    pace_host, pace_dev = clock.now(), t_dev
                wait = pace_host + (t_dev - pace_dev) - clock.now()
                if wait > 0 and self._stop.wait(min(wait, 1.0)):
                    return
            last_dev = t_dev
            last_arrival = clock.now()
            self._publish(rgb, depth_mm, t_dev, last_arrival)

    @staticmethod
    def _depth_mm(depth) -> np.ndarray:
        raw = np.array(depth.get_data(), dtype=np.uint16, copy=True)
        units_m = depth.get_units()
        if abs(units_m - 0.001) < 1e-9:
            return raw
        mm = np.rint(raw.astype(np.float64) * (units_m * 1000.0))
        return np.clip(mm, 0, np.iinfo(np.uint16).max).astype(np.uint16)

    def _publish(self, rgb: np.ndarray, depth_mm: np.ndarray | None, t_dev: float,
                 t_host: float) -> None:
        with self._cond:
            self._seq += 1
            self._latest = Frame(camera=self.name, color=rgb, t_host=t_host, seq=self._seq,
                                 depth=depth_mm, t_device=t_dev)
            self._arrivals.append(t_host)
            self._cond.notify_all()
