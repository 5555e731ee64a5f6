"""The Record panel: demonstrations from the running rig into the episode store.

A view of an app.core.recorder.EpisodeCycle (warm-up -> recording -> reset, N times, in its own
thread): the instruction (with the operator's history), episodes, seconds, warm-up and reset;
Start, Stop, Re-record and Discard, each with a keyboard shortcut shown on its button; the phase
with its countdown and the episode counter; the episodes recorded in this session; teleop Engage /
Disengage (through the safe ramp) and the live joint plots. The cycle's events reach the GUI thread
through a queue that the panel's timer drains.
"""

from __future__ import annotations

import json
import queue

from PySide6.QtCore import QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QKeySequence
from PySide6.QtWidgets import (
    QComboBox, QDoubleSpinBox, QFormLayout, QGridLayout, QGroupBox, QLabel, QListWidget,
    QPushButton, QSizePolicy, QSpinBox, QSplitter, QVBoxLayout, QWidget,
)

from app.core.recorder import CyclePlan, EpisodeCycle, Phase
from app.core.rig_session import RigSession
from app.qt import theme
from app.qt.joint_plots import JointHistory, JointPlots
from app.qt.rig_panel import PLOT_SECONDS, TeleopControls
from drivers.clock import now
from store import EpisodeStore, StoreError

POLL_MS = 100
PLOT_EVERY = 2          # joint plots redraw every other poll (5 Hz): light on shared cores
HISTORY_KEY = "record/instructions"
HISTORY_SIZE = 20
KEY = "record/"

SHORTCUTS = {"start": "Ctrl+R", "stop": "Ctrl+E", "rerecord": "Ctrl+Shift+R", "discard": "Ctrl+D"}
PHASE_COLOURS = {
    Phase.IDLE: theme.MUTED, Phase.WARMUP: theme.WARN_AMBER, Phase.RECORDING: theme.ESTOP_RED,
    Phase.RESET: theme.WARN_AMBER, Phase.DONE: theme.OK_GREEN, Phase.FAILED: theme.ESTOP_RED,
}
TIMED = (Phase.WARMUP, Phase.RECORDING, Phase.RESET)


def _seconds_box(lo: float, hi: float, value: float, tip: str) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(lo, hi)
    box.setDecimals(1)
    box.setSingleStep(0.5)
    box.setSuffix(" s")
    box.setValue(value)
    box.setToolTip(tip)
    return box


class RecordPanel(QWidget):
    error = Signal(str, str)        # (title, message with the fix)
    episode_recorded = Signal(int)  # id of an episode that was saved complete

    def __init__(self, session: RigSession, store_dir, parent: QWidget | None = None):
        super().__init__(parent)
        self.session, self.store_dir = session, store_dir
        self.settings = QSettings("XR0", "Workstation")
        self.cycle: EpisodeCycle | None = None
        self.store: EpisodeStore | None = None
        self.saved: list[int] = []          # episodes saved in this session, oldest first
        self._events: queue.Queue[dict] = queue.Queue()
        self._discarded = ""                # the last cycle's episode not kept, and why
        self._tick = 0
        is_sim = session.config.kind == "sim"

        self.history = JointHistory(PLOT_SECONDS, session.config.control_hz)
        session.add_listener(self.history)
        self.plots = JointPlots(self.history, PLOT_SECONDS)

        self.teleop = TeleopControls()
        self.teleop.engage_button.clicked.connect(self.engage)
        self.teleop.disengage_button.clicked.connect(self.session.disengage)

        # -- the plan
        self.instruction = QComboBox()
        self.instruction.setEditable(True)
        self.instruction.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.instruction.lineEdit().setPlaceholderText("what the robot does, e.g. transfer the cube")
        self.instruction.addItems(self.instruction_history())
        self.episodes = QSpinBox()
        self.episodes.setRange(1, 1000)
        self.episodes.setValue(int(self.settings.value(KEY + "episodes", 10)))
        self.seconds = _seconds_box(0.5, 3600.0, float(self.settings.value(KEY + "seconds", 20.0)),
                                    "Length of each episode (a sim episode also ends at its own "
                                    "end).")
        self.warmup = _seconds_box(0.0, 120.0, float(self.settings.value(KEY + "warmup", 3.0)),
                                   "Time to get ready before each episode records.")
        self.reset = _seconds_box(0.0, 600.0, float(self.settings.value(KEY + "reset", 5.0)),
                                  "Time to reset the scene after each episode.")
        if is_sim:
            for box in (self.warmup, self.reset):
                box.setEnabled(False)
                box.setToolTip("The sim rig resets the scene itself: no warm-up or reset time.")
        form = QFormLayout()
        form.addRow("Instruction", self.instruction)
        form.addRow("Episodes", self.episodes)
        form.addRow("Seconds", self.seconds)
        form.addRow("Warm-up", self.warmup)
        form.addRow("Reset", self.reset)

        # -- the controls
        self.start_button = self._button("Start", "start", self.start,
                                         "Record the episodes of the plan.")
        self.stop_button = self._button("Stop", "stop", self.stop,
                                        "Finish and keep the current episode, then stop.")
        self.rerecord_button = self._button("Re-record", "rerecord", self.rerecord,
                                            "Drop the current episode and record it again.")
        self.discard_button = self._button("Discard", "discard", self.discard,
                                           "Drop the current episode and go on with the next.")
        grid = QGridLayout()
        for i, b in enumerate((self.start_button, self.stop_button, self.rerecord_button,
                               self.discard_button)):
            grid.addWidget(b, i // 2, i % 2)
        plan_box = QGroupBox("Recording")
        plan_lay = QVBoxLayout(plan_box)
        plan_lay.addLayout(form)
        plan_lay.addLayout(grid)

        # -- the state
        self.phase = QLabel(Phase.IDLE.value)
        self.phase.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.phase.setStyleSheet(theme.badge(theme.MUTED))
        self.countdown = QLabel("—")
        big = self.countdown.font()
        big.setPointSize(big.pointSize() * 2)
        big.setBold(True)
        self.countdown.setFont(big)
        self.counter = QLabel("0 / 0")
        self.counter.setFont(big)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        state = QFormLayout()
        state.addRow("phase", self.phase)
        state.addRow("time left", self.countdown)
        state.addRow("episode", self.counter)
        state.addRow(self.message)
        self.recorded = QListWidget()
        self.recorded.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
        state_box = QGroupBox("This session")
        state_lay = QVBoxLayout(state_box)
        state_lay.addLayout(state)
        state_lay.addWidget(QLabel("episodes recorded"))
        state_lay.addWidget(self.recorded, 1)

        side = QWidget()
        side_lay = QVBoxLayout(side)
        side_lay.setContentsMargins(0, 0, 0, 0)
        side_lay.addWidget(self.teleop)
        side_lay.addWidget(plan_box)
        side_lay.addWidget(state_box, 1)
        side.setMinimumWidth(440)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(side)
        split.addWidget(self.plots)
        split.setStretchFactor(0, 2)
        split.setStretchFactor(1, 3)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(split)

        self.timer = QTimer(self)
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.refresh)
        self.timer.start()
        self._update_buttons()

    def _button(self, text: str, name: str, slot, tip: str) -> QPushButton:
        key = QKeySequence(SHORTCUTS[name])
        shown = key.toString(QKeySequence.SequenceFormat.NativeText)
        b = QPushButton(f"{text}  ({shown})")
        b.setShortcut(key)   # active while the button is visible and enabled
        b.setToolTip(f"{tip} Shortcut: {shown}.")
        b.clicked.connect(slot)
        return b

    # -- instruction history -----------------------------------------------------------------------
    def instruction_history(self) -> list[str]:
        raw = self.settings.value(HISTORY_KEY, "[]")
        try:
            items = json.loads(raw) if isinstance(raw, str) else list(raw)
        except (TypeError, ValueError):
            items = []
        return [str(i) for i in items if str(i).strip()][:HISTORY_SIZE]

    def _remember(self, task: str) -> None:
        items = [task] + [i for i in self.instruction_history() if i != task]
        self.settings.setValue(HISTORY_KEY, json.dumps(items[:HISTORY_SIZE]))
        self.instruction.blockSignals(True)
        self.instruction.clear()
        self.instruction.addItems(items[:HISTORY_SIZE])
        self.instruction.setCurrentText(task)
        self.instruction.blockSignals(False)

    # -- operator actions --------------------------------------------------------------------------
    def engage(self) -> None:
        try:
            self.session.engage()
        except (ValueError, AssertionError) as e:
            self.error.emit("Cannot engage teleop", str(e))

    @property
    def recording(self) -> bool:
        return self.cycle is not None

    def start(self) -> None:
        if self.cycle is not None:
            return
        task = " ".join(self.instruction.currentText().split())
        st = self.session.status()
        problem = ""
        if not task:
            problem = ("Type the instruction of the episodes (what the robot does, e.g. 'transfer "
                       "the cube'): it is stored with every episode and trains the policy.")
        elif not st.running:
            problem = ("The rig is not running: connect it (see the Rig tab and the status bar), "
                       "then start recording.")
        elif st.estopped:
            problem = "The E-STOP is active: release it, then start recording."
        if problem:
            self.error.emit("Cannot start recording", problem)
            return
        try:
            self.store = EpisodeStore.open(self.store_dir)
        except (StoreError, OSError) as e:
            self.error.emit("Cannot open the episode store", str(e))
            return
        plan = CyclePlan(task=task, episodes=self.episodes.value(), seconds=self.seconds.value(),
                         warmup_s=self.warmup.value(), reset_s=self.reset.value())
        self._remember(task)
        for name, box in (("episodes", self.episodes), ("seconds", self.seconds),
                          ("warmup", self.warmup), ("reset", self.reset)):
            self.settings.setValue(KEY + name, box.value())
        self.settings.sync()
        self._discarded = ""
        self.cycle = EpisodeCycle(self.session, self.store, plan, on_event=self._events.put)
        self.message.setText(f"recording {plan.episodes} × '{task}'")
        self.cycle.start()
        self._update_buttons()

    def stop(self) -> None:
        if self.cycle is not None:
            self.cycle.stop()
            self.message.setText("stopping: the current episode is finished and kept")

    def rerecord(self) -> None:
        if self.cycle is not None:
            self.cycle.rerecord()

    def discard(self) -> None:
        if self.cycle is not None:
            self.cycle.discard()

    # -- the view (GUI thread) ---------------------------------------------------------------------
    def refresh(self) -> None:
        self._tick += 1
        self._take_events()
        cycle = self.cycle
        if cycle is not None:
            self._show_cycle(cycle)
            if cycle.phase in (Phase.DONE, Phase.FAILED):
                self._end_cycle(cycle)
        if not self.isVisible():  # drawn again when the panel shows (showEvent)
            return
        self.teleop.show_status(self.session.status(), can_engage=self.session.rig.has_leaders)
        if self._tick % PLOT_EVERY == 0:
            self.plots.refresh()

    def showEvent(self, event) -> None:  # noqa: N802 - Qt naming
        """Shown again (its tab chosen): the teleop state and the plots at once."""
        super().showEvent(event)
        self.teleop.show_status(self.session.status(), can_engage=self.session.rig.has_leaders)
        self.plots.refresh()

    def _take_events(self) -> None:
        while True:
            try:
                ev = self._events.get_nowait()
            except queue.Empty:
                return
            kind = ev["event"]
            if kind == "episode":
                self.saved.append(ev["id"])
                ok = {True: "success", False: "no success"}.get(ev.get("success"), "")
                self.recorded.insertItem(0, f"#{ev['id']}  {ev['task']}  {ev['duration_s']:.1f} s, "
                                            f"{ev['steps']} steps" + (f", {ok}" if ok else ""))
                self.message.setText(f"episode {ev['id']} saved")
                self.episode_recorded.emit(int(ev["id"]))
            elif kind == "rerecord":
                self.message.setText(f"episode {ev['episode']} dropped: recording it again")
            elif kind == "discard":
                if ev.get("reason"):  # dropped by the cycle itself: said again at the end
                    self._discarded = f"episode {ev['episode']} not kept: {ev['reason']}"
                    self.message.setText(self._discarded)
                else:
                    self.message.setText(f"episode {ev['episode']} discarded")

    def _show_cycle(self, cycle: EpisodeCycle) -> None:
        phase = cycle.phase
        self.phase.setText(phase.value)
        theme.set_style(self.phase, theme.badge(PHASE_COLOURS[phase]))
        left = cycle.phase_until - now()
        self.countdown.setText(f"{max(left, 0.0):.1f} s" if phase in TIMED else "—")
        done = len(cycle.done)
        current = min(done + 1, cycle.target) if phase in TIMED or phase is Phase.IDLE else done
        self.counter.setText(f"{current} / {cycle.target}")

    def _end_cycle(self, cycle: EpisodeCycle) -> None:
        cycle.join(timeout=5.0)
        self._take_events()
        self.cycle = None
        if self.store is not None:
            self.store.close()
            self.store = None
        if cycle.phase is Phase.FAILED:
            self.message.setText(f"stopped: {cycle.error}")
            self.error.emit("Recording stopped", cycle.error)
        else:
            note = f"; {self._discarded}" if self._discarded else ""
            self.message.setText(f"done: {len(cycle.done)} episode(s) saved{note}")
        self._update_buttons()

    def _update_buttons(self) -> None:
        active = self.cycle is not None
        self.start_button.setEnabled(not active)
        for b in (self.stop_button, self.rerecord_button, self.discard_button):
            b.setEnabled(active)
        for w in (self.instruction, self.episodes, self.seconds):
            w.setEnabled(not active)

    def shutdown(self) -> None:
        """The app closes: finish and keep the current episode, then stop drawing."""
        self.timer.stop()
        if self.cycle is not None:
            self.cycle.stop()
            self.cycle.join(timeout=30.0)
            self._end_cycle(self.cycle)
        self.session.remove_listener(self.history)
