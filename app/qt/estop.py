"""The always-visible emergency stop: a big red button, an application-wide key, and Release.

The button fires on press (not on release) and the key on key-down; both call RigSession.estop()
directly in the GUI thread, which refuses further commands, holds the followers and (per the rig
config) drops their torque, without waiting for the control loop.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QWidget

from app.core.rig_session import RigSession
from app.qt import theme
from drivers.clock import now

ESTOP_KEY = QKeySequence(Qt.Key.Key_Escape)


class EStopBar(QWidget):
    """E-STOP button, Release button and the e-stop state. `triggered` is emitted after the stop
    has been applied (for the log and the status bar), never as the way the stop is applied."""

    triggered = Signal(str)  # where it came from: "button" or "key"
    released = Signal()

    def __init__(self, session: RigSession, parent: QWidget | None = None):
        super().__init__(parent)
        self.session = session
        key = ESTOP_KEY.toString(QKeySequence.SequenceFormat.NativeText)
        self.button = QPushButton(f"E-STOP  ({key})")
        self.button.setObjectName("estop")
        self.button.setStyleSheet(theme.ESTOP_BUTTON)
        self.button.setMinimumHeight(56)
        self.button.setMinimumWidth(220)
        self.button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.button.setToolTip(f"Stop all motion now: refuse commands, hold the followers and drop "
                               f"their torque. Works from anywhere in the app with {key}.")
        self.button.pressed.connect(lambda: self.stop("button"))

        self.release_button = QPushButton("Release")
        self.release_button.setMinimumHeight(40)
        self.release_button.setToolTip("Clear the e-stop; teleop goes back to idle and must be "
                                       "engaged again.")
        self.release_button.clicked.connect(self.release)

        self.state = QLabel()
        self.state.setMinimumWidth(140)
        self.state.setFixedHeight(30)
        self.state.setAlignment(Qt.AlignmentFlag.AlignCenter)

        lay = QHBoxLayout(self)
        lay.setContentsMargins(6, 6, 6, 6)
        lay.addWidget(self.button)
        lay.addWidget(self.release_button)
        lay.addWidget(self.state)
        lay.addStretch(1)
        self.latency_s = float("nan")  # how long the last stop took to apply
        self.show_state(False)

    def install_shortcut(self, window: QWidget) -> QShortcut:
        """The e-stop key, active whenever any window of the app has focus."""
        sc = QShortcut(ESTOP_KEY, window)
        sc.setContext(Qt.ShortcutContext.ApplicationShortcut)
        sc.setAutoRepeat(False)
        sc.activated.connect(lambda: self.stop("key"))
        self.shortcut = sc
        return sc

    def stop(self, source: str) -> None:
        t0 = now()
        try:
            self.session.estop()
        finally:
            self.latency_s = now() - t0  # press handled -> commands refused, followers stopped
            self.show_state(self.session.rig.estopped)
        self.triggered.emit(source)

    def release(self) -> None:
        self.session.release_estop()
        self.show_state(self.session.rig.estopped)
        self.released.emit()

    def show_state(self, estopped: bool) -> None:
        if estopped:
            self.state.setText("E-STOP ACTIVE")
            theme.set_style(self.state, theme.badge(theme.ESTOP_RED))
        else:
            self.state.setText("e-stop clear")
            theme.set_style(self.state, theme.badge(theme.OK_GREEN))
        self.release_button.setEnabled(estopped)
