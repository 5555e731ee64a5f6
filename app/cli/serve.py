"""`python main.py serve --policy CHECKPOINT [--host 127.0.0.1] [--port 8765] [--token T]
[--device cuda] [--threads N] [--instruction TEXT] [--exit-with-parent] [--json]`: serve an XR0
checkpoint to workstations.

Prints the address (with --port 0, the free port it picked) and the policy's metadata (chunk
length, clean-prefix support, joints, cameras, image size), then one line per request (queue and
inference time, bytes in and out) until Ctrl-C or SIGTERM. Serves 127.0.0.1 by default; any other
address needs --token (the workstation runs with `main.py run --policy tcp://HOST:PORT --token T`).

--exit-with-parent is for a server the app starts for itself (app.core.policy_process): it stops
when its stdin closes or its parent process is gone, so an app that crashed leaves no server.
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
    p.add_argument("--threads", type=int,
                   help="torch CPU threads for inference (default: torch's, one per core; 1-2 "
                        "beside a workstation app that shares a few cores)")
    p.add_argument("--robot-type", help="a release's statistics to use (releases only)")
    p.add_argument("--instruction", default="",
                   help="the task when a request carries none")
    p.add_argument("--max-clients", type=int, default=8)
    p.add_argument("--json", action="store_true",
                   help="JSON lines: the address + metadata, then one per request")
    p.add_argument("--exit-with-parent", action="store_true",
                   help="stop when stdin closes or the process that started this one exits")
    p.set_defaults(func=run)


def run(args) -> int:
    from xr0.serve import PolicyServer, check_bind, load_served_policy

    check_bind(args.host, args.token)  # before loading a model that may take minutes
    if args.exit_with_parent:
        watch_parent()
    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise ValueError(f"--threads {args.threads}: give 1 or more CPU threads")
        torch.set_num_threads(args.threads)
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


def watch_parent(poll_s: float = 0.25) -> threading.Thread:
    """SIGTERM this process once stdin reaches end of file (the parent closed the pipe, or died
    and the kernel closed it) or the parent process is gone (this one was re-parented). Before
    the SIGTERM handler is installed (while the model loads) that ends the process at once."""
    import select

    parent = os.getppid()

    def watch() -> None:
        fd = sys.stdin.fileno()
        while os.getppid() == parent:
            ready, _, _ = select.select([fd], [], [], poll_s)
            if ready and not os.read(fd, 4096):
                break  # end of file
        os.kill(os.getpid(), signal.SIGTERM)

    t = threading.Thread(target=watch, name="parent-watch", daemon=True)
    t.start()
    return t
