"""The desktop app on the real sim rig: live cameras and joints, teleop, E-STOP, clean close.

Runs the real MainWindow offscreen against the MuJoCo SimRig with its scripted operator.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QApplication, QMessageBox

from app.core.rig_session import RigSession
from app.qt import theme
from app.qt.main_window import AUTO_ENGAGE_KEY, MainWindow
from drivers import layout
from drivers.config import load_rig_config
from drivers.safety import joint_gap

pytestmark = pytest.mark.gui

ROOT = Path(__file__).resolve().parent.parent


def _image_bytes(img: QImage) -> bytes:
    return bytes(img.constBits())


def _teleop_is(session: RigSession, state: str):
    def check() -> None:
        st = session.status()
        assert st.teleop == state, f"teleop {st.teleop} ({st.stop_reason}); {st}"
    return check


def _live(w: MainWindow):
    def check() -> None:
        views = {n: v.frames_shown for n, v in w.rig_panel.cameras.items()}
        assert w.live_since is not None, (
            f"not live: connecting={w.connecting} errors={w.errors} cameras={views} "
            f"steps={w.rig_panel.history.count} {w.session.status()}")
    return check


def _control_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "control" and t.is_alive()]


def test_rig_window_live_teleop_estop_and_close(qtbot, isolated_settings, sim_config, tmp_path):
    session = RigSession(sim_config)
    w = MainWindow(session, data=isolated_settings / "data")  # default options: teleop engages by itself on the sim rig
    qtbot.addWidget(w)
    w.loop_action.setChecked(False)  # one episode throughout (episodes are tested below)
    w.show()
    period = 1.0 / sim_config.control_hz
    panel = w.rig_panel

    # Live: every camera view shows frames, the joint readouts and plots fill in.
    qtbot.waitUntil(_live(w), timeout=30_000)
    assert set(panel.cameras) == {c.name for c in sim_config.cameras}
    assert panel.servos is None and panel.sections.count() == 1  # the sim rig has no servos
    seqs = {n: v.seq for n, v in panel.cameras.items()}
    leader_before = panel.joints.value(1, "left leader")
    qtbot.waitUntil(lambda: all(v.seq >= seqs[n] + 3 for n, v in panel.cameras.items()),
                    timeout=10_000)
    for v in panel.cameras.values():
        assert v.image is not None and v.image.width() == sim_config.cameras[0].width
        assert v.fps > 0
    assert w.sb_rate.text().startswith("control ") and "— Hz" not in w.sb_rate.text()

    # The sim engaged teleop on its own: the followers ramp to the scripted leader and track it.
    qtbot.waitUntil(_teleop_is(session, "engaged"), timeout=20_000)
    qtbot.waitUntil(lambda: panel.teleop.state.text() == "engaged", timeout=2_000)
    rec0 = session.latest()
    frame0 = {n: _image_bytes(v.image) for n, v in panel.cameras.items()}
    qtbot.waitUntil(lambda: panel.joints.value(1, "left leader") != leader_before, timeout=10_000)
    qtbot.waitUntil(
        lambda: np.abs(session.latest().state.follower - rec0.state.follower).max() > 0.05,
        timeout=15_000)
    rec = session.latest()
    gap, joint = joint_gap(rec.state.leader, rec.state.follower)
    assert gap < sim_config.safety.max_gap_rad, f"followers lag the leader by {gap} at {joint}"
    assert rec.command is not None
    # The arms moved on camera and the plots draw the commanded trajectory.
    qtbot.waitUntil(lambda: any(_image_bytes(v.image) != frame0[n]
                                for n, v in panel.cameras.items()), timeout=5_000)
    cmd_x, cmd_y = panel.plots.commanded[0].getData()
    assert cmd_y is not None and np.isfinite(cmd_y).sum() > 10
    assert panel.task.reward.text() != "—"

    # Disengage, then engage again with the button (the safe ramp, then tracking).
    qtbot.mouseClick(panel.teleop.disengage_button, Qt.MouseButton.LeftButton)
    assert session.status().teleop == "idle"
    qtbot.waitUntil(lambda: panel.teleop.engage_button.isEnabled(), timeout=2_000)
    qtbot.mouseClick(panel.teleop.engage_button, Qt.MouseButton.LeftButton)
    assert session.status().teleop in ("ramping", "engaged")
    qtbot.waitUntil(_teleop_is(session, "engaged"), timeout=20_000)

    # Through the window's teleop the scripted operator completes the task; the task box says so.
    qtbot.waitUntil(lambda: panel.task.success.text() == "yes", timeout=20_000)
    info = session.latest().state.info
    assert info["episode_max_reward"] == info["max_reward"]

    # A screenshot of the live, engaged window.
    paths = w.save_screenshots(tmp_path / "shots", tabs=["Rig"])
    assert paths == [tmp_path / "shots" / "rig.png"]
    shot = QImage(str(paths[0]))
    assert (shot.width(), shot.height()) == (w.width(), w.height())

    # E-STOP button: applied on press, before the event returns, within one control period.
    k_press = session.latest().k
    qtbot.mousePress(w.estop.button, Qt.MouseButton.LeftButton)
    assert session.rig.estopped
    assert w.estop.latency_s < period, f"e-stop took {w.estop.latency_s * 1e3:.1f} ms"
    qtbot.mouseRelease(w.estop.button, Qt.MouseButton.LeftButton)
    st = session.status()
    assert st.estopped and st.teleop == "stopped" and "e-stop" in st.stop_reason
    # The rig refuses commands: a far target sent directly is ignored, the loop sends none.
    held = session.latest().state.follower.copy()
    target = held.copy()
    target[layout.JOINT_INDICES[0]] += 0.3
    session.rig.command(target)
    qtbot.wait(int(5 * period * 1000))
    assert session.latest().k > k_press and session.latest().command is None
    assert abs(session.latest().state.follower[0] - held[0]) < 0.05
    assert w.estop.state.text() == "E-STOP ACTIVE"
    assert not panel.teleop.engage_button.isEnabled()

    # Release: teleop back to idle; engage again.
    qtbot.mouseClick(w.estop.release_button, Qt.MouseButton.LeftButton)
    assert not session.rig.estopped and session.status().teleop == "idle"
    qtbot.waitUntil(lambda: panel.teleop.engage_button.isEnabled(), timeout=2_000)
    qtbot.mouseClick(panel.teleop.engage_button, Qt.MouseButton.LeftButton)
    assert session.status().teleop in ("ramping", "engaged")

    # The keyboard E-STOP works with focus anywhere in the window.
    w.activateWindow()
    panel.sections.setFocus()
    qtbot.keyClick(panel.sections, Qt.Key.Key_Escape)
    st = session.status()
    assert st.estopped and st.teleop == "stopped"
    assert w.estop.latency_s < period
    assert w.errors == []

    # Close: the control loop ends and the rig is disconnected.
    assert _control_threads()
    w.close()
    assert not session.status().running
    assert not _control_threads()


def test_sim_episodes_start_again_when_they_end(qtbot, isolated_settings, sim_config):
    sim = dataclasses.replace(sim_config.sim, episode_seconds=1.0)
    w = MainWindow(RigSession(sim_config.with_(sim=sim)), auto_engage=False)
    qtbot.addWidget(w)
    assert w.loop_action.isChecked()  # the default on the sim rig
    w.show()
    seed = lambda: w.session.latest().state.info["seed"]  # noqa: E731
    qtbot.waitUntil(lambda: w.session.latest() is not None, timeout=30_000)
    first = seed()
    qtbot.waitUntil(lambda: seed() == first + 1, timeout=10_000)
    assert f"seed {first + 1}" in w.rig_panel.task.episode.text() or qtbot.waitUntil(
        lambda: f"seed {first + 1}" in w.rig_panel.task.episode.text(), timeout=1_000) is None
    # The button starts the next one at once, from sim time 0.
    w.loop_action.setChecked(False)
    qtbot.mouseClick(w.rig_panel.task.new_episode_button, Qt.MouseButton.LeftButton)
    info = w.session.rig.read().info
    assert info["seed"] == first + 2 and info["sim_time"] < 0.2
    w.close()
    assert not _control_threads()


def test_geometry_and_options_persist(qtbot, isolated_settings, sim_config):
    s1 = RigSession(sim_config)
    w = MainWindow(s1)
    qtbot.addWidget(w)
    w.resize(700, 500)
    w.auto_engage_action.setChecked(False)
    w.close()
    assert QSettings("XR0", "Workstation").value(AUTO_ENGAGE_KEY, type=bool) is False

    w2 = MainWindow(RigSession(sim_config))
    qtbot.addWidget(w2)
    assert (w2.width(), w2.height()) == (700, 500)
    assert not w2.auto_engage and not w2.auto_engage_action.isChecked()
    w2.close()


def test_hardware_rig_never_auto_engages_and_estop_drops_torque(qtbot, isolated_settings,
                                                                 tmp_path):
    """The window on the real hardware driver, over emulated Dynamixel chains (one per arm)."""
    from drivers.dynamixel.emulator import EmulatedRig

    QSettings("XR0", "Workstation").setValue(AUTO_ENGAGE_KEY, True)
    with EmulatedRig(load_rig_config("aloha"), tmp_path) as er:
        session = RigSession(er.config)
        w = MainWindow(session)
        qtbot.addWidget(w)
        assert w.auto_engage_action.isChecked() and not w.auto_engage
        w.show()
        qtbot.waitUntil(_live(w), timeout=30_000)
        qtbot.waitUntil(lambda: w.rig_panel.joints.value(0, "left leader") != "—", timeout=5_000)
        followers = [a.name for a in er.config.arms if a.role == "follower"]
        assert all(all(er.torque()[a].values()) for a in followers)
        qtbot.wait(300)
        assert session.status().teleop == "idle"  # a person engages teleop at the rig
        assert w.rig_panel.teleop.engage_button.isEnabled()
        assert not w.rig_panel.task.isVisibleTo(w)

        qtbot.mousePress(w.estop.button, Qt.MouseButton.LeftButton)
        qtbot.mouseRelease(w.estop.button, Qt.MouseButton.LeftButton)
        assert session.rig.estopped
        assert not any(any(er.torque()[a].values()) for a in followers)
        qtbot.mouseClick(w.estop.release_button, Qt.MouseButton.LeftButton)
        assert not session.rig.estopped and w.errors == []

        # Servo health: every servo's temperature; one near its limit is shown hot within ~2 s.
        servos = w.rig_panel.servos
        sections = w.rig_panel.sections
        assert servos is not None and sections.tabText(sections.indexOf(servos)) == "Servos"
        assert servos.cell(0, "right leader").text() == "32 °C"
        arm = er.config.arm("follower", "left")
        er.emulators[arm.name].set(arm.joints[2].id, "Present_Temperature", 76)
        qtbot.waitUntil(lambda: servos.cell(2, "left follower").text() == "76 °C hot",
                        timeout=3_000)
        hot = servos.cell(2, "left follower")
        assert hot.background().color().name() == theme.WARN_AMBER
        assert "near its limit of 80 °C" in hot.toolTip()
        assert sections.tabText(sections.indexOf(servos)) == "Servos (1 hot)"
        assert servos.cell(1, "left follower").background().style() == Qt.BrushStyle.NoBrush

        # A servo fault ends the control loop: a dialog names the fault and what to do.
        er.emulators[arm.name].hardware_error(arm.joints[1].id)
        qtbot.waitUntil(lambda: bool(w.errors), timeout=5_000)
        assert "control loop stopped" in w.errors[0] and str(arm.joints[1].id) in w.errors[0]
        boxes = [b for b in QApplication.topLevelWidgets()
                 if isinstance(b, QMessageBox) and b.isVisible()]
        assert boxes and "reopen the app" in boxes[0].text()
        qtbot.waitUntil(lambda: w.sb_session.text() == "stopped (error)", timeout=2_000)
        assert not any(any(er.torque()[a].values()) for a in followers)
        # The servo table names the fault on that servo, with the fix in its tooltip.
        for b in boxes:
            b.close()
        qtbot.waitUntil(lambda: "overload" in servos.cell(1, "left follower").text(),
                        timeout=2_000)
        faulted = servos.cell(1, "left follower")
        assert faulted.background().color().name() == theme.ESTOP_RED
        assert "reports overload: remove the load" in faulted.toolTip()
        assert sections.tabText(sections.indexOf(servos)) == "Servos (1 fault, 1 hot)"
        sections.setCurrentWidget(servos)
        w.save_screenshots(tmp_path / "shots", tabs=["Rig"])
        w.close()
        assert not _control_threads()


def test_unknown_rig_shows_a_dialog_with_the_fix(qapp, isolated_settings):
    from PySide6.QtCore import QTimer

    from app.qt.main import run_app

    seen: list[str] = []

    def grab_dialog() -> None:
        for top in QApplication.topLevelWidgets():
            if isinstance(top, QMessageBox) and top.isVisible():
                seen.append(top.text())
                top.reject()
                return
        QTimer.singleShot(50, grab_dialog)

    QTimer.singleShot(50, grab_dialog)
    assert run_app("no-such-rig", quit_after=10) == 2
    assert seen and "not found" in seen[0] and "sim" in seen[0]


def test_main_py_gui_opens_and_quits(tmp_path):
    """The README's command, headless: the window opens on the sim rig, saves a screenshot once
    live data has shown, and closes cleanly with exit code 0."""
    env = dict(__import__("os").environ, XDG_CONFIG_HOME=str(tmp_path / "config"))
    r = subprocess.run(
        [sys.executable, "main.py", "gui", "--rig", "sim", "--quit-after", "3",
         "--data", str(tmp_path / "data"), "--screenshot-dir", str(tmp_path / "shots")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "error" not in r.stderr.lower(), r.stderr
    for tab in ("rig", "record", "episodes", "fine-tune", "autonomy"):
        shot = QImage(str(tmp_path / "shots" / f"{tab}.png"))
        assert not shot.isNull() and shot.width() > 600, tab
    assert (tmp_path / "data" / "store").is_dir()
