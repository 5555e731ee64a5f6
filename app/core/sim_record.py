"""Sim demonstrations recorded in stepping mode: the scripted operator's leader arms drive the
followers through the real teleop path (Teleop and its SafetyFilter) one control period at a
time, and every camera frame is rendered at its own sim time and written with it.

The real-time recorder (app.core.recorder) keeps whatever the cameras deliver, as on hardware; on
a loaded CPU the sim's render worker falls behind and an episode can lose a third of its frames,
with gaps of a second. Here nothing runs against a clock, so each episode has every step and every
frame (a camera at F fps has one frame per 1/F s of sim time), and the same seeds give the same
episodes on any machine. Times are the episode's sim time, offset by the host clock at its start
so they stay increasing across a store, and frames align to steps exactly as the training view
aligns recorded ones (latest frame at or before the step).

A failure while writing keeps the episode as incomplete (recover or discard it); earlier
episodes are never touched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from app.core.recorder import EXTRA_COLUMNS, SEED_TAG
from drivers import layout
from drivers.clock import now
from drivers.config import RigConfig, SimConfig
from drivers.errors import ConnectionFailed
from drivers.sim.rig import SimRig
from drivers.teleop import Teleop, TeleopState
from store import EpisodeInfo, EpisodeStore
from store.video import VideoWriter


class SimRecordError(RuntimeError):
    pass


def record_stepping(config: RigConfig, store: EpisodeStore, task: str, episodes: int,
                    seconds: float | None = None, tags: Sequence[str] = (),
                    quality: str = "high", seeds: Sequence[int] | None = None,
                    on_event: Callable[[dict], None] | None = None) -> list[EpisodeInfo]:
    """Record `episodes` scripted episodes of the sim rig `config` into `store`. Seeds: `seeds`,
    else the rig config's seed, then +1, +2, ... Returns the episodes, complete, in order."""
    if config.kind != "sim":
        raise SimRecordError(f"stepping recording needs a sim rig; {config.name} is "
                             f"{config.kind}: record hardware in real time")
    if episodes < 1:
        raise ValueError("--episodes must be at least 1")
    if seeds is not None and len(seeds) != episodes:
        raise ValueError(f"{len(seeds)} seeds given for {episodes} episodes")
    emit = on_event or (lambda ev: None)
    sim = dataclasses.replace(config.sim or SimConfig(), realtime=False)
    cfg = config.with_(sim=sim)
    length = min(seconds if seconds is not None else sim.episode_seconds, sim.episode_seconds)
    steps = int(round(length * cfg.control_hz))
    if steps < 1:
        raise ValueError(f"an episode of {length} s has no control step")
    done: list[EpisodeInfo] = []
    with SimRig(cfg) as rig:
        for i in range(episodes):
            rig.reset(None if seeds is None else int(seeds[i]))
            emit({"event": "phase", "phase": "recording", "seconds": length, "episode": i + 1,
                  "of": episodes})
            info = _record_episode(rig, cfg, store, task, steps, (*tags, f"{SEED_TAG}{rig.seed}"),
                                   quality)
            done.append(info)
            emit({"event": "episode", "id": info.id, "task": info.task, "seed": rig.seed,
                  "duration_s": info.duration_s, "steps": info.steps,
                  "frames": info.frame_counts, "dropped": {n: 0 for n in rig.cameras},
                  "success": info.success})
    emit({"event": "phase", "phase": "done", "seconds": 0.0, "episode": len(done),
          "of": episodes})
    return done


def _record_episode(rig: SimRig, cfg: RigConfig, store: EpisodeStore, task: str, steps: int,
                    tags: Sequence[str], quality: str) -> EpisodeInfo:
    cams = rig.cameras
    writer = store.begin_episode(
        task=task, rig=cfg.name, control_hz=cfg.control_hz, joint_names=layout.NAMES,
        cameras={n: (c.config.width, c.config.height, c.config.fps) for n, c in cams.items()},
        tags=tags, extra_columns=EXTRA_COLUMNS)
    videos: dict[str, VideoWriter] = {}
    seen = {n: 0 for n in cams}
    t0 = now()

    def latest(cam):
        try:
            return cam.latest()
        except ConnectionFailed:            # nothing rendered yet
            return None

    def take_frames() -> None:
        for name, cam in cams.items():
            f = latest(cam)
            if f is not None and f.seq != seen[name] and f.t_device is not None:
                videos[name].write(f.color, t0 + f.t_device)
                writer.add_frame_time(name, t0 + f.t_device)
                seen[name] = f.seq

    try:
        for name, cam in cams.items():
            videos[name] = VideoWriter(writer.camera_path(name), cam.config.width,
                                       cam.config.height, cam.config.fps, quality=quality)
            f = latest(cam)               # a frame of the previous episode is not this one's
            seen[name] = f.seq if f is not None else 0
        teleop = Teleop(rig)
        teleop.engage()
        for _ in range(steps):
            st = rig.read()
            take_frames()
            out = teleop.step(st)
            if teleop.state is TeleopState.STOPPED:
                raise SimRecordError(f"teleop stopped the followers: {teleop.stop_reason}. The "
                                     "episode was kept as incomplete (discard it); earlier "
                                     "episodes are intact")
            action = out.command if out is not None else st.follower
            reward = float(st.info.get("reward", float("nan")))
            writer.add_step(t0 + rig.episode_time, st.follower, action, leader=st.leader,
                            follower=st.follower, extra={"reward": [reward]})
            rig.step()
        for v in videos.values():
            v.close()
        return writer.finish(success=bool(rig.read().info.get("success")))
    except BaseException:
        for v in videos.values():
            try:
                v.abort()
            except Exception:  # noqa: BLE001 - already failing; keep the first error
                pass
        writer.abandon()
        raise
