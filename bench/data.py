"""`python main.py bench data`: random access into recorded episodes for training.

Times the dataset view (xr0.data.EpisodeDataset.__getitem__: frames of each camera decoded from
480x640 mp4s at their own timestamps and resized to 224x224, state, a 30-step action chunk) on a
store written through the store's own writers, in one process, in shuffled and in sequential
order, for 2 and 3 cameras (xr0.data.throughput does the measuring).
"""

from __future__ import annotations

from collections.abc import Iterator

from bench import Figure

ANCHOR = ("LeRobot's dataset decodes a video frame per camera per sample with torchcodec or PyAV "
          "at its timestamp (seek to the keyframe, decode forward)")


def run(quick: bool = False) -> Iterator[Figure]:
    from xr0.data.throughput import run as measure

    for r in measure(episodes=2, seconds=4.0 if quick else 8.0, samples=60 if quick else 150):
        yield Figure("data", r["name"], r["value"], r["unit"], "", ANCHOR, None, r["detail"])
