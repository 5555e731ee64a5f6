"""The Autonomy tab and its plots, offscreen, on real runtime telemetry.

The plots are fed a run the real runtime made on the stepping MuJoCo sim rig (scripted chunk
policy, an injected inference delay of 6 control steps), saved and loaded back as a saved run is;
the live refresh cost is measured with that run's records written into a real Telemetry by a
control-rate thread, as the control loop writes them. The tab then runs autonomy on a real-time
sim RigSession through AutonomyRun.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QEventLoop, QTimer

from app.qt.autonomy_plots import AutonomyPlots, decimate, live_data
from drivers import layout
from xr0.runtime import Telemetry, load_run
from xr0.runtime.telemetry import ChunkRecord

pytestmark = pytest.mark.gui

DELAY_STEPS = 6
WINDOW_S = 10.0


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory) -> Path:
    """A 12 s autonomous sim episode's telemetry, saved by the runtime (NAME.npz + NAME.json)."""
    from app.core.autonomy import run_sim_episode
    from drivers.config import SimConfig, load_rig_config
    from drivers.sim.rig import SimRig

    cfg = load_rig_config("sim")
    sim = dataclasses.replace(cfg.sim or SimConfig(), realtime=False, episode_seconds=12.0)
    path = tmp_path_factory.mktemp("autonomy") / "episode_0"
    with SimRig(cfg.with_(cameras=(), sim=sim)) as rig:
        r = run_sim_episode(rig, "xr0", seed=0, delay_steps=DELAY_STEPS, save=str(path))
    assert r["chunks"] > 10 and not r["error"], r
    return path


def _arrived(a: dict) -> np.ndarray:
    return np.flatnonzero(a["chunk_arrival"] >= 0)


def test_plots_show_a_saved_run(qtbot, saved_run):
    run = load_run(saved_run)
    a = run.arrays
    w = AutonomyPlots()
    qtbot.addWidget(w)
    w.resize(1400, 850)
    w.show()
    w.show_run(run)

    # every chunk of the run, the newest arrived one against the one before it
    assert w.chunk_ids() == a["chunk_id"].tolist()
    arrived = _arrived(a)
    newest, before = int(a["chunk_id"][arrived[-1]]), int(a["chunk_id"][arrived[-2]])
    assert (w.shown_chunk, w.previous_chunk) == (newest, before)
    j = w.joint.currentIndex()
    req, horizon = int(a["chunk_request"][arrived[-1]]), a["chunk_actions"].shape[1]
    x, y = w.new_curve.getData()
    np.testing.assert_array_equal(x, req + np.arange(horizon))
    np.testing.assert_array_equal(y, a["chunk_actions"][arrived[-1]][:, j])
    x, y = w.prev_curve.getData()
    np.testing.assert_array_equal(x, a["chunk_request"][arrived[-2]] + np.arange(horizon))
    np.testing.assert_array_equal(y, a["chunk_actions"][arrived[-2]][:, j])

    # the splice at the newest chunk's arrival step, the clean prefix of width d from its request
    assert w.splice_step() == a["chunk_arrival"][arrived[-1]]
    d = int(a["chunk_d"][arrived[-1]])
    assert d == DELAY_STEPS == a["chunk_prefix"][arrived[-1]]
    lo, hi = w.prefix_span()
    assert (lo, hi - lo) == (req, d)
    assert w.splice_step() == req + d  # on time: spliced where the prefix ends

    # another chunk and another joint on demand
    k = arrived[len(arrived) // 2]
    w.chunk_spin.setValue(int(a["chunk_id"][k]))
    w.joint.setCurrentIndex(layout.NAMES.index("right_elbow"))
    assert w.shown_chunk == a["chunk_id"][k] and w.splice_step() == a["chunk_arrival"][k]
    np.testing.assert_array_equal(w.new_curve.getData()[1],
                                  a["chunk_actions"][k][:, layout.NAMES.index("right_elbow")])

    # latency: one point per arrived chunk in ms and in steps, all of them in the histogram
    np.testing.assert_array_equal(w.latency_curve.getData()[1], a["chunk_latency_ms"][arrived])
    np.testing.assert_array_equal(w.delay_curve.getData()[1],
                                  (a["chunk_arrival"] - a["chunk_request"])[arrived])
    np.testing.assert_array_equal(w.delay_est_curve.getData()[1], a["chunk_d"])
    assert w.hist_curve.getData()[1].sum() == len(arrived)

    # commanded against measured: every step of every joint, seconds from the run's start
    n = len(a["step_index"])
    for i in range(layout.DIM):
        x, y = w.measured[i].getData()
        np.testing.assert_allclose(x, a["step_t"] - a["step_t"][0])
        np.testing.assert_array_equal(y, a["step_state"][:, i])
        assert len(w.commanded[i].getData()[1]) == n


# the Python methods by which pyqtgraph items answer Qt while it indexes and paints a scene
QT_HOOKS = {"boundingRect", "shape", "paint", "dataBounds", "pixelPadding", "viewRangeChanged"}


def test_a_refresh_repaints_without_calling_python_items(qtbot, saved_run):
    """Qt repaints every panel after a refresh without calling back into Python for an item's
    geometry or painting: each such call waits for the GIL behind the control, sim and recorder
    threads."""
    import sys
    from collections import Counter

    from PySide6.QtWidgets import QApplication

    run = load_run(saved_run)
    w = AutonomyPlots()
    qtbot.addWidget(w)
    w.resize(1400, 850)
    w.show()
    w.show_run(run)
    w.show(run.arrays)
    qtbot.wait(200)  # laid out, ranges settled, axes drawn once
    calls: Counter = Counter()

    def hook(frame, event, arg):
        if event == "call" and frame.f_code.co_name in QT_HOOKS:
            calls[f"{type(frame.f_locals.get('self')).__name__}.{frame.f_code.co_name}"] += 1

    w.show(run.arrays)  # a refresh: the joint curves and the executed command set again
    for c in (w.overlap_canvas, w.latency_canvas, w.joints_canvas):
        c.viewport().update()  # and every panel repainted in full
    sys.setprofile(hook)
    try:  # the scene repaints from the event loop
        for _ in range(3):
            QApplication.processEvents()
    finally:
        sys.setprofile(None)
    assert w.overlap_canvas.isVisible() and w.latency_canvas.isVisible()
    # pyqtgraph's view boxes hold their items in a child group that answers in Python (an empty
    # rect): a few calls per repaint, not hundreds
    calls.pop("ChildGroup.boundingRect", None)
    assert not calls, dict(calls)


def test_decimate_keeps_peaks_of_a_long_run():
    x = np.arange(100_000, dtype=float)
    ys = np.zeros((100_000, 2))
    ys[12_345, 0], ys[54_321, 1] = 3.0, -2.0
    ys[:1000, 1] = np.nan  # holding
    xd, yd = decimate(x, ys, 4000)
    assert len(xd) == len(yd) <= 4100
    assert np.nanmax(yd[:, 0]) == 3.0 and np.nanmin(yd[:, 1]) == -2.0
    assert np.isnan(yd[0, 1]) and np.all(np.diff(xd) > 0)


def _replay_into(tel: Telemetry, a: dict, steps: range, period: float = 0.0) -> None:
    """Write a saved run's records into a Telemetry in the order the runtime wrote them."""
    req = {int(r): i for i, r in enumerate(a["chunk_request"])}
    arr = {int(s): i for i, s in enumerate(a["chunk_arrival"]) if s >= 0}
    for k in steps:
        if k in req:
            i = req[k]
            tel.chunk_requested(ChunkRecord(int(a["chunk_id"][i]), k, int(a["chunk_d"][i]),
                                            int(a["chunk_prefix"][i])))
        if k in arr:
            i = arr[k]
            tel.chunk_arrived(int(a["chunk_id"][i]), a["chunk_actions"][i], k,
                              a["chunk_latency_ms"][i] / 1e3, bool(a["chunk_late"][i]))
        act = a["step_action"][k]
        tel.step(k, float(a["step_t"][k]), None if np.isnan(act).all() else act,
                 a["step_state"][k], int(a["step_chunk"][k]), int(a["step_flags"][k]))
        if period:
            time.sleep(period)


def test_live_refresh_of_a_10_s_window_is_cheap(qtbot, saved_run):
    """30 Hz refreshes of the last 10 s while a control-rate thread writes the telemetry: the
    GUI thread's CPU time per refresh (pull the window, setData, repaint) is measured."""
    run = load_run(saved_run)
    a = run.arrays
    dt = float(run.meta["dt"])
    window = int(round(WINDOW_S / dt))
    tel = Telemetry(layout.DIM)
    tel.meta.update(run.meta)
    _replay_into(tel, a, range(window))  # 10 s of history before the measurement
    w = AutonomyPlots()
    qtbot.addWidget(w)
    w.resize(1400, 850)
    w.follow(WINDOW_S)
    w.show()
    w.show(live_data(tel, window))
    qtbot.wait(100)

    n = len(a["step_index"])
    writer = threading.Thread(target=_replay_into, args=(tel, a, range(window, n), dt),
                              name="control", daemon=True)
    refreshes = [0]

    def refresh() -> None:
        w.show(live_data(tel, window))
        refreshes[0] += 1

    timer = QTimer()
    timer.setInterval(33)
    timer.timeout.connect(refresh)
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    writer.start()
    timer.start()
    loop = QEventLoop()
    QTimer.singleShot(int((n - window) * dt * 1e3), loop.quit)
    loop.exec()
    timer.stop()
    cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
    writer.join(timeout=5)
    per_refresh_ms, rate = cpu / refreshes[0] * 1e3, refreshes[0] / wall
    print(f"\nlive refresh of a {WINDOW_S:.0f} s window ({window} steps, 14 joints, "
          f"{len(w.chunk_ids())} chunks): {per_refresh_ms:.1f} ms GUI-thread CPU per refresh, "
          f"{rate:.1f} refreshes/s")
    assert per_refresh_ms < 30.0, f"{per_refresh_ms:.1f} ms per refresh"
    # the >= 20 Hz goal is measured by `main.py bench app`; on shared CI cores the timer's rate
    # only has to show that the plots never stall
    assert rate >= 10.0, f"{rate:.1f} refreshes/s"

    # after the run: the window is the last 10 s, every chunk was seen once it arrived
    w.show(live_data(tel, window))
    assert len(w.measured[0].getData()[0]) == window
    assert w.measured[0].getData()[0][-1] == 0.0  # seconds before the newest step
    arrived = _arrived(a)
    assert len(w.latency_curve.getData()[1]) == len(arrived)
    assert w.shown_chunk == a["chunk_id"][arrived[-1]]
    assert w.splice_step() == a["chunk_arrival"][arrived[-1]]


# -- the tab on a real-time sim rig ----------------------------------------------------------------

def _held_commands(session, seconds: float) -> np.ndarray:
    """The commands the control loop sends over `seconds` (None rows: holding with no command)."""
    rows: list = []
    fn = rows.append
    session.add_listener(fn)
    time.sleep(seconds)
    session.remove_listener(fn)
    return np.array([r.command for r in rows if r.command is not None])


def test_tab_runs_pauses_stops_reopens_and_estops(qtbot, isolated_settings, sim_config, tmp_path,
                                                  saved_run):
    from PySide6.QtCore import Qt

    from app.core.rig_session import RigSession
    from app.qt.autonomy_tab import AutonomyTab

    session = RigSession(sim_config.with_(cameras=()))  # the scripted policy plans from the sim
    session.start()
    tab = AutonomyTab(session, tmp_path / "store")
    try:
        qtbot.addWidget(tab)
        errors: list[str] = []
        tab.error.connect(lambda title, text: errors.append(f"{title}: {text}"))
        tab.resize(1500, 900)
        tab.show()
        assert tab.policy.currentText() == "scripted" and tab.state == "idle"
        assert not tab.pause_button.isEnabled() and not tab.stop_button.isEnabled()

        # a checkpoint that does not exist: refused with the fix, nothing runs
        tab.policy.setCurrentText(str(tmp_path / "no-such-checkpoint"))
        qtbot.mouseClick(tab.start_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: bool(errors), timeout=10_000)
        assert "Cannot load the policy" in errors[0] and "checkpoint folder" in errors[0]
        assert tab.state == "idle" and tab.run is None
        errors.clear()

        # the fine-tune tab offers a finished checkpoint: listed and remembered
        tab.add_checkpoint(str(tmp_path / "run-1"))
        assert tab.policy.findText(str(tmp_path / "run-1")) >= 0
        assert str(tmp_path / "run-1") in tab._list_setting("policies")

        # Start: loading -> warming -> running, the plots fill in at the poll rate
        tab.policy.setCurrentText("scripted")
        tab.instruction.setCurrentText("transfer the cube")
        qtbot.mouseClick(tab.start_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: tab.state_label.text() == "running", timeout=15_000)
        assert tab.state == "running" and not tab.start_button.isEnabled()
        qtbot.waitUntil(lambda: len(tab.plots.measured[0].getData()[0]) > 10, timeout=5_000)
        counts, redraws0, t0 = [], tab.plots.redraws, time.perf_counter()
        for _ in range(5):
            qtbot.wait(1000)
            counts.append(len(tab.plots.measured[0].getData()[0]))
        rate = (tab.plots.redraws - redraws0) / (time.perf_counter() - t0)
        print(f"\nlive plots on the real-time sim rig: {rate:.1f} refreshes/s, window points "
              f"{counts}")
        assert all(b > a for a, b in zip(counts, counts[1:])), counts
        assert rate >= 10.0, f"{rate:.1f} refreshes/s"  # the 20 Hz goal: `main.py bench app`
        assert len(tab.plots.chunk_ids()) >= 3 and tab.plots.splice_step() is not None
        assert tab.plots.shown_chunk == max(tab.plots.chunks.actions)
        assert tab.grab().save(str(tmp_path / "autonomy.png"))

        # Pause: the followers hold one command; Resume: they move again
        qtbot.mouseClick(tab.pause_button, Qt.MouseButton.LeftButton)
        assert tab.state == "paused" and tab.pause_button.text() == "Resume"
        qtbot.wait(100)
        held = _held_commands(session, 0.5)
        assert len(held) > 10 and np.ptp(held, axis=0).max() == 0.0
        qtbot.mouseClick(tab.pause_button, Qt.MouseButton.LeftButton)
        assert tab.state == "running"
        qtbot.waitUntil(lambda: np.ptp(_held_commands(session, 0.2), axis=0).max() > 0,
                        timeout=5_000)

        # Take over with the leader arms, then Release: the policy goes on in a new segment
        assert session.rig.has_leaders and tab.takeover_button.isEnabled()
        qtbot.mouseClick(tab.takeover_button, Qt.MouseButton.LeftButton)
        assert tab.state == "takeover" and tab.takeover_button.text() == "Release"
        qtbot.waitUntil(lambda: session.status().teleop in ("ramping", "engaged"), timeout=2_000)
        qtbot.mouseClick(tab.takeover_button, Qt.MouseButton.LeftButton)
        assert tab.state == "running" and tab.takeover_button.text() == "Take over"
        qtbot.waitUntil(lambda: tab.past.count() == 1, timeout=5_000)  # the first segment
        # the plots follow the new segment's telemetry (a runtime has one from its first step)
        qtbot.waitUntil(lambda: tab.run.telemetry is not None
                        and tab._shown_telemetry is tab.run.telemetry, timeout=5_000)

        # Stop: the segment's telemetry is saved and listed; reopening it shows the saved run
        qtbot.mouseClick(tab.stop_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: tab.state_label.text() == "stopped" and tab.past.count() == 2,
                        timeout=5_000)
        assert tab.start_button.isEnabled() and not tab.stop_button.isEnabled()
        rows = [Path(tab.past.item(i).data(Qt.ItemDataRole.UserRole)) for i in range(2)]
        assert rows == tab.run.saved  # one row per segment, in order
        saved = rows[0]
        tab._open_item(tab.past.item(0))
        run = load_run(saved)
        assert tab.reviewing == saved and tab.plots.chunk_ids() == run.chunk_id.tolist()
        assert len(tab.plots.measured[0].getData()[0]) == len(run.step_index)
        assert tab.plots.splice_step() == run.chunk_arrival[run.chunk_arrival >= 0][-1]

        # a run saved by `main.py run --save` opens the same way
        tab.open_telemetry(saved_run.with_suffix(".npz"))
        assert tab.plots.chunk_ids() == load_run(saved_run).chunk_id.tolist()

        # a second run, ended by the E-STOP: the tab shows it stopped and why
        qtbot.mouseClick(tab.start_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: tab.state == "running", timeout=15_000)
        assert tab.reviewing is None  # a new run brings the live view back
        qtbot.waitUntil(lambda: tab.run.telemetry is not None
                        and tab._shown_telemetry is tab.run.telemetry, timeout=5_000)
        session.estop()
        qtbot.waitUntil(lambda: tab.state_label.text() == "stopped", timeout=2_000)
        assert tab.state == "stopped" and "e-stop" in tab.reason.text().lower()
        assert tab.state_label.text() == "stopped" and tab.start_button.isEnabled()
        qtbot.waitUntil(lambda: tab.past.count() == 3, timeout=5_000)  # its segment is saved
        assert not errors, errors
    finally:
        tab.shutdown()
        session.close()


def test_tab_loads_a_checkpoint_off_the_gui_thread(qtbot, isolated_settings, sim_config,
                                                   tmp_path):
    """A real xr0-tiny checkpoint loads on a worker thread (in a local policy server process)
    while the tab keeps polling; a policy whose cameras the rig lacks is refused with the fix
    before anything moves, and its server stops."""
    from PySide6.QtCore import Qt
    from test_autonomy_run import save_tiny_checkpoint

    from app.core.rig_session import RigSession
    from app.qt.autonomy_tab import AutonomyTab

    ckpt = save_tiny_checkpoint(tmp_path / "ckpt", ["top", "left_wrist"])
    session = RigSession(sim_config.with_(cameras=()))  # the policy needs two cameras
    session.start()
    tab = AutonomyTab(session, tmp_path / "store")
    try:
        qtbot.addWidget(tab)
        errors: list[str] = []
        tab.error.connect(lambda title, text: errors.append(f"{title}: {text}"))
        tab.show()
        ticks: list[float] = []
        tab.timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
        tab.policy.setCurrentText(str(ckpt))
        qtbot.mouseClick(tab.start_button, Qt.MouseButton.LeftButton)
        assert tab.state_label.text() == "loading" and tab.stop_button.isEnabled()
        assert not tab.start_button.isEnabled()
        t0 = time.perf_counter()
        qtbot.waitUntil(lambda: bool(errors), timeout=30_000)
        load_s = time.perf_counter() - t0
        gaps = np.diff([t0, *ticks])
        print(f"\ncheckpoint load {load_s:.2f} s off the GUI thread: {len(ticks)} polls, "
              f"longest gap {gaps.max() * 1e3:.0f} ms")
        assert "Cannot load the policy" in errors[0] and "'top'" in errors[0]
        assert "use the rig the policy was trained on" in errors[0]
        # a load on the GUI thread would stall it for the whole load; on shared cores a poll
        # may still wait a moment behind the worker's imports
        assert gaps.max() < max(0.25, 0.4 * load_s), \
            f"the GUI thread stalled {gaps.max() * 1e3:.0f} ms of a {load_s:.2f} s load"
        assert tab.state == "idle" and tab.run is None and tab.start_button.isEnabled()
        assert session.source is None  # nothing ever drove the followers
        # the checkpoint was loaded by a local policy server process: stopped with the refusal
        from test_policy_process import policy_servers
        qtbot.waitUntil(lambda: not policy_servers(), timeout=5_000)
    finally:
        tab.shutdown()
        session.close()
