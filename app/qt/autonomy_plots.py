"""Live plots of an autonomous run, and the same plots for a saved run.

Three panels, all against the control step:
  chunk overlap   for one joint: the previous chunk and the newest (or a chosen) chunk where the
                  runtime placed them (index 0 at the request step), the executed command, the
                  clean prefix shaded from the request step over its length, the splice (arrival
                  step) as a vertical line
  latency         each inference in ms and as a delay in steps (measured: arrival - request, and
                  the estimate d the request was made with), late chunks in red, a histogram of ms
  joints          commanded (dashed) against measured (solid) for the 14 joints

`show(data)` takes the arrays of xr0.runtime.Telemetry (`arrays()`, `snapshot()`, `live_data()`
below) or of a saved run (`load_run(path).arrays`). Chunk records accumulate by id across calls, so
a live view that only sees the chunks of its last few seconds still plots the latency of the whole
run; `clear()` before showing another run (`show_run` does). Drawing is setData on curves made once.
"""

from __future__ import annotations

import warnings

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QComboBox, QHBoxLayout, QLabel, QSpinBox, QSplitter, QVBoxLayout, QWidget,
)

from app.qt import theme
from app.qt.plotting import (
    LiveCurve, LiveDots, StableRanges, VerticalMark, canvas, hold_range, joint_grid, plot_item,
)
from drivers import layout
from xr0.runtime import RunLog, Telemetry
from xr0.runtime.telemetry import chunk_arrays

KEEP_ACTIONS = 256  # chunks whose actions stay available to the chunk chooser in a live run
MAX_LATENCY_POINTS = 5000  # the latency plots show the newest this many inferences, as at most
# two points per pixel of their width (decimate: the min and max of each block of inferences)
PREV_COLOUR, NEW_COLOUR, EXEC_COLOUR = "#9e9e9e", "#1565c0", "#212121"
PREFIX_BRUSH = (46, 125, 50, 50)
MIN_Y_SPAN = 0.1  # rad (grippers 0..1): a still joint shows as a flat line, not as noise
MAX_POINTS = 4000  # a longer saved run is drawn as the min and max of blocks of steps


def live_data(telemetry: Telemetry, steps: int) -> dict[str, np.ndarray]:
    """The last `steps` control steps of a live run and the chunks that reach into them, in the
    arrays of a saved run. Cheap enough for every refresh: only a window is copied."""
    data = telemetry.snapshot(last=steps)
    first = int(data["step_index"][0]) if len(data["step_index"]) else 0
    horizon = int(telemetry.meta.get("H", 0))
    chunks = [c for c in telemetry.chunks()
              if c.arrival_step < 0 or c.request_step + max(horizon, 1) >= first]
    data.update(chunk_arrays(chunks, telemetry.dim, horizon))
    return data


def decimate(x: np.ndarray, ys: np.ndarray, max_points: int = MAX_POINTS
             ) -> tuple[np.ndarray, np.ndarray]:
    """At most ~max_points rows of (x (n,), ys (n, m)): each block of steps becomes its min and
    its max (peaks survive, unlike striding); the rows after the last whole block are kept."""
    n = len(x)
    if n <= max_points:
        return x, ys
    b = -(-n // (max_points // 2))  # steps per block
    m = n // b * b
    blocks = ys[:m].reshape(m // b, b, ys.shape[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN (holding) block stays NaN
        lo, hi = np.nanmin(blocks, axis=1), np.nanmax(blocks, axis=1)
    out = np.empty((2 * len(lo), ys.shape[1]))
    out[0::2], out[1::2] = lo, hi
    xb = x[:m].reshape(m // b, b)
    xs = np.empty(2 * len(xb))
    xs[0::2], xs[1::2] = xb[:, 0], xb[:, b // 2]
    return np.concatenate([xs, x[m:]]), np.concatenate([out, ys[m:]])


class _Chunks:
    """Chunk records by id, merged across show() calls."""

    def __init__(self) -> None:
        self.rows: dict[int, tuple[int, int, float, int, int, bool]] = {}
        self.actions: dict[int, np.ndarray] = {}
        self.version = 0  # changes whenever a record or its actions change
        self._sorted: tuple[np.ndarray, ...] | None = None

    def merge(self, data: dict[str, np.ndarray]) -> None:
        if "chunk_id" not in data:
            return
        acts = data.get("chunk_actions")
        for i, cid in enumerate(data["chunk_id"].tolist()):
            row = (int(data["chunk_request"][i]), int(data["chunk_arrival"][i]),
                   float(data["chunk_latency_ms"][i]), int(data["chunk_d"][i]),
                   int(data["chunk_prefix"][i]), bool(data["chunk_late"][i]))
            if self.rows.get(cid) != row:
                self.rows[cid] = row
                self._sorted = None
                self.version += 1
            if (acts is not None and row[1] >= 0 and cid not in self.actions
                    and i < len(acts) and np.isfinite(acts[i]).any()):
                self.actions[cid] = acts[i]
                self.version += 1
        if len(self.actions) > KEEP_ACTIONS and len(self.actions) > len(data["chunk_id"]):
            for cid in sorted(self.actions)[: len(self.actions) - KEEP_ACTIONS]:
                del self.actions[cid]

    def table(self) -> tuple[np.ndarray, ...]:
        """(ids, request, arrival, latency_ms, d, prefix, late), sorted by id."""
        if self._sorted is None:
            ids = np.array(sorted(self.rows), dtype=np.int64)
            cols = list(zip(*(self.rows[i] for i in ids.tolist()))) or [()] * 6
            self._sorted = (ids, *(np.array(c) for c in cols))
        return self._sorted


def _small_plot(on: pg.GraphicsLayoutWidget, title: str, row=None, col=None
                ) -> pg.PlotItem:
    plot = plot_item(on, row=row, col=col)
    plot.disableAutoRange()  # hold_range: ranges that move only when the data leaves them
    plot.setTitle(title, size="8pt", color="#333")
    plot.setMenuEnabled(False)
    plot.hideButtons()
    plot.showGrid(x=True, y=True, alpha=0.25)
    plot.getAxis("left").setWidth(44)
    return plot


def _legend(*entries: tuple[str, str, str]) -> QLabel:
    """A legend above a canvas, (mark, colour, name) per entry: a label outside the plot's scene,
    painted only when it changes (a pyqtgraph legend repaints in Python with the curves under
    it)."""
    label = QLabel("&nbsp;&nbsp;".join(
        f"<span style='color:{colour}'>{mark}</span>&nbsp;{name}" for mark, colour, name in entries))
    label.setStyleSheet("font-size: 8pt;")
    return label


def _with_legend(legend: QLabel, plots: pg.GraphicsLayoutWidget) -> QWidget:
    box = QWidget()
    lay = QVBoxLayout(box)
    lay.setContentsMargins(0, 0, 0, 0)
    lay.setSpacing(0)
    lay.addWidget(legend)
    lay.addWidget(plots, 1)
    return box


def _thin(x: np.ndarray, y: np.ndarray, width: float) -> tuple[np.ndarray, np.ndarray]:
    """At most ~2 points per pixel of a plot `width` px wide (decimate: peaks survive)."""
    xd, yd = decimate(x, y[:, None], max(2 * int(width), 200))
    return xd, yd[:, 0]


class AutonomyPlots(QWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.chunks = _Chunks()
        self.redraws = 0
        self.meta: dict = {}
        self.shown_chunk: int | None = None  # the chunk the overlap panel shows
        self.previous_chunk: int | None = None
        self._steps: dict[str, np.ndarray] = {}
        self._overlap_key: tuple | None = None  # what the overlap panel last drew
        # live: the joint plots show the last follow_seconds before the newest step on a fixed
        # axis (no axis redraw per refresh); None: the whole run from its start
        self.follow_seconds: float | None = None
        self._latency_key: int | None = None

        self.joint = QComboBox()
        self.joint.addItems(list(layout.NAMES))
        self.joint.setCurrentIndex(1)  # left shoulder: it moves in every task
        self.joint.setToolTip("The joint the chunk overlap panel shows.")
        self.chunk_spin = QSpinBox()
        self.chunk_spin.setRange(-1, 10_000_000)
        self.chunk_spin.setSpecialValueText("newest")
        self.chunk_spin.setValue(-1)
        self.chunk_spin.setToolTip("The chunk shown with the one before it ('newest' follows the "
                                   "run). Chunk ids count from 0 in request order.")
        self.info = QLabel("")
        self.info.setStyleSheet(f"color: {theme.MUTED};")
        bar = QHBoxLayout()
        bar.addWidget(QLabel("Joint"))
        bar.addWidget(self.joint)
        bar.addWidget(QLabel("Chunk"))
        bar.addWidget(self.chunk_spin)
        bar.addWidget(self.info, 1)
        self.joint.currentIndexChanged.connect(self._redraw_overlap)
        self.chunk_spin.valueChanged.connect(self._redraw_overlap)

        self._build_overlap()
        self._build_latency()
        self._build_joints()
        top = QSplitter(Qt.Orientation.Horizontal)
        top.addWidget(_with_legend(self.overlap_legend, self.overlap_canvas))
        top.addWidget(_with_legend(self.latency_legend, self.latency_canvas))
        top.setSizes([600, 400])
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(top)
        split.addWidget(self.joints_canvas)
        split.setSizes([320, 480])
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(bar)
        lay.addWidget(split, 1)

    # -- construction ------------------------------------------------------------------------
    def _build_overlap(self) -> None:
        self.overlap_canvas = canvas()
        p = _small_plot(self.overlap_canvas, "chunk overlap")
        p.setLabel("bottom", "control step")
        p.getViewBox().setLimits(minYRange=MIN_Y_SPAN)
        self.prefix_region = VerticalMark(p, brush=PREFIX_BRUSH)
        self.prefix_region.setZValue(-10)
        self.splice_line = VerticalMark(p, pen=pg.mkPen(theme.ESTOP_RED, width=2), label="splice",
                                        label_colour=theme.ESTOP_RED)
        self.prev_curve, self.new_curve, self.exec_curve = (
            LiveCurve(pg.mkPen(PREV_COLOUR)), LiveCurve(pg.mkPen(NEW_COLOUR)),
            LiveCurve(pg.mkPen(EXEC_COLOUR, style=Qt.PenStyle.DashLine)))
        for c in (self.prev_curve, self.new_curve, self.exec_curve):
            p.addItem(c)
        self.overlap_legend = _legend(("━", PREV_COLOUR, "previous chunk"),
                                      ("━", NEW_COLOUR, "new chunk"),
                                      ("┅", EXEC_COLOUR, "executed"),
                                      ("▮", "rgb(46,125,50)", "clean prefix"),
                                      ("┃", theme.ESTOP_RED, "splice"))
        self.overlap_plot = p

    def _build_latency(self) -> None:
        self.latency_canvas = canvas()
        c = self.latency_canvas
        self.latency_plot = _small_plot(c, "inference latency (ms)", row=0, col=0)
        self.latency_curve = LiveCurve(pg.mkPen(NEW_COLOUR))
        self.late_curve = LiveDots(theme.ESTOP_RED, size=5)  # late chunks: the points that matter
        self.delay_plot = _small_plot(c, "delay (steps)", row=1, col=0)
        self.delay_plot.setLabel("bottom", "request step")
        self.delay_plot.setXLink(self.latency_plot)
        self.delay_est_curve = LiveCurve(pg.mkPen(theme.WARN_AMBER), step="left")
        self.delay_curve = LiveDots(NEW_COLOUR, size=3)
        self.hist_plot = _small_plot(c, "latency histogram", row=2, col=0)
        self.hist_plot.setLabel("bottom", "ms")
        self.hist_curve = LiveCurve(pg.mkPen(NEW_COLOUR), step="center",
                                    brush=(21, 101, 192, 120))
        self.latency_plot.addItem(self.latency_curve)
        self.latency_plot.addItem(self.late_curve)
        self.delay_plot.addItem(self.delay_est_curve)
        self.delay_plot.addItem(self.delay_curve)
        self.hist_plot.addItem(self.hist_curve)
        self.latency_legend = _legend(("━", NEW_COLOUR, "latency"),
                                      ("■", theme.ESTOP_RED, "late"),
                                      ("━", theme.WARN_AMBER, "d (estimate)"),
                                      ("■", NEW_COLOUR, "measured delay"))

    def _build_joints(self) -> None:
        self.joints_canvas = canvas()
        names = (*layout.ARM_JOINTS, "gripper")
        self.measured: list[LiveCurve] = [None] * layout.DIM  # type: ignore[list-item]
        self.commanded: list[LiveCurve] = [None] * layout.DIM  # type: ignore[list-item]
        self.joint_plots = joint_grid(self.joints_canvas,
                                      lambda i, side, row: f"{side} {names[row]}",
                                      left_width=44, min_span=MIN_Y_SPAN)
        for i, p in enumerate(self.joint_plots):
            p.enableAutoRange(y=False)
            colour = theme.JOINT_COLOURS[i % layout.JOINTS_PER_ARM]
            # 1-px pens (several times faster than wide ones) on curves Qt draws alone
            # (app.qt.plotting.LiveCurve)
            for curve_list, pen in (
                    (self.commanded, pg.mkPen(colour, style=Qt.PenStyle.DashLine)),
                    (self.measured, pg.mkPen(colour))):
                curve = LiveCurve(pen)
                p.addItem(curve)
                curve_list[i] = curve
        self._ranges = StableRanges(self.joint_plots, MIN_Y_SPAN)

    # -- showing -------------------------------------------------------------------------------
    def clear(self) -> None:
        """Forget the run shown (before showing another)."""
        self.chunks = _Chunks()
        self._steps = {}
        self.meta = {}
        self.shown_chunk = self.previous_chunk = None
        for c in (self.prev_curve, self.new_curve, self.exec_curve, self.latency_curve,
                  self.late_curve, self.delay_curve, self.delay_est_curve, *self.measured,
                  *self.commanded):
            c.setData([], [])
        self.hist_curve.setData([], [])
        self._ranges.reset()
        self._overlap_key = self._latency_key = None
        self.prefix_region.setVisible(False)
        self.splice_line.setVisible(False)
        self.info.setText("")

    def follow(self, seconds: float | None) -> None:
        """Live: the joint plots show the last `seconds` on a fixed axis; None: the whole run."""
        self.follow_seconds = seconds
        first = self.joint_plots[0]
        if seconds is None:
            first.enableAutoRange(x=True)
        else:
            first.setXRange(-seconds, 0, padding=0)

    def show_run(self, run: RunLog) -> None:
        """A saved run (xr0.runtime.load_run), in full."""
        self.clear()
        self.follow(None)
        self.meta = dict(run.meta)
        self.show(run.arrays)

    def show(self, data: dict[str, np.ndarray] | None = None) -> None:  # type: ignore[override]
        """Draw the step arrays given and the chunks seen so far (see the module doc). Without
        data, QWidget.show()."""
        if data is None:
            super().show()
            return
        self._steps = {k: v for k, v in data.items() if k.startswith("step_")}
        self.chunks.merge(data)
        self._redraw_joints()
        self._redraw_latency()
        self._redraw_overlap()
        self.redraws += 1

    def _redraw_joints(self) -> None:
        k = self._steps.get("step_index")
        if k is None or len(k) == 0:
            return
        t = self._steps["step_t"]
        x = t - t[-1] if self.follow_seconds else t - t[0]
        x, both = decimate(x, np.hstack([self._steps["step_action"], self._steps["step_state"]]))
        act, state = both[:, : layout.DIM], both[:, layout.DIM :]
        for i in range(layout.DIM):
            self.measured[i].setData(x, state[:, i])
            self.commanded[i].setData(x, act[:, i])
        self._ranges.fit(act, state)

    def _redraw_latency(self) -> None:
        if self._latency_key == self.chunks.version:
            return
        self._latency_key = self.chunks.version
        ids, req, arr, lat, d, _prefix, late = self.chunks.table()
        done = (arr >= 0) if len(ids) else np.zeros(0, bool)
        sel = np.flatnonzero(done)[-MAX_LATENCY_POINTS:]
        x, ms = req[sel].astype(np.float64), lat[sel].astype(np.float64)
        width = self.latency_plot.getViewBox().width()
        self.latency_curve.setData(*_thin(x, ms, width))
        lsel = sel[late[sel].astype(bool)] if len(sel) else sel
        self.late_curve.setData(*_thin(req[lsel].astype(np.float64),
                                       lat[lsel].astype(np.float64), width))
        self.delay_curve.setData(*_thin(x, (arr[sel] - req[sel]).astype(np.float64), width))
        self.delay_est_curve.setData(*_thin(req[-MAX_LATENCY_POINTS:].astype(np.float64),
                                            d[-MAX_LATENCY_POINTS:].astype(np.float64), width))
        hold_range(self.latency_plot, "x", self.delay_est_curve.getData()[0], min_span=10)
        hold_range(self.latency_plot, "y", ms, min_span=1.0)
        hold_range(self.delay_plot, "y", self.delay_curve.getData()[1],
                   self.delay_est_curve.getData()[1], min_span=2.0)
        finite = ms[np.isfinite(ms)]
        if len(finite):
            lo, hi = float(finite.min()), float(finite.max())
            if hi - lo < 1.0:
                lo, hi = lo - 0.5, hi + 0.5
            counts, edges = np.histogram(finite, bins=min(30, max(5, len(finite) // 3)),
                                         range=(lo, hi))
            self.hist_curve.setData(edges, counts)
            hold_range(self.hist_plot, "x", edges, min_span=1.0)
            hold_range(self.hist_plot, "y", [0], counts, min_span=1.0)
            self.info.setText(
                f"{len(ids)} chunks · latency p50 {np.percentile(finite, 50):.0f} ms, "
                f"p95 {np.percentile(finite, 95):.0f} ms · late {int(late.sum())}")

    def chunk_ids(self) -> list[int]:
        """Ids of the chunks seen, in order."""
        return self.chunks.table()[0].tolist()

    def _pick(self) -> tuple[int | None, int | None]:
        """(chosen chunk, the arrived chunk before it) among those whose actions are kept."""
        have = sorted(self.chunks.actions)
        if not have:
            return None, None
        want = self.chunk_spin.value()
        if want < 0 or want not in self.chunks.actions:
            cur = have[-1] if want < 0 else max([c for c in have if c <= want] or have[:1])
        else:
            cur = want
        prev = [c for c in have if c < cur]
        return cur, (prev[-1] if prev else None)

    def _redraw_overlap(self) -> None:
        cur, prev = self._pick()
        self.shown_chunk, self.previous_chunk = cur, prev
        if cur is None:
            return
        j = self.joint.currentIndex()
        req, arr, _lat, d, prefix, late = self.chunks.rows[cur]
        new = self.chunks.actions[cur]
        lo, hi = req, req + len(new)
        if prev is not None:
            lo = self.chunks.rows[prev][0]
        k = self._steps.get("step_index")
        if k is not None and len(k):  # the executed command: the only part that moves live
            win = (k >= lo) & (k < hi)
            self.exec_curve.setData(k[win].astype(np.float64), self._steps["step_action"][win, j])
        key = (self.chunks.version, cur, prev, j)
        if key == self._overlap_key:
            self._hold_overlap_y()
            return
        self._overlap_key = key
        self.new_curve.setData(req + np.arange(len(new), dtype=np.float64), new[:, j])
        if prev is not None:
            old = self.chunks.actions[prev]
            self.prev_curve.setData(lo + np.arange(len(old), dtype=np.float64), old[:, j])
        else:
            self.prev_curve.setData([], [])
        self.prefix_region.set_span(req, req + prefix)
        self.prefix_region.setVisible(prefix > 0)
        self.splice_line.set_span(arr)
        self.splice_line.setVisible(arr >= 0)
        self.overlap_plot.setTitle(
            f"{layout.NAMES[j]} · chunk {cur}"
            + (f" after {prev}" if prev is not None else "")
            + f": requested at {req}, spliced at {arr}, d {d}, prefix {prefix}"
            + (" · LATE" if late else ""), size="8pt", color=theme.ESTOP_RED if late else "#333")
        self.overlap_plot.setXRange(lo - 2, hi + 2, padding=0)
        self._hold_overlap_y()

    def _hold_overlap_y(self) -> None:
        hold_range(self.overlap_plot, "y", *(c.getData()[1] for c in (
            self.prev_curve, self.new_curve, self.exec_curve)), min_span=MIN_Y_SPAN,
                   headroom=0.1)

    # -- what is drawn (for tests and the run log) -------------------------------------------------
    def splice_step(self) -> float | None:
        return self.splice_line.span[0] if self.splice_line.isVisible() else None

    def prefix_span(self) -> tuple[float, float] | None:
        return self.prefix_region.span if self.prefix_region.isVisible() else None
