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


def test_extends_deep_merges_and_k8s_config_differs_only_by_stack() -> None:
    base = load_config("asoca").to_dict()
    k8s = load_config("asoca_k8s").to_dict()
    assert {k for k in base if base[k] != k8s[k]} == {"stack"}
    assert k8s["stack"]["kind"] == "kubernetes" and k8s["stack"]["pods"]["gpu"]["count"] == 1
    retrain = load_config("retrain_k8s").to_dict()
    assert retrain["schedule"]["cron"] == "0 3 * * 1" and retrain["stack"] == k8s["stack"]
    assert retrain["convert"] == base["convert"]  # two levels of extends


def test_extends_loop_and_missing_base(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere"):
        load_config(tmp_path / "c.yaml")


@pytest.mark.parametrize("cron", ["0 3 * * 1", "*/15 0-6 1,15 jan-mar mon-fri", "5 4 * * sun"])
def test_valid_cron(cron: str) -> None:
    assert load_config("demo", [f"schedule.cron={cron}"]).schedule.cron == cron


@pytest.mark.parametrize("cron, problem", [("0 3 * *", "5 fields"), ("61 * * * *", "minute"),
                                           ("0 24 * * *", "hour"), ("0 0 * foo *", "month"),
                                           ("0 0 * * 1/0", "step")])
def test_invalid_cron_names_the_field(cron: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_config("demo", [f"schedule.cron={cron}"])


def test_kubernetes_stack_needs_a_spec_and_unknown_biomarker_lists_valid_ones() -> None:
    with pytest.raises(ConfigError, match="stack.spec"):
        load_config("demo", ["stack.kind=kubernetes"])
    with pytest.raises(ConfigError, match="volume_ml"):
        load_config("demo", ["eval.biomarkers={volumee_ml: true}"])
