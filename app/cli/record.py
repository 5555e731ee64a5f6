"""`python main.py record --rig sim|CONFIG --task TEXT --episodes N [--seconds S] --store DIR
[--stepping [--seed S]] [--aim-noise M] [--handover-delay S] [--json]`: record demonstrations headless. On the sim rig the scripted
operator plays the leader arms (one seeded episode each), in real time or, with --stepping, one
control period at a time with every camera frame; on hardware the leader arms drive the
followers, with a warm-up before and a reset period after each episode."""

from __future__ import annotations

import dataclasses
import math
import time

from app.cli.output import emit_json, error


def register(sub) -> None:
    p = sub.add_parser("record", help="record demonstrations into an episode store")
    p.add_argument("--rig", default="sim", help="'sim', a name in assets/rigs, or a .toml path")
    p.add_argument("--task", required=True, help="the language instruction of these episodes")
    p.add_argument("--episodes", type=int, default=1, help="how many episodes (default 1)")
    p.add_argument("--seconds", type=float, default=None,
                   help="episode length (default: the sim episode, or 20 s on hardware)")
    p.add_argument("--warmup", type=float, default=3.0, help="hardware: seconds before each")
    p.add_argument("--reset", type=float, default=5.0, help="hardware: seconds between episodes")
    p.add_argument("--store", required=True, help="episode store folder (created if missing)")
    p.add_argument("--quality", default="high", choices=("high", "lossless"),
                   help="video: H.264 high quality (default) or lossless")
    p.add_argument("--tag", action="append", default=[], help="tag the episodes (repeatable)")
    p.add_argument("--stepping", action="store_true",
                   help="sim rig: step the sim instead of running it in real time, so every "
                        "control step and camera frame is recorded whatever the CPU load")
    p.add_argument("--seed", type=int, default=None,
                   help="with --stepping: the scene seed of the first episode, the next ones "
                        "follow it (default: the rig config's seed + 1, + 2, ...)")
    p.add_argument("--aim-noise", type=float, default=None, metavar="M",
                   help="sim rig: the scripted operator aims each arm's first reach a random "
                        "horizontal offset (std M metres per axis, from the scene seed) off the "
                        "object and corrects it on the way down, so the demonstrations show "
                        "corrections (e.g. 0.02; default: the rig config's, 0)")
    p.add_argument("--handover-delay", type=float, default=None, metavar="S",
                   help="sim rig, transfer cube: the scripted operator's left arm waits a random "
                        "extra time (uniform in [0, S] seconds, from the scene seed, at most 0.6) "
                        "before it comes in for the hand-over, so the demonstrations close the "
                        "left gripper when the arm arrives, not at a fixed step (default: the rig "
                        "config's, 0)")
    p.add_argument("--json", action="store_true", help="JSON lines: phases, episodes, summary")
    p.set_defaults(func=run)


def run(args) -> int:
    from app.core.recorder import CyclePlan, EpisodeCycle
    from app.core.rig_session import RigSession
    from drivers.config import load_rig_config
    from store import EpisodeStore, StoreError

    if args.episodes < 1:
        raise ValueError("--episodes must be at least 1")
    cfg = load_rig_config(args.rig)
    if args.seed is not None and not args.stepping:
        raise ValueError("--seed picks the scenes of a stepping recording: add --stepping")
    if args.aim_noise is not None:
        if cfg.kind != "sim":
            raise ValueError("--aim-noise sets the sim's scripted operator: hardware episodes are "
                             "demonstrated by a person")
        if not (args.aim_noise >= 0.0 and math.isfinite(args.aim_noise)):
            raise ValueError(f"--aim-noise is a standard deviation in metres, >= 0: "
                             f"{args.aim_noise}")
        cfg = cfg.with_(sim=dataclasses.replace(cfg.sim, aim_noise=float(args.aim_noise)))
        if args.aim_noise > 0:
            args.tag = [*args.tag, f"aim-noise:{args.aim_noise:g}"]
    if args.handover_delay is not None:
        from drivers.sim.operator import check_handover_delay

        if cfg.kind != "sim":
            raise ValueError("--handover-delay sets the sim's scripted operator: hardware "
                             "episodes are demonstrated by a person")
        try:
            check_handover_delay(args.handover_delay, cfg.sim.task)
        except ValueError as e:
            raise ValueError(f"--handover-delay: {e}") from None
        cfg = cfg.with_(sim=dataclasses.replace(cfg.sim, handover_delay=float(args.handover_delay)))
        if args.handover_delay > 0:
            args.tag = [*args.tag, f"handover-delay:{args.handover_delay:g}"]
    try:
        store = EpisodeStore.open(args.store)
    except StoreError as e:
        if args.json:
            emit_json({"event": "error", "error": type(e).__name__, "message": str(e)})
        error(str(e))
        return 2
    seconds = args.seconds if args.seconds is not None else (
        cfg.sim.episode_seconds if cfg.kind == "sim" else 20.0)

    def on_event(ev: dict) -> None:
        if args.json:
            emit_json(ev)
        elif ev["event"] == "phase" and ev["phase"] in ("warm-up", "recording", "reset"):
            if ev["seconds"] > 0:
                print(f"episode {ev['episode']}/{ev['of']}: {ev['phase']} ({ev['seconds']:.0f} s)")
        elif ev["event"] == "episode":
            frames = ", ".join(f"{k} {v}" for k, v in ev["frames"].items())
            print(f"episode {ev['id']} saved: {ev['duration_s']:.1f} s, {ev['steps']} steps, "
                  f"frames {frames}, success {ev['success']}")
        elif ev["event"] == "discard" and ev.get("reason"):
            print(f"episode {ev['id']} not kept: {ev['reason']}")

    if args.stepping:
        return _run_stepping(args, cfg, store, seconds, on_event)
    plan = CyclePlan(task=args.task, episodes=args.episodes, seconds=seconds,
                     warmup_s=args.warmup, reset_s=args.reset, tags=tuple(args.tag),
                     quality=args.quality)
    session = RigSession(cfg)
    with session:
        cycle = EpisodeCycle(session, store, plan, on_event=on_event)
        cycle.start()
        try:
            while cycle.phase.value not in ("done", "failed"):
                time.sleep(0.05)
        except KeyboardInterrupt:
            cycle.stop()
        cycle.join(timeout=30)
    store.close()
    summary = {"event": "summary", "store": str(args.store), "episodes": [i.id for i in cycle.done],
               "error": cycle.error}
    if args.json:
        emit_json(summary)
    else:
        print(f"{len(cycle.done)} episode(s) recorded into {args.store}")
    if cycle.error:
        error(cycle.error)
        return 1
    return 0


def _run_stepping(args, cfg, store, seconds, on_event) -> int:
    from app.core.sim_record import SimRecordError, record_stepping
    from store import StoreError
    from store.video import VideoError

    done, err = [], ""
    try:
        seeds = None if args.seed is None else range(args.seed, args.seed + args.episodes)
        done = record_stepping(cfg, store, args.task, args.episodes, seconds, tags=tuple(args.tag),
                               quality=args.quality, seeds=seeds, on_event=on_event)
    except (SimRecordError, StoreError, VideoError, ValueError) as e:
        err = str(e)
    finally:
        store.close()
    if args.json:
        emit_json({"event": "summary", "store": str(args.store), "episodes": [i.id for i in done],
                   "error": err})
    else:
        print(f"{len(done)} episode(s) recorded into {args.store}")
    if err:
        error(err)
        return 1
    return 0
