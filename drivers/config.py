"""Rig configuration: one TOML format describes a rig, hardware or simulated.

    name = "aloha-lab-1"
    kind = "hardware"            # or "sim"
    control_hz = 50
    [safety]  ... clamps, ramps, gap threshold
    [[arms]]  ... port, baud, role, side, calibration file, [[arms.joints]] with id, model, limits
    [[cameras]] ... serial (hardware) or sim_camera (sim), width, height, fps, depth
    [sim]     ... task, seed, real-time pacing (sim rigs only)

Unknown and missing keys are errors that name the key, the file and the fix. `load_rig_config`
is the only loader; `assets/rigs/` holds the sim rig and an ALOHA-style hardware template.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from drivers import layout
from drivers.errors import ConfigError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
RIGS_DIR = ASSETS / "rigs"

SERVO_MODELS = ("XL330-M077", "XL330-M288", "XL430-W250", "XM430-W350", "XM540-W270")


@dataclass(frozen=True)
class JointConfig:
    name: str
    id: int
    model: str
    min: float  # radians for joints, 0..1 for the gripper
    max: float


@dataclass(frozen=True)
class ArmConfig:
    name: str
    role: Literal["leader", "follower"]
    side: Literal["left", "right"]
    port: str
    joints: tuple[JointConfig, ...]
    baud: int = 1_000_000
    calibration: str = ""  # path, relative to the config file's folder
    gripper_current_limit: int = 300  # raw Current_Limit units for the follower gripper
    gripper_spring_current: int = 0  # leader only: >0 holds the gripper open like a spring
    protocol_retries: int = 2


@dataclass(frozen=True)
class CameraConfig:
    name: str
    width: int = 640
    height: int = 480
    fps: int = 30
    depth: bool = False
    serial: str = ""  # RealSense serial number (hardware rigs)
    sim_camera: str = ""  # MJCF camera name (sim rigs)
    playback: str = ""  # a recorded .db3/.bag to play instead of a live device


@dataclass(frozen=True)
class SafetyConfig:
    max_step_rad: float = 0.1  # per control step, joints (max relative target)
    max_step_gripper: float = 0.25  # per control step, grippers (0..1 units)
    max_gap_rad: float = 0.8  # leader-follower gap that stops teleop
    ramp_speed_rad_s: float = 1.0  # speed of the engage / replay ramp
    ramp_tolerance_rad: float = 0.02  # ramp is done when every joint is this close
    torque_off_on_stop: bool = True  # e-stop drops follower torque on hardware


@dataclass(frozen=True)
class SimConfig:
    task: Literal["transfer_cube", "insertion"] = "transfer_cube"
    seed: int = 0
    realtime: bool = True
    episode_seconds: float = 8.0
    # the scripted operator's aiming error (m, std per horizontal axis) on each arm's first
    # reach, corrected on the way down (drivers.sim.operator); 0: perfectly aimed
    aim_noise: float = 0.0
    # the scripted operator's longest extra wait (s) before transfer cube's hand-over, drawn per
    # episode uniform in [0, handover_delay] (drivers.sim.operator); 0: always on time
    handover_delay: float = 0.0


@dataclass(frozen=True)
class RigConfig:
    name: str
    kind: Literal["sim", "hardware"]
    control_hz: float = 50.0
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    arms: tuple[ArmConfig, ...] = ()
    cameras: tuple[CameraConfig, ...] = ()
    sim: SimConfig | None = None
    source: str = ""  # the file this came from (set by the loader)

    def arm(self, role: str, side: str) -> ArmConfig | None:
        for a in self.arms:
            if a.role == role and a.side == side:
                return a
        return None

    def resolve(self, relative: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        p = Path(relative).expanduser()
        if p.is_absolute() or not self.source:
            return p
        return Path(self.source).parent / p

    def with_(self, **changes: Any) -> "RigConfig":
        return dataclasses.replace(self, **changes)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _build(cls: type, data: Any, where: str) -> Any:
    """Build a frozen dataclass from a TOML table, strictly."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed keys are "
            f"{', '.join(sorted(fields))}. Remove or rename them."
        )
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where}: missing key '{name}'. Add it to the file.")
            continue
        kwargs[name] = _convert(hints[name], data[name], f"{where}.{name}")
    return cls(**kwargs)


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        return _convert(non_none[0], value, where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(
                f"{where} = {value!r}: must be one of {', '.join(map(repr, args))}"
            )
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected an array of tables")
        return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} = {value!r}: expected a number")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} = {value!r}: expected an integer")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} = {value!r}: expected true or false")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} = {value!r}: expected a string")
        return value
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}")


def _validate(cfg: RigConfig, where: str) -> None:
    if cfg.control_hz <= 0 or cfg.control_hz > 1000:
        raise ConfigError(f"{where}: control_hz = {cfg.control_hz} must be in (0, 1000]")
    if cfg.kind == "sim" and cfg.sim is None:
        raise ConfigError(f"{where}: a sim rig needs a [sim] table (task, seed, realtime)")
    seen = set()
    for arm in cfg.arms:
        key = (arm.role, arm.side)
        if key in seen:
            raise ConfigError(f"{where}: two {arm.side} {arm.role} arms; each role/side once")
        seen.add(key)
        if len(arm.joints) != layout.JOINTS_PER_ARM:
            raise ConfigError(
                f"{where}: arm '{arm.name}' lists {len(arm.joints)} joints; an arm has "
                f"{layout.JOINTS_PER_ARM}: {', '.join(layout.ARM_JOINTS)}, gripper (in that order)"
            )
        expected = (*layout.ARM_JOINTS, "gripper")
        names = tuple(j.name for j in arm.joints)
        if names != expected:
            raise ConfigError(
                f"{where}: arm '{arm.name}' joints are {', '.join(names)}; "
                f"expected {', '.join(expected)} in that order"
            )
        ids = [j.id for j in arm.joints]
        if len(set(ids)) != len(ids) or not all(0 <= i <= 252 for i in ids):
            raise ConfigError(f"{where}: arm '{arm.name}' servo ids {ids} must be unique, 0..252")
        for j in arm.joints:
            if j.model not in SERVO_MODELS:
                raise ConfigError(
                    f"{where}: arm '{arm.name}' joint '{j.name}' has model {j.model!r}; "
                    f"supported: {', '.join(SERVO_MODELS)}"
                )
            if not j.min < j.max:
                raise ConfigError(
                    f"{where}: arm '{arm.name}' joint '{j.name}' has min {j.min} >= max {j.max}"
                )
    if cfg.kind == "hardware":
        for side in layout.SIDES:
            if cfg.arm("follower", side) is None:
                raise ConfigError(f"{where}: a hardware rig needs a {side} follower arm")
    names = [c.name for c in cfg.cameras]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: camera names {names} must be unique")
    for c in cfg.cameras:
        if c.width <= 0 or c.height <= 0 or c.fps <= 0:
            raise ConfigError(f"{where}: camera '{c.name}' needs positive width, height and fps")
        if cfg.kind == "hardware" and not (c.serial or c.playback):
            raise ConfigError(
                f"{where}: camera '{c.name}' needs a serial (see `python main.py cameras`) "
                f"or a playback file"
            )


def parse_rig_config(text: str, source: str = "<string>") -> RigConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML ({e}). Fix the syntax at that line.") from e
    cfg = _build(RigConfig, data, source)
    cfg = dataclasses.replace(cfg, source=source)
    _validate(cfg, source)
    return cfg


def load_rig_config(name_or_path: str | Path) -> RigConfig:
    """Load a rig config by path, or by name from assets/rigs ('sim' -> assets/rigs/sim.toml)."""
    p = Path(name_or_path).expanduser()
    if not p.exists() and not p.suffix:
        candidate = RIGS_DIR / f"{name_or_path}.toml"
        if candidate.exists():
            p = candidate
    if not p.exists():
        known = ", ".join(sorted(x.stem for x in RIGS_DIR.glob("*.toml")))
        raise ConfigError(
            f"rig config {str(name_or_path)!r} not found. Pass a path to a .toml file or one of "
            f"the built-in rigs: {known}"
        )
    return parse_rig_config(p.read_text(), str(p.resolve()))
