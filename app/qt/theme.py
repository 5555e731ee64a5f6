"""Colours and style sheets shared by the workstation's widgets."""

from __future__ import annotations

from drivers import layout

ESTOP_RED = "#c62828"
ESTOP_RED_DOWN = "#8e0000"
OK_GREEN = "#2e7d32"
WARN_AMBER = "#ef6c00"
MUTED = "#757575"

# One colour per arm joint (waist .. wrist_rotate, gripper), reused for both arms.
JOINT_COLOURS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
)
assert len(JOINT_COLOURS) == layout.JOINTS_PER_ARM

ESTOP_BUTTON = f"""
QPushButton {{
    background-color: {ESTOP_RED}; color: white; font-weight: bold; font-size: 20px;
    border: 3px solid {ESTOP_RED_DOWN}; border-radius: 8px; padding: 8px 24px;
}}
QPushButton:pressed {{ background-color: {ESTOP_RED_DOWN}; }}
QPushButton:disabled {{ background-color: #9e9e9e; border-color: #616161; }}
"""


def badge(colour: str) -> str:
    """Style sheet for a small coloured status label."""
    return (f"QLabel {{ background-color: {colour}; color: white; font-weight: bold; "
            f"border-radius: 4px; padding: 2px 8px; }}")


def set_style(widget, sheet: str) -> None:
    """Apply a style sheet only if it differs from the widget's: re-polishing a widget costs
    about a millisecond, too much for a 30 Hz refresh that mostly shows the same state."""
    if widget.styleSheet() != sheet:
        widget.setStyleSheet(sheet)


def readout_table(table, columns, rows, blank: str = "—") -> None:
    """A read-only grid of right-aligned fixed-width readouts (joint rows x arm columns): headers,
    no editing, selection or focus, stretched sections, every cell `blank` until shown."""
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QFontDatabase
    from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableWidgetItem

    table.setRowCount(len(rows))
    table.setColumnCount(len(columns))
    table.setHorizontalHeaderLabels([c.replace(" ", "\n") for c in columns])
    table.setVerticalHeaderLabels(list(rows))
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
    table.setFocusPolicy(Qt.FocusPolicy.NoFocus)
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
    table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
    table.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
    for r in range(len(rows)):
        for c in range(len(columns)):
            item = QTableWidgetItem(blank)
            item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            table.setItem(r, c, item)
