"""Load an exported dataset with LeRobot's LeRobotDataset and compare it with the source store.

Run through scripts/lerobot-check (it builds .venv-lerobot and sets HF_HUB_OFFLINE=1). Prints one
JSON object; exits 1 when a check fails. Checks: length and features, episode boundaries, tasks,
state and action of every row equal to the store's steps (as float32), and at sampled rows the
frame LeRobot decodes close to the store's frame taken at or before the row's time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

# torchvision's CUDA-only wheel cannot load its compiled ops on CPU torch, and its import then
# fails registering fake kernels for these two ops; declaring their schemas (no kernels) lets the
# pure-Python parts that LeRobot imports load. Calling either op would fail loudly.
_tv = torch.library.Library("torchvision", "DEF")
_tv.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_tv.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")

from lerobot.datasets.lerobot_dataset import LeRobotDataset  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from store import EpisodeStore  # noqa: E402
from store.video import VideoReader  # noqa: E402


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--store", required=True)
    ap.add_argument("--repo-id", default="local/xr0")
    ap.add_argument("--samples", type=int, default=4, help="rows per episode whose frames are "
                    "decoded and compared")
    ap.add_argument("--min-psnr", type=float, default=30.0)
    args = ap.parse_args()

    ds = LeRobotDataset(args.repo_id, root=args.dataset)
    store = EpisodeStore.open(args.store)
    ep_table = ds.meta.episodes
    src_ids = list(ep_table["xr0/episode_id"])
    failures: list[str] = []
    out = {"lerobot_len": len(ds), "fps": ds.fps, "episodes": ds.num_episodes,
           "video_backend": ds.video_backend, "features": sorted(ds.features)}

    expected_len = 0
    worst_psnr = 99.0
    frames_compared = 0
    rows_compared = 0
    for k, eid in enumerate(src_ids):
        d = store.episode(int(eid))
        n = len(d.t)
        ep = ep_table[k]
        if ep["dataset_from_index"] != expected_len or ep["dataset_to_index"] != expected_len + n:
            failures.append(f"episode {k}: boundaries {ep['dataset_from_index']}.."
                            f"{ep['dataset_to_index']} != {expected_len}..{expected_len + n}")
        names = ds.features["observation.state"]["names"]
        if list(names) != list(d.joint_names):
            failures.append(f"state names {names} != {list(d.joint_names)}")
        hf = ds.hf_dataset
        state = torch.stack(hf[expected_len:expected_len + n]["observation.state"]).numpy()
        action = torch.stack(hf[expected_len:expected_len + n]["action"]).numpy()
        if not (np.array_equal(state, d.state.astype(np.float32))
                and np.array_equal(action, d.action.astype(np.float32))):
            failures.append(f"episode {k}: state/action differ from store episode {eid}")
        rows_compared += n
        for i in sorted({0, n - 1, *np.linspace(0, n - 1, args.samples).round().astype(int)}):
            item = ds[expected_len + int(i)]
            if item["episode_index"].item() != k or item["frame_index"].item() != i:
                failures.append(f"row {expected_len + i}: episode/frame index "
                                f"{item['episode_index'].item()}/{item['frame_index'].item()}")
            if item["task"] != d.info.task:
                failures.append(f"row {expected_len + i}: task {item['task']!r} != "
                                f"{d.info.task!r}")
            for cam in d.cameras:
                key = f"observation.images.{cam}"
                got = (item[key].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                j = max(0, int(np.searchsorted(d.frame_times[cam], d.t[i], side="right")) - 1)
                with VideoReader(d.video_path(cam)) as r:
                    want = r.frame(j)
                p = psnr(got, want)
                worst_psnr = min(worst_psnr, p)
                frames_compared += 1
                if p < args.min_psnr:
                    failures.append(f"row {expected_len + i} {key}: PSNR {p:.1f} dB vs store "
                                    f"frame {j}")
        expected_len += n
    if len(ds) != expected_len:
        failures.append(f"len {len(ds)} != {expected_len} store steps")
    tasks = sorted(ds.meta.tasks.index)
    out.update({"store_steps": expected_len, "rows_compared": rows_compared,
                "frames_compared": frames_compared, "worst_psnr_db": round(worst_psnr, 2),
                "tasks": tasks, "failures": failures, "ok": not failures})
    print(json.dumps(out))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
