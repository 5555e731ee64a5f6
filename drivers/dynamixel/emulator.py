"""A Dynamixel Protocol 2.0 servo chain on a pseudo-terminal.

The driver side opens the pty's slave path with the real dynamixel-sdk (PortHandler -> pyserial),
exactly as it opens /dev/ttyUSB0 on a rig. The emulator parses instruction packets (PING, READ,
WRITE, SYNC_READ, SYNC_WRITE, REBOOT, FACTORY_RESET; byte stuffing, CRC16), keeps a full control
table per servo (EEPROM locked while torque is on), answers with status packets after the wire
time the bytes would take at the host's baud rate (10 bits per byte, plus Return_Delay_Time), and
moves each servo with a simple model: with torque on, the present position tracks the goal at the
servo's speed limit; with torque off it stays where it is unless something back-drives it
(`set_position`, or a `position_source` such as the MuJoCo sim). Servos answer only when the host's
baud rate equals their Baud_Rate register, as on a real bus.

Faults can be injected: dropped status packets, corrupted CRCs, hardware-error bits (overload ...),
missing ids and wrong model numbers.

    with DynamixelEmulator([(1, "XM430-W350"), (2, "XM430-W350")]) as emu:
        bus = DynamixelBus(emu.port, ...)

`EmulatorProcess` runs the same chain in a child process (its own GIL), for benchmarks of several
buses at once.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import termios
import threading
import time
import tty
from pathlib import Path
from typing import Callable, Iterable

from drivers.dynamixel import control_table as ct
from drivers.dynamixel.emulated_servo import EmulatedServo

BROADCAST_ID = 0xFE
INST_PING, INST_READ, INST_WRITE = 0x01, 0x02, 0x03
INST_FACTORY_RESET, INST_REBOOT = 0x06, 0x08
INST_STATUS, INST_SYNC_READ, INST_SYNC_WRITE = 0x55, 0x82, 0x83
HEADER = b"\xff\xff\xfd\x00"
BITS_PER_BYTE = 10  # start + 8 data + stop
USB_BATCH_S = 1e-3  # status packets due within this window reach the host together


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes | bytearray) -> int:
    """CRC-16 (polynomial 0x8005) of Protocol 2.0."""
    crc = 0
    for b in data:
        crc = ((crc << 8) ^ _CRC_TABLE[((crc >> 8) ^ b) & 0xFF]) & 0xFFFF
    return crc


def stuff(payload: bytes) -> bytes:
    """Byte stuffing: FF FF FD in the payload becomes FF FF FD FD."""
    out = bytearray()
    for b in payload:
        out.append(b)
        if b == 0xFD and len(out) >= 3 and out[-3] == 0xFF and out[-2] == 0xFF:
            out.append(0xFD)
    return bytes(out)


def unstuff(payload: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(payload):
        b = payload[i]
        out.append(b)
        if (b == 0xFD and i + 1 < len(payload) and payload[i + 1] == 0xFD and len(out) >= 3
                and out[-3] == 0xFF and out[-2] == 0xFF):
            i += 1  # skip the stuffed FD
        i += 1
    return bytes(out)


def build_packet(servo_id: int, instruction: int, params: bytes, bad_crc: bool = False) -> bytes:
    body = stuff(bytes([instruction]) + params)
    length = len(body) + 2
    pkt = HEADER + bytes([servo_id, length & 0xFF, length >> 8]) + body
    crc = crc16(pkt)
    if bad_crc:
        crc ^= 0xA5A5
    return pkt + bytes([crc & 0xFF, crc >> 8])


def _termios_baud_table() -> dict[int, int]:
    out = {}
    for rate in (9600, 19200, 38400, 57600, 115200, 230400, 460800, 500000, 576000, 921600,
                 1000000, 1152000, 2000000, 2500000, 3000000, 3500000, 4000000):
        const = getattr(termios, f"B{rate}", None)
        if const is not None:
            out[const] = rate
    return out


_TERMIOS_BAUD = _termios_baud_table()


class DynamixelEmulator:
    """A chain of emulated servos behind one pseudo-terminal, served from a thread."""

    def __init__(self, servos: Iterable[tuple[int, str] | EmulatedServo], *,
                 baud: int = 1_000_000, wire_time: bool = True):
        self.servos: dict[int, EmulatedServo] = {}
        for s in servos:
            servo = s if isinstance(s, EmulatedServo) else EmulatedServo(s[0], s[1], baud=baud)
            self.servos[servo.id] = servo
        self.wire_time = wire_time
        self.lock = threading.RLock()
        self.position_source: Callable[[], dict[int, float]] | None = None
        self.on_goal: Callable[[dict[int, int]], None] | None = None
        self.packets = 0  # instruction packets received
        self.crc_errors = 0  # instruction packets with a bad CRC
        self._master = self._slave = -1
        self._wake_r = self._wake_w = -1
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._t_last = time.monotonic()
        self._wire_free = 0.0  # when the bytes already sent have left the wire
        self.port = ""

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "DynamixelEmulator":
        if self._thread is not None:
            return self
        self._master, self._slave = os.openpty()
        tty.setraw(self._master)
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self._wake_r, self._wake_w = os.pipe()
        self._stop.clear()
        self._t_last = time.monotonic()
        self._thread = threading.Thread(target=self._serve, name=f"dxl-emulator {self.port}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
        self._thread = None
        for fd in (self._master, self._slave, self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._master = self._slave = self._wake_r = self._wake_w = -1

    def __enter__(self) -> "DynamixelEmulator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- inspection and faults (thread-safe) ---------------------------------------------------
    def servo(self, servo_id: int) -> EmulatedServo:
        return self.servos[servo_id]

    def get(self, servo_id: int, name: str) -> int:
        with self.lock:
            self._advance()
            return self.servos[servo_id].get(name)

    def set(self, servo_id: int, name: str, value: int) -> None:
        """Set a register directly (bypassing the bus and its EEPROM lock)."""
        with self.lock:
            self.servos[servo_id].set(name, value)

    def set_position(self, servo_id: int, ticks: float) -> None:
        """Back-drive a servo (a hand on the leader arm): Present_Position will read `ticks`."""
        with self.lock:
            self._advance()
            self.servos[servo_id].set_present_ticks(ticks)
            self.servos[servo_id]._update_present()

    def drop_status(self, servo_id: int, count: int = 1) -> None:
        with self.lock:
            self.servos[servo_id].faults.drop += count

    def corrupt_crc(self, servo_id: int, count: int = 1) -> None:
        with self.lock:
            self.servos[servo_id].faults.bad_crc += count

    def silence(self, servo_id: int, silent: bool = True) -> None:
        """The servo stops answering (as if unplugged from the chain)."""
        with self.lock:
            self.servos[servo_id].faults.silent = silent

    def hardware_error(self, servo_id: int, bits: int = 0x20) -> None:
        """Raise hardware-error bits (default: overload) on a servo; it drops its torque."""
        with self.lock:
            self.servos[servo_id].hardware_fault(bits)

    def torque_map(self) -> dict[int, bool]:
        with self.lock:
            return {i: s.torque for i, s in self.servos.items()}

    # -- serving ------------------------------------------------------------------------------
    def _advance(self) -> None:
        t = time.monotonic()
        dt = t - self._t_last
        self._t_last = t
        external = self.position_source() if self.position_source is not None else {}
        for sid, servo in self.servos.items():
            if sid in external:
                before = servo.angle
                servo.set_present_ticks(external[sid])
                servo.velocity = (servo.angle - before) / dt if dt > 0 else 0.0
                servo._update_present()
            else:
                servo.advance(dt)

    def _host_baud(self) -> int:
        try:
            attrs = termios.tcgetattr(self._master)
        except termios.error:
            return 0
        return _TERMIOS_BAUD.get(attrs[5], 0)

    def _serve(self) -> None:
        buf = bytearray()
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._master, self._wake_r], [], [], 0.1)
            except (OSError, ValueError):
                return
            if self._wake_r in ready:
                return
            if self._master not in ready:
                continue
            try:
                chunk = os.read(self._master, 4096)
            except OSError:
                time.sleep(0.01)
                continue
            t_rx = time.monotonic()
            buf += chunk
            while True:
                pkt = self._take_packet(buf)
                if pkt is None:
                    break
                self._handle(pkt, t_rx)

    def _take_packet(self, buf: bytearray) -> bytes | None:
        """Cut one complete packet (header .. CRC) off the front of buf, skipping noise."""
        while True:
            i = buf.find(HEADER)
            if i < 0:
                del buf[:max(0, len(buf) - 3)]
                return None
            del buf[:i]
            if len(buf) < 7:
                return None
            length = buf[5] | (buf[6] << 8)
            if length < 3 or length > 1024:
                del buf[:1]
                continue
            total = 7 + length
            if len(buf) < total:
                return None
            pkt = bytes(buf[:total])
            del buf[:total]
            return pkt

    def _handle(self, raw: bytes, t_rx: float) -> None:
        baud = self._host_baud()
        byte_s = BITS_PER_BYTE / baud if baud else 0.0
        with self.lock:
            self.packets += 1
            self._advance()
            sid, inst = raw[4], raw[7]
            crc_ok = crc16(raw[:-2]) == (raw[-2] | (raw[-1] << 8))
            params = unstuff(raw[8:-2])
            targets = [s for s in self.servos.values() if s.baud == baud and not s.faults.silent]
            replies: list[tuple[EmulatedServo, bytes]] = []
            if not crc_ok:
                self.crc_errors += 1
                s = self.servos.get(sid)
                if s in targets:
                    replies.append((s, self._status(s, ct.ERR_CRC)))
            elif sid == BROADCAST_ID:
                replies = self._broadcast(inst, params, targets)
            else:
                s = self.servos.get(sid)
                if s in targets:
                    reply = self._unicast(s, inst, params)
                    if reply is not None:
                        replies.append((s, reply))
        # wire time: the instruction's bytes (after whatever is still on the wire, e.g. a sync
        # write just before), then each status packet after its return delay. Packets reach the
        # host in batches, as a USB serial adapter delivers them (latency timer 1 ms): each batch
        # when its last packet has left the wire, never earlier.
        t = max(t_rx, self._wire_free) + len(raw) * byte_s
        timed = self.wire_time and byte_s > 0
        batch: list[bytes] = []
        batch_start = None
        for k, (servo, status) in enumerate(replies):
            if timed:
                t += servo.get("Return_Delay_Time") * ct.RETURN_DELAY_UNIT_S + len(status) * byte_s
            with self.lock:
                if servo.faults.drop:
                    servo.faults.drop -= 1
                    status = b""
                elif servo.faults.bad_crc:
                    servo.faults.bad_crc -= 1
                    status = status[:-2] + bytes([status[-2] ^ 0xA5, status[-1] ^ 0xA5])
            batch.append(status)
            batch_start = t if batch_start is None else batch_start
            last = k == len(replies) - 1
            if not last and timed:
                nxt = replies[k + 1]
                t_next = (t + nxt[0].get("Return_Delay_Time") * ct.RETURN_DELAY_UNIT_S
                          + len(nxt[1]) * byte_s)
                if t_next - batch_start < USB_BATCH_S:
                    continue
            if timed:
                wait = t - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            data = b"".join(batch)
            batch, batch_start = [], None
            if data:
                try:
                    os.write(self._master, data)
                except OSError:
                    return
        self._wire_free = t if timed else 0.0

    def _status(self, s: EmulatedServo, err: int, params: bytes = b"") -> bytes:
        return build_packet(s.id, INST_STATUS, bytes([err | s.error_byte]) + params)

    def _unicast(self, s: EmulatedServo, inst: int, p: bytes) -> bytes | None:
        level = s.get("Status_Return_Level")
        if inst == INST_PING:
            m = s.get("Model_Number")
            return self._status(s, 0, bytes([m & 0xFF, m >> 8, s.get("Firmware_Version")]))
        if inst == INST_READ:
            if len(p) != 4:
                return self._status(s, ct.ERR_DATA_LENGTH)
            addr, length = p[0] | (p[1] << 8), p[2] | (p[3] << 8)
            err, data = s.read(addr, length)
            return self._status(s, err, data) if level >= 1 else None
        if inst == INST_WRITE:
            if len(p) < 3:
                return self._status(s, ct.ERR_DATA_LENGTH)
            addr = p[0] | (p[1] << 8)
            err = self._write(s, addr, p[2:])
            return self._status(s, err) if level >= 2 else None
        if inst == INST_REBOOT:
            status = self._status(s, 0)
            s.reboot()
            return status if level >= 2 else None
        if inst == INST_FACTORY_RESET:
            if s.torque:
                return self._status(s, ct.ERR_ACCESS)
            status = self._status(s, 0)
            s.factory_reset(p[0] if p else 0xFF)
            return status if level >= 2 else None
        return self._status(s, ct.ERR_INSTRUCTION)

    def _write(self, s: EmulatedServo, addr: int, data: bytes) -> int:
        err = s.write(addr, data)
        goal = ct.FIELDS["Goal_Position"]
        if not err and self.on_goal is not None and addr <= goal.address < addr + len(data):
            self.on_goal({s.id: s.get("Goal_Position")})
        return err

    def _broadcast(self, inst: int, p: bytes, targets: list[EmulatedServo]):
        replies = []
        by_id = {s.id: s for s in targets}
        if inst == INST_PING:
            for s in sorted(targets, key=lambda s: s.id):
                replies.append((s, self._unicast(s, INST_PING, b"")))
        elif inst == INST_SYNC_READ and len(p) >= 5:
            addr, length = p[0] | (p[1] << 8), p[2] | (p[3] << 8)
            for sid in p[4:]:
                s = by_id.get(sid)
                if s is None:
                    continue
                err, data = s.read(addr, length)
                replies.append((s, self._status(s, err, data)))
        elif inst == INST_SYNC_WRITE and len(p) >= 4:
            addr, length = p[0] | (p[1] << 8), p[2] | (p[3] << 8)
            body = p[4:]
            goals = {}
            for k in range(0, len(body) - length, length + 1):
                s = by_id.get(body[k])
                if s is not None and not s.write(addr, body[k + 1:k + 1 + length]):
                    goals[s.id] = s.get("Goal_Position")
            goal = ct.FIELDS["Goal_Position"]
            if goals and self.on_goal is not None and addr <= goal.address < addr + length:
                self.on_goal(goals)
        elif inst == INST_WRITE and len(p) >= 3:
            for s in targets:
                s.write(p[0] | (p[1] << 8), p[2:])
        elif inst == INST_REBOOT:
            for s in targets:
                s.reboot()
        return replies


# -- a chain in its own process ---------------------------------------------------------------
class EmulatorProcess:
    """A DynamixelEmulator in a child process (`python -m drivers.dynamixel.emulator`), so that
    several buses do not share one GIL. Only the port is exposed; inspect and inject faults with
    the in-process emulator. The child exits when its stdin closes, so it never outlives us."""

    def __init__(self, servos: Iterable[tuple[int, str]], *, baud: int = 1_000_000,
                 wire_time: bool = True, return_delay: int | None = None):
        self.servos = list(servos)
        self.baud = baud
        self.wire_time = wire_time
        self.return_delay = return_delay
        self._proc: subprocess.Popen | None = None
        self.port = ""

    def start(self) -> "EmulatorProcess":
        root = Path(__file__).resolve().parents[2]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
        cmd = [sys.executable, "-m", "drivers.dynamixel.emulator", "--baud", str(self.baud),
               "--servos", ",".join(f"{i}:{m}" for i, m in self.servos)]
        if self.return_delay is not None:
            cmd += ["--return-delay", str(self.return_delay)]
        if not self.wire_time:
            cmd.append("--no-wire-time")
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      cwd=root, env=env, text=True)
        ready, _, _ = select.select([self._proc.stdout], [], [], 30)
        line = self._proc.stdout.readline().strip() if ready else ""
        if not line.startswith("/dev/"):
            self.stop()
            raise RuntimeError(f"the emulator process did not start ({line or 'no output'})")
        self.port = line
        return self

    def stop(self) -> None:
        if self._proc is None:
            return
        try:
            self._proc.stdin.close()
            self._proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self._proc.kill()
            self._proc.wait()
        self._proc.stdout.close()
        self._proc = None

    def __enter__(self) -> "EmulatorProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="Serve an emulated Dynamixel chain on a pty; prints "
                                "the port, runs until stdin closes.")
    p.add_argument("--servos", required=True, help="id:model,... e.g. 1:XM430-W350,2:XM540-W270")
    p.add_argument("--baud", type=int, default=1_000_000)
    p.add_argument("--return-delay", type=int, default=None)
    p.add_argument("--no-wire-time", action="store_true")
    args = p.parse_args(argv)
    chain = []
    for item in args.servos.split(","):
        sid, model = item.split(":")
        s = EmulatedServo(int(sid), model, baud=args.baud)
        if args.return_delay is not None:
            s.set("Return_Delay_Time", args.return_delay)
        chain.append(s)
    with DynamixelEmulator(chain, baud=args.baud, wire_time=not args.no_wire_time) as emu:
        print(emu.port, flush=True)
        sys.stdin.read()  # until EOF: the parent closed our stdin or went away
    return 0


class EmulatedRig:
    """Emulated buses for every arm of a rig config, one chain per arm as on ALOHA.

        with EmulatedRig(load_rig_config("aloha"), tmp_dir) as er:
            rig = HardwareRig(er.config)      # ports point at the emulators
            er.emulators["left_follower"].hardware_error(4)

    Each arm gets a nominal calibration file in `calibration_dir` (servos assembled at their
    zero), its servos Return_Delay_Time 0 unless `return_delay` says otherwise, and the config's
    cameras are dropped unless `keep_cameras`. With `processes=True` each chain runs in its own
    process (no fault injection or inspection then)."""

    def __init__(self, config, calibration_dir, *, processes: bool = False,
                 keep_cameras: bool = False, return_delay: int = 0, wire_time: bool = True):
        self.source_config = config
        self.calibration_dir = calibration_dir
        self.processes = processes
        self.keep_cameras = keep_cameras
        self.return_delay = return_delay
        self.wire_time = wire_time
        self.emulators: dict[str, DynamixelEmulator | EmulatorProcess] = {}
        self.config = None

    def start(self) -> "EmulatedRig":
        import dataclasses

        from drivers.dynamixel.calibration import ArmCalibration

        arms = []
        try:
            for arm in self.source_config.arms:
                servos = []
                for j in arm.joints:
                    s = EmulatedServo(j.id, j.model, baud=arm.baud)
                    s.set("Return_Delay_Time", self.return_delay)
                    servos.append(s)
                if self.processes:
                    emu = EmulatorProcess([(j.id, j.model) for j in arm.joints], baud=arm.baud,
                                          wire_time=self.wire_time, return_delay=self.return_delay)
                else:
                    emu = DynamixelEmulator(servos, baud=arm.baud, wire_time=self.wire_time)
                self.emulators[arm.name] = emu.start()
                path = Path(self.calibration_dir) / f"{arm.name}.json"
                ArmCalibration.nominal(arm).save(path)
                arms.append(dataclasses.replace(arm, port=emu.port, calibration=str(path)))
        except BaseException:
            self.stop()
            raise
        self.config = dataclasses.replace(
            self.source_config, arms=tuple(arms),
            cameras=self.source_config.cameras if self.keep_cameras else ())
        return self

    def stop(self) -> None:
        for emu in self.emulators.values():
            emu.stop()
        self.emulators.clear()

    def __enter__(self) -> "EmulatedRig":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def torque(self) -> dict[str, dict[int, bool]]:
        """{arm: {id: torque on}} read from the emulated control tables."""
        return {name: emu.torque_map() for name, emu in self.emulators.items()
                if isinstance(emu, DynamixelEmulator)}


__all__ = ["DynamixelEmulator", "EmulatorProcess", "EmulatedRig", "EmulatedServo", "crc16",
           "build_packet"]


if __name__ == "__main__":
    sys.exit(_main())
