"""AutonomyRun: supervised autonomy on a running real-time RigSession. Qt-free; the app's Autonomy
tab and `main.py run` drive the same controller.

    idle --start()--> warming --(policy warmed up)--> running <--pause()/resume()--> paused
    running | paused --take_over()--> takeover --release()--> running   (a new policy segment)
    any --stop()--> stopped         e-stop --> stopped (never resumes)
    policy / runtime / control-loop error --> failed (the followers hold)

A policy segment is one ChunkRuntime (threaded inference executor) behind one AutonomySource
(time_base "rig"), set as the session's source: the followers hold while the first chunk is
computed, then ramp to the policy's first action at the rig's ramp speed. A segment ends at a
takeover, a stop, an e-stop or a failure; its telemetry is saved then as
`RUN_DIR/segment_NNN.npz + .json` (xr0.runtime.telemetry.load_run reads it back).

Takeover: the policy stops, the session's teleop engages (its safe ramp to the leader arms) and,
with a store, a correction episode (tag "correction") is recorded from the moment teleop is
engaged until release(). release() finishes the episode, disengages teleop (the followers hold
where they are) and a fresh segment resumes the policy from the present state, ramping.

With a store the run is registered in its runs table (kind "autonomy", paths["run_dir"]), so
`past_runs(store)` lists it and `load_segments(run_dir)` reopens its telemetry.

The policy may run in a process of its own (app.core.policies.load_chunk_policy(process=True),
what the app does with a checkpoint folder): close_policy (e.g. that LocalPolicy's shutdown) is
called once when the run has stopped or failed, so its server ends with the run.

A watcher thread (every 20 ms from start()) turns an e-stop, a runtime error (the policy raised,
the delay does not fit in a chunk) or a dead control loop into "stopped"/"failed". All public
methods are safe from any thread and never wait on inference (stop() waits at most ~0.5 s for a
policy call in flight to be abandoned). on_event(dict) is called from the thread that made the
change (the watcher for e-stops and failures): a GUI hands it over to its own thread. Events:
state {state, reason, error}, saved {path, segment}, correction_started {episode},
correction {episode, steps}, correction_abandoned {episode[, reason]}, error {message}.
"""

from __future__ import annotations

import json
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

from app.core.autonomy import AutonomySource, telemetry_metrics, warm_up
from app.core.policies import policy_cameras
from app.core.rig_session import RigSession
from xr0.runtime import STRATEGIES, ChunkRuntime, RuntimeConfig, load_run
from xr0.runtime.executor import SteppedExecutor

STATES = ("idle", "warming", "running", "paused", "takeover", "stopped", "failed")
DEFAULT_RUNS_DIR = Path("~/xr0-runs/autonomy")  # run folders when neither store nor run_dir


class DelayedPolicy:
    """A policy whose every call takes at least `seconds` (an injected inference latency, slept
    in the inference worker after the call)."""

    def __init__(self, policy, seconds: float):
        self.policy = policy
        self.seconds = float(seconds)
        self.chunk_length = policy.chunk_length
        self.supports_prefix = getattr(policy, "supports_prefix", False)
        if callable(getattr(policy, "infer_guided", None)):
            self.infer_guided = self._infer_guided

    def _pad(self, t0: float) -> None:
        left = self.seconds - (time.monotonic() - t0)
        if left > 0:
            time.sleep(left)

    def infer(self, obs, prefix):
        t0 = time.monotonic()
        out = self.policy.infer(obs, prefix)
        self._pad(t0)
        return out

    def _infer_guided(self, obs, prev_chunk, weights, beta):
        t0 = time.monotonic()
        out = self.policy.infer_guided(obs, prev_chunk, weights, beta)
        self._pad(t0)
        return out


class AutonomyRun:
    POLL_S = 0.02
    FIRST_STEP_TIMEOUT_S = 5.0
    FIRST_FRAME_TIMEOUT_S = 10.0  # a camera (or the sim's render worker) still starting

    def __init__(self, session: RigSession, policy, *, strategy: str = "xr0", k: int = 15,
                 instruction: str = "", delay: int | str = "measured", store=None,
                 on_event: Callable[[dict], None] | None = None,
                 run_dir: str | Path | None = None, policy_name: str = "",
                 close_policy: Callable[[], None] | None = None):
        """delay: "measured" (the runtime measures the policy's own latency) or an int: an
        injected inference latency of that many control steps. run_dir: where the telemetry
        goes (default: STORE/autonomy/run_ID with a store, else ~/xr0-runs/autonomy/TIME).
        close_policy: called once when the run ends (see release_policy)."""
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
        if not (delay == "measured" or (isinstance(delay, int) and delay >= 0)):
            raise ValueError(f"delay is 'measured' or a number of control steps >= 0, not "
                             f"{delay!r}")
        self.session = session
        self.dt = 1.0 / session.config.control_hz
        self.strategy, self.k, self.instruction, self.delay = strategy, int(k), instruction, delay
        self.store = store
        self.on_event = on_event
        self.policy_name = policy_name or type(policy).__name__
        self._extra = getattr(policy, "capture", None)  # a policy planning from the sim state
        # the rig cameras the policy sees (a rig may have more); refused now if one is missing
        self.cameras = tuple(c.name for c in policy_cameras(session.config, policy)) or None
        self.policy = policy if delay in ("measured", 0) else DelayedPolicy(policy, delay * self.dt)
        # the strategy must suit the policy (prefix, guidance): refused now, before anything runs
        ChunkRuntime(self.policy, self._config(), executor=SteppedExecutor(self.policy, self.dt))
        self.run_dir = Path(run_dir).expanduser().absolute() if run_dir else None
        self.run_id: int | None = None
        self.error = ""
        self.reason = ""  # why the run stopped (the operator, an e-stop, ...)
        self.saved: list[Path] = []
        self.corrections: list[int] = []
        self._state = "idle"
        self._lock = threading.RLock()
        self._done = threading.Event()
        self._runtime: ChunkRuntime | None = None
        self._source: AutonomySource | None = None
        self._segment = 0
        self._recording = None
        self._thread: threading.Thread | None = None
        self._close_policy = close_policy
        self._close_lock = threading.Lock()

    # -- views ---------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        return self._state

    @property
    def telemetry(self):
        rt = self._runtime
        return rt.telemetry if rt is not None else None

    def metrics(self) -> dict:
        """The latest segment's figures (latency, boundary discontinuity, jerk, chunks) and the
        control loop's period error p99 (ms)."""
        st = self.session.status()
        return {**telemetry_metrics(self.telemetry, self.dt),
                "period_error_ms_p99": st.period_error_ms.get("p99"),
                "missed_ticks": st.missed_ticks}

    def wait(self, states, timeout: float) -> bool:
        """Wait until the state is one of `states` (a name or a collection); False on timeout."""
        states = (states,) if isinstance(states, str) else tuple(states)
        end = time.monotonic() + timeout
        while self._state not in states:
            if time.monotonic() > end:
                return False
            time.sleep(0.01)
        return True

    # -- operator actions (any thread) ---------------------------------------------------------
    def start(self) -> None:
        """Warm the policy up in a worker thread, then hand it the followers (non-blocking)."""
        with self._lock:
            if self._state != "idle":
                raise ValueError(f"this run is {self._state}: a run starts once; create a new "
                                 f"AutonomyRun to run again")
            status = self.session.status()
            if not status.running:
                raise ValueError("the rig session is not running: start it (RigSession.start()) "
                                 "before starting autonomy" + (f"; it stopped on: {status.error}"
                                                               if status.error else ""))
            if self.session.rig.estopped:
                raise ValueError("the e-stop is active: release it, then start the run")
            self._register()
            self._set_state("warming")
            self._thread = threading.Thread(target=self._main, name="autonomy-run", daemon=True)
            self._thread.start()

    def pause(self) -> None:
        with self._lock:
            if self._state == "running" and self._source is not None:
                self._source.pause()
                self._set_state("paused")

    def resume(self) -> None:
        """Continue after pause(): re-plan from the present state, ramping from the held pose."""
        with self._lock:
            if self._state == "paused" and self._source is not None:
                self._source.resume()
                self._set_state("running")

    def take_over(self) -> None:
        """The operator takes over with the leader arms (refused on a rig without leaders)."""
        with self._lock:
            if self._state not in ("running", "paused"):
                return
            if not self.session.rig.has_leaders:
                raise ValueError(f"rig {self.session.config.name!r} has no leader arms to take "
                                 f"over with: pause or stop the policy instead")
            self._end_segment("takeover")
            try:
                self.session.engage()  # the teleop ramp takes the followers to the leader pose
            except Exception as e:
                self._halt("stopped", reason=f"takeover refused: {e}")
                raise
            self._set_state("takeover")

    def release(self) -> None:
        """End the takeover: the correction episode is finished, teleop disengaged (followers
        hold), and a fresh policy segment continues from the present state."""
        with self._lock:
            if self._state != "takeover" or self.session.rig.estopped:
                return  # after an e-stop the watcher ends the run, the episode kept incomplete
            self._finish_correction()
            self.session.disengage()
            self._begin_segment()
            self._set_state("running")

    def stop(self, reason: str = "stopped by the operator") -> None:
        """Stop the policy; the followers hold. Idempotent."""
        self._halt("stopped", reason=reason)

    def release_policy(self) -> None:
        """Call close_policy once (e.g. stop the policy's server process). The watcher calls it
        as the run ends; call it after stop() to wait until it is done (the app closing), or for
        a run that never started. A second caller waits for the first."""
        with self._close_lock:
            fn, self._close_policy = self._close_policy, None
            if fn is None:
                return
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - the run has ended; say what went wrong
                self._emit({"event": "error", "message": f"stopping the policy failed: {e}"})

    # -- internals -----------------------------------------------------------------------------
    def _config(self) -> RuntimeConfig:
        return RuntimeConfig(dt=self.dt, strategy=self.strategy, k=self.k)

    def _emit(self, event: dict) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # noqa: BLE001 - a display callback never stops the run
                traceback.print_exc()

    def _set_state(self, state: str, **extra) -> None:
        self._state = state
        self._emit({"event": "state", "state": state, **extra})

    def _register(self) -> None:
        config = {"rig": self.session.config.name, "policy": self.policy_name,
                  "strategy": self.strategy, "k": self.k, "instruction": self.instruction,
                  "delay": self.delay}
        if self.store is not None:
            self.run_id = self.store.add_run("autonomy", config, status="running")
            if self.run_dir is None:
                self.run_dir = self.store.root / "autonomy" / f"run_{self.run_id:04d}"
            self.store.update_run(self.run_id, paths={"run_dir": str(self.run_dir)})
        if self.run_dir is None:
            self.run_dir = (DEFAULT_RUNS_DIR.expanduser().absolute()
                            / time.strftime("%Y%m%d-%H%M%S"))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._config_doc = {**config, "run_id": self.run_id, "started": time.time()}
        self._write_run_json("running")

    def _write_run_json(self, state: str) -> None:
        doc = {**self._config_doc, "state": state, "error": self.error, "reason": self.reason,
               "segments": [p.name for p in self.saved], "corrections": self.corrections}
        (self.run_dir / "run.json").write_text(json.dumps(doc, indent=1, default=str))

    def _main(self) -> None:
        """The watcher: from start() on, every POLL_S, until the run stops or fails."""
        threading.Thread(target=self._warm_then_run, name="autonomy-warm-up", daemon=True).start()
        while not self._done.wait(self.POLL_S):
            self._watch()
        self.release_policy()  # the run has ended: off the operator's thread

    def _warm_then_run(self) -> None:
        try:
            self._warm_up()
        except Exception as e:  # noqa: BLE001 - reported; the followers never moved
            self._halt("failed", error=f"the policy failed while warming up: "
                                       f"{type(e).__name__}: {e}; the followers did not move")
            return
        with self._lock:
            if self._state != "warming" or self.session.rig.estopped:
                return  # stopped meanwhile (the watcher reports an e-stop)
            self._begin_segment()
            self._set_state("running")

    def _warm_up(self) -> None:
        if self._extra is not None:
            return  # a planner on the sim state: nothing to initialise, no model
        end = time.monotonic() + self.FIRST_STEP_TIMEOUT_S
        while self.session.latest() is None:
            if time.monotonic() > end:
                raise RuntimeError("the control loop produced no step to observe")
            time.sleep(0.01)
        for name in self.cameras or tuple(self.session.rig.cameras):
            try:
                self.session.rig.cameras[name].wait_next(0, timeout_s=self.FIRST_FRAME_TIMEOUT_S)
            except Exception as e:  # noqa: BLE001 - the camera's own message says what to check
                raise RuntimeError(f"camera '{name}' delivers no frame for the policy to see: "
                                   f"{e}") from e
        probe = AutonomySource(self.session.rig, ChunkRuntime(
            self.policy, self._config(), executor=SteppedExecutor(self.policy, self.dt)),
            self.instruction, cameras=self.cameras)
        warm_up(self.policy, probe._observe(0, self.session.latest().state))

    def _begin_segment(self) -> None:
        rt = ChunkRuntime(self.policy, self._config())  # the threaded inference executor
        src = AutonomySource(self.session.rig, rt, self.instruction, time_base="rig",
                             extra=self._extra, cameras=self.cameras)
        self._runtime, self._source = rt, src
        self.session.set_source(src)

    def _end_segment(self, why: str) -> None:
        src, rt = self._source, self._runtime
        if src is None:
            return
        self._source = None
        if self.session.source is src:
            self.session.set_source(None)  # no source, teleop idle: the followers hold
        src.stop()
        if rt.telemetry is not None:
            path = rt.telemetry.save(
                self.run_dir / f"segment_{self._segment:03d}", segment=self._segment, ended=why,
                run_id=self.run_id, rig=self.session.config.name, instruction=self.instruction,
                policy=self.policy_name, delay=self.delay)
            self.saved.append(path)
            self._emit({"event": "saved", "path": str(path), "segment": self._segment})
        self._segment += 1

    def _watch(self) -> None:
        """One look at the e-stop, the runtime and the control loop (watcher thread)."""
        with self._lock:
            state = self._state
            if state in ("stopped", "failed"):
                return
            # Read what an e-stop changes (the source, the runtime) before the e-stop flag:
            # RigSession.estop() sets the flag first, so a source already cleared by an e-stop
            # is always seen with the flag set, and reported as the e-stop it is.
            source = self.session.source
            status = self.session.status()
            rt = self._runtime
            rt_error = rt.error if rt is not None else None
            if self.session.rig.estopped:
                self._halt("stopped", reason="e-stop pressed: the policy stopped and does not "
                                             "resume; release the e-stop and start a new run"
                                             if state != "warming" else
                                             "e-stop pressed while the policy warmed up: it "
                                             "never moved the arms")
                return
            if not status.running:
                self._halt("failed", error=f"the control loop stopped: {status.error or 'closed'}"
                                           f"; the followers were set to hold")
                return
            if state in ("running", "paused") and rt_error is not None:
                self._halt("failed", error=f"{rt_error}")
                return
            if state in ("running", "paused") and source is not self._source:
                self._halt("stopped", reason="another control took the followers")
                return
            if (state == "takeover" and self.store is not None and self._recording is None
                    and self.session.teleop is not None
                    and self.session.teleop.state.value == "engaged"):
                self._start_correction()

    def _start_correction(self) -> None:
        from app.core.recorder import Recording

        try:
            self._recording = Recording(self.session, self.store,
                                        self.instruction or "correction", tags=("correction",))
        except Exception as e:  # noqa: BLE001 - the takeover goes on without a recording
            self._recording = False  # do not retry every tick
            self._emit({"event": "error", "message": f"the correction episode could not be "
                                                     f"recorded: {e}"})
            return
        self._emit({"event": "correction_started", "episode": self._recording.writer.id})

    def _finish_correction(self, keep: bool = True) -> None:
        rec, self._recording = self._recording, None
        if not rec:
            return
        if not keep:
            rec.abandon()
            self._emit({"event": "correction_abandoned", "episode": rec.writer.id})
            return
        if rec.stats.steps == 0 and not rec.error:
            # released before teleop's first recorded step: nothing to keep, nothing failed
            rec.discard()
            self._emit({"event": "correction_abandoned", "episode": rec.writer.id,
                        "reason": "no steps were recorded before the release"})
            return
        try:
            info = rec.finish()
        except Exception as e:  # noqa: BLE001 - the store says what happened and what to do
            self._emit({"event": "error", "message": str(e)})
            return
        self.corrections.append(info.id)
        self._emit({"event": "correction", "episode": info.id, "steps": info.steps})

    def _halt(self, state: str, reason: str = "", error: str = "") -> None:
        with self._lock:
            if self._state in ("stopped", "failed"):
                return
            was = self._state
            self.reason, self.error = reason, error
            if was == "idle":
                self._set_state(state, reason=reason, error=error)
                return
            self._state = state  # at once: no action below may restart anything
            estopped = self.session.rig.estopped
            if was == "takeover":
                self._finish_correction(keep=not estopped)
                if not estopped:  # after an e-stop, teleop is stopped and torque stays as it is
                    self.session.disengage()
            try:
                self._end_segment("estop" if estopped else state)
            except Exception as e:  # noqa: BLE001 - saving must not hide why the run ended
                self._emit({"event": "error", "message": f"saving telemetry failed: {e}"})
            self._done.set()
            status = "failed" if state == "failed" else ("estopped" if estopped else "stopped")
            try:
                self._write_run_json(status)
                if self.store is not None and self.run_id is not None:
                    self.store.update_run(self.run_id, status=status, paths={
                        "run_dir": str(self.run_dir),
                        **{f"segment_{i}": str(p) for i, p in enumerate(self.saved)}})
            except Exception as e:  # noqa: BLE001
                self._emit({"event": "error", "message": f"recording the run failed: {e}"})
            self._set_state(state, reason=reason, error=error)


def past_runs(store) -> list[dict]:
    """Autonomous runs of a store, newest first: the runs table rows (config, status, paths)."""
    return sorted(store.runs("autonomy"), key=lambda r: r["id"], reverse=True)


def load_segments(run_dir: str | Path) -> list:
    """A run folder's telemetry, one xr0.runtime.RunLog per policy segment, in order."""
    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("segment_*.npz"))
    if not files:
        raise FileNotFoundError(f"{run_dir} holds no saved segment (segment_NNN.npz): pick a "
                                f"run folder from the runs list")
    return [load_run(f) for f in files]
