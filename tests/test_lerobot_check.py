"""LeRobot's own LeRobotDataset (lerobot 0.4.x, torchcodec) loads an export of a real store.

Runs scripts/lerobot-check as a subprocess: it builds .venv-lerobot when missing or stale (about
a minute and a half on a fresh machine, see the script) and compares what LeRobot reads with the
store. Building it needs the package registries, like the rest of `scripts/dev test`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from store.lerobot import export_dataset
from test_lerobot import make_store

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "lerobot-check"


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("vcodec", ["av1", "h264"])
def test_lerobot_dataset_loads_export(tmp_path, vcodec):
    setup = subprocess.run(["bash", str(SCRIPT), "--setup-only"], capture_output=True, text=True,
                           timeout=840)
    assert setup.returncode == 0, f"building .venv-lerobot failed:\n{setup.stderr[-3000:]}"
    store = make_store(tmp_path / "store")
    export_dataset(store, tmp_path / "out", repo_id="local/check", vcodec=vcodec)
    store.close()
    r = subprocess.run(["bash", str(SCRIPT), "--dataset", str(tmp_path / "out"), "--store",
                        str(tmp_path / "store"), "--repo-id", "local/check", "--samples", "5"],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HOME_LEROBOT": str(tmp_path / "hf")})
    lines = [x for x in r.stdout.splitlines() if x.startswith("{")]
    assert lines, f"no JSON from the check (rc {r.returncode}):\n{r.stderr[-3000:]}"
    out = json.loads(lines[-1])
    sys.stdout.write(lines[-1] + "\n")
    assert out["failures"] == [] and out["ok"] and r.returncode == 0
    assert out["video_backend"] == "torchcodec"
    assert out["lerobot_len"] == out["store_steps"] == out["rows_compared"] == 155
    assert out["episodes"] == 3 and out["fps"] == 50
    assert out["tasks"] == ["fold the towel", "pick up the cube"]
    assert out["frames_compared"] >= 3 * 5 * 2 and out["worst_psnr_db"] > 30
