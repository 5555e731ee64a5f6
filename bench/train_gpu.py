"""Fine-tuning the xr0-4.7b presets on a GPU: throughput and peak memory.

For each preset (lora, frozen-backbone, full) `main.py train` fine-tunes a checkpoint of the
4.7B shapes with random weights (bench.model.big_config: the tiny tokenizer's special-token ids,
three views at 256x320) on synthetic episodes of three cameras, for a few steps of one
micro-batch (the preset's size) per process. Figures: training samples/s, from the times of the
step events after the first WARMUP steps (start-up, the first allocations and kernel choices
excluded), and the peak GPU memory the trainer reports (torch.cuda.max_memory_allocated on
rank 0's device, whose events are the run's; FSDP's ranks hold equal shards). With several GPUs
the full fine-tune runs under torchrun with --strategy fsdp over all of them; on one GPU it runs
alone, and where it runs out of memory that is its figure (the trainer's message, no value).

Without a CUDA device every figure says it was not measured. `run_presets` is the same path on
any model and device: the tests run it with xr0-tiny on the CPU, where the memory figure is the
trainer's peak RSS.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from bench import Figure
from bench.train import CommandFailed, _run

PRESETS = ("lora", "frozen-backbone", "full")
CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")
WARMUP = 2
TASK = "transfer the cube"


def run(quick: bool = False) -> Iterator[Figure]:
    import torch

    from bench.model import big_config

    if not torch.cuda.is_available():
        counts = state_sizes(big_config())
        for preset in PRESETS:
            yield Figure("train", f"xr0-4.7b {preset} training throughput", None, "samples/s",
                         anchor="one micro-batch of the preset per GPU, bf16 autocast",
                         detail={"not_measured": "no CUDA device present; run `python main.py "
                                                 "bench train-gpu` on a GPU machine",
                                 **counts[preset]})
        return

    with tempfile.TemporaryDirectory(prefix="bench-train-gpu-") as tmp:
        yield from run_presets(big_config(), "xr0-4.7b", "cuda", Path(tmp),
                               steps=6 if quick else 12, processes=torch.cuda.device_count(),
                               quick=quick)


def state_sizes(cfg, presets: Sequence[str] = PRESETS) -> dict[str, dict]:
    """Per preset, the parameters it trains (counted on a meta-device build, as the trainer
    selects them) and what its weights, gradients and AdamW moments occupy at bf16 precision
    (a frozen backbone in bf16; what trains in fp32 with an fp32 gradient and two fp32 moments):
    arithmetic on counted parameters, before activations, for one process."""
    import torch

    from xr0.model.xr0 import XR0Model
    from xr0.train.config import train_preset
    from xr0.train.model_setup import apply_trainable

    out = {}
    for preset in presets:
        with torch.device("meta"):
            model = apply_trainable(XR0Model.from_config(cfg), train_preset(preset))
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        frozen_bytes = frozen * (4 if train_preset(preset).trainable == "all" else 2)
        out[preset] = {"parameters": trained + frozen, "trainable_parameters": trained,
                       "weights_grads_adam_gib": round((trained * 16 + frozen_bytes) / 2**30, 1)}
    return out


def write_store(folder: Path, size: tuple[int, int], episodes: int, steps: int) -> Path:
    from store import EpisodeStore
    from xr0.data.synthetic import write_episode

    h, w = size
    with EpisodeStore.open(folder) as st:
        for i in range(episodes):
            write_episode(st, steps=steps, cameras={c: (w, h, 50.0) for c in CAMERAS}, seed=i,
                          task=TASK)
    return folder


def write_base(folder: Path, cfg, device: str) -> Path:
    """A checkpoint of `cfg` with random weights, stored in bf16 as released checkpoints are."""
    import torch

    from bench.model import random_model
    from xr0.model import save_checkpoint
    from xr0.model.tokenizer import load_tokenizer

    model = random_model(cfg, torch.device(device), dtype=torch.bfloat16)
    save_checkpoint(model, cfg, folder, tokenizer=load_tokenizer())
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return folder


def throughput(events: list[dict], batch: int, warmup: int = WARMUP) -> float | None:
    """Samples/s between the step event of step `warmup` and the last one."""
    steps = [e for e in events if e.get("event") == "step" and e["step"] >= warmup]
    if len(steps) < 2 or steps[-1]["time"] <= steps[0]["time"]:
        return None
    return (steps[-1]["step"] - steps[0]["step"]) * batch / (steps[-1]["time"] - steps[0]["time"])


def run_presets(cfg, label: str, device: str, folder: Path, *, steps: int, processes: int = 1,
                presets: Sequence[str] = PRESETS, quick: bool = False, episodes: int = 4,
                frames: int = 60, workers: int = 4, threads: int = 4,
                timeout: float = 1800.0) -> Iterator[Figure]:
    from xr0.train.config import train_preset

    store = write_store(folder / "store", cfg.image_size, episodes, frames)
    base = write_base(folder / "base", cfg, device)
    for preset in presets:
        sharded = preset == "full" and processes > 1
        n = processes if sharded else 1
        micro = train_preset(preset).micro_batch
        batch = micro * n
        args = ["train", "--store", str(store), "--base", str(base), "--preset", preset,
                "--out", str(folder / "runs" / preset), "--steps", str(steps),
                "--batch", str(batch), "--micro-batch", str(micro), "--warmup", "0",
                "--workers", str(workers), "--val-episodes", "1",
                "--val-every", str(10 ** 6), "--checkpoint-every", str(10 ** 6),
                "--cameras", ",".join(CAMERAS), "--device", device]
        launcher: tuple[str, ...] = ()
        if sharded:
            args += ["--strategy", "fsdp"]
            launcher = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n))
        detail = {"preset": preset, "device": device, "processes": n,
                  "strategy": "fsdp" if sharded else "single process", "steps": steps,
                  "batch": batch, "micro_batch": micro, "warmup_steps": WARMUP,
                  "cameras": f"{len(CAMERAS)} x {cfg.image_size[0]}x{cfg.image_size[1]}",
                  "quick": quick}
        try:
            events, wall, _, rss = _run(args, timeout, threads=threads, launcher=launcher)
        except CommandFailed as e:
            errors = [ev["message"] for ev in e.events if ev.get("event") == "error"]
            detail["failed"] = errors[-1] if errors else str(e)[-600:]
            yield Figure("train", f"{label} {preset} training throughput", None, "samples/s",
                         anchor=_anchor(n), detail=detail)
            continue
        start = next(ev for ev in events if ev["event"] == "start")
        gpu = [ev["peak_gpu_memory_gib"] for ev in events if "peak_gpu_memory_gib" in ev]
        detail.update(trainable_parameters=start["trainable_parameters"], wall_s=round(wall, 1),
                      peak_rss_mib=round(rss, 1),
                      peak_gpu_memory_gib=round(max(gpu), 2) if gpu else None)
        yield Figure("train", f"{label} {preset} training throughput",
                     throughput(events, batch), "samples/s", anchor=_anchor(n), detail=detail)
        if gpu:
            yield Figure("train", f"{label} {preset} peak GPU memory", max(gpu), "GiB",
                         anchor="torch.cuda.max_memory_allocated on the trainer's device",
                         detail=detail)
        else:
            yield Figure("train", f"{label} {preset} peak RSS", rss, "MiB",
                         anchor="the trainer's own peak resident memory", detail=detail)


def _anchor(processes: int) -> str:
    return (f"one micro-batch of the preset per process, {processes} process(es), "
            f"steps after the first {WARMUP}")
