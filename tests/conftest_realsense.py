"""Synthetic RealSense recordings for the camera tests, written once per session by
pyrealsense2's software device and recorder (nothing is downloaded)."""

from __future__ import annotations

import shutil

import pytest

from drivers.realsense.synthetic import SyntheticSpec, write_recording

COLOR_SPEC = SyntheticSpec(width=64, height=48, fps=30, frames=10, depth=False,
                           serial="000000000010")
# Depth at half the colour resolution and in 0.1 mm units (as a D405 reports), so the driver's
# rs.align resampling and unit conversion both show.
DEPTH_SPEC = SyntheticSpec(width=64, height=48, fps=30, frames=10, depth=True, depth_width=32,
                           depth_height=24, depth_units_m=0.0001, serial="000000000020")


@pytest.fixture(scope="session")
def color_recording(tmp_path_factory):
    return write_recording(tmp_path_factory.mktemp("rs") / "color.db3", COLOR_SPEC), COLOR_SPEC


@pytest.fixture(scope="session")
def depth_recording(tmp_path_factory):
    return write_recording(tmp_path_factory.mktemp("rs") / "depth.db3", DEPTH_SPEC), DEPTH_SPEC


@pytest.fixture
def own_recording(color_recording, tmp_path):
    """A private copy of the colour recording that a test may move away and back."""
    path, spec = color_recording
    copy = tmp_path / "camera.db3"
    shutil.copyfile(path, copy)
    return copy, spec
