"""The dataset view of the episode store for training XR0 (a torch.utils.data.Dataset).

One sample per control step of every selected episode:

    images        (n_cams, h, w, 3) uint8   the cameras at this step, in `dataset.cameras` order
    image_times   (n_cams,) float64         clock time of each frame used
    image_index   (n_cams,) int64           index of each frame in its video
    state         (D,) float32              the observed state at step s
    actions       (H, D) float32            action[s .. s+H-1] in the action mode, see xr0.data.chunks
    action_pad    (H,) bool                 True where s + k is past the episode's end (padding)
    instruction   str                       the episode's task
    episode_id    int, step int, t float    where the sample comes from
    state_norm, actions_norm (float32)      only when `stats` are given

Frame alignment: a step at time t takes, per camera, the latest frame whose timestamp is <= t
(`np.searchsorted(frame_times, t, side="right") - 1`), so a sample never looks ahead in time; steps
before a camera's first frame take frame 0. With `frame_lag=K` and an index given as a pair
(i, draw), each camera's frame is instead 0..K frames older than that (uniform, drawn from the
integer `draw`, so the same pair always gives the same frames): the age a live camera's frame has
when the policy reads it varies, by a frame period or more on a loaded machine. With
`frame_lag_p=P` below 1 only that fraction of the samples is lagged (a camera stall: the rest
keep their latest frames), as a renderer or USB link that falls behind now and then leaves most
steps with fresh frames and a few with frames up to a second old.

Frames are resized at decode to `image_size` = (h, w) with PIL's bilinear filter (which widens
its support when shrinking, so downscaling is antialiased); the aspect ratio is not kept.

Step arrays of every selected episode are read into memory at construction (small: 14 floats per
column and step); videos are opened lazily per process through a bounded pool (xr0.data.readers),
so the dataset holds nothing unpicklable and works with DataLoader workers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from store import EpisodeStore
from store.errors import EpisodeNotFound, EpisodeUnreadable, StoreError
from store.video import VideoReadError
from xr0.data.chunks import action_chunk, check_mode
from xr0.data.layout import ActionLayout, is_gripper
from xr0.data.readers import ReaderPool
from xr0.data.stats import NormStats, compute_stats


class DatasetError(ValueError):
    """The selected episodes cannot form a training set; the message says which and what to do."""


@dataclass
class _Episode:
    id: int
    instruction: str
    t: np.ndarray                          # (N,)
    state: np.ndarray                      # (N, D)
    action: np.ndarray                     # (N, D)
    frame_times: dict[str, np.ndarray]     # camera -> (M,)
    videos: dict[str, str]                 # camera -> path


class EpisodeDataset(Dataset):
    """See the module docstring. `len(ds)` is the total number of steps of the episodes."""

    def __init__(self, store: EpisodeStore | str | os.PathLike,
                 episode_ids: Sequence[int] | None = None, *,
                 cameras: Sequence[str] | None = None, image_size: tuple[int, int] = (224, 224),
                 chunk: int = 30, action_mode: str = "absolute", stats: NormStats | None = None,
                 normalization: str = "mean_std", max_open_videos: int = 8,
                 video_cache_frames: int = 16, frame_lag: int = 0, frame_lag_p: float = 1.0):
        self.action_mode = check_mode(action_mode)
        if frame_lag < 0:
            raise ValueError(f"frame_lag must be 0 or more frames, got {frame_lag}")
        if not 0.0 < frame_lag_p <= 1.0:
            raise ValueError(f"frame_lag_p must be in (0, 1], got {frame_lag_p}")
        self.frame_lag = int(frame_lag)
        self.frame_lag_p = float(frame_lag_p)
        if chunk < 1:
            raise ValueError(f"chunk length must be at least 1, got {chunk}")
        h, w = (int(v) for v in image_size)
        if h <= 0 or w <= 0:
            raise ValueError(f"image_size must be a positive (height, width), got {image_size}")
        self.image_size = (h, w)
        self.chunk = int(chunk)
        self.normalization = normalization
        owned = not isinstance(store, EpisodeStore)
        st = EpisodeStore.open(store) if owned else store
        try:
            self.store_root = str(st.root)
            self._episodes = self._read(st, episode_ids)
        finally:
            if owned:
                st.close()
        self.cameras = self._check_cameras(cameras)
        lengths = np.array([len(e.t) for e in self._episodes], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(lengths)])
        self.delta_mask = np.array([self.action_mode == "delta" and not is_gripper(n)
                                    for n in self.joint_names], dtype=bool)
        self.stats = stats
        if stats is not None:
            self._check_stats(stats)
        self._pool = ReaderPool(max_open=max_open_videos, cache_frames=video_cache_frames)

    # -- selection and checks --------------------------------------------------------------------

    def _read(self, st: EpisodeStore, ids: Sequence[int] | None) -> list[_Episode]:
        if ids is None:
            ids = [e.id for e in st.episodes(status="complete")]
            if not ids:
                raise DatasetError(
                    f"the store {st.root} has no complete episodes: record some (`python main.py "
                    f"record --store {st.root}`) or point at another store")
        ids = [int(i) for i in ids]
        if not ids:
            raise DatasetError("episode_ids is empty: pass the ids to train on, or None for all "
                               "complete episodes")
        episodes, names, first = [], None, None
        for eid in ids:
            try:
                info = st.info(eid)
            except EpisodeNotFound as e:
                raise DatasetError(f"{e}; leave episode {eid} out of episode_ids") from None
            if info.status != "complete":
                raise DatasetError(
                    f"episode {eid} is {info.status}, not complete: only finished recordings "
                    f"train. Recover what survived (EpisodeStore.recover({eid})) or leave it out "
                    f"of episode_ids")
            try:
                data = st.episode(eid)
            except (EpisodeUnreadable, StoreError) as e:
                raise DatasetError(f"{e}. Or leave episode {eid} out of episode_ids") from None
            if names is None:
                names, first = data.joint_names, eid
            elif data.joint_names != names:
                diff = ActionLayout.difference(_names_only(names), _names_only(data.joint_names))
                raise DatasetError(
                    f"episodes {first} and {eid} come from rigs with different action layouts "
                    f"({diff}): train on episodes of one rig layout, e.g. episode_ids of the "
                    f"same rig")
            episodes.append(_Episode(
                id=eid, instruction=info.task, t=data.t, state=data.state, action=data.action,
                frame_times=dict(data.frame_times),
                videos={c: str(data.video_path(c)) for c in data.cameras}))
        self.joint_names: tuple[str, ...] = tuple(names)
        return episodes

    def _check_cameras(self, cameras: Sequence[str] | None) -> tuple[str, ...]:
        first = self._episodes[0]
        cams = tuple(sorted(first.videos)) if cameras is None else tuple(cameras)
        if not cams:
            raise DatasetError(f"episode {first.id} has no cameras and none were requested: XR0 "
                               f"needs at least one camera view")
        if len(set(cams)) != len(cams):
            raise DatasetError(f"camera list {list(cams)} names a camera twice")
        for ep in self._episodes:
            for c in cams:
                if c not in ep.videos:
                    raise DatasetError(
                        f"episode {ep.id} has no camera {c!r} (it has "
                        f"{', '.join(sorted(ep.videos)) or 'none'}): pass cameras= a list every "
                        f"selected episode has, or leave episode {ep.id} out")
        return cams

    def _check_stats(self, stats: NormStats) -> None:
        if stats.joint_names != self.joint_names:
            raise DatasetError(f"the statistics are for joints {list(stats.joint_names)}, the "
                               f"episodes have {list(self.joint_names)}: compute statistics from "
                               f"these episodes (dataset.compute_stats())")
        if stats.action_mode != self.action_mode:
            raise DatasetError(f"the statistics are for {stats.action_mode!r} actions, the dataset "
                               f"gives {self.action_mode!r}: use the same action_mode for both")
        if stats.chunk < self.chunk:
            raise DatasetError(f"the statistics cover chunks of {stats.chunk} actions, the dataset "
                               f"gives {self.chunk}: compute them with chunk={self.chunk}")

    # -- the view --------------------------------------------------------------------------------

    @property
    def layout(self) -> ActionLayout:
        return ActionLayout.from_joint_names(self.joint_names)

    @property
    def episode_ids(self) -> list[int]:
        return [e.id for e in self._episodes]

    def __len__(self) -> int:
        return int(self._starts[-1])

    def locate(self, i: int) -> tuple[int, int]:
        """Sample index -> (episode id, step)."""
        e, s = self._locate(i)
        return self._episodes[e].id, s

    def _locate(self, i: int) -> tuple[int, int]:
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sample {i} out of range: the dataset has {n} steps")
        e = int(np.searchsorted(self._starts, i, side="right")) - 1
        return e, i - int(self._starts[e])

    def frame_index(self, episode: int, camera: str, step: int, lag: int = 0) -> int:
        """The frame of `camera` a step uses: the latest at or before the step's time, `lag`
        frames older (never before frame 0)."""
        ep = self._episodes[episode]
        j = int(np.searchsorted(ep.frame_times[camera], ep.t[step], side="right")) - 1
        return max(j - lag, 0)

    def frame_lags(self, draw: int | None) -> np.ndarray:
        """Each camera's extra frame age for the sample drawn as `draw` (zeros without one, or
        with frame_lag 0)."""
        if draw is None or self.frame_lag == 0:
            return np.zeros(len(self.cameras), dtype=np.int64)
        rng = np.random.default_rng(np.random.SeedSequence([0x1A6, int(draw)]))
        if self.frame_lag_p < 1.0 and rng.random() >= self.frame_lag_p:
            return np.zeros(len(self.cameras), dtype=np.int64)
        return rng.integers(0, self.frame_lag + 1, size=len(self.cameras))

    def __getitem__(self, i: int | tuple[int, int]) -> dict:
        """Sample i; (i, draw) also draws the frames' extra age when frame_lag > 0."""
        draw = None
        if isinstance(i, tuple):
            i, draw = i
        e, s = self._locate(i)
        ep = self._episodes[e]
        h, w = self.image_size
        images = np.empty((len(self.cameras), h, w, 3), dtype=np.uint8)
        times = np.empty(len(self.cameras), dtype=np.float64)
        index = np.empty(len(self.cameras), dtype=np.int64)
        lags = self.frame_lags(draw)
        for c, cam in enumerate(self.cameras):
            j = self.frame_index(e, cam, s, int(lags[c]))
            images[c] = self._frame(ep, cam, j)
            times[c], index[c] = ep.frame_times[cam][j], j
        actions, pad = action_chunk(ep.state, ep.action, s, self.chunk, self.action_mode,
                                    self.delta_mask)
        sample = {
            "images": images, "image_times": times, "image_index": index,
            "state": ep.state[s].astype(np.float32), "actions": actions.astype(np.float32),
            "action_pad": pad, "instruction": ep.instruction, "episode_id": ep.id, "step": s,
            "t": float(ep.t[s]),
        }
        if self.stats is not None:
            mode = self.normalization
            sample["state_norm"] = self.stats.normalize_state(ep.state[s], mode).astype(np.float32)
            sample["actions_norm"] = self.stats.normalize_actions(actions, mode).astype(np.float32)
        return sample

    def _frame(self, ep: _Episode, cam: str, j: int) -> np.ndarray:
        path = ep.videos[cam]
        try:
            r = self._pool.get((ep.id, cam), path)
        except VideoReadError as err:
            raise DatasetError(f"episode {ep.id}, camera {cam!r}: {err}") from err
        n = len(ep.frame_times[cam])
        if r.frame_count != n:
            raise DatasetError(
                f"episode {ep.id}, camera {cam!r}: the video {path} has {r.frame_count} frames "
                f"but the store recorded {n} frame times, so frames cannot be matched to steps; "
                f"re-record or delete the episode, or leave it out of episode_ids")
        try:
            return r.frame(j, size=self.image_size)
        except VideoReadError as err:
            raise DatasetError(f"episode {ep.id}, camera {cam!r}: {err}") from err

    # -- statistics ------------------------------------------------------------------------------

    def compute_stats(self) -> NormStats:
        """Normalisation statistics of this dataset's episodes, chunk length and action mode."""
        return compute_stats([e.state for e in self._episodes],
                             [e.action for e in self._episodes], self.joint_names,
                             chunk=self.chunk, action_mode=self.action_mode,
                             delta_mask=self.delta_mask if self.action_mode == "delta" else None,
                             episode_ids=self.episode_ids)

    def close(self) -> None:
        """Close the video readers this process opened."""
        self._pool.close()


def _names_only(names: Sequence[str]) -> ActionLayout:
    """A layout record for comparing names, also for names outside the model layout."""
    return ActionLayout(tuple(names), ())


_TENSOR_KEYS = ("images", "image_times", "image_index", "state", "actions", "action_pad",
                "state_norm", "actions_norm")


def collate(samples: Sequence[dict]) -> dict:
    """Stack samples into a batch: arrays -> torch tensors with a leading batch dim (images stay
    uint8, B x n_cams x h x w x 3), `instruction` a list of str, episode_id/step int64 tensors."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    out: dict = {}
    for k in samples[0]:
        vals = [s[k] for s in samples]
        if k in _TENSOR_KEYS:
            out[k] = torch.from_numpy(np.stack(vals))
        elif k in ("episode_id", "step"):
            out[k] = torch.tensor(vals, dtype=torch.int64)
        elif k == "t":
            out[k] = torch.tensor(vals, dtype=torch.float64)
        else:
            out[k] = list(vals)
    return out

