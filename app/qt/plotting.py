"""What keeps live pyqtgraph plots cheap on the GUI thread, shared by every live plot panel.

A plot's repaint cost is dominated by its axes (tick labels re-laid out and redrawn) when its range
moves, not by its curves: ranges that change only when the data leaves them, axes cached as
pixmaps, thin pens and curves that Qt draws alone (LiveCurve) keep a refresh of 14 joint plots to a
few ms. Every Python method Qt calls while it indexes and paints a scene (a pyqtgraph item's
boundingRect and paint) waits for the GIL behind the control, sim and recorder threads: the fewer
such calls a repaint makes, the shorter the GUI thread's longest blocks.
"""

from __future__ import annotations

import warnings

import numpy as np
import pyqtgraph as pg
from PySide6.QtGui import QPainterPath, QPen
from PySide6.QtWidgets import QGraphicsItem, QGraphicsPathItem


def canvas() -> pg.GraphicsLayoutWidget:
    """A white plot canvas with tight spacing, antialiasing off (a live plot's cheapest lines)."""
    pg.setConfigOptions(antialias=False)
    c = pg.GraphicsLayoutWidget()
    c.setBackground("w")
    c.ci.setSpacing(2)
    return c


def cheap_axis(axis: pg.AxisItem) -> None:
    """An axis replays its tick labels on every repaint of its plot (its grid lines span the
    view): cached as a pixmap, a refresh that leaves the ticks alone blits it instead; and no
    SI-prefix relabelling on every range change."""
    axis.setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)
    axis.enableAutoSIPrefix(False)


class LiveCurve(QGraphicsPathItem):
    """A live curve of a plot (plot.addItem(curve)) that Qt indexes and paints without calling
    Python: a QGraphicsPathItem with a 1-px cosmetic pen (width 0: its bounding rect comes from
    the path's points, no stroke is computed). A pg.PlotCurveItem of the same data makes about a
    dozen Python calls per repaint (boundingRect, paint, data bounds). setData/getData as on
    pyqtgraph's curves; connect="finite" breaks the line at NaN (followers holding)."""

    def __init__(self, pen: QPen, connect: str = "finite"):
        super().__init__()
        pen = QPen(pen)
        pen.setWidth(0)
        self.setPen(pen)
        self.connect = connect
        self._x = self._y = np.zeros(0)

    def setData(self, x, y, connect: str | None = None) -> None:  # noqa: N802 - pyqtgraph naming
        self._x, self._y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if len(self._x) < 2:
            self.setPath(QPainterPath())
        else:
            self.setPath(pg.arrayToQPath(self._x, self._y, connect=connect or self.connect))
        view = self.parentItem()  # a ViewBox's child group: an auto-ranged axis follows the data
        while view is not None and not isinstance(view, pg.ViewBox):
            view = view.parentItem()
        if view is not None:
            view.itemBoundsChanged(self)

    def getData(self) -> tuple[np.ndarray, np.ndarray]:  # noqa: N802 - pyqtgraph naming
        return self._x, self._y


class StableRanges:
    """Y ranges of a row of plots that cover their data with a margin and change only when the data
    leaves them or fills less than a third of them: most refreshes redraw no axis."""

    def __init__(self, plots: list[pg.PlotItem], min_span: float):
        self.plots = plots
        self.min_span = min_span
        self.ranges = np.full((len(plots), 2), np.nan)

    def reset(self) -> None:
        self.ranges[:] = np.nan

    def fit(self, *columns: np.ndarray) -> None:
        """columns: (N, len(plots)) arrays (NaN allowed); plot i covers column i of all of them."""
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column
            lo = np.nanmin([np.nanmin(c, axis=0) for c in columns], axis=0)
            hi = np.nanmax([np.nanmax(c, axis=0) for c in columns], axis=0)
        span = np.maximum(hi - lo, self.min_span)
        cur = self.ranges
        cur_span = cur[:, 1] - cur[:, 0]
        stale = ~(cur[:, 0] <= lo) | ~(cur[:, 1] >= hi) | (cur_span > 3 * span)
        for i in np.flatnonzero(stale & np.isfinite(lo) & np.isfinite(hi)).tolist():
            mid, half = 0.5 * (lo[i] + hi[i]), 0.5 * span[i] * 1.3
            cur[i] = (mid - half, mid + half)
            self.plots[i].setYRange(cur[i, 0], cur[i, 1], padding=0)


def joint_grid(canvas: pg.GraphicsLayoutWidget, title, left_width: int = 40,
               title_size: str = "7pt", min_span: float = 0.1) -> list[pg.PlotItem]:
    """The 14 joint plots in layout order on `canvas`: rows waist .. gripper, one column per arm,
    x axes linked with only the bottom row's labelled (in s), small fixed cached axes, no mouse,
    menu or buttons, and a smallest y span (a still joint is a flat line, not magnified noise).
    title(i, side, row) gives each plot's title."""
    from PySide6.QtGui import QFont

    from drivers import layout

    small = QFont(canvas.font())
    small.setPointSize(7)
    plots: list[pg.PlotItem] = [None] * layout.DIM  # type: ignore[list-item]
    first = None
    for col, side in enumerate(layout.SIDES):
        sl = layout.arm_slice(side)
        for row, i in enumerate(range(sl.start, sl.stop)):
            plot = canvas.addPlot(row=row, col=col)
            plot.setTitle(title(i, side, row), size=title_size, color="#333")
            plot.setMenuEnabled(False)
            plot.setMouseEnabled(x=False, y=False)
            plot.hideButtons()
            plot.showGrid(x=True, y=True, alpha=0.25)
            plot.getViewBox().setLimits(minYRange=min_span)
            plot.getAxis("left").setWidth(left_width)
            plot.getAxis("left").setStyle(maxTextLevel=0, tickFont=small)
            if row < layout.JOINTS_PER_ARM - 1:
                plot.getAxis("bottom").setStyle(showValues=False)
            else:
                plot.setLabel("bottom", "s")
            for name in ("left", "bottom"):
                cheap_axis(plot.getAxis(name))
            if first is None:
                first = plot
            else:
                plot.setXLink(first)
            plots[i] = plot
    return plots
