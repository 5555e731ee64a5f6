"""The cheap live-plot items of app.qt.plotting, offscreen: they draw what pyqtgraph's items drew
(same geometry, grid lines at the axes' ticks, steps, histograms, points, marks across the view).
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
import pytest
from PySide6.QtGui import QColor

from app.qt.plotting import (
    GRID_COLOUR, LiveCurve, LiveDots, VerticalMark, canvas, plot_item,
)

pytestmark = pytest.mark.gui


@pytest.fixture
def plot(qtbot):
    c = canvas()
    qtbot.addWidget(c)
    c.resize(500, 300)
    p = plot_item(c)
    c.show()
    qtbot.wait(20)
    return c, p


def _points(path) -> np.ndarray:
    return np.array([(path.elementAt(i).x, path.elementAt(i).y)
                     for i in range(path.elementCount())])


def test_fast_plot_has_pyqtgraphs_geometry(plot):
    c, p = plot
    p.setTitle("title")
    for item in (p, p.getViewBox(), p.titleLabel, c.ci, p.getAxis("left"), p.getAxis("bottom")):
        # what pyqtgraph's GraphicsWidget.boundingRect computes, answered by Qt
        assert item.boundingRect() == item.mapRectFromParent(item.geometry())
        assert item.boundingRect().width() > 10
    axis = p.getAxis("left")
    assert axis.style["tickLength"] > 0  # ticks outward: drawn inside the axis's own rect
    with pytest.raises(ValueError, match="GridLines"):
        axis.setGrid(64)


def test_grid_lines_follow_the_axes_ticks(plot, qtbot):
    _c, p = plot
    p.showGrid(x=True, y=True, alpha=0.25)
    p.setXRange(0, 10, padding=0)
    p.setYRange(-1, 1, padding=0)
    qtbot.wait(20)
    view = p.getViewBox()
    pts = _points(p.grid.path())
    vertical = pts[0::2][pts[0::2, 0] == pts[1::2, 0]]  # (x, y0) of each segment x = const
    want_x = sorted({t for _s, ticks in p.getAxis("bottom").tickValues(0, 10, view.width())[:2]
                     for t in ticks})
    assert sorted(set(vertical[:, 0].tolist())) == pytest.approx(want_x)
    assert p.grid.pen().color() == QColor(*GRID_COLOUR, 63)
    # a new range: new lines, spanning it
    p.setYRange(0, 100, padding=0)
    qtbot.wait(20)
    ys = _points(p.grid.path())[:, 1]
    assert ys.min() == pytest.approx(0) and ys.max() == pytest.approx(100)


def test_steps_and_histogram(plot):
    _c, p = plot
    steps = LiveCurve(pg.mkPen("r"), step="left")
    hist = LiveCurve(pg.mkPen("b"), step="center", brush=(0, 0, 255, 100))
    p.addItem(steps)
    p.addItem(hist)
    steps.setData([0, 2, 5], [1, 3, 2])
    np.testing.assert_array_equal(_points(steps.path()),
                                  [[0, 1], [2, 1], [2, 3], [5, 3], [5, 2]])
    hist.setData([0, 1, 2], [4, 6])
    np.testing.assert_array_equal(_points(hist.path()),
                                  [[0, 0], [0, 4], [1, 4], [1, 6], [2, 6], [2, 0]])
    assert hist.getData()[1].tolist() == [4, 6] and hist.brush().color().alpha() == 100


def test_dots_are_squares_of_their_pixel_size_and_bound_the_view(plot, qtbot):
    _c, p = plot
    dots = LiveDots("r", size=6)
    p.addItem(dots)
    dots.setData([0, 10, 20], [1, 5, np.nan])  # a NaN point is not drawn
    qtbot.wait(20)
    (x0, x1), (y0, y1) = p.getViewBox().viewRange()
    assert x0 <= 0 and x1 >= 10 and y0 <= 1 and y1 >= 5  # auto-range covers the points
    px, py = p.getViewBox().viewPixelSize()
    sq = _points(dots.squares.path())
    assert len(sq) == 10  # two squares of five vertices
    assert np.ptp(sq[:5, 0]) == pytest.approx(6 * px) and np.ptp(sq[:5, 1]) == pytest.approx(6 * py)
    # squares keep their pixel size when the range changes
    p.setXRange(0, 1000, padding=0)
    qtbot.wait(20)
    px2 = p.getViewBox().viewPixelSize()[0]
    assert np.ptp(_points(dots.squares.path())[:5, 0]) == pytest.approx(6 * px2)


def test_vertical_mark_spans_the_view(plot, qtbot):
    _c, p = plot
    band = VerticalMark(p, brush=(0, 255, 0, 50))
    line = VerticalMark(p, pen=pg.mkPen("r", width=2), label="splice")
    p.setYRange(-2, 3, padding=0)
    band.set_span(4, 7)
    line.set_span(7)
    band.setVisible(True)
    line.setVisible(True)
    qtbot.wait(20)
    r = band.rect()
    assert (r.left(), r.right(), r.top(), r.bottom()) == pytest.approx((4, 7, -2, 3))
    assert line.rect().width() == 0 and line.pen().isCosmetic() and line.label.text() == "splice"
    p.setYRange(10, 20, padding=0)
    qtbot.wait(20)
    assert (band.rect().top(), band.rect().bottom()) == pytest.approx((10, 20))


def test_held_range_moves_only_when_the_data_leaves_it(plot):
    from app.qt.plotting import hold_range

    _c, p = plot
    p.disableAutoRange()
    assert hold_range(p, "x", np.arange(0, 100.0))
    x0, x1 = p.getViewBox().viewRange()[0]
    assert x0 < 0 and x1 > 99
    moved = [hold_range(p, "x", np.arange(0, n, dtype=float)) for n in range(100, int(x1) + 1)]
    assert not any(moved) and p.getViewBox().viewRange()[0] == [x0, x1]  # growing inside it
    assert hold_range(p, "x", np.arange(0, x1 + 1))  # past its end: a jump ahead of the data
    assert p.getViewBox().viewRange()[0][1] > x1 + 1 + 0.2 * (x1 + 1)
    assert hold_range(p, "x", [10.0, 11.0], min_span=1.0)  # a third of it or less: shrinks
    assert hold_range(p, "y", [np.nan, 5.0, 5.0], min_span=2.0)  # a flat line: min_span wide
    y0, y1 = p.getViewBox().viewRange()[1]
    assert y0 < 4.0 and y1 > 6.0 and not hold_range(p, "y", [np.nan])


def test_joint_grid_draws_one_x_axis_per_column_and_grid_lines_in_every_plot(qtbot):
    from app.qt.plotting import joint_grid
    from drivers import layout

    c = canvas()
    qtbot.addWidget(c)
    c.resize(900, 700)
    plots = joint_grid(c, lambda i, side, row: f"{side} {row}")
    c.show()
    plots[0].setXRange(-10, 0, padding=0)
    qtbot.wait(50)
    last = {layout.arm_slice(side).stop - 1 for side in layout.SIDES}
    for i, p in enumerate(plots):
        assert p.getAxis("bottom").isVisible() == (i in last), i
        assert p.getAxis("left").isVisible()
        xs = _points(p.grid.path())[:, 0]
        assert {-8.0, -4.0} <= set(np.round(xs, 6).tolist()), i  # x grid lines where ticks are
