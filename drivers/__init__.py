"""Hardware and its stand-ins: Dynamixel arms, RealSense cameras, the MuJoCo sim rig, emulators.

No Qt, no xr0 (enforced by import-linter contracts in pyproject.toml).
"""
