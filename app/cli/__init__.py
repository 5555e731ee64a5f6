"""The headless command line: `python main.py <command> [--json]`.

Each command lives in its own module of this package with `register(subparsers)`; the module list
below is the one registry, so `--help` always lists every command.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from app.cli.output import emit_json, error

COMMANDS = (
    "gui",
    "teleop",
    "record",
    "replay",
    "run",
    "serve",  # a policy server for remote inference (xr0.serve)
    "scan",
    "calibrate",
    "cameras",
    "episodes",
    "lerobot",  # export, import: LeRobot v3.0 datasets
    "train",
    "bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="main.py",
        description="XR0 Workstation: teleoperate and record a bimanual rig, fine-tune and run "
        "the Xiaomi-Robotics-0 policy. With no command, the desktop app opens on the simulated rig.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"app.cli.{name}").register(sub)
    return parser


def add_json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON (one object per line)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv or ["gui"])
    from drivers.errors import RigError

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (RigError, ValueError, FileNotFoundError, PermissionError) as e:
        if getattr(args, "json", False):
            emit_json({"event": "error", "error": type(e).__name__, "message": str(e)})
        error(str(e))
        return 2
