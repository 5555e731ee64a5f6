"""The episode table of the Episodes tab: one row per episode of the store's index, and the
filters an operator narrows it with (task and status are asked of the store; date and success are
checked here, on the rows it returned)."""

from __future__ import annotations

from datetime import datetime, timedelta

from PySide6.QtCore import QAbstractTableModel, QModelIndex, Qt

from store import EpisodeInfo

COLUMNS = ("id", "task", "date", "duration", "steps", "frames", "success", "status", "tags",
           "notes")
DATES = {"all dates": None, "today": 0, "last 7 days": 7}
SUCCESS = {"any result": ..., "success": True, "failure": False, "not judged": None}
STATUS = {"complete": "complete", "incomplete": "incomplete", "discarded": "discarded",
          "every status": None}


def started_at(info: EpisodeInfo) -> datetime | None:
    try:
        return datetime.strptime(info.started, "%Y-%m-%dT%H:%M:%S%z")
    except (TypeError, ValueError):
        return None


def success_text(success: bool | None) -> str:
    return "—" if success is None else ("yes" if success else "no")


class EpisodeTableModel(QAbstractTableModel):
    """Rows of the episode index (EpisodeInfo), one per episode."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.rows: list[EpisodeInfo] = []

    def set_rows(self, rows: list[EpisodeInfo]) -> None:
        self.beginResetModel()
        self.rows = list(rows)
        self.endResetModel()

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: N802 - Qt naming
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent=QModelIndex()) -> int:  # noqa: N802 - Qt naming
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return COLUMNS[section]
        return None

    def data(self, index: QModelIndex, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        e = self.rows[index.row()]
        col = COLUMNS[index.column()]
        if role == Qt.ItemDataRole.DisplayRole:
            return self.text(e, col)
        if role == Qt.ItemDataRole.ToolTipRole:
            if col == "frames":
                return ", ".join(f"{c}: {n}" for c, n in e.frame_counts.items()) or "no cameras"
            if col in ("notes", "task", "tags"):
                return self.text(e, col) or None
        if role == Qt.ItemDataRole.TextAlignmentRole and col in ("id", "duration", "steps"):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    @staticmethod
    def text(e: EpisodeInfo, col: str) -> str:
        if col == "id":
            return str(e.id)
        if col == "task":
            return e.task
        if col == "date":
            d = started_at(e)
            return d.strftime("%Y-%m-%d %H:%M") if d else e.started
        if col == "duration":
            return "—" if e.duration_s is None else f"{e.duration_s:.1f} s"
        if col == "steps":
            return str(e.steps)
        if col == "frames":
            return " / ".join(str(n) for n in e.frame_counts.values()) or "—"
        if col == "success":
            return success_text(e.success)
        if col == "status":
            return e.status
        if col == "tags":
            return ", ".join(e.tags)
        if col == "notes":
            return " ".join(e.notes.split())
        raise KeyError(col)


def passes(e: EpisodeInfo, date: str, success: str, today=None) -> bool:
    """Whether an episode shows under the date filter (a key of DATES) and the success filter (a
    key of SUCCESS); `today` (a date) defaults to the local date."""
    want = SUCCESS[success]
    if want is not ... and e.success is not want:
        return False
    days = DATES[date]
    if days is None:
        return True
    d = started_at(e)
    if d is None:
        return False
    today = today or datetime.now(d.tzinfo).date()
    return d.date() >= today - timedelta(days=days)
