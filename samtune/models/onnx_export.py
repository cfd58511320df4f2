"""ONNX export of a (fine-tuned) SAM-family model, as segment-anything's own
`scripts/export_onnx_model.py` does it, plus the image encoder as a second graph.

- encoder.onnx: `image` 1×3×S×S, already normalised (`PromptableModel.normalize`) →
  `image_embeddings` 1×C×S/16×S/16.
- decoder.onnx: segment_anything's `SamOnnxModel` (return_single_mask=False, the script's
  default; its crop to `orig_im_size` fixed as upstream did after the 1.0 release; N prompts per
  call where upstream traces 1). Inputs `image_embeddings` 1×C×h×w; `point_coords` N×P×2
  float, pixels on the S×S input grid (x, y); `point_labels` N×P float (1 positive, 0 negative, -1 padding, 2 and 3 a box's
  top-left and bottom-right corners: a box is two points); `mask_input` N×1×4h×4w low-res logits;
  `has_mask_input` 1 float (0 or 1); `orig_im_size` 2 float (H, W; masks come back at that size,
  as SAM's longest-side resize is undone). Outputs `masks` N×4×H×W logits, `iou_predictions`
  N×4, `low_res_masks` N×4×4h×4w: channel 0 is SAM's single-mask output, 1–3 its multimask
  output. As upstream, clicks without a box need one padding point (0, 0) labelled -1.

Supported: the segment-anything layout (SAM, MedSAM, MobileSAM). Not yet: HQ-SAM (its decoder
also reads an early ViT feature) and the SAM2 family (its decoder reads the high-res levels; sam2
has no ONNX script to follow) → ValueError naming what is supported. LoRA is merged and 4-bit
weights dequantised into a dense float32 copy first; the model itself is not changed.

Each file is written in a temporary folder beside it, then os.replace'd into place, so a failed
export leaves nothing behind. A graph over protobuf's 2 GB (the ViT-H encoder) keeps its weights
in one `<name>.data` file beside it, moved into place before the graph.
"""
from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from samtune.models.base import PromptableModel, Prompts
from samtune.models.export import _is_4bit, _lora_layers, merged_state_dict

log = logging.getLogger(__name__)

DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input",
                  "has_mask_input", "orig_im_size")
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")
SUPPORTED = "SAM, MedSAM and MobileSAM (segment-anything layout)"


def check_supported(model: PromptableModel) -> None:
    from segment_anything.modeling import MaskDecoder

    from samtune.models.sam import SamWrapper

    if not isinstance(model, SamWrapper) or type(model.mask_decoder) is not MaskDecoder:
        kind = "HQ-SAM" if hasattr(model.mask_decoder, "hf_token") else f"'{model.family}'"
        raise ValueError(f"ONNX export supports {SUPPORTED} models, not {kind} models")


def dense_copy(model: PromptableModel) -> PromptableModel:
    """A float32 CPU copy in eval mode with LoRA merged into plain layers and 4-bit Linear
    layers dequantised (`merged_state_dict`); `model` is not changed."""
    state = merged_state_dict(model)
    plain = copy.deepcopy(model)
    for name, layer in _lora_layers(plain).items():
        plain.set_submodule(name, layer.get_base_layer())
    for name, module in list(plain.named_modules()):
        if _is_4bit(module):
            plain.set_submodule(name, nn.Linear(module.in_features, module.out_features,
                                                bias=module.bias is not None))
    plain = plain.cpu().float()
    plain.load_state_dict(state, strict=True)
    for attr in ("peft_config", "is_loaded_in_4bit"):
        plain.__dict__.pop(attr, None)
    return plain.eval()


class _Encoder(nn.Module):
    """1×3×S×S normalised → 1×C×S/16×S/16, as `model.encode`."""

    def __init__(self, model: PromptableModel):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.encode(image).image


def _sam_onnx_model(model: PromptableModel) -> nn.Module:
    from segment_anything.modeling import Sam
    from segment_anything.utils.onnx import SamOnnxModel

    class FixedSamOnnxModel(SamOnnxModel):
        """segment-anything 1.0 (PyPI) crops with `int(prepadded_size[i])`, which the tracer
        bakes in at the dummy input's aspect ratio (upstream issue #56, fixed after the
        release by PR #58): the fix, slicing with the tensor itself."""

        def mask_postprocessing(self, masks: torch.Tensor, orig_im_size: torch.Tensor
                                ) -> torch.Tensor:
            masks = F.interpolate(masks, size=(self.img_size, self.img_size), mode="bilinear",
                                  align_corners=False)
            size = self.resize_longest_image_size(orig_im_size, self.img_size).to(torch.int64)
            masks = masks[..., :size[0], :size[1]]
            h, w = orig_im_size.to(torch.int64)
            return F.interpolate(masks, size=(h, w), mode="bilinear", align_corners=False)

    sam = Sam(model.image_encoder, model.prompt_encoder, model.mask_decoder)
    onnx_model = FixedSamOnnxModel(sam, return_single_mask=False)
    onnx_model.img_size = model.img_size  # MobileSAM's TinyViT keeps its build-time size
    return onnx_model.eval()


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _export_atomic(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path,
                   **kwargs: Any) -> Path:
    """torch.onnx.export (TorchScript exporter, as upstream's script) into a temporary folder
    beside `path`, then os.replace into place; the folder is removed whatever happens."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        graph = tmp / path.name
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarnings, the legacy exporter's notice
            torch.onnx.export(module, args, str(graph), dynamo=False, export_params=True,
                              do_constant_folding=True, **kwargs)
        data = tmp / (path.name + ".data")
        large = any(p != graph for p in tmp.iterdir())
        if large:  # over protobuf's 2 GB the exporter writes one file per tensor: make it one
            import onnx

            proto = onnx.load(str(graph))
            for p in list(tmp.iterdir()):
                p.unlink()
            onnx.save_model(proto, str(graph), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=data.name)
            _fsync(data)
            os.replace(data, path.parent / data.name)
        _fsync(graph)
        os.replace(graph, path)
        if not large:  # a data file left by an earlier, larger export of this name
            (path.parent / data.name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def export_onnx(model: PromptableModel, out_dir: str | Path, opset: int = 17,
                check: bool = True) -> dict[str, Path]:
    """Write out_dir/encoder.onnx and out_dir/decoder.onnx (module docstring); returns
    {"encoder": …, "decoder": …}. check: run both in onnxruntime on a random image and a box and
    log the mask IoU against the torch model (a warning below 0.999)."""
    check_supported(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plain = dense_copy(model)
    s = plain.img_size
    c = plain.prompt_encoder.embed_dim
    h, w = plain.prompt_encoder.image_embedding_size
    paths = {"encoder": out / "encoder.onnx", "decoder": out / "decoder.onnx"}
    g = torch.Generator().manual_seed(0)  # the caller's RNG stream stays as it was
    _export_atomic(_Encoder(plain), (torch.randn(1, 3, s, s, generator=g),), paths["encoder"],
                   opset_version=opset, input_names=["image"],
                   output_names=["image_embeddings"])
    dummy = (torch.randn(1, c, h, w, generator=g),
             torch.randint(0, s, (1, 5, 2), generator=g).float(),
             torch.randint(0, 4, (1, 5), generator=g).float(),
             torch.randn(1, 1, 4 * h, 4 * w, generator=g),
             torch.tensor([1.0]), torch.tensor([1.5 * s, 2.25 * s]))  # upstream's 1500×2250
    prompts = {0: "num_prompts", 1: "num_points"}  # upstream: num_points only
    dynamic = {"point_coords": prompts, "point_labels": prompts, "mask_input": {0: "num_masks"}}
    _export_atomic(_sam_onnx_model(plain), dummy, paths["decoder"], opset_version=opset,
                   input_names=list(DECODER_INPUTS), output_names=list(DECODER_OUTPUTS),
                   dynamic_axes=dynamic)
    log.info("exported onnx → %s, %s (opset %d)", paths["encoder"], paths["decoder"], opset)
    if check:
        box = torch.tensor([s / 4, s / 4, 3 * s / 4, 3 * s / 4])
        iou = check_onnx(model, paths, torch.randn(1, 3, s, s, generator=g), box)
        (log.info if iou >= 0.999 else log.warning)(
            "onnx check: masks IoU %.5f between torch and onnxruntime", iou)
    return paths


def box_points(boxes: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """N×4 (x0, y0, x1, y1) or 4 → decoder point_coords N×2×2, point_labels N×2 (2, 3)."""
    boxes = boxes.reshape(-1, 4).float()
    coords = boxes.reshape(-1, 2, 2).numpy().astype(np.float32)
    return coords, np.tile(np.array([[2.0, 3.0]], np.float32), (len(coords), 1))


def run_onnx(paths: dict[str, Path], image: torch.Tensor, boxes: torch.Tensor
             ) -> dict[str, np.ndarray]:
    """Encoder + decoder in onnxruntime (CPU) for a 1×3×S×S normalised image and N×4 boxes on
    the input grid → {"masks": N×4×S×S, "iou_predictions": N×4,
    "low_res_masks": N×4×S/4×S/4}."""
    # onnxruntime writes a device id into ~/.cache on import unless telemetry is off
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime as ort

    cpu = ["CPUExecutionProvider"]
    encoder = ort.InferenceSession(str(paths["encoder"]), providers=cpu)
    decoder = ort.InferenceSession(str(paths["decoder"]), providers=cpu)
    (emb,) = encoder.run(None, {"image": image.float().cpu().numpy()})
    coords, labels = box_points(boxes)
    s = image.shape[-1]
    feeds = {"image_embeddings": emb, "point_coords": coords, "point_labels": labels,
             "mask_input": np.zeros((1, 1, 4 * emb.shape[2], 4 * emb.shape[3]), np.float32),
             "has_mask_input": np.zeros(1, np.float32),
             "orig_im_size": np.array([s, s], np.float32)}
    return dict(zip(DECODER_OUTPUTS, decoder.run(None, feeds)))


@torch.no_grad()
def torch_outputs(model: PromptableModel, image: torch.Tensor, boxes: torch.Tensor
                  ) -> dict[str, torch.Tensor]:
    """The same outputs from the torch model: single-mask then multimask channels."""
    model.eval()
    emb = model.encode(image)
    prompts = Prompts(boxes=boxes.reshape(-1, 4).float())
    single, iou1 = model.decode(emb, 0, prompts, multimask=False)
    multi, iou3 = model.decode(emb, 0, prompts, multimask=True)
    low_res = torch.cat([single, multi], 1).float()
    return {"masks": model.upscale(low_res), "iou_predictions": torch.cat([iou1, iou3], 1),
            "low_res_masks": low_res}


def check_onnx(model: PromptableModel, paths: dict[str, Path], image: torch.Tensor,
               box: torch.Tensor) -> float:
    """IoU of the masks (logits > 0, all four channels of every box) between the torch model and
    the exported graphs in onnxruntime; 1.0 when both are empty. image: 1×3×S×S normalised;
    box: 4 or N×4 pixels on the input grid."""
    device = next(model.parameters()).device
    ref = torch_outputs(model, image.to(device), box.to(device))["masks"].cpu() > 0
    got = torch.from_numpy(run_onnx(paths, image.cpu(), box.cpu())["masks"]) > 0
    union = (ref | got).sum().item()
    return 1.0 if union == 0 else (ref & got).sum().item() / union
