"""An operator's whole day in the real main window on the real-time MuJoCo sim rig, through the
widgets: record two demonstrations, see them in Episodes, select them and fine-tune xr0-tiny on
them in a real trainer process, find its checkpoint offered in Autonomy, run the scripted policy
with live plots, then the fine-tuned checkpoint, stop it with the E-STOP key and close the window.

The README's screenshots of every tab come from this test (docs/screenshots/*.png), each taken
when its tab shows the day's real content.
"""

from __future__ import annotations

import threading
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QWidget

from app.core.rig_session import RigSession
from app.qt.main_window import MainWindow
from drivers import layout
from store import EpisodeStore
from xr0.train.rundir import RunDir

pytestmark = pytest.mark.gui

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "docs" / "screenshots"
TASK = "transfer the cube"
LEFT = Qt.MouseButton.LeftButton
# the fastest trainer settings that still train and validate (as in test_gui_finetune)
OPTIONS = "--micro-batch 2 --workers 0 --checkpoint-every 1000 --warmup 2 --val-every 3"


def show_tab(qtbot, w: MainWindow, widget: QWidget) -> None:
    """Click the tab's title in the tab bar."""
    bar = w.tabs.tabBar()
    qtbot.mouseClick(bar, LEFT, pos=bar.tabRect(w.tabs.indexOf(widget)).center())
    assert w.tabs.currentWidget() is widget


def click_row(qtbot, table, row: int, modifier=Qt.KeyboardModifier.NoModifier) -> None:
    index = table.model().index(row, 0)
    qtbot.mouseClick(table.viewport(), LEFT, modifier, table.visualRect(index).center())


def screenshot(w: MainWindow, tab: str) -> None:
    (path,) = w.save_screenshots(SCREENSHOTS, tabs=[tab])
    shot = QImage(str(path))
    assert (shot.width(), shot.height()) == (w.width(), w.height())


def points(curve) -> int:
    y = curve.getData()[1]
    return 0 if y is None else len(y)


def control_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "control" and t.is_alive()]


def test_operator_day_record_review_finetune_autonomy_estop(qtbot, isolated_settings, sim_config,
                                                            tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the trainer shares 2 cores with the window
    t_start = time.monotonic()
    session = RigSession(sim_config)
    w = MainWindow(session, data=tmp_path / "data")  # teleop engages by itself on the sim rig
    qtbot.addWidget(w)
    w.resize(1400, 900)
    w.show()
    w.activateWindow()

    # -- morning: the rig is live, teleop engaged
    qtbot.waitUntil(lambda: w.live_since is not None, timeout=30_000)
    qtbot.waitUntil(lambda: session.status().teleop == "engaged", timeout=20_000)
    qtbot.waitUntil(lambda: w.rig_panel.history.count > 50, timeout=5_000)
    screenshot(w, "Rig")

    # -- Record: two demonstrations of ~2 s, started from the keyboard
    rec = w.record_panel
    show_tab(qtbot, w, rec)
    rec.instruction.setCurrentText(TASK)
    rec.episodes.setValue(2)
    rec.seconds.setValue(2.0)
    qtbot.keyClick(rec, Qt.Key.Key_R, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: rec.recording, timeout=2_000)
    qtbot.waitUntil(lambda: rec.counter.text() == "2 / 2" and rec.phase.text() == "recording",
                    timeout=20_000)
    qtbot.wait(1000)  # the second take in progress, plots and countdown live
    screenshot(w, "Record")
    qtbot.waitUntil(lambda: not rec.recording, timeout=20_000)
    assert rec.phase.text() == "done" and rec.saved == [1, 2], w.errors
    assert rec.recorded.count() == 2
    with EpisodeStore.open(w.store_dir) as st:
        eps = st.episodes(status="complete")
    assert [e.id for e in eps] == [1, 2] and {e.task for e in eps} == {TASK}
    assert all(90 <= e.steps <= 110 for e in eps), [e.steps for e in eps]  # 2 s at 50 Hz

    # -- Episodes: both listed; one opens in the player, then both are selected for training
    ep = w.episodes_tab
    show_tab(qtbot, w, ep)
    assert [r.id for r in ep.model.rows] == [1, 2]
    click_row(qtbot, ep.table, 0)
    assert ep.selected_ids() == [1]
    player = ep.player
    cams = [c.name for c in sim_config.cameras]
    qtbot.waitUntil(lambda: all(player.shown.get(c) == 0 for c in cams), timeout=10_000)
    player.slider.setValue(len(player.data.t) // 2)  # mid-episode: the arms at work
    qtbot.waitUntil(lambda: all(player.shown.get(c, 0) > 0 for c in cams), timeout=10_000)
    screenshot(w, "Episodes")
    click_row(qtbot, ep.table, 1, Qt.KeyboardModifier.ControlModifier)
    assert ep.selected_ids() == [1, 2]
    assert w.finetune_tab.episodes.text() == "1,2"  # the selection went to Fine-tune

    # -- Fine-tune: xr0-tiny from scratch on the two episodes, a handful of steps
    ft = w.finetune_tab
    show_tab(qtbot, w, ft)
    ft.preset.setCurrentText("tiny-scratch")
    ft.steps.setValue(6)
    ft.batch.setValue(2)
    ft.val_episodes.setValue(1)
    ft.base.setCurrentText("xr0-tiny")
    ft.options.setText(OPTIONS)
    qtbot.mouseClick(ft.start_button, LEFT)
    assert ft.job is not None, w.errors
    qtbot.waitUntil(lambda: ft.job is None, timeout=90_000)
    assert w.errors == []
    assert ft.progress.value() == 6 and points(ft.plots.loss_curve) == 6
    (run,) = ft.runs
    assert run.status == "done" and run.step == 6
    checkpoint = run.checkpoint
    assert RunDir(run.run_dir).last_checkpoint() == Path(checkpoint)
    assert w.autonomy_tab.policy.findText(checkpoint) >= 0  # offered in Autonomy
    ft.table.selectRow(0)
    screenshot(w, "Fine-tune")

    # -- Autonomy: a fresh sim episode (Rig tab), then the scripted policy for five seconds with
    # the plots live
    show_tab(qtbot, w, w.rig_panel)
    qtbot.mouseClick(w.rig_panel.task.new_episode_button, LEFT)
    assert session.latest() is not None
    au = w.autonomy_tab
    show_tab(qtbot, w, au)
    au.policy.setCurrentText("scripted")
    au.instruction.setCurrentText(TASK)
    qtbot.mouseClick(au.start_button, LEFT)
    qtbot.waitUntil(lambda: au.state == "running", timeout=15_000)
    qtbot.waitUntil(lambda: points(au.plots.measured[0]) > 10, timeout=5_000)
    counts, redraws0, t0 = [], au.plots.redraws, time.perf_counter()
    for _ in range(5):
        qtbot.wait(1000)
        counts.append(points(au.plots.measured[0]))
    rate = (au.plots.redraws - redraws0) / (time.perf_counter() - t0)
    print(f"\nautonomy plots in the whole window: {rate:.1f} refreshes/s, points {counts}")
    assert all(b > a for a, b in pairwise(counts)), counts
    assert au.state == "running" and len(au.plots.chunk_ids()) >= 3
    screenshot(w, "Autonomy")
    qtbot.mouseClick(au.stop_button, LEFT)
    qtbot.waitUntil(lambda: au.state_label.text() == "stopped" and au.past.count() == 1,
                    timeout=5_000)

    # -- the fine-tuned checkpoint drives the followers from the cameras it was trained on; on 2
    # shared CPU cores its inference can outlast a chunk's slack, so the run is synchronous
    # (each chunk executed to its end, then the followers hold while the next is computed)
    au.policy.setCurrentText(checkpoint)
    au.strategy.setCurrentText("sync")
    qtbot.mouseClick(au.start_button, LEFT)
    def learned_running() -> None:
        assert au.state == "running", (au.state, au.reason.text(), w.errors)
    qtbot.waitUntil(learned_running, timeout=60_000)
    qtbot.waitUntil(lambda: au.run.telemetry is not None and au._shown_telemetry is not None
                    and len(au.plots.chunk_ids()) >= 2 and points(au.plots.latency_curve) >= 2,
                    timeout=20_000)
    assert au.state == "running" and w.errors == [], w.errors
    print(f"fine-tuned policy: latency {au.run.metrics()['latency_ms_p50']:.0f} ms p50")

    # -- E-STOP with the key, focus anywhere: the run stops, the rig refuses commands
    before = session.latest().k
    au.past.setFocus()
    qtbot.keyClick(au.past, Qt.Key.Key_Escape)
    assert session.rig.estopped and w.estop.latency_s < 1.0 / sim_config.control_hz
    qtbot.waitUntil(lambda: au.state_label.text() == "stopped", timeout=2_000)
    assert "e-stop" in au.reason.text().lower() and session.source is None
    held = session.latest().state.follower.copy()
    target = held.copy()
    target[layout.JOINT_INDICES[0]] += 0.3
    session.rig.command(target)  # refused
    qtbot.wait(300)
    last = session.latest()
    assert last.k > before + 5 and last.command is None  # the loop runs and sends nothing
    waists = [layout.NAMES.index(n) for n in ("left_waist", "right_waist")]
    assert np.abs(last.state.follower[waists] - held[waists]).max() < 0.05
    assert w.estop.state.text() == "E-STOP ACTIVE" and au.start_button.isEnabled()
    qtbot.waitUntil(lambda: au.past.count() == 2, timeout=5_000)  # the learned run's segment
    assert w.errors == [], w.errors

    # -- evening: close the window, the control loop ends
    assert control_threads()
    w.close()
    assert not session.status().running and not control_threads()
    print(f"the day took {time.monotonic() - t_start:.0f} s")
