"""Do a policy's spatial-softmax keypoints (train --vision-keypoints K) find the cube? A linear
probe: for one frame of each transfer-cube episode of a store (by default the first: the cube at
rest where the episode's seed placed it, the arms at their start pose; --step N takes step N's,
with the arms on their way and the cube still at rest as long as N is before the grasp, about
step 110 in the scripted demonstrations), the policy's K keypoints on its first camera, and a
least-squares line from them to the cube's (x, y) on the table, scored on the
episodes it was not fitted on (leave-one-out).

    .venv/bin/python scripts/keypoint_probe.py --policy RUN/checkpoints/step-N --store STORE

Prints the probe's error (cm, RMS over the held-out episodes, per axis) against the spread of
the cube's positions (what a probe that always answers the mean would miss by), and the single
keypoint that follows the cube best along each axis (its correlation, and how peaked its map
is: the largest share of its softmax mass on one cell, median over the episodes). An encoder
that locates the cube gives an error well under a centimetre; one that does not, about the
spread.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def loo_residuals(features: np.ndarray, targets: np.ndarray, ridge: float = 1e-6) -> np.ndarray:
    """Leave-one-out residuals (N, D) of a ridge-regularised linear fit with a bias, in closed
    form: r_i = e_i / (1 - h_ii), e the in-sample residuals and h the hat matrix's diagonal."""
    x = np.hstack([features, np.ones((len(features), 1))])
    gram = x.T @ x + ridge * np.eye(x.shape[1])
    coef = np.linalg.solve(gram, x.T @ targets)
    hat = np.einsum("ij,ji->i", x, np.linalg.solve(gram, x.T))
    return (targets - x @ coef) / (1.0 - hat)[:, None]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", required=True, help="checkpoint or run folder")
    ap.add_argument("--store", required=True, help="episode store of sim transfer-cube episodes")
    ap.add_argument("--episodes", default=None, help="ids (default: every complete episode)")
    ap.add_argument("--step", type=int, default=0,
                    help="the step whose frame is probed (default 0; before the grasp, < 110)")
    ap.add_argument("--json", action="store_true", help="one JSON object instead of text")
    args = ap.parse_args()

    import torch

    from app.core.recorder import recorded_seed
    from grasp_error import cube_at_rest
    from store import EpisodeStore
    from xr0.data.dataset import EpisodeDataset
    from xr0.policy import XR0Policy, format_instruction
    from xr0.train.selection import parse_selection

    torch.set_num_threads(1)
    policy = XR0Policy.from_checkpoint(args.policy)
    visual = policy.model.vlm.model.visual
    if not hasattr(visual, "keypoints"):
        raise SystemExit(f"{args.policy} has no keypoints: train it with --vision-keypoints K")
    with EpisodeStore.open(args.store) as st:
        ids = parse_selection(args.episodes, [e.id for e in st.episodes(status="complete")])
        seeds = {e: recorded_seed(st, e) for e in ids}
    ids = [e for e in ids if seeds[e] is not None]
    if len(ids) < 8:
        raise SystemExit(f"{len(ids)} episodes with a recorded sim seed: the probe needs 8 or more")
    kp_net = visual.keypoints
    maps: list[torch.Tensor] = []
    hook = kp_net.features.register_forward_hook(lambda m, i, o: maps.append(o.detach()))
    kps, cubes, peaks = [], [], []
    for e in ids:
        x = EpisodeDataset(args.store, [e], cameras=policy.cameras, image_size=policy.image_size,
                           chunk=policy.chunk_length)[args.step]
        frames = {c: x["images"][i] for i, c in enumerate(policy.cameras)}
        inputs = policy.processor([policy._views(frames)], [format_instruction(x["instruction"])])
        with torch.no_grad():
            visual(inputs.pixel_values.to(policy.model.dtype), grid_thw=inputs.image_grid_thw)
        kps.append(visual.keypoints.last_keypoints[0].flatten().numpy())   # first camera
        # each keypoint's largest softmax mass on one cell of its map (first camera)
        logits = maps[-1][0].flatten(1) / kp_net.log_temperature.detach().exp()
        peaks.append(torch.softmax(logits, dim=-1).max(-1).values.numpy())
        cells = logits.shape[-1]
        maps.clear()
        cubes.append(cube_at_rest(seeds[e])[:2])
    hook.remove()
    kps, cubes = np.asarray(kps, dtype=np.float64), np.asarray(cubes) * 100.0     # cm
    peak = np.median(np.asarray(peaks), axis=0)             # (K,) median over the episodes
    err = np.sqrt((loo_residuals(kps, cubes) ** 2).mean(axis=0))
    spread = cubes.std(axis=0)
    k = kps.shape[1] // 2
    corr = np.array([[abs(np.corrcoef(kps[:, 2 * i + a], cubes[:, a])[0, 1])
                      if kps[:, 2 * i + a].std() > 1e-9 else 0.0 for a in range(2)]
                     for i in range(k)])
    result = {"episodes": len(ids), "step": args.step, "keypoints": k, "camera": policy.cameras[0],
              "probe_error_cm": err.round(3).tolist(), "spread_cm": spread.round(3).tolist(),
              "best_keypoint": corr.argmax(axis=0).tolist(),
              "best_correlation": corr.max(axis=0).round(3).tolist(),
              "best_peak_mass": peak[corr.argmax(axis=0)].round(5).tolist(),
              "uniform_mass": round(1.0 / cells, 5)}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{len(ids)} episodes, step {args.step}, {k} keypoints on camera {policy.cameras[0]!r}")
    for a, axis in enumerate("xy"):
        print(f"  {axis}: probe error {err[a]:.2f} cm (held out) against a spread of "
              f"{spread[a]:.2f} cm; best single keypoint {corr[:, a].argmax()} "
              f"(|correlation| {corr[:, a].max():.2f}; median peak softmax mass on one cell "
              f"{100 * peak[corr[:, a].argmax()]:.2f}%, a uniform map {100 / cells:.2f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
