"""What keeps live pyqtgraph plots cheap on the GUI thread, shared by every live plot panel.

A plot's repaint cost is dominated by its axes (tick labels re-laid out and redrawn) when its range
moves, not by its curves: ranges that change only when the data leaves them, axes cached as
pixmaps, thin pens and curves that Qt draws alone (LiveCurve) keep a refresh of 14 joint plots to a
few ms. Every Python method Qt calls while it indexes and paints a scene (a pyqtgraph item's
boundingRect and paint) waits for the GIL behind the control, sim and recorder threads: the fewer
such calls a repaint makes, the shorter the GUI thread's longest blocks. So a live plot is a
`plot_item` (its view box, axes, title and the plot itself answer Qt's geometry queries in C++),
its grid a `GridLines` item (an axis that draws the grid spans the view and repaints with every
curve under it), and what it draws QGraphicsPathItems that Qt paints alone: `LiveCurve` (lines,
steps, a filled histogram), `LiveDots` (points), `VerticalMark` (a line or a band across the view).
Python runs when data is set or a view's range or size changes, never while Qt paints.
"""

from __future__ import annotations

import warnings

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QBrush, QColor, QPainterPath, QPen
from PySide6.QtWidgets import (
    QGraphicsItem, QGraphicsPathItem, QGraphicsRectItem, QGraphicsSimpleTextItem, QGraphicsWidget,
)

GRID_COLOUR = (150, 150, 150)


def canvas() -> pg.GraphicsLayoutWidget:
    """A white plot canvas with tight spacing, antialiasing off (a live plot's cheapest lines),
    its layout a FastLayout."""
    pg.setConfigOptions(antialias=False)
    c = pg.GraphicsLayoutWidget()
    c.setBackground("w")
    c.ci = FastLayout()
    for name in ("nextRow", "nextCol", "nextColumn", "addPlot", "addViewBox", "addItem", "getItem",
                 "addLayout", "addLabel", "removeItem", "itemIndex", "clear"):
        setattr(c, name, getattr(c.ci, name))  # as GraphicsLayoutWidget binds its own layout's
    c.setCentralItem(c.ci)
    c.ci.setSpacing(2)
    return c


def cheap_axis(axis: pg.AxisItem) -> None:
    """An axis replays its tick labels on every repaint of its plot (its grid lines span the
    view): cached as a pixmap, a refresh that leaves the ticks alone blits it instead; and no
    SI-prefix relabelling on every range change."""
    axis.setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)
    axis.enableAutoSIPrefix(False)


# The Fast* classes put Qt's own geometry methods in place of pyqtgraph's Python ones that compute
# the same rect: a builtin found on the class is no override, so Qt calls its C++ method and never
# waits for the GIL to ask.

class FastViewBox(pg.ViewBox):
    """A ViewBox without a border (its paint draws nothing) whose geometry Qt reads in C++."""
    boundingRect = QGraphicsWidget.boundingRect
    shape = QGraphicsWidget.shape
    paint = QGraphicsWidget.paint


class FastAxis(pg.AxisItem):
    """An axis whose geometry Qt reads in C++: its ticks point outward and labels that would
    leave its rect are hidden, so all it draws lies inside that rect; no grid (GridLines); cached
    as a pixmap (cheap_axis)."""
    boundingRect = QGraphicsWidget.boundingRect
    shape = QGraphicsWidget.shape

    def __init__(self, orientation: str, **kwargs):
        super().__init__(orientation, maxTickLength=4, **kwargs)
        self.setStyle(hideOverlappingLabels=True)
        cheap_axis(self)

    def setGrid(self, grid) -> None:  # noqa: N802 - pyqtgraph naming
        if grid is not False:
            raise ValueError("A FastAxis draws no grid: use GridLines(plot)")
        super().setGrid(grid)


class FastLayout(pg.GraphicsLayout):
    boundingRect = QGraphicsWidget.boundingRect
    shape = QGraphicsWidget.shape


class FastLabel(pg.LabelItem):
    boundingRect = QGraphicsWidget.boundingRect
    shape = QGraphicsWidget.shape


class FastPlot(pg.PlotItem):
    """A PlotItem whose own, view box's, axes' and title's geometry Qt reads in C++;
    showGrid adds GridLines. A live plot: no auto-range button (Qt asks even a hidden item
    for its geometry)."""
    boundingRect = QGraphicsWidget.boundingRect
    shape = QGraphicsWidget.shape

    def __init__(self, **kwargs):
        super().__init__(viewBox=FastViewBox(), axisItems={
            name: FastAxis(name) for name in ("left", "bottom", "right", "top")}, **kwargs)
        self.hideAxis("right")
        self.hideAxis("top")
        self.hideButtons()
        self.autoBtn.setParentItem(None)
        old = self.titleLabel
        self.layout.removeItem(old)
        old.setParentItem(None)
        old.deleteLater()
        self.titleLabel = FastLabel("", size="11pt", parent=self)
        self.layout.addItem(self.titleLabel, 0, 1)
        self.setTitle(None)
        self.grid: GridLines | None = None

    def showGrid(self, x=None, y=None, alpha=None) -> None:  # noqa: N802 - pyqtgraph naming
        if self.grid is None:
            self.grid = GridLines(self, alpha if alpha is not None else 0.25)
        self.grid.show_axes(x=bool(x), y=bool(y))


def plot_item(canvas: pg.GraphicsLayoutWidget, row=None, col=None, **kwargs) -> FastPlot:
    """A FastPlot added to `canvas` (as canvas.addPlot(row, col))."""
    plot = FastPlot(**kwargs)
    canvas.addItem(plot, row=row, col=col)
    return plot


def _view_of(item: QGraphicsItem) -> pg.ViewBox | None:
    view = item.parentItem()  # a ViewBox's child group
    while view is not None and not isinstance(view, pg.ViewBox):
        view = view.parentItem()
    return view


class GridLines(QGraphicsPathItem):
    """A plot's grid lines at its axes' major and minor ticks (AxisItem.tickValues): one path
    item behind the data that Qt paints alone, rebuilt in Python only when the view's range or
    size changes."""

    def __init__(self, plot: pg.PlotItem, alpha: float = 0.25):
        super().__init__()
        self.plot = plot
        self.axes = {"x": True, "y": True}
        self.setPen(QPen(QColor(*GRID_COLOUR, int(alpha * 255)), 0))
        self.setZValue(-100)
        plot.addItem(self, ignoreBounds=True)
        plot.getViewBox().sigTransformChanged.connect(self.rebuild)
        plot.getViewBox().sigResized.connect(self.rebuild)

    def show_axes(self, x: bool, y: bool) -> None:
        self.axes = {"x": x, "y": y}
        self.rebuild()

    def rebuild(self, *_) -> None:
        view = self.plot.getViewBox()
        (x0, x1), (y0, y1) = view.viewRange()
        xs, ys = [], []
        if self.axes["x"] and view.width() > 0:
            for _spacing, ticks in self.plot.getAxis("bottom").tickValues(x0, x1, view.width())[:2]:
                t = np.asarray(ticks, dtype=np.float64)
                xs.append(np.repeat(t, 2))
                ys.append(np.tile([y0, y1], len(t)))
        if self.axes["y"] and view.height() > 0:
            for _spacing, ticks in self.plot.getAxis("left").tickValues(y0, y1, view.height())[:2]:
                t = np.asarray(ticks, dtype=np.float64)
                xs.append(np.tile([x0, x1], len(t)))
                ys.append(np.repeat(t, 2))
        x = np.concatenate(xs) if xs else np.zeros(0)
        self.setPath(pg.arrayToQPath(x, np.concatenate(ys), connect="pairs") if len(x)
                     else QPainterPath())


class LiveCurve(QGraphicsPathItem):
    """A live curve of a plot (plot.addItem(curve)) that Qt indexes and paints without calling
    Python: a QGraphicsPathItem with a 1-px cosmetic pen (width 0: its bounding rect comes from
    the path's points, no stroke is computed). A pg.PlotCurveItem of the same data makes about a
    dozen Python calls per repaint (boundingRect, paint, data bounds). setData/getData as on
    pyqtgraph's curves; connect="finite" breaks the line at NaN (followers holding).
    step="left": y[i] holds from x[i] to x[i+1]; step="center": a histogram, x the len(y) + 1 bin
    edges, drawn from 0 and filled with `brush` when given."""

    def __init__(self, pen: QPen, connect: str = "finite", step: str | None = None,
                 brush=None):
        super().__init__()
        pen = QPen(pen)
        pen.setWidth(0)
        self.setPen(pen)
        if brush is not None:
            self.setBrush(QBrush(pg.mkBrush(brush)))
        self.connect, self.step = connect, step
        self.opts = {"pen": pen}  # what a pyqtgraph legend reads
        self._x = self._y = np.zeros(0)

    def setData(self, x, y, connect: str | None = None) -> None:  # noqa: N802 - pyqtgraph naming
        self._x, self._y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        x, y = self._x, self._y
        if self.step == "left" and len(x):
            x, y = np.repeat(x, 2)[1:], np.repeat(y, 2)[:-1]
        elif self.step == "center" and len(y):
            x, y = np.repeat(x, 2), np.concatenate([[0.0], np.repeat(y, 2), [0.0]])
        if len(x) < 2:
            self.setPath(QPainterPath())
        else:
            self.setPath(pg.arrayToQPath(x, y, connect=connect or self.connect))
        view = _view_of(self)  # an auto-ranged axis follows the data
        if view is not None:
            view.itemBoundsChanged(self)

    def getData(self) -> tuple[np.ndarray, np.ndarray]:  # noqa: N802 - pyqtgraph naming
        return self._x, self._y


class LiveDots(QGraphicsPathItem):
    """Points of a live plot as filled squares `size` px wide that Qt paints alone: one path of
    squares (a child item) sized in data units from the view's pixel size, rebuilt when data is
    set or the view's range or size changes. The item's own bounds are the points' (an
    auto-ranged axis follows the points, not the squares, whose size follows the range)."""

    def __init__(self, colour, size: float = 4.0):
        super().__init__()
        self.setPen(QPen(Qt.PenStyle.NoPen))
        self.squares = QGraphicsPathItem(self)
        self.squares.setPen(QPen(Qt.PenStyle.NoPen))
        self.squares.setBrush(QBrush(pg.mkColor(colour)))
        self.size = size
        self._x = self._y = np.zeros(0)
        self._view: pg.ViewBox | None = None

    def setData(self, x, y) -> None:  # noqa: N802 - pyqtgraph naming
        self._x, self._y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        ok = np.isfinite(self._x) & np.isfinite(self._y)
        bounds = QPainterPath()
        if ok.any():
            x, y = self._x[ok], self._y[ok]
            bounds.moveTo(x.min(), y.min())
            bounds.lineTo(x.max(), y.max())
        self.setPath(bounds)
        view = _view_of(self)
        if view is not None and view is not self._view:
            self._view = view
            view.sigTransformChanged.connect(self._rebuild)
        self._rebuild()
        if view is not None:
            view.itemBoundsChanged(self)

    def getData(self) -> tuple[np.ndarray, np.ndarray]:  # noqa: N802 - pyqtgraph naming
        return self._x, self._y

    def _rebuild(self, *_) -> None:
        ok = np.isfinite(self._x) & np.isfinite(self._y)
        x, y = self._x[ok], self._y[ok]
        if not len(x):
            self.squares.setPath(QPainterPath())
            return
        px, py = (self._view.viewPixelSize() if self._view is not None else (1.0, 1.0))
        hx, hy = 0.5 * self.size * (px or 1.0), 0.5 * self.size * (py or 1.0)
        corners_x, corners_y = np.array([-hx, hx, hx, -hx, -hx]), np.array([-hy, -hy, hy, hy, -hy])
        xs = (x[:, None] + corners_x).ravel()
        ys = (y[:, None] + corners_y).ravel()
        connect = np.tile(np.array([1, 1, 1, 1, 0], dtype=np.int32), len(x))
        path = pg.arrayToQPath(xs, ys, connect=connect, finiteCheck=False)
        path.setFillRule(Qt.FillRule.WindingFill)  # overlapping squares stay filled
        self.squares.setPath(path)


class VerticalMark(QGraphicsRectItem):
    """A vertical line (width 0) or band (x0..x1) across a plot's whole height, with an optional
    label at its top, that Qt paints alone: its height follows the view's y range (rebuilt when
    the range or size changes); it does not count for auto-range."""

    def __init__(self, plot: pg.PlotItem, pen=None, brush=None, label: str = "",
                 label_colour="#333"):
        super().__init__()
        pen = QPen(pg.mkPen(pen)) if pen is not None else QPen(Qt.PenStyle.NoPen)
        pen.setCosmetic(True)
        self.setPen(pen)
        self.setBrush(QBrush(pg.mkBrush(brush)) if brush is not None else QBrush())
        self.view = plot.getViewBox()
        plot.addItem(self, ignoreBounds=True)
        self.label = None
        if label:
            self.label = QGraphicsSimpleTextItem(label, self)
            self.label.setBrush(QBrush(pg.mkColor(label_colour)))
            self.label.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations)
        self.span = (0.0, 0.0)
        self.view.sigTransformChanged.connect(self._rebuild)
        self.setVisible(False)

    def set_span(self, x0: float, x1: float | None = None) -> None:
        self.span = (float(x0), float(x0 if x1 is None else x1))
        self._rebuild()

    def _rebuild(self, *_) -> None:
        _, (y0, y1) = self.view.viewRange()
        x0, x1 = self.span
        self.setRect(x0, y0, x1 - x0, y1 - y0)
        if self.label is not None:
            self.label.setPos(x1, y1)


def hold_range(plot: pg.PlotItem, axis: str, *values: np.ndarray, min_span: float = 1.0,
               headroom: float = 0.25) -> bool:
    """Keep a plot's x or y range while it covers `values` (NaN ignored) and they fill at least
    a third of it; else cover them with `headroom` of their span on each side. An axis relabels
    (a few ms of Python in its paint, more on loaded cores) only when its range changes: a range
    that jumps ahead of growing data changes rarely, pyqtgraph's auto-range with every point.
    True when the range changed."""
    v = np.concatenate([np.ravel(np.asarray(x, dtype=np.float64)) for x in values]) \
        if values else np.zeros(0)
    v = v[np.isfinite(v)]
    if not len(v):
        return False
    lo, hi = float(v.min()), float(v.max())
    span = max(hi - lo, min_span)
    i = 0 if axis == "x" else 1
    cur_lo, cur_hi = plot.getViewBox().viewRange()[i]
    if cur_lo <= lo and cur_hi >= hi and cur_hi - cur_lo <= 3 * span * (1 + 2 * headroom):
        return False
    mid = 0.5 * (lo + hi)
    half = 0.5 * span + headroom * span
    if axis == "x":
        plot.setXRange(mid - half, mid + half, padding=0)
    else:
        plot.setYRange(mid - half, mid + half, padding=0)
    return True


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
    x axes linked with only the bottom row's shown (in s), small fixed cached axes, no mouse,
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
            plot = plot_item(canvas, row=row, col=col)
            plot.setTitle(title(i, side, row), size=title_size, color="#333")
            plot.setMenuEnabled(False)
            plot.setMouseEnabled(x=False, y=False)
            plot.hideButtons()
            plot.showGrid(x=True, y=True, alpha=0.25)
            plot.getViewBox().setLimits(minYRange=min_span)
            plot.getAxis("left").setWidth(left_width)
            plot.getAxis("left").setStyle(maxTextLevel=0, tickFont=small)
            if row < layout.JOINTS_PER_ARM - 1:
                # no axis of its own (its grid lines remain): a hidden axis costs no paint when a
                # tab is first shown or the linked x range moves
                plot.hideAxis("bottom")
            else:
                plot.setLabel("bottom", "s")
            if first is None:
                first = plot
            else:
                plot.setXLink(first)
            plots[i] = plot
    return plots
