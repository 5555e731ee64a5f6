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
    from app.cli import COMMANDS

    r = subprocess.run([sys.executable, "main.py", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for name in COMMANDS:
        assert name in r.stdout, f"--help does not list '{name}'"
