"""LeRobot v3.0 datasets, so demonstrations move between the workstation and LeRobot or openpi.

    python main.py export --store DIR --out DIR [--episodes 1,3,5-9] [--repo-id local/NAME]
                          [--fps F] [--vcodec av1|h264] [--json]
    python main.py import --lerobot DIR --store DIR [--json]

Export refuses a non-empty --out; import checks the whole dataset before the store is opened, so
bad input leaves the store as it was. Progress: a tqdm bar, or one JSON line per event with --json.
"""

from __future__ import annotations

from app.cli.output import emit_json, error


def register(sub) -> None:
    p = sub.add_parser("export", help="export episodes as a LeRobot v3.0 dataset")
    p.add_argument("--store", required=True, help="the episode store folder")
    p.add_argument("--out", required=True, help="a new or empty folder for the dataset")
    p.add_argument("--episodes", default=None,
                   help="episode ids, e.g. 1,3,5-9 (default: every complete episode)")
    p.add_argument("--repo-id", default=None,
                   help="the dataset's name for LeRobot, e.g. local/towels (default: "
                        "local/<name of --out>)")
    p.add_argument("--fps", type=float, default=None,
                   help="rows per second (default: the control rate the episodes were recorded at)")
    p.add_argument("--vcodec", default="av1", choices=["av1", "h264"],
                   help="video codec (default av1, as LeRobot's own datasets)")
    p.add_argument("--json", action="store_true", help="one JSON object per event")
    p.set_defaults(func=run_export)

    p = sub.add_parser("import", help="import a LeRobot v3.0 dataset into a store")
    p.add_argument("--lerobot", required=True, help="the dataset's root folder (has meta/info.json)")
    p.add_argument("--store", required=True, help="the episode store folder")
    p.add_argument("--json", action="store_true", help="one JSON object per event")
    p.set_defaults(func=run_import)


def parse_ids(text: str) -> list[int]:
    """'1,3,5-9' -> [1, 3, 5, 6, 7, 8, 9]"""
    from store.selection import parse_episode_ids

    try:
        ids = parse_episode_ids(text)
    except ValueError as e:
        raise ValueError(f"--episodes: {e}") from None
    if not ids:
        raise ValueError(f"--episodes {text!r} names no episode: give ids like 1,3,5-9")
    return ids


class _Progress:
    """tqdm over episodes, or JSON lines."""

    def __init__(self, as_json: bool, what: str):
        self.json, self.what, self.bar = as_json, what, None

    def __call__(self, e: dict) -> None:
        if self.json:
            emit_json(e)
            return
        if e["event"] == "start":
            from tqdm import tqdm

            self.bar = tqdm(total=e["episodes"], unit="episode", desc=self.what)
        elif e["event"] == "episode" and self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(frames=e["frames"])
        elif e["event"] == "done" and self.bar is not None:
            self.bar.close()


def _fail(args, e: Exception) -> int:
    if args.json:
        emit_json({"event": "error", "error": type(e).__name__, "message": str(e)})
    error(str(e))
    return 2


def run_export(args) -> int:
    from pathlib import Path

    from store import EpisodeStore, StoreError
    from store.lerobot import LeRobotFormatError, export_dataset

    try:
        ids = parse_ids(args.episodes) if args.episodes else None
        if not Path(args.store, "index.db").is_file():
            raise LeRobotFormatError(f"{args.store} is not an episode store (no index.db): give "
                                     f"--store the folder you record into")
        repo_id = args.repo_id or f"local/{Path(args.out).absolute().name}"
        with EpisodeStore.open(args.store) as store:
            r = export_dataset(store, args.out, episodes=ids, repo_id=repo_id, fps=args.fps,
                               vcodec=args.vcodec, on_event=_Progress(args.json, "export"))
    except (StoreError, LeRobotFormatError, ValueError) as e:
        return _fail(args, e)
    if not args.json:
        print(f"exported {len(r.episodes)} episodes ({r.frames} frames at {r.fps} fps) to "
              f"{r.out}; load it with LeRobotDataset({repo_id!r}, root={str(r.out)!r})")
    return 0


def run_import(args) -> int:
    from store import EpisodeStore, StoreError
    from store.lerobot import LeRobotFormatError, import_dataset, read_dataset

    try:
        ds = read_dataset(args.lerobot)  # checked before the store is opened or created
        with EpisodeStore.open(args.store) as store:
            ids = import_dataset(ds, store, on_event=_Progress(args.json, "import"))
    except (StoreError, LeRobotFormatError, ValueError) as e:
        return _fail(args, e)
    if not args.json:
        print(f"imported {len(ids)} episodes into {args.store}: ids {', '.join(map(str, ids))}")
    return 0
