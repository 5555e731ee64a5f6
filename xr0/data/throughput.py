"""Random-access throughput of the dataset view: `python -m xr0.data.throughput [--json]`.

Records a store of synthetic episodes through the store's own writers (480x640 camera-like frames
at 30 fps, 14-d steps at 50 Hz), then times `EpisodeDataset.__getitem__` in one process over
shuffled indices at image_size (224, 224), chunk 30, for 2 and 3 cameras, and in sequential order
for comparison. Each figure is one JSON line (name, value, unit, detail).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch

from store import EpisodeStore
from xr0.data.dataset import EpisodeDataset
from xr0.data.synthetic import write_episode

CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")


def build_store(folder: str, episodes: int, seconds: float, quality: str) -> EpisodeStore:
    st = EpisodeStore.open(folder)
    for e in range(episodes):
        write_episode(st, steps=int(seconds * 50), cameras={c: (640, 480, 30.0) for c in CAMERAS},
                      quality=quality, seed=e)
    return st


def measure(st: EpisodeStore, n_cams: int, samples: int, shuffled: bool, seed: int = 0) -> dict:
    ds = EpisodeDataset(st, cameras=CAMERAS[:n_cams], image_size=(224, 224), chunk=30,
                        max_open_videos=64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ds)) if shuffled else np.arange(len(ds))
    order = np.resize(order, samples + 5)
    for i in order[:5]:   # warm-up: opens (indexes) the readers these samples touch
        ds[int(i)]
    t0 = time.perf_counter()
    for i in order[5:]:
        ds[int(i)]
    dt = time.perf_counter() - t0
    readers = list(ds._pool._readers.values())
    decoded = sum(r.decoded for r in readers)
    ds.close()
    return {"samples_per_s": samples / dt, "ms_per_sample": 1000 * dt / samples,
            "decoded_frames_per_sample": decoded / (samples + 5), "steps": len(ds)}


def run(episodes: int = 2, seconds: float = 8.0, samples: int = 150, quality: str = "high"):
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        st = build_store(tmp, episodes, seconds, quality)
        build_s = time.perf_counter() - t0
        for n_cams in (2, 3):
            for shuffled in (True, False):
                r = measure(st, n_cams, samples, shuffled)
                order = "shuffled" if shuffled else "sequential"
                yield {"bench": "xr0_data", "name": f"getitem_{order}_{n_cams}cams",
                       "value": round(r["samples_per_s"], 1), "unit": "samples/s",
                       "detail": {"ms_per_sample": round(r["ms_per_sample"], 2),
                                  "decoded_frames_per_sample":
                                      round(r["decoded_frames_per_sample"], 2),
                                  "image_size": [224, 224], "source": "480x640 mp4 " + quality,
                                  "chunk": 30, "episodes": episodes, "steps": r["steps"],
                                  "samples": samples, "store_build_s": round(build_s, 1)}}
        st.close()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=2)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--samples", type=int, default=150)
    p.add_argument("--quality", default="high", choices=("high", "lossless"))
    a = p.parse_args(argv)
    for fig in run(a.episodes, a.seconds, a.samples, a.quality):
        print(json.dumps(fig))


if __name__ == "__main__":
    main()
