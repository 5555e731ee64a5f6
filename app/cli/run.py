"""`python main.py run --rig sim|CONFIG --policy scripted|CHECKPOINT --strategy NAME
[--inject-delay-ms X | --inject-delay-steps N] [--episodes N] [--task TEXT] [--seed S]
[--save DIR] [--json]`: run a chunk policy on the rig through the asynchronous runtime.

On the sim rig the episodes run in stepping mode (deterministic: the injected delay is counted in
control steps; milliseconds are rounded up to steps) and each reports success, completion time,
inference latency p50/p95, boundary discontinuity (|action at a chunk switch - action before| /
median within-chunk step) and RMS jerk of the commanded trajectory. `--policy scripted` is the
sim's scripted operator planning chunks ahead (no model needed).
"""

from __future__ import annotations

import math

from app.cli.output import emit_json


def register(sub) -> None:
    from xr0.runtime import STRATEGIES

    p = sub.add_parser("run", help="run a chunk policy on the rig with the asynchronous runtime")
    p.add_argument("--rig", default="sim", help="'sim', a name in assets/rigs, or a .toml path")
    p.add_argument("--policy", default="scripted",
                   help="'scripted' (the sim operator planning chunks) or a checkpoint folder")
    p.add_argument("--strategy", default="xr0", choices=list(STRATEGIES),
                   help="how chunks are joined (default xr0: clean prefix)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--inject-delay-ms", type=float, help="artificial inference latency (ms)")
    g.add_argument("--inject-delay-steps", type=int, help="artificial inference latency (steps)")
    p.add_argument("--episodes", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="first episode's seed (then +1, +2, ...)")
    p.add_argument("--task", default="", help="the instruction given to the policy")
    p.add_argument("--sim-task", choices=("transfer_cube", "insertion"),
                   help="the sim scene (default: the rig config's)")
    p.add_argument("--chunk", type=int, default=50, help="chunk length H (scripted policy)")
    p.add_argument("--k", type=int, default=15,
                   help="request the next chunk when at most k unexecuted actions remain")
    p.add_argument("--save", help="folder for each episode's telemetry (episode_N.npz + .json)")
    p.add_argument("--json", action="store_true", help="JSON lines: one per episode + summary")
    p.set_defaults(func=run)


def run(args) -> int:
    import dataclasses
    from pathlib import Path

    import numpy as np

    from app.core.autonomy import run_sim_episode
    from drivers.config import SimConfig, load_rig_config
    from drivers.sim.rig import SimRig

    if args.policy != "scripted":
        raise ValueError(
            f"--policy {args.policy}: loading an XR0 checkpoint into the runtime is not available "
            f"yet; use --policy scripted (any policy implementing xr0.runtime.ChunkPolicy can be "
            f"run with ChunkRuntime in code)")
    cfg = load_rig_config(args.rig)
    if cfg.kind != "sim":
        raise ValueError(f"--rig {args.rig} is a hardware rig: the scripted policy plans with the "
                         f"sim's operator, so run it with --rig sim")
    if args.episodes < 1:
        raise ValueError("--episodes must be at least 1")
    sim = dataclasses.replace(cfg.sim or SimConfig(), realtime=False)
    if args.sim_task:
        sim = dataclasses.replace(sim, task=args.sim_task)
    cfg = cfg.with_(cameras=(), sim=sim)
    dt = 1.0 / cfg.control_hz
    if args.inject_delay_ms is not None:
        if args.inject_delay_ms < 0:
            raise ValueError("--inject-delay-ms must be >= 0")
        delay = int(math.ceil(args.inject_delay_ms / 1e3 / dt - 1e-9))
    else:
        delay = args.inject_delay_steps or 0
    rows = []
    with SimRig(cfg) as rig:
        for i in range(args.episodes):
            seed = args.seed + i
            save = str(Path(args.save) / f"episode_{seed}") if args.save else None
            r = run_sim_episode(rig, args.strategy, seed, delay, args.chunk, args.k,
                                args.task, save)
            rows.append(r)
            if args.json:
                emit_json({"event": "episode", **r})
            else:
                print(f"seed {seed}: {'success' if r['success'] else 'failure'}"
                      + (f" in {r['completion_s']:.2f} s" if r["completion_s"] else "")
                      + f", latency p50 {r['latency_ms_p50']:.0f} ms, boundary discontinuity "
                      f"{r['boundary_discontinuity']:.2f} (max {r['boundary_discontinuity_max']:.2f}),"
                      f" RMS jerk {r['rms_jerk']:.0f} rad/s^3"
                      + (f", flags {', '.join(r['flags'])}" if r["flags"] else "")
                      + (f"\n  error: {r['error']}" if r["error"] else ""))
    done = [r["completion_s"] for r in rows if r["completion_s"] is not None]
    summary = {
        "event": "summary", "strategy": args.strategy, "delay_steps": delay,
        "episodes": len(rows), "success_rate": sum(r["success"] for r in rows) / len(rows),
        "completion_s_mean": float(np.mean(done)) if done else None,
        "boundary_discontinuity": float(np.nanmean([r["boundary_discontinuity"] for r in rows])),
        "rms_jerk": float(np.mean([r["rms_jerk"] for r in rows])),
    }
    if args.json:
        emit_json(summary)
    else:
        print(f"{args.strategy}, delay {delay} steps: success {summary['success_rate']:.0%} of "
              f"{len(rows)}, boundary discontinuity {summary['boundary_discontinuity']:.2f}, "
              f"RMS jerk {summary['rms_jerk']:.0f}")
    return 0
