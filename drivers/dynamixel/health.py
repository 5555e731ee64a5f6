"""Servo health: the temperature and hardware-error status of every servo of a rig's arms.

The buses belong to the control thread, so health is read there, between position reads, at a low
rate: `due()` hands out at most one job per control tick, a (arm, field) pair, spread so that each
arm's Present_Temperature and Hardware_Error_Status are read about once per `period_s`; the job
is one Sync Read of that one-byte field on that arm's bus (about 1 ms of wire time for seven
servos at 1 Mbps). Other threads (the GUI) read `snapshot()`, an immutable mapping replaced on
every update.

    monitor = HealthMonitor(arms, period_s=1.0)
    monitor.start()                   # after connect: limits, then every field once
    job = monitor.due(now())          # in the control thread, once per tick
    monitor.read(arm, field)          # in that arm's read job
    monitor.snapshot()                # {arm name: {joint name: ServoHealth}}, any thread
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Mapping, Sequence

from drivers.clock import now
from drivers.dynamixel import control_table as ct
from drivers.dynamixel.arm import DynamixelArm
from drivers.errors import RigError

TEMPERATURE = "Present_Temperature"
HARDWARE_ERROR = "Hardware_Error_Status"
FIELDS = (TEMPERATURE, HARDWARE_ERROR)
TEMPERATURE_MARGIN_C = 10  # a servo this close to its Temperature_Limit is shown as hot


@dataclass(frozen=True)
class ServoHealth:
    """The latest health readings of one servo; None where not read yet."""

    arm: str
    joint: str
    servo_id: int
    model: str
    temperature_c: int | None = None
    limit_c: int | None = None  # Temperature_Limit: the servo shuts down (overheating) above it
    error_bits: int | None = None  # Hardware_Error_Status
    t_temperature: float | None = None  # drivers.clock.now() of the readings
    t_errors: float | None = None
    read_error: str = ""  # why the last health read of this arm failed ("" when it did not)

    @property
    def errors(self) -> list[tuple[str, str]]:
        """[(fault, fix)] decoded from Hardware_Error_Status."""
        return ct.decode_hardware_error(self.error_bits) if self.error_bits else []

    @property
    def warn_at_c(self) -> int | None:
        return None if self.limit_c is None else self.limit_c - TEMPERATURE_MARGIN_C

    @property
    def hot(self) -> bool:
        """Within TEMPERATURE_MARGIN_C of the Temperature_Limit (or past it)."""
        return (self.temperature_c is not None and self.warn_at_c is not None
                and self.temperature_c >= self.warn_at_c)

    @property
    def faulty(self) -> bool:
        return bool(self.error_bits)

    def describe(self) -> str:
        """One line per finding with what to do; "" when the servo is fine."""
        where = f"{self.arm} joint '{self.joint}' (id {self.servo_id}, {self.model})"
        lines = [f"{where} reports {fault}: {fix}" for fault, fix in self.errors]
        if self.hot:
            lines.append(f"{where} is at {self.temperature_c} °C, near its limit of "
                         f"{self.limit_c} °C where it shuts down: let it cool, reduce the load or "
                         f"the duty cycle")
        if self.read_error:
            lines.append(f"{where}: health not read: {self.read_error}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"temperature_c": self.temperature_c, "limit_c": self.limit_c, "hot": self.hot,
                "error_bits": self.error_bits,
                "errors": [{"fault": f, "fix": x} for f, x in self.errors]}


Snapshot = Mapping[str, Mapping[str, ServoHealth]]


class HealthMonitor:
    """Health readings of the servos of some arms, refreshed from the control thread."""

    def __init__(self, arms: Sequence[DynamixelArm], period_s: float = 1.0):
        self.arms = {a.name: a for a in arms}
        self.period_s = float(period_s)
        self.jobs = [(a.name, f) for f in FIELDS for a in arms]
        self.step_s = self.period_s / max(1, len(self.jobs))
        self.reads = 0  # health sync reads done
        self._next_job = 0
        self._t_next = 0.0
        self._lock = threading.Lock()
        self._snapshot: Snapshot = MappingProxyType({
            a.name: MappingProxyType({
                j.name: ServoHealth(a.name, j.name, j.id, j.model) for j in a.config.joints})
            for a in arms})

    # -- any thread ----------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """{arm name: {joint name: ServoHealth}}; an immutable mapping, replaced on update."""
        return self._snapshot

    # -- the control thread --------------------------------------------------------------------
    def start(self) -> None:
        """After connect: each arm's Temperature_Limit (EEPROM, read once) and every field, so
        the readings are there at once. Failures are kept in `read_error`, never raised."""
        for name in self.arms:
            self.refresh(name, limits=True)
        self._t_next = now() + self.step_s

    def due(self, t: float) -> tuple[str, str] | None:
        """The (arm, field) to read on this tick, or None; at most one per call."""
        if not self.jobs or t < self._t_next:
            return None
        job = self.jobs[self._next_job]
        self._next_job = (self._next_job + 1) % len(self.jobs)
        self._t_next += self.step_s
        if self._t_next <= t:  # behind (a stall, or the first tick): no burst to catch up
            self._t_next = t + self.step_s
        return job

    def read(self, arm: str, field: str) -> None:
        """One Sync Read of `field` on the arm's bus, alerts tolerated (a faulted servo still
        reports). A failed read is kept in `read_error`, never raised: health reads never stop
        the control loop (the position read that follows reports a bus that is really gone)."""
        bus = self.arms[arm].bus
        try:
            values = bus.sync_read((field,), alert_ok=True)[field]
        except (RigError, OSError) as e:
            self._update(arm, lambda h: replace(h, read_error=str(e)))
            return
        finally:
            self.reads += 1
        t = now()
        if field == TEMPERATURE:
            self._update(arm, lambda h: replace(h, temperature_c=values.get(h.servo_id),
                                                t_temperature=t, read_error=""))
        elif field == HARDWARE_ERROR:
            self._update(arm, lambda h: replace(h, error_bits=values.get(h.servo_id),
                                                t_errors=t, read_error=""))
        else:
            raise ValueError(f"not a health field: {field!r}; use one of {FIELDS}")

    def refresh(self, arm: str, limits: bool = False) -> None:
        """Every health field of one arm now (after connect, and after a servo fault)."""
        if limits:
            try:
                lim = self.arms[arm].bus.sync_read(("Temperature_Limit",), alert_ok=True)
            except (RigError, OSError) as e:
                self._update(arm, lambda h: replace(h, read_error=str(e)))
            else:
                values = lim["Temperature_Limit"]
                self._update(arm, lambda h: replace(h, limit_c=values.get(h.servo_id)))
        for field in FIELDS:
            self.read(arm, field)

    def record_fault(self, arm: str, servo_id: int | None, bits: int | None) -> None:
        """A ServoFault's own reading of Hardware_Error_Status, kept even if no later read
        succeeds."""
        if arm not in self.arms or servo_id is None or bits is None:
            return
        t = now()
        self._update(arm, lambda h: replace(h, error_bits=bits, t_errors=t)
                     if h.servo_id == servo_id else h)

    def _update(self, arm: str, fn) -> None:
        with self._lock:
            snap = dict(self._snapshot)
            snap[arm] = MappingProxyType({j: fn(h) for j, h in snap[arm].items()})
            self._snapshot = MappingProxyType(snap)
