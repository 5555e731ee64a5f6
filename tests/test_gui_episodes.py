"""The Episodes tab on a real store of sim episodes: table and filters, playback on the shared
scrubber, judging, notes and delete persisted in SQLite, LeRobot export, replay on the sim rig.

The episodes are recorded once per module (EpisodeCycle on RigSession over the MuJoCo sim rig) and
each test works on its own copy of the store.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QMessageBox

from app.core.recorder import CyclePlan, EpisodeCycle
from app.core.rig_session import RigSession
from app.qt.camera_view import rgb_to_qimage
from app.qt.episode_table import COLUMNS
from app.qt.episodes_tab import EpisodesTab
from drivers import layout
from drivers.config import load_rig_config
from store import EpisodeStore
from store.lerobot import read_dataset
from store.video import VideoReader

pytestmark = pytest.mark.gui

TASK_A, TASK_B = "transfer the cube", "hand the cube over slowly"


def _light_sim():
    """The sim rig at the light camera settings of the `sim_config` fixture (module scope)."""
    cfg = load_rig_config("sim")
    cams = tuple(dataclasses.replace(c, width=240, height=180, fps=15) for c in cfg.cameras)
    return cfg.with_(cameras=cams)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """A store with three ~1.5 s sim episodes: two of TASK_A, one of TASK_B."""
    root = tmp_path_factory.mktemp("episodes") / "store"
    store = EpisodeStore.open(root)
    with RigSession(_light_sim()) as session:
        for task, n in ((TASK_A, 2), (TASK_B, 1)):
            cycle = EpisodeCycle(session, store, CyclePlan(task=task, episodes=n, seconds=1.5))
            cycle.start()
            cycle.join(timeout=60)
            assert cycle.error == "" and len(cycle.done) == n, cycle.error
    assert [e.id for e in store.episodes()] == [1, 2, 3]
    store.close()
    return root


@pytest.fixture
def store_dir(recorded, tmp_path) -> Path:
    d = tmp_path / "store"
    shutil.copytree(recorded, d)
    return d


def _tab(qtbot, store_dir, session=None) -> tuple[EpisodesTab, list[tuple[str, str]]]:
    tab = EpisodesTab(store_dir, session)
    errors: list[tuple[str, str]] = []
    tab.error.connect(lambda title, text: errors.append((title, text)))
    qtbot.addWidget(tab)
    tab.resize(1400, 850)
    tab.show()
    return tab, errors


def _column(tab: EpisodesTab, name: str) -> list[str]:
    c = COLUMNS.index(name)
    return [tab.model.index(r, c).data() for r in range(tab.model.rowCount())]


def _answer_confirm(tab: EpisodesTab, button: QMessageBox.StandardButton, seen: list[str]):
    def answer() -> None:
        box = tab.confirm_box
        if box is None or not box.isVisible():
            QTimer.singleShot(20, answer)
            return
        seen.append(box.text())
        box.button(button).click()
    QTimer.singleShot(20, answer)


def test_table_filters_marks_notes_and_delete_persist(qtbot, store_dir):
    with EpisodeStore.open(store_dir) as s:  # episode 1 as if recorded thirty days ago
        old = (datetime.now().astimezone() - timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%S%z")
        s.db.conn.execute("UPDATE episodes SET started = ? WHERE id = 1", (old,))
        infos = {e.id: e for e in s.episodes()}
    tab, errors = _tab(qtbot, store_dir)
    assert _column(tab, "id") == ["1", "2", "3"]
    assert _column(tab, "task") == [TASK_A, TASK_A, TASK_B]
    assert _column(tab, "steps") == [str(infos[i].steps) for i in (1, 2, 3)]
    assert _column(tab, "frames")[1] == " / ".join(str(n) for n in infos[2].frame_counts.values())
    assert all(t.startswith("seed:") for t in _column(tab, "tags"))
    assert all(70 <= infos[i].steps <= 80 for i in infos)  # 1.5 s at 50 Hz

    # filters: task, date, success, status
    tab.task_filter.setCurrentIndex(tab.task_filter.findData(TASK_B))
    assert _column(tab, "id") == ["3"]
    tab.task_filter.setCurrentIndex(0)
    tab.date_filter.setCurrentText("today")
    assert _column(tab, "id") == ["2", "3"]
    tab.date_filter.setCurrentText("last 7 days")
    assert _column(tab, "id") == ["2", "3"]
    tab.date_filter.setCurrentText("all dates")

    # judging several at once, persisted in the SQLite index
    tab.select_ids([1, 3])
    assert tab.selected_ids() == [1, 3]
    qtbot.mouseClick(tab.success_button, Qt.MouseButton.LeftButton)
    tab.select_ids([2])
    qtbot.mouseClick(tab.failure_button, Qt.MouseButton.LeftButton)
    assert _column(tab, "success") == ["yes", "no", "yes"]
    tab.success_filter.setCurrentText("failure")
    assert _column(tab, "id") == ["2"]
    tab.success_filter.setCurrentText("success")
    assert _column(tab, "id") == ["1", "3"]
    tab.select_ids([3])
    qtbot.mouseClick(tab.unknown_button, Qt.MouseButton.LeftButton)
    assert _column(tab, "id") == ["1"]
    tab.success_filter.setCurrentText("not judged")
    assert _column(tab, "id") == ["3"]
    tab.success_filter.setCurrentText("any result")

    # notes: saved by the button, and when the box loses focus
    with qtbot.waitSignal(tab.selection_changed) as sig:
        tab.select_ids([2])
    assert sig.args == [[2]]
    tab.notes.setFocus()
    qtbot.keyClicks(tab.notes, "cube slipped at the hand-over")
    qtbot.mouseClick(tab.save_notes_button, Qt.MouseButton.LeftButton)
    tab.select_ids([1])
    tab.activateWindow()
    tab.notes.setFocus()
    qtbot.waitUntil(tab.notes.hasFocus, timeout=2_000)
    qtbot.keyClicks(tab.notes, "clean grasp")
    tab.table.setFocus()  # focus out saves
    qtbot.waitUntil(tab.table.hasFocus, timeout=2_000)
    assert _column(tab, "notes")[:2] == ["clean grasp", "cube slipped at the hand-over"]

    # delete: No keeps the episode, Yes discards it (hidden from the complete ones)
    tab.select_ids([2])
    seen: list[str] = []
    _answer_confirm(tab, QMessageBox.StandardButton.No, seen)
    qtbot.mouseClick(tab.delete_button, Qt.MouseButton.LeftButton)
    assert seen and "2" in seen[0] and _column(tab, "id") == ["1", "2", "3"]
    _answer_confirm(tab, QMessageBox.StandardButton.Yes, seen)
    qtbot.mouseClick(tab.delete_button, Qt.MouseButton.LeftButton)
    assert len(seen) == 2 and "training" in seen[1]
    assert _column(tab, "id") == ["1", "3"]
    tab.status_filter.setCurrentText("discarded")
    assert _column(tab, "id") == ["2"] and _column(tab, "status") == ["discarded"]
    tab.status_filter.setCurrentText("complete")
    assert errors == []
    tab.shutdown()

    with EpisodeStore.open(store_dir) as s:  # reopened: everything reached the index
        got = {e.id: e for e in s.episodes(status=None)}
        assert [got[i].success for i in (1, 2, 3)] == [True, False, None]
        assert got[1].notes == "clean grasp" and got[2].notes == "cube slipped at the hand-over"
        assert got[2].status == "discarded" and not infos[2].folder.exists()
        assert [e.id for e in s.episodes()] == [1, 3]


def test_player_shows_the_frames_of_the_scrubbed_step(qtbot, store_dir, tmp_path):
    tab, errors = _tab(qtbot, store_dir)
    tab.select_ids([2])
    player = tab.player
    data = EpisodeStore.open(store_dir).episode(2)
    cams = list(data.frame_times)
    assert list(player.views) == cams and len(cams) == 3
    qtbot.waitUntil(lambda: all(player.shown.get(c) == 0 for c in cams), timeout=10_000)
    for c in cams:
        img = player.views[c].image
        px = np.frombuffer(bytes(img.constBits()), np.uint8)
        assert px.std() > 5, f"camera {c} shows a blank frame"
    # the joint plots hold the episode's follower and action trajectories, cursor at step 0
    x, y = player.plots.follower[1].getData()
    np.testing.assert_allclose(x, data.t - data.t[0])
    np.testing.assert_allclose(y, data.follower[:, 1])
    np.testing.assert_allclose(player.plots.action[8].getData()[1], data.action[:, 8])
    assert player.plots.cursors[0].value() == 0.0

    # scrub: each camera shows its latest frame at or before the step's time
    readers = {c: VideoReader(data.video_path(c)) for c in cams}
    first = {c: player.views[c].image for c in cams}
    for k in (len(data.t) - 1, len(data.t) // 2):
        player.slider.setValue(k)
        want = {c: max(int(np.searchsorted(data.frame_times[c], data.t[k], "right")) - 1, 0)
                for c in cams}
        assert all(j > 0 for j in want.values())
        qtbot.waitUntil(lambda: player.shown == want, timeout=10_000)
        for c in cams:
            assert player.views[c].image == rgb_to_qimage(readers[c].frame(want[c]))
        assert player.plots.cursors[5].value() == pytest.approx(data.t[k] - data.t[0])
    assert any(player.views[c].image != first[c] for c in cams)

    # a screenshot at the middle of the episode
    assert tab.grab().save(str(tmp_path / "episodes.png"))

    # play at real speed: from the start to the end in about the episode's duration
    player.set_step(0)
    t0 = time.monotonic()
    qtbot.mouseClick(player.play_button, Qt.MouseButton.LeftButton)
    assert player.playing
    qtbot.waitUntil(lambda: not player.playing, timeout=10_000)
    took = time.monotonic() - t0
    assert player.step == len(data.t) - 1
    assert took >= 0.9 * (data.t[-1] - data.t[0]), took
    last = {c: int(np.searchsorted(data.frame_times[c], data.t[-1], "right")) - 1 for c in cams}
    qtbot.waitUntil(lambda: player.shown == last, timeout=5_000)
    # several episodes selected: nothing to play
    tab.select_ids([1, 2])
    assert player.data is None and "2 episodes selected" in player.title.text()
    assert errors == []
    tab.shutdown()


def test_export_selected_episodes_to_lerobot(qtbot, store_dir, tmp_path):
    tab, errors = _tab(qtbot, store_dir)
    out = tmp_path / "dataset"
    tab.ask_export_folder = lambda: str(out)
    tab.codec.setCurrentText("h264")
    tab.select_ids([1, 3])
    qtbot.mouseClick(tab.export_button, Qt.MouseButton.LeftButton)
    assert tab.export_progress.isVisible() and tab.export_progress.maximum() == 2
    qtbot.waitUntil(lambda: tab.export_thread is None, timeout=30_000)
    assert errors == [], errors
    assert "exported 2 episodes" in tab.export_state.text()
    ds = read_dataset(out)
    store = EpisodeStore.open(store_dir)
    assert len(ds.episodes) == 2 and set(ds.tasks) == {TASK_A, TASK_B}
    assert ds.frames.num_rows == store.info(1).steps + store.info(3).steps
    assert set(ds.cameras) == set(store.info(1).videos)

    # a second export into the now non-empty folder fails with the fix
    qtbot.mouseClick(tab.export_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: tab.export_thread is None, timeout=30_000)
    assert errors and "new or empty folder" in errors[0][1]
    tab.shutdown()


def test_replay_on_the_sim_rig_and_estop(qtbot, store_dir, sim_config):
    tab, errors = _tab(qtbot, store_dir)  # without a rig: no replay
    tab.select_ids([1])
    assert not tab.replay_button.isEnabled()
    tab.shutdown()

    data = EpisodeStore.open(store_dir).episode(1)
    with RigSession(sim_config) as session:
        tab, errors = _tab(qtbot, store_dir, session)
        tab.select_ids([1])
        qtbot.waitUntil(tab.replay_button.isEnabled, timeout=5_000)
        start = session.latest().state.follower.copy()
        qtbot.mouseClick(tab.replay_button, Qt.MouseButton.LeftButton)
        assert tab.replay is not None and session.source is tab.replay
        assert tab.replay_button.text() == "Stop replay"
        qtbot.waitUntil(lambda: tab.replay is None, timeout=20_000)
        assert "done" in tab.replay_state.text(), tab.replay_state.text()
        # the followers moved and came to the episode's last recorded action (held there after
        # the replay: they settle onto it within a moment of its last command)
        def gap():
            end = session.latest().state.follower
            return np.abs(end - data.action[-1])[list(layout.JOINT_INDICES)].max()

        assert np.abs(session.latest().state.follower - start).max() > 0.05
        qtbot.waitUntil(lambda: gap() < 0.05, timeout=3_000)
        assert session.source is None and session.status().teleop == "idle"

        # again, stopped by the e-stop: the followers hold, no replay while it is active
        qtbot.mouseClick(tab.replay_button, Qt.MouseButton.LeftButton)
        qtbot.wait(300)
        session.estop()
        qtbot.waitUntil(lambda: tab.replay is None, timeout=2_000)
        assert "e-stop" in tab.replay_state.text() and session.source is None
        assert not tab.replay_button.isEnabled()
        session.release_estop()
        qtbot.waitUntil(tab.replay_button.isEnabled, timeout=2_000)
        assert errors == []
        tab.shutdown()
