"""xr0.data.dataset: samples from a real store with real mp4 videos written by the store's writers."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from store import EpisodeStore
from xr0.data.chunks import to_absolute
from xr0.data.dataset import DatasetError, EpisodeDataset, collate
from xr0.data.synthetic import RIG_JOINT_NAMES, frame_image, read_code, write_episode

W, H = 96, 64
SIZE = (32, 48)   # (h, w)
CHUNK = 10
CAMS = {"top": (W, H, 30.0), "left": (W, H, 15.0)}   # camera numbers in the pixels: top 0, left 1


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    st = EpisodeStore.open(tmp_path_factory.mktemp("data"))
    write_episode(st, steps=60, cameras=CAMS, quality="lossless", seed=1, drop_every=5,
                  noise=False, task="stack the cups")
    write_episode(st, steps=45, cameras=CAMS, quality="high", seed=2, drop_every=4,
                  task="open the drawer")
    return st


def expected_frame(frame_times: np.ndarray, t: float) -> int:
    """The latest frame at or before t, else frame 0, by a plain scan."""
    j = 0
    for i, ft in enumerate(frame_times):
        if ft <= t:
            j = i
    return j


def test_frames_are_aligned_by_timestamp_without_look_ahead(store):
    ds = EpisodeDataset(store, image_size=SIZE, chunk=CHUNK)
    assert ds.cameras == ("left", "top") and len(ds) == 105
    lossless, high = (store.episode(e) for e in ds.episode_ids)
    before_first = gaps = 0
    for i in range(len(ds)):
        x = ds[i]
        d = lossless if x["episode_id"] == lossless.info.id else high
        s = x["step"]
        assert x["t"] == d.t[s] and x["instruction"] == d.info.task
        for c, cam in enumerate(ds.cameras):
            ft = d.frame_times[cam]
            j = expected_frame(ft, d.t[s])
            assert x["image_index"][c] == j and x["image_times"][c] == ft[j]
            assert ft[j] <= d.t[s] or j == 0                       # never a future frame
            before_first += d.t[s] < ft[0]
            gaps += j + 1 < len(ft) and ft[j + 1] - ft[j] > 1.5 / CAMS[cam][2]
            assert read_code(x["images"][c]) == (j, list(CAMS).index(cam))
            if d is lossless:   # bit-exact video: the resize is PIL bilinear of the frame
                want = Image.fromarray(frame_image(j, list(CAMS).index(cam), W, H))
                want = np.asarray(want.resize((SIZE[1], SIZE[0]), Image.BILINEAR))
                np.testing.assert_array_equal(x["images"][c], want)
    assert before_first > 0 and gaps > 0   # both edge cases were exercised
    assert x["images"].dtype == np.uint8 and x["images"].shape == (2, *SIZE, 3)


def test_frame_lag_takes_older_frames_drawn_from_the_sample_draw(store):
    """frame_lag=K with an (i, draw) index: each camera's frame is 0..K frames older than the
    aligned one (never before frame 0), the same draw always gives the same frames, and a plain
    index is unlagged."""
    K = 2
    ds = EpisodeDataset(store, image_size=SIZE, chunk=CHUNK, frame_lag=K)
    plain = EpisodeDataset(store, image_size=SIZE, chunk=CHUNK)
    seen = set()
    for i in range(0, len(ds), 3):
        base = plain[i]
        np.testing.assert_array_equal(ds[i]["image_index"], base["image_index"])
        for draw in (i, 10_000 + i):
            x = ds[(i, draw)]
            lags = base["image_index"] - x["image_index"]
            assert np.all((0 <= lags) & (lags <= K)), lags
            assert np.all((lags == ds.frame_lags(draw)) | (x["image_index"] == 0))
            seen.update(lags.tolist())
            for c in range(len(ds.cameras)):
                assert read_code(x["images"][c])[0] == x["image_index"][c]
            assert x["step"] == base["step"]
            np.testing.assert_array_equal(x["actions"], base["actions"])
            y = ds[(i, draw)]
            np.testing.assert_array_equal(y["image_index"], x["image_index"])
    assert seen == set(range(K + 1))
    with pytest.raises(ValueError, match="frame_lag"):
        EpisodeDataset(store, image_size=SIZE, chunk=CHUNK, frame_lag=-1)


def test_frame_lag_p_lags_only_that_fraction_of_the_samples(store):
    """frame_lag_p=P: about a fraction P of the draws are lagged (0..K frames, as with P = 1),
    the rest keep the aligned frames; the same draw always decides the same way."""
    K, P, n = 3, 0.25, 2000
    ds = EpisodeDataset(store, image_size=SIZE, chunk=CHUNK, frame_lag=K, frame_lag_p=P)
    lags = np.stack([ds.frame_lags(d) for d in range(n)])
    assert lags.min() >= 0 and lags.max() == K
    lagged = (lags > 0).any(axis=1).mean()
    # a lagged draw is 0 on every camera with probability 1/(K+1)^2 = 1/16
    assert abs(lagged - P * (1 - 1 / (K + 1) ** 2)) < 0.04, lagged
    np.testing.assert_array_equal(np.stack([ds.frame_lags(d) for d in range(n)]), lags)
    every = EpisodeDataset(store, image_size=SIZE, chunk=CHUNK, frame_lag=K)
    assert (np.stack([every.frame_lags(d) for d in range(n)]) > 0).any(axis=1).mean() > 0.9
    i = len(ds) - 1
    first = next(d for d in range(n) if (lags[d] > 0).all())
    np.testing.assert_array_equal(ds[i]["image_index"] - ds[(i, first)]["image_index"],
                                  lags[first])
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="frame_lag_p"):
            EpisodeDataset(store, image_size=SIZE, chunk=CHUNK, frame_lag=K, frame_lag_p=bad)


def test_full_resolution_and_camera_order_as_requested(store):
    ds = EpisodeDataset(store, image_size=(H, W), cameras=["top", "left"], chunk=CHUNK)
    x = ds[len(ds) - 1]
    assert x["images"].shape == (2, H, W, 3)
    assert [read_code(im)[1] for im in x["images"]] == [0, 1]
    assert [read_code(im)[0] for im in x["images"]] == x["image_index"].tolist()


def test_chunks_pad_past_the_episode_end_with_the_last_action(store):
    ds = EpisodeDataset(store, image_size=SIZE, chunk=CHUNK)
    first = store.episode(ds.episode_ids[0])
    n = len(first.t)
    x = ds[5]
    np.testing.assert_array_equal(x["actions"], first.action[5:5 + CHUNK].astype(np.float32))
    assert not x["action_pad"].any() and x["state"].dtype == np.float32
    x = ds[n - 3]
    assert x["step"] == n - 3 and x["action_pad"].tolist() == [False] * 3 + [True] * 7
    np.testing.assert_array_equal(x["actions"][:3], first.action[n - 3:].astype(np.float32))
    assert (x["actions"][3:] == first.action[-1].astype(np.float32)).all()
    x = ds[n - 1]
    assert x["action_pad"].tolist() == [False] + [True] * 9
    assert ds[n]["episode_id"] == ds.episode_ids[1] and ds[n]["step"] == 0
    with pytest.raises(IndexError, match="out of range"):
        ds[len(ds)]


def test_delta_actions_are_relative_to_the_state_except_grippers(store):
    ab = EpisodeDataset(store, image_size=SIZE, chunk=CHUNK)
    de = EpisodeDataset(store, image_size=SIZE, chunk=CHUNK, action_mode="delta")
    grip = np.array([n.endswith("gripper") for n in RIG_JOINT_NAMES])
    assert de.delta_mask.tolist() == (~grip).tolist() and not ab.delta_mask.any()
    for i in (0, 30, 58, 100):
        a, d = ab[i], de[i]
        np.testing.assert_allclose(d["actions"][:, ~grip], a["actions"][:, ~grip]
                                   - a["state"][~grip], atol=1e-6)
        np.testing.assert_array_equal(d["actions"][:, grip], a["actions"][:, grip])
        assert (d["action_pad"] == a["action_pad"]).all()
        np.testing.assert_allclose(to_absolute(d["actions"], d["state"], de.delta_mask),
                                   a["actions"], atol=1e-6)


def test_normalised_outputs_follow_the_stats(store, tmp_path):
    de = EpisodeDataset(store, image_size=SIZE, chunk=CHUNK, action_mode="delta")
    stats = de.compute_stats()
    assert stats.episodes == tuple(de.episode_ids) and stats.chunk == CHUNK
    ds = EpisodeDataset(store, image_size=SIZE, chunk=CHUNK, action_mode="delta",
                        stats=stats)
    x = ds[7]
    np.testing.assert_allclose(x["actions_norm"], stats.normalize_actions(
        x["actions"].astype(np.float64)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x["state_norm"], stats.normalize_state(
        x["state"].astype(np.float64)), rtol=1e-5, atol=1e-5)
    with pytest.raises(DatasetError, match="same action_mode"):
        EpisodeDataset(store, image_size=SIZE, chunk=CHUNK, stats=stats)
    with pytest.raises(DatasetError, match="chunk=20"):
        EpisodeDataset(store, image_size=SIZE, chunk=20, action_mode="delta", stats=stats)


def test_dataloader_workers_give_the_same_samples_as_one_process(store):
    ds = EpisodeDataset(store, image_size=SIZE, chunk=CHUNK, max_open_videos=2)
    ds[0]   # readers opened in the parent before the workers fork
    order = np.random.default_rng(0).permutation(len(ds))[:30].tolist()
    batches = {}
    for workers in (0, 2):
        dl = DataLoader(ds, batch_size=5, sampler=order, num_workers=workers, collate_fn=collate)
        batches[workers] = list(dl)
    assert len(batches[0]) == 6
    for b0, b2 in zip(batches[0], batches[2]):
        assert b0.keys() == b2.keys()
        for k, v in b0.items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, b2[k]), k
            else:
                assert v == b2[k], k
    b = batches[0][0]
    assert b["images"].dtype == torch.uint8 and b["images"].shape == (5, 2, *SIZE, 3)
    assert b["actions"].shape == (5, CHUNK, 14) and b["action_pad"].dtype == torch.bool
    assert isinstance(b["instruction"], list) and len(b["instruction"]) == 5
    assert b["episode_id"].dtype == torch.int64
    assert len(ds._pool) <= 2                     # the pool stays bounded
    clone = pickle.loads(pickle.dumps(ds))         # picklable after use; readers reopen lazily
    assert len(clone._pool) == 0 and read_code(clone[3]["images"][0])[0] == ds[3]["image_index"][0]


# -- errors a user can meet ----------------------------------------------------------------------

def tiny(store, **kw):
    kw.setdefault("cameras", {"top": (48, 32, 15.0)})
    return write_episode(store, steps=kw.pop("steps", 12), quality="high", **kw)


def test_empty_selection_and_unknown_or_incomplete_episodes(tmp_path):
    st = EpisodeStore.open(tmp_path / "s")
    with pytest.raises(DatasetError, match="no complete episodes.*main.py record"):
        EpisodeDataset(st)
    ok = tiny(st)
    with pytest.raises(DatasetError, match="episode_ids is empty"):
        EpisodeDataset(st, [])
    with pytest.raises(DatasetError, match="no episode 99.*leave episode 99 out"):
        EpisodeDataset(st, [ok.id, 99])
    w = st.begin_episode(task="x", rig="synthetic", control_hz=50, joint_names=RIG_JOINT_NAMES)
    w.add_step(1.0, np.zeros(14), np.zeros(14))
    w.abandon()
    with pytest.raises(DatasetError, match=rf"episode {w.id} is incomplete.*recover"):
        EpisodeDataset(st, [ok.id, w.id])
    assert EpisodeDataset(tmp_path / "s").episode_ids == [ok.id]   # a path works too


def test_unreadable_episode_is_named_with_what_to_do(tmp_path):
    st = EpisodeStore.open(tmp_path)
    a, b = tiny(st, seed=1), tiny(st, seed=2)
    (b.folder / "steps" / "action.f8").unlink()
    with pytest.raises(DatasetError, match=rf"episode {b.id} is unreadable.*leave episode "
                                           rf"{b.id} out"):
        EpisodeDataset(st)
    assert len(EpisodeDataset(st, [a.id])) == 12


def test_mismatched_joint_names_and_missing_cameras(tmp_path):
    st = EpisodeStore.open(tmp_path)
    a = tiny(st, cameras={"top": (48, 32, 15.0), "wrist": (48, 32, 15.0)})
    one_arm = tiny(st, joint_names=RIG_JOINT_NAMES[:7])
    top_only = tiny(st)
    with pytest.raises(DatasetError, match=rf"episodes {a.id} and {one_arm.id} come from rigs "
                                           r"with different action layouts.*right_waist"):
        EpisodeDataset(st)
    with pytest.raises(DatasetError, match=rf"episode {top_only.id} has no camera 'wrist'.*"
                                           r"cameras="):
        EpisodeDataset(st, [a.id, top_only.id])
    ds = EpisodeDataset(st, [a.id, top_only.id], cameras=["top"], image_size=(16, 24))
    assert ds[20]["images"].shape == (1, 16, 24, 3)


def test_video_with_missing_frames_is_refused_when_read(tmp_path):
    from store.video import VideoWriter

    st = EpisodeStore.open(tmp_path)
    a = tiny(st, steps=40)
    assert a.frame_counts == {"top": 12}
    with VideoWriter(a.folder / "top.mp4", 48, 32, 15) as vw:   # a shorter video over it
        for i in range(3):
            vw.write(frame_image(i, 0, 48, 32), 1000.0 + i / 15)
    ds = EpisodeDataset(st)
    with pytest.raises(DatasetError, match=r"has 3 frames but the store recorded \d+ frame times"):
        ds[0]
    (a.folder / "top.mp4").write_bytes(b"")
    with pytest.raises(DatasetError, match=rf"episode {a.id} is unreadable.*missing or empty"):
        EpisodeDataset(st, [a.id])
