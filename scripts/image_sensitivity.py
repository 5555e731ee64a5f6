"""Does a trained policy look at its cameras? At a few steps of a recorded episode, the chunk it
predicts from that step's state with its own frames against the chunk it predicts from the same
state with another episode's frames (same noise), next to how far apart the two episodes'
demonstrated actions are.

    .venv/bin/python scripts/image_sensitivity.py --policy RUN/checkpoints/step-N --store STORE \\
        --episodes 1-8 --steps 20,60,100

For each step: the mean change of the predicted actions of the chosen joints at the chunk's end
when only the frames are swapped, the mean difference between the demonstrations at that point,
and their ratio. A policy that reads the scene (where the object is) moves with the frames; one
that mostly extrapolates the arm's own state has a ratio near 0 and reaches for where the object
usually is.
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
    ap.add_argument("--episodes", default="1-8", help="ids, the first is the reference (1-8)")
    ap.add_argument("--steps", default="20,60,100", help="steps of the episodes to check")
    ap.add_argument("--joints", default="right_",
                    help="joints compared: names starting with this (default the right arm)")
    ap.add_argument("--per-joint", action="store_true",
                    help="also each joint: its change, the demonstrations' difference, and their "
                         "correlation over the swapped episodes")
    args = ap.parse_args()

    import torch

    from store import EpisodeStore
    from xr0.data.dataset import EpisodeDataset
    from xr0.policy import XR0Policy
    from xr0.train.selection import parse_selection

    torch.set_num_threads(1)
    policy = XR0Policy.from_checkpoint(args.policy)
    with EpisodeStore.open(args.store) as st:
        ids = parse_selection(args.episodes, [e.id for e in st.episodes(status="complete")])
    if len(ids) < 2:
        raise SystemExit("--episodes needs at least two episodes")
    names = policy.space.layout.joint_names
    cols = [i for i, n in enumerate(names) if n.startswith(args.joints)]
    if not cols:
        raise SystemExit(f"no joint starts with {args.joints!r}; joints: {', '.join(names)}")
    sets = {e: EpisodeDataset(args.store, [e], cameras=policy.cameras,
                              image_size=policy.image_size, chunk=policy.chunk_length) for e in ids}

    def frames(x):
        return {c: x["images"][i] for i, c in enumerate(policy.cameras)}

    for t in (int(s) for s in args.steps.split(",")):
        ref = sets[ids[0]][t]
        own = policy.infer(frames(ref), ref["state"], ref["instruction"], seed=0)
        moved, apart = [], []   # per swapped episode, per joint: signed differences
        for e in ids[1:]:
            x = sets[e][t]
            swapped = policy.infer(frames(x), ref["state"], ref["instruction"], seed=0)
            moved.append(swapped[-1, cols] - own[-1, cols])
            apart.append(x["actions"][-1, cols] - ref["actions"][-1, cols])
        moved, apart = np.asarray(moved), np.asarray(apart)
        m, a = float(np.abs(moved).mean()), float(np.abs(apart).mean())
        print(f"step {t:4d}: swapping the frames moves the predicted {args.joints}* joints by "
              f"{m:.4f} rad; the demonstrations are {a:.4f} rad apart; ratio {m / max(a, 1e-9):.2f}")
        if args.per_joint:
            for j, c in enumerate(cols):
                p, d = moved[:, j], apart[:, j]
                corr = np.corrcoef(p, d)[0, 1] if p.std() > 0 and d.std() > 0 else float("nan")
                print(f"  {names[c]:22s} moves {np.abs(p).mean():.4f}, demonstrations "
                      f"{np.abs(d).mean():.4f} apart, correlation {corr:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
