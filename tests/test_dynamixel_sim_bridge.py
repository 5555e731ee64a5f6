"""The real Dynamixel driver end to end against the MuJoCo sim, through emulated buses."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from drivers.config import SimConfig, load_rig_config
from drivers.dynamixel import control_table as ct
from drivers.hardware import HardwareRig
from drivers.sim.dxl_bridge import SimDynamixelBridge
from drivers.sim.rig import SimRig


def test_hardware_rig_drives_the_sim_through_dynamixel(tmp_path):
    cfg = load_rig_config("sim")
    cfg = cfg.with_(cameras=(), sim=dataclasses.replace(cfg.sim or SimConfig(), realtime=False))
    sim = SimRig(cfg)
    sim.connect()
    try:
        with SimDynamixelBridge(sim, load_rig_config("aloha"), tmp_path) as bridge:
            with HardwareRig(bridge.config) as rig:
                assert not sim.read().info["limp"]
                q0 = rig.read().follower
                truth = sim.read().follower
                tol = np.where(np.arange(14) % 7 == 6, 1.0 / 1024, ct.RAD_PER_TICK)
                assert np.all(np.abs(q0 - truth) <= tol)
                target = q0.copy()
                target[0] += 0.3  # left waist
                target[7 + 2] -= 0.2  # right elbow
                rig.command(target)
                rig.read()  # one round trip per bus: the sync writes have been handled
                assert sim.targets()[[0, 9]] == pytest.approx(target[[0, 9]], abs=ct.RAD_PER_TICK)
                for _ in range(75):
                    sim.step()
                q = rig.read().follower
                assert np.all(np.abs(q - sim.read().follower) <= tol)
                assert q[0] == pytest.approx(target[0], abs=0.05)
                assert q[9] == pytest.approx(target[9], abs=0.05)
            # disconnect turned every servo's torque off: the sim arms are limp
            bridge.emulators["left"].get(1, "Present_Position")  # the bridge syncs torque
            assert sim.read().info["limp"]
    finally:
        sim.disconnect()
