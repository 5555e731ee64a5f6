"""Action chunks: the H actions a policy predicts from step s, in absolute or delta mode.

Chunk position k of the chunk at step s is `action[s + k]`. Positions past the episode's last step
are padding: they repeat the last action (the arm holds its final target) and are flagged in
`pad` so that losses and statistics can leave them out.

Action modes:
- "absolute": joint targets as recorded.
- "delta": for the dims in `delta_mask` (the arm joints) `action[s + k] - state[s]`, the motion
  relative to the observed state; the other dims (grippers) stay absolute. Padded positions are
  the repeated last action, made relative to the same `state[s]`.
"""

from __future__ import annotations

import numpy as np

ACTION_MODES = ("absolute", "delta")


def check_mode(action_mode: str) -> str:
    if action_mode not in ACTION_MODES:
        raise ValueError(f"unknown action mode {action_mode!r}: use one of "
                         f"{', '.join(map(repr, ACTION_MODES))}")
    return action_mode


def action_chunk(state: np.ndarray, action: np.ndarray, step: int, horizon: int,
                 action_mode: str, delta_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The chunk at `step` of one episode: (H, D) float64 actions and (H,) bool pad flags.

    state, action: (N, D) arrays of the episode.
    """
    n = len(action)
    if not 0 <= step < n:
        raise IndexError(f"step {step} out of range for an episode of {n} steps")
    idx = step + np.arange(horizon)
    pad = idx >= n
    chunk = action[np.minimum(idx, n - 1)].astype(np.float64, copy=True)
    if check_mode(action_mode) == "delta":
        chunk[:, delta_mask] -= state[step, delta_mask]
    return chunk, pad


def to_absolute(chunk, state, delta_mask: np.ndarray):
    """Undo delta mode: (..., H, D) delta chunk + (..., D) state -> absolute targets.
    numpy arrays or torch tensors (the mask multiplies, so either works)."""
    m = np.asarray(delta_mask, dtype=np.float64)
    if hasattr(chunk, "new_tensor"):
        m = chunk.new_tensor(m)
    return chunk + state[..., None, :] * m


def position_entries(state: np.ndarray, action: np.ndarray, k: int, action_mode: str,
                     delta_mask: np.ndarray) -> np.ndarray:
    """Every unpadded value at chunk position k of one episode: (N - k, D) float64, one row per
    start step s = 0 .. N-1-k (empty when the episode is not longer than k)."""
    n = len(action)
    if k >= n:
        return np.zeros((0, action.shape[1]))
    x = action[k:].astype(np.float64, copy=True)
    if action_mode == "delta":
        x[:, delta_mask] -= state[: n - k][:, delta_mask]
    return x
