"""The house rules hold: import-linter contracts from pyproject.toml, and --help lists commands."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_hold():
    exe = Path(sys.executable).parent / "lint-imports"
    r = subprocess.run([str(exe), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "BROKEN" not in r.stdout


def test_help_lists_every_command():
    import argparse

    from app.cli import COMMANDS, build_parser

    r = subprocess.run([sys.executable, "main.py", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    [sub] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    names = list(sub.choices)
    # every module of the registry registers at least one command (lerobot: export and import)
    assert len(names) >= len(COMMANDS) and {"export", "import", "train", "run", "serve"} <= set(names)
    for name in names:
        assert name in r.stdout, f"--help does not list '{name}'"
