"""Inference on new volumes: masks (NIfTI / NRRD), overlay PNGs and inference.json."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from zenml import log_metadata, step

from samtune.config import ConvertConfig, DataConfig, InferConfig, ModelConfig
from samtune.inference.infer import find_inputs
from samtune.inference.infer import infer_volumes as infer
from samtune.inference.model_source import load_model
from samtune.inference.pictures import find_pictures, infer_pictures, is_picture_input


@step(enable_cache=False)
def infer_volumes(
    inference: dict[str, Any], data: dict[str, Any], convert: dict[str, Any],
    model_config: dict[str, Any], model_uri: str | None, output_dir: str,
) -> Annotated[dict[str, Any], "inference"]:
    """The model of `model_uri` (eval.model_uri) or, without one, of the model section, on the
    volumes (or 2D pictures: samtune.inference.pictures) of infer.input or the data section's
    unlabelled cases; writes output_dir/inference/ and output_dir/inference.json. Not cached:
    it reads the disk and writes files users open."""
    cfg = InferConfig.model_validate(inference)
    pictures = find_pictures(cfg.input) if is_picture_input(cfg.input) else None  # PNG/JPG
    cases = find_inputs(cfg, DataConfig.model_validate(data)) if pictures is None else []
    loaded = load_model(ModelConfig.model_validate(model_config), model_uri)
    convert_cfg, out = ConvertConfig.model_validate(convert), Path(output_dir)
    summary = (infer(loaded, cases, convert_cfg, cfg, out) if pictures is None
               else infer_pictures(loaded, pictures, cfg, convert_cfg, out))
    log_metadata(metadata={"mode": cfg.mode, "model": loaded.description,
                           "cases_done": summary["done"], "cases_failed": summary["failed"],
                           "cases_skipped": summary["skipped"]})
    return summary
