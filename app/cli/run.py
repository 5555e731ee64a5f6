"""`python main.py run --rig sim|CONFIG --policy scripted|CHECKPOINT|tcp://HOST:PORT --strategy NAME
[--inject-delay-ms X | --inject-delay-steps N] [--episodes N] [--task TEXT] [--seed S]
[--save DIR] [--json]`: run a chunk policy on the rig through the asynchronous runtime.
On a hardware rig (or the sim with --realtime) add `[--seconds S] [--store DIR] [--yes]`.

On the sim rig the episodes run in stepping mode (deterministic given the seed: the delay is
counted in control steps, milliseconds rounded up, and an in-process model's flow-matching noise
is drawn from the episode's seed; a policy server's noise is fresh) and each reports success,
completion time, inference latency p50/p95, boundary discontinuity (|action at a chunk switch -
action before| / median within-chunk step) and RMS jerk of the commanded trajectory. `--policy scripted` is the
sim's scripted operator planning chunks ahead (no model needed); a checkpoint folder is an XR0
policy run in this process; tcp://HOST:PORT is a policy server (`main.py serve`, `--token`).
Without an injected delay a model's chunks arrive as many control steps after their request as
its inference took (the sim waits for it, so the run is what real time would give).

On a hardware rig, and on the sim rig with --realtime, each episode is an AutonomyRun (the
controller of the app's Autonomy tab) on a real-time RigSession for --seconds: the followers hold
while the first chunk is computed, ramp to the policy's first action, then follow the spliced
action stream through the safety clamps. Before moving a hardware rig the command says what it
will do and needs --yes. Ctrl-C or SIGTERM is an e-stop: the policy stops, the followers hold,
then torque goes off as the rig closes. Each episode also reports the control loop's period
error p99; with --store the runs are registered in the store's runs table.
"""

from __future__ import annotations

import math

from app.cli.output import emit_json
from app.core.policies import load_chunk_policy, policy_cameras


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
    p.add_argument("--save", help="folder for each episode's telemetry: episode_N.npz + .json "
                   "(real time: a run folder episode_N/ of segment_NNN.npz + .json)")
    p.add_argument("--json", action="store_true", help="JSON lines: one per episode + summary")
    p.add_argument("--realtime", action="store_true",
                   help="sim rig: run in real time through the app's autonomy controller, as on "
                        "hardware (hardware rigs always do)")
    p.add_argument("--seconds", type=float, default=None,
                   help="real time: length of each episode (default 20 s; the sim episode on "
                        "the sim rig)")
    p.add_argument("--store", help="real time: episode store whose runs table lists the runs")
    p.add_argument("--reset", type=float, default=5.0,
                   help="hardware: seconds between episodes to reset the scene (followers hold)")
    p.add_argument("--yes", action="store_true",
                   help="hardware: confirm that the policy may move the follower arms")
    p.set_defaults(func=run)


def run(args) -> int:
    import dataclasses
    from pathlib import Path

    import numpy as np

    from app.core.autonomy import run_sim_episode
    from drivers.config import SimConfig, load_rig_config
    from drivers.sim.rig import SimRig

    cfg = load_rig_config(args.rig)
    if args.episodes < 1:
        raise ValueError("--episodes must be at least 1")
    if cfg.kind != "sim" or args.realtime:
        return run_realtime(args, cfg)
    policy = None if args.policy == "scripted" else load_chunk_policy(args.policy, args.token,
                                                                      args.task)
    sim = dataclasses.replace(cfg.sim or SimConfig(), realtime=False)
    if args.sim_task:
        sim = dataclasses.replace(sim, task=args.sim_task)
    cfg = cfg.with_(cameras=policy_cameras(cfg, policy), sim=sim)
    delay = _injected_delay(args, 1.0 / cfg.control_hz)
    if delay is None:
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
        "stages": _stages(rows),
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


def _injected_delay(args, dt: float) -> int | None:
    """--inject-delay-ms (rounded up to control steps) or --inject-delay-steps; None if neither."""
    if args.inject_delay_ms is not None:
        if args.inject_delay_ms < 0:
            raise ValueError("--inject-delay-ms must be >= 0")
        return int(math.ceil(args.inject_delay_ms / 1e3 / dt - 1e-9))
    if args.inject_delay_steps is not None:
        if args.inject_delay_steps < 0:
            raise ValueError("--inject-delay-steps must be >= 0")
        return args.inject_delay_steps
    return None


def run_realtime(args, cfg) -> int:
    """Episodes of AutonomyRun on a real-time RigSession (hardware, or the sim with --realtime)."""
    sim = cfg.kind == "sim"
    if args.policy == "scripted" and not sim:
        raise ValueError("the scripted policy plans with the sim's scripted operator: give a "
                         "checkpoint folder or tcp://HOST:PORT as --policy on a hardware rig")
    # a checkpoint runs in a local policy server process: this one holds the control loop (and
    # on the sim rig its physics), whose threads would make the model's ops wait on the GIL
    policy = None if args.policy == "scripted" else load_chunk_policy(args.policy, args.token,
                                                                      args.task, process=True)
    try:
        return _run_realtime(args, cfg, policy)
    finally:
        shutdown = getattr(policy, "shutdown", None)  # a local policy server stops with us
        if shutdown is not None:
            shutdown()


def _run_realtime(args, cfg, policy) -> int:
    import dataclasses
    import signal
    import sys
    import threading

    from app.core.autonomy_run import AutonomyRun
    from app.core.rig_session import RigSession
    from drivers.config import SimConfig

    sim = cfg.kind == "sim"
    changes = {"cameras": policy_cameras(cfg, policy)}
    if sim:
        s = dataclasses.replace(cfg.sim or SimConfig(), realtime=True, seed=args.seed)
        changes["sim"] = dataclasses.replace(s, task=args.sim_task) if args.sim_task else s
    cfg = cfg.with_(**changes)
    seconds = args.seconds if args.seconds is not None else (
        cfg.sim.episode_seconds if sim else 20.0)
    if seconds <= 0:
        raise ValueError("--seconds must be positive")
    inj = _injected_delay(args, 1.0 / cfg.control_hz)
    delay = "measured" if inj is None else inj
    safety = cfg.safety
    plan = (f"policy {args.policy} will drive the follower arms of rig {cfg.name!r} for "
            f"{args.episodes} episode(s) of {seconds:g} s (strategy {args.strategy}, k "
            f"{args.k}): the followers hold until the first chunk is computed, ramp to its first "
            f"action at {safety.ramp_speed_rad_s:g} rad/s, then follow the policy within "
            f"{safety.max_step_rad:g} rad per step. Ctrl-C or SIGTERM is an e-stop: the policy "
            f"stops, the followers hold, then torque goes off.")
    if not sim and not args.yes:
        raise ValueError(f"{plan} Nothing has moved: run again with --yes to let the policy move "
                         f"the arms, with the workspace clear and a hand on the e-stop.")
    if args.json:
        emit_json({"event": "plan", "message": plan})
    else:
        print(plan, flush=True)
    store = None
    if args.store:
        from store import EpisodeStore

        store = EpisodeStore.open(args.store)

    def on_event(ev: dict) -> None:
        if args.json:
            emit_json(ev)
        elif ev["event"] == "state":
            extra = ev.get("error") or ev.get("reason") or ""
            print(f"  {ev['state']}" + (f": {extra}" if extra else ""), flush=True)

    caught: list[str] = []
    interrupted = threading.Event()

    def on_signal(signum, frame) -> None:  # the main loop below presses the e-stop
        caught.append(signal.Signals(signum).name)
        interrupted.set()

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    rows = []
    failed = False
    try:
        with RigSession(cfg) as session:
            for i in range(args.episodes):
                if interrupted.is_set():
                    break
                row = _realtime_episode(args, session, policy, store, delay, seconds, i,
                                        interrupted, on_event, AutonomyRun)
                rows.append(row)
                _print_episode(args, row)
                failed = row["state"] == "failed"
                if failed or interrupted.is_set():
                    break
                if not sim and i + 1 < args.episodes and interrupted.wait(max(args.reset, 0)):
                    break
            if interrupted.is_set():
                session.estop()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if store is not None:
            store.close()
    _print_summary(args, rows)
    if caught:
        msg = (f"e-stop ({caught[0]}): the policy stopped, the followers held and their torque "
               f"is now off. Check the arms and the scene before running again.")
        if args.json:
            emit_json({"event": "estop", "signal": caught[0], "message": msg})
        print(msg, file=sys.stderr, flush=True)
        return 128 + int(getattr(signal, caught[0]))
    return 1 if failed else 0


def _realtime_episode(args, session, policy, store, delay, seconds, i, interrupted, on_event,
                      run_cls) -> dict:
    import time
    from pathlib import Path

    import numpy as np

    from app.core.scripted_policy import ScriptedChunkPolicy
    from xr0.runtime import Flag

    sim = session.config.kind == "sim"
    seed = args.seed + i
    t_reset = time.monotonic()
    if sim:
        session.rig.reset(seed)
    done_at: list[float] = []
    last_info: dict = {}

    def watch(rec) -> None:
        info = rec.state.info
        last_info.update(info)
        if sim and not done_at and info.get("success") and rec.t >= t_reset:
            done_at.append(float(info.get("sim_time", 0.0)))

    session.add_listener(watch)
    session.period_error.clear()
    pol = ScriptedChunkPolicy(session.rig, chunk_length=args.chunk) if policy is None else policy
    run = run_cls(session, pol, strategy=args.strategy, k=args.k, instruction=args.task,
                  delay=delay, store=store, on_event=on_event, policy_name=args.policy,
                  run_dir=Path(args.save) / f"episode_{seed}" if args.save else None)
    run.start()
    t_run = None
    try:
        while not interrupted.wait(0.02):
            if run.state in ("stopped", "failed"):
                break
            if t_run is None and run.state == "running":
                t_run = time.monotonic()
            if sim:
                rec = session.latest()
                if (rec is not None and rec.t >= t_reset
                        and rec.state.info.get("sim_time", 0.0) >= seconds - 0.5 * run.dt):
                    break
            elif t_run is not None and time.monotonic() - t_run >= seconds:
                break
        if interrupted.is_set():
            session.estop()
            run.wait(("stopped", "failed"), 1.0)  # the run sees the e-stop and says so
    finally:
        run.stop(reason="e-stop pressed" if interrupted.is_set() else "the episode's time is up")
        session.remove_listener(watch)
    snap = run.telemetry.snapshot() if run.telemetry is not None else {"step_flags": []}
    flags = int(np.bitwise_or.reduce(snap["step_flags"])) if len(snap["step_flags"]) else 0
    return {
        "event": "episode", "episode": i, "seed": seed if sim else None, "state": run.state,
        "seconds": round(time.monotonic() - t_run, 2) if t_run is not None else 0.0,
        "success": bool(last_info.get("success")) if sim else None,
        # the furthest stage the task reached (transfer cube: 1 touched, 2 lifted, 3 both
        # grippers on it, 4 transferred), which tells a near miss from a policy gone astray
        "max_reward": last_info.get("episode_max_reward") if sim else None,
        "completion_s": done_at[0] if done_at else None,
        **run.metrics(), "flags": Flag.names(flags), "error": run.error,
        "reason": run.reason, "run_id": run.run_id, "telemetry": [str(p) for p in run.saved],
    }


def _stages(rows: list[dict]) -> dict[str, int]:
    """How many episodes got furthest to each stage of the task (its reward levels)."""
    reached = [r.get("max_reward") for r in rows if r.get("max_reward") is not None]
    return {str(s): reached.count(s) for s in sorted(set(reached))}


def _fmt(x, spec: str = ".0f") -> str:
    return "n/a" if x is None or x != x else format(x, spec)


def _print_episode(args, r: dict) -> None:
    if args.json:
        emit_json(r)
        return
    head = f"seed {r['seed']}" if r["seed"] is not None else f"episode {r['episode'] + 1}"
    result = "" if r["success"] is None else (", success" if r["success"] else ", failure")
    print(f"{head}: {r['state']}{result}"
          + (f" in {r['completion_s']:.2f} s" if r["completion_s"] else "")
          + f", latency p50 {_fmt(r['latency_ms_p50'])} ms p95 {_fmt(r['latency_ms_p95'])} ms, "
          f"boundary discontinuity {_fmt(r['boundary_discontinuity'], '.2f')} (max "
          f"{_fmt(r['boundary_discontinuity_max'], '.2f')}), RMS jerk {_fmt(r['rms_jerk'])} "
          f"rad/s^3, period error p99 {_fmt(r['period_error_ms_p99'], '.2f')} ms"
          + (f", flags {', '.join(r['flags'])}" if r["flags"] else "")
          + (f"\n  error: {r['error']}" if r["error"] else ""), flush=True)


def _print_summary(args, rows: list[dict]) -> None:
    import numpy as np

    def mean(key):
        v = [r[key] for r in rows if r[key] is not None and r[key] == r[key]]
        return float(np.mean(v)) if v else None

    sims = [r for r in rows if r["success"] is not None]
    summary = {
        "event": "summary", "strategy": args.strategy, "episodes": len(rows),
        "success_rate": sum(r["success"] for r in sims) / len(sims) if sims else None,
        "stages": _stages(sims),
        "latency_ms_p50": mean("latency_ms_p50"), "latency_ms_p95": mean("latency_ms_p95"),
        "boundary_discontinuity": mean("boundary_discontinuity"), "rms_jerk": mean("rms_jerk"),
        "period_error_ms_p99": max((r["period_error_ms_p99"] for r in rows
                                    if r["period_error_ms_p99"] == r["period_error_ms_p99"]),
                                   default=None),
    }
    if args.json:
        emit_json(summary)
    else:
        print(f"{args.strategy}: {len(rows)} episode(s)"
              + (f", success {summary['success_rate']:.0%}" if sims else "")
              + f", latency p50 {_fmt(summary['latency_ms_p50'])} ms, boundary discontinuity "
              f"{_fmt(summary['boundary_discontinuity'], '.2f')}, RMS jerk "
              f"{_fmt(summary['rms_jerk'])}, period error p99 "
              f"{_fmt(summary['period_error_ms_p99'], '.2f')} ms")
