"""Benchmarks: `python main.py bench [NAME ...] [--json]`.

Each module named in BENCHES has `run(quick: bool) -> Iterable[Figure]`. A figure is measured by
the code that yields it, never written by hand; with --json each is one line: name, value, unit,
the goal, and the anchor it is compared with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# name -> (module, what it measures)
BENCHES: dict[str, tuple[str, str]] = {
    "rig": ("bench.rig", "teleop cycles/s on emulated Dynamixel buses, control-loop period "
            "error, sim real-time factor"),
    "record": ("bench.record", "three 480x640 cameras at 30 fps streaming-encoded plus 14-d state "
               "at 50 Hz: dropped/duplicated frames, encode lag, time to finalise, MB/min"),
    "data": ("bench.data", "training samples per second from recorded episodes (frames decoded "
             "from the videos at their timestamps, resized, with action chunks), shuffled and "
             "sequential"),
    "runtime": ("bench.runtime", "async chunk execution on the sim transfer cube: success, "
                "boundary discontinuity and RMS jerk per strategy and injected delay; control-loop "
                "period error with inference running"),
    "model": ("bench.model", "XR0 inference latency through XR0Policy.infer: xr0-tiny on 2 CPU "
              "threads (p50/p95, preprocessing/prefill/denoising), xr0-4.7b in bf16 on a GPU"),
    "serve": ("bench.serve", "policy server transport on localhost: RemotePolicy round trip "
              "minus server inference (p50/p95) and bytes per request at 2 x 224x224"),
    "train": ("bench.train", "scripted sim demos of transfer cube, xr0-tiny trained from scratch on "
              "the CPU: samples/s, peak RSS, success on unseen seeded episodes vs training time; then "
              "train-gpu's figures"),
    "train-gpu": ("bench.train_gpu", "xr0-4.7b presets (lora, frozen-backbone, full; full under "
                  "FSDP over several GPUs) fine-tuned on a CUDA device: samples/s and peak GPU "
                  "memory"),
    "app": ("bench.app", "the desktop app's event-loop latency (p50/p99/max) idle, recording, "
            "recording + fine-tuning, autonomy + fine-tuning; live plot refresh rate; E-STOP "
            "press to stop applied"),
}


class BenchStopped(Exception):
    """A benchmark was stopped part-way (its work kept); the message says how to continue."""


class BenchFailed(Exception):
    """A command a benchmark ran failed; the message carries what it printed."""


@dataclass
class Figure:
    bench: str
    name: str
    value: float | None
    unit: str
    goal: str = ""
    anchor: str = ""
    met: bool | None = None  # whether the goal is met, where a goal is a threshold
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
