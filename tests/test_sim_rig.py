"""SimRig's cameras, real-time pacing, shutdown and determinism, in the real MuJoCo."""

import dataclasses
import threading
import time

import numpy as np
import pytest

from drivers.config import SimConfig
from drivers.errors import ConnectionFailed, RigError
from drivers.sim.rig import SimRig


def configured(cfg, realtime, cameras=("top", "left_wrist", "right_wrist"), **sim):
    base = cfg.sim or SimConfig()
    return cfg.with_(
        cameras=tuple(c for c in cfg.cameras if c.name in cameras),
        sim=dataclasses.replace(base, realtime=realtime, **sim),
    )


def teleop_steps(rig, n):
    for _ in range(n):
        rig.command(rig.read().leader)
        rig.step()


def test_every_camera_renders_non_constant_images_of_its_size(sim_config):
    cams = (
        dataclasses.replace(sim_config.cameras[0], width=160, height=120),
        dataclasses.replace(sim_config.cameras[1], width=96, height=64),
        dataclasses.replace(sim_config.cameras[2], width=96, height=64),
    )
    rig = SimRig(configured(sim_config, False).with_(cameras=cams))
    with rig:
        first = rig.frames()
        teleop_steps(rig, 60)  # the right arm reaches down over the cube
        frames = rig.frames()
    for cam in cams:
        f = frames[cam.name]
        assert f.color.shape == (cam.height, cam.width, 3) and f.color.dtype == np.uint8
        assert f.color.std() > 5.0, f"{cam.name} rendered a flat image"
        assert f.seq > first[cam.name].seq and f.t_device == pytest.approx(1.2, abs=0.07)
    # each camera sees its own view, and a wrist view follows its arm
    assert not np.array_equal(frames["left_wrist"].color, frames["right_wrist"].color)
    assert np.abs(frames["right_wrist"].color.astype(int) - first["right_wrist"].color).mean() > 5


def test_cameras_render_at_their_fps_in_sim_time(sim_config):
    rig = SimRig(configured(sim_config, False, cameras=("top",)))
    fps = rig.config.cameras[0].fps
    with rig:
        seq0 = rig.cameras["top"].latest().seq
        teleop_steps(rig, 100)  # 2 s
        assert rig.cameras["top"].latest().seq - seq0 == pytest.approx(2 * fps, abs=1)
    with pytest.raises(ConnectionFailed, match="disconnected"):
        rig.cameras["top"].wait_next(10**6, 0.1)


def test_realtime_keeps_pace_with_cameras_and_shuts_down(sim_config):
    rig = SimRig(configured(sim_config, True, cameras=("top", "left_wrist")))
    with pytest.raises(RigError, match="stepping mode"):
        rig.step()
    rig.connect()
    try:
        first = rig.cameras["top"].wait_next(0, timeout_s=5.0)
        rig.reset(3)
        t0 = time.perf_counter()
        seq = first.seq
        while time.perf_counter() - t0 < 3.0:
            state = rig.read()
            rig.command(state.leader)
            time.sleep(0.01)
        wall = time.perf_counter() - t0
        stats = rig.stats()
        sim_time = rig.read().info["sim_time"]
        frame = rig.cameras["top"].wait_next(seq, timeout_s=1.0)
    finally:
        rig.disconnect()
    assert 0.9 <= sim_time / wall <= 1.05, stats
    assert 0.9 <= stats["rtf"] <= 1.05, stats
    for name, fps in stats["camera_fps"].items():
        assert fps >= 0.7 * rig.config.cameras[0].fps, stats
    assert frame.color.shape == (sim_config.cameras[0].height, sim_config.cameras[0].width, 3)
    # the arms move under the operator while nobody steps them
    assert np.abs(state.follower - rig.operator.start_pose()).max() > 0.1
    assert not [t for t in threading.enumerate() if t.name.startswith("sim-")]
    rig.disconnect()  # idempotent


def _episode(cfg, seed, steps=120):
    rig = SimRig(cfg)
    with rig:
        rig.reset(seed)
        teleop_steps(rig, steps)
        s = rig.read()
        return s.follower, s.leader, rig.data.qpos.copy(), rig.frames()["top"].color


def test_a_seed_makes_the_episode_deterministic(sim_config):
    cfg = configured(sim_config, False, cameras=("top",))
    a = _episode(cfg, 5)
    b = _episode(cfg, 5)
    c = _episode(cfg, 6)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(a[2][16:19], c[2][16:19])  # another seed, another cube pose


def test_reset_without_a_seed_walks_on_from_the_configured_one(sim_config):
    rig = SimRig(configured(sim_config, False, cameras=(), seed=11))
    with rig:
        assert rig.read().info["seed"] == 11
        teleop_steps(rig, 5)
        rig.reset()
        s = rig.read()
        assert s.info["seed"] == 12 and s.info["sim_time"] == 0.0 and s.info["reward"] == 0
        np.testing.assert_array_equal(rig.data.qpos[16:23], rig.task.initial_objects(12))


def test_after_a_reset_the_first_read_sees_the_new_episode_not_the_last_frame(sim_config):
    """Stepping mode: the frame a policy gets with an episode's first observation shows that
    episode's scene at sim time 0, the same frame a freshly connected rig shows for that seed,
    never the previous episode's last frame (its arms where that episode left them)."""
    cfg = configured(sim_config, False, cameras=("top",))
    fresh = SimRig(cfg.with_(sim=dataclasses.replace(cfg.sim, seed=8)))
    with fresh:
        expected = fresh.frames()["top"]
    rig = SimRig(cfg.with_(sim=dataclasses.replace(cfg.sim, seed=7)))
    with rig:
        teleop_steps(rig, 150)                   # the arms well away from their start pose
        last = rig.frames()["top"]
        rig.reset(8)
        first = rig.frames()["top"]
        assert first.seq > last.seq and first.t_device == 0.0
        np.testing.assert_array_equal(first.color, expected.color)
        assert np.abs(first.color.astype(int) - last.color).mean() > 1.0
        # the fps schedule is the episode's own: 25 fps of sim time from the reset on
        teleop_steps(rig, 50)
        fps = rig.config.cameras[0].fps
        assert rig.cameras["top"].latest().seq - first.seq == pytest.approx(fps, abs=1)


def test_in_real_time_a_reset_returns_with_the_new_scene_on_every_camera(sim_config):
    """Real time: once reset() returns, each camera's latest frame shows the new episode (sim
    time near 0, rendered after the reset); a frame of the old scene still in flight at the
    reset is dropped, so none of them arrives after it either."""
    cams = tuple(dataclasses.replace(c, width=96, height=64) for c in sim_config.cameras[:2])
    rig = SimRig(configured(sim_config, True, cameras=()).with_(cameras=cams))
    with rig:
        time.sleep(1.5)                               # the old episode: arms moving, frames flowing
        before = {n: rig.cameras[n].latest() for n in rig.cameras}
        assert all(f.t_device > 0.5 for f in before.values())
        t_reset = time.monotonic()
        rig.reset(21)
        waited = time.monotonic() - t_reset
        firsts = {n: rig.cameras[n].latest() for n in rig.cameras}
        for n, f in firsts.items():
            assert f.seq > before[n].seq and f.t_device < 0.2, (n, f.t_device)
        assert waited < 1.0
        # frames keep coming, all of the new episode (its sim time only grows from ~0)
        time.sleep(0.5)
        for n, cam in rig.cameras.items():
            f = cam.latest()
            assert f.seq > firsts[n].seq and f.t_device < 1.0
