"""Playback of one recorded episode: a view per camera and the joint plots on one shared scrubber.

    EpisodePlayer.load(store.episode(id))   # cameras, plots, scrubber at step 0
    player.set_step(k)                      # the frames and plot cursor of control step k
    player.play() / player.pause()          # real speed, on the recorded step times

Steps are the time axis: the scrubber moves over control steps, and each camera shows, for step k,
its latest frame taken at or before the step's time (store.lerobot.export.latest_frame, the
alignment the training view and the LeRobot export use). Frames are decoded by a FrameDecoder in a
worker thread and arrive as QImages by signal, so the GUI thread never waits for a decoder.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtGui import QImage
from PySide6.QtWidgets import (
    QHBoxLayout, QLabel, QPushButton, QSlider, QSplitter, QVBoxLayout, QWidget,
)

from app.qt import theme
from app.qt.camera_view import CameraView, rgb_to_qimage
from app.qt.joint_plots import MIN_Y_SPAN
from app.qt import plotting
from app.qt.plotting import joint_grid
from drivers import layout
from drivers.clock import now
from store import EpisodeData
from store.lerobot.export import latest_frame
from store.video import VideoError, VideoReader

PLAY_TICK_MS = 33  # ~30 Hz: the scrubber advances on the recorded step times


class FrameDecoder(QObject):
    """Decodes frames of one episode's videos in a worker thread. Requests are coalesced per
    camera (only the newest wanted frame is decoded), so scrubbing never builds a queue.

    `frame_ready(token, camera, index, image)`; `token` is the one `open()` returned, so frames of
    an episode no longer shown can be told apart and dropped."""

    frame_ready = Signal(int, str, int, QImage)
    failed = Signal(int, str, str)  # token, camera, message with the fix

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._cond = threading.Condition()
        self._token = 0
        self._videos: dict[str, Path] = {}
        self._want: dict[str, int] = {}
        self._stop = False
        self.decoded = 0  # frames delivered
        self._thread = threading.Thread(target=self._run, name="episode-decoder", daemon=True)
        self._thread.start()

    def open(self, videos: dict[str, Path]) -> int:
        """Switch to another episode's videos (camera -> path); returns its token."""
        with self._cond:
            self._token += 1
            self._videos = dict(videos)
            self._want = {}
            self._cond.notify()
            return self._token

    def request(self, camera: str, index: int) -> None:
        with self._cond:
            self._want[camera] = int(index)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=5.0)

    def _emit(self, signal, *args) -> bool:
        try:
            signal.emit(*args)
            return True
        except RuntimeError:  # the player was deleted without shutdown(): nobody to tell
            return False

    def _run(self) -> None:
        readers: dict[str, VideoReader] = {}
        opened = -1
        broken: set[str] = set()
        try:
            while True:
                with self._cond:
                    while not self._stop and not self._want and opened == self._token:
                        self._cond.wait()
                    if self._stop:
                        return
                    token, videos = self._token, self._videos
                    camera, index = self._want.popitem() if self._want else (None, -1)
                if token != opened:
                    for r in readers.values():
                        r.close()
                    readers, broken, opened = {}, set(), token
                if camera is None or camera in broken:
                    continue
                try:
                    reader = readers.get(camera)
                    if reader is None:
                        reader = readers[camera] = VideoReader(videos[camera], cache_frames=64)
                    image = rgb_to_qimage(reader.frame(index))
                except (VideoError, IndexError, KeyError) as e:
                    broken.add(camera)
                    if not self._emit(self.failed, token, camera, str(e)):
                        return
                    continue
                self.decoded += 1
                if not self._emit(self.frame_ready, token, camera, index, image):
                    return
        finally:
            for r in readers.values():
                r.close()


class PlaybackView(CameraView):
    """A camera view fed with decoded frames of a recording (not live frames)."""

    def show_image(self, image: QImage, index: int, count: int) -> None:
        self.image = image
        self.seq = index
        self.frames_shown += 1
        self.message = f"frame {index + 1} / {count}"
        self.update()


class EpisodePlots(QWidget):
    """One plot per follower joint over the whole episode (seconds from its first step): measured
    follower position solid, recorded action dashed, and a vertical cursor at the scrubber."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.canvas = plotting.canvas()
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.canvas)
        self.follower: list[pg.PlotDataItem] = []
        self.action: list[pg.PlotDataItem] = []
        self.cursors: list[pg.InfiniteLine] = []
        self.empty = True  # nothing plotted
        names = (*layout.ARM_JOINTS, "gripper")
        self.plots = joint_grid(self.canvas, lambda i, side, row: f"{side} {names[row]}",
                                left_width=36, min_span=MIN_Y_SPAN)
        for i, plot in enumerate(self.plots):
            colour = theme.JOINT_COLOURS[i % layout.JOINTS_PER_ARM]
            self.action.append(plot.plot(
                pen=pg.mkPen(colour, width=1, style=Qt.PenStyle.DashLine), name="action"))
            self.follower.append(plot.plot(pen=pg.mkPen(colour, width=2), name="follower"))
            cursor = pg.InfiniteLine(pos=0.0, angle=90, pen=pg.mkPen("#c62828", width=1))
            plot.addItem(cursor)
            self.cursors.append(cursor)

    def show_episode(self, x: np.ndarray | None, follower: np.ndarray | None,
                     action: np.ndarray | None) -> None:
        """x: (N,) seconds; follower, action: (N, 14). None clears the plots."""
        if x is None and self.empty:
            return
        self.empty = x is None
        for i in range(layout.DIM):
            if x is None:
                self.follower[i].setData([], [])
                self.action[i].setData([], [])
                continue
            self.follower[i].setData(x, follower[:, i], connect="finite")
            self.action[i].setData(x, action[:, i], connect="finite")
        if x is not None and len(x) > 1:
            self.plots[0].setXRange(float(x[0]), float(x[-1]), padding=0.01)

    def set_cursor(self, x: float) -> None:
        for c in self.cursors:
            c.setValue(x)


class EpisodePlayer(QWidget):
    """Cameras on top, joint plots below, the scrubber and play/pause at the bottom."""

    step_changed = Signal(int)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.data: EpisodeData | None = None
        self.t = np.zeros(0)
        self.views: dict[str, PlaybackView] = {}
        self.wanted: dict[str, int] = {}   # frame index each camera should show
        self.shown: dict[str, int] = {}    # frame index each camera shows
        self._token = 0
        self.decoder = FrameDecoder(self)
        self.decoder.frame_ready.connect(self._on_frame)
        self.decoder.failed.connect(self._on_failed)

        self.title = QLabel("select an episode to play it")
        self.title.setWordWrap(True)
        self.cameras = QWidget()
        self._cam_lay = QHBoxLayout(self.cameras)
        self._cam_lay.setContentsMargins(0, 0, 0, 0)
        self.plots = EpisodePlots()
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.cameras)
        split.addWidget(self.plots)
        split.setStretchFactor(0, 2)
        split.setStretchFactor(1, 3)
        split.setSizes([250, 550])
        self.splitter = split

        self.play_button = QPushButton("Play")
        self.play_button.setToolTip("Play at the recorded speed from the scrubber's position "
                                    "(Space)")
        self.play_button.setShortcut(Qt.Key.Key_Space)
        self.play_button.clicked.connect(self.toggle)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setToolTip("Control step; every camera shows its latest frame at or before "
                               "the step's time")
        self.slider.valueChanged.connect(self._show_step)
        self.position = QLabel("—")
        self.position.setMinimumWidth(190)
        bar = QHBoxLayout()
        bar.addWidget(self.play_button)
        bar.addWidget(self.slider, 1)
        bar.addWidget(self.position)

        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.title)
        lay.addWidget(split, 1)
        lay.addLayout(bar)

        self.timer = QTimer(self)
        self.timer.setInterval(PLAY_TICK_MS)
        self.timer.timeout.connect(self._tick)
        self._play_from = (0.0, 0.0)  # (wall clock, episode time) when play was pressed
        self.load(None)

    # -- episode -------------------------------------------------------------------------------
    def load(self, data: EpisodeData | None, message: str = "") -> None:
        """Show `data` from its first step; None (with a message why) empties the player."""
        self.pause()
        self.data = data
        self.wanted, self.shown = {}, {}
        cams = list(data.frame_times) if data is not None else []
        if list(self.views) != cams:
            for v in self.views.values():
                self._cam_lay.removeWidget(v)
                v.deleteLater()
            self.views = {c: PlaybackView(c) for c in cams}
            for v in self.views.values():
                self._cam_lay.addWidget(v)
        if data is None:
            self._token = self.decoder.open({})
            self.t = np.zeros(0)
            self.title.setText(message or "select an episode to play it")
            self.plots.show_episode(None, None, None)
            self.slider.setRange(0, 0)
            self.slider.setEnabled(False)
            self.play_button.setEnabled(False)
            self.position.setText("—")
            return
        info = data.info
        self._token = self.decoder.open({c: data.video_path(c) for c in cams})
        self.t = data.t
        for c, v in self.views.items():
            v.image = None
            v.fps = data.cameras.get(c, (0, 0, 0.0))[2]
            v.show_message("no frames" if len(data.frame_times[c]) == 0 else "decoding…")
        x = data.t - data.t[0] if len(data.t) else data.t
        self.plots.show_episode(x, data.follower, data.action)
        self.title.setText(f"episode {info.id}: {info.task}  ({info.status}, {len(data.t)} steps, "
                           f"{x[-1] if len(x) else 0:.1f} s)")
        n = len(data.t)
        self.slider.setEnabled(n > 0)
        self.play_button.setEnabled(n > 1)
        self.slider.blockSignals(True)
        self.slider.setRange(0, max(n - 1, 0))
        self.slider.setValue(0)
        self.slider.blockSignals(False)
        if n:
            self._show_step(0)

    @property
    def step(self) -> int:
        return self.slider.value()

    def set_step(self, k: int) -> None:
        self.slider.setValue(int(k))

    def frame_for(self, camera: str, step: int) -> int:
        """The frame of `camera` shown at control step `step` (-1 when the camera has none)."""
        ft = self.data.frame_times[camera]
        if len(ft) == 0:
            return -1
        return int(latest_frame(ft, self.t[step:step + 1])[0])

    def _show_step(self, k: int) -> None:
        if self.data is None or not len(self.t):
            return
        x = float(self.t[k] - self.t[0])
        self.plots.set_cursor(x)
        self.position.setText(f"step {k + 1} / {len(self.t)}   {x:6.2f} / "
                              f"{self.t[-1] - self.t[0]:.2f} s")
        for cam in self.views:
            j = self.frame_for(cam, k)
            if j >= 0 and self.wanted.get(cam) != j:
                self.wanted[cam] = j
                self.decoder.request(cam, j)
        self.step_changed.emit(k)

    def _on_frame(self, token: int, camera: str, index: int, image: QImage) -> None:
        view = self.views.get(camera)
        if token != self._token or view is None:
            return  # a frame of an episode no longer shown
        self.shown[camera] = index
        view.show_image(image, index, len(self.data.frame_times[camera]))

    def _on_failed(self, token: int, camera: str, message: str) -> None:
        if token == self._token and camera in self.views:
            self.views[camera].show_message("cannot decode: see the error")
            self.views[camera].setToolTip(message)

    # -- playback ------------------------------------------------------------------------------
    @property
    def playing(self) -> bool:
        return self.timer.isActive()

    def play(self) -> None:
        if self.data is None or len(self.t) < 2:
            return
        if self.step >= len(self.t) - 1:
            self.set_step(0)
        self._play_from = (now(), float(self.t[self.step]))
        self.timer.start()
        self.play_button.setText("Pause")

    def pause(self) -> None:
        self.timer.stop()
        self.play_button.setText("Play")

    def toggle(self) -> None:
        self.pause() if self.playing else self.play()

    def _tick(self) -> None:
        wall0, t0 = self._play_from
        target = t0 + (now() - wall0)
        k = int(np.searchsorted(self.t, target, side="right")) - 1
        k = min(max(k, 0), len(self.t) - 1)
        if k != self.step:
            self.set_step(k)
        if k >= len(self.t) - 1:
            self.pause()

    def shutdown(self) -> None:
        """Stop playback and the decoder thread (the owner calls this when closing)."""
        self.pause()
        self.decoder.close()
