"""The sim's follower arms as emulated Dynamixel chains, so the real driver runs against MuJoCo.

    sim = SimRig(load_rig_config("sim")); sim.connect()
    with SimDynamixelBridge(sim, load_rig_config("aloha"), calibration_dir) as bridge:
        with HardwareRig(bridge.config) as rig:      # dynamixel-sdk -> pty -> emulator -> SimRig
            rig.command(q)

Each follower arm of the hardware config becomes one emulated bus (its ids and models). Present
positions come from the SimRig's state; Goal_Position writes become SimRig commands; torque off on
every servo of both arms makes the sim arms limp, torque on again makes them hold. The bridge writes
a nominal calibration per arm (zero pose at 2048 ticks, gripper closed..open = 2048..3072), which
is how the servos of a freshly assembled arm read.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np

from drivers import layout
from drivers.config import ArmConfig, RigConfig
from drivers.dynamixel import control_table as ct
from drivers.dynamixel.calibration import ArmCalibration
from drivers.dynamixel.emulator import DynamixelEmulator
from drivers.rig import Rig


class SimDynamixelBridge:
    def __init__(self, sim: Rig, hardware_config: RigConfig, calibration_dir: str | Path):
        self.sim = sim
        self.hardware_config = hardware_config
        self.calibration_dir = Path(calibration_dir)
        self.emulators: dict[str, DynamixelEmulator] = {}
        self.calibrations: dict[str, ArmCalibration] = {}
        self.arms: dict[str, ArmConfig] = {}
        self.config: RigConfig | None = None
        self._lock = threading.Lock()

    # -- units -------------------------------------------------------------------------------
    def _to_ticks(self, side: str, q7: np.ndarray) -> np.ndarray:
        c = self.calibrations[side]
        ticks = q7 / ct.RAD_PER_TICK + ct.CENTER_TICKS
        ticks[-1] = c.gripper_closed + q7[-1] * c.gripper_span
        return ticks

    def _to_units(self, side: str, ticks: np.ndarray) -> np.ndarray:
        c = self.calibrations[side]
        q = (ticks - ct.CENTER_TICKS) * ct.RAD_PER_TICK
        q[-1] = (ticks[-1] - c.gripper_closed) / c.gripper_span
        return q

    # -- emulator hooks (called by the emulator threads, under their lock) -------------------
    def _present(self, side: str) -> dict[int, float]:
        state = self.sim.read()
        self._sync_torque(bool(state.info.get("limp", False)))
        ticks = self._to_ticks(side, state.follower[layout.arm_slice(side)].copy())
        return {j.id: float(t) for j, t in zip(self.arms[side].joints, ticks)}

    def _goal(self, side: str, goals: dict[int, int]) -> None:
        emu = self.emulators[side]
        ticks = np.array([emu.servos[j.id].get("Goal_Position") for j in self.arms[side].joints],
                         dtype=np.float64)
        with self._lock:
            targets = getattr(self.sim, "targets", None)
            q = targets() if callable(targets) else self.sim.read().follower.copy()
            q[layout.arm_slice(side)] = self._to_units(side, ticks)
            self.sim.command(q)

    def _sync_torque(self, limp: bool) -> None:
        """All servos torque off -> the sim arms go limp; any back on -> the sim holds."""
        on = any(s.torque for emu in self.emulators.values() for s in emu.servos.values())
        if not on and not limp:
            self.sim.torque_off()
        elif on and limp:
            self.sim.hold()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "SimDynamixelBridge":
        arms = []
        try:
            for side in layout.SIDES:
                arm = self.hardware_config.arm("follower", side)
                if arm is None:
                    raise ValueError(f"{self.hardware_config.source}: no {side} follower arm")
                self.arms[side] = arm
                self.calibrations[side] = ArmCalibration.nominal(arm)
                emu = DynamixelEmulator([(j.id, j.model) for j in arm.joints], baud=arm.baud)
                emu.position_source = (lambda s=side: self._present(s))
                emu.on_goal = (lambda goals, s=side: self._goal(s, goals))
                self.emulators[side] = emu.start()
                path = self.calibrations[side].save(self.calibration_dir / f"{arm.name}.json")
                arms.append(dataclasses.replace(arm, port=emu.port, calibration=str(path)))
        except BaseException:
            self.stop()
            raise
        self.config = dataclasses.replace(self.hardware_config, arms=tuple(arms), cameras=())
        return self

    def stop(self) -> None:
        for emu in self.emulators.values():
            emu.stop()
        self.emulators.clear()

    def __enter__(self) -> "SimDynamixelBridge":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
