"""Dynamixel X-series control table, Protocol 2.0 (XL330-M077/M288, XL430-W250, XM430-W350,
XM540-W270), after the ROBOTIS e-Manual.

Addresses 0..63 are EEPROM (writable only while Torque_Enable is 0); 64 and up are RAM. Positions
are 4096 ticks per revolution; the joint zero of a calibrated arm reads CENTER_TICKS (2048).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

TICKS_PER_REV = 4096
CENTER_TICKS = 2048
RAD_PER_TICK = 2 * math.pi / TICKS_PER_REV
VELOCITY_UNIT_RPM = 0.229  # Present_Velocity / Profile_Velocity unit
RAD_S_PER_VELOCITY_UNIT = VELOCITY_UNIT_RPM * 2 * math.pi / 60
RETURN_DELAY_UNIT_S = 2e-6  # Return_Delay_Time unit
EEPROM_END = 64  # addresses below are EEPROM
TABLE_SIZE = 256  # bytes of memory emulated / addressable here (indirect data ends at 227)


@dataclass(frozen=True)
class Field:
    name: str
    address: int
    size: int
    writable: bool = True
    signed: bool = False

    @property
    def eeprom(self) -> bool:
        return self.address < EEPROM_END


_FIELDS = (
    Field("Model_Number", 0, 2, writable=False),
    Field("Model_Information", 2, 4, writable=False),
    Field("Firmware_Version", 6, 1, writable=False),
    Field("ID", 7, 1),
    Field("Baud_Rate", 8, 1),
    Field("Return_Delay_Time", 9, 1),
    Field("Drive_Mode", 10, 1),
    Field("Operating_Mode", 11, 1),
    Field("Secondary_ID", 12, 1),
    Field("Protocol_Type", 13, 1),
    Field("Homing_Offset", 20, 4, signed=True),
    Field("Moving_Threshold", 24, 4),
    Field("Temperature_Limit", 31, 1),
    Field("Max_Voltage_Limit", 32, 2),
    Field("Min_Voltage_Limit", 34, 2),
    Field("PWM_Limit", 36, 2),
    Field("Current_Limit", 38, 2),
    Field("Velocity_Limit", 44, 4),
    Field("Max_Position_Limit", 48, 4),
    Field("Min_Position_Limit", 52, 4),
    Field("Startup_Configuration", 60, 1),
    Field("Shutdown", 63, 1),
    Field("Torque_Enable", 64, 1),
    Field("LED", 65, 1),
    Field("Status_Return_Level", 68, 1),
    Field("Registered_Instruction", 69, 1, writable=False),
    Field("Hardware_Error_Status", 70, 1, writable=False),
    Field("Velocity_I_Gain", 76, 2),
    Field("Velocity_P_Gain", 78, 2),
    Field("Position_D_Gain", 80, 2),
    Field("Position_I_Gain", 82, 2),
    Field("Position_P_Gain", 84, 2),
    Field("Feedforward_2nd_Gain", 88, 2),
    Field("Feedforward_1st_Gain", 90, 2),
    Field("Bus_Watchdog", 98, 1, signed=True),
    Field("Goal_PWM", 100, 2, signed=True),
    Field("Goal_Current", 102, 2, signed=True),
    Field("Goal_Velocity", 104, 4, signed=True),
    Field("Profile_Acceleration", 108, 4),
    Field("Profile_Velocity", 112, 4),
    Field("Goal_Position", 116, 4, signed=True),
    Field("Realtime_Tick", 120, 2, writable=False),
    Field("Moving", 122, 1, writable=False),
    Field("Moving_Status", 123, 1, writable=False),
    Field("Present_PWM", 124, 2, writable=False, signed=True),
    Field("Present_Current", 126, 2, writable=False, signed=True),  # Present_Load on XL430
    Field("Present_Velocity", 128, 4, writable=False, signed=True),
    Field("Present_Position", 132, 4, writable=False, signed=True),
    Field("Velocity_Trajectory", 136, 4, writable=False, signed=True),
    Field("Position_Trajectory", 140, 4, writable=False, signed=True),
    Field("Present_Input_Voltage", 144, 2, writable=False),
    Field("Present_Temperature", 146, 1, writable=False),
)
FIELDS: dict[str, Field] = {f.name: f for f in _FIELDS}

# One contiguous sync read covers current, velocity and position: 126..135.
STATE_BLOCK = (FIELDS["Present_Current"].address, 10)


@dataclass(frozen=True)
class Model:
    name: str
    number: int
    current_unit_ma: float | None  # Present_Current unit (mA); None: no current sensing
    current_limit_max: int  # upper bound of Current_Limit (0 where there is none)
    no_load_speed_rpm: float  # at the recommended voltage: the emulator's speed limit
    firmware: int = 48

    @property
    def has_current_control(self) -> bool:
        return self.current_unit_ma is not None


MODELS: dict[str, Model] = {
    m.name: m
    for m in (
        Model("XL330-M077", 1190, 1.0, 1750, 383),
        Model("XL330-M288", 1200, 1.0, 1750, 103),
        Model("XL430-W250", 1060, None, 0, 57),
        Model("XM430-W350", 1020, 2.69, 1193, 46),
        Model("XM540-W270", 1120, 2.69, 2047, 30),
    )
}
MODEL_BY_NUMBER: dict[int, Model] = {m.number: m for m in MODELS.values()}


def model_name(number: int) -> str:
    m = MODEL_BY_NUMBER.get(number)
    return m.name if m else f"unknown model {number}"


# Operating_Mode values
MODE_CURRENT = 0
MODE_VELOCITY = 1
MODE_POSITION = 3
MODE_EXTENDED_POSITION = 4
MODE_CURRENT_POSITION = 5
MODE_PWM = 16
OPERATING_MODES = {
    MODE_CURRENT: "current",
    MODE_VELOCITY: "velocity",
    MODE_POSITION: "position",
    MODE_EXTENDED_POSITION: "extended position",
    MODE_CURRENT_POSITION: "current-based position",
    MODE_PWM: "PWM",
}

# Drive_Mode bit 0: reverse the direction of rotation
DRIVE_MODE_REVERSE = 0x01

# Baud_Rate register value -> bits per second
BAUD_RATES = {0: 9600, 1: 57600, 2: 115200, 3: 1_000_000, 4: 2_000_000, 5: 3_000_000,
              6: 4_000_000, 7: 4_500_000}
BAUD_CODES = {v: k for k, v in BAUD_RATES.items()}

# Hardware_Error_Status (address 70) bits: (fault, what to do)
HARDWARE_ERRORS = {
    0x01: ("input voltage error", "check the power supply voltage against the servo's rating, "
           "then power-cycle the arm"),
    0x04: ("overheating", "let the servo cool down, reduce the load or duty cycle, then "
           "power-cycle the arm"),
    0x08: ("motor encoder error", "the servo's encoder is faulty: power-cycle the arm; if it "
           "comes back, replace the servo"),
    0x10: ("electrical shock error", "check the motor wiring and the supply for shorts, then "
           "power-cycle the arm"),
    0x20: ("overload", "remove the load (the arm may be blocked or pushing against something) "
           "and power-cycle the arm"),
}


def decode_hardware_error(bits: int) -> list[tuple[str, str]]:
    """[(fault, fix)] for every bit set in Hardware_Error_Status."""
    out = [v for b, v in HARDWARE_ERRORS.items() if bits & b]
    unknown = bits & ~sum(HARDWARE_ERRORS)
    if unknown:
        out.append((f"unknown hardware error bits 0x{unknown:02x}", "power-cycle the arm"))
    return out


# Status packet error field (Protocol 2.0): bit 7 = hardware alert, low 7 bits = error number
ERR_ALERT = 0x80
ERR_RESULT_FAIL = 1
ERR_INSTRUCTION = 2
ERR_CRC = 3
ERR_DATA_RANGE = 4
ERR_DATA_LENGTH = 5
ERR_DATA_LIMIT = 6
ERR_ACCESS = 7


def to_signed(value: int, size: int) -> int:
    bits = 8 * size
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >= 1 << (bits - 1) else value


def to_unsigned(value: int, size: int) -> int:
    return int(value) & ((1 << (8 * size)) - 1)


def encode(field: Field, value: int) -> bytes:
    return to_unsigned(int(value), field.size).to_bytes(field.size, "little")


def decode(field: Field, data: bytes | bytearray | list[int], offset: int = 0) -> int:
    raw = int.from_bytes(bytes(data[offset:offset + field.size]), "little")
    return to_signed(raw, field.size) if field.signed else raw
