"""`SamtuneSegmenter`: a fine-tuned samtune model as an MLflow pyfunc (logged by
`samtune.lifecycle.tracking.log_model`).

Input — a dict (one image) or a pandas DataFrame (one image per row) with columns:
    image   H×W×3 (or H×W) uint8 as a nested list or array, or the path of a PNG file
    boxes   list of [x0, y0, x1, y1] in pixels of that image (the training prompts' convention)
Output — a list of H×W uint8 masks (0/1), one per box, in row order then box order (so for one
image: one mask per box). A row without boxes adds nothing. 3D models (SAM-Med3D) take a
`volume` and `points` instead: `samtune.lifecycle.flavour3d`.

Pre- and post-processing are the model family's official ones (`samtune.models.preprocess`, as
evaluation uses them: SAM's longest-side resize and padding after normalisation, MedSAM's
min-max, SAM2's transforms), normalised with the training statistics when the model was
trained with `imagenet`/`dataset` normalisation; one encoder pass per image.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch

from samtune.lifecycle.flavour3d import is_3d_input, rows_3d, segment_points_3d

log = logging.getLogger(__name__)


def input_signature(signature: Any) -> Any:
    """An inferred signature with `image` widened to any type (a nested list or a PNG path) and
    `boxes` to a list of anything (int or float boxes); the output schema is left open. (An
    Array column also makes MLflow read a dict input as one row.)"""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, Array, ColSpec, Schema

    wide = {"image": AnyType(), "boxes": Array(AnyType()), "volume": AnyType(),
            "points": Array(AnyType()), "point_labels": Array(AnyType())}
    cols = [ColSpec(wide[spec.name], spec.name, required=spec.required)
            if spec.name in wide else spec for spec in signature.inputs.inputs]
    return ModelSignature(inputs=Schema(cols), outputs=None)


def read_image(image: Any) -> np.ndarray:
    """A PNG path or an H×W(×3) array / nested list → H×W×3 uint8."""
    if isinstance(image, (str, Path)):
        from PIL import Image

        with Image.open(image) as img:
            pixels = np.asarray(img.convert("RGB"))
    else:
        pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"image must be H×W×3 or H×W, got shape {pixels.shape}")
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _rows(model_input: Any) -> list[tuple[Any, Any]]:
    if isinstance(model_input, Mapping):
        return [(model_input["image"], model_input.get("boxes"))]
    if hasattr(model_input, "iterrows"):
        if "image" not in model_input.columns:
            raise ValueError("model input needs an 'image' column")
        boxes = (model_input["boxes"] if "boxes" in model_input.columns
                 else [None] * len(model_input))
        return list(zip(model_input["image"], boxes))
    raise TypeError(f"model input must be a dict or a pandas DataFrame, not {type(model_input)}")


def _as_boxes(boxes: Any) -> np.ndarray:
    if boxes is None:
        return np.zeros((0, 4))
    arr = np.asarray([np.asarray(b, dtype=np.float64) for b in boxes], dtype=np.float64)
    return arr.reshape(-1, 4)


@torch.inference_mode()
def segment_boxes(model: Any, image: np.ndarray, boxes: np.ndarray,
                  stats: tuple[Any, Any] | None = None) -> list[np.ndarray]:
    """One image H×W×3 uint8 and its N×4 boxes (image pixels) → N masks H×W uint8 (0/1), fed
    as the model family's official predictor feeds it (the evaluation path, `SlicePredictor`,
    with the image as one slice). stats: training (mean, std) on 0–255; None: the model's own."""
    from samtune.config import PromptConfig
    from samtune.inference.predictor import SlicePredictor

    h, w = image.shape[:2]
    if len(boxes) == 0:
        return []
    size = max(h, w)
    grid = np.zeros((1, size, size, 3), np.uint8)
    grid[0, :h, :w] = image
    device = next(model.parameters()).device
    predictor = SlicePredictor(model, size, stats=stats, device=device, content=(h, w))
    probs = predictor.decode(predictor.encode(grid), 0, None, PromptConfig(bbox_shift=0),
                             torch.Generator(), boxes=np.asarray(boxes, np.float32))
    return [(p[:h, :w] > 0.5).astype(np.uint8) for p in probs]


class SamtuneSegmenter(mlflow.pyfunc.PythonModel):
    """Box-prompted segmentation with a fine-tuned samtune model; see the module docstring.

    Artifacts: `weights` (the complete torch state dict of the built model, LoRA merged),
    `config` (resolved config JSON; its `model` section rebuilds the architecture through
    `samtune.models.registry.build_model`, without the pretrained checkpoint), `preprocessing`
    (JSON {"mean", "std"} on the 0–255 scale; empty: the model's own).
    """

    def load_context(self, context: Any) -> None:
        from samtune.config import ModelConfig
        from samtune.models.registry import build_model

        config = json.loads(Path(context.artifacts["config"]).read_text())
        section = dict(config.get("model", config))
        section["checkpoint"] = None
        model = build_model(ModelConfig.model_validate(section))
        state = torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
            raise ValueError("the weights artifact is not a state dict of tensors (a training "
                             "checkpoint holds only the trainable part: export the full "
                             "model.state_dict(), LoRA merged)")
        model.load_state_dict(state)  # strict: a partial state dict fails here, not silently
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()
        prep = json.loads(Path(context.artifacts["preprocessing"]).read_text() or "{}")
        self.stats = (prep["mean"], prep["std"]) if prep.get("mean") else None
        log.info("SamtuneSegmenter: %s at %d px on %s", section.get("name"), model.img_size,
                 self.device)

    # MLflow 3 reads predict's type hints: pd.DataFrame is one it infers no schema from, so the
    # signature logged from the input example stands (and MLflow hands a dict over as one row).
    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> list[np.ndarray]:
        """Masks H×W uint8 (0/1), one per box, in row then box order (module docstring); a
        dict is read as one row when called directly."""
        masks: list[np.ndarray] = []
        if is_3d_input(model_input):  # SAM-Med3D: a volume and points (flavour3d)
            return [segment_points_3d(self.model, *row) for row in rows_3d(model_input)]
        for image, boxes in _rows(model_input):
            masks.extend(segment_boxes(self.model, read_image(image), _as_boxes(boxes),
                                       self.stats))
        return masks
