"""The trainer on a store recorded with real videos: it learns, checkpoints what the policy
reads, resumes to the same weights, cancels cleanly, and refuses bad input with the fix."""

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from store import EpisodeStore
from xr0.data.synthetic import RIG_JOINT_NAMES, write_episode
from xr0.model import XR0Model, XR0Processor, load_checkpoint, load_tokenizer, preset
from xr0.train.augment import augment, center_crop, random_crop
from xr0.train.config import learning_rate, paper_image_size, train_preset
from xr0.train.inputs import InputBuilder
from xr0.train.rundir import TRAINING_STATE, RunDir, read_events
from xr0.train.trainer import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_DONE, Trainer

CAMS = {"top": (128, 96, 25.0), "left_wrist": (128, 96, 25.0)}
STATS_KEYS = {"norm_stats", "layout", "cameras", "view_labels", "image_size", "action_mode", "chunk",
              "center_crop"}


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_store") / "store"
    with EpisodeStore.open(root) as st:
        for i in range(4):
            write_episode(st, steps=50, cameras=CAMS, seed=i, task="transfer the cube")
        # a one-armed rig: another action layout (episode 5)
        left = RIG_JOINT_NAMES[:7]
        write_episode(st, steps=50, cameras=CAMS, seed=9, joint_names=left)
    torch.set_num_threads(1)   # 2 shared cores: a second thread only spins
    return root


def tiny(**changes):
    base = dict(steps=6, batch=4, micro_batch=2, num_workers=0, val_every=3, checkpoint_every=3,
                val_episodes=1, val_batches=1, warmup_steps=2, lr=1e-3)
    return train_preset("tiny-scratch", **{**base, **changes})


def run(cfg, store_dir, out, episodes="1-4", **kw):
    events = []
    code = Trainer(cfg, store_dir, out, episodes=episodes, on_event=events.append, **kw).run()
    return code, events


def cancel_at_step_2_and_resume(cfg, store_dir, out) -> list[dict]:
    """A run cancelled once step 2 is done, then resumed to its end; the resumed run's events."""
    trainer = Trainer(cfg, store_dir, out, episodes="1-4")
    trainer.on_event = lambda e: setattr(trainer, "cancel_requested", e.get("step") == 2 or
                                         trainer.cancel_requested)
    assert trainer.run() == EXIT_CANCELLED
    assert RunDir(out).last_checkpoint().name == "step-0000002"
    code, events = run(cfg, store_dir, out, resume=True)
    assert code == EXIT_DONE and events[0]["step"] == 2
    return events


def test_loss_decreases_and_checkpoint_reads_back(store_dir, tmp_path):
    cfg = tiny(steps=40, val_every=40, checkpoint_every=20, lr=3e-3, k_draws=4, micro_batch=4)
    code, events = run(cfg, store_dir, tmp_path / "run")
    assert code == EXIT_DONE, events[-1]
    losses = [e["loss"] for e in events if e["event"] == "step"]
    assert len(losses) == 40
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10]), losses
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and "val" in kinds
    val = next(e for e in events if e["event"] == "val")
    assert set(val["action_error_per_joint"]) == set(RIG_JOINT_NAMES) and val["action_error"] > 0
    # the event log holds the same events
    assert [e["event"] for e in read_events(tmp_path / "run")] == kinds

    ckpt = RunDir(tmp_path / "run").last_checkpoint()
    assert ckpt.name == "step-0000040"
    model, mcfg, tok, stats = load_checkpoint(ckpt)
    assert tok is not None and set(stats) == STATS_KEYS
    assert stats["cameras"] == ["top", "left_wrist"] and stats["image_size"] == [96, 128]
    assert stats["view_labels"] == ["Ego View", "Left-Wrist View"] and stats["chunk"] == 30
    assert stats["layout"]["joint_names"] == list(RIG_JOINT_NAMES)
    assert stats["center_crop"] == cfg.crop_scale  # trained on random crops: infer on the centre
    assert stats["norm_stats"]["episodes"] == [1, 2, 3]
    assert mcfg.image_size == (96, 128) and mcfg.view_labels == ("Ego View", "Left-Wrist View")
    with EpisodeStore.open(store_dir) as st:
        row = [r for r in st.runs("finetune") if r["paths"]["run_dir"] == str((tmp_path / "run").resolve())][0]
    assert row["status"] == "done" and row["paths"]["checkpoint"] == str(ckpt.resolve())

    # the run folder is a policy: its newest checkpoint acts on the rig's 14 joints
    from xr0.policy import XR0Policy

    policy = XR0Policy.from_checkpoint(tmp_path / "run")
    assert policy.center_crop == cfg.crop_scale
    images = {c: np.zeros((96, 128, 3), np.uint8) for c in ("top", "left_wrist")}
    chunk = policy.infer(images, np.zeros(len(RIG_JOINT_NAMES)), "transfer the cube", seed=0)
    assert chunk.shape == (30, len(RIG_JOINT_NAMES)) and np.isfinite(chunk).all()


def test_resume_after_cancel_equals_uninterrupted_run(store_dir, tmp_path):
    cfg = tiny(steps=4, checkpoint_every=100, val_episodes=0)
    assert run(cfg, store_dir, tmp_path / "a")[0] == EXIT_DONE

    events = cancel_at_step_2_and_resume(cfg, store_dir, tmp_path / "b")
    assert [e["step"] for e in events if e["event"] == "step"] == [3, 4]

    a = load_file(str(RunDir(tmp_path / "a").last_checkpoint() / "model.safetensors"))
    b = load_file(str(RunDir(tmp_path / "b").last_checkpoint() / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_cancel_request_in_the_run_folder_stops_the_run_and_a_stale_one_does_not(store_dir,
                                                                                   tmp_path):
    """The request file (how the app cancels a run under any launcher): one written after the
    trainer started stops it after a step, cancelled, with a checkpoint, and is removed; one
    left from before the trainer started is ignored, and the run resumes to its end."""
    out = tmp_path / "run"
    trainer = Trainer(tiny(steps=6, checkpoint_every=100, val_episodes=0), store_dir, out,
                      episodes="1-4")
    trainer.on_event = lambda e: (RunDir(out).request_cancel()
                                  if e.get("event") == "step" and e["step"] == 2 else None)
    assert trainer.run() == EXIT_CANCELLED
    assert RunDir(out).last_checkpoint().name == "step-0000002"
    assert not RunDir(out).cancel_requested()
    RunDir(out).request_cancel()                  # stale: older than the next trainer
    stale = (out / "cancel.request").stat().st_mtime
    os.utime(out / "cancel.request", (stale - 5, stale - 5))
    code, events = run(tiny(steps=6, checkpoint_every=100, val_episodes=0), store_dir, out,
                       resume=True)
    assert code == EXIT_DONE and events[-1]["event"] == "done" and events[-1]["step"] == 6
    assert not (out / "cancel.request").exists()


def test_a_frame_lag_run_trains_on_older_frames_and_resumes_exactly(store_dir, tmp_path):
    """--frame-lag: the frames' extra age is drawn from each sample's global number, so a run cut
    short and resumed ends with the uninterrupted run's weights; and it reaches training (the
    weights differ from an unlagged run's)."""
    from xr0.train import distributed
    from xr0.train.selection import StepBatches

    cfg = tiny(steps=4, checkpoint_every=100, val_episodes=0, frame_lag=3)
    batches = list(StepBatches(100, cfg, distributed.DistInfo(), 0))
    assert all(isinstance(i, int) and isinstance(d, int) for b in batches for i, d in b)
    assert run(cfg, store_dir, tmp_path / "a")[0] == EXIT_DONE
    assert run(cfg.replace(frame_lag=0), store_dir, tmp_path / "plain")[0] == EXIT_DONE

    cancel_at_step_2_and_resume(cfg, store_dir, tmp_path / "b")

    a, b, plain = (load_file(str(RunDir(tmp_path / n).last_checkpoint() / "model.safetensors"))
                   for n in ("a", "b", "plain"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], plain[k]) for k in a)
    with pytest.raises(ValueError, match="--frame-lag"):
        tiny(frame_lag=-1)
    with pytest.raises(ValueError, match="--frame-lag-p"):
        tiny(frame_lag=3, frame_lag_p=0.0)
    with pytest.raises(ValueError, match="give --frame-lag N"):
        tiny(frame_lag_p=0.5)


def test_choice_policies_co_train_the_backbone_and_resume_exactly(store_dir, tmp_path):
    """--choice-weight: the backbone's Choice Policies loss joins flow matching (its L1 is
    reported and falls), the heads reach the backbone, stay out of the policy's checkpoint, and
    a run cut short and resumed ends with the uninterrupted run's weights and heads."""
    from xr0.policy import XR0Policy

    cfg = tiny(steps=4, checkpoint_every=100, val_episodes=0, choice_weight=1.0)
    code, events = run(cfg, store_dir, tmp_path / "a")
    assert code == EXIT_DONE
    steps = [e for e in events if e["event"] == "step"]
    assert all("choice_l1" in e and e["choice_l1"] > 0 for e in steps)
    assert run(cfg.replace(choice_weight=0.0), store_dir, tmp_path / "plain")[0] == EXIT_DONE

    cancel_at_step_2_and_resume(cfg, store_dir, tmp_path / "b")

    a, b, plain = (load_file(str(RunDir(tmp_path / n).last_checkpoint() / "model.safetensors"))
                   for n in ("a", "b", "plain"))
    assert a.keys() == plain.keys()                      # the heads are not part of the policy
    assert all(torch.equal(a[k], b[k]) for k in a)
    vision = [k for k in a if k.startswith("vlm.model.visual.")]
    assert not all(torch.equal(a[k], plain[k]) for k in vision)   # it reached the backbone
    heads_a, heads_b = (torch.load(RunDir(tmp_path / n).last_checkpoint() / TRAINING_STATE,
                                   weights_only=False)["choice_heads"] for n in ("a", "b"))
    assert heads_a.keys() == heads_b.keys() and all(torch.equal(heads_a[k], heads_b[k])
                                                    for k in heads_a)
    assert XR0Policy.from_checkpoint(tmp_path / "a") is not None

    # a longer run: the backbone's own chunk regression improves
    code, events = run(tiny(steps=30, checkpoint_every=100, val_episodes=0, choice_weight=1.0,
                            lr=3e-3), store_dir, tmp_path / "long")
    l1 = [e["choice_l1"] for e in events if e["event"] == "step"]
    assert code == EXIT_DONE and np.mean(l1[-5:]) < 0.8 * np.mean(l1[:5]), l1
    with pytest.raises(ValueError, match="--choice-weight"):
        tiny(choice_weight=-1.0)
    with pytest.raises(ValueError, match="freezes"):
        train_preset("frozen-backbone", choice_weight=1.0)


def test_lora_preset_saves_merged_official_names(store_dir, tmp_path):
    cfg = train_preset("lora", base="xr0-tiny", steps=2, batch=2, micro_batch=2, num_workers=0,
                       val_every=100, checkpoint_every=100, val_episodes=1, image_size=(96, 128),
                       cameras=("top", "left_wrist"), chunk=10, lr=1e-2, warmup_steps=0,
                       sample_weighting=True, model_changes={})
    code, events = run(cfg, store_dir, tmp_path / "lora")
    assert code == EXIT_DONE, events[-1]
    start = events[0]
    assert 0 < start["trainable_parameters"] < 1_000_000
    model, mcfg, _, stats = load_checkpoint(RunDir(tmp_path / "lora").last_checkpoint())
    assert stats["chunk"] == 10
    assert not any("lora" in k for k in model.state_dict())


@pytest.mark.parametrize("preset_name", ["lora", "frozen-backbone"])
def test_bf16_holds_a_frozen_backbone_in_bf16_and_trains_the_rest_in_fp32(store_dir, tmp_path,
                                                                         preset_name):
    """--precision bf16 (the default on CUDA; here on the CPU's bf16 autocast): the frozen
    backbone's weights are bf16, what trains is fp32 and moves, and the checkpoint loads."""
    cfg = train_preset(preset_name, base="xr0-tiny", steps=2, batch=2, micro_batch=2,
                       num_workers=0, val_every=100, checkpoint_every=100, val_episodes=1,
                       image_size=(96, 128), cameras=("top", "left_wrist"), chunk=10, lr=1e-2,
                       warmup_steps=0, model_changes={}, precision="bf16")
    trainer = Trainer(cfg, store_dir, tmp_path / "run", episodes="1-4")
    assert trainer.run() == EXIT_DONE
    params = dict(trainer.model.named_parameters())
    frozen = {n: p for n, p in params.items() if not p.requires_grad}
    trained = {n: p for n, p in params.items() if p.requires_grad}
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen.values())
    assert trained and all(p.dtype == torch.float32 for p in trained.values())
    assert all(n.startswith("vlm.") for n in frozen)
    steps = [e for e in read_events(tmp_path / "run") if e["event"] == "step"]
    assert all(np.isfinite(e["loss"]) for e in steps)
    model, *_ = load_checkpoint(RunDir(tmp_path / "run").last_checkpoint())
    assert not any("lora" in k for k in model.state_dict())
    torch.manual_seed(cfg.seed)
    initial = XR0Model.from_config(preset("xr0-tiny")).state_dict()
    saved = model.state_dict()
    dit = [k for k in saved if k.startswith("dit.")]
    assert dit and max((saved[k] - initial[k]).abs().max().item() for k in dit) > 1e-4
    # a full fine-tune keeps every weight fp32 (its frozen token embeddings too)
    full = Trainer(tiny(precision="bf16"), store_dir, tmp_path / "full", episodes="1-4")
    full.setup()
    assert all(p.dtype == torch.float32 for p in full.model.parameters())


def test_bad_input_is_refused_before_the_run(store_dir, tmp_path):
    def message(cfg, out, episodes="1-4", **kw):
        code, events = run(cfg, store_dir, out, episodes=episodes, **kw)
        assert code == EXIT_BAD_INPUT and events[-1]["event"] == "error"
        return events[-1]["message"]

    assert "selection is empty" in message(tiny(), tmp_path / "x", episodes=" , ")
    assert "1,3,5-9" in message(tiny(), tmp_path / "x", episodes="1-x")
    assert "not complete episodes" in message(tiny(), tmp_path / "x", episodes="1,77")
    msg = message(tiny(), tmp_path / "x", episodes="1,5")
    assert "different action layouts" in msg and "only the first has" in msg
    assert "does not exist" in message(tiny(base=str(tmp_path / "nope")), tmp_path / "x")
    assert "--val-episodes" in message(tiny(val_episodes=2), tmp_path / "x", episodes="1,2")
    assert "--cameras" in message(tiny(cameras=("top", "belly")), tmp_path / "x")
    assert "multiple of 32" in message(tiny(image_size=(100, 128)), tmp_path / "x")
    assert "--resume" in message(tiny(), tmp_path / "x", resume=True)
    assert not (tmp_path / "x").exists()       # nothing was started
    # a folder holding another run
    RunDir(tmp_path / "taken").write({"run_id": 99})
    assert "already holds a run" in message(tiny(), tmp_path / "taken")
    assert json.loads((tmp_path / "taken" / "run.json").read_text()) == {"run_id": 99}
    with pytest.raises(ValueError, match="--chunk"):
        tiny(chunk=1)


def test_batched_inputs_equal_the_processor():
    cfg = preset("xr0-tiny", image_size=(64, 96))
    proc = XR0Processor(load_tokenizer(), cfg)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (3, 2, 64, 96, 3), dtype=np.uint8)
    texts = ["transfer the cube.", "pick up the cube and place it.", "transfer the cube."]
    ref = proc([list(v) for v in imgs], texts)
    got = InputBuilder(proc, (64, 96))(torch.from_numpy(imgs), texts)
    for name in ("input_ids", "attention_mask", "image_grid_thw", "position_ids", "pixel_values"):
        assert torch.equal(getattr(ref, name), getattr(got, name)), name


def test_augmentation_is_seeded_and_bounded():
    x = torch.rand(6, 3, 32, 48)
    a = augment(x, torch.Generator().manual_seed(1))
    b = augment(x, torch.Generator().manual_seed(1))
    c = augment(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert not torch.allclose(a, x, atol=1e-3)
    # without crop and with p = 0 nothing changes
    assert torch.allclose(augment(x, torch.Generator().manual_seed(1), crop_scale=1.0, p=0.0), x)


def test_inference_crop_puts_the_scene_where_training_crops_put_it_on_average():
    # a one-pixel dot: random crops move it around its centre-crop place, and the centre crop
    # scales it about the image centre as every training crop does (not 1/scale times smaller)
    x = torch.zeros(1, 3, 96, 128)
    x[0, 0, 20, 100] = 1.0
    def where(img):
        w = img[0, 0]
        ys, xs = torch.meshgrid(torch.arange(96.0), torch.arange(128.0), indexing="ij")
        return float((w * ys).sum() / w.sum()), float((w * xs).sum() / w.sum())
    gen = torch.Generator().manual_seed(0)
    crops = [where(random_crop(x, 0.95, gen)) for _ in range(400)]
    mean = np.mean(crops, axis=0)
    centre = where(center_crop(x, 0.95))
    assert np.allclose(mean, centre, atol=0.5), (mean, centre)
    assert abs(centre[1] - 100) > 1.0   # the crop does move it: inference must take it too
    assert torch.equal(center_crop(x, 1.0), x)


def test_schedule_and_image_size_rule():
    cfg = train_preset("full", steps=1000, warmup_steps=100, lr=1e-4, lr_floor=5e-7)
    assert learning_rate(cfg, 0) == pytest.approx(5e-7)
    assert learning_rate(cfg, 100) == pytest.approx(1e-4)
    assert learning_rate(cfg, 550) == pytest.approx((1e-4 + 5e-7) / 2)
    assert learning_rate(cfg, 1000) == pytest.approx(5e-7)
    h, w = paper_image_size(480, 640)
    assert h % 32 == 0 and w % 32 == 0 and h * w <= 90_000 and (h, w) == (256, 320)


def test_out_of_memory_fails_with_the_fix_and_keeps_the_run(store_dir, tmp_path):
    """A micro-batch that cannot fit: the trainer process (its address space capped at 4 GiB)
    reports out of memory with what to change, as a failed run, without a traceback."""
    import resource
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    limit = 4 << 30

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    out = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "main.py", "train", "--store", str(store_dir), "--out", str(out),
         "--episodes", "1-4", "--base", "xr0-tiny", "--preset", "tiny-scratch", "--steps", "2",
         "--batch", "4096", "--micro-batch", "4096", "--val-episodes", "1", "--workers", "0",
         "--json"],
        cwd=root, capture_output=True, text=True, timeout=300, preexec_fn=cap,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    events = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert r.returncode != 0 and events[-1]["event"] == "error", (r.stdout[-2000:], r.stderr[-2000:])
    msg = events[-1]["message"]
    assert msg.startswith("out of memory at step 0") and "--micro-batch" in msg, msg
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    from app.core.jobs import find_runs

    (run,) = [r for r in find_runs(store_dir) if r.run_dir == out.resolve()]
    assert run.status == "failed"


def test_keep_checkpoints_flag_keeps_every_checkpoint(store_dir, tmp_path):
    """`--keep-checkpoints 0` keeps them all (a success-vs-training-time curve evaluates earlier
    ones); the default keeps the newest three."""
    from app.cli import build_parser
    from app.cli.train import _config

    def cfg(*extra):
        args = build_parser().parse_args(["train", "--store", str(store_dir), "--out",
                                          str(tmp_path / "r"), *extra])
        return _config(args)

    assert cfg().keep_checkpoints == 3
    every = cfg("--keep-checkpoints", "0", "--preset", "tiny-scratch")
    assert every.keep_checkpoints == 0
    code, _ = run(tiny(steps=4, checkpoint_every=1, keep_checkpoints=every.keep_checkpoints),
                  store_dir, tmp_path / "all")
    assert code == EXIT_DONE
    assert [p.name for p in RunDir(tmp_path / "all").checkpoints()] == [
        f"step-{i:07d}" for i in (1, 2, 3, 4)]


def test_state_dropout_zeroes_a_share_of_the_states_and_only_in_training(store_dir, tmp_path):
    from xr0.data.dataset import collate

    with pytest.raises(ValueError, match="state-dropout"):
        tiny(state_dropout=1.0)
    tr = Trainer(tiny(state_dropout=0.5), store_dir, tmp_path / "run", episodes="1-4")
    tr.setup()
    batch = collate([tr.train_ds[i] for i in range(0, len(tr.train_ds), max(1, len(tr.train_ds) // 64))])
    _, state, _, _ = tr._tensors(batch, torch.Generator().manual_seed(0), augment=True)
    zeroed = (state.abs().sum(-1) == 0).float().mean().item()
    assert 0.3 < zeroed < 0.7, zeroed
    _, state, _, _ = tr._tensors(batch, torch.Generator().manual_seed(0), augment=False)
    assert (state.abs().sum(-1) > 0).all()   # validation and inference see every state


def test_state_noise_perturbs_the_state_input_only_in_training(store_dir, tmp_path):
    from xr0.data.dataset import collate

    with pytest.raises(ValueError, match="--state-noise"):
        tiny(state_noise=-0.1)
    tr = Trainer(tiny(state_noise=0.05), store_dir, tmp_path / "run", episodes="1-4")
    tr.setup()
    batch = collate([tr.train_ds[i] for i in range(0, len(tr.train_ds), max(1, len(tr.train_ds) // 64))])
    clean = tr.layout.to_model(batch["state"].float())
    _, noisy, actions, _ = tr._tensors(batch, torch.Generator().manual_seed(0), augment=True)
    real = torch.from_numpy(tr.layout.mask)                 # the rig's own joints, not the padding
    diff = (noisy - clean)[:, real]
    assert 0.04 < diff.std().item() < 0.06, diff.std()
    assert (noisy - clean)[:, ~real].abs().max() == 0       # padding stays zero
    _, plain, targets, _ = tr._tensors(batch, torch.Generator().manual_seed(0), augment=False)
    assert torch.equal(plain, clean)                         # validation and inference: exact
    assert torch.equal(actions, targets)                     # the targets are never perturbed


def test_crop_scale_one_keeps_every_view_in_place_and_the_policy_infers_uncropped(store_dir, tmp_path):
    from app.cli.train import _config, register
    from xr0.data.dataset import collate
    from xr0.policy import XR0Policy

    with pytest.raises(ValueError, match="--crop-scale"):
        tiny(crop_scale=0.3)
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["train", "--store", "s", "--out", "o", "--preset", "tiny-scratch",
                              "--crop-scale", "1"])
    assert _config(args).crop_scale == 1.0

    def pixels(cfg):
        tr = Trainer(cfg, store_dir, tmp_path / f"probe{cfg.crop_scale}", episodes="1-4")
        tr.setup()
        batch = collate([tr.train_ds[i] for i in range(4)])
        seen = tr._tensors(batch, torch.Generator().manual_seed(0), augment=True)[0].pixel_values
        return seen, tr._tensors(batch, None, augment=False)[0].pixel_values

    seen, plain = pixels(tiny(crop_scale=1.0, jitter_p=0.0))
    assert torch.allclose(seen, plain, atol=1e-5)          # no crop, no jitter: the frames as stored
    seen, plain = pixels(tiny(crop_scale=0.95, jitter_p=0.0))
    assert not torch.allclose(seen, plain, atol=1e-2)      # the default crop moves them
    code, events = run(tiny(steps=2, val_every=2, checkpoint_every=2, crop_scale=1.0), store_dir,
                       tmp_path / "run")
    assert code == EXIT_DONE, events[-1]
    assert XR0Policy.from_checkpoint(tmp_path / "run").center_crop == 1.0


@pytest.mark.parametrize("flags, changes", [
    (["--vision-stem", "conv"], {"vision_stem": "conv"}),
    (["--vision-keypoints", "8"], {"vision_keypoints": 8}),
])
def test_a_vision_change_from_scratch_infers_and_a_checkpoint_base_refuses_it(
        store_dir, tmp_path, flags, changes):
    import argparse

    from app.cli.train import _config, register
    from xr0.model.keypoints import SpatialKeypoints
    from xr0.model.stem import ConvPatchStem
    from xr0.policy import XR0Policy

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["train", "--store", "s", "--out", "o", "--preset", "tiny-scratch",
                              "--base", "xr0-tiny", *flags])
    cfg = _config(args)
    assert cfg.model_changes == changes
    code, events = run(tiny(steps=2, val_every=2, checkpoint_every=2, model_changes=changes),
                       store_dir, tmp_path / "run")
    assert code == EXIT_DONE, events[-1]
    ckpt = RunDir(tmp_path / "run").last_checkpoint()
    _, mcfg, _, _ = load_checkpoint(ckpt)
    assert all(getattr(mcfg, k) == v for k, v in changes.items())
    policy = XR0Policy.from_checkpoint(tmp_path / "run")
    visual = policy.model.vlm.model.visual
    assert isinstance(visual.patch_embed, ConvPatchStem) == ("vision_stem" in changes)
    assert isinstance(getattr(visual, "keypoints", None), SpatialKeypoints) == (
        "vision_keypoints" in changes)
    images = {c: np.zeros((96, 128, 3), np.uint8) for c in ("top", "left_wrist")}
    chunk = policy.infer(images, np.zeros(len(RIG_JOINT_NAMES)), "transfer the cube", seed=0)
    assert chunk.shape == (30, len(RIG_JOINT_NAMES)) and np.isfinite(chunk).all()
    # a checkpoint holds its own model: asking for another tower is refused before training
    code, events = run(tiny(base=str(ckpt), model_changes={"vision_stem": "patch"}), store_dir,
                       tmp_path / "again")
    assert code == EXIT_BAD_INPUT and "cannot change" in events[-1]["message"], events[-1]


def test_a_chunk_length_is_kept_by_the_checkpoint_and_a_continued_run(store_dir, tmp_path):
    import argparse

    from app.cli.train import _config, register
    from xr0.policy import XR0Policy

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["train", "--store", "s", "--out", "o", "--chunk", "12"])
    assert _config(args).chunk == 12
    code, events = run(tiny(steps=2, val_every=2, checkpoint_every=2, chunk=12), store_dir,
                       tmp_path / "run")
    assert code == EXIT_DONE, events[-1]
    ckpt = RunDir(tmp_path / "run").last_checkpoint()
    assert load_checkpoint(ckpt)[1].action_length == 12
    policy = XR0Policy.from_checkpoint(tmp_path / "run")
    images = {c: np.zeros((96, 128, 3), np.uint8) for c in ("top", "left_wrist")}
    chunk = policy.infer(images, np.zeros(len(RIG_JOINT_NAMES)), "transfer the cube", seed=0)
    assert chunk.shape == (12, len(RIG_JOINT_NAMES))
    # continued without --chunk: the base's horizon, not the preset's 30
    code, events = run(tiny(steps=2, val_every=2, checkpoint_every=2, chunk=None,
                            base=str(ckpt)), store_dir, tmp_path / "more")
    assert code == EXIT_DONE, events[-1]
    more = RunDir(tmp_path / "more").last_checkpoint()
    assert load_checkpoint(more)[1].action_length == 12
    assert json.loads((more / "stats.json").read_text())["chunk"] == 12


def test_the_policy_check_scripts_run_on_a_trained_run(store_dir, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    code, events = run(tiny(steps=2, val_every=2, checkpoint_every=2), store_dir, tmp_path / "run")
    assert code == EXIT_DONE, events[-1]
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "scripts/image_sensitivity.py"), "--policy",
                          str(tmp_path / "run"), "--store", str(store_dir), "--episodes", "1-3",
                          "--steps", "5,20", "--per-joint"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.strip().splitlines() if ln.startswith("step")]
    assert [ln.split(":")[0] for ln in lines] == ["step    5", "step   20"], out.stdout
    assert sum("right_waist" in ln for ln in out.stdout.splitlines()) == 2  # --per-joint
    ratios = [float(ln.rsplit("ratio", 1)[1]) for ln in lines]
    assert all(r >= 0 for r in ratios)
    out = subprocess.run([sys.executable, str(root / "scripts/open_loop.py"), "--policy",
                          str(tmp_path / "run"), "--store", str(store_dir), "--episode", "2",
                          "--every", "20"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "median step-to-step change inside a chunk" in out.stdout


def test_ema_averages_the_weights_with_a_warm_up():
    from xr0.train.ema import EMA

    lin = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(0.0)
    ema = EMA(lin, 0.5)
    expected = 0.0
    for v in (1.0, 2.0, 3.0, 4.0):
        with torch.no_grad():
            lin.weight.fill_(v)
        d = ema.current_decay()
        ema.update()
        expected = d * expected + (1 - d) * v
    assert [round(min(0.5, (1 + n) / (10 + n)), 6) for n in range(4)] == [0.1, 0.181818, 0.25,
                                                                         0.307692]
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), expected))
    with ema.applied():
        assert torch.allclose(lin.weight, torch.full((1, 2), expected))
    assert torch.equal(lin.weight, torch.full((1, 2), 4.0))        # its own weights again
    with pytest.raises(ValueError, match="--ema"):
        EMA(lin, 1.0)


def test_an_ema_run_checkpoints_the_average_and_resumes_exactly(store_dir, tmp_path):
    cfg = tiny(steps=4, checkpoint_every=100, val_episodes=1, val_every=4, ema_decay=0.9)
    code, events = run(cfg, store_dir, tmp_path / "a")
    assert code == EXIT_DONE
    ckpt = RunDir(tmp_path / "a").last_checkpoint()
    saved = load_file(str(ckpt / "model.safetensors"))
    training = torch.load(ckpt / "training_state.pt", weights_only=False)
    raw, avg = training["raw"], training["ema"]["shadow"]
    assert training["ema"]["updates"] == 4 and set(raw) == set(avg)
    moved = [k for k in raw if not torch.equal(raw[k], avg[k])]
    assert moved                                               # the average lags the weights
    for k in moved:
        assert torch.equal(saved[k], avg[k])                   # the checkpoint is the average
    # validation reads the average too: a plain run's last weights validate differently
    plain = tiny(steps=4, checkpoint_every=100, val_episodes=1, val_every=4)
    _, plain_events = run(plain, store_dir, tmp_path / "plain")
    val = [e["val_loss"] for e in events if e["event"] == "val"]
    plain_val = [e["val_loss"] for e in plain_events if e["event"] == "val"]
    assert val and val != plain_val

    cancel_at_step_2_and_resume(cfg, store_dir, tmp_path / "b")
    b = load_file(str(RunDir(tmp_path / "b").last_checkpoint() / "model.safetensors"))
    assert all(torch.equal(saved[k], b[k]) for k in saved)    # average and weights resumed
    with pytest.raises(ValueError, match="--ema"):
        tiny(ema_decay=1.0)
