"""`python main.py scan --port PORT [--baud B|all] [--ids 0-20] [--json]`: list the Dynamixel
servos on a bus (id, model, firmware, present position), like Dynamixel Wizard's scan."""

from __future__ import annotations

import sys

from app.cli.output import emit_json, table


def register(sub) -> None:
    p = sub.add_parser("scan", help="list the Dynamixel servos answering on a serial port",
                       description="Ping every id in a range on one port and list the servos "
                       "that answer: id, model, firmware, present position.")
    p.add_argument("--port", required=True,
                   help="serial port of the U2D2, e.g. /dev/serial/by-id/usb-FTDI_... "
                   "(ls /dev/serial/by-id lists them)")
    p.add_argument("--baud", default="1000000",
                   help="baud rate (default 1000000, the ALOHA setting; 57600 is the factory "
                   "default), or 'all' to try every rate")
    p.add_argument("--ids", default="0-20", help="ids to ping, e.g. 0-20 or 1,2,4-9 "
                   "(default 0-20; 0-252 covers every id)")
    p.add_argument("--json", action="store_true", help="one JSON object per servo")
    p.set_defaults(func=run)


def parse_ids(text: str) -> list[int]:
    ids: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                ids.extend(range(a, b + 1))
            elif part:
                ids.append(int(part))
    except ValueError:
        raise ValueError(f"--ids {text!r}: use numbers and ranges like 0-20 or 1,2,4-9") from None
    bad = [i for i in ids if not 0 <= i <= 252]
    if not ids or bad:
        raise ValueError(f"--ids {text!r}: ids are 0..252")
    return sorted(set(ids))


def parse_bauds(text: str) -> list[int]:
    from drivers.dynamixel import control_table as ct

    if text == "all":
        return [b for b in ct.BAUD_RATES.values() if b != 4_500_000]
    try:
        return [int(text)]
    except ValueError:
        raise ValueError(f"--baud {text!r}: give a number such as 1000000, or 'all'") from None


def run(args) -> int:
    from tqdm import tqdm

    from drivers.dynamixel.bus import open_port, scan_bus
    from drivers.errors import ConnectionFailed

    ids = parse_ids(args.ids)
    bauds = parse_bauds(args.baud)
    found = []
    for baud in bauds:
        open_port(args.port, baud).closePort()  # a bad port fails here, before any progress bar
        bar = tqdm(total=len(ids), desc=f"{args.port} @ {baud}", unit="id", file=sys.stderr,
                   disable=args.json, leave=False)
        found += scan_bus(args.port, baud, ids, progress=lambda _id: bar.update(1))
        bar.close()
    if not found:
        tried = ", ".join(str(b) for b in bauds)
        if args.baud == "all":
            other = ""
        elif bauds[0] == 1_000_000:
            other = (" If the servos were never configured, try --baud 57600 (the factory "
                     "default), or --baud all to try every rate.")
        else:
            other = " Try --baud 1000000 (the ALOHA setting), or --baud all to try every rate."
        raise ConnectionFailed(
            f"no servo answered on {args.port} at {tried} baud for ids {args.ids}. Check that the "
            f"arm's power supply is on and its cable is plugged into the U2D2.{other}"
        )
    if args.json:
        for s in found:
            emit_json(s)
    else:
        rows = [{**s, "position": f"{s['position']} ({s['position_deg']:.1f} deg)"}
                for s in found]
        print(table(rows, ["id", "model", "model_number", "firmware", "position", "baud",
                           "torque", "hardware_error"]))
        print(f"{len(found)} servo(s) found on {args.port}")
    return 0
