"""XR0 as a robot policy: camera frames, a state and an instruction in rig units, an action chunk
out in rig units.

    policy = XR0Policy.from_checkpoint("runs/7/checkpoint")          # the workstation's own
    policy = XR0Policy.from_checkpoint("Xiaomi-Robotics-0-LIBERO", robot_type="libero_all")
    actions = policy.infer({"cam_high": img0, "cam_left_wrist": img1}, state, "transfer the cube")

One call: the processor builds the prompt and image tokens; the rig's state goes into the 32-d
model layout (normalised with the checkpoint's statistics; released checkpoints take it raw,
zero-padded); the backbone is prefilled once and its KV cache serves every denoising step; the
clean prefix is held fixed; the chunk is unnormalised and mapped back to the rig's dims.

The workstation's own checkpoint directory (xr0.model.save_checkpoint) carries in stats.json
what the trainer writes:

    {"norm_stats":  NormStats.to_dict(),           required; joint names, action mode, H;
                                                   extra {"normalization": "mean_std" |
                                                   "quantile", "state": "raw" | "normalized"}
     "layout":      ActionLayout.to_dict(),        optional; must agree with norm_stats' joints
     "cameras":     ["cam_high", ...],             required; camera names in view order
     "view_labels": ["Ego View", ...],             optional; must equal the config's
     "action_mode": "absolute" | "delta",          optional; must agree with norm_stats
     "image_size":  [h, w],                        optional; frames are resized to it (PIL
                                                   bilinear, as the training dataset does)
     "chunk":       T,                             optional, default config action_length
     "camera_sizes": {"cam_high": [h, w], ...},    optional; frames must arrive at these sizes
     "async_post_trained": bool}                   optional, default: config rule is "lambda"

The state enters the model raw (zero-padded into the 32-d layout, as the released checkpoints
take it) unless norm_stats.extra["state"] is "normalized"; actions are normalised per chunk
position with the statistics' normalisation ("mean_std" by default).

Instructions get the trailing "." of the official clients when they lack one (format_instruction).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from xr0.data.chunks import to_absolute
from xr0.data.layout import MODEL_DIM, ActionLayout
from xr0.data.stats import NormStats
from xr0.model.checkpoint import load_checkpoint
from xr0.model.config import XR0Config
from xr0.model.official import is_official_checkpoint, load_official
from xr0.model.processor import XR0Processor
from xr0.model.xr0 import XR0Model
from xr0.runtime import rtc
from xr0.runtime.policy import Observation
from xr0.train.augment import center_crop
from xr0.train.rundir import LAST_FILE, RunDir


class PolicyInputError(ValueError):
    """An observation or a checkpoint does not fit the policy; the message names the mismatch."""


def format_instruction(text: str) -> str:
    """The instruction as the model was trained on it: stripped, with a trailing '.'."""
    text = text.strip()
    return text if text.endswith(".") else text + "."


# -- action spaces: rig units <-> the model's normalised 32-d layout ---------------------------

class NormStatsSpace:
    """The workstation's checkpoints: the rig's named dims, normalised with NormStats (states by
    the state statistics, action chunk position k by the position-k statistics)."""

    def __init__(self, stats: NormStats, layout: ActionLayout, chunk_length: int,
                 normalization: str = "mean_std", state_input: str = "raw"):
        if state_input not in ("raw", "normalized"):
            raise PolicyInputError(f"unknown state input {state_input!r} in the statistics' extra; "
                                   "expected 'raw' or 'normalized'")
        self.stats, self.layout, self.mode = stats, layout, normalization
        self.state_input = state_input
        self.chunk_length = chunk_length
        self.state_dim = self.action_dim = layout.dim
        self.action_mask = np.broadcast_to(layout.mask, (chunk_length, MODEL_DIM)).copy()

    def state_to_model(self, state: np.ndarray) -> np.ndarray:
        if self.state_input == "raw":
            return self.layout.to_model(state)
        return self.layout.to_model(self.stats.normalize_state(state, self.mode))

    def actions_to_model(self, actions: np.ndarray, state: np.ndarray) -> np.ndarray:
        """(h, D) rig actions -> (h, 32) normalised (made relative to state in delta mode)."""
        relative = actions - state[None, :] * self.stats.delta_mask
        return self.layout.to_model(self.stats.normalize_actions(relative, self.mode))

    def actions_from_model(self, y: np.ndarray, state: np.ndarray) -> np.ndarray:
        chunk = self.stats.unnormalize_actions(self.layout.from_model(y), self.mode)
        return to_absolute(chunk, state, self.stats.delta_mask)


class OfficialSpace:
    """Released checkpoints: the state goes in raw, zero-padded to 32 (or placed by a layout);
    actions are (a - mean) / std per chunk position on the dims whose std > 1e-5. Without a
    layout the rig's actions are those active dims, in order."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, mask: np.ndarray,
                 layout: ActionLayout | None = None):
        self.mean, self.std, self.action_mask = mean.astype(np.float64), std.astype(np.float64), mask
        self.chunk_length = mean.shape[0]
        self.layout = layout
        self.dims = list(layout.model_dims) if layout else list(np.flatnonzero(mask.any(axis=0)))
        self.action_dim = len(self.dims)
        self.state_dim = layout.dim if layout else MODEL_DIM  # up to 32, zero-padded

    def state_to_model(self, state: np.ndarray) -> np.ndarray:
        if self.layout is not None:
            return self.layout.to_model(state)
        out = np.zeros(MODEL_DIM)
        out[:len(state)] = state
        return out

    def actions_to_model(self, actions: np.ndarray, state: np.ndarray) -> np.ndarray:
        h = len(actions)
        full = np.zeros((h, MODEL_DIM))
        full[:, self.dims] = actions
        std = np.where(self.action_mask[:h], self.std[:h], 1.0)
        return np.where(self.action_mask[:h], (full - self.mean[:h]) / std, 0.0)

    def actions_from_model(self, y: np.ndarray, state: np.ndarray) -> np.ndarray:
        return (y * self.std + self.mean)[:, self.dims]


# -- the policy --------------------------------------------------------------------------------

class XR0Policy:
    """An XR0 model with its processor, action space and camera order (see the module doc)."""

    def __init__(self, model: XR0Model, cfg: XR0Config, tokenizer, space, *,
                 cameras: Sequence[str] | None = None, num_steps: int | None = None,
                 image_size: tuple[int, int] | None = None,
                 camera_sizes: Mapping[str, Sequence[int]] | None = None,
                 supports_prefix: bool | None = None, center_crop: float = 1.0):
        self.model, self.cfg, self.space = model.eval(), cfg, space
        self.processor = XR0Processor(tokenizer, cfg)
        self.cameras = tuple(cameras) if cameras else None
        if self.cameras and len(self.cameras) != len(cfg.view_labels):
            raise PolicyInputError(f"{len(self.cameras)} cameras {list(self.cameras)} for a model with "
                                   f"{len(cfg.view_labels)} views {list(cfg.view_labels)}: pass one "
                                   "camera per view")
        self.num_steps = int(num_steps or cfg.num_steps)
        self.image_size = tuple(image_size) if image_size else None
        self.camera_sizes = {k: tuple(v) for k, v in (camera_sizes or {}).items()}
        self.supports_prefix = (cfg.attention_rule == "lambda") if supports_prefix is None \
            else bool(supports_prefix)
        self.chunk_length = space.chunk_length
        if not 0.0 < center_crop <= 1.0:
            raise PolicyInputError(f"center_crop must be in (0, 1], got {center_crop}")
        self.center_crop = float(center_crop)
        self.last_timing: dict[str, float] = {}

    @property
    def state_dim(self) -> int:
        return self.space.state_dim

    @property
    def action_dim(self) -> int:
        return self.space.action_dim

    # -- loading -----------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, directory: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None, num_steps: int | None = None, *,
                        robot_type: str | None = None, layout: ActionLayout | None = None,
                        cameras: Sequence[str] | None = None,
                        view_labels: Sequence[str] | None = None) -> XR0Policy:
        """A policy from the workstation's own checkpoint or a Xiaomi-Robotics-0 release.

        dtype None: bf16 on CUDA, fp32 elsewhere. robot_type, layout, view_labels and cameras
        apply to releases (which statistics, where the rig's dims go, the prompt's view labels,
        the camera names in view order)."""
        directory = Path(directory)
        run = RunDir(directory)   # a training run folder: its newest complete checkpoint
        if (directory / LAST_FILE).is_file() and not (directory / "xr0_checkpoint.json").is_file():
            last = run.last_checkpoint()
            if last is None:
                raise PolicyInputError(f"{directory / LAST_FILE} names no complete checkpoint: "
                                       f"pass a checkpoint folder from {directory / 'checkpoints'}")
            directory = last
        if dtype is None:
            dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
        if is_official_checkpoint(directory):
            ckpt = load_official(directory, robot_type, device=device, dtype=dtype,
                                 view_labels=tuple(view_labels) if view_labels else None)
            space = OfficialSpace(ckpt.action_mean, ckpt.action_std, ckpt.action_mask, layout)
            return cls(ckpt.model, ckpt.cfg, ckpt.tokenizer, space, cameras=cameras,
                       num_steps=num_steps, supports_prefix=False)
        if not (directory / "xr0_checkpoint.json").is_file() and directory.is_dir():
            raise PolicyInputError(f"{directory} is neither a workstation checkpoint (no "
                                   "xr0_checkpoint.json) nor a Xiaomi-Robotics-0 release (config.json "
                                   "with model_type 'mibot'): pass a checkpoint folder")
        model, cfg, tokenizer, stats = load_checkpoint(directory, device, dtype)
        if stats is None:
            raise PolicyInputError(f"{directory} has no stats.json: the checkpoint lacks the "
                                   "normalisation statistics; save it with save_checkpoint(stats=...)")
        if tokenizer is None:
            raise PolicyInputError(f"{directory} has no tokenizer.json: save the checkpoint with "
                                   "save_checkpoint(tokenizer=...) or copy the tokenizer files there")
        if "center_crop" not in stats:
            # checkpoints written before stats.json named it: the crop their training used
            train = json.loads((directory / "xr0_checkpoint.json").read_text()).get(
                "extra", {}).get("train_config", {})
            if train.get("augment"):
                stats = {**stats, "center_crop": float(train.get("crop_scale", 1.0))}
        return cls.from_parts(model, cfg, tokenizer, stats, num_steps=num_steps)

    @classmethod
    def from_parts(cls, model: XR0Model, cfg: XR0Config, tokenizer, stats: dict,
                   num_steps: int | None = None) -> XR0Policy:
        """A policy from a model and the stats.json dict of the module doc."""
        if "norm_stats" not in stats or "cameras" not in stats:
            raise PolicyInputError(f"stats.json lacks {'norm_stats' if 'norm_stats' not in stats else 'cameras'} "
                                   f"(has {sorted(stats)}): the checkpoint was saved without the "
                                   "training statistics; re-save it with the trainer")
        ns = NormStats.from_dict(stats["norm_stats"])
        layout = ActionLayout.from_dict(stats["layout"]) if "layout" in stats else ns.layout
        if not layout.compatible(ns.layout):
            raise PolicyInputError(f"stats.json's layout and norm_stats disagree: "
                                   f"{layout.difference(ns.layout)}; re-save the checkpoint")
        mode = stats.get("action_mode", ns.action_mode)
        if mode != ns.action_mode:
            raise PolicyInputError(f"stats.json says action_mode {mode!r} but its norm_stats are for "
                                   f"{ns.action_mode!r}; re-save the checkpoint")
        labels = stats.get("view_labels")
        if labels is not None and tuple(labels) != tuple(cfg.view_labels):
            raise PolicyInputError(f"stats.json's view labels {labels} differ from the model config's "
                                   f"{list(cfg.view_labels)}; re-save the checkpoint")
        T = int(stats.get("chunk", cfg.action_length))
        if T > ns.chunk:
            raise PolicyInputError(f"the model predicts {T} actions but the statistics cover chunks of "
                                   f"{ns.chunk}; compute the statistics with chunk >= {T}")
        space = NormStatsSpace(ns, layout, T, ns.extra.get("normalization", "mean_std"),
                               ns.extra.get("state", "raw"))
        return cls(model, cfg, tokenizer, space, cameras=stats["cameras"], num_steps=num_steps,
                   image_size=stats.get("image_size"), camera_sizes=stats.get("camera_sizes"),
                   supports_prefix=stats.get("async_post_trained"),
                   center_crop=float(stats.get("center_crop", 1.0)))

    # -- inputs ------------------------------------------------------------------------------
    def _views(self, images) -> list[np.ndarray]:
        labels = self.cfg.view_labels
        if isinstance(images, Mapping):
            names = self.cameras or labels
            missing = [c for c in names if c not in images]
            extra = [c for c in images if c not in names]
            if missing or extra:
                raise PolicyInputError(f"cameras {sorted(images)} do not match the policy's "
                                       f"{list(names)} (missing {missing}, unexpected {extra}): pass "
                                       "one frame per camera the policy was trained with")
            frames = [(c, images[c]) for c in names]
        else:
            names = self.cameras or labels
            if len(images) != len(labels):
                raise PolicyInputError(f"{len(images)} images for a policy with {len(labels)} views "
                                       f"({', '.join(names)}): pass one frame per view, in that order")
            frames = list(zip(names, images))
        views = []
        for name, frame in frames:
            frame = np.asarray(frame)
            if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                raise PolicyInputError(f"camera {name!r}: frames must be HxWx3 uint8, got "
                                       f"{frame.dtype} {frame.shape}")
            want = self.camera_sizes.get(name)
            if want is not None and frame.shape[:2] != want:
                raise PolicyInputError(f"camera {name!r} sends {frame.shape[1]}x{frame.shape[0]} frames "
                                       f"but the policy was trained on {want[1]}x{want[0]}; set the "
                                       "camera to that resolution")
            if self.image_size is not None and frame.shape[:2] != self.image_size:
                h, w = self.image_size
                frame = np.asarray(Image.fromarray(frame).resize((w, h), Image.Resampling.BILINEAR))
            if self.center_crop < 1.0:
                x = torch.from_numpy(np.array(frame, dtype=np.float32)).permute(2, 0, 1)[None]
                x = center_crop(x / 255.0, self.center_crop)
                frame = (x[0].permute(1, 2, 0) * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()
            views.append(frame)
        return views

    def _state(self, state) -> np.ndarray:
        state = np.asarray(state, dtype=np.float64).reshape(-1)
        names = self.space.layout
        # a release without a layout takes any state up to 32 dims, zero-padded
        ok = len(state) == self.state_dim if names is not None else 0 < len(state) <= MODEL_DIM
        if not ok:
            raise PolicyInputError(f"state has {len(state)} dims, the policy expects {self.state_dim}"
                                   f"{' (' + ', '.join(names.joint_names) + ')' if names else ''}; "
                                   "pass the rig's state in the layout the policy was trained on")
        if not np.isfinite(state).all():
            raise PolicyInputError("state holds NaN or inf: check the rig's readings")
        return state

    def _prefix(self, prefix, state: np.ndarray) -> np.ndarray | None:
        if prefix is None or len(prefix) == 0:
            return None
        prefix = np.asarray(prefix, dtype=np.float64)
        if prefix.ndim != 2 or prefix.shape[1] != self.action_dim:
            raise PolicyInputError(f"the clean prefix has shape {prefix.shape}; expected (d, "
                                   f"{self.action_dim}) actions in rig units")
        if len(prefix) >= self.chunk_length:
            raise PolicyInputError(f"the clean prefix has {len(prefix)} actions but a chunk holds "
                                   f"{self.chunk_length}: it must leave at least one to predict "
                                   f"(d <= {self.chunk_length - 1}); lower the delay")
        return self.space.actions_to_model(prefix, state)

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x, dtype=np.float32), device=self.model.device)[None]

    def _sync(self) -> None:
        if self.model.device.type == "cuda":
            torch.cuda.synchronize(self.model.device)

    def _prepare(self, images, state, instruction: str):
        t0 = time.perf_counter()
        state = self._state(state)
        inputs = self.processor([self._views(images)], [format_instruction(instruction)])
        state_t = self._tensor(self.space.state_to_model(state))
        mask = self._tensor(self.space.action_mask)
        return t0, state, inputs, state_t, mask

    # -- inference ---------------------------------------------------------------------------
    @torch.no_grad()
    def infer(self, images, state, instruction: str, prefix=None, seed: int | None = None
              ) -> np.ndarray:
        """(T, D) actions in rig units. images: camera -> HxWx3 uint8, or a list in view order;
        state: (D,) rig units; prefix: (d, D) rig units, returned as the first d rows."""
        t0, state, inputs, state_t, mask = self._prepare(images, state, instruction)
        prefix_m = self._prefix(prefix, state)
        prefix_t = None if prefix_m is None else self._tensor(prefix_m)
        self._sync()
        t1 = time.perf_counter()
        cache = self.model.prefill(inputs)
        self._sync()
        t2 = time.perf_counter()
        y = self.model.sample(cache, state_t, mask, prefix=prefix_t, num_steps=self.num_steps, seed=seed)
        out = self.space.actions_from_model(y[0].float().cpu().numpy().astype(np.float64), state)
        t3 = time.perf_counter()
        self.last_timing = {"preprocess_s": t1 - t0, "prefill_s": t2 - t1, "denoise_s": t3 - t2,
                            "total_s": t3 - t0}
        return out

    def infer_guided(self, obs: Observation, prev_chunk: np.ndarray, weights: np.ndarray,
                     beta: float = 5.0, seed: int | None = None) -> np.ndarray:
        """(T, D): inference-time Real-Time Chunking, the model's velocity field guided towards
        prev_chunk (T, D, rig units) on the rows weights (T,) marks; one prefill."""
        t0, state, inputs, state_t, mask = self._prepare(obs.images, obs.state, obs.instruction)
        prev = np.asarray(prev_chunk, dtype=np.float64)
        if prev.shape != (self.chunk_length, self.action_dim):
            raise PolicyInputError(f"prev_chunk has shape {prev.shape}; expected "
                                   f"({self.chunk_length}, {self.action_dim})")
        prev_t = self._tensor(self.space.actions_to_model(prev, state)).to(self.model.dtype)
        with torch.no_grad():
            cache = self.model.prefill(inputs)
        t1 = time.perf_counter()
        mask = mask.to(self.model.dtype)

        def velocity(x: torch.Tensor, tau: float) -> torch.Tensor:
            t = torch.full((1,), tau, device=x.device, dtype=torch.float32)
            return self.model.velocity(cache, x * mask, t, state_t)

        generator = torch.Generator(device=self.model.device)
        if seed is not None:
            generator.manual_seed(seed)
        else:
            generator.seed()
        noise = torch.randn(mask.shape, generator=generator, device=self.model.device).to(self.model.dtype)
        w = torch.as_tensor(np.asarray(weights, dtype=np.float32), device=self.model.device)
        y = rtc.guided_sample(velocity, noise, prev_t, w, beta=beta, steps=self.num_steps)
        out = self.space.actions_from_model(y[0].float().cpu().numpy().astype(np.float64), state)
        self.last_timing = {"total_s": time.perf_counter() - t0, "prefill_s": t1 - t0}
        return out

    def as_chunk_policy(self, instruction: str = "") -> XR0ChunkPolicy:
        """This policy behind the runtime's ChunkPolicy protocol."""
        return XR0ChunkPolicy(self, instruction)


class XR0ChunkPolicy:
    """The runtime's ChunkPolicy over an XR0Policy: infer(obs, prefix) and infer_guided. The
    instruction is the observation's, else the one given here. Each chunk is sampled from fresh
    flow-matching noise; after reseed(S) the noise of the calls that follow is drawn from S, so a
    deterministic episode (the sim in stepping mode) can be replayed exactly."""

    def __init__(self, policy: XR0Policy, instruction: str = ""):
        self.policy = policy
        self.instruction = instruction
        self.chunk_length = policy.chunk_length
        self.supports_prefix = policy.supports_prefix
        self._noise: np.random.Generator | None = None

    def reseed(self, seed: int | None) -> None:
        """Draw the noise of the following calls from `seed` (None: fresh from the OS again)."""
        self._noise = None if seed is None else np.random.default_rng(seed)

    def _seed(self) -> int | None:
        return None if self._noise is None else int(self._noise.integers(2 ** 63))

    def _instruction(self, obs: Observation) -> str:
        text = obs.instruction or self.instruction
        if not text:
            raise PolicyInputError("no instruction: set the task on the observation or pass "
                                   "instruction= to as_chunk_policy")
        return text

    def infer(self, obs: Observation, prefix: np.ndarray | None) -> np.ndarray:
        return self.policy.infer(obs.images, obs.state, self._instruction(obs),
                                 prefix if self.supports_prefix else None, seed=self._seed())

    def infer_guided(self, obs: Observation, prev_chunk: np.ndarray, weights: np.ndarray,
                     beta: float) -> np.ndarray:
        obs = Observation(obs.step, obs.t, obs.state, obs.images, self._instruction(obs), obs.extra)
        return self.policy.infer_guided(obs, prev_chunk, weights, beta, seed=self._seed())


__all__ = ["NormStatsSpace", "OfficialSpace", "PolicyInputError", "XR0ChunkPolicy", "XR0Policy",
           "format_instruction"]
