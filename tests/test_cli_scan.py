"""`python main.py scan` against an emulated bus, text and --json, and its error messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from drivers.dynamixel.emulator import DynamixelEmulator

ROOT = Path(__file__).resolve().parent.parent


def scan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "main.py"), "scan", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


@pytest.fixture(scope="module")
def emu():
    with DynamixelEmulator([(1, "XM430-W350"), (2, "XM540-W270"), (9, "XL330-M288")]) as e:
        e.set_position(2, 3072)
        e.hardware_error(9, 0x04)
        yield e


def test_scan_text(emu):
    r = scan("--port", emu.port, "--ids", "0-10")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:4] == ["id", "model", "model_number", "firmware"]
    rows = {int(line.split()[0]): line for line in lines[2:-1]}
    assert set(rows) == {1, 2, 9}
    assert "XM540-W270" in rows[2] and "3072 (90.0 deg)" in rows[2]
    assert "3 servo(s) found" in r.stdout


def test_scan_json(emu):
    r = scan("--port", emu.port, "--ids", "1,2,5-9", "--json")
    assert r.returncode == 0, r.stderr
    servos = [json.loads(line) for line in r.stdout.splitlines()]
    assert [s["id"] for s in servos] == [1, 2, 9]
    assert servos[0] == {"id": 1, "model": "XM430-W350", "model_number": 1020, "baud": 1000000,
                         "firmware": 48, "position": 2048, "torque": 0, "hardware_error": 0,
                         "position_deg": 0.0}
    assert servos[2]["model"] == "XL330-M288" and servos[2]["hardware_error"] == 4


def test_scan_wrong_baud_says_what_to_try(emu):
    r = scan("--port", emu.port, "--ids", "1-2", "--baud", "57600")
    assert r.returncode == 2
    assert "no servo answered" in r.stderr and "57600" in r.stderr
    assert "--baud 1000000" in r.stderr and "--baud all" in r.stderr


def test_scan_all_bauds_finds_them(emu):
    r = scan("--port", emu.port, "--ids", "1", "--baud", "all", "--json")
    assert r.returncode == 0, r.stderr
    assert [json.loads(x)["baud"] for x in r.stdout.splitlines()] == [1000000]


def test_scan_bad_port_and_bad_ids():
    r = scan("--port", "/dev/ttyUSB_not_here", "--json")
    assert r.returncode == 2
    err = json.loads(r.stdout.splitlines()[-1])
    assert err["event"] == "error" and "/dev/ttyUSB_not_here" in err["message"]
    assert "/dev/serial/by-id" in r.stderr
    r = scan("--port", "/dev/null", "--ids", "3-x")
    assert r.returncode == 2 and "--ids" in r.stderr
