"""DynamixelBus on the real dynamixel-sdk against the emulated servo chain."""

from __future__ import annotations

import pytest

from drivers.dynamixel import control_table as ct
from drivers.dynamixel.bus import DynamixelBus, Motor
from drivers.dynamixel.emulator import DynamixelEmulator
from drivers.errors import ConnectionFailed, RigError, ServoFault

JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper")
MODELS = ("XM430-W350", "XM540-W270", "XM540-W270", "XM430-W350", "XM430-W350", "XM430-W350",
          "XM430-W350")
IDS = (1, 2, 4, 6, 7, 8, 9)
MOTORS = [Motor(n, i, m) for n, i, m in zip(JOINTS, IDS, MODELS)]


@pytest.fixture
def emu():
    with DynamixelEmulator(zip(IDS, MODELS)) as e:
        for i in IDS:
            e.set(i, "Return_Delay_Time", 0)
        yield e


@pytest.fixture
def bus(emu):
    with DynamixelBus(emu.port, MOTORS, name="left_follower") as b:
        yield b


def test_verify_and_single_registers(emu, bus):
    bus.verify()
    assert bus.read("Model_Number", 2) == 1120
    bus.write("Operating_Mode", 2, ct.MODE_EXTENDED_POSITION)
    assert emu.get(2, "Operating_Mode") == ct.MODE_EXTENDED_POSITION
    bus.write("Homing_Offset", 2, -300)
    assert bus.read("Homing_Offset", 2) == -300


def test_sync_read_write_round_trip_and_contiguous_block(emu, bus):
    for k, i in enumerate(IDS):
        bus.write("Operating_Mode", i, ct.MODE_EXTENDED_POSITION)
        emu.set_position(i, 1500 + 37 * k)
    pos = bus.sync_read()["Present_Position"]
    assert pos == {i: 1500 + 37 * k for k, i in enumerate(IDS)}
    bus.sync_write("Goal_Position", {i: 2048 + 10 * k for k, i in enumerate(IDS)})
    bus.torque(True)
    state = bus.sync_read(("Present_Position", "Present_Velocity", "Present_Current"))
    assert set(state) == {"Present_Position", "Present_Velocity", "Present_Current"}
    assert (126, 10) in bus._reads  # one sync read of 126..135
    assert [emu.get(i, "Goal_Position") for i in IDS] == [2048 + 10 * k for k in range(7)]
    # moving towards the goal: velocity is reported with the right sign
    assert state["Present_Velocity"][1] > 0
    assert bus.stats()["reads"] == 2


def test_wrong_port_names_the_port_and_by_id():
    b = DynamixelBus("/dev/ttyUSB_no_such_port", MOTORS, name="left_follower")
    with pytest.raises(ConnectionFailed) as e:
        b.open()
    msg = str(e.value)
    assert "/dev/ttyUSB_no_such_port" in msg and "/dev/serial/by-id" in msg


def test_unsupported_baud_lists_rates(emu):
    with pytest.raises(ConnectionFailed, match="1000000"):
        DynamixelBus(emu.port, MOTORS, baud=12345).open()


def test_wrong_baud_names_ids_and_fix(emu):
    with DynamixelBus(emu.port, MOTORS, baud=57600, retries=0, latency_timer_ms=2) as b:
        with pytest.raises(ConnectionFailed) as e:
            b.verify()
    msg = str(e.value)
    assert "no servo answered" in msg and "57600" in msg and "main.py scan" in msg
    assert "1, 2, 4, 6, 7, 8, 9" in msg


def test_missing_servo_named(emu, bus):
    emu.silence(4)
    with pytest.raises(ConnectionFailed) as e:
        bus.verify()
    msg = str(e.value)
    assert "id 4 (elbow)" in msg and "do not answer" in msg
    assert "id 2" not in msg


def test_wrong_model_named(emu):
    motors = list(MOTORS)
    motors[2] = Motor("elbow", 4, "XL430-W250")
    with DynamixelBus(emu.port, motors, name="left_follower") as b:
        with pytest.raises(ConnectionFailed) as e:
            b.verify()
    msg = str(e.value)
    assert "id 4 (elbow)" in msg and "XL430-W250" in msg and "XM540-W270" in msg


def test_single_dropped_packet_is_retried(emu, bus):
    emu.drop_status(6)
    pos = bus.sync_read()["Present_Position"]
    assert set(pos) == set(IDS)
    s = bus.stats()
    assert s["retries"] >= 1 and s["failures"] == 0


def test_crc_error_is_retried(emu, bus):
    emu.corrupt_crc(8)
    assert bus.read("Present_Position", 8) == ct.CENTER_TICKS
    emu.corrupt_crc(8)
    assert set(bus.sync_read()["Present_Position"]) == set(IDS)
    assert bus.stats()["retries"] >= 2


def test_retries_are_bounded_and_the_silent_servo_is_named(emu, bus):
    emu.drop_status(7, count=10)  # drops every status packet of id 7 for a while
    with pytest.raises(ConnectionFailed) as e:
        bus.sync_read()
    msg = str(e.value)
    assert "wrist_angle' (id 7" in msg and "retries" in msg
    assert bus.stats()["retries"] == 2 and bus.stats()["failures"] == 1


def test_hardware_error_names_servo_and_fault(emu, bus):
    emu.hardware_error(4, 0x20)
    with pytest.raises(ServoFault) as e:
        bus.sync_read()
    msg = str(e.value)
    assert "left_follower joint 'elbow' (id 4, XM540-W270)" in msg
    assert "overload" in msg and "power-cycle" in msg
    assert e.value.servo_id == 4 and e.value.bits == 0x20
    emu.hardware_error(6, 0x04 | 0x01)
    with pytest.raises(ServoFault, match="input voltage error and overheating"):
        bus.read("Present_Position", 6)


def test_health_read_tolerates_the_alert_and_returns_the_bits(emu, bus):
    emu.hardware_error(4, 0x20 | 0x04)
    emu.set(2, "Present_Temperature", 71)
    with pytest.raises(ServoFault):
        bus.sync_read(("Hardware_Error_Status",))
    bits = bus.sync_read(("Hardware_Error_Status",), alert_ok=True)["Hardware_Error_Status"]
    assert bits == {i: (0x24 if i == 4 else 0) for i in IDS}
    temps = bus.sync_read(("Present_Temperature",), alert_ok=True)["Present_Temperature"]
    assert temps[2] == 71 and temps[1] == 32


def test_eeprom_write_with_torque_on_is_explained(emu, bus):
    bus.write("Torque_Enable", 1, 1)
    with pytest.raises(RigError, match="torque off first"):
        bus.write("Operating_Mode", 1, ct.MODE_EXTENDED_POSITION)


def test_latency_statistics(emu, bus):
    for _ in range(20):
        bus.sync_read()
    s = bus.stats()
    assert s["reads"] == 20
    # wire time of a 7-servo position read at 1 Mbps is 1.26 ms
    assert 1.2 <= s["p50_ms"] <= s["p99_ms"] <= s["max_ms"]
