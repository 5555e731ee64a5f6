"""`python main.py gui`: open the desktop workstation (the default with no command)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("gui", help="open the desktop app (default)")
    p.add_argument("--rig", default="sim", help="rig config: 'sim' (default), a name in "
                   "assets/rigs, or a path to a .toml file")
    p.add_argument("--data", default=None,
                   help="folder of the episode store and fine-tune runs (default: the last one "
                        "used, else ~/xr0-data)")
    p.add_argument("--screenshot-dir", default=None,
                   help="save a screenshot of each tab here once the window is up")
    p.add_argument("--quit-after", type=float, default=None,
                   help="close the window after this many seconds (smoke tests)")
    p.set_defaults(func=run)


def run(args) -> int:
    from app.qt.main import run_app  # Qt is imported only for the GUI

    return run_app(rig=args.rig, screenshot_dir=args.screenshot_dir, quit_after=args.quit_after,
                   data=args.data)
