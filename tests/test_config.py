"""Config tree: typos named with location and closest key, --set coercion, shipped configs."""
from __future__ import annotations

from pathlib import Path

import pytest

from samtune.config import CONFIGS_DIR, ConfigError, apply_overrides, load_config


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_every_shipped_config_validates() -> None:
    names = sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))
    assert {"demo", "asoca", "imagecas", "msseg", "ich", "nnunet", "coco2d"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert cfg.data.layout


def test_typo_names_key_location_and_closest(tmp_path: Path) -> None:
    p = _write(tmp_path, "data: {layout: asoca, root: /x}\nconvert: {img_sze: 256}\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    msg = str(err.value)
    assert "convert.img_sze" in msg and "did you mean 'img_size'" in msg and str(p) in msg


def test_top_level_typo_and_nested_section(tmp_path: Path) -> None:
    p = _write(tmp_path, "data: {layout: asoca, phantoms: {n_normall: 2}}\nsplt: {}\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    msg = str(err.value)
    assert "data.phantoms.n_normall" in msg and "'n_normal'" in msg
    assert "splt" in msg and "'split'" in msg


def test_set_overrides_coerce_types(tmp_path: Path) -> None:
    p = _write(tmp_path, "data: {layout: asoca, root: /x}\n")
    cfg = load_config(p, ["convert.img_size=512", "split.ratios=[0.6, 0.2, 0.2]",
                          "data.root=/data/ASOCA", "convert.window=null", "validate.min_valid_fraction=0.25"])
    assert cfg.convert.img_size == 512
    assert cfg.split.ratios == (0.6, 0.2, 0.2)
    assert cfg.data.root == Path("/data/ASOCA")
    assert cfg.convert.window is None
    assert cfg.validate_.min_valid_fraction == 0.25


def test_set_bad_type_and_unknown_key(tmp_path: Path) -> None:
    p = _write(tmp_path, "data: {layout: asoca}\n")
    with pytest.raises(ConfigError, match="convert.img_size"):
        load_config(p, ["convert.img_size=big"])
    with pytest.raises(ConfigError, match="did you mean 'workers'"):
        load_config(p, ["convert.worker=2"])
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        apply_overrides({}, ["convert.img_size"])


def test_unknown_layout_lists_valid_ones(tmp_path: Path) -> None:
    p = _write(tmp_path, "data: {layout: asocaa}\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert "unknown layout 'asocaa'" in str(err.value) and "asoca" in str(err.value)


def test_split_rules(tmp_path: Path) -> None:
    p = _write(tmp_path, "data: {layout: asoca}\n")
    with pytest.raises(ConfigError, match="sum to 1"):
        load_config(p, ["split.ratios=[0.5, 0.5, 0.5]"])
    with pytest.raises(ConfigError, match="split.table"):
        load_config(p, ["split.method=table"])
    with pytest.raises(ConfigError, match="out of range"):
        load_config(p, ["split.fold=5"])


def test_unknown_config_name_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config("no_such_config")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "data: [unclosed\n"))
