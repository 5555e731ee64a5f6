"""drivers.stats.RollingStats: the window, its summary, and the summary's reuse between samples."""

import numpy as np

from drivers.stats import RollingStats


def test_summary_covers_the_last_capacity_samples_and_follows_new_ones():
    rs = RollingStats(capacity=100)
    assert rs.summary()["count"] == 0 and np.isnan(rs.summary()["p99"])
    rng = np.random.default_rng(0)
    data = rng.exponential(size=250)
    for x in data:
        rs.add(float(x))
    window = data[-100:]
    assert np.array_equal(rs.values(), window)   # oldest first after wrapping round
    s = rs.summary(1e3)
    assert s["count"] == 250
    assert np.isclose(s["p50"], np.percentile(window, 50) * 1e3)
    assert np.isclose(s["p99"], np.percentile(window, 99) * 1e3)
    assert np.isclose(s["mean"], window.mean() * 1e3) and np.isclose(s["max"], window.max() * 1e3)
    # asked again without a new sample: the same figures; a caller's edits do not leak back
    s["p99"] = -1.0
    assert rs.summary(1e3)["p99"] == np.percentile(window, 99) * 1e3
    assert np.isclose(rs.summary()["p99"], np.percentile(window, 99))   # another scale
    rs.add(1e6)   # a new sample is in the next summary at once
    assert rs.summary(1e3)["max"] == 1e9 and rs.summary(1e3)["count"] == 251
    rs.clear()
    assert rs.summary(1e3)["count"] == 0
    rs.add(2.0)
    assert rs.summary()["p50"] == 2.0
