"""Which samples train, step by step: the episode selection a user types, and the order of
micro-batches, a pure function of (seed, step) so that a resumed run and any number of
processes walk the same global batches."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from store.selection import parse_episode_ids
from xr0.train import distributed
from xr0.train.config import TrainConfig
from xr0.train.model_setup import TrainError


def parse_selection(text: str | Sequence[int] | None, available: Sequence[int]) -> list[int]:
    """'all', None, '1,3,5-9' or a list of ids -> the selected ids, in the given order."""
    if not available:
        raise TrainError("the store has no complete episodes: record demonstrations first "
                         "(`python main.py record --store DIR ...`) or point --store at another store")
    if text is None or (isinstance(text, str) and text.strip().lower() == "all"):
        ids = list(available)
    elif isinstance(text, str):
        try:
            ids = parse_episode_ids(text)
        except ValueError as e:
            raise TrainError(f"{e}, or 'all'") from None
    else:
        ids = [int(i) for i in text]
    if not ids:
        raise TrainError("the episode selection is empty: select at least two complete episodes "
                         "(one to train on, one to validate) or pass --episodes all")
    missing = sorted(set(ids) - set(available))
    if missing:
        raise TrainError(f"episode(s) {missing[:10]} are not complete episodes of the store: list "
                         "them with `python main.py episodes --store DIR` and select complete ones")
    return list(dict.fromkeys(ids))


def seed_of(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class StepBatches(torch.utils.data.Sampler):
    """This process's micro-batches of sample indices, step by step from `start_step`: global
    sample j of the run is permutation(epoch j // N)[j % N], the global batch of step s holds
    samples s*B .. s*B+B-1, and rank r takes micro-batches r*A .. r*A+A-1 of it."""

    def __init__(self, n: int, cfg: TrainConfig, info: distributed.DistInfo, start_step: int):
        self.n, self.cfg, self.info, self.start = n, cfg, info, start_step
        self.accum = cfg.accumulation(info.world_size)
        self._perms: dict[int, np.ndarray] = {}

    def _sample(self, j: int) -> int:
        epoch, r = divmod(j, self.n)
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng(seed_of(self.cfg.seed, 7, epoch)).permutation(self.n)}
        return int(self._perms[epoch][r])

    def __iter__(self):
        B, m = self.cfg.batch, self.cfg.micro_batch
        # with a frame lag, each index goes with its global sample number, from which the
        # dataset draws the frames' extra age: the same for any world size and after a resume
        lag = self.cfg.frame_lag > 0
        for step in range(self.start, self.cfg.steps):
            for a in range(self.accum):
                first = step * B + (self.info.rank * self.accum + a) * m
                yield [(self._sample(j), seed_of(self.cfg.seed, 11, j)) if lag else self._sample(j)
                       for j in range(first, first + m)]

    def __len__(self) -> int:
        return (self.cfg.steps - self.start) * self.accum
