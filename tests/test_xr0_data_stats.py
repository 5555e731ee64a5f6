"""xr0.data.stats: statistics equal a direct numpy computation; normalisation round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xr0.data.layout import ActionLayout
from xr0.data.stats import NormStats, compute_stats, weighted_quantiles
from xr0.data.synthetic import RIG_JOINT_NAMES

H = 8
QS = {"q01": 0.01, "q10": 0.1, "q90": 0.9, "q99": 0.99}


def episodes(seed=0, lengths=(40, 23, 5)):
    rng = np.random.default_rng(seed)
    states = [rng.normal(size=(n, 14)) * rng.uniform(0.1, 2, 14) + rng.normal(size=14)
              for n in lengths]
    actions = [s + rng.normal(0, 0.3, size=s.shape) for s in states]
    for s, a in zip(states, actions):   # grippers in 0..1, one gripper constant
        s[:, 6], a[:, 6] = rng.uniform(0, 1, len(s)), rng.uniform(0, 1, len(s))
        s[:, 13] = a[:, 13] = 1.0
    return states, actions


def reference_entries(states, actions, mode, delta):
    """Every unpadded chunk entry, by position k, built one (s, k) at a time."""
    per_k = [[] for _ in range(H)]
    for s_arr, a_arr in zip(states, actions):
        n = len(a_arr)
        for s in range(n):
            for k in range(H):
                if s + k >= n:
                    continue            # padded: excluded
                v = a_arr[s + k].copy()
                if mode == "delta":
                    v[delta] -= s_arr[s][delta]
                per_k[k].append(v)
    return [np.array(x) for x in per_k]


@pytest.mark.parametrize("mode", ["absolute", "delta"])
def test_stats_equal_a_direct_numpy_reference(mode):
    states, actions = episodes()
    st = compute_stats(states, actions, RIG_JOINT_NAMES, chunk=H, action_mode=mode,
                       episode_ids=[1, 2, 3])
    delta = ActionLayout.from_joint_names(RIG_JOINT_NAMES).delta_mask
    assert st.delta_mask.tolist() == (delta.tolist() if mode == "delta" else [False] * 14)
    allstate = np.concatenate(states)
    assert st.state.count == len(allstate) == 68
    np.testing.assert_allclose(st.state.mean, allstate.mean(0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(st.state.std, allstate.std(0), rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(st.state.min, allstate.min(0))
    np.testing.assert_array_equal(st.state.max, allstate.max(0))
    for name, q in QS.items():
        np.testing.assert_array_equal(getattr(st.state, name), np.quantile(allstate, q, axis=0))

    per_k = reference_entries(states, actions, mode, delta)
    assert st.chunk_count.tolist() == [len(x) for x in per_k]
    assert st.chunk_count[0] == 68 and st.chunk_count[7] == (40 - 7) + (23 - 7)  # 5-step ep absent
    np.testing.assert_allclose(st.chunk_mean, [x.mean(0) for x in per_k], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(st.chunk_std, [x.std(0) for x in per_k], rtol=1e-12, atol=1e-13)
    pooled = np.concatenate(per_k)
    assert st.action.count == len(pooled)
    np.testing.assert_allclose(st.action.mean, pooled.mean(0), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(st.action.std, pooled.std(0), rtol=1e-12, atol=1e-13)
    np.testing.assert_array_equal(st.action.min, pooled.min(0))
    np.testing.assert_array_equal(st.action.max, pooled.max(0))
    for name, q in QS.items():
        np.testing.assert_allclose(getattr(st.action, name), np.quantile(pooled, q, axis=0),
                                   rtol=0, atol=1e-15)
    if mode == "delta":   # delta entries differ from the raw action values
        assert not np.allclose(st.chunk_mean[:, 0], np.concatenate(actions)[:, 0].mean())


def test_weighted_quantiles_equal_quantiles_of_the_repeated_values():
    rng = np.random.default_rng(3)
    v = rng.normal(size=500)
    w = rng.integers(1, 30, size=500)
    qs = [0.0, 0.01, 0.1, 0.37, 0.5, 0.9, 0.99, 1.0]
    np.testing.assert_array_equal(weighted_quantiles(v, w, qs), np.quantile(np.repeat(v, w), qs))


def test_positions_no_episode_reaches_take_the_pooled_stats():
    states, actions = episodes(lengths=(3, 4))
    st = compute_stats(states, actions, RIG_JOINT_NAMES, chunk=6)
    assert st.chunk_count.tolist() == [7, 5, 3, 1, 0, 0]
    np.testing.assert_array_equal(st.chunk_mean[4], st.action.mean)
    assert np.isfinite(st.chunk_std).all() and np.isfinite(st.chunk_mean).all()


@pytest.mark.parametrize("norm", ["mean_std", "quantile"])
def test_normalize_unnormalize_round_trip_numpy_and_torch(norm):
    states, actions = episodes()
    st = compute_stats(states, actions, RIG_JOINT_NAMES, chunk=H, action_mode="delta")
    x = states[0][:5]
    xn = st.normalize_state(x, norm)
    np.testing.assert_allclose(st.unnormalize_state(xn, norm), x, rtol=1e-12, atol=1e-12)
    chunk = np.stack([actions[0][i:i + H] for i in range(3)])      # (3, H, 14)
    an = st.normalize_actions(chunk, norm)
    np.testing.assert_allclose(st.unnormalize_actions(an, norm), chunk, rtol=1e-12, atol=1e-12)
    if norm == "mean_std":
        k = 3   # position k uses its own statistics; the constant dim 13 stays finite
        want = (chunk[:, k] - st.chunk_mean[k]) / np.maximum(st.chunk_std[k], st.std_floor)
        np.testing.assert_allclose(an[:, k], want)
        assert st.chunk_std[0, 13] == 0 and np.isfinite(an).all()
    else:       # q01 -> -1, q99 -> +1
        np.testing.assert_allclose(st.normalize_state(st.state.q01, norm)[:13], -1)
        np.testing.assert_allclose(st.normalize_state(st.state.q99, norm)[:13], 1)
    t = torch.from_numpy(chunk[:, :5]).float()       # a shorter chunk (h=5 <= H)
    tn = st.normalize_actions(t, norm)
    assert isinstance(tn, torch.Tensor) and tn.dtype == torch.float32
    np.testing.assert_allclose(tn.numpy(), st.normalize_actions(chunk[:, :5], norm), rtol=1e-5,
                               atol=1e-5)
    torch.testing.assert_close(st.unnormalize_actions(tn, norm), t, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="h <= 8"):
        st.normalize_actions(np.zeros((H + 1, 14)))
    with pytest.raises(ValueError, match="unknown normalisation"):
        st.normalize_state(x, "minmax")


def test_save_load_and_the_32d_action_config(tmp_path):
    states, actions = episodes()
    st = compute_stats(states, actions, RIG_JOINT_NAMES, chunk=H, action_mode="delta",
                       episode_ids=[4, 5, 6])
    path = st.save(tmp_path / "norm_stats.json")
    back = NormStats.load(path)
    assert back.to_dict() == st.to_dict()   # exact: floats round-trip through JSON
    assert back.episodes == (4, 5, 6) and back.action_mode == "delta"
    cfg = st.model_action_config()
    assert cfg["mean"].shape == cfg["std"].shape == (H, 32)
    mask = cfg["std"] > 1e-5
    lay = ActionLayout.from_joint_names(RIG_JOINT_NAMES)
    assert (mask == lay.mask).all()            # every row: the rig's dims, constant dim included
    np.testing.assert_array_equal(lay.from_model(cfg["mean"]), st.chunk_mean)
    assert (cfg["mean"][:, ~lay.mask] == 0).all()
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="damaged"):
        NormStats.load(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="compute them"):
        NormStats.load(tmp_path / "none.json")
    d = json.loads(path.read_text())
    d["version"] = 99
    with pytest.raises(ValueError, match="update the workstation"):
        NormStats.from_dict(d)


def test_bad_input_is_refused():
    states, actions = episodes()
    with pytest.raises(ValueError, match="unknown action mode"):
        compute_stats(states, actions, RIG_JOINT_NAMES, chunk=H, action_mode="relative")
    with pytest.raises(ValueError, match=r"\(N, 14\)"):
        compute_stats([states[0][:, :13]], [actions[0]], RIG_JOINT_NAMES, chunk=H)
    with pytest.raises(ValueError, match="at least one episode"):
        compute_stats([], [], RIG_JOINT_NAMES, chunk=H)


def test_names_outside_the_model_layout_work_in_absolute_mode_only():
    from xr0.data.layout import LayoutError

    states, actions = episodes()
    names = [f"joint{i}" for i in range(14)]
    st = compute_stats(states, actions, names, chunk=H)
    assert st.joint_names == tuple(names) and not st.delta_mask.any()
    with pytest.raises(LayoutError, match="'joint0'.*supported names"):
        compute_stats(states, actions, names, chunk=H, action_mode="delta")
    with pytest.raises(LayoutError, match="'joint0'"):
        st.model_action_config()
    with pytest.raises(ValueError, match=r"delta_mask has shape \(3,\)"):
        compute_stats(states, actions, names, chunk=H, action_mode="delta",
                      delta_mask=np.ones(3, bool))
