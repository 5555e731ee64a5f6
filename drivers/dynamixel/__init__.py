"""Dynamixel X-series arms on Protocol 2.0 through dynamixel-sdk.

    control_table  addresses, models, units, hardware-error bits
    bus            DynamixelBus: sync read/write, retries, latency statistics, fault messages
    arm            LeaderArm / FollowerArm in rig units (radians, gripper 0..1)
    calibration    per-arm calibration file, its checks, the guided workflow (CalibrationSession)
    emulator       a servo chain on a pseudo-terminal for tests, benchmarks and the sim bridge
"""
