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


REAL_DATASETS = {"asoca": "lora", "imagecas": "lora", "msseg": "frozen", "ich": "frozen",
                 "nnunet": "frozen"}


@pytest.mark.parametrize("name", sorted(REAL_DATASETS))
def test_real_dataset_configs_default_to_medsam_with_its_official_file(name: str) -> None:
    cfg = load_config(name)
    assert cfg.model.name == "medsam_vit_b" and cfg.model.checkpoint == Path("medsam_vit_b.pth")
    assert cfg.model.method == REAL_DATASETS[name]
    if cfg.model.method == "lora":
        assert list(cfg.model.lora.targets) == ["encoder_qkv"]
    else:
        assert cfg.train.embedding_cache
    assert cfg.convert.img_size == 1024  # unset in the YAML: MedSAM's input size


@pytest.mark.parametrize("model, size, preprocess", [("medsam2", 512, "medsam2"),
                                                     ("sam_vit_b", 1024, "sam"),
                                                     ("sam_tiny", 256, "sam")])
def test_model_name_re_derives_img_size_and_preprocessing(model: str, size: int,
                                                          preprocess: str) -> None:
    from samtune.models.registry import get_spec

    cfg = load_config("asoca", [f"model.name={model}"])
    assert cfg.convert.img_size == size and cfg.to_dict()["convert"]["img_size"] == size
    assert cfg.model.img_size is None and get_spec(cfg.model.name).img_size == size
    assert get_spec(cfg.model.name).preprocess == preprocess
    assert load_config("asoca", ["model.name=sam_vit_b", "model.img_size=512"]).convert.img_size \
        == 512  # model.img_size first
    assert load_config("asoca", ["convert.img_size=384"]).convert.img_size == 384  # explicit kept
    assert load_config("demo").convert.img_size == 256


def test_qlora_on_cpu_refused_at_config_time() -> None:
    with pytest.raises(ConfigError, match="qlora needs a CUDA GPU .* train.device is cpu"):
        load_config("asoca", ["model.method=qlora", "train.device=cpu"])
    # auto: decided at the start of training (adapters.check_method), where CUDA is known
    assert load_config("asoca", ["model.method=qlora"]).train.device == "auto"


def test_lora_target_absent_in_the_family_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from samtune.models import adapters

    with pytest.raises(ConfigError, match="model 'oracle' cannot take LoRA"):
        load_config("asoca", ["model.name=oracle"])
    sam = {k: v for k, v in adapters.TARGET_PATTERNS["sam"].items() if k != "encoder_mlp"}
    monkeypatch.setitem(adapters.TARGET_PATTERNS, "sam", sam)
    with pytest.raises(ConfigError, match=r"\['encoder_mlp'\] do not exist in the 'sam' family"):
        load_config("asoca", ["model.lora.targets=[encoder_qkv, encoder_mlp]"])
    assert load_config("asoca").model.method == "lora"  # encoder_qkv is there


def test_bad_img_size_and_unknown_model_refused_at_config_time() -> None:
    with pytest.raises(ConfigError, match="model.img_size: .*multiple of 16"):
        load_config("asoca", ["model.img_size=1000"])
    with pytest.raises(ConfigError, match="model.img_size: .*multiple of 32"):
        load_config("asoca", ["model.name=medsam2", "model.img_size=496"])
    with pytest.raises(ConfigError, match="model.name: unknown model 'medsam'"):
        load_config("asoca", ["model.name=medsam"])


def test_onnx_export_is_refused_at_config_time_where_the_layout_does_not_exist():
    from samtune.config import load_config

    cfg = load_config("demo", ["train.export=[onnx]"])
    assert cfg.train.export == ["onnx"]
    with pytest.raises(Exception, match="ONNX layout covers SAM"):
        load_config("demo", ["train.export=[onnx]", "model.name=sam2_tiny"])


def test_ich_3d_is_sam_med3d_turbo_with_lora_and_corrective_clicks() -> None:
    cfg = load_config("ich_3d")
    assert cfg.model.name == "sam_med3d_turbo" and cfg.model.method == "lora"
    assert cfg.model.checkpoint == Path("sam_med3d_turbo.pth") and cfg.convert.img_size == 128
    assert not cfg.train.prompts.box and cfg.train.prompts.click_rounds == 5
    assert cfg.convert.spacing_3d == (1.5, 1.5, 1.5) and cfg.data.layout == "csv"
    assert not cfg.train.embedding_cache
