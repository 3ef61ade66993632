"""Every yaml under configs/ parses; unknown keys and wrong types give errors naming the key."""

from pathlib import Path

import pytest

from effdetmask.config import ConfigError, get_cfg, setup_cfg

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
ALL_CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))


def test_configs_exist():
    names = {p.name for p in ALL_CONFIGS}
    expected = ["effdet_d0.yaml", "effdet_d1.yaml", "effdet_d2.yaml", "mask_rcnn_R_50_FPN.yaml"]
    assert set(expected) <= names


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_every_config_loads(path):
    cfg = setup_cfg(str(path))
    assert cfg.INPUT.SIZE > 0
    assert cfg.MODEL.NUM_CLASSES == 46


def test_compound_scaling():
    cfgs = [setup_cfg(str(CONFIG_DIR / f"effdet_d{i}.yaml")) for i in range(3)]
    widths = [cfg.MODEL.BIFPN.CHANNELS for cfg in cfgs]
    repeats = [cfg.MODEL.BIFPN.REPEATS for cfg in cfgs]
    assert widths == [64, 88, 112]
    assert repeats == [3, 4, 5]


def test_overrides_apply():
    overrides = ["SOLVER.BASE_LR", "0.5", "INPUT.SIZE", "256"]
    cfg = setup_cfg(str(CONFIG_DIR / "effdet_d0.yaml"), overrides)
    assert cfg.SOLVER.BASE_LR == 0.5
    assert cfg.INPUT.SIZE == 256


def test_unknown_key_names_the_key():
    with pytest.raises(ConfigError, match="SOLVER.NOT_A_KEY"):
        setup_cfg("", ["SOLVER.NOT_A_KEY", "1"])


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match="INPUT.SIZE"):
        setup_cfg("", ["INPUT.SIZE", "'big'"])


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL:\n  NOT_A_KEY: 3\n")
    with pytest.raises(ConfigError) as err:
        setup_cfg(str(bad))
    assert "bad.yaml" in str(err.value) and "MODEL.NOT_A_KEY" in str(err.value)


def test_odd_override_list():
    with pytest.raises(ConfigError, match="KEY VALUE"):
        setup_cfg("", ["INPUT.SIZE"])


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        setup_cfg("/nonexistent/x.yaml")


def test_defaults_are_fresh_copies():
    a, b = get_cfg(), get_cfg()
    a.SOLVER.BASE_LR = 1.0
    assert b.SOLVER.BASE_LR != 1.0
