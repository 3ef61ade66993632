"""Every yaml under configs/ parses; unknown keys and wrong types give errors naming the key."""

from pathlib import Path

import pytest

from effdetmask.config import RENAMED_KEYS, ConfigError, get_cfg, setup_cfg

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


RENAMED = "MODEL.EFFDET_HEAD.NAME"  # now MODEL.PROPOSAL_GENERATOR.NAME


def test_renamed_key_still_works_for_one_release_with_a_warning(tmp_path):
    """The old name, in a yaml (through _BASE_ too), an override or a merged config, sets the new
    key and warns naming the source, the old and the new key; no new yaml uses the old name."""
    assert RENAMED_KEYS[RENAMED] == "MODEL.PROPOSAL_GENERATOR.NAME"
    assert "NAME" not in get_cfg().MODEL.EFFDET_HEAD
    old = tmp_path / "old.yaml"
    old.write_text('_BASE_: "{}"\nMODEL:\n  EFFDET_HEAD:\n    NAME: "FromFile"\n'.format(
        CONFIG_DIR / "effdet_d0.yaml"))
    child = tmp_path / "child.yaml"
    child.write_text('_BASE_: "old.yaml"\nINPUT:\n  SIZE: 256\n')
    for path, expected in ((old, "FromFile"), (child, "FromFile")):
        with pytest.warns(FutureWarning, match=r"old\.yaml: config key MODEL\.EFFDET_HEAD\.NAME "
                                               r"is deprecated, renamed MODEL\.PROPOSAL_GENERATOR"):
            assert setup_cfg(str(path)).MODEL.PROPOSAL_GENERATOR.NAME == expected
    with pytest.warns(FutureWarning, match="command-line override"):
        cfg = setup_cfg("", [RENAMED, "FromList", "INPUT.SIZE", "256"])
    assert cfg.MODEL.PROPOSAL_GENERATOR.NAME == "FromList" and cfg.INPUT.SIZE == 256
    saved = get_cfg()  # e.g. the config of a run made before the rename
    saved.MODEL.EFFDET_HEAD.NAME = "FromOld"
    with pytest.warns(FutureWarning, match="merged config"):
        cfg = get_cfg()
        cfg.merge_from_other_cfg(saved)
    assert cfg.MODEL.PROPOSAL_GENERATOR.NAME == "FromOld" and "NAME" in saved.MODEL.EFFDET_HEAD


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_configs_use_no_renamed_key(path, recwarn):
    setup_cfg(str(path))
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)
                and "deprecated, renamed" in str(w.message)]
