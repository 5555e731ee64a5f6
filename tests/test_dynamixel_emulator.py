"""The Protocol 2.0 emulator, driven by the real dynamixel-sdk over a pseudo-terminal."""

from __future__ import annotations

import sys
import time

import pytest
from dynamixel_sdk import (
    COMM_RX_CORRUPT,
    COMM_RX_TIMEOUT,
    COMM_SUCCESS,
    GroupSyncRead,
    GroupSyncWrite,
    PacketHandler,
    PortHandler,
)

from drivers.dynamixel import control_table as ct
from drivers.dynamixel.emulator import DynamixelEmulator, build_packet, crc16, stuff, unstuff

SEVEN = [(i, "XM430-W350") for i in range(1, 8)]


@pytest.fixture(autouse=True)
def short_switch_interval():
    """The SDK's stock PortHandler polls the port with timeout 0 while it waits; with the
    emulator in a thread of the same process, that polling loop and the emulator hand the GIL
    back and forth at the interpreter's 5 ms switch interval, which a loaded machine turns into
    packet timeouts. A short interval keeps the in-process emulator answering promptly."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    yield
    sys.setswitchinterval(before)


def sync_read(group) -> float:
    """One sync read; returns its duration. A loaded machine can stall the emulator thread past
    the SDK's 35 ms timeout once in a few thousand reads, so a timeout is retried (as the bus
    does); a wrong answer is not."""
    for _ in range(3):
        t = time.perf_counter()
        result = group.txRxPacket()
        if result == COMM_SUCCESS:
            return time.perf_counter() - t
        assert result == COMM_RX_TIMEOUT
    raise AssertionError("three sync reads in a row timed out")


@pytest.fixture
def chain():
    with DynamixelEmulator(SEVEN) as emu:
        port = PortHandler(emu.port)
        assert port.openPort()
        yield emu, port, PacketHandler(2.0)
        port.closePort()


def test_crc_and_stuffing_match_the_sdk():
    ph = PacketHandler(2.0)
    data = bytes([0xFF, 0xFF, 0xFD, 0x00, 0x01, 0x07, 0x00, 0x02, 0x84, 0x00, 0x04, 0x00])
    assert crc16(data) == ph.updateCRC(0, list(data), len(data))
    payload = bytes([0x03, 0xFF, 0xFF, 0xFD, 0x10])
    assert stuff(payload) == bytes([0x03, 0xFF, 0xFF, 0xFD, 0xFD, 0x10])
    assert unstuff(stuff(payload)) == payload
    pkt = build_packet(1, 0x55, bytes([0, 0xFF, 0xFF, 0xFD]))
    assert pkt[:4] == b"\xff\xff\xfd\x00" and pkt[-2:] != b"\x00\x00"


def test_ping_read_write_through_the_sdk(chain):
    emu, port, ph = chain
    model, result, error = ph.ping(port, 3)
    assert (model, result, error) == (1020, COMM_SUCCESS, 0)
    _, result, _ = ph.ping(port, 42)
    assert result == COMM_RX_TIMEOUT
    assert ph.write4ByteTxRx(port, 2, 116, 3000) == (COMM_SUCCESS, 0)
    assert emu.get(2, "Goal_Position") == 3000
    assert ph.read1ByteTxRx(port, 2, 6) == (48, COMM_SUCCESS, 0)
    # a value whose bytes need stuffing (FF FF FD) arrives intact
    assert ph.write4ByteTxRx(port, 2, 108, 0x00FDFFFF) == (COMM_SUCCESS, 0)
    assert emu.get(2, "Profile_Acceleration") == 0x00FDFFFF
    assert ph.read4ByteTxRx(port, 2, 108) == (0x00FDFFFF, COMM_SUCCESS, 0)
    # position mode refuses a goal outside the position limits
    assert ph.write4ByteTxRx(port, 2, 116, 5000) == (COMM_SUCCESS, ct.ERR_DATA_LIMIT)


def test_eeprom_is_locked_while_torque_is_on(chain):
    emu, port, ph = chain
    assert ph.write1ByteTxRx(port, 1, 11, ct.MODE_EXTENDED_POSITION) == (COMM_SUCCESS, 0)
    assert ph.write1ByteTxRx(port, 1, 64, 1) == (COMM_SUCCESS, 0)
    result, error = ph.write1ByteTxRx(port, 1, 11, ct.MODE_POSITION)
    assert result == COMM_SUCCESS and error == ct.ERR_ACCESS
    assert emu.get(1, "Operating_Mode") == ct.MODE_EXTENDED_POSITION
    result, error = ph.write2ByteTxRx(port, 1, 0, 1234)  # Model_Number is read-only
    assert error == ct.ERR_ACCESS


def test_sync_read_and_write_round_trip(chain):
    emu, port, ph = chain
    for i in range(1, 8):
        emu.set_position(i, 1000 + 100 * i)
    group = GroupSyncRead(port, ph, 132, 4)
    for i in range(1, 8):
        group.addParam(i)
    sync_read(group)
    assert [group.getData(i, 132, 4) for i in range(1, 8)] == [1000 + 100 * i for i in range(1, 8)]
    write = GroupSyncWrite(port, ph, 116, 4)
    for i in range(1, 8):
        write.addParam(i, list((2000 + i).to_bytes(4, "little")))
    assert write.txPacket() == COMM_SUCCESS
    time.sleep(0.01)
    assert [emu.get(i, "Goal_Position") for i in range(1, 8)] == [2000 + i for i in range(1, 8)]


def test_wire_time_is_honoured_at_1mbps(chain):
    emu, port, ph = chain
    for i in range(1, 8):
        emu.set(i, "Return_Delay_Time", 0)
    group = GroupSyncRead(port, ph, 132, 4)
    for i in range(1, 8):
        group.addParam(i)
    times = [sync_read(group) for _ in range(10)]
    # 21-byte instruction + 7 x 15-byte status = 126 bytes x 10 bits at 1 Mbps = 1.26 ms
    assert min(times) >= 1.2e-3
    # the factory Return_Delay_Time (250 x 2 us per servo) adds 3.5 ms more
    for i in range(1, 8):
        emu.set(i, "Return_Delay_Time", 250)
    assert sync_read(group) >= 4.7e-3


def test_servos_answer_only_at_their_baud_rate():
    with DynamixelEmulator(SEVEN[:2]) as emu:
        port = PortHandler(emu.port)
        port.setBaudRate(57600)
        assert ph_ping(port, 1) == COMM_RX_TIMEOUT
        port.setBaudRate(1_000_000)
        assert ph_ping(port, 1) == COMM_SUCCESS
        port.closePort()


def ph_ping(port, servo_id):
    return PacketHandler(2.0).ping(port, servo_id)[1]


def test_position_tracks_goal_with_torque_and_stays_without(chain):
    emu, port, ph = chain
    ph.write1ByteTxRx(port, 1, 11, ct.MODE_EXTENDED_POSITION)
    ph.write4ByteTxRx(port, 1, 116, 2048)
    ph.write1ByteTxRx(port, 1, 64, 1)
    ph.write4ByteTxRx(port, 1, 116, 2448)
    first, _, _ = ph.read4ByteTxRx(port, 1, 132)
    assert first < 2448  # speed-limited, not a jump
    time.sleep(0.5)
    assert ph.read4ByteTxRx(port, 1, 132)[0] == 2448
    ph.write1ByteTxRx(port, 1, 64, 0)
    ph.write4ByteTxRx(port, 1, 116, 1000)
    time.sleep(0.05)
    assert ph.read4ByteTxRx(port, 1, 132)[0] == 2448
    emu.set_position(1, 1500)  # back-driven by hand
    assert ph.read4ByteTxRx(port, 1, 132)[0] == 1500


def test_homing_offset_and_reverse_drive_mode(chain):
    emu, port, ph = chain
    emu.set_position(4, 2100)
    ph.write4ByteTxRx(port, 4, 20, 100)
    assert ph.read4ByteTxRx(port, 4, 132)[0] == 2200
    ph.write1ByteTxRx(port, 4, 10, ct.DRIVE_MODE_REVERSE)
    ph.write1ByteTxRx(port, 4, 11, ct.MODE_EXTENDED_POSITION)
    assert ph.read4ByteTxRx(port, 4, 132)[0] == ct.to_unsigned(-2100 + 100, 4)


def test_injected_faults(chain):
    emu, port, ph = chain
    emu.drop_status(2)
    assert ph.ping(port, 2)[1] == COMM_RX_TIMEOUT
    assert ph.ping(port, 2)[1] == COMM_SUCCESS
    emu.corrupt_crc(3)
    assert ph.ping(port, 3)[1] == COMM_RX_CORRUPT
    emu.hardware_error(5, 0x20)
    _, result, error = ph.read4ByteTxRx(port, 5, 132)
    assert result == COMM_SUCCESS and error & ct.ERR_ALERT
    assert ph.read1ByteTxRx(port, 5, 70)[0] == 0x20
    assert ph.write1ByteTxRx(port, 5, 64, 1)[1] & 0x7F == ct.ERR_RESULT_FAIL
    assert not emu.torque_map()[5]
    ph.reboot(port, 5)
    assert ph.read1ByteTxRx(port, 5, 70) == (0, COMM_SUCCESS, 0)
    emu.silence(6)
    assert ph.ping(port, 6)[1] == COMM_RX_TIMEOUT


def test_bad_instruction_crc_is_answered_with_crc_error(chain):
    emu, port, ph = chain
    bad = build_packet(1, 0x01, b"", bad_crc=True)
    port.clearPort()
    port.writePort(bad)
    port.setPacketTimeout(11)
    rx, result = ph.rxPacket(port, False)
    assert result == COMM_SUCCESS and rx[8] == ct.ERR_CRC
    assert emu.crc_errors == 1


def test_reboot_and_factory_reset(chain):
    emu, port, ph = chain
    ph.write1ByteTxRx(port, 7, 9, 0)
    ph.write1ByteTxRx(port, 7, 65, 1)
    ph.reboot(port, 7)
    assert emu.get(7, "LED") == 0 and emu.get(7, "Return_Delay_Time") == 0
    assert ph.factoryReset(port, 7, 0x02) == (COMM_SUCCESS, 0)
    assert emu.get(7, "Return_Delay_Time") == 250 and emu.get(7, "ID") == 7
