"""The sim scene and SimRig's joint interface, in the real MuJoCo."""

import dataclasses

import mujoco
import numpy as np
import pytest

from drivers import layout
from drivers.config import SimConfig
from drivers.errors import ConfigError, RigError
from drivers.sim import scene
from drivers.sim.rig import SimRig


def stepping(cfg, cameras=(), **sim):
    base = cfg.sim or SimConfig()
    return cfg.with_(
        cameras=tuple(c for c in cfg.cameras if c.name in cameras),
        sim=dataclasses.replace(base, realtime=False, **sim),
    )


def gym_aloha_model(task):
    return mujoco.MjModel.from_xml_path(str(scene.gym_aloha_assets() / scene.TASK_XML[task]))


@pytest.mark.parametrize("task", ["transfer_cube", "insertion"])
def test_model_has_wrist_cameras_and_gym_aloha_physics(task):
    model = scene.build_model(task)
    ref = gym_aloha_model(task)
    for side in ("left", "right"):
        cam = model.camera(f"{side}_wrist")
        assert model.cam_mode[cam.id] == mujoco.mjtCamLight.mjCAMLIGHT_FIXED
        body = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_BODY, model.cam_bodyid[cam.id])
        assert body == f"vx300s_{side}/gripper_link"
    assert model.camera("top").id >= 0
    # the physics is gym-aloha's, unchanged
    assert (model.nq, model.nv, model.nu, model.ngeom) == (ref.nq, ref.nv, ref.nu, ref.ngeom)
    assert model.opt.timestep == ref.opt.timestep
    for field in ("actuator_gainprm", "actuator_biasprm", "actuator_ctrlrange", "jnt_range",
                  "dof_frictionloss", "geom_friction", "body_mass", "geom_size"):
        np.testing.assert_array_equal(getattr(model, field), getattr(ref, field), err_msg=field)


def test_limits_come_from_the_mjcf(sim_config):
    rig = SimRig(stepping(sim_config))
    lo, hi = rig.limits()
    ref = gym_aloha_model("transfer_cube")
    for i, name in enumerate(layout.NAMES):
        side, joint = name.split("_", 1)
        if joint == "gripper":
            assert (lo[i], hi[i]) == (0.0, 1.0)
        else:
            np.testing.assert_array_equal((lo[i], hi[i]), ref.joint(f"vx300s_{side}/{joint}").range)
    assert lo[layout.NAMES.index("left_shoulder")] == pytest.approx(-1.85005)
    assert hi[layout.NAMES.index("right_wrist_angle")] == pytest.approx(2.23402)


def test_gripper_normalisation_matches_gym_aloha():
    from gym_aloha import constants as c

    x = np.linspace(-0.2, 1.2, 15)
    np.testing.assert_allclose(scene.unnormalize_gripper(x), c.unnormalize_puppet_gripper_position(x))
    np.testing.assert_allclose(scene.normalize_gripper(scene.unnormalize_gripper(x)), x, atol=1e-12)
    finger = np.linspace(0.021, 0.057, 7)
    np.testing.assert_allclose(scene.normalize_gripper(finger), c.normalize_puppet_gripper_position(finger))


def test_command_read_round_trip(sim_config):
    rig = SimRig(stepping(sim_config))
    with rig:
        state = rig.read()
        assert rig.has_leaders and state.leader.shape == (14,)
        np.testing.assert_allclose(state.follower[:6], [0, -0.96, 1.16, 0, -0.3, 0], atol=0.02)
        target = state.follower.copy()
        target[[0, 1, 2, 4]] += [0.3, 0.2, -0.25, 0.3]
        target[[7, 9, 11]] += [-0.3, 0.2, 0.4]
        target[6], target[13] = 0.6, 0.8
        rig.command(target)
        np.testing.assert_allclose(rig.targets(), target)
        for _ in range(75):
            rig.step()
        got = rig.read()
        np.testing.assert_allclose(got.follower[list(layout.JOINT_INDICES)],
                                   target[list(layout.JOINT_INDICES)], atol=0.03)
        np.testing.assert_allclose(got.follower[[6, 13]], [0.6, 0.8], atol=0.02)
        assert np.abs(got.follower_velocity).max() < 0.5
        assert got.info["sim_time"] == pytest.approx(1.5)
        # out-of-range targets are clamped to the joint limits, a wrong shape is refused
        lo, hi = rig.limits()
        rig.command(hi + 1.0)
        np.testing.assert_allclose(rig.targets(), hi)
        with pytest.raises(ValueError, match="expected \\(14,\\)"):
            rig.command(np.zeros(7))


def test_torque_off_goes_limp_and_hold_holds(sim_config):
    rig = SimRig(stepping(sim_config))
    with rig:
        start = rig.read().follower
        rig.command(start + np.where(layout.IS_GRIPPER, 0.0, 0.3))
        rig.torque_off()
        for _ in range(25):
            rig.step()
        limp = rig.read()
        assert limp.info["limp"]
        # no actuator pulls toward the targets any more
        assert np.abs(limp.follower - start)[list(layout.JOINT_INDICES)].max() < 0.15
        rig.hold()
        held = rig.read().follower
        for _ in range(25):
            rig.step()
        after = rig.read()
        assert not after.info["limp"]
        np.testing.assert_allclose(after.follower[:6], held[:6], atol=0.02)


def test_bad_config_is_refused_with_the_fix(sim_config):
    cams = (dataclasses.replace(sim_config.cameras[0], sim_camera="overhead"),)
    with pytest.raises(ConfigError, match="sim_camera 'overhead'.*use one of .*top"):
        SimRig(stepping(sim_config).with_(cameras=cams))
    with pytest.raises(ConfigError, match="control_hz = 33.*use 50"):
        SimRig(stepping(sim_config).with_(control_hz=33.0))
    with pytest.raises(ValueError, match="unknown sim task"):
        scene.build_model("stacking")
    rig = SimRig(stepping(sim_config))
    with pytest.raises(RigError, match="not connected"):
        rig.step()
