"""The Autonomy tab: a chunk policy drives the followers through the asynchronous runtime, watched
live and reviewed afterwards.

Controls: the policy ("scripted" on the sim rig, a checkpoint folder, recent ones, or a policy
server at tcp://HOST:PORT with its token), the instruction (with its history), the strategy and k;
Start, Pause/Resume, Stop, Take over/Release. A run is an app.core.autonomy_run.AutonomyRun (Qt-
free): loading a checkpoint takes seconds, so it happens on a worker thread; the run warms the
policy up on its own thread. A checkpoint runs in a local policy server process (app.core.
policy_process; here it would wait on the GIL behind the GUI, control and physics threads). A
~30 Hz QTimer pulls the state, the run's events (queued by its threads) and the last 10 s of live
telemetry into AutonomyPlots. "Past runs" lists the store's
autonomous runs, one row per policy segment, and reopens a segment's telemetry in the same plots
(as does "Open file…" for telemetry saved by `main.py run --save`).
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path

from PySide6.QtCore import QSettings, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QComboBox, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit, QListWidget,
    QListWidgetItem, QPushButton, QSpinBox, QSplitter, QVBoxLayout, QWidget,
)

from app.core.autonomy_run import AutonomyRun, past_runs
from app.core.policy_process import discard_policy
from app.core.rig_session import RigSession
from app.qt import theme
from app.qt.autonomy_plots import AutonomyPlots, live_data
from store import EpisodeStore, StoreError
from xr0.runtime import STRATEGIES, load_run

POLL_MS = 33  # ~30 Hz
LIVE_SECONDS = 10.0
SCRIPTED = "scripted"
KEY = "autonomy/"
MAX_RECENT = 12
ACTIVE = ("warming", "running", "paused", "takeover")
STATE_COLOURS = {
    "idle": theme.MUTED, "loading": theme.WARN_AMBER, "warming": theme.WARN_AMBER,
    "running": theme.OK_GREEN, "paused": theme.WARN_AMBER, "takeover": "#1565c0",
    "stopped": theme.MUTED, "failed": theme.ESTOP_RED,
}


class AutonomyTab(QWidget):
    error = Signal(str, str)  # (title, message with the fix)

    def __init__(self, session: RigSession, store_dir: Path, parent: QWidget | None = None):
        super().__init__(parent)
        self.session = session
        self.store_dir = Path(store_dir)
        self.settings = QSettings("XR0", "Workstation")
        self.store: EpisodeStore | None = None
        self.run: AutonomyRun | None = None
        self.reviewing: Path | None = None  # the saved telemetry shown instead of the live run
        self.events: queue.SimpleQueue = queue.SimpleQueue()  # from the run's threads
        self._loader: threading.Thread | None = None
        self._loaded: tuple | None = None  # (policy, error) from the loader thread
        self._cancel_load = False
        self._shown_telemetry = None
        self._final_drawn = False
        self._shown_key: tuple | None = None
        self._recording_note = ""  # the correction episode being recorded during a takeover
        self.is_sim = session.config.kind == "sim"

        self.plots = AutonomyPlots()
        self.plots.follow(LIVE_SECONDS)
        side = QWidget()
        col = QVBoxLayout(side)
        col.setContentsMargins(6, 6, 6, 6)
        col.addWidget(self._build_policy_box())
        col.addWidget(self._build_run_box())
        col.addWidget(self._build_past_box(), 1)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(side)
        split.addWidget(self.plots)
        split.setStretchFactor(1, 1)
        split.setSizes([330, 1070])
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(split)

        self._restore_settings()
        self._open_store()
        self.refresh_past_runs()
        self._show_state()
        self.timer = QTimer(self)
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.poll)
        self.timer.start()

    # -- construction ----------------------------------------------------------------------------
    def _build_policy_box(self) -> QGroupBox:
        box = QGroupBox("Policy")
        self.policy = QComboBox()
        self.policy.setEditable(True)
        self.policy.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.policy.setToolTip("A checkpoint folder (a fine-tune run's folder or checkpoints/"
                               "step-N), tcp://HOST:PORT of a policy server (`main.py serve`), or "
                               "'scripted' (the sim's scripted operator planning chunks).")
        self.policy.currentTextChanged.connect(self._policy_changed)
        self.browse_button = QPushButton("Browse…")
        self.browse_button.clicked.connect(self.browse_checkpoint)
        row = QHBoxLayout()
        row.addWidget(self.policy, 1)
        row.addWidget(self.browse_button)
        self.token = QLineEdit()
        self.token.setEchoMode(QLineEdit.EchoMode.Password)
        self.token.setPlaceholderText("shared token of the policy server")
        self.instruction = QComboBox()
        self.instruction.setEditable(True)
        self.instruction.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.instruction.setToolTip("The task given to the policy, as it was trained.")
        self.strategy = QComboBox()
        self.strategy.addItems(list(STRATEGIES))
        self.strategy.setToolTip("How chunks are joined: xr0 (clean prefix), rtc (guided "
                                 "sampling), naive, sync, ensemble, aggregate.")
        self.k = QSpinBox()
        self.k.setRange(0, 199)
        self.k.setValue(15)
        self.k.setToolTip("Request the next chunk when at most k unexecuted actions remain "
                          "(k < chunk length). A larger k replans more often; a task whose "
                          "demonstrations pause (a hand-over) needs long stretches of one chunk "
                          "to carry the pause.")
        form = QFormLayout(box)
        form.addRow("Checkpoint", row)
        form.addRow("Token", self.token)
        form.addRow("Instruction", self.instruction)
        form.addRow("Strategy", self.strategy)
        form.addRow("k", self.k)
        return box

    def _build_run_box(self) -> QGroupBox:
        box = QGroupBox("Run")
        self.start_button = QPushButton("Start")
        self.start_button.setToolTip("Load the policy, warm it up, then the followers ramp to its "
                                     "first action and follow it.")
        self.pause_button = QPushButton("Pause")
        self.pause_button.setToolTip("Hold where the followers are; Resume re-plans from there.")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop the policy; the followers hold. The telemetry is saved.")
        self.takeover_button = QPushButton("Take over")
        self.takeover_button.setToolTip(
            "The policy pauses and the followers follow the leader arms; the intervention is "
            "recorded as an episode tagged 'correction'. Release hands back to the policy.")
        self.start_button.clicked.connect(self.start)
        self.pause_button.clicked.connect(self.toggle_pause)
        self.stop_button.clicked.connect(self.stop)
        self.takeover_button.clicked.connect(self.toggle_takeover)
        self.state_label = QLabel("idle")
        self.state_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.reason = QLabel("")
        self.reason.setWordWrap(True)
        self.live_button = QPushButton("Back to live")
        self.live_button.clicked.connect(self.back_to_live)
        grid = QHBoxLayout()
        for b in (self.start_button, self.pause_button, self.stop_button, self.takeover_button):
            grid.addWidget(b)
        lay = QVBoxLayout(box)
        lay.addLayout(grid)
        state = QHBoxLayout()
        state.addWidget(self.state_label)
        state.addWidget(self.live_button)
        state.addStretch(1)
        lay.addLayout(state)
        lay.addWidget(self.reason)
        return box

    def _build_past_box(self) -> QGroupBox:
        box = QGroupBox("Past runs")
        self.past = QListWidget()
        self.past.setToolTip("Autonomous runs of the store, one row per policy segment (a "
                             "takeover starts a new one): click to review its telemetry.")
        self.past.itemActivated.connect(self._open_item)
        self.past.itemClicked.connect(self._open_item)
        self.open_button = QPushButton("Open file…")
        self.open_button.setToolTip("Review telemetry saved elsewhere (NAME.npz + NAME.json, e.g. "
                                    "from `main.py run --save DIR`).")
        self.open_button.clicked.connect(self.browse_telemetry)
        lay = QVBoxLayout(box)
        lay.addWidget(self.past, 1)
        lay.addWidget(self.open_button)
        return box

    # -- settings and choices --------------------------------------------------------------------
    def _list_setting(self, name: str) -> list[str]:
        v = self.settings.value(KEY + name, [])
        return [str(x) for x in ([v] if isinstance(v, str) else (v or [])) if str(x)]

    def _restore_settings(self) -> None:
        if self.is_sim:
            self.policy.addItem(SCRIPTED)
        for p in self._list_setting("policies"):
            if p != SCRIPTED:
                self.policy.addItem(p)
        self.policy.setCurrentText(str(self.settings.value(
            KEY + "policy", SCRIPTED if self.is_sim else "")))
        self.instruction.addItems(self._list_setting("instructions"))
        self.instruction.setCurrentText(str(self.settings.value(KEY + "instruction", "")))
        strategy = str(self.settings.value(KEY + "strategy", "xr0"))
        self.strategy.setCurrentText(strategy if strategy in STRATEGIES else "xr0")
        self.k.setValue(int(self.settings.value(KEY + "k", 15)))
        self._policy_changed(self.policy.currentText())

    def _remember(self, name: str, value: str) -> list[str]:
        items = [value] + [x for x in self._list_setting(name) if x != value]
        self.settings.setValue(KEY + name, items[:MAX_RECENT])
        return items[:MAX_RECENT]

    def _save_settings(self) -> None:
        spec, instruction = self.policy.currentText().strip(), self.instruction.currentText()
        if spec and spec != SCRIPTED:
            self._remember("policies", spec)
        if instruction.strip():
            items = self._remember("instructions", instruction)
            self.instruction.blockSignals(True)
            self.instruction.clear()
            self.instruction.addItems(items)
            self.instruction.setCurrentText(instruction)
            self.instruction.blockSignals(False)
        for name, value in (("policy", spec), ("instruction", instruction),
                            ("strategy", self.strategy.currentText()), ("k", self.k.value())):
            self.settings.setValue(KEY + name, value)

    def add_checkpoint(self, path: str) -> None:
        """Offer a checkpoint folder (a fine-tune run that just finished) among the policies."""
        path = str(path)
        if self.policy.findText(path) < 0:
            self.policy.insertItem(1 if self.is_sim else 0, path)
        self._remember("policies", path)
        if not self.policy.currentText().strip():
            self.policy.setCurrentText(path)

    def browse_checkpoint(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Checkpoint or fine-tune run folder")
        if folder:
            self.add_checkpoint(folder)
            self.policy.setCurrentText(folder)

    def _policy_changed(self, text: str) -> None:
        self.token.setEnabled(text.strip().startswith("tcp://"))

    # -- the store and past runs -----------------------------------------------------------------
    def _open_store(self) -> None:
        try:
            self.store = EpisodeStore.open(self.store_dir)
        except (StoreError, OSError) as e:
            # after the constructor, once the owner has connected `error`
            QTimer.singleShot(0, lambda msg=str(e): self.error.emit(
                "Cannot open the episode store",
                f"{msg}\n\nAutonomous runs still work; their telemetry goes to ~/xr0-runs/"
                f"autonomy and corrections are not recorded until the store opens."))

    def refresh_past_runs(self) -> None:
        """One row per saved policy segment of the store's autonomous runs, newest run first."""
        self.past.clear()
        if self.store is None:
            return
        for row in past_runs(self.store):
            run_dir = row["paths"].get("run_dir")
            if not run_dir:
                continue
            cfg = row["config"]
            for seg in sorted(Path(run_dir).glob("segment_*.npz")):
                item = QListWidgetItem(
                    f"run {row['id']} · {seg.stem.replace('_', ' ')} · "
                    f"{cfg.get('strategy', '')} · "
                    f"{Path(str(cfg.get('policy', ''))).name} · {row['status']}")
                item.setData(Qt.ItemDataRole.UserRole, str(seg))
                item.setToolTip(f"{seg}\ninstruction: {cfg.get('instruction', '')!r}")
                self.past.addItem(item)

    def _open_item(self, item: QListWidgetItem) -> None:
        self.open_telemetry(item.data(Qt.ItemDataRole.UserRole))

    def browse_telemetry(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Saved run telemetry", str(self.store_dir),
                                              "Run telemetry (*.npz)")
        if path:
            self.open_telemetry(path)

    def open_telemetry(self, path: str | Path) -> None:
        """Review a saved run in the plots (the live view resumes with 'Back to live')."""
        try:
            run = load_run(path)
        except (OSError, ValueError, KeyError) as e:
            self.error.emit("Cannot open the run's telemetry", f"{path}: {e}\n\nPick a "
                            f"segment_NNN.npz of a run folder or a file saved by `main.py run "
                            f"--save`; its .json must lie beside it.")
            return
        self.reviewing = Path(path)
        self.plots.show_run(run)
        self._shown_telemetry = None
        self._show_state()

    def back_to_live(self) -> None:
        self.reviewing = None
        self.plots.clear()
        self.plots.follow(LIVE_SECONDS)
        self._shown_telemetry = None
        self._final_drawn = False
        self._show_state()

    # -- operator actions ------------------------------------------------------------------------
    @property
    def state(self) -> str:
        if self._loader is not None:
            return "loading"
        return self.run.state if self.run is not None else "idle"

    def start(self) -> None:
        """Load the policy off the GUI thread; the poll starts the run once it is loaded."""
        if self.state in ("loading", *ACTIVE):
            return
        spec = self.policy.currentText().strip()
        if not spec:
            self.error.emit("No policy chosen", "Choose a checkpoint folder with 'Browse…', type "
                            "tcp://HOST:PORT of a policy server, or pick 'scripted' on the sim "
                            "rig.")
            return
        self._save_settings()
        token, instruction = self.token.text() or None, self.instruction.currentText().strip()
        self._loaded, self._cancel_load = None, False

        def load() -> None:
            try:
                policy = self._load_policy(spec, token, instruction)
            except Exception as e:  # noqa: BLE001 - shown to the operator with the fix
                self._loaded = (None, f"{type(e).__name__}: {e}" if not str(e) else str(e))
                return
            if self._cancel_load:  # stopped while loading, or the tab shut down
                discard_policy(policy)
                policy = None
            self._loaded = (policy, None)

        self.reason.setText(f"loading {spec}…")
        self._loader = threading.Thread(target=load, name="policy-load", daemon=True)
        self._loader.start()
        self._show_state()

    def _load_policy(self, spec: str, token: str | None, instruction: str):
        """The chunk policy behind `spec` (worker thread: a checkpoint takes seconds)."""
        if spec == SCRIPTED:
            from app.core.scripted_policy import ScriptedChunkPolicy

            return ScriptedChunkPolicy(self.session.rig)
        from app.core.policies import load_chunk_policy, policy_cameras

        policy = load_chunk_policy(spec, token, instruction, process=True)
        try:
            policy_cameras(self.session.config, policy)  # the rig must have the policy's cameras
        except Exception:
            discard_policy(policy)
            raise
        return policy

    def _begin(self, policy) -> None:
        """The policy is loaded: create and start the run (GUI thread)."""
        try:
            run = AutonomyRun(self.session, policy, strategy=self.strategy.currentText(),
                              k=self.k.value(), instruction=self.instruction.currentText().strip(),
                              store=self.store, on_event=self.events.put,
                              policy_name=self.policy.currentText().strip(),
                              close_policy=getattr(policy, "shutdown", None))
            run.start()
        except Exception as e:  # noqa: BLE001 - the message says what to change
            discard_policy(policy)
            self.reason.setText("")
            self.error.emit("Cannot start autonomy", str(e) or type(e).__name__)
            return
        self.run = run
        self.back_to_live()

    def toggle_pause(self) -> None:
        if self.run is None:
            return
        if self.run.state == "paused":
            self.run.resume()
        else:
            self.run.pause()
        self._show_state()

    def stop(self) -> None:
        if self._loader is not None:
            self._cancel_load = True  # the policy is dropped when it has loaded
        if self.run is not None:
            self.run.stop()
        self._show_state()

    def toggle_takeover(self) -> None:
        if self.run is None:
            return
        try:
            if self.run.state == "takeover":
                self.run.release()
            else:
                self.run.take_over()
        except Exception as e:  # noqa: BLE001 - e.g. a rig without leader arms
            self.error.emit("Takeover refused", str(e))
        self._show_state()

    def shutdown(self) -> None:
        """The app closes: stop the policy (the followers hold) and its server, the poll, the
        store."""
        self._cancel_load = True
        self.timer.stop()
        if self.run is not None:
            if self.run.state not in ("stopped", "failed"):
                self.run.stop("the app was closed")
            self.run.release_policy()  # waits for the server process to end
        if self.store is not None:
            self.store.close()
            self.store = None

    # -- the poll --------------------------------------------------------------------------------
    def poll(self) -> None:
        if self._loader is not None and not self._loader.is_alive():
            self._loader = None
            policy, err = self._loaded or (None, "the policy loader ended without a policy")
            if err:
                self.reason.setText("")
                self.error.emit("Cannot load the policy", err)
            elif self._cancel_load:
                discard_policy(policy)
                self.reason.setText("")
            else:
                self._begin(policy)
        self._drain_events()
        self._show_state()
        self._refresh_plots()

    def _drain_events(self) -> None:
        while True:
            try:
                ev = self.events.get_nowait()
            except queue.Empty:
                return
            kind = ev.get("event")
            if kind == "saved":
                self.refresh_past_runs()
            elif kind == "correction_started":
                self._recording_note = f"recording correction episode {ev.get('episode')}"
            elif kind in ("correction", "correction_abandoned"):
                self._recording_note = ""
            elif kind == "error":
                self.error.emit("Autonomy", ev.get("message", ""))
            elif kind == "state" and ev.get("state") == "failed" and ev.get("error"):
                self.error.emit("The policy stopped", f"{ev['error']}\n\nThe followers hold. "
                                f"Fix the cause, then Start again.")

    def _refresh_plots(self) -> None:
        run = self.run
        if run is None or self.reviewing is not None or not self.plots.isVisible():
            return
        tel = run.telemetry
        if tel is None:
            return
        if tel is not self._shown_telemetry:  # a new policy segment after a takeover
            self.plots.clear()
            self._shown_telemetry = tel
            self._final_drawn = False
        if run.state in ("stopped", "failed"):
            if self._final_drawn:
                return
            self._final_drawn = True
        window = int(round(LIVE_SECONDS * self.session.config.control_hz))
        self.plots.show(live_data(tel, window))

    def _show_state(self) -> None:
        state, run = self.state, self.run
        reason, error = self.reason.text(), False
        if run is not None and state in ("stopped", "failed"):
            reason, error = run.error or run.reason, bool(run.error)
            if run.corrections:
                reason += f" · corrections recorded: episodes {run.corrections}"
        elif run is not None and state in ACTIVE:
            reason = (self._recording_note if state == "takeover" and self._recording_note
                      else f"correction episodes recorded: {run.corrections}"
                      if run.corrections else "")
        key = (state, reason, error, self.reviewing is not None, run is not None,
               self.policy.currentText())
        if key == self._shown_key:  # style sheets are costly to reapply 30 times a second
            return
        self._shown_key = key
        self.state_label.setText(state)
        self.state_label.setStyleSheet(theme.badge(STATE_COLOURS.get(state, theme.MUTED)))
        self.reason.setText(reason)
        self.reason.setStyleSheet(f"color: {theme.ESTOP_RED};" if error else "")
        idle = state not in ("loading", *ACTIVE)
        self.start_button.setEnabled(idle)
        for w in (self.policy, self.browse_button, self.instruction, self.strategy, self.k):
            w.setEnabled(idle)
        self.token.setEnabled(idle and self.policy.currentText().strip().startswith("tcp://"))
        self.pause_button.setEnabled(state in ("running", "paused"))
        self.pause_button.setText("Resume" if state == "paused" else "Pause")
        self.stop_button.setEnabled(state in ("loading", *ACTIVE))
        leaders = bool(getattr(self.session.rig, "has_leaders", False))
        self.takeover_button.setEnabled(leaders and state in ("running", "paused", "takeover"))
        self.takeover_button.setText("Release" if state == "takeover" else "Take over")
        self.live_button.setVisible(self.reviewing is not None and run is not None)

