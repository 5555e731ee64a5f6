"""One Dynamixel bus (a U2D2 and its servo chain) on dynamixel-sdk, Protocol 2.0.

    bus = DynamixelBus("/dev/serial/by-id/usb-FTDI_...", motors, name="left_follower")
    bus.open(); bus.verify()                         # every id answers with the configured model
    state = bus.sync_read(("Present_Position",))     # {"Present_Position": {id: ticks}}
    bus.sync_write("Goal_Position", {1: 2048, ...})
    bus.stats()                                      # per-read latency p50/p99/max, retries

Reads are retried a bounded number of times; a status packet flagged with the hardware-alert bit
becomes a ServoFault naming the arm, the joint, the id and the fault with what to do.
"""

from __future__ import annotations

import os
import select
import threading
from dataclasses import dataclass
from typing import Iterable, Sequence

from dynamixel_sdk import (
    COMM_SUCCESS,
    GroupSyncRead,
    GroupSyncWrite,
    PacketHandler,
    PortHandler,
)

from drivers.clock import now
from drivers.dynamixel import control_table as ct
from drivers.errors import ConnectionFailed, RigError, ServoFault
from drivers.stats import RollingStats

BY_ID_HINT = "`ls -l /dev/serial/by-id` lists the USB serial adapters (U2D2) plugged in"


@dataclass(frozen=True)
class Motor:
    name: str  # joint name, e.g. "elbow"
    id: int
    model: str  # e.g. "XM430-W350"


class _BlockingPortHandler(PortHandler):
    """The SDK's PortHandler with two changes: reads wait in select() until bytes arrive or the
    packet timeout expires (the stock one polls with timeout 0 and burns a core per bus), and the
    USB latency-timer allowance of the packet timeout is configurable."""

    def __init__(self, port_name: str, latency_timer_ms: float = 16.0):
        super().__init__(port_name)
        self.latency_timer_ms = latency_timer_ms

    def setPacketTimeout(self, packet_length):  # noqa: N802 (SDK name)
        self.packet_start_time = self.getCurrentTime()
        self.packet_timeout = (self.tx_time_per_byte * packet_length
                               + self.latency_timer_ms * 2.0 + 2.0)

    def readPort(self, length):  # noqa: N802 (SDK name)
        fd = self.ser.fileno()
        out = bytearray()
        while len(out) < length:
            left_s = max(0.0, (self.packet_timeout - self.getTimeSinceStart()) / 1000.0)
            ready, _, _ = select.select([fd], [], [], left_s)
            if not ready:
                break
            try:
                chunk = os.read(fd, length - len(out))
            except BlockingIOError:
                continue
            if not chunk:
                break
            out += chunk
            if left_s == 0.0:
                break
        return bytes(out)


class LatencyStats(RollingStats):
    """Per-read latencies (seconds) over a window, with the bus's read/retry/failure counts."""

    def __init__(self, window: int = 20_000):
        super().__init__(window)
        self.reads = 0
        self.retries = 0
        self.failures = 0

    def add(self, seconds: float) -> None:
        super().add(seconds)
        self.reads += 1

    def summary(self) -> dict:  # type: ignore[override]
        ms = super().summary(1e3)
        has = ms["count"] > 0
        return {"reads": self.reads, "retries": self.retries, "failures": self.failures,
                "p50_ms": ms["p50"] if has else None, "p99_ms": ms["p99"] if has else None,
                "max_ms": ms["max"] if has else None}

    def reset(self) -> None:
        self.clear()
        self.reads = self.retries = self.failures = 0


def open_port(port: str, baud: int, latency_timer_ms: float = 16.0) -> PortHandler:
    """Open a serial port for Dynamixel traffic, with errors that name the port and the fix."""
    handler = _BlockingPortHandler(port, latency_timer_ms)
    supported = handler.getCFlagBaud(baud) > 0
    if not supported:
        rates = ", ".join(str(b) for b in ct.BAUD_RATES.values() if handler.getCFlagBaud(b) > 0)
        raise ConnectionFailed(
            f"baud rate {baud} is not supported for Dynamixel traffic on {port}; use one of "
            f"{rates} (ALOHA arms run at 1000000)"
        )
    handler.baudrate = baud
    try:
        handler.openPort()
    except Exception as e:  # pyserial raises SerialException (an OSError subclass or not)
        reason = str(e)
        if "ermission" in reason:
            fix = ("Your user may not read the port: add it to the dialout group "
                   "(sudo usermod -aG dialout $USER, then log in again)")
        else:
            fix = (f"check the USB cable and the port name: {BY_ID_HINT}; put that stable "
                   f"path in the rig config")
        raise ConnectionFailed(f"cannot open serial port {port}: {reason}. {fix}") from e
    return handler


class DynamixelBus:
    """Protocol 2.0 traffic with the servos of one arm."""

    def __init__(self, port: str, motors: Sequence[Motor], *, baud: int = 1_000_000,
                 name: str = "arm", retries: int = 2, latency_timer_ms: float = 16.0):
        self.port = port
        self.baud = baud
        self.name = name
        self.motors = tuple(motors)
        self.by_id = {m.id: m for m in self.motors}
        self.ids = tuple(m.id for m in self.motors)
        self.retries = max(0, int(retries))
        self.latency_timer_ms = latency_timer_ms
        self.latency = LatencyStats()
        self.lock = threading.RLock()
        self.packet = PacketHandler(2.0)
        self.handler: PortHandler | None = None
        self._reads: dict[tuple[int, int], GroupSyncRead] = {}
        self._writes: dict[str, GroupSyncWrite] = {}

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self.handler is not None and self.handler.is_open

    def open(self) -> None:
        if self.is_open:
            return
        self.handler = open_port(self.port, self.baud, self.latency_timer_ms)
        self._reads.clear()
        self._writes.clear()

    def close(self) -> None:
        if self.handler is not None and self.handler.is_open:
            try:
                self.handler.closePort()
            except Exception:
                pass
        self.handler = None

    def __enter__(self) -> "DynamixelBus":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _h(self) -> PortHandler:
        if not self.is_open:
            raise ConnectionFailed(f"{self.name}: the bus on {self.port} is not open; "
                                   f"connect the arm first")
        return self.handler

    def describe(self, servo_id: int) -> str:
        m = self.by_id.get(servo_id)
        if m is None:
            return f"{self.name} servo id {servo_id}"
        return f"{self.name} joint '{m.name}' (id {servo_id}, {m.model})"

    # -- discovery ---------------------------------------------------------------------------
    def ping(self, servo_id: int, tries: int | None = None) -> int | None:
        """The model number of a servo, or None if it does not answer."""
        with self.lock:
            for _ in range(1 + (self.retries if tries is None else tries)):
                model, result, _ = self.packet.ping(self._h(), servo_id)
                if result == COMM_SUCCESS:
                    return model
        return None

    def verify(self) -> None:
        """Every configured id answers with the configured model; otherwise one message naming
        the ids not answering or the models found, and the fix."""
        found = {m.id: self.ping(m.id) for m in self.motors}
        missing = [m for m in self.motors if found[m.id] is None]
        if len(missing) == len(self.motors):
            raise ConnectionFailed(
                f"{self.name}: no servo answered on {self.port} at {self.baud} baud "
                f"(ids {', '.join(str(m.id) for m in missing)}). Check that the arm's power "
                f"supply is on and its cable is plugged into the U2D2, and that the baud rate "
                f"matches the servos': `python main.py scan --port {self.port} --baud 57600` "
                f"tries another rate (57600 is the factory default)"
            )
        if missing:
            names = ", ".join(f"id {m.id} ({m.name})" for m in missing)
            raise ConnectionFailed(
                f"{self.name}: servo(s) {names} do not answer on {self.port}. Check the cable "
                f"between them and the previous servo in the chain, and that their ids and baud "
                f"rate are set (`python main.py scan --port {self.port}` lists what answers)"
            )
        wrong = [(m, found[m.id]) for m in self.motors
                 if found[m.id] != ct.MODELS[m.model].number]
        if wrong:
            what = "; ".join(
                f"id {m.id} ({m.name}) is expected to be {m.model} "
                f"(model {ct.MODELS[m.model].number}) but is {ct.model_name(n)} (model {n})"
                for m, n in wrong
            )
            raise ConnectionFailed(
                f"{self.name} on {self.port}: {what}. Fix the model in the rig config, or "
                f"check that the servo with that id is the one you meant (two servos may share "
                f"an id)"
            )

    # -- single registers --------------------------------------------------------------------
    def read(self, field: str, servo_id: int) -> int:
        f = ct.FIELDS[field]
        with self.lock:
            for attempt in range(self.retries + 1):
                data, result, err = self.packet.readTxRx(self._h(), servo_id, f.address, f.size)
                # a status without the data is a late answer to an earlier instruction: retry
                if result == COMM_SUCCESS and (len(data) == f.size or err):
                    self._check_error(servo_id, err, f"reading {field}")
                    return ct.decode(f, data)
                self.latency.retries += attempt < self.retries
        self.latency.failures += 1
        raise self._not_answering([servo_id], f"reading {field}")

    def write(self, field: str, servo_id: int, value: int) -> None:
        f = ct.FIELDS[field]
        data = list(ct.encode(f, value))
        with self.lock:
            for attempt in range(self.retries + 1):
                result, err = self.packet.writeTxRx(self._h(), servo_id, f.address, f.size, data)
                if result == COMM_SUCCESS:
                    self._check_error(servo_id, err, f"writing {field} = {value}")
                    return
                self.latency.retries += attempt < self.retries
        self.latency.failures += 1
        raise self._not_answering([servo_id], f"writing {field}")

    def write_all(self, field: str, values: dict[int, int] | int) -> None:
        ids = self.ids
        vals = values if isinstance(values, dict) else {i: values for i in ids}
        for i, v in vals.items():
            self.write(field, i, v)

    def reboot(self, servo_id: int) -> None:
        with self.lock:
            self.packet.reboot(self._h(), servo_id)

    # -- group traffic -----------------------------------------------------------------------
    def sync_read(self, fields: Iterable[str] = ("Present_Position",),
                  ids: Sequence[int] | None = None, *,
                  alert_ok: bool = False) -> dict[str, dict[int, int]]:
        """One Sync Read covering the fields (contiguous block: 126..135 gives current, velocity
        and position at once). Returns {field: {id: value}}. A status flagged with the
        hardware-alert bit raises ServoFault, unless `alert_ok` (health reads, which want the
        values of a faulted servo)."""
        fs = [ct.FIELDS[n] for n in fields]
        start = min(f.address for f in fs)
        length = max(f.address + f.size for f in fs) - start
        ids = tuple(self.ids if ids is None else ids)
        with self.lock:
            group = self._reads.get((start, length))
            if group is None:
                group = GroupSyncRead(self._h(), self.packet, start, length)
                self._reads[(start, length)] = group
            if tuple(group.data_dict) != ids:
                group.clearParam()
                for i in ids:
                    group.addParam(i)
            for attempt in range(self.retries + 1):
                t0 = now()
                data = self._sync_read_once(group, ids, length)
                if data is not None:
                    self.latency.add(now() - t0)
                    break
                if attempt < self.retries:
                    self.latency.retries += 1
            else:
                self.latency.failures += 1
                silent = [i for i in ids if self.ping(i, tries=1) is None]
                raise self._not_answering(silent or list(ids), "a sync read", sync=not silent)
        errors = {i: err & ~ct.ERR_ALERT if alert_ok else err for i, (err, _) in data.items()}
        for i, err in errors.items():
            if err:
                self._check_error(i, err, "a sync read")
        return {f.name: {i: ct.decode(f, raw, f.address - start) for i, (_, raw) in data.items()}
                for f in fs}

    def _sync_read_once(self, group: GroupSyncRead, ids: Sequence[int], length: int):
        h = self._h()
        if group.txPacket() != COMM_SUCCESS:
            return None
        out = {}
        for i in ids:
            raw, result, err = self.packet.readRx(h, i, length)
            if result != COMM_SUCCESS or (len(raw) != length and not err):
                h.is_using = False
                return None
            out[i] = (err, raw)
        return out

    def sync_write(self, field: str, values: dict[int, int]) -> None:
        """One Sync Write of a field (no status packets come back)."""
        f = ct.FIELDS[field]
        with self.lock:
            group = self._writes.get(field)
            if group is None:
                group = GroupSyncWrite(self._h(), self.packet, f.address, f.size)
                self._writes[field] = group
            group.clearParam()
            for i, v in values.items():
                group.addParam(i, list(ct.encode(f, v)))
            result = group.txPacket()
        if result != COMM_SUCCESS:
            raise ConnectionFailed(
                f"{self.name}: could not send {field} on {self.port} "
                f"({self.packet.getTxRxResult(result)}); check the USB cable"
            )

    def torque(self, enable: bool, ids: Sequence[int] | None = None) -> None:
        for i in self.ids if ids is None else ids:
            self.write("Torque_Enable", i, int(enable))

    def stats(self) -> dict:
        return {"bus": self.name, "port": self.port, **self.latency.summary()}

    # -- errors ------------------------------------------------------------------------------
    def _check_error(self, servo_id: int, err: int, doing: str) -> None:
        if err & ct.ERR_ALERT:
            raise self.fault(servo_id)
        code = err & 0x7F
        if code == ct.ERR_ACCESS:
            raise RigError(f"{self.describe(servo_id)} refused {doing}: the register is read-only "
                           f"or in EEPROM while torque is on; turn torque off first")
        if code in (ct.ERR_DATA_RANGE, ct.ERR_DATA_LIMIT):
            raise RigError(f"{self.describe(servo_id)} refused {doing}: value out of its range "
                           f"or limits (check the joint limits in the rig config)")
        if code == ct.ERR_RESULT_FAIL:
            raise RigError(f"{self.describe(servo_id)} could not carry out {doing} "
                           f"(a pending hardware error keeps torque off until a power-cycle)")
        if code:
            raise RigError(f"{self.describe(servo_id)}: {doing} failed with status error {code}")

    def fault(self, servo_id: int) -> ServoFault:
        """A ServoFault for a servo whose status carried the hardware-alert bit."""
        try:
            with self.lock:
                data, result, _ = self.packet.readTxRx(self._h(), servo_id, 70, 1)
            bits = data[0] if result == COMM_SUCCESS and data else None
        except Exception:
            bits = None
        if bits is None:
            what = "a hardware error (its Hardware_Error_Status could not be read)"
            fix = "power-cycle the arm and check the servo in Dynamixel Wizard"
        else:
            faults = ct.decode_hardware_error(bits) or [("a hardware alert", "power-cycle the arm")]
            what = " and ".join(f for f, _ in faults)
            fix = "; ".join(x for _, x in faults)
        e = ServoFault(f"{self.describe(servo_id)} reports {what}: {fix}")
        e.servo_id = servo_id
        e.bus = self.name
        e.bits = bits
        return e

    def _not_answering(self, ids: Sequence[int], doing: str, sync: bool = False) -> RigError:
        names = ", ".join(self.describe(i) for i in ids)
        if sync:
            return ConnectionFailed(
                f"{self.name}: {doing} on {self.port} kept failing after {self.retries} "
                f"retries although every servo answers a ping ({names}); check for electrical "
                f"noise on the cable, a loose connector, or a second program using the port"
            )
        return ConnectionFailed(
            f"{names} did not answer {doing} on {self.port} at {self.baud} baud "
            f"({self.retries} retries). Check the arm's power and the cable to that servo; "
            f"`python main.py scan --port {self.port} --baud {self.baud}` lists what answers"
        )


def scan_bus(port: str, baud: int, ids: Iterable[int], progress=None,
             latency_timer_ms: float = 16.0) -> list[dict]:
    """Ping every id once on a port; for each servo that answers, read its firmware, present
    position, torque and hardware-error status. Raises ConnectionFailed if the port cannot be
    opened."""
    handler = open_port(port, baud, latency_timer_ms)
    packet = PacketHandler(2.0)
    found = []
    try:
        for i in ids:
            model, result, _ = packet.ping(handler, i)
            if progress is not None:
                progress(i)
            if result != COMM_SUCCESS:
                continue
            info = {"id": i, "model": ct.model_name(model), "model_number": model, "baud": baud}
            for key, name in (("firmware", "Firmware_Version"), ("position", "Present_Position"),
                              ("torque", "Torque_Enable"),
                              ("hardware_error", "Hardware_Error_Status")):
                f = ct.FIELDS[name]
                data, res, _ = packet.readTxRx(handler, i, f.address, f.size)
                info[key] = ct.decode(f, data) if res == COMM_SUCCESS else None
            if info["position"] is not None:
                info["position_deg"] = round(
                    (info["position"] - ct.CENTER_TICKS) * 360 / ct.TICKS_PER_REV, 2)
            else:
                info["position_deg"] = float("nan")
            found.append(info)
    finally:
        handler.closePort()
    return found
