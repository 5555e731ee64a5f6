"""`python main.py episodes --store DIR [--status S] [--json]`: the episodes of a store.

One row per episode: id, task, status, duration, frames per camera, success, tags; episodes whose
files do not read back are listed with the reason. Opening the store also marks recordings whose
process died as incomplete (recover or discard them).
"""

from __future__ import annotations

from app.cli.output import emit_json, error, table


def register(sub) -> None:
    p = sub.add_parser("episodes", help="list the recorded episodes of a store")
    p.add_argument("--store", required=True, help="the episode store folder")
    p.add_argument("--status", default=None,
                   choices=["recording", "complete", "discarded", "incomplete"],
                   help="only episodes with this status (default: all)")
    p.add_argument("--json", action="store_true", help="one JSON object per episode")
    p.set_defaults(func=run)


def run(args) -> int:
    from store import EpisodeStore, StoreError

    try:
        store = EpisodeStore.open(args.store)
        with store:
            rows = []
            for e in store.episodes(status=args.status):
                problem = store.problem(e.id) if e.status in ("complete", "incomplete") else None
                rows.append({
                    "id": e.id, "task": e.task, "status": e.status,
                    "duration_s": None if e.duration_s is None else round(e.duration_s, 2),
                    "steps": e.steps, "frames": e.frame_counts, "success": e.success,
                    "tags": e.tags, "notes": e.notes, "problem": problem,
                })
            recovered = list(store.recovered)
    except StoreError as e:
        if args.json:
            emit_json({"event": "error", "error": type(e).__name__, "message": str(e)})
        error(str(e))
        return 2
    if args.json:
        for r in rows:
            emit_json({"event": "episode", **r})
        return 0
    for eid in recovered:
        print(f"episode {eid} was left recording by a process that stopped: now incomplete "
              f"(recover or discard it)")
    print(table([{
        "id": r["id"], "task": r["task"], "status": r["status"] + (" (unreadable)" if r["problem"]
                                                                    else ""),
        "duration": "" if r["duration_s"] is None else f"{r['duration_s']:.1f} s",
        "frames": " ".join(f"{c}:{n}" for c, n in r["frames"].items()) or "-",
        "success": {True: "yes", False: "no", None: "-"}[r["success"]],
        "tags": ",".join(r["tags"]),
    } for r in rows], ["id", "task", "status", "duration", "frames", "success", "tags"]))
    for r in rows:
        if r["problem"]:
            print(f"  {r['problem']}")
    return 0
