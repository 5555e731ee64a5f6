"""`python main.py calibrate --rig CONFIG --arm NAME [--reverse JOINTS] [--json]`: the guided
calibration of one Dynamixel arm. The steps live in drivers.dynamixel.calibration; this command only
shows the prompts, waits for Enter and saves the file named by the arm's `calibration` key."""

from __future__ import annotations

import select
import sys
import time

from app.cli.output import emit_json


def register(sub) -> None:
    p = sub.add_parser("calibrate", help="calibrate one Dynamixel arm (zero pose, range, gripper)",
                       description="Guided calibration of one arm of a hardware rig: zero pose "
                       "-> homing offsets, every joint through its range, gripper open and "
                       "closed. Writes the arm's calibration file (the `calibration` key of its "
                       "[[arms]] table).")
    p.add_argument("--rig", required=True, help="rig config: a name in assets/rigs or a path")
    p.add_argument("--arm", required=True, help="arm name from the rig config, e.g. left_follower")
    p.add_argument("--reverse", default="",
                   help="comma-separated joints whose direction is reversed (Drive_Mode bit 0)")
    p.add_argument("--json", action="store_true", help="JSON events, one per line")
    p.set_defaults(func=run)


def _say(args, event: dict, text: str) -> None:
    if args.json:
        emit_json(event)
    else:
        print(text, flush=True)


def _enter_pressed(timeout: float) -> bool:
    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    if not ready:
        return False
    if not sys.stdin.readline():
        raise KeyboardInterrupt  # stdin closed: nobody is there to guide the arm
    return True


def _wait_enter(args, step: str, prompt: str) -> None:
    _say(args, {"event": "prompt", "step": step, "text": prompt},
         f"\n{prompt}\n  Press Enter when ready.")
    while not _enter_pressed(1.0):
        pass


def run(args) -> int:
    from drivers.config import load_rig_config
    from drivers.dynamixel.bus import DynamixelBus, Motor
    from drivers.dynamixel.calibration import CalibrationSession, Step
    from drivers.errors import ConfigError, RigError

    cfg = load_rig_config(args.rig)
    arm = next((a for a in cfg.arms if a.name == args.arm), None)
    if arm is None:
        raise ConfigError(f"{cfg.source}: no arm named {args.arm!r}; arms are "
                          f"{', '.join(a.name for a in cfg.arms) or '(none)'}")
    if not arm.calibration:
        raise ConfigError(f"{cfg.source}: arm '{arm.name}' has no calibration key; add "
                          f"calibration = \"calibration/{arm.name}.json\" to its [[arms]] table")
    path = cfg.resolve(arm.calibration)
    reverse = frozenset(j.strip() for j in args.reverse.split(",") if j.strip())
    bus = DynamixelBus(arm.port, [Motor(j.name, j.id, j.model) for j in arm.joints],
                       baud=arm.baud, name=arm.name, retries=arm.protocol_retries)
    with bus:
        bus.verify()
        session = CalibrationSession(bus, arm, reverse=reverse)
        session.begin()
        _say(args, {"event": "start", "arm": arm.name, "port": arm.port},
             f"Calibrating {arm.name} on {arm.port}: torque is off, move the arm by hand.")

        _wait_enter(args, Step.ZERO.value, session.prompt)
        offsets = session.record_zero()
        _say(args, {"event": "zero", "homing_offsets": offsets},
             "  homing offsets: " + ", ".join(f"{k} {v}" for k, v in offsets.items()))

        _say(args, {"event": "prompt", "step": Step.RANGE.value, "text": session.prompt},
             f"\n{session.prompt}\n  Press Enter when every joint has been moved.")
        last_emit = 0.0
        while True:
            sample = session.sample_range()
            if _enter_pressed(0.05):
                try:
                    session.finish_range()
                    break
                except RigError as e:
                    _say(args, {"event": "retry", "step": Step.RANGE.value, "message": str(e)},
                         f"\n  {e}")
            t = time.monotonic()
            if t - last_emit > 0.5:
                last_emit = t
                if args.json:
                    emit_json({"event": "range", "joints": {k: {"min": v[0], "max": v[1]}
                                                             for k, v in sample.items()}})
                else:
                    line = "  ".join(f"{k[:8]} {v[1] - v[0]:5d}" for k, v in sample.items())
                    print(f"\r  travel (ticks): {line}", end="", flush=True)
        if not args.json:
            print()

        for step, record in ((Step.GRIPPER_OPEN, session.record_gripper_open),
                             (Step.GRIPPER_CLOSED, session.record_gripper_closed)):
            while True:
                _wait_enter(args, step.value, session.prompt)
                try:
                    ticks = record()
                    break
                except RigError as e:
                    _say(args, {"event": "retry", "step": step.value, "message": str(e)},
                         f"  {e}")
            _say(args, {"event": step.value, "ticks": ticks}, f"  {step.value}: {ticks} ticks")

        calibration = session.result()
        calibration.save(path)
    _say(args, {"event": "saved", "path": str(path), "calibration": calibration.to_dict()},
         f"\nSaved {path}")
    return 0
