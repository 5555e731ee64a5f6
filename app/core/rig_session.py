"""RigSession: owns a connected rig and its control thread. Qt-free; the GUI and the headless
commands both drive it.

The control thread runs at the rig's control rate on absolute deadlines (drivers.clock.Ticker):
read -> teleop (mapping + safety) -> command. Step listeners (the recorder, live plots) receive
every step from the control thread and must return quickly. Any exception in the loop holds the
followers and drops torque, then the loop ends with the error kept for the UI.
"""

from __future__ import annotations

import collections
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from drivers.clock import Ticker, now
from drivers.config import RigConfig
from drivers.rig import Frame, Rig, RigState, open_rig
from drivers.stats import RollingStats
from drivers.teleop import Teleop, TeleopState


@dataclass
class StepRecord:
    """One control step as seen by listeners."""

    k: int
    t: float  # drivers.clock.now() at the control tick
    state: RigState
    command: np.ndarray | None  # None when the followers were holding


@dataclass
class SessionStatus:
    running: bool
    teleop: str
    stop_reason: str
    estopped: bool
    error: str
    steps: int
    rate_hz: float
    period_error_ms: dict = field(default_factory=dict)
    cycle_ms: dict = field(default_factory=dict)
    missed_ticks: int = 0
    camera_fps: dict = field(default_factory=dict)


class RigSession:
    def __init__(self, config: RigConfig, rig: Rig | None = None):
        self.config = config
        self.rig = rig if rig is not None else open_rig(config)
        self.teleop: Teleop | None = None
        self.period_error = RollingStats(1024)  # wake-up lateness against the deadline (s)
        self.cycle_time = RollingStats(1024)  # read -> teleop -> command -> listeners (s)
        self._listeners: list[Callable[[StepRecord], None]] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._latest: StepRecord | None = None
        self._steps = 0
        self._error = ""
        self._missed = 0
        self._ticks: collections.deque[float] = collections.deque(maxlen=1024)  # tick times (s)
        self.priority = "normal"  # scheduling class the control thread got
        self.listener_errors: list[str] = []  # listeners removed after raising
        # What commands the followers instead of teleop (a replay, later the policy runtime):
        # an object with step(RigState) -> an object with .command, or None to hold.
        self.source = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self.rig.connect()
        try:
            self.teleop = Teleop(self.rig)
        except Exception:
            self.rig.disconnect()
            raise
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="control", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the control thread and disconnect (followers torque off). Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        self.rig.disconnect()

    def __enter__(self) -> "RigSession":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- operator actions (any thread) -----------------------------------------------------
    def engage(self) -> None:
        assert self.teleop is not None, "start() the session first"
        with self._lock:
            self.teleop.engage()

    def disengage(self) -> None:
        if self.teleop is not None:
            with self._lock:
                self.teleop.disengage()

    def estop(self) -> None:
        """E-stop: effective at once from the calling thread (no wait for the loop)."""
        self.rig.estop()
        source, self.source = self.source, None  # a replay or policy does not resume by itself
        stop = getattr(source, "stop", None)  # a policy source also stops its inference
        if callable(stop):
            stop()
        if self.teleop is not None:
            self.teleop.stop("e-stop pressed: release it, then engage again")

    def release_estop(self) -> None:
        self.rig.clear_estop()
        if self.teleop is not None and self.teleop.state is TeleopState.STOPPED:
            self.teleop.reset()

    def set_source(self, source) -> None:
        """Let `source` command the followers instead of teleop (None gives control back)."""
        with self._lock:
            if self.teleop is not None and source is not None:
                self.teleop.disengage()
            self.source = source

    def add_listener(self, fn: Callable[[StepRecord], None]) -> None:
        self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[StepRecord], None]) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    # -- views -----------------------------------------------------------------------------
    def latest(self) -> StepRecord | None:
        return self._latest

    def frames(self) -> dict[str, Frame]:
        out = {}
        for name, cam in self.rig.cameras.items():
            try:
                out[name] = cam.latest()
            except Exception:
                continue
        return out

    RATE_WINDOW_S = 1.0

    def _tick_rate(self) -> float:
        """Control ticks per second over the last second: intervals between ticks, so thread
        start-up does not count, and 0 once the loop has stalled for five periods."""
        ticks = list(self._ticks)
        if len(ticks) < 2:
            return 0.0
        t_now = now()
        if t_now - ticks[-1] > 5.0 / self.config.control_hz:
            return 0.0
        recent = [t for t in ticks if t >= t_now - self.RATE_WINDOW_S]
        if len(recent) < 2:
            recent = ticks[-2:]
        return (len(recent) - 1) / max(recent[-1] - recent[0], 1e-9)

    def status(self) -> SessionStatus:
        t = self.teleop
        return SessionStatus(
            running=self._thread is not None and self._thread.is_alive(),
            teleop=t.state.value if t else "idle",
            stop_reason=t.stop_reason if t else "",
            estopped=self.rig.estopped,
            error=self._error,
            steps=self._steps,
            rate_hz=self._tick_rate(),
            period_error_ms=self.period_error.summary(1e3),
            cycle_ms=self.cycle_time.summary(1e3),
            missed_ticks=self._missed,
            camera_fps={n: c.measured_fps for n, c in self.rig.cameras.items()},
        )

    # -- the control thread ----------------------------------------------------------------
    # A Python thread waiting for the GIL gets it when the holder blocks or after the switch
    # interval (5 ms by default): far too coarse for a 20 ms control period. 0.5 ms bounds the
    # control thread's wait behind CPU-bound Python threads (sim operator, plots, decoding).
    SWITCH_INTERVAL_S = 0.0005
    # Real-time priority for the control thread where the OS allows it (root or CAP_SYS_NICE,
    # or an rtprio limit in /etc/security/limits.conf); otherwise it runs at normal priority.
    RT_PRIORITY = 10

    def _raise_priority(self) -> str:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(self.RT_PRIORITY))
            return f"SCHED_FIFO {self.RT_PRIORITY}"
        except (AttributeError, PermissionError, OSError):
            return "normal"

    def _loop(self) -> None:
        if sys.getswitchinterval() > self.SWITCH_INTERVAL_S:
            sys.setswitchinterval(self.SWITCH_INTERVAL_S)
        self.priority = self._raise_priority()
        ticker = Ticker(self.config.control_hz)
        k = 0
        try:
            while not self._stop.is_set():
                late = ticker.wait()
                t_tick = now()
                self.period_error.add(late)
                st = self.rig.read()
                with self._lock:
                    source = self.source if self.source is not None else self.teleop
                    step = source.step(st) if source is not None else None
                # the step is stamped at its tick: state and action at the control rate on the
                # one clock (st.t is when the rig sampled the state, which a sim may repeat)
                rec = StepRecord(k, t_tick, st, None if step is None else step.command)
                self._latest = rec
                self._steps = k + 1
                self._ticks.append(t_tick)
                self._missed = ticker.missed
                for fn in list(self._listeners):
                    try:
                        fn(rec)
                    except Exception as e:  # noqa: BLE001 - a listener never stops the arms
                        self.remove_listener(fn)
                        self.listener_errors.append(f"{getattr(fn, '__qualname__', fn)}: "
                                                    f"{type(e).__name__}: {e}")
                self.cycle_time.add(now() - ticker.t0 - ticker.k * ticker.period - late)
                k += 1
        except Exception as e:  # noqa: BLE001 - any failure must leave the arms safe
            self._error = f"{type(e).__name__}: {e}"
            try:
                self.rig.hold()
            except Exception:  # noqa: BLE001 - torque goes off below whatever hold() did
                pass
            try:
                self.rig.torque_off()
            except Exception as off:  # noqa: BLE001 - the operator must see that torque may be on
                self._error += f"\n{type(off).__name__}: {off}"
