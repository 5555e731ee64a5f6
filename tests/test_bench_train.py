"""`main.py bench train --quick` end to end (real recording, real trainers, real sim evaluations),
stopped with Ctrl-C in the middle of a stage and run again on its folder: the second run records
nothing again, skips the finished stage, resumes the cut-short one from its checkpoint and counts
what the first run spent; a third run only reads back what is done."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.core.jobs import trainer_alive
from bench.train import STAGES, _Ledger, _recipe
from xr0.train.rundir import read_events

ROOT = Path(__file__).resolve().parent.parent
CMD = [sys.executable, "main.py", "bench", "train", "--quick", "--json"]


def _starts(run: Path) -> list[dict]:
    return [e for e in read_events(run) if e["event"] == "start"]


def _figures(stdout: str) -> dict[str, dict]:
    return {f["name"]: f for f in map(json.loads, (x for x in stdout.splitlines()
                                                  if x.startswith("{")))
            if f.get("bench") == "train"}


def test_a_stopped_bench_continues_where_it_left_off(tmp_path):
    folder = tmp_path / "bench"
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "osmesa"),
           "XR0_BENCH_TRAIN_DIR": str(folder)}
    stage2 = folder / "run" / "stage2"
    first = subprocess.Popen(CMD, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 400
    while not _starts(stage2):                 # stage 2's trainer is in its loop
        assert first.poll() is None, first.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "stage 2 never started"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGINT)        # Ctrl-C on the terminal: the bench and its trainer
    first.communicate(timeout=120)
    assert first.returncode != 0
    while not [e for e in read_events(stage2) if e["event"] == "done"]:
        assert time.monotonic() < deadline, "the cancelled trainer never wrote its checkpoint"
        time.sleep(0.1)
    [cancelled] = [e for e in read_events(stage2) if e["event"] == "done"]
    assert cancelled["status"] == "cancelled" and cancelled["step"] < 4
    pid = json.loads((stage2 / "run.json").read_text())["pid"]
    while trainer_alive(pid, stage2):          # it exits after its last event
        assert time.monotonic() < deadline
        time.sleep(0.1)

    second = subprocess.run(CMD, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-4000:]
    figs = _figures(second.stdout)

    assert len(_starts(folder / "run" / "stage1")) == 1         # finished: not trained again
    s2 = _starts(stage2)
    assert len(s2) == 2 and s2[1]["step"] == cancelled["step"]  # resumed from its checkpoint
    assert [e["step"] for e in read_events(stage2) if e["event"] == "done"][-1] == 4
    for i in range(3, len(STAGES) + 1):
        assert len(_starts(folder / "run" / f"stage{i}")) == 1
    ledger = json.loads((folder / "bench.json").read_text())
    assert [c["what"] for c in ledger["commands"]].count("record") == 1   # recorded once
    assert "demonstrations recorded" in figs and figs["demonstrations recorded"]["value"] == 3

    time_fig = figs["tiny-scratch training time"]
    assert figs["tiny-scratch training throughput"]["detail"]["interrupted_attempts"] == 1
    assert "1 attempt(s) cut short" in time_fig["anchor"]
    finished = sum(c["wall_s"] for c in ledger["commands"] if c["what"].startswith("stage"))
    assert time_fig["value"] > finished        # the cut-short attempt is counted too
    assert figs["tiny-scratch training throughput"]["value"] > 0
    assert figs["tiny-scratch peak RSS"]["value"] > 100
    success = [f for n, f in figs.items() if n.startswith("success rate after stage")]
    assert [f["name"] for f in success] == [f"success rate after stage '{n}'"
                                            for n, _, _ in STAGES[-3:]]
    assert all(0.0 <= f["value"] <= 1.0 for f in success)
    assert sorted(ledger["evals"]) == sorted(n for n, _, _ in STAGES[-3:])

    third = subprocess.run(CMD, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-4000:]
    assert json.loads((folder / "bench.json").read_text())["commands"] == ledger["commands"]
    again = _figures(third.stdout)
    for name in ("tiny-scratch training time", *(f["name"] for f in success)):
        assert again[name]["value"] == figs[name]["value"]


def test_a_bench_folder_must_be_new_a_store_or_an_earlier_bench(tmp_path):
    recipe = _recipe(True, 3, 1)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="no bench"):
        _Ledger(tmp_path / "other", recipe)
    (tmp_path / "store_only" / "store").mkdir(parents=True)
    _Ledger(tmp_path / "store_only", recipe)                  # trains on the store's episodes
    _Ledger(tmp_path / "store_only", recipe)                  # and continues
    with pytest.raises(ValueError, match="another recipe"):
        _Ledger(tmp_path / "store_only", _recipe(False, 150, 50))
