"""One emulated X-series servo: its control-table memory and a simple model of its motion.

Memory follows drivers.dynamixel.control_table (EEPROM locked while torque is on, read-only fields
refused, range checks on the fields that have them). Motion: with torque on the shaft tracks the
goal at the model's no-load speed (or Profile_Velocity); with torque off it stays put until
something back-drives it. Present_Position = direction * shaft + Homing_Offset, wrapped to one
turn in position mode. Used by drivers.dynamixel.emulator, which puts a chain of them on a pty.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from drivers.dynamixel import control_table as ct


@dataclass
class _Faults:
    drop: int = 0  # drop the next N status packets
    bad_crc: int = 0  # corrupt the CRC of the next N status packets
    silent: bool = False  # never answer (as if unplugged from the chain)


# name -> (start, end, signed, mask): the hot path of register access
_SPANS = {f.name: (f.address, f.address + f.size, f.signed, (1 << (8 * f.size)) - 1)
          for f in ct.FIELDS.values()}


@functools.lru_cache(maxsize=256)
def _touched(start: int, end: int) -> tuple[ct.Field, ...]:
    """The fields a write of bytes start..end overlaps."""
    return tuple(f for f in ct.FIELDS.values() if f.address < end and start < f.address + f.size)


class EmulatedServo:
    """One servo: its control-table memory and its motion."""

    def __init__(self, servo_id: int, model: str | ct.Model, position: int = ct.CENTER_TICKS,
                 baud: int = 1_000_000):
        self.model = ct.MODELS[model] if isinstance(model, str) else model
        self.mem = bytearray(ct.TABLE_SIZE)
        self._defaults(servo_id, baud)
        self.angle = float(position)  # physical shaft angle in ticks (before offset/direction)
        self.velocity = 0.0  # ticks/s
        self.faults = _Faults()
        self.speed_scale = 1.0
        self._update_present()

    def _defaults(self, servo_id: int, baud: int, keep: tuple[str, ...] = ()) -> None:
        kept = {name: self.get(name) for name in keep} if any(self.mem) else {}
        self.mem[:] = bytes(ct.TABLE_SIZE)
        m = self.model
        defaults = {
            "Model_Number": m.number, "Firmware_Version": m.firmware, "ID": servo_id,
            "Baud_Rate": ct.BAUD_CODES[baud], "Return_Delay_Time": 250, "Drive_Mode": 0,
            "Operating_Mode": ct.MODE_POSITION, "Secondary_ID": 255, "Protocol_Type": 2,
            "Moving_Threshold": 10, "Temperature_Limit": 80, "Max_Voltage_Limit": 160,
            "Min_Voltage_Limit": 95, "PWM_Limit": 885, "Current_Limit": m.current_limit_max,
            "Velocity_Limit": 200, "Max_Position_Limit": 4095, "Min_Position_Limit": 0,
            "Shutdown": 52, "Status_Return_Level": 2, "Position_P_Gain": 800,
            "Velocity_P_Gain": 100, "Velocity_I_Gain": 1920, "Present_Input_Voltage": 120,
            "Present_Temperature": 32,
        }
        defaults.update(kept)
        for name, value in defaults.items():
            self.set(name, value)

    # -- memory ------------------------------------------------------------------------------
    @property
    def id(self) -> int:
        return self.mem[7]

    def get(self, name: str) -> int:
        a, b, signed, _ = _SPANS[name]
        return int.from_bytes(self.mem[a:b], "little", signed=signed)

    def set(self, name: str, value: int) -> None:
        a, b, _, mask = _SPANS[name]
        self.mem[a:b] = (int(value) & mask).to_bytes(b - a, "little")

    @property
    def baud(self) -> int:
        return ct.BAUD_RATES.get(self.get("Baud_Rate"), 0)

    @property
    def torque(self) -> bool:
        return bool(self.mem[64])

    @property
    def error_byte(self) -> int:
        return ct.ERR_ALERT if self.get("Hardware_Error_Status") else 0

    # -- position <-> register ---------------------------------------------------------------
    def _sign(self) -> int:
        return -1 if self.get("Drive_Mode") & ct.DRIVE_MODE_REVERSE else 1

    def present_ticks(self) -> int:
        value = self._sign() * round(self.angle) + self.get("Homing_Offset")
        if self.get("Operating_Mode") == ct.MODE_POSITION:
            value %= ct.TICKS_PER_REV
        return value

    def goal_angle(self) -> float:
        return float(self._sign() * (self.get("Goal_Position") - self.get("Homing_Offset")))

    def set_present_ticks(self, ticks: float) -> None:
        """Back-drive: put the shaft where Present_Position will read `ticks`."""
        self.angle = self._sign() * (float(ticks) - self.get("Homing_Offset"))

    # -- motion ------------------------------------------------------------------------------
    def advance(self, dt: float) -> None:
        if dt <= 0:
            return
        if not self.torque and self.velocity == 0.0:
            return  # at rest with torque off: nothing changes until something back-drives it
        before = self.angle
        if self.torque:
            err = self.goal_angle() - self.angle
            if err == 0.0 and self.velocity == 0.0:
                return  # holding exactly at the goal
            max_speed = self.model.no_load_speed_rpm / 60 * ct.TICKS_PER_REV * self.speed_scale
            pv = self.get("Profile_Velocity")
            if pv > 0:
                max_speed = min(max_speed, pv * ct.VELOCITY_UNIT_RPM / 60 * ct.TICKS_PER_REV)
            step = max_speed * dt
            self.angle += max(-step, min(step, err))
        self.velocity = (self.angle - before) / dt
        self._update_present()

    def _update_present(self) -> None:
        self.set("Present_Position", self.present_ticks())
        vel_units = self._sign() * self.velocity / ct.TICKS_PER_REV * 60 / ct.VELOCITY_UNIT_RPM
        self.set("Present_Velocity", round(vel_units))
        current = 0
        if self.torque:
            # a P-controller's effort: proportional to the error, saturated at the current limit
            err = self.goal_angle() - self.angle
            limit = self.get("Current_Limit") or 1000
            if self.get("Operating_Mode") == ct.MODE_CURRENT_POSITION:
                goal_current = abs(self.get("Goal_Current"))
                limit = min(limit, goal_current) if goal_current else limit
            current = max(-limit, min(limit, round(self._sign() * err * 2)))
        self.set("Present_Current", current)
        self.set("Moving", int(abs(self.velocity) > 1.0))

    # -- register writes ---------------------------------------------------------------------
    def write(self, address: int, data: bytes) -> int:
        """Write bytes as a WRITE / SYNC_WRITE would; returns the status error number."""
        end = address + len(data)
        if address < 0 or end > ct.TABLE_SIZE or not data:
            return ct.ERR_DATA_LENGTH
        touched = _touched(address, end)
        for f in touched:
            if not f.writable:
                return ct.ERR_ACCESS
            if f.eeprom and self.torque:
                return ct.ERR_ACCESS  # EEPROM is locked while torque is on
        new = bytearray(self.mem)
        new[address:end] = data
        for f in touched:
            v = ct.decode(f, new, f.address)
            if f.name == "ID" and not 0 <= v <= 252:
                return ct.ERR_DATA_RANGE
            if f.name == "Operating_Mode" and v not in ct.OPERATING_MODES:
                return ct.ERR_DATA_RANGE
            if f.name == "Baud_Rate" and v not in ct.BAUD_RATES:
                return ct.ERR_DATA_RANGE
            if f.name == "Current_Limit" and v > self.model.current_limit_max:
                return ct.ERR_DATA_LIMIT
            if f.name == "Goal_Position" and self.get("Operating_Mode") == ct.MODE_POSITION:
                if not self.get("Min_Position_Limit") <= v <= self.get("Max_Position_Limit"):
                    return ct.ERR_DATA_LIMIT
            if f.name == "Torque_Enable" and v and self.get("Hardware_Error_Status"):
                return ct.ERR_RESULT_FAIL  # torque stays off until a reboot clears the fault
        self.mem[:] = new
        if any(f.address < 64 or f.name == "Torque_Enable" for f in touched):
            # offset, direction, mode or torque: the shaft has not moved, what it reads has
            self._update_present()
        return 0

    def read(self, address: int, length: int) -> tuple[int, bytes]:
        if address < 0 or length <= 0 or address + length > ct.TABLE_SIZE:
            return ct.ERR_DATA_LENGTH, b""
        return 0, bytes(self.mem[address:address + length])

    def hardware_fault(self, bits: int) -> None:
        """A hardware error: the servo drops torque and flags every status packet."""
        self.set("Hardware_Error_Status", bits)
        if bits:
            self.set("Torque_Enable", 0)

    def reboot(self) -> None:
        eeprom = bytes(self.mem[:ct.EEPROM_END])
        self.mem[ct.EEPROM_END:] = bytes(ct.TABLE_SIZE - ct.EEPROM_END)
        self.mem[:ct.EEPROM_END] = eeprom
        for name, value in (("Status_Return_Level", 2), ("Position_P_Gain", 800),
                            ("Velocity_P_Gain", 100), ("Velocity_I_Gain", 1920),
                            ("Present_Input_Voltage", 120), ("Present_Temperature", 32)):
            self.set(name, value)
        self._update_present()

    def factory_reset(self, option: int) -> None:
        keep = {0xFF: (), 0x01: ("ID",), 0x02: ("ID", "Baud_Rate")}.get(option, ())
        self._defaults(self.id, 1_000_000, keep=keep)
        self._update_present()
