"""Shared fixtures. Qt runs offscreen and MuJoCo renders with OSMesa unless the environment says
otherwise, so the whole suite runs headless."""

import dataclasses
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("MUJOCO_GL", "osmesa")

import pytest  # noqa: E402


@pytest.fixture
def isolated_settings(tmp_path, monkeypatch):
    """QSettings (window geometry, operator options) and the app's default data folder
    (~/xr0-data) in a temporary folder, not the user's."""
    from PySide6.QtCore import QSettings

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    for fmt in (QSettings.Format.NativeFormat, QSettings.Format.IniFormat):
        QSettings.setPath(fmt, QSettings.Scope.UserScope, str(tmp_path))
    return tmp_path


@pytest.fixture
def sim_config():
    """The sim rig's config with cameras at a light resolution and rate for 2-core machines."""
    from drivers.config import load_rig_config

    cfg = load_rig_config("sim")
    cams = tuple(dataclasses.replace(c, width=240, height=180, fps=15) for c in cfg.cameras)
    return cfg.with_(cameras=cams)


@pytest.fixture(scope="session")
def make_store(tmp_path_factory):
    """make_store(name, episodes, steps) -> a fresh store of synthetic transfer-cube episodes
    (seeds 0, 1, ...) with two 128x96 cameras at 25 fps, real videos and step columns."""
    from store import EpisodeStore
    from xr0.data.synthetic import write_episode

    def make(name: str, episodes: int, steps: int):
        root = tmp_path_factory.mktemp(name) / "store"
        with EpisodeStore.open(root) as st:
            for i in range(episodes):
                write_episode(st, steps=steps, seed=i, task="transfer the cube",
                              cameras={"top": (128, 96, 25.0), "left_wrist": (128, 96, 25.0)})
        return root

    return make
