"""`python main.py teleop --rig sim|CONFIG [--seconds S] [--json]`: headless teleoperation.

Leaders drive followers through the safe ramp and the clamps of the rig config; on the sim rig
the scripted operator plays the leader arms. Ctrl-C (or the time limit) stops: followers hold,
then torque off.
"""

from __future__ import annotations

import time

from app.cli.output import emit_json


def register(sub) -> None:
    p = sub.add_parser("teleop", help="teleoperate headless: leader arms (or the sim's scripted "
                       "operator) drive the followers")
    p.add_argument("--rig", default="sim", help="'sim', a name in assets/rigs, or a .toml path")
    p.add_argument("--seconds", type=float, default=None,
                   help="stop after this long (default: the sim episode length; hardware: Ctrl-C)")
    p.add_argument("--seed", type=int, default=None, help="sim episode seed")
    p.add_argument("--json", action="store_true", help="JSON lines: one status per second + summary")
    p.set_defaults(func=run)


def run(args) -> int:
    import dataclasses

    from app.core.rig_session import RigSession
    from drivers.config import load_rig_config
    from drivers.errors import RigError

    cfg = load_rig_config(args.rig)
    if cfg.kind == "sim" and args.seed is not None:
        cfg = cfg.with_(sim=dataclasses.replace(cfg.sim, seed=args.seed))
    seconds = args.seconds
    if seconds is None and cfg.kind == "sim":
        seconds = cfg.sim.episode_seconds
    session = RigSession(cfg)
    last_info: dict = {}
    with session:
        session.engage()
        t0 = time.monotonic()
        next_report = t0 + 1.0
        try:
            while seconds is None or time.monotonic() - t0 < seconds:
                time.sleep(0.05)
                st = session.status()
                if st.error:
                    raise RigError(f"control loop stopped: {st.error}; followers were set to hold and "
                                   f"torque off. Fix the cause, then start again.")
                rec = session.latest()
                if rec is not None:
                    last_info = dict(rec.state.info)
                if time.monotonic() >= next_report:
                    next_report += 1.0
                    line = {"event": "status", "t": round(time.monotonic() - t0, 2),
                            "teleop": st.teleop, "rate_hz": round(st.rate_hz, 2),
                            "period_error_p99_ms": round(st.period_error_ms.get("p99", 0), 3),
                            **{k: v for k, v in last_info.items() if k in ("reward", "success")}}
                    if args.json:
                        emit_json(line)
                    else:
                        print(" ".join(f"{k}={v}" for k, v in line.items() if k != "event"))
                    if st.stop_reason:
                        break
        except KeyboardInterrupt:
            pass
        st = session.status()
    summary = {
        "event": "summary", "rig": cfg.name, "steps": st.steps, "rate_hz": st.rate_hz,
        "period_error_ms": st.period_error_ms, "missed_ticks": st.missed_ticks,
        "teleop": st.teleop, "stop_reason": st.stop_reason,
        "reward": last_info.get("reward"), "success": last_info.get("success"),
    }
    if args.json:
        emit_json(summary)
    else:
        pe = st.period_error_ms
        print(f"{st.steps} steps at {st.rate_hz:.1f} Hz; period error p50 {pe['p50']:.3f} ms, "
              f"p99 {pe['p99']:.3f} ms; teleop {st.teleop}"
              + (f" ({st.stop_reason})" if st.stop_reason else ""))
        if "success" in last_info:
            print(f"task reward {last_info.get('reward')} / success {last_info.get('success')}")
    return 0 if not st.stop_reason else 1
