"""Rig config format: the built-in configs load; bad files give one clear message."""

import pytest

from drivers.config import RIGS_DIR, load_rig_config, parse_rig_config
from drivers.errors import ConfigError


def test_builtin_sim_and_hardware_template_load():
    sim = load_rig_config("sim")
    assert sim.kind == "sim" and sim.sim is not None and sim.control_hz == 50
    assert [c.name for c in sim.cameras] == ["top", "left_wrist", "right_wrist"]
    hw = load_rig_config(RIGS_DIR / "aloha.toml")
    assert hw.kind == "hardware"
    assert {(a.role, a.side) for a in hw.arms} == {
        ("leader", "left"), ("leader", "right"), ("follower", "left"), ("follower", "right")}
    f = hw.arm("follower", "left")
    assert [j.name for j in f.joints][-1] == "gripper"
    assert hw.resolve(f.calibration).is_absolute()


def _sim_text(**extra):
    lines = ['name = "x"', 'kind = "sim"', "[sim]", 'task = "transfer_cube"']
    return "\n".join(lines + [f"{k} = {v}" for k, v in extra.items()])


def test_unknown_key_is_named_with_the_allowed_ones():
    with pytest.raises(ConfigError) as e:
        parse_rig_config(_sim_text(tsak='"insertion"'), "rig.toml")
    msg = str(e.value)
    assert "rig.toml.sim" in msg and "tsak" in msg and "allowed keys" in msg and "task" in msg


def test_missing_key_is_named():
    with pytest.raises(ConfigError, match=r"missing key 'kind'"):
        parse_rig_config('name = "x"\n', "rig.toml")


def test_wrong_type_and_bad_choice():
    with pytest.raises(ConfigError, match="control_hz.*expected a number"):
        parse_rig_config('name = "x"\nkind = "sim"\ncontrol_hz = "fast"\n[sim]\n', "r.toml")
    with pytest.raises(ConfigError, match="must be one of 'sim', 'hardware'"):
        parse_rig_config('name = "x"\nkind = "robot"\n', "r.toml")


def test_sim_rig_needs_sim_table_and_syntax_errors_name_the_file():
    with pytest.raises(ConfigError, match=r"\[sim\] table"):
        parse_rig_config('name = "x"\nkind = "sim"\n', "r.toml")
    with pytest.raises(ConfigError, match="r.toml: not valid TOML"):
        parse_rig_config('name = "x\n', "r.toml")


def test_hardware_rig_checks_arms_joints_models_and_cameras(tmp_path):
    text = (RIGS_DIR / "aloha.toml").read_text()
    bad_model = text.replace('model = "XM540-W270"', 'model = "XM540-W999"', 1)
    with pytest.raises(ConfigError, match="XM540-W999.*supported"):
        parse_rig_config(bad_model, "r.toml")
    no_serial = text.replace('serial = "REPLACE_WITH_SERIAL"', 'serial = ""', 1)
    with pytest.raises(ConfigError, match="cam_high.*needs a serial"):
        parse_rig_config(no_serial, "r.toml")
    swapped = text.replace('name = "waist"', 'name = "waste"', 1)
    with pytest.raises(ConfigError, match="joints are waste"):
        parse_rig_config(swapped, "r.toml")
    no_follower = text.split("[[arms]]\nname = \"right_follower\"")[0]
    with pytest.raises(ConfigError, match="needs a right follower arm"):
        parse_rig_config(no_follower, "r.toml")


def test_unknown_rig_name_lists_builtin_rigs():
    with pytest.raises(ConfigError, match="not found.*aloha.*sim"):
        load_rig_config("nonexistent-rig")
