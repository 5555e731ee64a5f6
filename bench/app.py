"""`python main.py bench app`: the desktop app's event loop under a working day's load.

The real MainWindow opens offscreen (QT_QPA_PLATFORM=offscreen unless set) on the real-time sim
rig (assets/rigs/sim.toml: three cameras, teleop engaged), with a temporary data folder and
temporary QSettings (the user's are never touched). A probe thread emits a timestamped signal
every 10 ms into a QObject of the GUI thread (a queued connection, as any event from another
thread reaches the window); the delay until its slot runs is how long an operator's click or key
(the E-STOP's included) would wait at that moment: the event-loop latency.

Phases, each PHASE_S seconds (QUICK_PHASE_S with --quick), driven through the tabs' own buttons:

    idle                   the Rig tab live: cameras, joint plots, teleop engaged
    recording              the Record tab's episode cycle recording (sim episodes back to back)
    recording_training     the same, plus a fine-tune job (tiny-scratch preset, data loading in
                           its own process, measured from its first training step)
    autonomy_training      an AutonomyRun of the scripted policy started from the Autonomy tab,
                           the tab visible with its live plots, the fine-tune job still training

Figures: event-loop latency p50 / p99 / max per phase (goal p99 <= 50 ms), the Autonomy tab's
plot refreshes per second (goal >= 20 Hz), and the time from an E-STOP press (a mouse press posted
to the button, as the window system delivers it) to the stop being applied (commands refused,
followers holding), measured during autonomy + training.

XR0_BENCH_APP_DIR=DIR keeps the data folder (episodes, the fine-tune run, the autonomy telemetry)
and the settings there instead of a temporary folder.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np

from bench import Figure

PHASE_S, QUICK_PHASE_S = 20.0, 5.0
PROBE_HZ = 100
TASK = "transfer the cube"
LATENCY_GOAL_MS = 50.0
REFRESH_GOAL_HZ = 20.0
ANCHOR = "the UI never freezes: every click and key, the E-STOP's included, is handled at once"
PHASES = ("idle", "recording", "recording_training", "autonomy_training")


def _qt():
    """The Qt application, offscreen unless a platform is named."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    return QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "xr0"])


def _isolate_settings(folder: str) -> None:
    from PySide6.QtCore import QSettings

    for fmt in (QSettings.Format.NativeFormat, QSettings.Format.IniFormat):
        QSettings.setPath(fmt, QSettings.Scope.UserScope, folder)


def _spin(seconds: float) -> None:
    """Run the GUI event loop for `seconds`."""
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(max(int(seconds * 1000), 0), loop.quit)
    loop.exec()


def _wait_until(what: str, cond: Callable[[], bool], timeout: float,
                why: Callable[[], str] = lambda: "") -> None:
    """Run the event loop until cond() holds; a RuntimeError saying what did not happen after
    `timeout` seconds."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise RuntimeError(f"bench app: {what} did not happen within {timeout:.0f} s. "
                               f"{why()}".strip())
        _spin(0.05)


class Probe:
    """Posts a timestamp to the GUI thread every 1/PROBE_HZ s and records how late it is run."""

    def __init__(self) -> None:
        from PySide6.QtCore import QObject, Signal, Slot

        from drivers.clock import now

        class Receiver(QObject):
            ping = Signal(float)

            def __init__(self, probe: Probe):
                super().__init__()
                self.probe = probe

            @Slot(float)
            def pong(self, t_sent: float) -> None:
                self.probe.record(now() - t_sent)

        self.now = now
        self.receiver = Receiver(self)  # lives in the GUI thread: the connection is queued
        self.receiver.ping.connect(self.receiver.pong)
        self.delays: list[float] | None = None  # the current phase's, None between phases
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-probe", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        from drivers.clock import Ticker

        tick = Ticker(PROBE_HZ, spin_s=0.0)  # sleeps only: the probe costs no CPU to speak of
        while not self._stop.is_set():
            tick.wait()
            self.receiver.ping.emit(self.now())

    def record(self, delay_s: float) -> None:
        if self.delays is not None:
            self.delays.append(delay_s)

    def measure(self, seconds: float) -> np.ndarray:
        """The event loop runs for `seconds`; the delays of the probes it ran meanwhile (ms)."""
        self.delays = []
        _spin(seconds)
        delays, self.delays = self.delays, None
        return np.asarray(delays) * 1e3

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)


def _press_estop(window, probe: Probe) -> dict:
    """Post a mouse press on the E-STOP button from another thread (as the window system would
    deliver it) and time it until the stop has been applied."""
    from PySide6.QtCore import QEvent, QPointF, Qt
    from PySide6.QtGui import QMouseEvent
    from PySide6.QtWidgets import QApplication

    button = window.estop.button
    applied: list[float] = []
    window.estop.triggered.connect(lambda _src: applied.append(probe.now()))
    pos = QPointF(button.rect().center())
    sent: list[float] = []

    def press() -> None:
        ev = QMouseEvent(QEvent.Type.MouseButtonPress, pos, button.mapToGlobal(pos),
                         Qt.MouseButton.LeftButton, Qt.MouseButton.LeftButton,
                         Qt.KeyboardModifier.NoModifier)
        sent.append(probe.now())
        QApplication.postEvent(button, ev)

    t = threading.Thread(target=press, name="bench-estop-press")
    t.start()
    t.join()
    _wait_until("the E-STOP press", lambda: bool(applied), 10.0)
    release = QMouseEvent(QEvent.Type.MouseButtonRelease, pos, button.mapToGlobal(pos),
                          Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton,
                          Qt.KeyboardModifier.NoModifier)
    QApplication.postEvent(button, release)
    return {"press_to_applied_ms": (applied[0] - sent[0]) * 1e3,
            "handler_ms": window.estop.latency_s * 1e3}


def _control_stats(session) -> dict:
    st = session.status()
    return {"control_hz": round(st.rate_hz, 1),
            "period_error_ms_p99": round(st.period_error_ms.get("p99", float("nan")), 2),
            "missed_ticks": st.missed_ticks}


def measure(phase_s: float, folder: str) -> dict:
    """The four phases in one window; the figures as a dict (see the module docstring)."""
    app = _qt()
    _isolate_settings(os.path.join(folder, "settings"))
    from app.core.rig_session import RigSession
    from app.qt.main_window import MainWindow
    from drivers.config import load_rig_config

    cfg = load_rig_config("sim")
    session = RigSession(cfg)
    window = MainWindow(session, auto_engage=True, data=os.path.join(folder, "data"))
    window.resize(1400, 900)
    probe = Probe()
    out: dict = {"phase_s": phase_s, "phases": {}, "rig": cfg.name,
                 "cameras": [f"{c.name} {c.width}x{c.height}@{c.fps}" for c in cfg.cameras],
                 "cpus": os.cpu_count(), "load_avg_1min_start": os.getloadavg()[0],
                 "gl": os.environ.get("MUJOCO_GL", ""), "qt_platform": app.platformName()}

    def errors() -> str:
        return f"errors shown: {window.errors}" if window.errors else ""

    ft, rec, au = window.finetune_tab, window.record_panel, window.autonomy_tab

    def phase(name: str, **extra) -> None:
        ms = probe.measure(phase_s)
        out["phases"][name] = {
            "samples": len(ms), "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max()),
            "over_50ms": int((ms > LATENCY_GOAL_MS).sum()), **_control_stats(session), **extra}

    try:
        window.show()
        probe.start()
        _wait_until("live cameras and joints with teleop engaged", lambda: (
            window.live_since is not None and session.status().teleop == "engaged"), 60.0,
            lambda: f"{window.failure} {errors()}")
        _spin(1.0)
        phase("idle")

        # recording: sim episodes back to back from the Record tab
        window.tabs.setCurrentWidget(rec)
        rec.instruction.setCurrentText(TASK)
        rec.episodes.setValue(1000)
        rec.seconds.setValue(max(2.0, phase_s / 4))
        rec.start_button.click()
        _wait_until("recording", lambda: rec.phase.text() == "recording", 30.0, errors)
        phase("recording")
        _wait_until("two recorded episodes", lambda: len(rec.saved) >= 2, 60.0, errors)

        # + a fine-tune job from the Fine-tune tab (the Record tab stays in front)
        window.tabs.setCurrentWidget(ft)
        ft.preset.setCurrentText("tiny-scratch")  # its own steps, batch and workers
        ft.steps.setValue(1_000_000)              # trains until it is cancelled below
        ft.val_episodes.setValue(1)
        ft.base.setCurrentText("xr0-tiny")
        ft.options.setText("--workers 0")  # data loading in the trainer process itself
        ft.episodes.setText(",".join(map(str, rec.saved[:2])))
        ft.start_button.click()
        window.tabs.setCurrentWidget(rec)
        t0 = time.monotonic()
        _wait_until("the trainer's first step", lambda: ft.job is None or ft.progress.value() >= 1,
                    300.0, errors)
        if ft.job is None:
            raise RuntimeError(f"bench app: the fine-tune job ended before training. {errors()}")
        out["trainer_start_s"] = time.monotonic() - t0
        step0 = ft.progress.value()
        phase("recording_training")

        # autonomy: recording stops (mid-episode, away from an episode's first steps), a fresh
        # sim episode, the scripted policy from the tab
        _wait_until("an episode half recorded", lambda: rec.phase.text() == "recording" and (
            float(rec.countdown.text().split()[0]) < rec.seconds.value() / 2), 60.0, errors)
        rec.stop_button.click()
        _wait_until("the recording to stop", lambda: not rec.recording, 30.0, errors)
        out["episodes_recorded"] = len(rec.saved)
        window.rig_panel.task.new_episode_button.click()
        window.tabs.setCurrentWidget(au)
        au.policy.setCurrentText("scripted")
        au.instruction.setCurrentText(TASK)
        au.start_button.click()
        _wait_until("the policy running", lambda: au.state == "running", 30.0,
                    lambda: f"state {au.state}: {au.reason.text()} {errors()}")
        redraws0, t0 = au.plots.redraws, time.monotonic()
        phase("autonomy_training")
        refresh_hz = (au.plots.redraws - redraws0) / (time.monotonic() - t0)
        out["phases"]["autonomy_training"]["plot_refresh_hz"] = refresh_hz
        out["phases"]["autonomy_training"]["chunks"] = len(au.plots.chunk_ids())
        if au.state != "running":
            raise RuntimeError(f"bench app: the policy stopped during the measurement: "
                               f"{au.reason.text()} {errors()}")
        out["trainer_steps"] = ft.progress.value() - step0
        out["trainer_samples_per_s"] = float(ft.rate.text()) if ft.rate.text() != "—" else None

        # the E-STOP during autonomy + training
        k0 = session.latest().k
        out["estop"] = _press_estop(window, probe)
        _wait_until("the run to stop on the e-stop", lambda: au.state == "stopped", 5.0)
        _wait_until("ten control steps", lambda: session.latest().k > k0 + 10, 5.0)
        last = session.latest()
        out["estop"]["refused"] = bool(session.rig.estopped and last.command is None
                                       and session.source is None)
        out["errors"] = list(window.errors)
    finally:
        probe.stop()
        job = ft.job
        if job is not None:
            ft.cancel_button.click()
            try:
                _wait_until("the fine-tune job to end", lambda: ft.job is None, 90.0)
            except RuntimeError:
                job.cancel(timeout=5.0)
        window.close()
        session.close()
    out["control_threads_left"] = sum(t.name == "control" and t.is_alive()
                                      for t in threading.enumerate())
    return out


def run(quick: bool = False) -> Iterator[Figure]:
    keep = os.environ.get("XR0_BENCH_APP_DIR")  # keeps the store, the runs and the settings
    folder = keep or tempfile.mkdtemp(prefix="xr0-bench-app-")
    if keep and os.path.exists(keep) and os.listdir(keep):
        raise ValueError(f"XR0_BENCH_APP_DIR={keep} is not empty: name a new or empty folder")
    try:
        r = measure(QUICK_PHASE_S if quick else PHASE_S, folder)
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
    detail = {k: v for k, v in r.items() if k not in ("phases", "estop")}
    for name in PHASES:
        p = r["phases"][name]
        d = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in p.items()}
        yield Figure("app", f"event_loop_latency_p50_{name}", p["p50_ms"], "ms", "", ANCHOR,
                     detail=d)
        yield Figure("app", f"event_loop_latency_p99_{name}", p["p99_ms"], "ms",
                     f"<= {LATENCY_GOAL_MS:.0f} ms", ANCHOR, p["p99_ms"] <= LATENCY_GOAL_MS)
        yield Figure("app", f"event_loop_latency_max_{name}", p["max_ms"], "ms", "", ANCHOR)
    hz = r["phases"]["autonomy_training"]["plot_refresh_hz"]
    yield Figure("app", "autonomy_plot_refresh_rate", hz, "Hz", f">= {REFRESH_GOAL_HZ:.0f} Hz",
                 "live plots that follow the robot (the tab refreshes at ~30 Hz)",
                 hz >= REFRESH_GOAL_HZ, detail)
    e = r["estop"]
    yield Figure("app", "estop_press_to_applied", e["press_to_applied_ms"], "ms",
                 "< 20 ms (one control period)", ANCHOR,
                 e["refused"] and e["press_to_applied_ms"] < 20.0,
                 {"handler_ms": round(e["handler_ms"], 3), "commands_refused": e["refused"],
                  "during": "autonomy + training"})
