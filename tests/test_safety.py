"""Layout, clock and the safety clamps every command passes through."""

import time

import numpy as np
import pytest

from drivers import layout
from drivers.clock import Ticker, now
from drivers.config import SafetyConfig
from drivers.safety import SafetyFilter, joint_gap, max_step_vector, ramp_step
from drivers.teleop import GripperMap, map_leader_to_follower


def test_layout_is_14d_with_grippers_last_of_each_arm():
    assert layout.DIM == 14 and len(layout.NAMES) == 14
    assert layout.NAMES[6] == "left_gripper" and layout.NAMES[13] == "right_gripper"
    v = np.arange(14.0)
    parts = layout.split(v)
    assert parts["right"][0] == 7
    np.testing.assert_array_equal(layout.join(parts["left"], parts["right"]), v)
    with pytest.raises(ValueError, match=r"shape \(7,\).*expected \(14,\)"):
        layout.check(np.zeros(7))
    bad = np.zeros(14)
    bad[3] = np.nan
    with pytest.raises(ValueError, match="left_forearm_roll"):
        layout.check(bad)


def test_ticker_keeps_absolute_deadlines_without_drift():
    t = Ticker(200.0)
    start = t.t0
    lates = [t.wait() for _ in range(100)]
    elapsed = now() - start
    # 100 periods of 5 ms: an absolute schedule ends within a period of 0.5 s
    assert abs(elapsed - 0.5) < 0.005
    assert np.percentile(lates, 50) < 0.001


def test_ticker_skips_missed_ticks_instead_of_bursting():
    t = Ticker(100.0)
    t.wait()
    time.sleep(0.055)  # overrun by ~5 periods
    t.wait()
    assert t.missed >= 4
    late = t.wait()
    assert late < 0.005


def _filter(**kw):
    lo = np.full(14, -1.0)
    hi = np.full(14, 1.0)
    lo[[6, 13]], hi[[6, 13]] = 0.0, 1.0
    return SafetyFilter(lo, hi, SafetyConfig(**kw))


def test_filter_clamps_to_limits_then_rate_limits():
    f = _filter(max_step_rad=0.1, max_step_gripper=0.2)
    target = np.full(14, 5.0)
    last = np.zeros(14)
    out = f(target, last)
    expect = np.where(layout.IS_GRIPPER, 0.2, 0.1)
    np.testing.assert_allclose(out, expect)
    assert f.clamped_limit == 1 and f.clamped_rate == 1
    # without a previous command only the limits apply
    np.testing.assert_allclose(f(target, None), f.upper)


def test_filter_rejects_bad_vectors():
    f = _filter()
    with pytest.raises(ValueError, match="expected \\(14,\\)"):
        f(np.zeros(13), None)
    with pytest.raises(ValueError, match="empty for left_waist"):
        SafetyFilter(np.ones(14), np.ones(14), SafetyConfig())


def test_ramp_and_gap():
    cur = np.zeros(14)
    tgt = np.linspace(-1, 1, 14)
    d = max_step_vector(SafetyConfig(max_step_rad=0.05, max_step_gripper=0.1))
    steps = 0
    while not np.allclose(cur, tgt):
        nxt = ramp_step(cur, tgt, d)
        assert np.all(np.abs(nxt - cur) <= d + 1e-12)
        cur = nxt
        steps += 1
    assert steps == 20  # 1.0 rad at 0.05 rad/step
    gap, name = joint_gap(np.zeros(14), np.r_[np.zeros(13), 5.0])
    assert gap == 0.0, "grippers do not count towards the leader-follower gap"
    gap, name = joint_gap(np.zeros(14), np.r_[np.zeros(8), 0.9, np.zeros(5)])
    assert gap == pytest.approx(0.9) and name == "right_shoulder"


def test_gripper_range_map():
    m = GripperMap(leader_closed=0.1, leader_open=0.9, follower_closed=0.2, follower_open=0.8)
    assert m(0.1) == pytest.approx(0.2) and m(0.9) == pytest.approx(0.8)
    assert m(0.5) == pytest.approx(0.5) and m(-1) == pytest.approx(0.2)
    leader = np.zeros(14)
    leader[[6, 13]] = 0.9
    leader[0] = 0.3
    out = map_leader_to_follower(leader, m)
    assert out[0] == 0.3 and out[6] == pytest.approx(0.8) and out[13] == pytest.approx(0.8)
