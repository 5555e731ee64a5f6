"""The workstation's main window: the always-visible E-STOP bar, the tabs, the status bar.

Tabs: Rig (arms, cameras, teleop), Record (demonstrations into the episode store), Episodes (the
store: review, marks, replay, export), Fine-tune (background training jobs), Autonomy (the policy
on the rig through the asynchronous runtime, with live plots). The tabs talk through signals:
a recorded episode refreshes Episodes, the Episodes selection feeds Fine-tune, a finished
fine-tune offers its checkpoint to Autonomy.

The window owns no robot logic. It connects the RigSession in a background thread (so the window
is up at once), polls the session on a ~30 Hz QTimer and shows what it finds; operator actions go
straight to the session. Window geometry and the operator's options persist in QSettings.
"""

from __future__ import annotations

import math
import sys
import threading
from pathlib import Path

from PySide6.QtCore import QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QLabel, QMainWindow, QMessageBox, QTabWidget, QVBoxLayout, QWidget

from app.core.rig_session import RigSession, SessionStatus
from app.qt import theme
from app.qt.autonomy_tab import AutonomyTab
from app.qt.episodes_tab import EpisodesTab
from app.qt.estop import EStopBar
from app.qt.finetune_tab import FineTuneTab
from app.qt.record_panel import RecordPanel
from app.qt.rig_panel import RigPanel
from drivers.clock import now

POLL_MS = 33  # ~30 Hz: cameras, plots, readouts, status bar
AUTO_ENGAGE_KEY = "rig/auto_engage_sim"
LOOP_EPISODES_KEY = "rig/loop_episodes_sim"
DATA_DIR_KEY = "data/dir"
DEFAULT_DATA_DIR = Path.home() / "xr0-data"  # store/ (episodes, runs table) and runs/ (fine-tunes)


def data_dir(explicit: str | Path | None = None) -> Path:
    """Where the app keeps its episode store and fine-tune runs: the given folder, else the last
    one used (QSettings), else ~/xr0-data."""
    if explicit is not None:
        return Path(explicit).expanduser()
    saved = settings().value(DATA_DIR_KEY)
    return Path(saved).expanduser() if saved else DEFAULT_DATA_DIR


def settings() -> QSettings:
    return QSettings("XR0", "Workstation")


def show_error(parent: QWidget | None, title: str, text: str) -> QMessageBox:
    """A non-blocking error dialog (the event loop, the plots and the E-STOP keep running).
    Also printed to stderr for a terminal or a log."""
    print(f"error: {title}: {text}", file=sys.stderr)
    box = QMessageBox(QMessageBox.Icon.Critical, title, text, QMessageBox.StandardButton.Ok, parent)
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    box.setWindowModality(Qt.WindowModality.NonModal)
    box.show()
    return box


class MainWindow(QMainWindow):
    closed = Signal()  # after the session has been closed (followers torque off)

    def __init__(self, session: RigSession, auto_engage: bool | None = None,
                 data: str | Path | None = None):
        super().__init__()
        self.session = session
        cfg = session.config
        self.data_dir = data_dir(data)
        self.store_dir, self.runs_dir = self.data_dir / "store", self.data_dir / "runs"
        self.setWindowTitle(f"XR0 Workstation — {cfg.name} ({cfg.kind} rig) — {self.data_dir}")
        self.resize(1400, 900)
        self._settings = settings()
        if auto_engage is None:
            auto_engage = bool(self._settings.value(AUTO_ENGAGE_KEY, True, type=bool))
        # Teleop never engages by itself on hardware: a person engages it at the rig.
        self.auto_engage = auto_engage and cfg.kind == "sim"
        self._auto_engaged = False
        self._starter: threading.Thread | None = None
        self._start_error = ""
        self._reported_error = ""
        self.errors: list[str] = []  # every error shown, newest last
        self.live_since: float | None = None  # when cameras and joints first updated

        self.estop = EStopBar(session)
        self.estop.install_shortcut(self)
        self.estop.triggered.connect(lambda src: self.statusBar().showMessage(
            f"E-STOP ({src}): commands refused, followers holding", 5000))
        self.rig_panel = RigPanel(session)
        self.rig_panel.error.connect(self.report_error)
        self.record_panel = RecordPanel(session, self.store_dir)
        self.episodes_tab = EpisodesTab(self.store_dir, session)
        self.finetune_tab = FineTuneTab(self.store_dir, self.runs_dir)
        self.autonomy_tab = AutonomyTab(session, self.store_dir)
        self.tabs = QTabWidget()
        self.tabs.setObjectName("main_tabs")
        for widget, title in ((self.rig_panel, "Rig"), (self.record_panel, "Record"),
                              (self.episodes_tab, "Episodes"), (self.finetune_tab, "Fine-tune"),
                              (self.autonomy_tab, "Autonomy")):
            self.tabs.addTab(widget, title)
            if widget is not self.rig_panel:
                widget.error.connect(self.report_error)
        self.record_panel.episode_recorded.connect(lambda _id: self.episodes_tab.refresh())
        self.episodes_tab.selection_changed.connect(self.finetune_tab.set_selection)
        self.finetune_tab.checkpoint_ready.connect(self.autonomy_tab.add_checkpoint)
        self.tabs.currentChanged.connect(self._tab_shown)

        central = QWidget()
        lay = QVBoxLayout(central)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        lay.addWidget(self.estop)
        lay.addWidget(self.tabs, 1)
        self.setCentralWidget(central)
        self._build_menus()
        self._build_status_bar()

        self.timer = QTimer(self)
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.poll)
        self._restore_geometry()

    # -- construction ----------------------------------------------------------------------
    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        quit_action = QAction("&Quit", self)
        quit_action.setShortcut(QKeySequence.StandardKey.Quit)
        quit_action.triggered.connect(self.close)
        file_menu.addAction(quit_action)
        rig_menu = self.menuBar().addMenu("&Rig")
        self.auto_engage_action = QAction("Engage teleop at start (sim rig only)", self)
        self.auto_engage_action.setCheckable(True)
        self.auto_engage_action.setChecked(
            bool(self._settings.value(AUTO_ENGAGE_KEY, True, type=bool)))
        self.auto_engage_action.toggled.connect(
            lambda on: self._settings.setValue(AUTO_ENGAGE_KEY, on))
        rig_menu.addAction(self.auto_engage_action)
        self.loop_action = QAction("Start a new episode when one ends (sim rig only)", self)
        self.loop_action.setCheckable(True)
        self.loop_action.setChecked(bool(self._settings.value(LOOP_EPISODES_KEY, True, type=bool)))
        self.loop_action.toggled.connect(self._set_loop)
        rig_menu.addAction(self.loop_action)
        self._set_loop(self.loop_action.isChecked())

    def _set_loop(self, on: bool) -> None:
        self._settings.setValue(LOOP_EPISODES_KEY, on)
        self.rig_panel.loop_episodes = on and self.session.config.kind == "sim"

    def _build_status_bar(self) -> None:
        sb = self.statusBar()
        self.sb_session = QLabel("connecting…")
        self.sb_rate = QLabel("control — Hz")
        self.sb_period = QLabel("period error p99 — ms")
        self.sb_missed = QLabel("missed 0")
        self.sb_cameras = QLabel("cameras —")
        self.sb_estop = QLabel()
        for w in (self.sb_session, self.sb_rate, self.sb_period, self.sb_missed, self.sb_cameras,
                  self.sb_estop):
            sb.addPermanentWidget(w)

    def _tab_shown(self, index: int) -> None:
        """A tab shown again reads the store again (episodes recorded or runs finished elsewhere)."""
        widget = self.tabs.widget(index)
        if widget is self.episodes_tab:
            self.episodes_tab.refresh()
        elif widget is self.finetune_tab:
            self.finetune_tab.refresh_runs()
        elif widget is self.autonomy_tab:
            self.autonomy_tab.refresh_past_runs()

    @property
    def busy(self) -> str:
        """What is driving the followers besides teleop ('' if nothing): the sim scene must not be
        reset under a recording, a replay or the policy."""
        if self.record_panel.recording:
            return "recording"
        if self.session.source is not None:
            return "replay or policy"
        return ""

    def _restore_geometry(self) -> None:
        geo = self._settings.value("main_window/geometry")
        if geo is not None:
            self.restoreGeometry(geo)
        state = self._settings.value("main_window/state")
        if state is not None:
            self.restoreState(state)
        tab = self._settings.value("main_window/tab")
        if tab is not None and 0 <= int(tab) < self.tabs.count():
            self.tabs.setCurrentIndex(int(tab))
        split = self._settings.value("main_window/rig_splitter")
        if split is not None:
            self.rig_panel.splitter.restoreState(split)

    # -- session life cycle ----------------------------------------------------------------
    def start_session(self) -> None:
        """Connect the rig and start its control loop off the GUI thread; poll for the rest."""
        if self._starter is not None:
            return

        def connect() -> None:
            try:
                self.session.start()
            except Exception as e:  # noqa: BLE001 - shown to the operator with the fix
                self._start_error = f"{type(e).__name__}: {e}" if not str(e) else str(e)

        self._starter = threading.Thread(target=connect, name="rig-connect", daemon=True)
        self._starter.start()
        self.timer.start()

    @property
    def connecting(self) -> bool:
        return self._starter is not None and self._starter.is_alive()

    def showEvent(self, event) -> None:  # noqa: N802 - Qt naming
        super().showEvent(event)
        self.start_session()

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt naming
        self.timer.stop()
        self._settings.setValue("main_window/geometry", self.saveGeometry())
        self._settings.setValue("main_window/state", self.saveState())
        self._settings.setValue("main_window/rig_splitter", self.rig_panel.splitter.saveState())
        self._settings.setValue("main_window/tab", self.tabs.currentIndex())
        self._settings.setValue(DATA_DIR_KEY, str(self.data_dir))
        self._settings.sync()
        # the tabs end their work first: a recording is finished and kept, the policy stops and
        # its telemetry is saved, playback and export threads end; a training job keeps running
        # in its own process and is found again when the app reopens
        for tab in (self.autonomy_tab, self.record_panel, self.episodes_tab, self.finetune_tab):
            try:
                tab.shutdown()
            except Exception as e:  # noqa: BLE001 - closing must reach session.close() below
                print(f"error: closing the {type(tab).__name__}: {e}", file=sys.stderr)
        self.session.remove_listener(self.rig_panel.history)
        if self._starter is not None:
            self._starter.join(timeout=30.0)  # a connect in progress finishes, then we close
        self.session.close()  # control loop ends, followers torque off
        super().closeEvent(event)
        self.closed.emit()

    @property
    def failure(self) -> str:
        """Why the rig could not run ('' if it ran): a connect error or a control-loop error."""
        return self._start_error or self.session.status().error

    # -- errors ----------------------------------------------------------------------------
    def report_error(self, title: str, text: str) -> None:
        self.errors.append(f"{title}: {text}")
        show_error(self, title, text)

    # -- the poll --------------------------------------------------------------------------
    def poll(self) -> None:
        if self.connecting:
            self.sb_session.setText("connecting to the rig…")
            return
        if self._start_error and self._start_error != self._reported_error:
            self._reported_error = self._start_error
            self.sb_session.setText("not connected")
            self.report_error(
                "Could not connect to the rig",
                f"{self._start_error}\n\nFix the rig or its config "
                f"({self.session.config.source or self.session.config.name}), then restart the app.")
            return
        st = self.session.status()
        if st.error and st.error != self._reported_error:
            self._reported_error = st.error
            self.report_error(
                "The control loop stopped",
                f"{st.error}\n\nThe followers were told to hold and to drop their torque (a "
                f"failure to do so is listed above: then cut the arms' power). Check the rig, "
                f"then close and reopen the app.")
        self._maybe_auto_engage(st)
        self.rig_panel.loop_episodes = (self.loop_action.isChecked() and not self.busy
                                        and self.session.config.kind == "sim")
        self.rig_panel.refresh(st)
        self.estop.show_state(st.estopped)
        self._show_status(st)
        if self.live_since is None and self._live():
            self.live_since = now()

    def _maybe_auto_engage(self, st: SessionStatus) -> None:
        if not self.auto_engage or self._auto_engaged or not st.running:
            return
        rec = self.session.latest()
        if rec is None or rec.state.leader is None:
            return
        self._auto_engaged = True
        if st.teleop == "idle" and not st.estopped:
            self.rig_panel.engage()

    def _live(self) -> bool:
        views = self.rig_panel.cameras.values()
        return self.rig_panel.history.count > 1 and all(v.frames_shown > 0 for v in views)

    def _show_status(self, st: SessionStatus) -> None:
        if st.running:
            self.sb_session.setText("running")
        elif st.error:
            self.sb_session.setText("stopped (error)")
        else:
            self.sb_session.setText("stopped")
        self.sb_rate.setText(f"control {st.rate_hz:.1f} Hz")
        p99 = st.period_error_ms.get("p99", math.nan)
        self.sb_period.setText("period error p99 — ms" if math.isnan(p99)
                               else f"period error p99 {p99:.2f} ms")
        self.sb_missed.setText(f"missed {st.missed_ticks}")
        if st.camera_fps:
            self.sb_cameras.setText("cameras " + " · ".join(
                f"{n} {fps:.1f}" for n, fps in st.camera_fps.items()) + " fps")
        if st.estopped:
            self.sb_estop.setText("E-STOP ACTIVE")
            theme.set_style(self.sb_estop, theme.badge(theme.ESTOP_RED))
        else:
            self.sb_estop.setText("e-stop clear")
            theme.set_style(self.sb_estop, theme.badge(theme.OK_GREEN))

    # -- screenshots -----------------------------------------------------------------------
    def save_screenshots(self, directory: str | Path, tabs: list[str] | None = None) -> list[Path]:
        """One PNG of the whole window per tab (or per tab named in `tabs`), named after the tab
        (rig.png, record.png, episodes.png, fine-tune.png, autonomy.png)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        current = self.tabs.currentIndex()
        out = []
        for i in range(self.tabs.count()):
            name = self.tabs.tabText(i).replace("&", "").strip().lower().replace(" ", "_")
            if tabs is not None and self.tabs.tabText(i) not in tabs:
                continue
            self.tabs.setCurrentIndex(i)
            path = d / f"{name}.png"
            if not self.grab().save(str(path)):
                raise OSError(f"could not write {path}: check that the folder is writable")
            out.append(path)
        self.tabs.setCurrentIndex(current)
        return out
