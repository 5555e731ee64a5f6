"""`python main.py serve --policy CHECKPOINT [--host 127.0.0.1] [--port 8765] [--token T]
[--device cuda] [--instruction TEXT] [--json]`: serve an XR0 checkpoint to workstations.

Prints the address and the policy's metadata (chunk length, clean-prefix support, joints, cameras,
image size), then one line per request (queue and inference time, bytes in and out) until Ctrl-C
or SIGTERM. Serves 127.0.0.1 by default; any other address needs --token (the workstation runs
with `main.py run --policy tcp://HOST:PORT --token T`).
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from app.cli.output import emit_json


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve an XR0 checkpoint to workstations over TCP")
    p.add_argument("--policy", required=True, help="checkpoint folder (own or a release)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; any other needs --token)")
    p.add_argument("--port", type=int, default=8765, help="TCP port (0 picks a free one)")
    p.add_argument("--token", default=os.environ.get("XR0_SERVE_TOKEN"),
                   help="shared secret clients must present (default: $XR0_SERVE_TOKEN)")
    p.add_argument("--device", default="cpu", help="torch device for the model, e.g. cuda")
    p.add_argument("--robot-type", help="a release's statistics to use (releases only)")
    p.add_argument("--instruction", default="",
                   help="the task when a request carries none")
    p.add_argument("--max-clients", type=int, default=8)
    p.add_argument("--json", action="store_true",
                   help="JSON lines: the address + metadata, then one per request")
    p.set_defaults(func=run)


def run(args) -> int:
    from xr0.serve import PolicyServer, check_bind, load_served_policy

    check_bind(args.host, args.token)  # before loading a model that may take minutes
    kwargs = {"robot_type": args.robot_type} if args.robot_type else {}
    policy = load_served_policy(args.policy, args.device, args.instruction, **kwargs)

    def log(line: str) -> None:
        if args.json:
            emit_json({"event": "log", "message": line})
        else:
            print(line, flush=True)

    server = PolicyServer(policy, args.host, args.port, args.token,
                          max_clients=args.max_clients, log=log)
    host, port = server.address
    if args.json:
        emit_json({"event": "serving", "host": host, "port": port,
                   "token": args.token is not None, **server.meta})
    else:
        m = server.meta
        print(f"serving {m['model']} on tcp://{host}:{port}"
              f"{' (token required)' if args.token else ''}: H = {m['chunk_length']}, "
              f"clean prefix {'yes' if m['supports_prefix'] else 'no'}, "
              f"{m['dim']} dims [{', '.join(m['joint_names'] or [])}], cameras "
              f"{', '.join(m['cameras'])}, image size {m['image_size']}; Ctrl-C stops",
              flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server.start()
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    if args.json:
        emit_json({"event": "stopped", "requests": server.requests, "errors": server.errors})
    else:
        print(f"stopped after {server.requests} requests ({server.errors} errors)",
              file=sys.stderr)
    return 0
