"""`main.py train` under torchrun: two CPU processes (gloo) sharing each global batch end with
the same weights as one process running the whole batch, seeds fixed.

- DDP, with the from-scratch recipe's parts (vision keypoints, Choice Policies co-training),
  whose heads DDP syncs too.
- FSDP, with Choice Policies off: the last text layer's output then feeds no loss while its keys
  and values feed the action expert, the case a per-layer shard must still get right. Its
  checkpoints hold whole tensors: one saved by the two processes resumes in one process, and
  one saved by one process resumes in two, each ending where the uninterrupted run ends.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from xr0.model import XR0Model, load_tokenizer, preset, save_checkpoint
from xr0.train.config import train_preset
from xr0.train.rundir import LAST_FILE, TRAINING_STATE, RunDir, read_events
from xr0.train.trainer import EXIT_DONE, Trainer

ROOT = Path(__file__).resolve().parents[1]
STEPS, BATCH, MICRO = 3, 4, 2


@pytest.fixture(scope="module")
def store(make_store):
    return make_store("dist", 3, 30)


def config(choice: float):
    return train_preset("tiny-scratch", steps=STEPS, batch=BATCH, micro_batch=MICRO, num_workers=0,
                        val_episodes=1, val_every=2, checkpoint_every=2, warmup_steps=0, lr=1e-3,
                        choice_weight=choice, model_changes={"vision_keypoints": 4})


def torchrun(store: Path, out: Path, strategy: str, choice: float, resume: bool = False):
    """The tiny-scratch run of `config(choice)` as two processes."""
    two_processes(["--store", str(store), "--out", str(out), "--base", "xr0-tiny",
                   "--preset", "tiny-scratch", "--choice-weight", str(choice),
                   "--vision-keypoints", "4", "--strategy", strategy]
                  + (["--resume"] if resume else []))


def two_processes(args: list[str]) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "main.py"), "train", *args, "--steps", str(STEPS), "--batch", str(BATCH),
           "--micro-batch", str(MICRO), "--workers", "0", "--val-episodes", "1", "--val-every",
           "2", "--checkpoint-every", "2", "--warmup", "0", "--lr", "1e-3", "--device", "cpu",
           "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-3000:])


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(RunDir(run).last_checkpoint() / "model.safetensors"))


def worst(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def rewound(run: Path, to: Path) -> Path:
    """A copy of the run as it stood at its step-2 checkpoint."""
    shutil.copytree(run, to)
    shutil.rmtree(to / "checkpoints" / f"step-{STEPS:07d}")
    (to / LAST_FILE).write_text(json.dumps({"step": 2, "path": "checkpoints/step-0000002"}))
    return to


@pytest.mark.parametrize("strategy, choice", [("ddp", 1.0), ("fsdp", 0.0)])
def test_two_gloo_processes_match_one_process(store, tmp_path, strategy, choice):
    torch.set_num_threads(1)
    cfg = config(choice)
    assert Trainer(cfg, store, tmp_path / "single", episodes="all").run() == EXIT_DONE
    torchrun(store, tmp_path / strategy, strategy, choice)

    events = read_events(tmp_path / strategy)
    start = next(e for e in events if e["event"] == "start")
    assert start["world_size"] == 2
    # one writer: each event once
    assert [e["event"] for e in events].count("done") == 1
    # validation ran on the two processes' weights and agrees with one process's
    vals = [[e for e in read_events(tmp_path / n) if e["event"] == "val"]
            for n in ("single", strategy)]
    assert [e["step"] for e in vals[1]] == [2, 3]
    assert all(abs(a["val_loss"] - b["val_loss"]) <= 1e-4 for a, b in zip(*vals))

    single = weights(tmp_path / "single")
    gap = worst(single, weights(tmp_path / strategy))
    print(f"{strategy}: max |single - two processes| = {gap:.3g}", end="")
    assert gap <= 1e-5, gap
    # and the weights did move (the comparison is not between two untouched models)
    torch.manual_seed(cfg.seed)
    initial = XR0Model.from_config(preset("xr0-tiny", vision_keypoints=4)).state_dict()
    moved = max((single[k] - initial[k]).abs().max().item() for k in single)
    print(f", max |trained - initial| = {moved:.3g}")
    assert moved > 1e-4, moved

    if strategy == "ddp":
        # the Choice Policies heads too (they live in the training state, not the policy)
        heads = [torch.load(RunDir(tmp_path / n).last_checkpoint() / TRAINING_STATE,
                            weights_only=False)["choice_heads"] for n in ("single", "ddp")]
        assert max((heads[0][k] - heads[1][k]).abs().max().item() for k in heads[0]) <= 1e-5
        return

    # FSDP's step-2 checkpoint, resumed in one process
    one = rewound(tmp_path / "fsdp", tmp_path / "fsdp_then_one")
    assert Trainer(cfg, store, one, episodes="all", resume=True).run() == EXIT_DONE
    assert worst(single, weights(one)) <= 1e-5
    # one process's step-2 checkpoint, resumed under FSDP
    two = rewound(tmp_path / "single", tmp_path / "one_then_fsdp")
    torchrun(store, two, "fsdp", choice, resume=True)
    resumed = [e for e in read_events(two) if e["event"] == "step"]
    assert resumed[-1]["step"] == STEPS and all(e["step"] > 2 for e in resumed[-1:])
    assert worst(single, weights(two)) <= 1e-5


def test_fsdp_refuses_a_partial_fine_tune_before_it_starts(store, tmp_path):
    """FSDP shards the full fine-tune; a preset that trains a part of the model is told to use
    DDP, with the bad-input status, and nothing is written."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "main.py"), "train", "--store", str(store), "--out", str(tmp_path / "run"),
           "--base", "xr0-tiny", "--preset", "frozen-backbone", "--steps", "2", "--workers", "0",
           "--strategy", "fsdp", "--device", "cpu", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert out.returncode != 0
    errors = [json.loads(line) for line in out.stdout.splitlines()
              if line.startswith("{") and '"error"' in line]
    assert errors and "use --strategy ddp" in errors[0]["message"], out.stdout[-2000:]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_fsdp_runs_the_full_preset_from_a_checkpoint_as_one_process_does(store, tmp_path):
    """The preset FSDP exists for: the full fine-tune from a checkpoint, with its per-sample
    loss weights (a no-grad generation through the sharded layers before the loss) and 4 noise
    draws per backbone pass."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    base = tmp_path / "base"
    model = XR0Model.from_config(preset("xr0-tiny"))
    save_checkpoint(model, model.cfg, base, tokenizer=load_tokenizer())
    cfg = train_preset("full", base=str(base), steps=STEPS, batch=BATCH, micro_batch=MICRO,
                       num_workers=0, val_episodes=1, val_every=2, checkpoint_every=2,
                       warmup_steps=0, lr=1e-3, image_size=(96, 128))
    assert cfg.sample_weighting and cfg.k_draws > 1
    assert Trainer(cfg, store, tmp_path / "single", episodes="all").run() == EXIT_DONE
    two_processes(["--store", str(store), "--out", str(tmp_path / "fsdp"), "--base", str(base),
                   "--preset", "full", "--image-size", "96x128", "--strategy", "fsdp"])
    single = weights(tmp_path / "single")
    gap = worst(single, weights(tmp_path / "fsdp"))
    print(f"full preset: max |single - fsdp| = {gap:.3g}")
    assert gap <= 1e-5, gap
    initial = model.state_dict()
    assert max((single[k] - initial[k]).abs().max().item() for k in single) > 1e-4
