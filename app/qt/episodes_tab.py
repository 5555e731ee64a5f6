"""The Episodes tab: the episode store as a table, playback of the selected episode, and what an
operator does with episodes: judge them (success / failure), write notes, discard, replay one on
the rig, export a selection to LeRobot.

Every change goes through the store's API (EpisodeStore.update / discard), so the table, the
command line (`main.py episodes`) and the training view read the same index. Discarded episodes
lose their files and never count toward training. Replay runs the recorded actions through
drivers.replay.ReplaySource (a safe ramp to the first pose, then the same safety filter as
teleop); the export runs store.lerobot.export_dataset in a worker thread.
"""

from __future__ import annotations

import threading
from pathlib import Path

from PySide6.QtCore import QEvent, QItemSelection, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QAbstractItemView, QComboBox, QFileDialog, QGroupBox, QHBoxLayout, QHeaderView, QLabel,
    QMessageBox, QPlainTextEdit, QProgressBar, QPushButton, QSplitter, QTableView, QVBoxLayout,
    QWidget,
)

from app.core.rig_session import RigSession
from app.qt.episode_player import EpisodePlayer
from app.qt.episode_table import DATES, STATUS, SUCCESS, EpisodeTableModel, passes
from drivers import layout
from store import EpisodeInfo, EpisodeStore, StoreError

POLL_MS = 200  # replay progress and whether the rig can replay


class EpisodesTab(QWidget):
    """The store's episodes: filters, table, edits, player, replay and export."""

    error = Signal(str, str)  # (title, text with the fix): the main window shows a dialog
    selection_changed = Signal(list)  # selected episode ids
    _export_event = Signal(dict)  # from the export thread
    _export_finished = Signal(str, str)  # (summary, error): from the export thread

    def __init__(self, store_dir: Path, session: RigSession | None = None, parent=None):
        super().__init__(parent)
        self.store_dir = Path(store_dir)
        self.session = session
        self.store: EpisodeStore | None = None
        self.replay = None  # the ReplaySource commanding the followers, while one runs
        self.replay_episode: int | None = None
        self.replay_message = ""
        self.export_thread: threading.Thread | None = None
        self.confirm_box: QMessageBox | None = None  # the open confirmation dialog, if any
        # Where an export goes: a callable returning a folder, '' to cancel (tests replace it).
        self.ask_export_folder = self._ask_export_folder
        self._notes_episode: int | None = None

        self._build_filters()
        self._build_table()
        self._build_edits()
        self.player = EpisodePlayer()
        left = QWidget()
        left_lay = QVBoxLayout(left)
        left_lay.setContentsMargins(0, 0, 0, 0)
        left_lay.addWidget(self.table, 1)
        left_lay.addWidget(self.edits)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(self.player)
        split.setStretchFactor(0, 2)
        split.setStretchFactor(1, 3)
        split.setSizes([620, 780])
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addLayout(self.filters)
        lay.addWidget(split, 1)

        self._export_event.connect(self._on_export_event)
        self._export_finished.connect(self._on_export_finished)
        self.timer = QTimer(self)
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.poll)
        self.timer.start()
        self._open_store()
        self.refresh()

    # -- construction --------------------------------------------------------------------------
    def _build_filters(self) -> None:
        self.task_filter = QComboBox()
        self.task_filter.setMinimumWidth(220)
        self.date_filter = QComboBox()
        self.date_filter.addItems(list(DATES))
        self.success_filter = QComboBox()
        self.success_filter.addItems(list(SUCCESS))
        self.status_filter = QComboBox()
        self.status_filter.addItems(list(STATUS))
        self.status_filter.setToolTip("Complete episodes are the ones training uses; incomplete "
                                      "ones (a recording that stopped) play what survived and "
                                      "can be deleted")
        for combo in (self.task_filter, self.date_filter, self.success_filter, self.status_filter):
            combo.currentIndexChanged.connect(self.refresh)
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.clicked.connect(self.refresh)
        self.count = QLabel("")
        self.filters = QHBoxLayout()
        for label, w in (("task", self.task_filter), ("date", self.date_filter),
                         ("success", self.success_filter), ("status", self.status_filter)):
            self.filters.addWidget(QLabel(label))
            self.filters.addWidget(w)
        self.filters.addWidget(self.refresh_button)
        self.filters.addStretch(1)
        self.filters.addWidget(self.count)

    def _build_table(self) -> None:
        self.model = EpisodeTableModel(self)
        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.setAlternatingRowColors(True)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)  # notes
        self.table.selectionModel().selectionChanged.connect(self._on_selection)

    def _build_edits(self) -> None:
        self.edits = QGroupBox("Selected episodes")
        self.success_button = QPushButton("Success")
        self.failure_button = QPushButton("Failure")
        self.unknown_button = QPushButton("Not judged")
        for b, value in ((self.success_button, True), (self.failure_button, False),
                         (self.unknown_button, None)):
            b.setToolTip("Mark every selected episode")
            b.clicked.connect(lambda _=False, v=value: self.mark(v))
        self.notes = QPlainTextEdit()
        self.notes.setPlaceholderText("notes on the selected episode (saved when you leave the "
                                      "box or press Save notes)")
        self.notes.setMaximumHeight(80)
        self.notes.installEventFilter(self)
        self.save_notes_button = QPushButton("Save notes")
        self.save_notes_button.clicked.connect(self.save_notes)
        self.delete_button = QPushButton("Delete…")
        self.delete_button.setToolTip("Discard the selected episodes: their files are removed and "
                                      "they never count toward training")
        self.delete_button.clicked.connect(self.delete_selected)
        self.replay_button = QPushButton("Replay on rig")
        self.replay_button.setToolTip("Play the episode's actions on the followers, after a safe "
                                      "ramp to its first pose (E-STOP stops it)")
        self.replay_button.clicked.connect(self.toggle_replay)
        self.replay_state = QLabel("")
        self.export_button = QPushButton("Export to LeRobot…")
        self.export_button.setToolTip("Write the selected complete episodes as a LeRobot v3.0 "
                                      "dataset into a new or empty folder")
        self.export_button.clicked.connect(self.export_selected)
        self.codec = QComboBox()
        self.codec.addItems(["av1", "h264"])
        self.codec.setToolTip("Video codec of the dataset (av1 as LeRobot's own datasets; h264 "
                              "encodes faster)")
        self.export_progress = QProgressBar()
        self.export_progress.setVisible(False)
        self.export_state = QLabel("")
        self.export_state.setWordWrap(True)

        judge = QHBoxLayout()
        for b in (self.success_button, self.failure_button, self.unknown_button):
            judge.addWidget(b)
        judge.addStretch(1)
        judge.addWidget(self.delete_button)
        notes = QHBoxLayout()
        notes.addWidget(self.notes, 1)
        notes.addWidget(self.save_notes_button, 0, Qt.AlignmentFlag.AlignTop)
        rig = QHBoxLayout()
        rig.addWidget(self.replay_button)
        rig.addWidget(self.replay_state, 1)
        export = QHBoxLayout()
        export.addWidget(self.export_button)
        export.addWidget(self.codec)
        export.addWidget(self.export_progress, 1)
        lay = QVBoxLayout(self.edits)
        lay.addLayout(judge)
        lay.addLayout(notes)
        lay.addLayout(rig)
        lay.addLayout(export)
        lay.addWidget(self.export_state)

    # -- the store -----------------------------------------------------------------------------
    def _open_store(self) -> None:
        try:
            self.store = EpisodeStore.open(self.store_dir)
        except StoreError as e:
            self.count.setText("store not readable")
            # after the constructor, once the owner has connected `error`
            QTimer.singleShot(0, lambda msg=str(e): self.error.emit(
                "Cannot open the episode store", msg))

    def refresh(self) -> None:
        """Read the index again with the filters (cheap: one query); keeps the selection."""
        if self.store is None:
            return
        self._save_pending_notes()
        keep = self.selected_ids()
        status = STATUS[self.status_filter.currentText()]
        task = self.task_filter.currentData()
        try:
            tasks = self.store.tasks()
            rows = self.store.episodes(status=status, task=task)
        except StoreError as e:
            self.error.emit("Cannot read the episode store", str(e))
            return
        self._set_tasks(tasks)
        rows = [r for r in rows if self._passes(r)]
        sel = self.table.selectionModel()
        sel.blockSignals(True)
        self.model.set_rows(rows)
        for i, r in enumerate(rows):
            if r.id in keep:
                sel.select(self.model.index(i, 0), sel.SelectionFlag.Select
                           | sel.SelectionFlag.Rows)
        sel.blockSignals(False)
        self.count.setText(f"{len(rows)} episode{'s' * (len(rows) != 1)}")
        self._on_selection()

    def _set_tasks(self, tasks: list[str]) -> None:
        current = self.task_filter.currentData()
        have = [self.task_filter.itemData(i) for i in range(self.task_filter.count())]
        if have == [None, *tasks]:
            return
        self.task_filter.blockSignals(True)
        self.task_filter.clear()
        self.task_filter.addItem("all tasks", None)
        for t in tasks:
            self.task_filter.addItem(t, t)
        i = self.task_filter.findData(current)
        self.task_filter.setCurrentIndex(max(i, 0))
        self.task_filter.blockSignals(False)

    def _passes(self, e: EpisodeInfo) -> bool:
        return passes(e, self.date_filter.currentText(), self.success_filter.currentText())

    # -- selection -----------------------------------------------------------------------------
    def selected_ids(self) -> list[int]:
        rows = sorted(i.row() for i in self.table.selectionModel().selectedRows())
        return [self.model.rows[r].id for r in rows if r < len(self.model.rows)]

    def select_ids(self, ids: list[int]) -> None:
        """Select these episodes (those the filters show)."""
        sel = self.table.selectionModel()
        chosen = QItemSelection()
        for i, r in enumerate(self.model.rows):
            if r.id in ids:
                chosen.select(self.model.index(i, 0), self.model.index(i, 0))
        sel.select(chosen, sel.SelectionFlag.ClearAndSelect | sel.SelectionFlag.Rows)

    def _on_selection(self, *_) -> None:
        self._save_pending_notes()
        ids = self.selected_ids()
        one = len(ids) == 1
        for b in (self.success_button, self.failure_button, self.unknown_button,
                  self.delete_button, self.export_button):
            b.setEnabled(bool(ids) and self.store is not None)
        self.notes.setEnabled(one)
        self.save_notes_button.setEnabled(one)
        current = ids[0] if one else None
        if current != self._notes_episode:
            self._notes_episode = current
            info = self._row(current)
            self.notes.setPlainText(info.notes if info else "")
        self._load_player(current)
        self._update_replay_button()
        self.selection_changed.emit(ids)

    def _row(self, eid: int | None) -> EpisodeInfo | None:
        return next((r for r in self.model.rows if r.id == eid), None)

    def _load_player(self, eid: int | None) -> None:
        shown = self.player.data.info.id if self.player.data is not None else None
        if eid == shown:
            return
        if eid is None:
            n = len(self.selected_ids())
            self.player.load(None, f"{n} episodes selected: select one to play it" if n else "")
            return
        try:
            self.player.load(self.store.episode(eid))
        except StoreError as e:
            self.player.load(None, f"episode {eid} cannot be played: {e}")

    # -- edits ---------------------------------------------------------------------------------
    def mark(self, success: bool | None) -> None:
        """Mark every selected episode a success (True), failure (False) or not judged (None)."""
        self._write(lambda eid: self.store.update(eid, success=success), "Cannot mark episodes")

    def save_notes(self) -> None:
        eid = self._notes_episode
        info = self._row(eid)
        text = self.notes.toPlainText()
        if info is None or text == info.notes:
            return
        self._write(lambda _: self.store.update(eid, notes=text), "Cannot save the notes",
                    ids=[eid])

    def _save_pending_notes(self) -> None:
        if self._notes_episode is not None and self.notes.document().isModified():
            self.notes.document().setModified(False)
            self.save_notes()

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt naming
        if obj is self.notes and event.type() == QEvent.Type.FocusOut:
            self.save_notes()
        return super().eventFilter(obj, event)

    def delete_selected(self) -> None:
        ids = self.selected_ids()
        if not ids or self.store is None:
            return
        if self.replay is not None and self.replay_episode in ids:
            self.stop_replay("its episode was deleted")
        listed = ", ".join(map(str, ids))
        if not self.confirm(
                "Delete episodes",
                f"Discard episode{'s' * (len(ids) > 1)} {listed}? Their files are removed and "
                f"they never count toward training; the index keeps a 'discarded' row."):
            return
        self._write(lambda eid: self.store.discard(eid), "Cannot delete episodes")

    def confirm(self, title: str, text: str) -> bool:
        """A Yes/No dialog (kept in `confirm_box` while open, so it can be answered by code)."""
        box = QMessageBox(QMessageBox.Icon.Question, title, text,
                          QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, self)
        box.setDefaultButton(QMessageBox.StandardButton.No)
        self.confirm_box = box
        try:
            return box.exec() == QMessageBox.StandardButton.Yes
        finally:
            self.confirm_box = None
            box.deleteLater()

    def _write(self, fn, title: str, ids: list[int] | None = None) -> None:
        for eid in ids if ids is not None else self.selected_ids():
            try:
                fn(eid)
            except (StoreError, ValueError) as e:
                self.error.emit(title, str(e))
                break
        self.notes.document().setModified(False)
        self.refresh()

    # -- replay on the rig ---------------------------------------------------------------------
    def can_replay(self) -> bool:
        if self.session is None or self.store is None or self.replay is not None:
            return False
        st = self.session.status()
        row = self._row(self.selected_ids()[0]) if len(self.selected_ids()) == 1 else None
        return (st.running and not st.estopped and not st.error and row is not None
                and row.status == "complete")

    def _update_replay_button(self) -> None:
        running = self.replay is not None
        self.replay_button.setText("Stop replay" if running else "Replay on rig")
        self.replay_button.setEnabled(running or self.can_replay())
        if self.session is None:
            self.replay_button.setToolTip("Open the app with a rig to replay episodes on it")

    def toggle_replay(self) -> None:
        if self.replay is not None:
            self.stop_replay("stopped")
        else:
            self.start_replay()

    def start_replay(self) -> None:
        """Play the selected episode's actions on the followers (after the safe ramp)."""
        from app.core.recorder import recorded_seed
        from drivers.replay import ReplaySource

        if not self.can_replay():
            return
        eid = self.selected_ids()[0]
        try:
            data = self.store.episode(eid)
            if list(data.joint_names) != list(layout.NAMES):
                raise ValueError(
                    f"episode {eid} was recorded with joints {', '.join(data.joint_names)}; "
                    f"this rig's are {', '.join(layout.NAMES)}: replay it on a matching rig")
            source = ReplaySource(self.session.rig, data.action)
            seed = recorded_seed(self.store, eid)
        except (StoreError, ValueError) as e:
            self.error.emit("Cannot replay the episode", str(e))
            return
        rig = self.session.rig
        self.session.disengage()
        if self.session.config.kind == "sim" and seed is not None and hasattr(rig, "reset"):
            rig.reset(seed)  # the scene the episode was recorded in
        self.replay, self.replay_episode = source, eid
        self.session.set_source(source)
        self.replay_message = f"episode {eid}: ramping to the first pose"
        self._update_replay_button()
        self.poll()

    def stop_replay(self, why: str) -> None:
        """Give the followers back to teleop (idle: they hold where they are)."""
        if self.replay is None:
            return
        if self.session.source is self.replay:
            self.session.set_source(None)
        self.replay_message = f"episode {self.replay_episode}: replay {why}"
        self.replay, self.replay_episode = None, None
        self._update_replay_button()

    def poll(self) -> None:
        """Follow a running replay and whether the rig can take one (GUI timer)."""
        r = self.replay
        if r is not None:
            from drivers.replay import ReplayState

            source = self.session.source  # before the status: an e-stop sets its flag first
            st = self.session.status()
            if source is not r or st.estopped or st.error:
                self.stop_replay("stopped by the e-stop" if st.estopped else
                                 f"stopped: {st.error}" if st.error else "stopped")
            elif r.state is ReplayState.DONE:
                self.stop_replay(f"done ({len(r.actions)} steps); the followers hold")
            else:
                self.replay_message = (f"episode {self.replay_episode}: {r.state.value} "
                                       f"{max(r.index + 1, 0)} / {len(r.actions)}")
        self.replay_state.setText(self.replay_message)
        self._update_replay_button()

    # -- export --------------------------------------------------------------------------------
    def _ask_export_folder(self) -> str:
        return QFileDialog.getExistingDirectory(
            self, "Export to LeRobot: choose a new or empty folder", str(Path.home()))

    def export_selected(self) -> None:
        """Export the selected episodes to a folder the user chooses (worker thread)."""
        from store.lerobot import export_dataset

        ids = self.selected_ids()
        if not ids or self.store is None or self.export_thread is not None:
            return
        folder = self.ask_export_folder()
        if not folder:
            return
        out = Path(folder)
        codec = self.codec.currentText()
        store = self.store
        self.export_progress.setRange(0, len(ids))
        self.export_progress.setValue(0)
        self.export_progress.setVisible(True)
        self.export_button.setEnabled(False)
        self.export_state.setText(f"exporting {len(ids)} episodes to {out} …")

        def work() -> None:
            try:
                r = export_dataset(store, out, episodes=ids, repo_id=f"local/{out.name}",
                                   vcodec=codec, on_event=self._export_event.emit)
                self._export_finished.emit(
                    f"exported {len(r.episodes)} episodes ({r.frames} frames at {r.fps} fps) "
                    f"to {r.out}", "")
            except Exception as e:  # noqa: BLE001 - shown to the user with its message
                self._export_finished.emit("", f"{type(e).__name__}: {e}" if not str(e)
                                           else str(e))

        self.export_thread = threading.Thread(target=work, name="lerobot-export", daemon=True)
        self.export_thread.start()

    def _on_export_event(self, e: dict) -> None:
        if e.get("event") == "episode":
            self.export_progress.setValue(self.export_progress.value() + 1)

    def _on_export_finished(self, summary: str, error: str) -> None:
        if self.export_thread is not None:
            self.export_thread.join(timeout=5.0)
        self.export_thread = None
        self.export_progress.setVisible(False)
        self.export_button.setEnabled(bool(self.selected_ids()))
        self.export_state.setText(summary or "export failed")
        if error:
            self.error.emit("Export to LeRobot failed", error)

    # -- closing -------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Save pending notes, stop a replay, stop the player; the owner calls this on close."""
        self._save_pending_notes()
        self.timer.stop()
        if self.replay is not None:
            self.stop_replay("stopped (closing)")
        self.player.shutdown()
        if self.export_thread is not None:
            self.export_thread.join()
