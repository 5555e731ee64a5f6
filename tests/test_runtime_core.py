"""The chunk runtime on step-indexed time: splice alignment, joins, strategies, watchdog, pause,
delay errors and telemetry (plus one real-time test of the inference worker thread)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from xr0.runtime import ChunkRuntime, DelayTooLarge, Flag, Observation, RuntimeConfig, load_run
from xr0.runtime.executor import SteppedExecutor, ThreadedExecutor
from xr0.runtime.metrics import boundary_discontinuity, rms_jerk

D = 3
DT = 0.02


def target(s: float) -> np.ndarray:
    """A smooth known trajectory of the absolute step."""
    return np.array([np.sin(0.05 * s), np.cos(0.03 * s), 0.01 * s])


class FnPolicy:
    """Chunk for request step r: target(r + i); a clean prefix is returned as its first rows."""

    def __init__(self, horizon=20, supports_prefix=True, offset=None, blend=15):
        self.chunk_length = horizon
        self.supports_prefix = supports_prefix
        self.offset = offset  # chunk number -> constant added (chunks that disagree)
        self.blend = blend
        self.calls = 0
        self.prefixes: list[int] = []

    def infer(self, obs: Observation, prefix):
        n = self.calls
        self.calls += 1
        self.prefixes.append(0 if prefix is None else len(prefix))
        off = 0.0 if self.offset is None else self.offset(n)
        out = np.array([target(obs.step + i) + off for i in range(self.chunk_length)])
        if prefix is not None and len(prefix):
            d = len(prefix)
            out[:d] = prefix
            # continue from the prefix: its residual against this chunk's plan fades out smoothly
            resid = prefix[-1] - (target(obs.step + d - 1) + off)
            for i in range(d, self.chunk_length):
                u = min((i - d + 1) / self.blend, 1.0)
                out[i] += resid * 0.5 * (1 + np.cos(np.pi * u))
        return out


def observe_at(t):
    return lambda s: Observation(s, t, np.zeros(D))


def run(policy, strategy, delay, steps=200, k=5, **cfg):
    rt = ChunkRuntime(policy, RuntimeConfig(dt=DT, strategy=strategy, k=k, **cfg),
                      executor=SteppedExecutor(policy, DT, delay))
    out = []
    for s in range(steps):
        t = s * DT
        out.append(rt.step(np.zeros(D), t, observe_at(t)))
    return rt, out


@pytest.mark.parametrize("strategy", ["xr0", "naive", "aggregate"])
@pytest.mark.parametrize("delay,k", [(0, 5), (1, 5), (4, 5), (7, 3), (12, 5)])
def test_splice_is_timestep_aligned(strategy, delay, k):
    rt, out = run(FnPolicy(horizon=30), strategy, delay, k=k)
    first = delay  # the first chunk (requested at step 0) arrives at step `delay`
    for r in out[:first]:
        assert r.action is None and r.flags & Flag.WAITING
    for r in out[first:]:
        assert r.action is not None, (r.step, r.flags)
        np.testing.assert_allclose(r.action, target(r.step), atol=1e-12)
    chunks = rt.telemetry.chunks()
    assert len(chunks) > 5
    assert all(c.arrival_step - c.request_step == delay for c in chunks if c.arrival_step >= 0)
    if strategy == "xr0":  # the clean prefix: the d actions executed during the delay (>= 1)
        assert [c.prefix_length for c in chunks[1:]] == [max(delay, 1)] * (len(chunks) - 1)
        assert all(c.d == delay for c in chunks[1:])
    else:
        assert all(c.prefix_length == 0 for c in chunks)
    assert not any(r.flags & (Flag.STARVED | Flag.LATE) for r in out)


def alternating(n):
    return 0.5 * (-1) ** n


@pytest.mark.parametrize("delay", [2, 4])
def test_xr0_joins_without_jump_naive_jumps(delay):
    res = {}
    for strategy in ("xr0", "naive"):
        rt, _ = run(FnPolicy(horizon=25, offset=alternating), strategy, delay, steps=300, k=8)
        snap = rt.telemetry.snapshot()
        res[strategy] = boundary_discontinuity(snap["step_action"], snap["step_chunk"],
                                               snap["step_flags"])
        assert res[strategy]["switches"] >= 10
    assert res["xr0"]["max"] <= 1.5, res
    assert res["naive"]["mean"] > 10.0, res  # each switch jumps by the chunks' disagreement


def test_sync_holds_while_inferring():
    delay = 5
    rt, out = run(FnPolicy(horizon=20), "sync", delay, steps=100)
    holds = [r.step for r in out if r.action is None]
    assert all(out[s].flags & Flag.WAITING for s in holds)
    chunks = [c for c in rt.telemetry.chunks() if c.arrival_step >= 0]
    for c in chunks:
        # held from the request until arrival, then the chunk runs from its index 0
        assert all(out[s].action is None for s in range(c.request_step, c.arrival_step))
        a = out[c.arrival_step].action
        np.testing.assert_allclose(a, target(c.request_step))
    assert len(chunks) >= 3
    assert len(holds) >= delay * len(chunks)  # every chunk costs `delay` held steps


class ConstPolicy:
    """Chunk n is all n (a number per chunk), to check weights."""

    chunk_length = 10
    supports_prefix = False

    def __init__(self):
        self.n = 0

    def infer(self, obs, prefix):
        self.n += 1
        return np.full((self.chunk_length, D), float(self.n))


def test_ensemble_weights_are_acts():
    rt, out = run(ConstPolicy(), "ensemble", 2, steps=60)
    chunks = [c for c in rt.telemetry.chunks() if c.arrival_step >= 0]
    for r in out[20:]:
        cover = [c for c in chunks if c.arrival_step <= r.step < c.request_step + 10]
        vals = np.array([c.actions[0, 0] for c in cover])  # oldest first
        w = np.exp(-0.01 * np.arange(len(vals)))
        assert len(vals) >= 3
        np.testing.assert_allclose(r.action, np.full(D, (w * vals).sum() / w.sum()))


def test_watchdog_holds_when_the_policy_stalls():
    # the third chunk never comes back
    rt, out = run(FnPolicy(horizon=20), "xr0", lambda i: None if i == 2 else 2, steps=80, k=5)
    starved = [r for r in out if r.flags & Flag.STARVED]
    assert starved, "the plan ran out and the runtime must say so"
    assert all(r.action is None for r in starved)
    first = starved[0].step
    assert all(r.flags & Flag.STARVED for r in out[first:])
    # until then the plan was executed to its last action
    assert out[first - 1].action is not None


def test_stale_observation_holds_and_requests_nothing():
    pol = FnPolicy()
    rt = ChunkRuntime(pol, RuntimeConfig(dt=DT, k=5, max_obs_age_s=0.1),
                      executor=SteppedExecutor(pol, DT, 1))
    for s in range(5):
        r = rt.step(np.zeros(D), s * DT, observe_at(s * DT - 0.5))
        assert r.action is None and r.flags & Flag.STALE_OBS and "old" in r.message
    assert pol.calls == 0 and rt.telemetry.chunks() == []
    rt.step(np.zeros(D), 5 * DT, observe_at(5 * DT))  # fresh again: a request goes out
    assert pol.calls == 1


def test_pause_holds_and_resume_replans_from_scratch():
    pol = FnPolicy(horizon=20)
    rt = ChunkRuntime(pol, RuntimeConfig(dt=DT, k=5), executor=SteppedExecutor(pol, DT, 3))

    def tick():
        t = rt.step_index * DT
        return rt.step(np.zeros(D), t, observe_at(t))

    for _ in range(40):
        tick()
    assert pol.prefixes[-1] == 3
    rt.pause()
    held = [tick() for _ in range(10)]
    assert all(r.action is None and r.flags & Flag.PAUSED for r in held)
    n_before = pol.calls
    rt.resume()
    after = [tick() for _ in range(10)]
    assert pol.calls == n_before + 1 and pol.prefixes[-1] == 0  # re-planned, no stale prefix
    assert all(r.action is None for r in after[:3])  # waits for the fresh chunk
    np.testing.assert_allclose(after[3].action, target(after[3].step))


def test_delay_too_large_is_an_error_and_holds():
    rt, out = run(FnPolicy(horizon=30), "xr0", 25, steps=80, k=10)
    err = [r for r in out if r.flags & Flag.DELAY_ERROR]
    assert err and all(r.action is None for r in err)
    assert isinstance(rt.error, DelayTooLarge)
    assert "d must be < H - k" in str(rt.error) and "500 ms" in str(rt.error)
    assert all(r.flags & Flag.DELAY_ERROR for r in out[err[0].step:])


def test_policy_error_holds_with_its_message():
    class Broken(FnPolicy):
        def infer(self, obs, prefix):
            raise RuntimeError("CUDA out of memory")

    rt, out = run(Broken(), "xr0", 1, steps=5)
    assert out[-1].action is None and out[-1].flags & Flag.POLICY_ERROR
    assert "CUDA out of memory" in out[-1].message


def test_telemetry_round_trip(tmp_path):
    rt, out = run(FnPolicy(horizon=20, offset=alternating), "xr0", 3, steps=120)
    path = rt.telemetry.save(tmp_path / "run", task="test", seed=7)
    log = load_run(path)
    assert log.meta["strategy"] == "xr0" and log.meta["seed"] == 7 and log.meta["H"] == 20
    arr = rt.telemetry.arrays()
    for k, v in arr.items():
        np.testing.assert_array_equal(getattr(log, k), v)
    assert log.step_action.shape == (120, D) and log.chunk_actions.shape[1:] == (20, D)
    assert np.isnan(log.step_action[:3]).all()  # the holds before the first chunk
    assert (log.chunk_d[1:] == 3).all() and len(log.switch_steps()) >= 5
    assert rms_jerk(log.step_action, DT) > 0
    with pytest.raises(FileNotFoundError, match="side by side"):
        load_run(tmp_path / "nothing")


def test_unknown_strategy_and_missing_capabilities_are_clear():
    with pytest.raises(ValueError, match="use one of"):
        ChunkRuntime(FnPolicy(), RuntimeConfig(dt=DT, strategy="bogus"), executor=object())
    with pytest.raises(ValueError, match="infer_guided"):
        ChunkRuntime(FnPolicy(), RuntimeConfig(dt=DT, strategy="rtc"), executor=object())
    with pytest.raises(ValueError, match="clean prefix"):
        ChunkRuntime(FnPolicy(supports_prefix=False), RuntimeConfig(dt=DT), executor=object())


def test_worker_thread_never_blocks_the_control_thread():
    """Real time: a 35 ms policy at 100 Hz; each tick returns at once and chunks stay aligned."""
    dt = 0.01

    class Slow(FnPolicy):
        def infer(self, obs, prefix):
            time.sleep(0.035)
            return super().infer(obs, prefix)

    pol = Slow(horizon=30)
    rt = ChunkRuntime(pol, RuntimeConfig(dt=dt, k=10), executor=ThreadedExecutor(pol))
    t0 = time.monotonic()
    tick_ms, out = [], []
    try:
        for s in range(150):
            deadline = t0 + s * dt
            while time.monotonic() < deadline:
                time.sleep(0.0005)
            a = time.monotonic()
            out.append(rt.step(np.zeros(D), a, lambda k: Observation(k, time.monotonic(),
                                                                     np.zeros(D))))
            tick_ms.append((time.monotonic() - a) * 1e3)
    finally:
        rt.stop()
    assert np.percentile(tick_ms, 99) < 5.0, f"step() blocked: p99 {np.percentile(tick_ms, 99)}"
    chunks = [c for c in rt.telemetry.chunks() if c.arrival_step >= 0]
    assert len(chunks) >= 4
    assert all(c.latency_ms >= 35 for c in chunks)
    assert 4 <= rt.delay_estimate() <= 10
    got = [r for r in out if r.action is not None]
    assert len(got) > 100
    for r in got:  # timestep alignment holds whatever the latency was
        np.testing.assert_allclose(r.action, target(r.step), atol=1e-12)
