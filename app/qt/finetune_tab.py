"""The Fine-tune tab: selected episodes + base checkpoint + preset -> a background training job.

The trainer runs in its own process (app.core.jobs.TrainingJob); its JSON events arrive on a reader
thread and wait in the job's queue, which a QTimer on the GUI thread drains: progress bar, ETA,
samples/s, learning rate, the training-loss plot and the validation plot follow them. Cancel asks
the trainer to finish its step and write a last checkpoint (from a worker thread, so the window
never blocks). The runs table lists every fine-tune run of the store; a run still training when the
tab is created (the app was closed and opened again) is followed again from its events.jsonl.
"""

from __future__ import annotations

import queue
import shlex
import threading
import time
from pathlib import Path

import pyqtgraph as pg
from PySide6.QtCore import QSettings, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QAbstractItemView, QComboBox, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QHeaderView,
    QLabel, QLineEdit, QProgressBar, QPushButton, QSpinBox, QSplitter, QTableWidget,
    QTableWidgetItem, QVBoxLayout, QWidget,
)

from app.core.jobs import RunRecord, TrainingJob, find_runs, visible_gpus
from app.qt import theme
from app.qt.training_plots import TrainingPlots, format_eta, ranges
from store import EpisodeStore, StoreError
from store.db import INDEX
from store.selection import parse_episode_ids
from xr0.train.config import PRESETS
from xr0.train.rundir import LAST_FILE, RUN_FILE, RunDir, read_events

POLL_MS = 150
CHECKPOINT_MARKER = "xr0_checkpoint.json"  # written into every checkpoint folder
BASE_MODELS = tuple(dict.fromkeys(cfg.base for cfg in PRESETS.values()))  # built from scratch
KEY = "finetune/"
STATUS_COLOURS = {"running": theme.WARN_AMBER, "done": theme.OK_GREEN, "cancelled": theme.MUTED,
                  "failed": theme.ESTOP_RED, "died": theme.ESTOP_RED}


class FineTuneTab(QWidget):
    error = Signal(str, str)          # (title, message with the fix)
    runs_changed = Signal()           # the runs table was read again
    checkpoint_ready = Signal(str)    # a run ended with this checkpoint folder

    COLUMNS = ("run", "status", "step", "preset", "base", "checkpoint")

    def __init__(self, store_dir: Path, runs_dir: Path, parent: QWidget | None = None):
        super().__init__(parent)
        self.store_dir, self.runs_dir = Path(store_dir), Path(runs_dir)
        self.settings = QSettings("XR0", "Workstation")
        self.job: TrainingJob | None = None
        self.runs: list[RunRecord] = []
        self.last_event: dict | None = None
        self._ended = False             # a done or error event of the current job came in
        self._started = False           # its start event came in
        self._gone_since: float | None = None
        self._canceller: threading.Thread | None = None
        self._announced: set[str] = set()  # checkpoints already passed to checkpoint_ready

        # -- inputs
        self.episodes = QLineEdit()
        self.episodes.setPlaceholderText("all complete episodes (or e.g. 1,3,5-9)")
        self.base = QComboBox()
        self.base.setEditable(True)
        self.base.addItems(BASE_MODELS)
        self.base.setToolTip("A model preset trained from scratch, or a checkpoint folder "
                             "(a run's checkpoints/step-N, or a run folder for its last one).")
        self.base_button = QPushButton("Checkpoint…")
        self.base_button.clicked.connect(self.choose_base)
        self.preset = QComboBox()
        self.preset.addItems(list(PRESETS))
        self.steps = QSpinBox()
        self.steps.setRange(1, 10_000_000)
        self.batch = QSpinBox()
        self.batch.setRange(1, 65_536)
        self.val_episodes = QSpinBox()
        self.val_episodes.setRange(0, 1000)
        self.val_episodes.setToolTip("The last episodes of the selection are held out to validate.")
        self.gpus = QSpinBox()
        self.gpus.setRange(1, max(1, visible_gpus()))
        self.gpus.setToolTip("Trainer processes, one per GPU, under torchrun: the full preset "
                             "shards the model over them (FSDP), the others each hold a copy "
                             "(DDP). The batch is split between them.")
        self.options = QLineEdit()
        self.options.setPlaceholderText("more trainer options, e.g. --micro-batch 4 --workers 0")
        self.start_button = QPushButton("Fine-tune")
        self.start_button.setStyleSheet("font-weight: bold;")
        self.start_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("The trainer finishes its step, writes a last checkpoint and "
                                      "stops; the run can continue later with --resume.")
        self.cancel_button.clicked.connect(self.cancel)
        self.preset.currentTextChanged.connect(self._preset_defaults)

        base_row = QHBoxLayout()
        base_row.addWidget(self.base, 1)
        base_row.addWidget(self.base_button)
        form = QFormLayout()
        form.addRow("Episodes", self.episodes)
        form.addRow("Base", base_row)
        form.addRow("Preset", self.preset)
        form.addRow("Steps", self.steps)
        form.addRow("Batch", self.batch)
        form.addRow("Validation episodes", self.val_episodes)
        form.addRow("GPUs", self.gpus)
        form.addRow("Trainer options", self.options)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.cancel_button)
        form.addRow(buttons)
        inputs = QGroupBox("New fine-tune run")
        inputs.setLayout(form)

        # -- progress
        self.status = QLabel("no run in progress")
        self.status.setWordWrap(True)
        self.progress = QProgressBar()
        self.progress.setFormat("step %v / %m")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.eta = QLabel("—")
        self.rate = QLabel("—")
        self.lr = QLabel("—")
        self.loss = QLabel("—")
        figures = QFormLayout()
        figures.addRow("ETA", self.eta)
        figures.addRow("samples/s", self.rate)
        figures.addRow("learning rate", self.lr)
        figures.addRow("loss", self.loss)
        prog_lay = QVBoxLayout()
        prog_lay.addWidget(self.status)
        prog_lay.addWidget(self.progress)
        prog_lay.addLayout(figures)
        prog_lay.addStretch(1)
        progress_box = QGroupBox("Progress")
        progress_box.setLayout(prog_lay)

        top = QHBoxLayout()
        top.addWidget(inputs, 3)
        top.addWidget(progress_box, 2)
        self.plots = TrainingPlots()

        # -- runs
        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(list(self.COLUMNS))
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.verticalHeader().setVisible(False)
        self.table.itemSelectionChanged.connect(self._show_selected_run)
        self.use_button = QPushButton("Use as base")
        self.use_button.setToolTip("Fine-tune further from the selected run's checkpoint.")
        self.use_button.clicked.connect(self.use_selected_as_base)
        refresh = QPushButton("Refresh")
        refresh.clicked.connect(self.refresh_runs)
        run_buttons = QHBoxLayout()
        run_buttons.addStretch(1)
        run_buttons.addWidget(self.use_button)
        run_buttons.addWidget(refresh)
        runs_box = QGroupBox("Runs of this store")
        runs_lay = QVBoxLayout(runs_box)
        runs_lay.addWidget(self.table)
        runs_lay.addLayout(run_buttons)

        upper = QWidget()
        upper_lay = QVBoxLayout(upper)
        upper_lay.setContentsMargins(0, 0, 0, 0)
        upper_lay.addLayout(top)
        upper_lay.addWidget(self.plots, 1)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(upper)
        split.addWidget(runs_box)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(split)

        self._restore_settings()
        self.timer = QTimer(self)
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.poll)
        self.refresh_runs()
        self._attach_running()
        self._update_buttons()
        self.timer.start()

    # -- settings --------------------------------------------------------------------------------
    def _preset_defaults(self, name: str) -> None:
        cfg = PRESETS.get(name)
        if cfg is not None:
            self.steps.setValue(cfg.steps)
            self.batch.setValue(cfg.batch)
            self.val_episodes.setValue(cfg.val_episodes)

    def _restore_settings(self) -> None:
        s = self.settings
        preset = str(s.value(KEY + "preset", "tiny-scratch"))
        self.preset.setCurrentText(preset if preset in PRESETS else "tiny-scratch")
        self._preset_defaults(self.preset.currentText())
        self.base.setCurrentText(str(s.value(KEY + "base", PRESETS[self.preset.currentText()].base)))
        for box, name in ((self.steps, "steps"), (self.batch, "batch"),
                          (self.val_episodes, "val_episodes")):
            value = s.value(KEY + name)
            if value is not None:
                box.setValue(int(value))
        self.options.setText(str(s.value(KEY + "options", "")))

    def _save_settings(self) -> None:
        s = self.settings
        s.setValue(KEY + "preset", self.preset.currentText())
        s.setValue(KEY + "base", self.base.currentText().strip())
        s.setValue(KEY + "steps", self.steps.value())
        s.setValue(KEY + "batch", self.batch.value())
        s.setValue(KEY + "val_episodes", self.val_episodes.value())
        s.setValue(KEY + "options", self.options.text())
        s.sync()

    # -- inputs ----------------------------------------------------------------------------------
    def set_selection(self, ids: list[int]) -> None:
        """Select these episodes (the Episodes tab passes its selection)."""
        self.episodes.setText(",".join(str(i) for i in ids))

    def choose_base(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Base checkpoint or run folder",
                                                  str(self.runs_dir))
        if folder:
            self.base.setCurrentText(folder)

    def use_selected_as_base(self) -> None:
        run = self.selected_run()
        if run is None or not run.checkpoint:
            self.error.emit("No checkpoint selected", "Select a run with a checkpoint in the runs "
                            "table first.")
            return
        self.base.setCurrentText(run.checkpoint)

    def resolve_base(self, text: str) -> str:
        """The base as the trainer takes it; raises ValueError with the fix."""
        text = text.strip()
        if not text:
            raise ValueError(f"Choose a base: a model preset ({', '.join(BASE_MODELS)}) or a "
                             "checkpoint folder with 'Checkpoint…'.")
        if text in BASE_MODELS:
            return text
        path = Path(text).expanduser()
        if not path.is_dir():
            raise ValueError(f"The base {text} is neither a model preset ({', '.join(BASE_MODELS)}) "
                             "nor an existing folder: choose a checkpoint folder with "
                             "'Checkpoint…' or a preset.")
        if (path / RUN_FILE).is_file():
            last = RunDir(path).last_checkpoint()
            if last is None:
                raise ValueError(f"The run folder {path} has no complete checkpoint yet "
                                 f"({LAST_FILE} is missing): choose a run that wrote one.")
            return str(last.resolve())
        if not (path / CHECKPOINT_MARKER).is_file():
            raise ValueError(f"{path} is not a checkpoint folder (no {CHECKPOINT_MARKER}): choose "
                             "a run's checkpoints/step-N folder or the run folder itself.")
        return str(path.resolve())

    def selection(self) -> str:
        """The trainer's --episodes for the typed selection; raises ValueError with the fix."""
        if not (self.store_dir / INDEX).is_file():
            raise ValueError(f"The store {self.store_dir} holds no episodes yet: record "
                             "demonstrations in the Record panel first.")
        try:
            with EpisodeStore.open(self.store_dir) as st:
                complete = [e.id for e in st.episodes(status="complete")]
        except StoreError as e:
            raise ValueError(str(e)) from e
        if not complete:
            raise ValueError(f"The store {self.store_dir} has no complete episodes: record "
                             "demonstrations in the Record panel (or recover incomplete ones "
                             "in the Episodes tab) first.")
        text = self.episodes.text().strip()
        ids = parse_episode_ids(text) if text else complete
        if not ids:
            raise ValueError("The episode selection is empty: type ids like 1,3,5-9, or leave "
                             "the field empty for all complete episodes.")
        unknown = sorted(set(ids) - set(complete))
        if unknown:
            raise ValueError(f"Episode(s) {', '.join(map(str, unknown[:10]))} are not complete "
                             f"episodes of the store (complete: {ranges(complete)}): select "
                             "complete ones.")
        k = self.val_episodes.value()
        if len(set(ids)) <= k:
            raise ValueError(f"{len(set(ids))} episode(s) selected but {k} are held out for "
                             "validation: select more episodes or lower 'Validation episodes'.")
        return ",".join(map(str, ids)) if text else "all"

    def _new_run_dir(self) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path, n = self.runs_dir / f"{stamp}-{self.preset.currentText()}", 1
        while path.exists():
            n += 1
            path = self.runs_dir / f"{stamp}-{self.preset.currentText()}-{n}"
        return path

    # -- the job ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Check the inputs, then start the trainer process; every problem goes to `error`."""
        if self.running:
            self.error.emit("A fine-tune run is in progress",
                            "Wait for it to finish or cancel it before starting another.")
            return
        try:
            episodes = self.selection()
            base = self.resolve_base(self.base.currentText())
            extra = shlex.split(self.options.text())
        except ValueError as e:
            self.error.emit("Cannot start fine-tuning", str(e))
            return
        self._save_settings()
        out = self._new_run_dir()
        try:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            job = TrainingJob.start(self.store_dir, out, base=base, preset=self.preset.currentText(),
                                    episodes=episodes, steps=self.steps.value(),
                                    batch=self.batch.value(),
                                    val_episodes=self.val_episodes.value(), extra_args=extra,
                                    processes=self.gpus.value(), strategy=self._strategy())
        except OSError as e:
            self.error.emit("Cannot start fine-tuning", f"{e}: check that {self.runs_dir} is "
                            "writable and the workstation is installed completely.")
            return
        self._follow(job, f"starting the trainer for {out.name}…")

    def _strategy(self) -> str | None:
        """How several processes share the model: FSDP for the full fine-tune, else DDP."""
        if self.gpus.value() == 1:
            return None
        return "fsdp" if PRESETS[self.preset.currentText()].trainable == "all" else "ddp"

    def _follow(self, job: TrainingJob, message: str) -> None:
        self.job, self.last_event, self._gone_since = job, None, None
        self._ended = self._started = False
        self.plots.clear()
        self.progress.setRange(0, max(self.steps.value(), 1))
        self.progress.setValue(0)
        for label in (self.eta, self.rate, self.lr, self.loss):
            label.setText("—")
        self.status.setText(message)
        self._update_buttons()

    def _attach_running(self) -> None:
        running = [r for r in self.runs if r.status == "running"]
        if running:
            run = running[-1]
            try:
                job = TrainingJob.attach(run)
            except ValueError as e:
                self.error.emit("Cannot follow a running fine-tune run", str(e))
                return
            self._follow(job, f"following run {run.run_id} ({run.run_dir.name}), still training")

    @property
    def running(self) -> bool:
        return self.job is not None

    def cancel(self) -> None:
        job = self.job
        if job is None or self._canceller is not None:
            return
        self.status.setText("cancelling: the trainer finishes its step and writes a last "
                            "checkpoint…")
        self._canceller = threading.Thread(target=job.cancel, name="finetune-cancel", daemon=True)
        self._canceller.start()
        self._update_buttons()

    def poll(self) -> None:
        """GUI thread: take the job's events, update the view, notice the end."""
        job = self.job
        if job is None:
            return
        while True:
            try:
                ev = job.events.get_nowait()
            except queue.Empty:
                break
            self._apply(ev)
        self.plots.redraw()
        if job.alive():
            return
        # the process is gone: give the reader a moment for its last lines, then close the run
        if self._gone_since is None:
            self._gone_since = time.monotonic()
        if self._ended or time.monotonic() - self._gone_since > 2.0:
            self._finish()

    def _apply(self, ev: dict) -> None:
        kind = ev.get("event")
        self.last_event = ev
        if kind == "start":
            self._started = True
            self.progress.setRange(0, max(int(ev["steps"]), 1))
            self.progress.setValue(int(ev.get("step", 0)))
            self.status.setText(
                f"run {ev.get('run_id')}: training on {ev.get('samples')} samples of episodes "
                f"{ranges(ev.get('train_episodes', []))}, validating on "
                f"{ranges(ev.get('val_episodes', [])) or 'none'} ({ev.get('device')})")
        elif kind == "step":
            self.progress.setRange(0, max(int(ev["steps"]), 1))
            self.progress.setValue(int(ev["step"]))
            self.eta.setText(format_eta(ev.get("eta_s")))
            self.rate.setText(f"{ev.get('samples_per_s', 0.0):.1f}")
            self.lr.setText(f"{ev.get('lr', 0.0):.2e}")
            self.loss.setText(f"{ev.get('loss', float('nan')):.4f}")
        elif kind == "checkpoint":
            self.status.setText(f"checkpoint at step {ev['step']}: {ev['path']}")
        elif kind == "done":
            self._ended = True
            ck = ev.get("checkpoint")
            self.status.setText(f"{ev['status']} at step {ev['step']}"
                                + (f"; checkpoint {ck}" if ck else "; no checkpoint written")
                                + ("; it can continue with --resume" if ev["status"] == "cancelled"
                                   else ""))
            if ev["status"] == "done":
                self.eta.setText("0:00")
            if ck and ck not in self._announced:
                self._announced.add(ck)
                self.checkpoint_ready.emit(ck)
        elif kind == "error":
            self._ended = True
            self.status.setText(f"failed: {ev.get('message', '')}")
            self.error.emit("Fine-tuning failed" if self._started else "Cannot start fine-tuning",
                            str(ev.get("message", "the trainer stopped with an error")))
        self.plots.add(ev)

    def _finish(self) -> None:
        job, self.job = self.job, None
        if not self._ended:
            tail = "\n".join(job.stderr_tail[-5:]) if job is not None else ""
            self.status.setText("the trainer stopped without a final event")
            self.error.emit("The fine-tune process ended unexpectedly",
                            f"exit status {job.returncode if job else '?'}. {tail}\nIts last "
                            "checkpoint (if any) is listed in the runs table; start a new run or "
                            "continue it with main.py train --resume.")
        if self._canceller is not None:
            self._canceller.join(timeout=1.0)
            self._canceller = None
        self.refresh_runs()
        self._update_buttons()

    def _update_buttons(self) -> None:
        self.start_button.setEnabled(self.job is None)
        self.cancel_button.setEnabled(self.job is not None and self._canceller is None)

    # -- runs ------------------------------------------------------------------------------------
    def refresh_runs(self) -> None:
        self.runs = []
        if (self.store_dir / INDEX).is_file():
            try:
                self.runs = find_runs(self.store_dir)
            except StoreError as e:
                self.error.emit("Cannot read the runs of the store", str(e))
        self.table.setRowCount(len(self.runs))
        for r, run in enumerate(self.runs):
            cells = (str(run.run_id), run.status, "—" if run.step is None else str(run.step),
                     str(run.config.get("preset", "")), Path(str(run.config.get("base", ""))).name,
                     run.checkpoint or "—")
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if c == 1:
                    item.setForeground(pg.mkColor(STATUS_COLOURS.get(run.status, theme.MUTED)))
                self.table.setItem(r, c, item)
        for run in self.runs:   # finished runs become bases to fine-tune further
            if run.checkpoint and self.base.findText(run.checkpoint) < 0:
                self.base.addItem(run.checkpoint)
        self.runs_changed.emit()

    def selected_run(self) -> RunRecord | None:
        rows = self.table.selectionModel().selectedRows()
        return self.runs[rows[0].row()] if rows and rows[0].row() < len(self.runs) else None

    def _show_selected_run(self) -> None:
        """With no run in progress, the plots show the selected run's curves."""
        run = self.selected_run()
        if self.job is not None or run is None or run.run_dir is None:
            return
        self.plots.clear()
        for ev in read_events(run.run_dir):
            self.plots.add(ev)
        self.plots.redraw()

    def shutdown(self) -> None:
        """Stop polling (the app closes). A running trainer is not cancelled: find_runs lists it
        as running while it lives, and a new tab follows it again."""
        self.timer.stop()

