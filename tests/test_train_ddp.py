"""`main.py train` under torchrun: two CPU processes (gloo) sharing each global batch end with
the same weights as one process running the whole batch, seeds fixed; with the from-scratch
recipe's parts (vision keypoints, Choice Policies co-training), whose heads DDP syncs too."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from store import EpisodeStore
from xr0.data.synthetic import write_episode
from xr0.model import XR0Model, preset
from xr0.train.config import train_preset
from xr0.train.rundir import TRAINING_STATE, RunDir, read_events
from xr0.train.trainer import EXIT_DONE, Trainer

ROOT = Path(__file__).resolve().parents[1]


def test_two_gloo_processes_match_one_process(tmp_path):
    torch.set_num_threads(1)
    store = tmp_path / "store"
    with EpisodeStore.open(store) as st:
        for i in range(3):
            write_episode(st, steps=30, cameras={"top": (128, 96, 25.0), "left_wrist": (128, 96, 25.0)},
                          seed=i, task="transfer the cube")
    steps, batch, micro = 3, 4, 2
    cfg = train_preset("tiny-scratch", steps=steps, batch=batch, micro_batch=micro, num_workers=0,
                       val_episodes=1, val_every=100, checkpoint_every=100, warmup_steps=0, lr=1e-3,
                       choice_weight=1.0, model_changes={"vision_keypoints": 4})
    assert Trainer(cfg, store, tmp_path / "single", episodes="all").run() == EXIT_DONE

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "main.py"), "train", "--store", str(store), "--out", str(tmp_path / "ddp"),
           "--base", "xr0-tiny", "--preset", "tiny-scratch", "--steps", str(steps), "--batch",
           str(batch), "--micro-batch", str(micro), "--workers", "0", "--val-episodes", "1",
           "--val-every", "100", "--checkpoint-every", "100", "--warmup", "0", "--lr", "1e-3",
           "--choice-weight", "1", "--vision-keypoints", "4", "--device", "cpu", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    events = read_events(tmp_path / "ddp")
    start = next(e for e in events if e["event"] == "start")
    assert start["world_size"] == 2
    # one writer: each event once
    assert [e["event"] for e in events].count("done") == 1

    single = load_file(str(RunDir(tmp_path / "single").last_checkpoint() / "model.safetensors"))
    ddp = load_file(str(RunDir(tmp_path / "ddp").last_checkpoint() / "model.safetensors"))
    assert single.keys() == ddp.keys()
    worst = max((single[k] - ddp[k]).abs().max().item() for k in single)
    print(f"max |single - ddp| = {worst:.3g}, max |trained - initial| = ", end="")
    assert worst <= 1e-5, worst
    # the Choice Policies heads too (they live in the training state, not the policy)
    heads = [torch.load(RunDir(tmp_path / n).last_checkpoint() / TRAINING_STATE,
                        weights_only=False)["choice_heads"] for n in ("single", "ddp")]
    assert max((heads[0][k] - heads[1][k]).abs().max().item() for k in heads[0]) <= 1e-5
    # and the weights did move (the comparison is not between two untouched models)
    torch.manual_seed(cfg.seed)
    initial = XR0Model.from_config(preset("xr0-tiny", vision_keypoints=4)).state_dict()
    moved = max((single[k] - initial[k]).abs().max().item() for k in single)
    print(f"{moved:.3g}")
    assert moved > 1e-4, moved
