"""`python main.py run --rig sim|CONFIG --policy scripted|CHECKPOINT|tcp://HOST:PORT --strategy NAME
[--inject-delay-ms X | --inject-delay-steps N] [--episodes N] [--task TEXT] [--seed S]
[--save DIR] [--json]`: run a chunk policy on the rig through the asynchronous runtime.

On the sim rig the episodes run in stepping mode (deterministic: the injected delay is counted in
control steps; milliseconds are rounded up to steps) and each reports success, completion time,
inference latency p50/p95, boundary discontinuity (|action at a chunk switch - action before| /
median within-chunk step) and RMS jerk of the commanded trajectory. `--policy scripted` is the
sim's scripted operator planning chunks ahead (no model needed); a checkpoint folder is an XR0
policy run in this process; tcp://HOST:PORT is a policy server (`main.py serve`, `--token`).
Without an injected delay a model's chunks arrive as many control steps after their request as
its inference took (the sim waits for it, so the run is what real time would give).
"""

from __future__ import annotations

import math

from app.cli.output import emit_json


def register(sub) -> None:
    from xr0.runtime import STRATEGIES

    p = sub.add_parser("run", help="run a chunk policy on the rig with the asynchronous runtime")
    p.add_argument("--rig", default="sim", help="'sim', a name in assets/rigs, or a .toml path")
    p.add_argument("--policy", default="scripted",
                   help="'scripted' (the sim operator planning chunks), a checkpoint folder, or "
                        "tcp://HOST:PORT of a policy server")
    p.add_argument("--token", help="shared token of the policy server")
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

    cfg = load_rig_config(args.rig)
    if cfg.kind != "sim":
        raise ValueError(f"--rig {args.rig} is a hardware rig: `main.py run` runs headless "
                         f"episodes on the sim rig (--rig sim); on hardware, run autonomy from "
                         f"the app, where the operator can stop or take over")
    if args.episodes < 1:
        raise ValueError("--episodes must be at least 1")
    policy = None if args.policy == "scripted" else load_chunk_policy(args.policy, args.token,
                                                                      args.task)
    sim = dataclasses.replace(cfg.sim or SimConfig(), realtime=False)
    if args.sim_task:
        sim = dataclasses.replace(sim, task=args.sim_task)
    cfg = cfg.with_(cameras=policy_cameras(cfg, policy), sim=sim)
    dt = 1.0 / cfg.control_hz
    if args.inject_delay_ms is not None:
        if args.inject_delay_ms < 0:
            raise ValueError("--inject-delay-ms must be >= 0")
        delay = int(math.ceil(args.inject_delay_ms / 1e3 / dt - 1e-9))
    elif args.inject_delay_steps is not None:
        delay = args.inject_delay_steps
    else:
        delay = 0 if policy is None else "measured"
    rows = []
    with SimRig(cfg) as rig:
        for i in range(args.episodes):
            seed = args.seed + i
            save = str(Path(args.save) / f"episode_{seed}") if args.save else None
            r = run_sim_episode(rig, args.strategy, seed, delay, args.chunk, args.k,
                                args.task, save, policy=policy)
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


def load_chunk_policy(spec: str, token: str | None, instruction: str):
    """The ChunkPolicy behind --policy: a checkpoint folder (XR0 in this process) or
    tcp://HOST:PORT (a policy server). Layout and camera mismatches are refused here, before the
    rig moves."""
    from pathlib import Path

    from drivers import layout

    if spec.startswith("tcp://"):
        from xr0.serve import RemotePolicy, parse_address

        host, port = parse_address(spec)
        try:
            return RemotePolicy(host, port, token=token, joint_names=list(layout.NAMES))
        except (ConnectionError, TimeoutError) as e:
            raise ValueError(f"policy server {spec}: {e}") from e
    if not Path(spec).is_dir():
        raise ValueError(f"--policy {spec}: no such checkpoint folder; give 'scripted', a "
                         f"checkpoint folder (from `main.py train`) or tcp://HOST:PORT")
    from xr0.policy import XR0Policy

    policy = XR0Policy.from_checkpoint(spec)
    if policy.state_dim != layout.DIM or policy.action_dim != layout.DIM:
        raise ValueError(f"the checkpoint's policy acts on {policy.action_dim} joints, the rig has "
                         f"{layout.DIM} ({', '.join(layout.NAMES)}): train it on this rig's "
                         f"episodes")
    return policy.as_chunk_policy(instruction)


def policy_cameras(cfg, policy) -> tuple:
    """The rig cameras a policy sees: none for the scripted policy (it plans from the sim state),
    else the policy's cameras, which the rig must have."""
    if policy is None:
        return ()
    names = (getattr(policy, "cameras", None)                      # a policy in this process
             or getattr(getattr(policy, "policy", None), "cameras", None)  # XR0ChunkPolicy
             or getattr(policy, "meta", {}).get("cameras") or ())        # a policy server
    have = {c.name: c for c in cfg.cameras}
    missing = [n for n in names if n not in have]
    if missing:
        raise ValueError(f"the policy needs cameras {missing} that rig {cfg.name!r} does not have "
                         f"(it has {sorted(have)}): use the rig the policy was trained on")
    return tuple(have[n] for n in names)
