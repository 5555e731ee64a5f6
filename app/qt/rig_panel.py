"""The rig panel: live cameras, teleop controls, joint readouts and live joint plots.

A view of a RigSession: `refresh()` (called from the main window's poll timer) reads the session's
non-blocking getters and updates the widgets; the buttons call the session's operator actions.
The side column is a tab widget of sections: "Joints", and on a rig with servos "Servos" (their
temperature and hardware errors, from Rig.health(); the tab's title counts the hot and faulted
ones, so they show from any section).
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QFormLayout, QGroupBox, QHBoxLayout, QLabel, QPushButton,
    QSplitter, QTableWidget, QTabWidget, QVBoxLayout, QWidget,
)

from app.core.rig_session import RigSession, SessionStatus, StepRecord
from app.qt import theme
from app.qt.camera_view import CameraView
from app.qt.joint_plots import JointHistory, JointPlots
from app.qt.servo_table import ServoTable
from drivers import layout
from drivers.clock import now

PLOT_SECONDS = 10.0
STALE_FRAME_S = 1.0  # a camera with no frame newer than this is shown as stalled

TELEOP_COLOURS = {
    "idle": theme.MUTED, "ramping": theme.WARN_AMBER, "engaged": theme.OK_GREEN,
    "stopped": theme.ESTOP_RED,
}


class TeleopControls(QGroupBox):
    """Engage / Disengage, the teleop state and why it last stopped."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__("Teleop", parent)
        self.engage_button = QPushButton("Engage")
        self.engage_button.setToolTip("Ramp the followers to the leader pose at the safe ramp "
                                      "speed, then follow the leaders.")
        self.disengage_button = QPushButton("Disengage")
        self.disengage_button.setToolTip("Stop following; the followers hold where they are.")
        self.state = QLabel("idle")
        self.state.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.reason = QLabel("")
        self.reason.setWordWrap(True)
        self.reason.setStyleSheet(f"color: {theme.ESTOP_RED};")
        buttons = QHBoxLayout()
        buttons.addWidget(self.engage_button)
        buttons.addWidget(self.disengage_button)
        buttons.addWidget(self.state)
        lay = QVBoxLayout(self)
        lay.addLayout(buttons)
        lay.addWidget(self.reason)

    def show_status(self, st: SessionStatus, can_engage: bool) -> None:
        self.state.setText(st.teleop)
        theme.set_style(self.state, theme.badge(TELEOP_COLOURS.get(st.teleop, theme.MUTED)))
        self.reason.setText(st.stop_reason)
        self.reason.setVisible(bool(st.stop_reason))
        self.engage_button.setEnabled(
            can_engage and st.running and not st.estopped and st.teleop in ("idle", "stopped"))
        self.disengage_button.setEnabled(st.running and st.teleop in ("ramping", "engaged"))


class TaskStatus(QGroupBox):
    """The sim task from RigState.info: task and seed, episode time, reward, success; and the
    button that starts a new episode."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__("Task", parent)
        self.episode = QLabel("—")
        self.reward = QLabel("—")
        self.success = QLabel("—")
        self.new_episode_button = QPushButton("New episode")
        self.new_episode_button.setToolTip("Reset the scene with the next seed; the scripted "
                                           "operator starts the task again.")
        form = QFormLayout(self)
        form.addRow("episode", self.episode)
        form.addRow("reward", self.reward)
        form.addRow("success", self.success)
        form.addRow(self.new_episode_button)

    def show_info(self, info: dict, episode_seconds: float | None) -> None:
        t = info.get("sim_time")
        if t is not None:
            length = f" / {episode_seconds:.1f}" if episode_seconds else ""
            self.episode.setText(f"{info.get('task', '')} seed {info.get('seed', '—')}, "
                                 f"{t:.1f}{length} s")
        r = info.get("reward")
        max_r = info.get("max_reward")
        if r is None:
            self.reward.setText("—")
        elif max_r is not None:
            self.reward.setText(f"{r:g} / {max_r:g}")
        else:
            self.reward.setText(f"{r:g}")
        s = info.get("success")
        if s is None:
            self.success.setText("—")
            theme.set_style(self.success, "")
        else:
            self.success.setText("yes" if s else "not yet")
            theme.set_style(self.success, theme.badge(theme.OK_GREEN if s else theme.MUTED))


class JointTable(QTableWidget):
    """14 follower and leader readouts: rows are the joints of an arm, columns the arms."""

    COLUMNS = ("left follower", "left leader", "right follower", "right leader")

    def __init__(self, parent: QWidget | None = None):
        super().__init__(layout.JOINTS_PER_ARM, len(self.COLUMNS), parent)
        theme.readout_table(self, self.COLUMNS,
                            [f"{j} rad" for j in layout.ARM_JOINTS] + ["gripper 0..1"])

    def show_state(self, follower: np.ndarray, leader: np.ndarray | None) -> None:
        for c, (side, vec) in enumerate((("left", follower), ("left", leader),
                                         ("right", follower), ("right", leader))):
            sl = layout.arm_slice(side)
            for r in range(layout.JOINTS_PER_ARM):
                text = "—" if vec is None else f"{vec[sl.start + r]:+.3f}"
                self.item(r, c).setText(text)

    def value(self, row: int, column: str) -> str:
        return self.item(row, self.COLUMNS.index(column)).text()


class RigPanel(QWidget):
    """Cameras on top; joint plots and the side column (teleop, task, sections) below."""

    error = Signal(str, str)  # (title, message with the fix), shown by the main window

    def __init__(self, session: RigSession, parent: QWidget | None = None):
        super().__init__(parent)
        self.session = session
        cfg = session.config
        self.history = JointHistory(PLOT_SECONDS, cfg.control_hz)
        session.add_listener(self.history)

        self.cameras: dict[str, CameraView] = {}
        cams = QWidget()
        cam_lay = QHBoxLayout(cams)
        cam_lay.setContentsMargins(0, 0, 0, 0)
        for c in cfg.cameras:
            view = CameraView(c.name)
            self.cameras[c.name] = view
            cam_lay.addWidget(view)
        if not cfg.cameras:
            cam_lay.addWidget(QLabel(f"rig '{cfg.name}' has no cameras: add [[cameras]] to "
                                     f"{cfg.source or 'its config'} to see them here"))

        self.teleop = TeleopControls()
        self.teleop.engage_button.clicked.connect(self.engage)
        self.teleop.disengage_button.clicked.connect(self.session.disengage)
        self.task = TaskStatus()
        self.task.setVisible(cfg.kind == "sim")
        self.task.new_episode_button.clicked.connect(self.new_episode)
        self.loop_episodes = cfg.kind == "sim"  # start the next episode when one ends
        self._looped_seed: object = None
        self.joints = JointTable()
        self.sections = QTabWidget()
        self.sections.addTab(self.joints, "Joints")
        self.servos: ServoTable | None = None
        if session.rig.health():  # the sim rig has no servos: no section
            self.servos = ServoTable(cfg)
            self.add_section(self.servos, "Servos")

        side = QWidget()
        side_lay = QVBoxLayout(side)
        side_lay.setContentsMargins(0, 0, 0, 0)
        side_lay.addWidget(self.teleop)
        side_lay.addWidget(self.task)
        side_lay.addWidget(self.sections, 1)
        side.setMinimumWidth(460)

        self.plots = JointPlots(self.history, PLOT_SECONDS)
        bottom = QSplitter(Qt.Orientation.Horizontal)
        bottom.addWidget(self.plots)
        bottom.addWidget(side)
        bottom.setStretchFactor(0, 3)
        bottom.setStretchFactor(1, 2)
        bottom.setSizes([900, 500])
        self.splitter = QSplitter(Qt.Orientation.Vertical)
        self.splitter.setObjectName("rig_splitter")
        self.splitter.addWidget(cams)
        self.splitter.addWidget(bottom)
        self.splitter.setStretchFactor(0, 2)
        self.splitter.setStretchFactor(1, 3)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(self.splitter)
        self._tick = 0

    def add_section(self, widget: QWidget, title: str) -> None:
        """Add a page to the side column (e.g. a hardware rig's servo table)."""
        self.sections.addTab(widget, title)

    # -- operator actions ------------------------------------------------------------------
    def engage(self) -> None:
        try:
            self.session.engage()
        except (ValueError, AssertionError) as e:
            self.error.emit("Cannot engage teleop", str(e))

    def new_episode(self) -> None:
        """Sim rig: reset the scene with the next seed. Teleop is disengaged for the reset (the
        arms jump back to the start pose) and engaged again if it was on, through the ramp."""
        if self.session.config.kind != "sim" or self.session.rig.estopped:
            return
        was_on = self.session.status().teleop in ("ramping", "engaged")
        self.session.disengage()
        self.session.rig.reset()
        if was_on:
            self.engage()

    # -- view ------------------------------------------------------------------------------
    def refresh(self, st: SessionStatus) -> None:
        """Update from the session (GUI thread, ~30 Hz). Behind another tab only what does not
        draw runs (the task loop, the camera frames kept, the servo faults that title the
        section): the readouts and plots are drawn again when the panel shows (showEvent)."""
        self._tick += 1
        rig = self.session.rig
        visible = self.isVisible()
        if visible:
            self.teleop.show_status(st, can_engage=rig.has_leaders)
        rec: StepRecord | None = self.session.latest()
        if rec is not None:
            if visible and (self._tick % 3 == 0 or self.joints.value(0, "left follower") == "—"):
                self.joints.show_state(rec.state.follower, rec.state.leader)
            self._show_task(rec.state.info, st, visible)
            if visible:
                self.plots.refresh()
        if st.running:
            self._refresh_cameras(st)
        self._refresh_servos()  # also after the loop stopped: the fault that stopped it

    def showEvent(self, event) -> None:  # noqa: N802 - Qt naming
        """Shown again (its tab chosen): catch up at once with what was skipped while hidden."""
        super().showEvent(event)
        st = self.session.status()
        self.teleop.show_status(st, can_engage=self.session.rig.has_leaders)
        rec = self.session.latest()
        if rec is not None:
            self.joints.show_state(rec.state.follower, rec.state.leader)
            self.plots.refresh()

    def _refresh_servos(self) -> None:
        if self.servos is None or not self.servos.show_health(self.session.rig.health()):
            return
        i = self.sections.indexOf(self.servos)
        summary = self.servos.summary()
        self.sections.setTabText(i, f"Servos ({summary})" if summary else "Servos")
        colour = (theme.ESTOP_RED if self.servos.faulty else
                  theme.WARN_AMBER if self.servos.hot else None)
        self.sections.tabBar().setTabTextColor(
            i, QColor(colour) if colour else self.sections.palette().windowText().color())

    def _show_task(self, info: dict, st: SessionStatus, visible: bool = True) -> None:
        if self.session.config.kind != "sim":
            return
        if visible:
            sim = self.session.config.sim
            self.task.show_info(info, sim.episode_seconds if sim else None)
            self.task.new_episode_button.setEnabled(st.running and not st.estopped)
        seed = info.get("seed")
        if (self.loop_episodes and info.get("done") and st.running and not st.estopped
                and seed != self._looped_seed):
            self._looped_seed = seed
            self.new_episode()

    def _refresh_cameras(self, st: SessionStatus) -> None:
        frames = self.session.frames()
        t = now()
        for name, view in self.cameras.items():
            f = frames.get(name)
            if f is None:
                view.show_message("no frame yet" if view.image is None else "stream lost")
                continue
            view.show_frame(f, st.camera_fps.get(name, 0.0))
            if t - f.t_host > STALE_FRAME_S:
                view.show_message(f"stalled: last frame {t - f.t_host:.1f} s ago")
            else:
                view.show_message("")

