"""`python main.py calibrate`: the guided workflow driven through its prompts, as an operator
would, against an emulated arm."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from drivers.config import RIGS_DIR, load_rig_config
from drivers.dynamixel import control_table as ct
from drivers.dynamixel.calibration import load_calibration
from drivers.dynamixel.emulator import DynamixelEmulator

ROOT = Path(__file__).resolve().parent.parent


def test_calibrate_command_walks_the_operator_through(tmp_path):
    arm = load_rig_config("aloha").arm("follower", "left")
    text = (RIGS_DIR / "aloha.toml").read_text()
    with DynamixelEmulator([(j.id, j.model) for j in arm.joints]) as emu:
        rig = tmp_path / "rig.toml"
        rig.write_text(text.replace(arm.port, emu.port))
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), "calibrate", "--rig", str(rig), "--arm",
             "left_follower", "--reverse", "wrist_angle", "--json"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=ROOT)
        events = []

        def enter():
            proc.stdin.write("\n")
            proc.stdin.flush()

        try:
            for line in proc.stdout:
                ev = json.loads(line)
                events.append(ev)
                if ev.get("step") == "zero" and ev["event"] == "prompt":
                    for k, j in enumerate(arm.joints):
                        emu.set_position(j.id, 1000 + 50 * k)
                    enter()
                elif ev["event"] == "prompt" and ev["step"] == "range":
                    enter()  # too early: nothing has moved yet
                elif ev["event"] == "retry" and ev["step"] == "range":
                    for j in arm.joints[:-1]:
                        for t in (ct.CENTER_TICKS - 500, ct.CENTER_TICKS + 400):
                            emu.set_position(j.id, t)
                            time.sleep(0.15)
                    enter()
                elif ev["event"] == "prompt" and ev["step"] == "gripper_open":
                    emu.set_position(9, 2700)
                    enter()
                elif ev["event"] == "prompt" and ev["step"] == "gripper_closed":
                    emu.set_position(9, 2000)
                    enter()
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, proc.stderr.read()
        assert [e["event"] for e in events if e["event"] != "range"] == [
            "start", "prompt", "zero", "prompt", "retry", "prompt", "gripper_open", "prompt",
            "gripper_closed", "saved"]
        retry = next(e for e in events if e["event"] == "retry")
        assert "moved less than" in retry["message"]
        saved = Path(events[-1]["path"])
        assert saved == tmp_path / "calibration" / "left_follower.json"
        cal = load_calibration(saved, "left_follower")
        assert cal.joints["wrist_angle"].drive_mode == ct.DRIVE_MODE_REVERSE
        assert emu.get(7, "Drive_Mode") == ct.DRIVE_MODE_REVERSE
        assert cal.joints["waist"].homing_offset == emu.get(1, "Homing_Offset")
        assert (cal.joints["elbow"].range_min, cal.joints["elbow"].range_max) == (
            ct.CENTER_TICKS - 500, ct.CENTER_TICKS + 400)
        assert (cal.gripper_open, cal.gripper_closed) == (2700, 2000)
        assert not any(emu.torque_map().values())
