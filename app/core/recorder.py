"""The recorder: episodes from a running RigSession into the episode store. Qt-free; the GUI and
`main.py record` drive the same code.

    rig state (control thread, one clock) --listener--> EpisodeWriter.add_step   (queued, ~10 us)
    camera frames (one thread per camera)  ---------->  VideoWriter.write (streaming encode)
                                                        + EpisodeWriter.add_frame_time

State and action are stamped at the control rate by the control thread; each camera keeps its own
rate and its frames keep their drivers.clock timestamps, so the training view aligns them to
control steps by timestamp. The action recorded is the command sent to the followers (after the
safety clamps); the leader reading is kept beside it.

Episode cycle (EpisodeCycle): warm-up -> recording -> reset period -> next, N times; start, stop,
re-record and discard at any point. A failure to write (disk full, encoder error) stops the
recording with the store's message; earlier episodes are never touched.
"""

from __future__ import annotations

import enum
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from app.core.rig_session import RigSession, StepRecord
from drivers import layout
from drivers.clock import now
from drivers.errors import ConnectionFailed
from store import EmptyEpisode, EpisodeInfo, EpisodeStore, EpisodeWriter, StoreError
from store.video import VideoError, VideoWriter

STOP_POLL_S = 0.2  # how often a camera thread waiting for a frame looks for a stop

EXTRA_COLUMNS = {"reward": 1}  # sim task reward per step (NaN on hardware)
SEED_TAG = "seed:"  # sim episodes are tagged with their scene's seed, so they replay in it


def recorded_seed(store: EpisodeStore, episode_id: int) -> int | None:
    """The sim seed an episode was recorded with (its 'seed:N' tag), or None."""
    for tag in store.info(episode_id).tags:
        if tag.startswith(SEED_TAG):
            return int(tag[len(SEED_TAG):])
    return None


@dataclass
class RecordingStats:
    steps: int = 0
    frames: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)  # frames the camera made that we missed
    held_steps: int = 0  # steps with no command (followers holding)


class Recording:
    """One episode being recorded. Created by Recorder.start(); ends with finish() or discard()."""

    def __init__(self, session: RigSession, store: EpisodeStore, task: str, tags=(),
                 quality: str = "high"):
        self.session = session
        cams = session.rig.cameras
        self.writer: EpisodeWriter = store.begin_episode(
            task=task, rig=session.config.name, control_hz=session.config.control_hz,
            joint_names=layout.NAMES,
            cameras={n: (c.config.width, c.config.height, c.config.fps) for n, c in cams.items()},
            tags=tags, extra_columns=EXTRA_COLUMNS)
        self.stats = RecordingStats(frames={n: 0 for n in cams}, dropped={n: 0 for n in cams})
        self.error: str = ""
        self._stop = threading.Event()
        self._videos: dict[str, VideoWriter] = {}
        try:
            for name, cam in cams.items():
                self._videos[name] = VideoWriter(self.writer.camera_path(name), cam.config.width,
                                                 cam.config.height, cam.config.fps, quality=quality)
        except BaseException:
            self._abort_videos()
            self.writer.discard()
            raise
        self.t_start = now()
        self._threads = [threading.Thread(target=self._camera_loop, args=(n,), daemon=True,
                                          name=f"record-{n}") for n in cams]
        session.add_listener(self._on_step)
        for t in self._threads:
            t.start()

    # -- producers -------------------------------------------------------------------------
    def _on_step(self, rec: StepRecord) -> None:
        """Control thread: queue one row; never blocks on disk."""
        if self._stop.is_set():
            return
        st = rec.state
        action = rec.command if rec.command is not None else st.follower
        if rec.command is None:
            self.stats.held_steps += 1
        reward = st.info.get("reward", np.nan) if st.info else np.nan
        try:
            self.writer.add_step(rec.t, st.follower, action, leader=st.leader,
                                 follower=st.follower, extra={"reward": [float(reward)]})
            self.stats.steps += 1
        except (StoreError, ValueError) as e:
            self._fail(str(e))

    def _camera_loop(self, name: str) -> None:
        cam = self.session.rig.cameras[name]
        video = self._videos[name]
        try:
            last = cam.latest().seq
        except ConnectionFailed:
            last = 0
        # a camera silent for 2 s (or 10 periods) has failed; shorter gaps happen when the
        # machine is loaded (a sim render worker starved of CPU) and cost frames only. The wait
        # goes in short slices so that a stop is seen at once, even while a camera is silent.
        silence_s = max(2.0, 10.0 / cam.config.fps)
        heard = now()
        while not self._stop.is_set():
            asked = now()
            try:
                f = cam.wait_next(last, timeout_s=STOP_POLL_S)
            except ConnectionFailed as e:
                if now() - heard >= silence_s:
                    self._fail(f"camera '{name}' stopped delivering frames: {e}")
                    return
                if now() - asked < STOP_POLL_S / 2:  # refused at once (a failed camera)
                    self._stop.wait(STOP_POLL_S / 4)
                continue
            heard = now()
            if self._stop.is_set() or f.t_host < self.t_start:
                last = f.seq
                continue
            if last and f.seq > last + 1:
                self.stats.dropped[name] += f.seq - last - 1
            last = f.seq
            try:
                video.write(f.color, f.t_host)
                self.writer.add_frame_time(name, f.t_host)
            except (VideoError, StoreError, ValueError) as e:
                self._fail(str(e))
                return
            self.stats.frames[name] += 1

    def _fail(self, msg: str) -> None:
        if not self.error:
            self.error = msg
        self._stop.set()

    # -- ending ----------------------------------------------------------------------------
    def _stop_producers(self) -> None:
        self._stop.set()
        self.session.remove_listener(self._on_step)
        for t in self._threads:
            t.join(timeout=5.0)

    def _abort_videos(self) -> None:
        for v in self._videos.values():
            try:
                v.abort()
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass

    def finish(self, success: bool | None = None) -> EpisodeInfo:
        """Stop, close the videos (flush the encoders), then make the episode complete."""
        self._stop_producers()
        if self.error:
            self._abort_videos()
            self.writer.abandon()
            raise StoreError(f"recording stopped: {self.error}. The episode was kept as "
                             f"incomplete (recover or discard it); earlier episodes are intact.")
        try:
            for v in self._videos.values():
                v.close()
        except VideoError as e:
            self.writer.abandon()
            raise StoreError(f"finishing the videos failed: {e}. The episode was kept as "
                             f"incomplete; earlier episodes are intact.") from e
        return self.writer.finish(success=success)

    def discard(self) -> None:
        self._stop_producers()
        self._abort_videos()
        self.writer.discard()

    def abandon(self) -> None:
        """Stop and keep what was written as an incomplete episode (recover or discard later)."""
        self._stop_producers()
        try:
            for v in self._videos.values():
                v.close()
        except VideoError:
            self._abort_videos()
        self.writer.abandon()

    @property
    def elapsed(self) -> float:
        return now() - self.t_start


class Phase(enum.Enum):
    IDLE = "idle"
    WARMUP = "warm-up"
    RECORDING = "recording"
    RESET = "reset"
    DONE = "done"
    FAILED = "failed"


@dataclass
class CyclePlan:
    task: str
    episodes: int = 1
    seconds: float = 20.0  # recording length (the sim stops at its episode end too)
    warmup_s: float = 3.0
    reset_s: float = 5.0
    tags: tuple[str, ...] = ()
    quality: str = "high"


class EpisodeCycle:
    """Warm-up -> recording -> reset period -> next, for plan.episodes episodes. Runs in its own
    thread; `rerecord()` discards the current episode and records it again, `discard()` drops it
    and moves on, `stop()` ends the cycle (finishing the current episode)."""

    def __init__(self, session: RigSession, store: EpisodeStore, plan: CyclePlan,
                 on_event=None):
        self.session, self.store, self.plan = session, store, plan
        self.on_event = on_event or (lambda event: None)
        self.phase = Phase.IDLE
        self.phase_until = 0.0
        self.done: list[EpisodeInfo] = []
        self.target = plan.episodes  # a discarded episode lowers it
        self.error = ""
        self.current: Recording | None = None
        self._cmd: str | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def is_sim(self) -> bool:
        return self.session.config.kind == "sim"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="episode-cycle", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def stop(self) -> None:
        self._command("stop")

    def rerecord(self) -> None:
        self._command("rerecord")

    def discard(self) -> None:
        self._command("discard")

    def _command(self, cmd: str) -> None:
        with self._lock:
            self._cmd = cmd

    def _take(self) -> str | None:
        with self._lock:
            cmd, self._cmd = self._cmd, None
            return cmd

    def _set_phase(self, phase: Phase, seconds: float = 0.0) -> None:
        self.phase = phase
        self.phase_until = now() + seconds
        self.on_event({"event": "phase", "phase": phase.value, "seconds": seconds,
                       "episode": len(self.done) + 1, "of": self.target})

    def _wait(self, seconds: float) -> str | None:
        end = now() + seconds
        while now() < end:
            cmd = self._take()
            if cmd:
                return cmd
            time.sleep(0.02)
        return None

    def _record_until(self, seconds: float) -> str | None:
        """Record until the time is up, the sim episode ends, a command comes, or the recording
        fails (then finish() raises the failure)."""
        while self.current.elapsed < seconds and not self.current.error:
            if self.session.rig.estopped:
                return "estop"
            cmd = self._take()
            if cmd:
                return cmd
            rec = self.session.latest()
            # only a step of this episode counts: right after a reset the latest record can
            # still be the previous episode's last ("done") step
            if (self.is_sim and rec is not None and rec.t >= self.current.t_start
                    and rec.state.info.get("done")):
                return None
            time.sleep(0.02)
        return None

    def _begin_sim_episode(self) -> None:
        rig = self.session.rig
        if hasattr(rig, "reset"):
            self.session.disengage()
            rig.reset()
            self.session.engage()  # refused while the e-stop is active: never released here

    def _run(self) -> None:
        try:
            if self.session.teleop is not None and self.session.teleop.state.value == "idle":
                self.session.engage()
            while len(self.done) < self.target:
                if self.is_sim:
                    self._begin_sim_episode()
                warmup = 0.0 if self.is_sim else self.plan.warmup_s
                self._set_phase(Phase.WARMUP, warmup)
                if self._wait(warmup) == "stop":
                    break
                seconds = self.plan.seconds
                if self.is_sim:
                    seconds = min(seconds, self.session.config.sim.episode_seconds)
                tags = self.plan.tags
                if self.is_sim and getattr(self.session.rig, "seed", None) is not None:
                    tags = (*tags, f"{SEED_TAG}{self.session.rig.seed}")  # replayable in the same scene
                self.current = Recording(self.session, self.store, self.plan.task, tags,
                                         self.plan.quality)
                self._set_phase(Phase.RECORDING, seconds)
                cmd = self._record_until(seconds)
                if cmd in ("rerecord", "discard"):
                    self.current.discard()
                    self.on_event({"event": cmd, "episode": len(self.done) + 1})
                    self.current = None
                    if cmd == "discard":
                        self.target -= 1
                    continue
                if cmd == "stop" and self.current.stats.steps == 0:
                    # stopped before its first control step: nothing to keep, nothing failed
                    self.current.discard()
                    self.current = None
                    break
                if cmd == "estop":
                    episode = self.current.writer.id
                    self.current.abandon()
                    self.current = None
                    raise RuntimeError(f"e-stop pressed: recording stopped, episode {episode} "
                                       f"kept as incomplete (recover or discard it)")
                success = None
                rec = self.session.latest()
                if rec is not None and "success" in rec.state.info:
                    success = bool(rec.state.info["success"])
                try:
                    info = self.current.finish(success=success)
                except EmptyEpisode:
                    if cmd != "stop":
                        raise
                    # stopped before every camera delivered a frame (a loaded machine's render
                    # worker, a camera's first frame still on its way): too short to keep, and
                    # no fault, since a camera is only failed after 2 s of silence
                    partial = self.current
                    silent = [n for n, k in partial.stats.frames.items() if k == 0]
                    if not silent:
                        raise
                    reason = (f"stopped {partial.elapsed:.1f} s into it, before camera "
                              f"{', '.join(map(repr, silent))} delivered a frame")
                    partial.discard()
                    self.current = None
                    self.on_event({"event": "discard", "episode": len(self.done) + 1,
                                   "id": partial.writer.id, "reason": reason})
                    break
                stats = self.current.stats
                self.current = None
                self.done.append(info)
                self.on_event({"event": "episode", "id": info.id, "task": info.task,
                               "duration_s": info.duration_s, "steps": info.steps,
                               "frames": info.frame_counts, "dropped": stats.dropped,
                               "success": info.success})
                if cmd == "stop" or len(self.done) >= self.target:
                    break
                self._set_phase(Phase.RESET, 0.0 if self.is_sim else self.plan.reset_s)
                if self._wait(0.0 if self.is_sim else self.plan.reset_s) == "stop":
                    break
            self._set_phase(Phase.DONE)
        except Exception as e:  # noqa: BLE001 - surfaced to the UI / CLI with its message
            self.error = str(e)
            if self.current is not None and not isinstance(e, StoreError):
                try:
                    self.current.discard()
                except Exception:  # noqa: BLE001 - already failing; keep the first error
                    pass
            self.current = None
            self.session.disengage()
            self._set_phase(Phase.FAILED)
