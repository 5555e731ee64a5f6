"""`python main.py bench record`: streaming recording of three cameras plus state, on 2 cores.

The recorder's own path: one episode of a real store (EpisodeStore.begin_episode ->
EpisodeWriter). Three synthetic cameras (480x640, 30 fps) each run in their own thread paced by the
one clock (drivers.clock.Ticker), hand every frame to a store.video.VideoWriter streaming into the
episode's video file and log its time with EpisodeWriter.add_frame_time; a 50 Hz thread adds 14-d
state and action steps with EpisodeWriter.add_step. Finalising = closing the video writers plus
EpisodeWriter.finish() (flush + fsync + the index row), and the figures are read back from the
store: the episode's steps and frame-time logs must match what was sent. Frame content moves every frame (a textured gradient that
scrolls, a moving block and sensor-like noise) so the encoder does real work, and each frame's
index is stamped into a row of 16x16 binary blocks, so the decoded files tell dropped and
duplicated frames apart from encoder loss.

Figures per quality ("high" for the full run, "lossless" as a 10 s run): dropped and duplicated
frames, encode lag p50/p99, time to finalise (close all writers after the last frame), MB per
minute, writer stalls, camera-frame lateness.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterator

import numpy as np

from bench import Figure
from drivers.clock import Ticker, now
from drivers.layout import NAMES
from store import EpisodeStore, EpisodeWriter
from store.video import VideoReader, VideoWriter

H, W, FPS, CAMERAS, STATE_HZ = 480, 640, 30, ("ego", "left_wrist", "right_wrist"), 50
BITS, BLOCK = 20, 16   # frame index stamped as 20 bits of 16x16 blocks in the top-left rows
ANCHOR = ("LeRobot default: PNGs, then 30-40 s of encoding per 15 s episode; its streaming mode "
          "finalises in < 1 s but drops frames when its 30-frame queue fills")


class SyntheticCamera:
    """Frames that change every frame and carry their own index in pixels."""

    def __init__(self, seed: int):
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
        tex = (np.sin(xx / 23.0 + seed) * np.cos(yy / 31.0) * 60 + 128)
        self.tex = np.stack([tex, np.roll(tex, 40, 1), np.roll(tex, 80, 0)], -1).astype(np.uint8)
        self.noise = rng.integers(0, 6, size=(8, H, W, 3), dtype=np.uint8)

    def frame(self, i: int) -> np.ndarray:
        img = np.roll(self.tex, 3 * i, axis=1)
        img = img + self.noise[i % 8]                     # sensor-like noise
        y, x = 100 + int(80 * np.sin(i / 15)), (5 * i) % (W - 80)
        img[y:y + 60, x:x + 80] = (200, 40, 40)           # a moving object
        stamp_index(img, i)
        return img


def stamp_index(img: np.ndarray, i: int) -> None:
    for b in range(BITS):
        img[0:BLOCK, b * BLOCK:(b + 1) * BLOCK] = 255 if (i >> b) & 1 else 0


def read_index(img: np.ndarray) -> int:
    cells = img[2:BLOCK - 2, :BITS * BLOCK].reshape(BLOCK - 4, BITS, BLOCK, 3)
    bits = cells[:, :, 2:BLOCK - 2].mean(axis=(0, 2, 3)) > 127
    return int(sum(1 << b for b in range(BITS) if bits[b]))


def _camera_thread(cam: SyntheticCamera, name: str, writer: VideoWriter, episode: EpisodeWriter,
                   seconds: float, late: list, count: list, start: threading.Event) -> None:
    start.wait()
    n = int(seconds * FPS)
    tick = Ticker(FPS)
    for i in range(n):
        late.append(tick.wait())
        img = cam.frame(i)
        t = now()
        writer.write(img, t)
        episode.add_frame_time(name, t)
    count.append(n)


def _state_thread(seconds: float, episode: EpisodeWriter, out: list,
                  start: threading.Event) -> None:
    start.wait()
    n = int(seconds * STATE_HZ)
    tick = Ticker(STATE_HZ)
    for k in range(n):
        tick.wait()
        state = np.sin(k / 50.0 + np.arange(14))
        episode.add_step(now(), state, state + 0.01, leader=state + 0.01, follower=state)
    out.append(n)


def record(seconds: float, quality: str, folder: str) -> dict:
    store = EpisodeStore.open(folder)
    episode = store.begin_episode(task="bench: three cameras and state", rig="synthetic",
                                  control_hz=STATE_HZ, joint_names=NAMES,
                                  cameras={c: (W, H, FPS) for c in CAMERAS})
    cams = [SyntheticCamera(s) for s in range(len(CAMERAS))]
    writers = [VideoWriter(episode.camera_path(c), W, H, FPS, quality=quality) for c in CAMERAS]
    start = threading.Event()
    lates = [[] for _ in CAMERAS]
    counts = [[] for _ in CAMERAS]
    state: list = []
    threads = [threading.Thread(target=_camera_thread,
                                args=(cams[k], CAMERAS[k], writers[k], episode, seconds, lates[k],
                                      counts[k], start))
               for k in range(len(CAMERAS))]
    threads.append(threading.Thread(target=_state_thread, args=(seconds, episode, state, start)))
    for t in threads:
        t.start()
    start.set()
    for t in threads:
        t.join()
    t_last = now()
    infos = [w.close() for w in writers]
    info = episode.finish(success=True)
    finalise = now() - t_last

    data = store.episode(info.id)   # read back through the store, as training will
    store.close()
    dropped = dup = 0
    per_cam = []
    for k, c in enumerate(CAMERAS):
        sent = counts[k][0]
        if len(data.frame_times[c]) != sent:
            raise RuntimeError(f"camera {c}: {sent} frames sent, {len(data.frame_times[c])} "
                               f"frame times stored")
        with VideoReader(data.video_path(c)) as r:
            seen = [read_index(r.frame(i)) for i in range(len(r))]
        uniq = set(seen)
        dropped += sent - len(uniq & set(range(sent)))
        dup += len(seen) - len(uniq)
        per_cam.append({"camera": c, "sent": sent, "decoded": len(seen),
                        "MB_per_min": infos[k].bytes / 1e6 / (seconds / 60)})
    lag = np.asarray([i.lag_ms_max for i in infos])
    late = np.concatenate([np.asarray(x) for x in lates]) * 1000
    if data.t.shape != (state[0],):
        raise RuntimeError(f"{state[0]} steps sent, {data.t.shape[0]} stored")
    st = np.column_stack([data.t, data.state])
    return {
        "quality": quality, "seconds": seconds, "dropped": dropped, "duplicated": dup,
        "lag_p50": float(np.median([i.lag_ms_p50 for i in infos])),
        "lag_p99": float(max(i.lag_ms_p99 for i in infos)), "lag_max": float(lag.max()),
        "finalise_s": finalise, "stalls": sum(i.stalls for i in infos),
        "stall_s": sum(i.stall_s for i in infos),
        "mb_per_min_total": sum(p["MB_per_min"] for p in per_cam), "per_camera": per_cam,
        "camera_late_ms_p99": float(np.percentile(late, 99)),
        "state_rows": len(st), "state_rate_hz": (len(st) - 1) / (st[-1, 0] - st[0, 0]),
    }


def _figures(r: dict) -> Iterator[Figure]:
    q = r["quality"]
    d = {"seconds": r["seconds"], "stalls": r["stalls"], "stall_s": round(r["stall_s"], 3),
         "camera_late_ms_p99": round(r["camera_late_ms_p99"], 2),
         "state_rows": r["state_rows"], "state_rate_hz": round(r["state_rate_hz"], 2)}
    yield Figure("record", f"dropped_frames_{q}", r["dropped"], "frames", "0", ANCHOR,
                 r["dropped"] == 0, d)
    yield Figure("record", f"duplicated_frames_{q}", r["duplicated"], "frames", "0", ANCHOR,
                 r["duplicated"] == 0)
    yield Figure("record", f"encode_lag_p50_{q}", r["lag_p50"], "ms", "", ANCHOR,
                 detail={"what": "write() to muxed in the file"})
    yield Figure("record", f"encode_lag_p99_{q}", r["lag_p99"], "ms", "", ANCHOR,
                 detail={"what": "write() to muxed in the file", "max_ms": round(r["lag_max"], 1)})
    yield Figure("record", f"finalise_time_{q}", r["finalise_s"], "s", "<= 1 s", ANCHOR,
                 r["finalise_s"] <= 1.0)
    yield Figure("record", f"mb_per_minute_{q}", r["mb_per_min_total"], "MB/min", "",
                 ANCHOR, detail={p["camera"]: round(p["MB_per_min"], 2) for p in r["per_camera"]})


def run(quick: bool = False) -> Iterator[Figure]:
    folder = tempfile.mkdtemp(prefix="xr0-bench-record-")
    try:
        for quality, seconds in (("high", 10.0 if quick else 60.0), ("lossless", 10.0)):
            sub = os.path.join(folder, quality)
            os.makedirs(sub)
            yield from _figures(record(seconds, quality, sub))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
