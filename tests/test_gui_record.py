"""The Record panel on the real sim rig: episodes recorded through its buttons and shortcuts land
complete in the real store with the instruction; re-record, discard and stop do what they say;
the instruction history persists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QApplication

from app.core.rig_session import RigSession
from app.qt.record_panel import HISTORY_KEY, RecordPanel
from store import EpisodeStore

pytestmark = pytest.mark.gui

CTRL = Qt.KeyboardModifier.ControlModifier
SHIFT = Qt.KeyboardModifier.ShiftModifier


def complete(store_dir: Path) -> list:
    with EpisodeStore.open(store_dir) as st:
        return st.episodes(status="complete")


def test_record_rerecord_discard_stop_and_history(qtbot, isolated_settings, sim_config, tmp_path):
    store_dir = tmp_path / "store"
    with RigSession(sim_config) as session:
        panel = RecordPanel(session, store_dir)
        qtbot.addWidget(panel)
        errors = []
        panel.error.connect(lambda title, text: errors.append(f"{title}: {text}"))
        panel.resize(1300, 820)
        panel.show()
        panel.activateWindow()
        qtbot.waitUntil(lambda: QApplication.activeWindow() is panel, timeout=5_000)
        assert "Ctrl+R" in panel.start_button.text() and "Ctrl+Shift+R" in panel.rerecord_button.text()
        assert not panel.stop_button.isEnabled() and not panel.warmup.isEnabled()  # the sim resets

        # no instruction: refused with the fix, nothing recorded
        panel.instruction.setCurrentText("  ")
        qtbot.mouseClick(panel.start_button, Qt.MouseButton.LeftButton)
        assert len(errors) == 1 and "Type the instruction" in errors[0] and not panel.recording
        errors.clear()

        # two episodes of 1.5 s, started with the keyboard
        panel.instruction.setCurrentText("transfer the cube")
        panel.episodes.setValue(2)
        panel.seconds.setValue(1.5)
        qtbot.keyClick(panel, Qt.Key.Key_R, CTRL)   # the button animates its click (~0.1 s)
        qtbot.waitUntil(lambda: panel.recording, timeout=2_000)
        assert not panel.start_button.isEnabled()
        qtbot.waitUntil(lambda: panel.phase.text() == "recording", timeout=10_000)
        assert panel.counter.text() == "1 / 2"
        left = float(panel.countdown.text().split()[0])
        assert 0.0 < left <= 1.5
        qtbot.waitUntil(lambda: float(panel.countdown.text().split()[0]) < left, timeout=2_000)
        qtbot.waitUntil(lambda: panel.counter.text() == "2 / 2" and
                        panel.phase.text() == "recording", timeout=15_000)
        qtbot.waitUntil(lambda: not panel.recording, timeout=15_000)
        assert panel.phase.text() == "done" and panel.counter.text() == "2 / 2"
        eps = complete(store_dir)
        assert [e.id for e in eps] == panel.saved == [1, 2], errors
        assert {e.task for e in eps} == {"transfer the cube"}
        assert all(60 <= e.steps <= 80 for e in eps), [e.steps for e in eps]  # 1.5 s at 50 Hz
        assert panel.recorded.count() == 2 and panel.recorded.item(0).text().startswith("#2 ")
        # the cycle engaged teleop; Disengage holds the followers, Engage ramps back
        assert session.status().teleop in ("ramping", "engaged")
        qtbot.mouseClick(panel.teleop.disengage_button, Qt.MouseButton.LeftButton)
        assert session.status().teleop == "idle"
        qtbot.waitUntil(panel.teleop.engage_button.isEnabled, timeout=2_000)
        qtbot.mouseClick(panel.teleop.engage_button, Qt.MouseButton.LeftButton)
        assert session.status().teleop in ("ramping", "engaged")

        # re-record (keyboard): the first take is dropped, the episode recorded again
        panel.instruction.setCurrentText("pick up the cube")
        panel.episodes.setValue(1)
        qtbot.mouseClick(panel.start_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: panel.phase.text() == "recording", timeout=10_000)
        qtbot.wait(300)
        qtbot.keyClick(panel, Qt.Key.Key_R, CTRL | SHIFT)
        qtbot.waitUntil(lambda: "recording it again" in panel.message.text(), timeout=5_000)
        qtbot.waitUntil(lambda: not panel.recording, timeout=15_000)
        eps = complete(store_dir)
        assert len(eps) == 3 and eps[-1].task == "pick up the cube" and eps[-1].steps >= 60
        assert panel.saved[-1] == eps[-1].id

        # discard (button): the episode is dropped and the plan ends with nothing more saved
        qtbot.mouseClick(panel.start_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: panel.phase.text() == "recording", timeout=10_000)
        qtbot.mouseClick(panel.discard_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: not panel.recording, timeout=15_000)
        assert panel.counter.text() == "0 / 0" and panel.phase.text() == "done"
        assert len(complete(store_dir)) == 3 and len(panel.saved) == 3
        with EpisodeStore.open(store_dir) as st:      # the re-recorded take and this one
            assert len(st.episodes(status="discarded")) == 2

        # stop (keyboard) during the first of three: it is kept, the other two never start
        panel.episodes.setValue(3)
        qtbot.keyClick(panel, Qt.Key.Key_R, CTRL)
        qtbot.waitUntil(lambda: panel.phase.text() == "recording", timeout=10_000)
        qtbot.wait(700)
        qtbot.keyClick(panel, Qt.Key.Key_E, CTRL)
        qtbot.waitUntil(lambda: not panel.recording, timeout=15_000)
        eps = complete(store_dir)
        assert len(eps) == 4 and panel.counter.text() == "1 / 3"
        assert 25 <= eps[-1].steps < 70, eps[-1].steps   # stopped after ~0.7 s of 1.5
        with EpisodeStore.open(store_dir) as st:
            data = st.episode(eps[0].id)
            assert np.ptp(data.state[:, :6], axis=0).max() > 0.02   # the arms moved
        assert errors == [], errors
        assert panel.plots.redraws > 0

        qtbot.waitUntil(lambda: panel.plots.redraws > 2, timeout=5_000)
        shot = tmp_path / "record.png"
        assert panel.grab().save(str(shot))
        assert QImage(str(shot)).width() == panel.width()

        # the instruction history, newest first, persists into a new panel
        history = [panel.instruction.itemText(i) for i in range(panel.instruction.count())]
        assert history == ["pick up the cube", "transfer the cube"]
        assert QSettings("XR0", "Workstation").value(HISTORY_KEY) is not None

        # the e-stop during a recording: it stops, keeps the take incomplete and says so
        qtbot.mouseClick(panel.start_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: panel.phase.text() == "recording", timeout=10_000)
        session.estop()
        qtbot.waitUntil(lambda: not panel.recording, timeout=10_000)
        assert panel.phase.text() == "failed" and session.rig.estopped
        assert len(errors) == 1 and "e-stop pressed" in errors[0] and "incomplete" in errors[0]
        qtbot.mouseClick(panel.start_button, Qt.MouseButton.LeftButton)
        assert "release it" in errors[-1] and not panel.recording
        with EpisodeStore.open(store_dir) as st:
            assert len(st.episodes(status="incomplete")) == 1
        session.release_estop()

        panel.shutdown()
        again = RecordPanel(session, store_dir)
        qtbot.addWidget(again)
        assert [again.instruction.itemText(i) for i in range(again.instruction.count())] == history
        assert again.episodes.value() == 3 and again.seconds.value() == 1.5
        again.shutdown()
