"""The training stages of Xiaomi-Robotics-0 as library objects (reference section 8).

    stage 1  ChoicePoliciesStage    the backbone learns actions through Choice Policies, with
                                    vision-language next-token data mixed in
    stage 2  FlowMatchingStage      backbone frozen; the DiT learns flow matching on its KV cache
    post     AsyncPostTrainingStage the whole model (but the token embeddings) with clean-prefix
                                    sampling, prefix hiding and per-sample loss weights

Interface for a trainer:

    stage.prepare(model)                       requires_grad on exactly the trainable parameters
                                               (and stage 1's heads moved to the model)
    stage.trainable_parameters(model)          -> list of parameters for the optimiser
    stage.loss(model, batch, generator=None)   -> {"loss": scalar to backpropagate, parts...};
                                               every value is a scalar tensor
    ChoicePoliciesStage.uses_vl(step)          -> bool: whether step draws a vision-language
                                               batch (1 : 6 by default), see below

batch: a StageBatch (or a dict with the same keys): inputs (BackboneInputs), state (B, 32),
actions (B, T, 32) normalised, action_mask (B, T, 32) float, vl (VLBatch or None). Build a
VLBatch with vl_batch(processor, images, questions, answers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from xr0.model.backbone import append_tokens, embedded_queries
from xr0.model.processor import BackboneInputs, XR0Processor, mrope_position_ids
from xr0.model.xr0 import XR0Model

IGNORE = -100  # label of tokens without a next-token loss


@dataclass
class VLBatch:
    """Image + text -> text samples: the prompt and answer tokens, labels on the answer only."""

    inputs: BackboneInputs
    labels: torch.Tensor  # (B, S) long, IGNORE outside the answers


@dataclass
class StageBatch:
    inputs: BackboneInputs | None
    state: torch.Tensor | None         # (B, 32)
    actions: torch.Tensor | None       # (B, T, 32) normalised
    action_mask: torch.Tensor | None   # (B, T, 32) float
    vl: VLBatch | None = None

    @classmethod
    def of(cls, batch) -> StageBatch:
        if isinstance(batch, StageBatch):
            return batch
        return cls(batch.get("inputs"), batch.get("state"), batch.get("actions"),
                   batch.get("action_mask"), batch.get("vl"))


def _set_trainable(model: nn.Module, params: Sequence[nn.Parameter]) -> None:
    ids = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in ids)


def _expert_parameters(model: XR0Model) -> list[nn.Parameter]:
    return [p for name, p in model.named_parameters() if not name.startswith("vlm.")]


# -- vision-language batches -------------------------------------------------------------------

def vl_batch(processor: XR0Processor, images: Sequence[Sequence], questions: Sequence[str],
             answers: Sequence[str]) -> VLBatch:
    """Chat samples `user: <images> question / assistant: answer`, right-padded, with MRoPE ids;
    the next-token loss covers the answer and its <|im_end|>."""
    tok = processor.tokenizer
    flat = [Image.fromarray(np.asarray(im)) if not isinstance(im, Image.Image) else im
            for views in images for im in views]
    vision = processor.image_processor([im.convert("RGB") for im in flat], return_tensors="pt")
    grid = vision["image_grid_thw"].long()
    per_image = (grid.prod(-1) // processor.merge_size**2).tolist()
    rows, labels, k = [], [], 0
    for views, question, answer in zip(images, questions, answers, strict=True):
        pads = "<|vision_start|><|image_pad|><|vision_end|>" * len(views)
        prompt = tok(f"<|im_start|>user\n{pads}{question}<|im_end|>\n<|im_start|>assistant\n",
                     add_special_tokens=False)["input_ids"]
        reply = tok(f"{answer}<|im_end|>\n", add_special_tokens=False)["input_ids"]
        expanded = []
        for t in prompt:
            if t == processor.image_token_id:
                expanded.extend([t] * per_image[k])
                k += 1
            else:
                expanded.append(t)
        rows.append(expanded + reply)
        labels.append([IGNORE] * len(expanded) + reply)
    S = max(len(r) for r in rows)
    ids = torch.full((len(rows), S), processor.pad_token_id, dtype=torch.long)
    lab = torch.full((len(rows), S), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), S), dtype=torch.long)
    for b, (r, lb) in enumerate(zip(rows, labels)):
        ids[b, :len(r)], lab[b, :len(r)], mask[b, :len(r)] = torch.tensor(r), torch.tensor(lb), 1
    pos = mrope_position_ids(ids, mask, grid, processor.image_token_id, processor.merge_size)
    inputs = BackboneInputs(ids, mask, vision["pixel_values"].float(), grid, pos)
    return VLBatch(inputs, lab)


def _vlm_hidden(model: XR0Model, inputs: BackboneInputs, queries: torch.Tensor | None = None):
    """The VLM's last hidden states (B, S', H) over the prompt, with `queries` (K, H) learnable
    tokens appended after each row's last real token. -> (hidden, query mask (B, S') or None)."""
    inputs = inputs.to(model.device)
    qmask = None
    if queries is not None:
        inputs, qmask = append_tokens(inputs, queries.shape[0])
    with embedded_queries(model.vlm, qmask, queries):
        out = model.vlm.model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask,
                              position_ids=inputs.position_ids,
                              pixel_values=inputs.pixel_values.to(model.dtype),
                              image_grid_thw=inputs.image_grid_thw, use_cache=False)
    return out.last_hidden_state, qmask


def next_token_loss(model: XR0Model, vl: VLBatch) -> torch.Tensor:
    """Mean cross-entropy of the answer tokens, through the (tied) lm_head."""
    hidden, _ = _vlm_hidden(model, vl.inputs)
    logits = model.vlm.lm_head(hidden[:, :-1]).float()
    labels = vl.labels.to(logits.device)[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=IGNORE)


# -- stage 1: Choice Policies --------------------------------------------------------------------

class ChoiceHeads(nn.Module):
    """N learnable action tokens and N score tokens appended to the backbone input; a linear
    head reads a (T, D) chunk from each action token's last hidden state and a score from each
    score token's."""

    def __init__(self, hidden_size: int, num_candidates: int, chunk_length: int, action_dim: int):
        super().__init__()
        self.num_candidates, self.chunk_length, self.action_dim = num_candidates, chunk_length, action_dim
        self.tokens = nn.Parameter(torch.randn(2 * num_candidates, hidden_size) * 0.02)
        self.action_head = nn.Linear(hidden_size, chunk_length * action_dim)
        self.score_head = nn.Linear(hidden_size, 1)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden (B, 2N, H) at the appended tokens -> candidates (B, N, T, D), scores (B, N)."""
        B, N = hidden.shape[0], self.num_candidates
        candidates = self.action_head(hidden[:, :N]).view(B, N, self.chunk_length, self.action_dim)
        return candidates, self.score_head(hidden[:, N:]).squeeze(-1)


def choice_loss(heads: ChoiceHeads, hidden: torch.Tensor, actions: torch.Tensor,
                action_mask: torch.Tensor, score_weight: float = 0.1) -> dict[str, torch.Tensor]:
    """Choice Policies' loss from the hidden states (B, 2N, H) at the heads' tokens against the
    normalised chunks (B, T, D): winner takes all (only the candidate with the lowest masked L1
    error gets the regression gradient) plus score_weight x the cross-entropy that ranks the
    winner first. -> {"loss", "l1", "score", "score_accuracy"}."""
    candidates, scores = heads(hidden)
    actions, mask = actions.float(), action_mask.float()
    if actions.shape[1:] != candidates.shape[2:]:
        raise ValueError(f"actions {tuple(actions.shape)} do not fit the heads' chunks "
                         f"({heads.chunk_length}, {heads.action_dim}); build the heads with "
                         "chunk_length= the batch's T")
    err = ((candidates.float() - actions[:, None]).abs() * mask[:, None]).sum((2, 3)) \
        / mask.expand_as(actions).sum((1, 2)).clamp_min(1.0)[:, None]      # (B, N)
    winner = err.detach().argmin(dim=1)
    l1 = err.gather(1, winner[:, None]).mean()
    score = F.cross_entropy(scores.float(), winner)
    return {"loss": l1 + score_weight * score, "l1": l1, "score": score,
            "score_accuracy": (scores.detach().argmax(1) == winner).float().mean()}


class ChoicePoliciesStage:
    """Stage 1. The backbone (all but its token embeddings) and the choice heads train; the DiT
    does not. Winner takes all: of the N candidates only the one with the lowest masked L1 error
    gets the regression gradient; the scores learn to rank by cross-entropy towards the winner
    (the best candidate gets the highest score). The state is not an input of this stage.

    VL mixing: `vl_ratio` = (vision-language steps, robot steps), 1 : 6 by default: `uses_vl(step)`
    says which steps draw a VLBatch; a batch may hold robot data, a VLBatch, or both, and the
    loss sums the parts present (the next-token loss scaled by vl_weight)."""

    def __init__(self, cfg, num_candidates: int = 8, chunk_length: int | None = None,
                 score_weight: float = 0.1, vl_ratio: tuple[int, int] = (1, 6), vl_weight: float = 1.0):
        if num_candidates < 1 or min(vl_ratio) < 0 or sum(vl_ratio) == 0:
            raise ValueError("num_candidates must be >= 1 and vl_ratio two counts, not both 0")
        self.heads = ChoiceHeads(cfg.text_config["hidden_size"], num_candidates,
                                 chunk_length or cfg.action_length, cfg.action_dim)
        self.score_weight, self.vl_ratio, self.vl_weight = score_weight, tuple(vl_ratio), vl_weight

    def uses_vl(self, step: int) -> bool:
        vl, robot = self.vl_ratio
        return step % (vl + robot) < vl

    def trainable_parameters(self, model: XR0Model) -> list[nn.Parameter]:
        self.heads.to(device=model.device, dtype=model.dtype)
        embed = model.vlm.model.language_model.embed_tokens.weight
        return [p for p in model.vlm.parameters() if p is not embed] + list(self.heads.parameters())

    def prepare(self, model: XR0Model) -> None:
        params = self.trainable_parameters(model)
        _set_trainable(model, params)
        for p in self.heads.parameters():
            p.requires_grad_(True)

    def loss(self, model: XR0Model, batch, generator: torch.Generator | None = None
             ) -> dict[str, torch.Tensor]:
        batch = StageBatch.of(batch)
        self.heads.to(device=model.device, dtype=model.dtype)
        parts: dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=model.device)
        if batch.inputs is not None:
            hidden, slots = _vlm_hidden(model, batch.inputs, self.heads.tokens)
            B = hidden.shape[0]
            choice = choice_loss(self.heads, hidden[slots].view(B, -1, hidden.shape[-1]),
                                 batch.actions.to(model.device), batch.action_mask.to(model.device),
                                 self.score_weight)
            total = total + choice.pop("loss")
            parts.update(choice)
        if batch.vl is not None:
            ntp = next_token_loss(model, batch.vl)
            parts["ntp"] = ntp
            total = total + self.vl_weight * ntp
        if not parts:
            raise ValueError("the batch holds neither robot data (inputs, actions) nor a VLBatch")
        parts["loss"] = total
        return parts


# -- stage 2: flow matching on the frozen backbone -----------------------------------------------

class FlowMatchingStage:
    """Stage 2. The backbone is frozen (eval mode, no gradients: its prefill runs under no_grad)
    and the action expert learns flow matching on its KV cache. No clean prefix by default
    (prefix_prob 0): that is the asynchronous post-training's part."""

    def __init__(self, k_draws: int = 4, prefix_prob: float = 0.0, hide_prefix_prob: float = 0.5):
        self.k_draws, self.prefix_prob, self.hide_prefix_prob = k_draws, prefix_prob, hide_prefix_prob

    def trainable_parameters(self, model: XR0Model) -> list[nn.Parameter]:
        return _expert_parameters(model)

    def prepare(self, model: XR0Model) -> None:
        _set_trainable(model, self.trainable_parameters(model))
        model.vlm.eval()

    def loss(self, model: XR0Model, batch, generator: torch.Generator | None = None
             ) -> dict[str, torch.Tensor]:
        batch = StageBatch.of(batch)
        model.vlm.eval()
        with torch.no_grad():
            cache = model.prefill(batch.inputs)
        return model.flow_loss(cache, batch.state, batch.actions, batch.action_mask,
                               k_draws=self.k_draws, prefix_prob=self.prefix_prob,
                               hide_prefix_prob=self.hide_prefix_prob, generator=generator)


# -- post-training for asynchronous execution ----------------------------------------------------

def sample_weights(model: XR0Model, cache, state: torch.Tensor, actions: torch.Tensor,
                   action_mask: torch.Tensor, *, num_steps: int = 5, low: float = 0.5,
                   high: float = 5.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,) per-sample loss weights: the masked mean squared error of a no-grad num_steps
    generation against the ground truth, divided by its batch mean, clamped to [low, high]."""
    with torch.no_grad():
        gen_device = generator.device if generator is not None else "cpu"
        noise = torch.randn(actions.shape, generator=generator, device=gen_device).to(model.device)
        guess = model.sample(cache, state, action_mask, noise=noise, num_steps=num_steps)
        m = action_mask.to(model.device).float()
        err = ((guess.float() - actions.to(model.device).float()) ** 2 * m).flatten(1).sum(-1) \
            / m.flatten(1).sum(-1).clamp_min(1.0)
        return (err / err.mean().clamp_min(1e-12)).clamp(low, high)


class AsyncPostTrainingStage:
    """Post-training for asynchronous execution: flow matching with clean-prefix sampling and
    prefix hiding (XR0Model.flow_loss) under the model's attention rule (the Lambda rule for
    the post-training recipe), weighted per sample by sample_weights. Trainable: the whole model
    except the token embeddings (and the lm_head tied to them), the VLM's final norm and the
    last VLM layer's query/output/MLP weights, which the action loss never reaches (the DiT
    reads only that layer's keys and values)."""

    def __init__(self, k_draws: int = 4, prefix_prob: float = 0.5, hide_prefix_prob: float = 0.5,
                 weight_steps: int = 5, weight_range: tuple[float, float] = (0.5, 5.0)):
        self.k_draws, self.prefix_prob, self.hide_prefix_prob = k_draws, prefix_prob, hide_prefix_prob
        self.weight_steps, self.weight_range = weight_steps, weight_range

    def trainable_parameters(self, model: XR0Model) -> list[nn.Parameter]:
        text = model.vlm.model.language_model
        last = text.layers[-1]
        unused = {id(text.embed_tokens.weight), id(model.vlm.lm_head.weight), id(text.norm.weight)}
        for module in (last.self_attn.q_proj, last.self_attn.q_norm, last.self_attn.o_proj, last.mlp,
                       last.post_attention_layernorm):
            unused.update(id(p) for p in module.parameters())
        return [p for p in model.parameters() if id(p) not in unused]

    def prepare(self, model: XR0Model) -> None:
        _set_trainable(model, self.trainable_parameters(model))

    def loss(self, model: XR0Model, batch, generator: torch.Generator | None = None
             ) -> dict[str, torch.Tensor]:
        batch = StageBatch.of(batch)
        cache = model.prefill(batch.inputs)
        low, high = self.weight_range
        weights = sample_weights(model, cache, batch.state, batch.actions, batch.action_mask,
                                 num_steps=self.weight_steps, low=low, high=high, generator=generator)
        parts = model.flow_loss(cache, batch.state, batch.actions, batch.action_mask,
                                k_draws=self.k_draws, prefix_prob=self.prefix_prob,
                                hide_prefix_prob=self.hide_prefix_prob, sample_weights=weights,
                                generator=generator)
        parts["weight_max"] = weights.max()
        parts["weight_min"] = weights.min()
        return parts


STAGES = {"choice": ChoicePoliciesStage, "flow": FlowMatchingStage, "async": AsyncPostTrainingStage}

__all__ = ["AsyncPostTrainingStage", "ChoiceHeads", "ChoicePoliciesStage", "FlowMatchingStage",
           "STAGES", "StageBatch", "VLBatch", "append_tokens", "choice_loss", "next_token_loss",
           "sample_weights", "vl_batch"]
