"""`python main.py cameras [--json]`: list the connected RealSense cameras."""

from __future__ import annotations

import dataclasses

from app.cli.output import emit_json, table

NONE_FOUND = (
    "no RealSense camera found. Check the USB 3 cable and port (use the cable that came with "
    "the camera, plugged straight into a USB 3 port), install librealsense's udev rules "
    "(99-realsense-libusb.rules in /etc/udev/rules.d, then replug) so the camera is readable "
    "without root, and `sudo apt install libusb-1.0-0`."
)


def register(sub) -> None:
    from app.cli import add_json_flag

    p = sub.add_parser("cameras", help="list connected RealSense cameras (serial, model, "
                       "firmware, USB type)")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from drivers.realsense import list_cameras

    cameras = [dataclasses.asdict(c) for c in list_cameras()]
    if args.json:
        emit_json({"cameras": cameras})
        return 0
    if not cameras:
        print(NONE_FOUND)
        return 0
    print(table(cameras, ["serial", "name", "firmware", "usb_type"]))
    return 0
