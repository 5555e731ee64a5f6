"""Plots and figures of a fine-tune run: training loss per step, validation loss and action
error per validation, fed with the trainer's events (xr0.train.trainer lists them)."""

from __future__ import annotations

import math

import pyqtgraph as pg
from PySide6.QtWidgets import QHBoxLayout, QWidget

from app.qt import theme


def format_eta(seconds: float | None) -> str:
    """3725.2 -> '1:02:05'; '—' when unknown."""
    if seconds is None or math.isnan(seconds) or seconds < 0:
        return "—"
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class TrainingPlots(QWidget):
    """Training loss per step; validation loss and action error per validation."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.loss_plot = pg.PlotWidget(background="w", title="training loss")
        self.loss_plot.setLabel("bottom", "step")
        self.loss_plot.showGrid(x=True, y=True, alpha=0.25)
        self.loss_curve = self.loss_plot.plot(pen=pg.mkPen(theme.JOINT_COLOURS[0], width=2))
        self.val_plot = pg.PlotWidget(background="w", title="validation")
        self.val_plot.setLabel("bottom", "step")
        self.val_plot.showGrid(x=True, y=True, alpha=0.25)
        self.val_plot.addLegend(offset=(-10, 10))
        self.val_curve = self.val_plot.plot(pen=pg.mkPen(theme.JOINT_COLOURS[1], width=2),
                                            symbol="o", symbolSize=6, name="val loss")
        self.error_curve = self.val_plot.plot(pen=pg.mkPen(theme.JOINT_COLOURS[2], width=2),
                                              symbol="s", symbolSize=6, name="action error (rig units)")
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.loss_plot)
        lay.addWidget(self.val_plot)
        self.clear()

    def clear(self) -> None:
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.val_steps: list[int] = []
        self.val_losses: list[float] = []
        self.action_errors: list[float] = []
        self._dirty = True
        self.redraw()

    def add(self, ev: dict) -> None:
        if ev["event"] == "step" and "loss" in ev:
            self.steps.append(int(ev["step"]))
            self.losses.append(float(ev["loss"]))
        elif ev["event"] == "val":
            self.val_steps.append(int(ev["step"]))
            self.val_losses.append(float(ev["val_loss"]))
            self.action_errors.append(float(ev["action_error"]))
        else:
            return
        self._dirty = True

    def redraw(self) -> None:
        if not self._dirty:
            return
        self.loss_curve.setData(self.steps, self.losses)
        self.val_curve.setData(self.val_steps, self.val_losses)
        self.error_curve.setData(self.val_steps, self.action_errors)
        self._dirty = False


def ranges(ids: list[int]) -> str:
    """[1, 2, 3, 5] -> '1-3,5'."""
    out, ids = [], sorted({int(i) for i in ids})
    for i in ids:
        if out and i == out[-1][1] + 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return ",".join(f"{a}-{b}" if b > a else f"{a}" for a, b in out)
