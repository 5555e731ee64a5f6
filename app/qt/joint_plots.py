"""Live plots of the follower joints, commanded against measured, over the last few seconds.

The control thread feeds every step into a JointHistory (a lock-guarded ring buffer; appending is
a few array writes, so the loop is not slowed); the GUI thread redraws from a snapshot of it, on
a fixed x axis and y ranges that move only when the data leaves them (app.qt.plotting).
"""

from __future__ import annotations

import threading

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QVBoxLayout, QWidget

from app.core.rig_session import StepRecord
from app.qt import theme
from app.qt import plotting
from app.qt.plotting import LiveCurve, StableRanges, joint_grid
from drivers import layout


MIN_Y_SPAN = 0.1  # rad (or gripper 0..1 units): the smallest vertical span a plot zooms to


class JointHistory:
    """The last `seconds` of follower positions and commands (NaN while the followers hold)."""

    def __init__(self, seconds: float, control_hz: float):
        self.capacity = int(np.ceil(seconds * control_hz)) + 1
        self._t = np.zeros(self.capacity)
        self._measured = np.zeros((self.capacity, layout.DIM))
        self._commanded = np.full((self.capacity, layout.DIM), np.nan)
        self._n = 0
        self._lock = threading.Lock()

    def __call__(self, rec: StepRecord) -> None:
        """A RigSession step listener (runs in the control thread)."""
        with self._lock:
            i = self._n % self.capacity
            self._t[i] = rec.t
            self._measured[i] = rec.state.follower
            if rec.command is None:
                self._commanded[i] = np.nan
            else:
                self._commanded[i] = rec.command
            self._n += 1

    @property
    def count(self) -> int:
        return self._n

    def snapshot(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(t, measured, commanded), oldest first: shapes (n,), (n, 14), (n, 14)."""
        with self._lock:
            n = min(self._n, self.capacity)
            if self._n <= self.capacity:
                idx = np.arange(n)
            else:
                idx = (np.arange(n) + self._n) % self.capacity
            return self._t[idx], self._measured[idx], self._commanded[idx]


class JointPlots(QWidget):
    """One small plot per follower joint (rows: waist .. gripper; columns: left, right arm).
    Solid: measured; dashed: commanded. The x axis is seconds before the newest sample."""

    def __init__(self, history: JointHistory, seconds: float, parent: QWidget | None = None):
        super().__init__(parent)
        self.history = history
        self.seconds = seconds
        self.redraws = 0
        self.canvas = plotting.canvas()
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.canvas)

        self.measured: list[LiveCurve] = [None] * layout.DIM  # type: ignore[list-item]
        self.commanded: list[LiveCurve] = [None] * layout.DIM  # type: ignore[list-item]
        names = (*layout.ARM_JOINTS, "gripper")

        def title(i: int, side: str, row: int) -> str:
            unit = "0..1" if layout.IS_GRIPPER[i] else "rad"
            return (f"{side} {names[row]} ({unit})" if row
                    else f"{side.upper()} ARM — {names[row]} ({unit})")

        self.plots = joint_grid(self.canvas, title, left_width=40, title_size="8pt",
                                min_span=MIN_Y_SPAN)
        for i, plot in enumerate(self.plots):
            plot.setXRange(-seconds, 0, padding=0)
            colour = theme.JOINT_COLOURS[i % layout.JOINTS_PER_ARM]
            # 1-px pens on curves Qt draws alone (app.qt.plotting.LiveCurve)
            self.commanded[i] = LiveCurve(pg.mkPen(colour, style=Qt.PenStyle.DashLine))
            self.measured[i] = LiveCurve(pg.mkPen(colour), connect="all")
            plot.addItem(self.commanded[i])
            plot.addItem(self.measured[i])
        self.ranges = StableRanges(self.plots, MIN_Y_SPAN)

    def refresh(self) -> bool:
        """Redraw from the history; returns False when there is nothing to draw yet."""
        t, measured, commanded = self.history.snapshot()
        if len(t) < 2:
            return False
        x = t - t[-1]
        self.ranges.fit(measured, commanded)
        for i in range(layout.DIM):
            self.measured[i].setData(x, measured[:, i])
            self.commanded[i].setData(x, commanded[:, i])
        self.redraws += 1
        return True
