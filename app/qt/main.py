"""`run_app`: the desktop workstation's entry (called by `python main.py gui`)."""

from __future__ import annotations

import signal
import sys

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication, QMessageBox

from app.core.rig_session import RigSession
from app.qt.main_window import MainWindow
from drivers.clock import now
from drivers.config import load_rig_config

SCREENSHOT_AFTER_LIVE_S = 2.0  # live data on screen this long before the screenshots
SCREENSHOT_WAIT_S = 60.0  # give up on screenshots (and say why) if the rig shows nothing by then


def _application() -> QApplication:
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setOrganizationName("XR0")
    app.setApplicationName("Workstation")
    app.setApplicationDisplayName("XR0 Workstation")
    return app


def _fatal(app: QApplication, title: str, text: str, quit_after: float | None) -> int:
    """Show a startup error in a dialog (and on stderr) and return a failing exit code."""
    print(f"error: {title}: {text}", file=sys.stderr)
    box = QMessageBox(QMessageBox.Icon.Critical, title, text)
    if quit_after is not None:
        QTimer.singleShot(int(quit_after * 1000), box.reject)
    box.exec()
    return 2


def run_app(rig: str, screenshot_dir: str | None = None, quit_after: float | None = None,
            data: str | None = None) -> int:
    """Open the workstation on a rig config ('sim', a name in assets/rigs, or a .toml path).

    data: the folder of the episode store and the fine-tune runs (default: the last one used,
    else ~/xr0-data).
    screenshot_dir: once cameras and joints have been live for ~2 s, save one PNG per tab there.
    quit_after: close the window after this many seconds (waits for pending screenshots).
    Returns the process exit code: 0 on a clean close, non-zero if something failed.
    """
    app = _application()
    try:
        config = load_rig_config(rig)
    except Exception as e:  # noqa: BLE001 - every message carries its fix
        return _fatal(app, "Cannot load the rig config", str(e), quit_after)
    try:
        session = RigSession(config)
    except Exception as e:  # noqa: BLE001
        return _fatal(app, "Cannot open the rig",
                      f"{type(e).__name__}: {e}\n\nCheck the rig config {config.source} and that "
                      f"the rig's packages are installed (scripts/dev setup).", quit_after)

    window = MainWindow(session, data=data)
    window.show()
    failures: list[str] = []
    t_open = now()

    pending_shots = screenshot_dir is not None

    def take_screenshots() -> None:
        nonlocal pending_shots
        if not pending_shots:
            return
        live = window.live_since
        if live is not None and now() - live >= SCREENSHOT_AFTER_LIVE_S:
            pending_shots = False
            try:
                for p in window.save_screenshots(screenshot_dir):
                    print(f"saved {p}")
            except OSError as e:
                failures.append(str(e))
                window.report_error("Cannot save screenshots", str(e))
        elif now() - t_open > SCREENSHOT_WAIT_S:
            pending_shots = False
            failures.append("no live data for screenshots")
            window.report_error(
                "No screenshots saved",
                f"the rig showed no camera frames and joint data within {SCREENSHOT_WAIT_S:.0f} s; "
                f"see the status bar and any error above.")
        if pending_shots:
            QTimer.singleShot(100, take_screenshots)

    if pending_shots:
        QTimer.singleShot(100, take_screenshots)

    def close_when_done() -> None:
        if pending_shots:
            QTimer.singleShot(100, close_when_done)
        else:
            window.close()

    if quit_after is not None:
        QTimer.singleShot(int(quit_after * 1000), close_when_done)

    # Ctrl+C in the terminal closes the window cleanly (followers torque off) instead of killing.
    signal.signal(signal.SIGINT, lambda *_: window.close())
    ticker = QTimer()  # lets Python run its signal handlers while Qt's loop is in C++
    ticker.start(200)
    ticker.timeout.connect(lambda: None)

    window.closed.connect(app.quit)
    code = app.exec()
    session.close()  # idempotent: the window closed it already on a normal exit
    if window.failure:
        failures.append(window.failure)
    return 1 if failures else code
