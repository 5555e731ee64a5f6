"""Open-loop check of a trained policy on a recorded episode: at every Nth step, the chunk the
policy predicts from that step's frames and state against the episode's own next actions.

    .venv/bin/python scripts/open_loop.py --policy RUN/checkpoints/step-N --store STORE --episode 3

Prints, per checked step, the mean absolute error (rig units) at the chunk's first, middle and
last action, and overall the median step-to-step change inside the predicted chunks against the
demonstration's: a policy can follow the demonstration on average and still be jittery.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", required=True, help="checkpoint or run folder")
    ap.add_argument("--store", required=True, help="episode store folder")
    ap.add_argument("--episode", type=int, required=True, help="episode id")
    ap.add_argument("--every", type=int, default=30, help="check every Nth step (default 30)")
    args = ap.parse_args()

    import torch

    from xr0.data.dataset import EpisodeDataset
    from xr0.policy import XR0Policy

    torch.set_num_threads(1)
    policy = XR0Policy.from_checkpoint(args.policy)
    ds = EpisodeDataset(args.store, [args.episode], cameras=policy.cameras,
                        image_size=policy.image_size, chunk=policy.chunk_length)
    jitter, demo_jitter = [], []
    for s in range(0, len(ds), args.every):
        x = ds[s]
        images = {c: x["images"][i] for i, c in enumerate(policy.cameras)}
        pred = policy.infer(images, x["state"], x["instruction"], seed=s)
        err = np.abs(pred - x["actions"]).mean(axis=1)
        mid = len(err) // 2
        print(f"step {s:4d}: mean |error| first {err[0]:.3f}, middle {err[mid]:.3f}, "
              f"last {err[-1]:.3f}")
        jitter.append(np.median(np.abs(np.diff(pred, axis=0))))
        demo_jitter.append(np.median(np.abs(np.diff(x["actions"], axis=0))))
    print(f"median step-to-step change inside a chunk: predicted {np.mean(jitter):.4f}, "
          f"demonstration {np.mean(demo_jitter):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
