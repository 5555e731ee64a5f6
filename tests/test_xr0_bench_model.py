"""`bench model` in quick mode: real figures from XR0Policy.infer, and no 4.7B figure invented
without a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_bench_model_quick_prints_measured_figures():
    out = subprocess.run([sys.executable, "main.py", "bench", "model", "--quick", "--json"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    figs = {f["name"]: f for f in map(json.loads, out.stdout.splitlines()) if f.get("bench") == "model"}
    assert {"tiny.latency_p50", "tiny.latency_p95", "tiny.preprocess_p50", "tiny.prefill_p50",
            "tiny.denoise_p50", "4.7b.latency_p50"} <= set(figs)
    p50 = figs["tiny.latency_p50"]
    assert 0 < p50["value"] <= figs["tiny.latency_p95"]["value"] and p50["unit"] == "ms"
    assert p50["met"] == (p50["value"] <= 50.0)
    parts = sum(figs[f"tiny.{k}_p50"]["value"] for k in ("preprocess", "prefill", "denoise"))
    assert 0.5 * p50["value"] < parts < 2.0 * p50["value"]
    if not torch.cuda.is_available():
        big = figs["4.7b.latency_p50"]
        assert big["value"] is None and big["met"] is None and "no CUDA" in big["detail"]["not_measured"]
