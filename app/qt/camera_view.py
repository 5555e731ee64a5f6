"""A live camera view: the latest RGB frame scaled to fit (aspect kept), with the camera's name
and measured fps drawn over it.

Cheap on the GUI thread: a new frame becomes a QImage over the frame's own buffer (no copy; a
Frame's array is never written after it is published), and the image is scaled once per frame
and view size, by Qt with FastTransformation, when it is painted: a hidden view costs nothing but
keeping the reference."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QColor, QFont, QImage, QPainter
from PySide6.QtWidgets import QSizePolicy, QWidget

from drivers.rig import Frame


def rgb_view(rgb: np.ndarray) -> tuple[QImage, np.ndarray]:
    """A QImage (RGB888) over an HxWx3 uint8 array's buffer, without a copy, and the array it
    reads (contiguous): keep that array alive, and unchanged, as long as the image."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"camera frame must be HxWx3 uint8 RGB, got {rgb.shape} {rgb.dtype}")
    rgb = np.ascontiguousarray(rgb)
    h, w, _ = rgb.shape
    return QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888), rgb


def rgb_to_qimage(rgb: np.ndarray) -> QImage:
    """An owned QImage (RGB888) copied from an HxWx3 uint8 array."""
    image, _buffer = rgb_view(rgb)
    return image.copy()  # detached: the array may be released


class CameraView(QWidget):
    """Shows one camera. `show_frame()` takes a drivers.rig.Frame; repeated frames (same seq)
    are ignored, so the view can be fed from a poll faster than the camera."""

    def __init__(self, name: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.name = name
        self.image: QImage | None = None
        self._buffer: np.ndarray | None = None  # the frame array self.image reads
        self._scaled: tuple[tuple[int, int, int], QImage] | None = None  # (key, image) drawn
        self.seq = -1
        self.frames_shown = 0
        self.fps = 0.0
        self.message = "waiting for frames…"
        self.setMinimumSize(160, 120)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setToolTip(f"camera '{name}'")

    def sizeHint(self) -> QSize:
        return QSize(320, 240)

    def show_frame(self, frame: Frame, fps: float) -> bool:
        """Display `frame` if it is new; returns whether the view changed."""
        self.fps = fps
        if frame.seq == self.seq:
            return False
        self.image, self._buffer = rgb_view(frame.color)
        self.seq = frame.seq
        self.frames_shown += 1
        self.message = ""
        self.update()
        return True

    def show_message(self, text: str) -> None:
        """Show a line of text instead of (or over a stale) image, e.g. a lost stream."""
        if text != self.message:
            self.message = text
            self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt naming
        p = QPainter(self)
        p.fillRect(self.rect(), QColor("#101010"))
        if self.image is not None and not self.image.isNull():
            scaled = self.scaled_image()
            p.drawImage((self.width() - scaled.width()) // 2,
                        (self.height() - scaled.height()) // 2, scaled)
        font = QFont(self.font())
        font.setBold(True)
        p.setFont(font)
        label = f"{self.name}  {self.fps:4.1f} fps" if self.image is not None else self.name
        self._text(p, 6, 4, label)
        if self.message:
            self._text(p, 6, self.height() - 22, self.message)
        p.end()

    def scaled_image(self) -> QImage:
        """The image scaled to fit the view (aspect kept): made once per image and view size."""
        key = (self.image.cacheKey(), self.width(), self.height())
        if self._scaled is None or self._scaled[0] != key:
            self._scaled = (key, self.image.scaled(
                self.size(), Qt.AspectRatioMode.KeepAspectRatio,
                Qt.TransformationMode.FastTransformation))
        return self._scaled[1]

    @staticmethod
    def _text(p: QPainter, x: int, y: int, text: str) -> None:
        r = p.fontMetrics().boundingRect(text).adjusted(-4, -2, 4, 2)
        r.moveTo(x, y)
        p.fillRect(r, QColor(0, 0, 0, 160))
        p.setPen(QColor("white"))
        p.drawText(r, Qt.AlignmentFlag.AlignCenter, text)
