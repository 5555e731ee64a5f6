"""Exponential moving average (EMA) of the trainable parameters, the weights a flow-matching
policy is usually deployed with: single optimiser steps move a small policy's reach by
centimetres from one checkpoint to the next, and the average over the last ~1/(1 - decay) steps
does not follow each of them.

The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, so a run that starts from a
checkpoint averages over the steps it has taken rather than holding on to its starting weights.
The trainer validates and writes checkpoints with the average and keeps the raw weights (and the
average) in the training state, so --resume continues both exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


class EMA:
    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"--ema must be in (0, 1), got {decay}")
        self.decay = decay
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.shadow = {n: p.detach().clone() for n, p in self.params.items()}
        self.updates = 0

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """After an optimiser step: shadow <- d * shadow + (1 - d) * parameter."""
        weight = 1.0 - self.current_decay()
        for n, p in self.params.items():
            self.shadow[n].lerp_(p.detach(), weight)
        self.updates += 1

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Inside the block the model's trainable parameters hold the average; after it, their
        own values again."""
        raw = {n: p.detach().clone() for n, p in self.params.items()}
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(self.shadow[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(raw[n])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates,
                "shadow": {n: t.detach().cpu().clone() for n, t in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) - set(state["shadow"])
        if missing:
            raise ValueError(f"the saved average lacks {len(missing)} parameter(s), e.g. "
                             f"{sorted(missing)[0]}: the run's model changed")
        self.updates = int(state["updates"])
        with torch.no_grad():
            for n, t in self.shadow.items():
                t.copy_(state["shadow"][n])
