"""`python main.py replay --store DIR --episode ID --rig sim|CONFIG [--json]`: play a recorded
episode's actions on the followers after a safe ramp to its first pose. On the sim rig the scene
is reset to the episode's seed first, so the replay meets the same objects."""

from __future__ import annotations

import time

from app.cli.output import emit_json


def register(sub) -> None:
    p = sub.add_parser("replay", help="play a recorded episode back on the rig (after a safe ramp)")
    p.add_argument("--store", required=True, help="episode store folder")
    p.add_argument("--episode", type=int, required=True, help="episode id (see `episodes`)")
    p.add_argument("--rig", default="sim", help="'sim', a name in assets/rigs, or a .toml path")
    p.add_argument("--json", action="store_true", help="JSON lines: progress + summary")
    p.set_defaults(func=run)


def run(args) -> int:
    from app.core.recorder import recorded_seed
    from app.core.rig_session import RigSession
    from drivers import layout
    from drivers.config import load_rig_config
    from drivers.errors import RigError
    from drivers.replay import ReplaySource, ReplayState
    from store import EpisodeStore

    cfg = load_rig_config(args.rig)
    store = EpisodeStore.open(args.store)
    data = store.episode(args.episode)
    if list(data.joint_names) != list(layout.NAMES):
        raise ValueError(f"episode {args.episode} was recorded with joints {data.joint_names}; "
                         f"this rig's are {list(layout.NAMES)}: replay it on a matching rig")
    session = RigSession(cfg)
    with session:
        seed = recorded_seed(store, args.episode)
        if cfg.kind == "sim" and seed is not None and hasattr(session.rig, "reset"):
            session.rig.reset(seed)
        replay = ReplaySource(session.rig, data.action)
        session.set_source(replay)
        t0 = time.monotonic()
        next_report = t0
        while replay.state is not ReplayState.DONE:
            st = session.status()
            if st.error or st.estopped:
                raise RigError(f"replay stopped: {st.error or 'e-stop'}; followers hold")
            if time.monotonic() >= next_report:
                next_report += 1.0
                ev = {"event": "progress", "state": replay.state.value,
                      "step": replay.index + 1, "of": len(replay.actions)}
                emit_json(ev) if args.json else print(
                    f"{ev['state']}: {ev['step']}/{ev['of']}")
            time.sleep(0.02)
        time.sleep(0.2)
        info = dict(session.latest().state.info)
        session.set_source(None)
    summary = {"event": "summary", "episode": args.episode, "steps": len(replay.actions),
               "seconds": round(time.monotonic() - t0, 2), "success": info.get("success")}
    if args.json:
        emit_json(summary)
    else:
        print(f"replayed episode {args.episode}: {summary['steps']} steps in "
              f"{summary['seconds']} s" + (f", task success {summary['success']}"
                                           if "success" in info else ""))
    return 0
