"""The Fine-tune tab on a real store recorded from the sim rig: one click starts a real trainer
process, the progress bar and the plots follow its events, the run ends with a checkpoint in the
runs table; a tab created again follows a running job and cancels it to a valid checkpoint; bad
inputs are refused with a message before anything starts."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QImage

from app.core.recorder import CyclePlan, EpisodeCycle
from app.core.rig_session import RigSession
from app.qt.finetune_tab import FineTuneTab
from drivers.config import load_rig_config
from store import EpisodeStore
from xr0.train.config import PRESETS
from xr0.train.rundir import TRAINING_STATE, RunDir

pytestmark = pytest.mark.gui

TASK = "transfer the cube"
# the fastest trainer settings that still train and validate (as in test_jobs / test_train)
OPTIONS = "--micro-batch 2 --workers 0 --checkpoint-every 1000 --warmup 2"


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    """Two real 1.5 s episodes recorded from the sim rig (cameras as light as the sim_config
    fixture makes them; that fixture is per test, this store is shared by the module)."""
    cfg = load_rig_config("sim")
    cfg = cfg.with_(cameras=tuple(dataclasses.replace(c, width=240, height=180, fps=15)
                                  for c in cfg.cameras))
    root = tmp_path_factory.mktemp("finetune") / "store"
    with EpisodeStore.open(root) as store, RigSession(cfg) as session:
        cycle = EpisodeCycle(session, store, CyclePlan(task=TASK, episodes=2, seconds=1.5))
        cycle.start()
        cycle.join(timeout=60)
        assert cycle.error == "" and cycle.phase.value == "done", cycle.error
        assert [e.id for e in store.episodes(status="complete")] == [1, 2]
    return root


@pytest.fixture
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")   # the trainer shares 2 cores with the test


def make_tab(qtbot, store_dir, runs_dir) -> tuple[FineTuneTab, list, list]:
    tab = FineTuneTab(store_dir, runs_dir)
    qtbot.addWidget(tab)
    errors, ready = [], []
    tab.error.connect(lambda title, text: errors.append(f"{title}: {text}"))
    tab.checkpoint_ready.connect(ready.append)
    tab.resize(1200, 820)
    tab.show()
    return tab, errors, ready


def fill(tab: FineTuneTab, steps: int, val_every: int) -> None:
    tab.preset.setCurrentText("tiny-scratch")
    tab.steps.setValue(steps)
    tab.batch.setValue(2)
    tab.val_episodes.setValue(1)
    tab.options.setText(f"{OPTIONS} --val-every {val_every}")
    tab.base.setCurrentText("xr0-tiny")


def points(curve) -> int:
    y = curve.getData()[1]
    return 0 if y is None else len(y)


def row_of(tab: FineTuneTab, run_dir: Path) -> dict:
    (i,) = [i for i, r in enumerate(tab.runs) if r.run_dir == run_dir.resolve()]
    return {c: tab.table.item(i, k).text() for k, c in enumerate(tab.COLUMNS)}


def test_one_click_trains_to_a_checkpoint_with_progress_and_plots(qtbot, isolated_settings,
                                                                    store_dir, tmp_path, one_thread):
    runs_dir = tmp_path / "runs"
    tab, errors, ready = make_tab(qtbot, store_dir, runs_dir)
    assert tab.table.rowCount() == 0 and tab.job is None
    tab.preset.setCurrentText("full")
    tab.preset.setCurrentText("tiny-scratch")     # a preset brings its own steps
    assert tab.steps.value() == PRESETS["tiny-scratch"].steps
    fill(tab, steps=8, val_every=3)
    tab.set_selection([1, 2])
    assert tab.episodes.text() == "1,2"

    qtbot.mouseClick(tab.start_button, Qt.MouseButton.LeftButton)
    assert tab.job is not None and not tab.start_button.isEnabled(), errors
    qtbot.waitUntil(lambda: tab.progress.value() >= 2, timeout=60_000)
    assert tab.progress.maximum() == 8
    assert tab.eta.text() != "—" and float(tab.rate.text()) > 0 and "e-" in tab.lr.text()
    qtbot.waitUntil(lambda: points(tab.plots.loss_curve) >= 2, timeout=10_000)

    qtbot.waitUntil(lambda: tab.job is None, timeout=90_000)
    assert errors == []
    assert tab.progress.value() == 8 and tab.start_button.isEnabled()
    steps, losses = tab.plots.loss_curve.getData()
    assert list(steps[:2]) == [1, 2] and steps[-1] == 8 and all(map(math.isfinite, losses))
    val_steps, val_losses = tab.plots.val_curve.getData()
    assert list(val_steps) == [3, 6, 8] and all(v > 0 for v in val_losses)
    assert points(tab.plots.error_curve) == 3
    # the run is listed done with the checkpoint it announced, complete on disk
    (run_dir,) = runs_dir.iterdir()
    row = row_of(tab, run_dir)
    assert row["status"] == "done" and row["step"] == "8" and row["preset"] == "tiny-scratch"
    assert ready == [row["checkpoint"]]
    assert RunDir(run_dir).last_checkpoint() == Path(ready[0])
    assert (Path(ready[0]) / "model.safetensors").is_file()
    assert tab.base.findText(ready[0]) >= 0      # offered as a base for the next run
    s = QSettings("XR0", "Workstation")
    assert s.value("finetune/preset") == "tiny-scratch" and int(s.value("finetune/steps")) == 8

    tab.table.selectRow(0)                       # a finished run's curves come back on selection
    tab.plots.clear()
    tab.table.clearSelection()
    tab.table.selectRow(0)
    assert points(tab.plots.loss_curve) == 8
    shot = tmp_path / "fine-tune.png"
    assert tab.grab().save(str(shot))
    assert QImage(str(shot)).width() == tab.width()

    # a new tab (the app opened again) restores the settings and lists the run
    tab.shutdown()
    again, errors2, _ = make_tab(qtbot, store_dir, runs_dir)
    assert again.steps.value() == 8 and again.options.text() == tab.options.text()
    assert row_of(again, run_dir)["status"] == "done" and again.job is None and errors2 == []


def test_several_processes_train_under_torchrun_from_the_tab(qtbot, isolated_settings,
                                                             store_dir, tmp_path, one_thread,
                                                             monkeypatch):
    """The GPUs box: its limit is the GPUs the workstation sees (2 here, standing in for the
    driver's count); with 2, one click runs the trainer as 2 torchrun processes (on the CPU with
    gloo: no GPU in this machine), the full fine-tune sharded with FSDP, to a done run with one
    checkpoint."""
    monkeypatch.setattr("app.qt.finetune_tab.visible_gpus", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    runs_dir = tmp_path / "runs"
    tab, errors, ready = make_tab(qtbot, store_dir, runs_dir)
    assert tab.gpus.maximum() == 2
    fill(tab, steps=3, val_every=1000)
    tab.batch.setValue(4)
    tab.gpus.setValue(2)
    assert tab._strategy() == "fsdp"               # tiny-scratch trains every weight
    tab.preset.setCurrentText("lora")
    assert tab._strategy() == "ddp"
    fill(tab, steps=3, val_every=1000)              # back to tiny-scratch
    tab.batch.setValue(4)
    qtbot.mouseClick(tab.start_button, Qt.MouseButton.LeftButton)
    assert tab.job is not None and tab.job.processes == 2, errors
    args = tab.job.process.args
    assert "torch.distributed.run" in args and args[args.index("--strategy") + 1] == "fsdp"
    qtbot.waitUntil(lambda: tab.job is None, timeout=150_000)
    assert errors == []
    (run_dir,) = runs_dir.iterdir()
    assert RunDir(run_dir).read()["world_size"] == 2
    row = row_of(tab, run_dir)
    assert row["status"] == "done" and row["step"] == "3"
    assert ready == [row["checkpoint"]]


def test_a_new_tab_follows_a_running_job_and_cancels_it_to_a_valid_checkpoint(
        qtbot, isolated_settings, store_dir, tmp_path, one_thread):
    runs_dir = tmp_path / "runs"
    first, errors, _ = make_tab(qtbot, store_dir, runs_dir)
    fill(first, steps=100_000, val_every=1000)
    qtbot.mouseClick(first.start_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: len(first.plots.losses) >= 2, timeout=60_000)
    (run_dir,) = runs_dir.iterdir()
    pid = first.job.pid

    # the tab goes away without cancelling; a new one finds the trainer and follows it
    first.shutdown()
    first.close()
    tab, errors, ready = make_tab(qtbot, store_dir, runs_dir)
    assert tab.job is not None and tab.job.pid == pid
    assert row_of(tab, run_dir)["status"] == "running"
    seen = len(first.plots.losses)
    qtbot.waitUntil(lambda: len(tab.plots.losses) > seen, timeout=30_000)
    assert tab.plots.steps[:2] == [1, 2]          # the curve resumed from the run's first step
    assert tab.progress.maximum() == 100_000 and tab.progress.value() > seen

    t0 = time.monotonic()
    qtbot.mouseClick(tab.cancel_button, Qt.MouseButton.LeftButton)
    assert time.monotonic() - t0 < 0.5, "Cancel blocked the window"
    assert not tab.cancel_button.isEnabled() and "cancelling" in tab.status.text()
    qtbot.waitUntil(lambda: tab.job is None, timeout=90_000)
    assert errors == [], errors
    row = row_of(tab, run_dir)
    assert row["status"] == "cancelled" and "--resume" in tab.status.text()
    ckpt = RunDir(run_dir).last_checkpoint()
    assert ckpt is not None and str(ckpt.resolve()) == row["checkpoint"] == ready[-1]
    assert (ckpt / TRAINING_STATE).is_file() and (ckpt / "model.safetensors").is_file()
    assert int(row["step"]) == int(ckpt.name.split("-")[1]) > 2


def test_bad_inputs_are_refused_with_the_fix(qtbot, isolated_settings, store_dir, tmp_path,
                                             one_thread):
    runs_dir = tmp_path / "runs"
    empty, errors, _ = make_tab(qtbot, tmp_path / "empty-store", runs_dir)
    qtbot.mouseClick(empty.start_button, Qt.MouseButton.LeftButton)
    assert len(errors) == 1 and "holds no episodes" in errors[0] and "Record" in errors[0]

    tab, errors, _ = make_tab(qtbot, store_dir, runs_dir)
    runs_before = tab.table.rowCount()
    fill(tab, steps=5, val_every=1000)

    def refused(expected: str) -> None:
        errors.clear()
        qtbot.mouseClick(tab.start_button, Qt.MouseButton.LeftButton)
        assert len(errors) == 1 and expected in errors[0], errors
        assert tab.job is None

    tab.set_selection([1, 7])
    refused("Episode(s) 7 are not complete episodes of the store (complete: 1-2)")
    tab.episodes.setText("1,x")
    refused("cannot read 'x'")
    tab.episodes.setText("1")
    refused("1 episode(s) selected but 1 are held out")
    tab.episodes.setText("")                      # all complete episodes
    tab.base.setCurrentText(str(tmp_path / "missing"))
    refused("neither a model preset")
    tab.base.setCurrentText(str(tmp_path))
    refused("is not a checkpoint folder")
    assert not runs_dir.exists(), "nothing may start on bad input"

    # what only the trainer can check arrives as its error event, shown as a message
    tab.base.setCurrentText("xr0-tiny")
    tab.options.setText(f"{OPTIONS} --cameras front")
    errors.clear()
    qtbot.mouseClick(tab.start_button, Qt.MouseButton.LeftButton)
    assert tab.job is not None
    qtbot.waitUntil(lambda: tab.job is None, timeout=60_000)
    assert len(errors) == 1 and errors[0].startswith("Cannot start fine-tuning"), errors
    assert "has no camera(s) ['front']" in errors[0] and "--cameras" in errors[0]
    assert tab.table.rowCount() == runs_before     # refused before a run was registered
