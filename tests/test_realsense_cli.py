"""`python main.py cameras`: the list of connected RealSense cameras, from pyrealsense2."""

from __future__ import annotations

import json

from app.cli import main
from drivers.realsense import list_cameras


def test_cameras_command_text(capsys):
    connected = list_cameras()
    assert main(["cameras"]) == 0
    out = capsys.readouterr().out
    if connected:
        for cam in connected:
            assert cam.serial in out and cam.firmware in out
    else:
        assert "no RealSense camera found" in out
        assert "USB 3" in out and "udev" in out and "apt install libusb-1.0-0" in out


def test_cameras_command_json(capsys):
    connected = list_cameras()
    assert main(["cameras", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [c["serial"] for c in doc["cameras"]] == [c.serial for c in connected]
    for c in doc["cameras"]:
        assert set(c) >= {"serial", "name", "firmware", "usb_type"}


def test_cameras_is_listed_in_help(capsys):
    try:
        main(["--help"])
    except SystemExit:
        pass
    assert "cameras" in capsys.readouterr().out
