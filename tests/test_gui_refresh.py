"""What the GUI thread draws: only the visible tab's plots and readouts, caught up when a tab is
shown again; camera frames shown without a copy and scaled once per frame.

The real MainWindow offscreen on the MuJoCo sim rig; a CameraView fed real Frames.
"""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtGui import QColor

from app.core.rig_session import RigSession
from app.qt.camera_view import CameraView
from app.qt.main_window import MainWindow
from drivers.rig import Frame

pytestmark = pytest.mark.gui


def test_hidden_tabs_do_not_redraw_and_catch_up_when_shown(qtbot, isolated_settings, sim_config):
    session = RigSession(sim_config)
    w = MainWindow(session, auto_engage=True, data=isolated_settings / "data")
    qtbot.addWidget(w)
    w.show()
    rig, rec = w.rig_panel, w.record_panel
    try:
        qtbot.waitUntil(lambda: w.live_since is not None, timeout=30_000)
        qtbot.waitUntil(lambda: rig.plots.redraws > 3, timeout=5_000)

        # Behind the Episodes tab: neither the rig's nor the record panel's plots redraw, while
        # the control loop runs on and the camera frames are still taken in.
        w.tabs.setCurrentWidget(w.episodes_tab)
        rig_redraws, rec_redraws = rig.plots.redraws, rec.plots.redraws
        steps, frames = rig.history.count, sum(v.frames_shown for v in rig.cameras.values())
        qtbot.wait(600)
        assert rig.history.count > steps + 10
        assert sum(v.frames_shown for v in rig.cameras.values()) > frames
        assert rig.plots.redraws == rig_redraws
        assert rec.plots.redraws == rec_redraws

        # Shown again: drawn at once from the whole history, the newest step at x = 0.
        w.tabs.setCurrentWidget(rig)
        assert rig.plots.redraws == rig_redraws + 1
        x, y = rig.plots.measured[0].getData()
        assert abs(len(x) - min(rig.history.count, rig.history.capacity)) <= 5
        assert x[-1] == 0.0 and np.isfinite(y).all()
        qtbot.waitUntil(lambda: rig.plots.redraws > rig_redraws + 3, timeout=2_000)

        w.tabs.setCurrentWidget(rec)
        assert rec.plots.redraws == rec_redraws + 1
    finally:
        w.close()


def test_camera_view_draws_the_frame_it_was_given_scaled_to_fit(qtbot):
    view = CameraView("top")
    qtbot.addWidget(view)
    view.resize(400, 400)
    view.show()
    rgb = np.zeros((60, 80, 3), np.uint8)
    rgb[:30, :40] = (255, 0, 0)     # top left red, the rest blue
    rgb[:30, 40:] = rgb[30:] = (0, 0, 255)
    assert view.show_frame(Frame("top", rgb, 0.0, seq=1), 25.0)
    assert not view.show_frame(Frame("top", rgb, 0.0, seq=1), 25.0)  # the same frame again
    assert (view.image.width(), view.image.height()) == (80, 60)

    shot = view.grab().toImage()
    # 80x60 fit into 400x400: 400x300, centred vertically (50 px bars above and below)
    assert (view.scaled_image().width(), view.scaled_image().height()) == (400, 300)
    assert QColor(shot.pixel(100, 120)) == QColor(255, 0, 0)
    assert QColor(shot.pixel(300, 300)) == QColor(0, 0, 255)
    assert QColor(shot.pixel(200, 380)) == QColor("#101010")

    # A new frame is drawn (not a stale scaled copy), and a resized view scales it again.
    rgb2 = np.full((60, 80, 3), (0, 255, 0), np.uint8)
    view.show_frame(Frame("top", rgb2, 0.1, seq=2), 25.0)
    view.resize(200, 150)
    shot = view.grab().toImage()
    assert (view.scaled_image().width(), view.scaled_image().height()) == (200, 150)
    assert QColor(shot.pixel(100, 100)) == QColor(0, 255, 0)
