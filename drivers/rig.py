"""The rig interface: what the teleop loop, the recorder and the policy runtime talk to.

A Rig is two follower arms (and, on hardware, two leader arms; in sim, a scripted operator in their
place) plus cameras, all stamped with drivers.clock.now(). Hardware and sim implement the same
interface, so the same code paths serve both.

    rig.connect()                 open buses/cameras; followers torque on, holding where they are
    state = rig.read()            14-d follower positions (+ 14-d leader positions when present)
    rig.command(q14)              14-d joint-position targets for the followers (already safe)
    frames = rig.frames()         the latest frame of every camera
    rig.hold() / rig.torque_off() stop motion: hold the present pose / drop follower torque
    rig.disconnect()              followers torque off, everything closed (also on exceptions)
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from drivers import layout
from drivers.config import CameraConfig, RigConfig


@dataclass
class Frame:
    """One camera frame. Colour is HxWx3 uint8 RGB; depth (optional) is HxW uint16 millimetres
    aligned to colour. t_host is drivers.clock.now() at arrival; t_device is the sensor's own
    timestamp in seconds (None where the device has none)."""

    camera: str
    color: np.ndarray
    t_host: float
    seq: int
    depth: np.ndarray | None = None
    t_device: float | None = None


@dataclass
class RigState:
    """One read of the rig, stamped with drivers.clock.now()."""

    t: float
    follower: np.ndarray  # (14,) radians / gripper 0..1
    leader: np.ndarray | None = None  # (14,) when leader arms (or the scripted operator) exist
    follower_velocity: np.ndarray | None = None  # (14,) rad/s when read
    follower_current: np.ndarray | None = None  # (14,) mA when read
    info: dict = field(default_factory=dict)  # e.g. sim reward / success


class Camera(abc.ABC):
    """A camera delivering frames from a background thread."""

    def __init__(self, config: CameraConfig):
        self.config = config
        self.name = config.name

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def stop(self) -> None: ...

    @abc.abstractmethod
    def latest(self, max_age_s: float | None = None) -> Frame:
        """The newest frame. Raises drivers.errors.ConnectionFailed if none is newer than
        max_age_s (stale stream)."""

    @abc.abstractmethod
    def wait_next(self, after_seq: int, timeout_s: float) -> Frame:
        """Block until a frame with seq > after_seq arrives (bounded by timeout_s)."""

    @property
    @abc.abstractmethod
    def measured_fps(self) -> float: ...


class Rig(abc.ABC):
    """Base of the hardware and the sim rig. Subclasses implement the abstract methods; the
    context manager guarantees disconnect (torque off) on any exit."""

    def __init__(self, config: RigConfig):
        self.config = config
        self.cameras: dict[str, Camera] = {}
        self._estopped = threading.Event()

    # -- lifecycle -------------------------------------------------------------------------
    @abc.abstractmethod
    def connect(self) -> None: ...

    @abc.abstractmethod
    def disconnect(self) -> None:
        """Followers torque off, buses and cameras closed. Must be safe to call twice."""

    def __enter__(self) -> "Rig":
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.disconnect()

    # -- motion ----------------------------------------------------------------------------
    @property
    def has_leaders(self) -> bool:
        return False

    @abc.abstractmethod
    def read(self) -> RigState: ...

    @abc.abstractmethod
    def _write_targets(self, q: np.ndarray) -> None: ...

    def command(self, q: np.ndarray) -> None:
        """Send 14-d follower targets. Refused after an e-stop until `clear_estop()`."""
        if self._estopped.is_set():
            return
        self._write_targets(layout.check(np.asarray(q, dtype=np.float64), "follower command"))

    @abc.abstractmethod
    def hold(self) -> None:
        """Hold the present follower pose (targets := present positions)."""

    @abc.abstractmethod
    def torque_off(self) -> None: ...

    def estop(self) -> None:
        """Emergency stop: refuse further commands, hold, and on hardware drop torque."""
        self._estopped.set()
        try:
            self.hold()
        finally:
            if self.config.safety.torque_off_on_stop:
                self.torque_off()

    def clear_estop(self) -> None:
        self._estopped.clear()

    @property
    def estopped(self) -> bool:
        return self._estopped.is_set()

    @abc.abstractmethod
    def limits(self) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) 14-d joint limits of the followers."""

    def health(self) -> Mapping[str, Mapping[str, Any]]:
        """Servo health, {arm name: {joint name: readings}} (on hardware, ServoHealth from
        drivers.dynamixel.health: temperature, Temperature_Limit, hardware errors with their
        fix). Thread-safe and free of bus traffic. Empty for a rig without servos (the sim)."""
        return {}

    # -- cameras ---------------------------------------------------------------------------
    def frames(self, max_age_s: float | None = None) -> dict[str, Frame]:
        return {name: cam.latest(max_age_s) for name, cam in self.cameras.items()}


def open_rig(config: RigConfig) -> Rig:
    """The Rig for a config: the MuJoCo sim or the Dynamixel + RealSense hardware."""
    if config.kind == "sim":
        from drivers.sim.rig import SimRig

        return SimRig(config)
    from drivers.hardware import HardwareRig

    return HardwareRig(config)
