"""The hardware rig: two Dynamixel follower arms, optionally two leader arms, RealSense cameras.

Each arm is on its own bus (U2D2), as on ALOHA; reads and writes go to the buses in parallel, one
thread per bus. Followers are never left with torque on after a failure: a connect that fails
halfway torques off what it enabled, disconnect is idempotent and reaches every arm even when one
fails, a servo fault drops that arm's torque, and other exceptions in read/command leave the
followers holding their pose.

Servo health (temperature, hardware-error status) is read in the read path, one arm's one-byte
field per tick at most, so that each arm is read about once per `health_period_s`
(drivers.dynamixel.health); `health()` returns the latest readings from any thread.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from drivers import layout
from drivers.clock import now
from drivers.config import ArmConfig, RigConfig
from drivers.dynamixel.arm import DynamixelArm, FollowerArm, LeaderArm
from drivers.dynamixel.health import HealthMonitor, Snapshot
from drivers.errors import ConfigError, ConnectionFailed, ServoFault
from drivers.rig import Rig, RigState


class HardwareRig(Rig):
    def __init__(self, config: RigConfig, *, parallel: bool = True,
                 read_velocity_current: bool = False, latency_timer_ms: float = 16.0,
                 health_period_s: float | None = 1.0):
        super().__init__(config)
        self.parallel = parallel
        self.read_velocity_current = read_velocity_current
        self.followers: dict[str, FollowerArm] = {}
        self.leaders: dict[str, LeaderArm] = {}
        for side in layout.SIDES:
            f = config.arm("follower", side)
            if f is None:
                raise ConfigError(f"{config.source or config.name}: a hardware rig needs a "
                                  f"{side} follower arm ([[arms]] with role = \"follower\")")
            self.followers[side] = FollowerArm(f, self._calibration_path(f),
                                               latency_timer_ms=latency_timer_ms)
        leaders = [config.arm("leader", s) for s in layout.SIDES]
        if any(leaders) and not all(leaders):
            missing = layout.SIDES[leaders.index(None)]
            raise ConfigError(f"{config.source or config.name}: leader arms come in pairs; add "
                              f"the {missing} leader arm or remove the other one")
        for side, arm in zip(layout.SIDES, leaders):
            if arm is not None:
                self.leaders[side] = LeaderArm(arm, self._calibration_path(arm),
                                               latency_timer_ms=latency_timer_ms)
        self._pool: ThreadPoolExecutor | None = None
        self._health = HealthMonitor(self.arms, health_period_s or 1.0)
        self.health_reads = health_period_s is not None  # False: no periodic health reads
        self._connected = False
        self.fault: ServoFault | None = None  # set by a servo fault; cleared by a new connect

    def _calibration_path(self, arm: ArmConfig):
        if not arm.calibration:
            raise ConfigError(
                f"{self.config.source or self.config.name}: arm '{arm.name}' has no calibration "
                f"file; add calibration = \"calibration/{arm.name}.json\" to its [[arms]] table "
                f"and run `python main.py calibrate --rig <this config> --arm {arm.name}`")
        return self.config.resolve(arm.calibration)

    @property
    def arms(self) -> list[DynamixelArm]:
        return [*self.followers.values(), *self.leaders.values()]

    @property
    def has_leaders(self) -> bool:
        return bool(self.leaders)

    # -- lifecycle ---------------------------------------------------------------------------
    def connect(self) -> None:
        if self._connected:
            return
        try:
            for arm in self.arms:
                arm.connect()
            self._start_cameras()
        except BaseException:
            try:
                self.disconnect()
            except Exception:
                pass  # the connect error is the one to report; disconnect did its best
            raise
        if self.parallel:
            self._pool = ThreadPoolExecutor(max_workers=len(self.arms),
                                            thread_name_prefix="rig-bus")
        self._health.start()
        self._connected = True
        self.fault = None
        self._estopped.clear()

    def _start_cameras(self) -> None:
        if not self.config.cameras:
            return
        from drivers.realsense.camera import RealSenseCamera

        for cam_cfg in self.config.cameras:
            cam = RealSenseCamera(cam_cfg)
            self.cameras[cam_cfg.name] = cam
            cam.start()

    def disconnect(self) -> None:
        """Followers torque off, leaders released, cameras stopped; every step is attempted even
        when one fails. Safe to call twice."""
        failures = []
        for arm in self.arms:
            try:
                arm.disconnect()
            except Exception as e:
                failures.append(f"{arm.name}: {e}")
        for name, cam in list(self.cameras.items()):
            try:
                cam.stop()
            except Exception as e:
                failures.append(f"camera {name}: {e}")
        self.cameras.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._connected = False
        if failures:
            raise ConnectionFailed("disconnect did not complete: " + "; ".join(failures)
                                   + ". If an arm still holds torque, cut its power.")

    # -- motion ------------------------------------------------------------------------------
    def _each(self, arms: list, fn) -> list:
        """fn(arm) for each arm, in parallel (one thread per bus) or in turn; every call runs to
        the end before the first exception is raised."""
        if self._pool is None or len(arms) < 2:
            results, first = [], None
            for a in arms:
                try:
                    results.append(fn(a))
                except BaseException as e:
                    first = first or e
                    results.append(None)
            if first is not None:
                raise first
            return results
        futures = [self._pool.submit(fn, a) for a in arms]
        errors = [f.exception() for f in futures]
        for e in errors:
            if e is not None:
                raise e
        return [f.result() for f in futures]

    def _require(self) -> None:
        if not self._connected:
            raise ConnectionFailed(f"rig '{self.config.name}' is not connected; call connect() "
                                   f"(or use it as a context manager) first")

    def read(self) -> RigState:
        self._require()
        followers = [self.followers[s] for s in layout.SIDES]
        leaders = [self.leaders[s] for s in layout.SIDES] if self.leaders else []
        vc = self.read_velocity_current
        job = self._health.due(now()) if self.health_reads else None

        def read_arm(arm):
            if vc and isinstance(arm, FollowerArm):
                out = arm.read_state(velocity=True, current=True)
            else:
                out = {"position": arm.read()}
            if job is not None and job[0] == arm.name:
                self._health.read(*job)  # after the position: never delays it
            return out
        try:
            out = self._each(followers + leaders, read_arm)
        except ServoFault as e:
            self._on_fault(e)
            raise
        t = now()
        state = RigState(t=t, follower=layout.join(out[0]["position"], out[1]["position"]))
        if leaders:
            state.leader = layout.join(out[2]["position"], out[3]["position"])
        if self.read_velocity_current:
            state.follower_velocity = layout.join(out[0]["velocity"], out[1]["velocity"])
            state.follower_current = layout.join(out[0]["current"], out[1]["current"])
        return state

    def _on_fault(self, e: ServoFault) -> None:
        """A servo fault: that arm has dropped its torque (FollowerArm does it); the rest hold and
        commands are refused until the rig is connected again."""
        self.fault = e
        arm = getattr(e, "bus", None)
        self._health.record_fault(arm, getattr(e, "servo_id", None), getattr(e, "bits", None))
        if arm in self._health.arms and self._health.arms[arm].bus.is_open:
            self._health.refresh(arm)  # every servo of that arm: more than one may be faulted
        try:
            self.hold()
        except Exception:
            pass

    def _write_targets(self, q: np.ndarray) -> None:
        self._require()
        if self.fault is not None:
            e = ServoFault(f"commands refused after a servo fault: {self.fault} Then disconnect "
                           f"and connect the rig again.")
            e.servo_id, e.bus, e.bits = (getattr(self.fault, k, None)
                                         for k in ("servo_id", "bus", "bits"))
            raise e
        parts = layout.split(q)
        arms = [self.followers[s] for s in layout.SIDES]
        try:
            self._each(arms, lambda a: a.write(parts[a.config.side]))
        except ServoFault as e:
            self._on_fault(e)
            raise
        except BaseException:
            try:
                self.hold()
            except Exception:
                pass
            raise

    def hold(self) -> None:
        """Goal := present on every follower that still has torque (a faulted arm is skipped)."""
        def hold_arm(arm: FollowerArm) -> None:
            try:
                arm.hold()
            except ServoFault:
                pass  # that arm has just dropped its torque; nothing to hold
        self._each([f for f in self.followers.values() if f.bus.is_open], hold_arm)

    def torque_off(self) -> None:
        self._each([f for f in self.followers.values() if f.bus.is_open], FollowerArm.torque_off)

    def limits(self) -> tuple[np.ndarray, np.ndarray]:
        lo = layout.join(self.followers["left"].lower, self.followers["right"].lower)
        hi = layout.join(self.followers["left"].upper, self.followers["right"].upper)
        return lo, hi

    def health(self) -> Snapshot:
        """{arm name: {joint name: ServoHealth}}: the latest temperature and hardware-error
        readings of every servo (None before the first read). Thread-safe, no bus traffic."""
        return self._health.snapshot()

    def bus_stats(self) -> list[dict]:
        """Per-bus read latency (p50/p99/max ms), retries and failures."""
        return [a.bus.stats() for a in self.arms]
