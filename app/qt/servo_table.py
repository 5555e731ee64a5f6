"""The servo health table of the rig panel: temperature and hardware errors of every servo.

Rows are the joints of an arm, columns the arms (as in the joint table). A cell reads "41 °C", or
"74 °C hot" on amber near the servo's Temperature_Limit, or "41 °C overload" on red for a hardware
error; its tooltip names the servo, its limit, and what to do. Fed by Rig.health() (any thread,
no bus traffic); `show_health()` does nothing while the readings are the same object as last
time, so the poll may call it every time.
"""

from __future__ import annotations

from collections.abc import Mapping

from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QTableWidget, QTableWidgetItem, QWidget,
)

from app.qt import theme
from drivers import layout
from drivers.config import RigConfig

COLUMNS = ("left follower", "left leader", "right follower", "right leader")
NO_SERVO = "—"


class ServoTable(QTableWidget):
    """Temperature and errors per joint (rows) and arm (columns)."""

    def __init__(self, config: RigConfig, parent: QWidget | None = None):
        super().__init__(layout.JOINTS_PER_ARM, len(COLUMNS), parent)
        # column -> arm name (None where the rig has no such arm, e.g. no leaders)
        self.arm_names: list[str | None] = []
        for col in COLUMNS:
            side, role = col.split()
            arm = config.arm(role, side)
            self.arm_names.append(arm.name if arm is not None else None)
        theme.readout_table(self, COLUMNS, [*layout.ARM_JOINTS, "gripper"], NO_SERVO)
        self._shown: object = None
        self.hot = 0  # servos near their temperature limit, as last shown
        self.faulty = 0  # servos reporting hardware errors, as last shown

    def show_health(self, health: Mapping[str, Mapping]) -> bool:
        """Show the readings; returns whether anything was redrawn."""
        if health is self._shown:
            return False
        self._shown = health
        self.hot = self.faulty = 0
        for c, arm in enumerate(self.arm_names):
            servos = list(health.get(arm, {}).values()) if arm else []
            for r in range(self.rowCount()):
                s = servos[r] if r < len(servos) else None
                self._show_cell(self.item(r, c), s)
                self.hot += bool(s is not None and s.hot)
                self.faulty += bool(s is not None and s.faulty)
        return True

    def _show_cell(self, item: QTableWidgetItem, s) -> None:
        if s is None:
            item.setText(NO_SERVO)
            item.setToolTip("")
            item.setBackground(QBrush())
            return
        temp = "— °C" if s.temperature_c is None else f"{s.temperature_c} °C"
        faults = [f for f, _ in s.errors]
        tag = ", ".join(faults) if faults else ("hot" if s.hot else "")
        item.setText(f"{temp} {tag}".strip())
        colour = theme.ESTOP_RED if s.faulty else theme.WARN_AMBER if s.hot else None
        item.setBackground(QBrush(QColor(colour)) if colour else QBrush())
        item.setForeground(QBrush(QColor("white")) if colour else QBrush())
        limit = f"limit {s.limit_c} °C" if s.limit_c is not None else "limit not read"
        head = f"{s.arm} '{s.joint}': id {s.servo_id}, {s.model}, {limit}"
        item.setToolTip(f"{head}\n{s.describe()}" if s.describe() else f"{head}\nno errors")

    def cell(self, row: int, column: str) -> QTableWidgetItem:
        return self.item(row, COLUMNS.index(column))

    def summary(self) -> str:
        """'' when all is well; e.g. '1 fault, 2 hot' otherwise."""
        parts = []
        if self.faulty:
            parts.append(f"{self.faulty} fault{'s' if self.faulty > 1 else ''}")
        if self.hot:
            parts.append(f"{self.hot} hot")
        return ", ".join(parts)
