"""`python main.py bench model`: XR0 inference latency through XR0Policy.infer.

- xr0-tiny on the CPU: two cameras at 224x224, 5 Euler steps, 2 threads, random weights saved
  and loaded as a real checkpoint; p50/p95 end to end and the p50 of preprocessing, prefill and
  denoising, over >= 50 calls after warm-up (goal p50 <= 50 ms).
- xr0-4.7b only where a CUDA device is present: random weights in bf16, three cameras at
  256x320, prefill and denoising split, peak memory (goal <= 40 ms end to end on an H100;
  anchors: 80 ms on an RTX 4090 in the paper, pi0.5 76 ms). Without a GPU one figure says it was
  not measured.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import numpy as np
import torch

from bench import Figure

ANCHOR_TINY = "design goal: the tiny model keeps the CPU test rig at interactive rates"
ANCHOR_BIG = "paper: 80 ms per inference on an RTX 4090; pi0.5: 76 ms"


def _stats(chunk: int):
    from xr0.data.stats import compute_stats
    from xr0.data.synthetic import RIG_JOINT_NAMES, step_vectors
    states, actions = zip(*(step_vectors(120, len(RIG_JOINT_NAMES), seed) for seed in range(3)))
    ns = compute_stats(list(states), list(actions), RIG_JOINT_NAMES, chunk=chunk)
    ns.extra = {"normalization": "mean_std", "state": "raw"}
    return ns


def _measure(policy, images, state, calls: int, warmup: int) -> dict[str, np.ndarray]:
    rows = []
    for i in range(warmup + calls):
        policy.infer(images, state, "transfer the cube", seed=i)
        if i >= warmup:
            rows.append(policy.last_timing)
    return {k: np.array([r[k] for r in rows]) * 1e3 for k in rows[0]}


def _figures(prefix: str, t: dict[str, np.ndarray], goal_ms: float | None, goal: str, anchor: str,
             detail: dict) -> Iterator[Figure]:
    p50, p95 = float(np.percentile(t["total_s"], 50)), float(np.percentile(t["total_s"], 95))
    yield Figure("model", f"{prefix}.latency_p50", round(p50, 2), "ms", goal, anchor,
                 None if goal_ms is None else p50 <= goal_ms, detail)
    yield Figure("model", f"{prefix}.latency_p95", round(p95, 2), "ms", "", anchor, None, detail)
    for part in ("preprocess", "prefill", "denoise"):
        yield Figure("model", f"{prefix}.{part}_p50", round(float(np.percentile(t[f"{part}_s"], 50)), 2),
                     "ms", "", "", None, {"p95": round(float(np.percentile(t[f"{part}_s"], 95)), 2)})


def tiny_latency(quick: bool) -> Iterator[Figure]:
    from xr0.data.synthetic import RIG_JOINT_NAMES
    from xr0.model.checkpoint import save_checkpoint
    from xr0.model.config import preset
    from xr0.model.tokenizer import load_tokenizer
    from xr0.model.xr0 import XR0Model
    from xr0.policy import XR0Policy

    torch.set_num_threads(2)
    torch.manual_seed(0)
    cfg = preset("xr0-tiny")                       # two views at 224x224, T = 30
    model = XR0Model.from_config(cfg)
    cameras = ["cam_high", "cam_left_wrist"]
    stats = {"norm_stats": _stats(cfg.action_length).to_dict(), "cameras": cameras,
             "image_size": list(cfg.image_size), "chunk": cfg.action_length}
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(model, cfg, d, stats=stats, tokenizer=load_tokenizer())
        policy = XR0Policy.from_checkpoint(d, num_steps=5)
    rng = np.random.default_rng(0)
    images = {c: rng.integers(0, 255, (224, 224, 3), dtype=np.uint8) for c in cameras}
    state = np.zeros(len(RIG_JOINT_NAMES))
    calls, warmup = (5, 2) if quick else (60, 5)
    t = _measure(policy, images, state, calls, warmup)
    detail = {"calls": calls, "warmup": warmup, "threads": torch.get_num_threads(), "steps": 5,
              "cameras": "2 x 224x224", "chunk": cfg.action_length, "quick": quick,
              "load_avg_1min": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}
    yield from _figures("tiny", t, 50.0, "p50 <= 50 ms on 2 CPU threads", ANCHOR_TINY, detail)


def big_config(name: str = "xr0-4.7b"):
    """The preset's shapes with the tiny tokenizer's special-token ids (same sequence lengths;
    the official vocabulary is not available offline), three views at 256x320."""
    from xr0.model.config import TINY_SPECIAL_IDS, preset

    base = preset(name)
    vlm = {**base.vlm_config, "image_token_id": TINY_SPECIAL_IDS["<|image_pad|>"],
           "video_token_id": TINY_SPECIAL_IDS["<|video_pad|>"],
           "vision_start_token_id": TINY_SPECIAL_IDS["<|vision_start|>"],
           "vision_end_token_id": TINY_SPECIAL_IDS["<|vision_end|>"]}
    return base.replace(vlm_config=vlm, image_size=(256, 320),
                        view_labels=("Ego View", "Left-Wrist View", "Right-Wrist View"))


def random_model(cfg, device: torch.device, seed: int = 0, dtype: torch.dtype = torch.float32):
    """The model of `cfg` in `dtype` on `device` with random weights (N(0, 0.02); norms 1,
    biases 0), allocated once, there and in that dtype (no CPU or fp32 copy first)."""
    from xr0.model.xr0 import XR0Model

    with torch.device("meta"):
        model = XR0Model.from_config(cfg).to(dtype)
    model = model.to_empty(device=device)
    if cfg.vlm_config.get("tie_word_embeddings", False):
        model.vlm.lm_head.weight = model.vlm.model.language_model.embed_tokens.weight
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and ("norm" in name or name.endswith("bias")):
                p.fill_(1.0 if "norm" in name else 0.0)
            else:
                p.normal_(0.0, 0.02, generator=g)
    return model


def big_latency(quick: bool) -> Iterator[Figure]:
    if not torch.cuda.is_available():
        yield Figure("model", "4.7b.latency_p50", None, "ms", "<= 40 ms end to end on an H100",
                     ANCHOR_BIG, None, {"not_measured": "no CUDA device present; run "
                                        "`python main.py bench model` on a GPU machine"})
        return
    from xr0.data.layout import ActionLayout
    from xr0.model.backbone import restore_rotary_buffers
    from xr0.model.tokenizer import load_tokenizer
    from xr0.policy import NormStatsSpace, XR0Policy

    cfg = big_config()
    device = torch.device("cuda")
    model = random_model(cfg, device, dtype=torch.bfloat16).eval()
    restore_rotary_buffers(model)
    ns = _stats(cfg.action_length)
    space = NormStatsSpace(ns, ActionLayout.from_joint_names(ns.joint_names), cfg.action_length)
    cameras = ["cam_high", "cam_left_wrist", "cam_right_wrist"]
    policy = XR0Policy(model, cfg, load_tokenizer(), space, cameras=cameras, num_steps=5)
    rng = np.random.default_rng(0)
    images = {c: rng.integers(0, 255, (256, 320, 3), dtype=np.uint8) for c in cameras}
    torch.cuda.reset_peak_memory_stats(device)
    calls, warmup = (10, 3) if quick else (60, 10)
    t = _measure(policy, images, np.zeros(ns.dim), calls, warmup)
    detail = {"calls": calls, "warmup": warmup, "steps": 5, "cameras": "3 x 256x320",
              "dtype": "bf16", "device": torch.cuda.get_device_name(device), "quick": quick,
              "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)}
    yield from _figures("4.7b", t, 40.0, "<= 40 ms end to end on an H100", ANCHOR_BIG, detail)
    yield Figure("model", "4.7b.peak_memory", detail["peak_memory_gib"], "GiB", "", "", None, detail)


def run(quick: bool = False) -> Iterator[Figure]:
    yield from tiny_latency(quick)
    yield from big_latency(quick)
