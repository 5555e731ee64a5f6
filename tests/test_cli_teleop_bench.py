"""Headless commands end to end as a user runs them: `teleop` on the sim rig and `bench rig`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*args, timeout=240):
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "osmesa")}
    return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_teleop_on_the_sim_rig_json():
    r = _run("teleop", "--rig", "sim", "--seconds", "3", "--json")
    assert r.returncode == 0, r.stderr + r.stdout
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["event"] for x in lines].count("status") >= 2
    summary = lines[-1]
    assert summary["event"] == "summary" and summary["rig"] == "sim-aloha"
    assert summary["teleop"] == "engaged" and not summary["stop_reason"]
    assert 140 <= summary["steps"] <= 155  # 3 s at 50 Hz
    assert summary["reward"] is not None


def test_unknown_rig_is_one_clear_message():
    r = _run("teleop", "--rig", "no-such-rig", "--json")
    assert r.returncode == 2
    err = json.loads(r.stdout.splitlines()[-1])
    assert err["event"] == "error" and "not found" in err["message"] and "sim" in err["message"]
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_bench_rig_prints_one_json_line_per_figure():
    r = _run("bench", "rig", "--quick", "--json", timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    figs = [json.loads(x) for x in r.stdout.splitlines()]
    names = {f["name"] for f in figs}
    assert {"teleop_cycles_parallel", "loop_period_error_p99", "sim_rtf"} <= names
    for f in figs:
        assert set(f) >= {"name", "value", "unit", "goal", "anchor"}
        assert f["bench"] == "rig" and isinstance(f["value"], (int, float))
