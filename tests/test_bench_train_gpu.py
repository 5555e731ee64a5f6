"""The xr0-4.7b presets' fine-tuning bench (bench/train_gpu.py) runs its whole path on the CPU
with xr0-tiny in the 4.7B config's form (three views, the tiny tokenizer's ids): a random-weight
bf16 base checkpoint, synthetic three-camera episodes, `main.py train` per preset, the full
fine-tune under torchrun with FSDP over two processes, and the figures from the trainers'
events."""

from pathlib import Path

import pytest

from bench import train_gpu
from bench.model import big_config
from bench.train_gpu import throughput


def test_every_preset_trains_from_a_random_base_and_reports_its_figures(tmp_path):
    cfg = big_config("xr0-tiny").replace(image_size=(64, 96))
    figs = {f.name: f for f in train_gpu.run_presets(
        cfg, "xr0-tiny", "cpu", Path(tmp_path), steps=4, processes=2, episodes=3, frames=30,
        workers=0, threads=1, timeout=300)}
    for preset in ("lora", "frozen-backbone", "full"):
        fig = figs[f"xr0-tiny {preset} training throughput"]
        assert fig.value is not None and fig.value > 0, fig.detail
        assert fig.detail["trainable_parameters"] > 0
        assert fig.detail["cameras"] == "3 x 64x96"
        assert figs[f"xr0-tiny {preset} peak RSS"].value > 100      # no GPU: the trainer's RSS
    full = figs["xr0-tiny full training throughput"].detail
    assert (full["strategy"], full["processes"], full["batch"]) == ("fsdp", 2, 16)
    lora = figs["xr0-tiny lora training throughput"].detail
    assert (lora["strategy"], lora["processes"], lora["batch"]) == ("single process", 1, 4)
    # a partial fine-tune trains fewer weights than the full one
    assert lora["trainable_parameters"] < full["trainable_parameters"]


def test_without_a_gpu_each_preset_says_it_was_not_measured():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    figs = list(train_gpu.run(quick=True))
    assert [f.name for f in figs] == [f"xr0-4.7b {p} training throughput"
                                      for p in ("lora", "frozen-backbone", "full")]
    assert all(f.value is None and "no CUDA device" in f.detail["not_measured"] for f in figs)
    # what each preset trains and holds, counted on the 4.7B shapes
    lora, frozen, full = (f.detail for f in figs)
    assert frozen["trainable_parameters"] < lora["trainable_parameters"] < \
        full["trainable_parameters"] < full["parameters"]
    assert 4.5e9 < full["parameters"] < 5e9
    # the LoRA run's weights, gradients and AdamW moments leave room on a 24 GB GPU; the full
    # fine-tune's need FSDP
    assert lora["weights_grads_adam_gib"] < 16 < 60 < full["weights_grads_adam_gib"]


def test_throughput_counts_the_steps_after_the_warm_up():
    events = [{"event": "start"}] + [{"event": "step", "step": s, "time": t}
                                     for s, t in [(1, 10.0), (2, 12.0), (3, 12.5), (4, 13.0)]]
    assert throughput(events, batch=8, warmup=2) == pytest.approx(2 * 8 / 1.0)
    assert throughput(events[:2], batch=8) is None
