"""Errors a user can meet at the rig. Each message names the thing and the fix."""


class RigError(RuntimeError):
    """Base class: something about the rig is wrong; the message says what to do."""


class ConfigError(RigError):
    """A rig config or calibration file is malformed."""


class ConnectionFailed(RigError):
    """A port, a servo or a camera could not be reached."""


class ServoFault(RigError):
    """A servo reported a hardware error (overload, overheating, ...)."""


class SafetyStop(RigError):
    """Motion was stopped by a safety rule (e-stop, leader-follower gap, watchdog)."""
