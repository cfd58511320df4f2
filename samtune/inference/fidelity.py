"""samtune's slice path beside each family's official inference code, on the same weights.

`samtune_predict` runs an H×W×3 uint8 image through the pipeline's own `SlicePredictor` (the
image placed in a slice grid padded bottom/right, as convert writes it); `official_predict` runs
the upstream code:

- SAM: `segment_anything.SamPredictor` around the model's own modules; MobileSAM:
  `mobile_sam.SamPredictor`; HQ-SAM: `segment_anything_hq.SamPredictor`;
- MedSAM: the steps of `MedSAM_Inference.py` (bowang-lab/MedSAM ships no package): skimage
  resize to 1024² (order 3, anti-aliased) → uint8 → min-max → `image_encoder` → box × 1024/W,
  1024/H → prompt encoder → mask decoder (single mask) → sigmoid → bilinear to H×W → > 0.5;
- SAM2/SAM2.1: `sam2.SAM2ImagePredictor` on a fresh `SAM2Base` loaded with the same state dict;
- MedSAM2: sam2's `SAM2VideoPredictor` on a one-frame video (MedSAM2's inference is the video
  predictor; its frame loader resizes with PIL and normalises exactly as MedSAM2's scripts),
  prompted with `add_new_points_or_box`.

Both return `Prediction`: the binary mask and the logits on H×W (MedSAM: the logit of its
probabilities), and the wall time of the whole call.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from samtune.models.base import PromptableModel, Prompts
from samtune.models.preprocess import get_preprocessing, postprocess_logits
from samtune.models.prompts import select_best


@dataclass
class Prediction:
    """mask H×W bool, logits H×W float32, seconds for the whole call."""

    mask: np.ndarray
    logits: np.ndarray
    seconds: float


def _prompts(box: np.ndarray | None, points: np.ndarray | None, labels: np.ndarray | None
             ) -> Prompts:
    t = (lambda a, dt=torch.float32: None if a is None else torch.as_tensor(a, dtype=dt)[None])
    return Prompts(boxes=t(box), points=t(points), point_labels=t(labels, torch.int64))


@torch.inference_mode()
def samtune_predict(model: PromptableModel, image: np.ndarray, box: np.ndarray | None = None,
                    points: np.ndarray | None = None, labels: np.ndarray | None = None,
                    multimask: bool = False) -> Prediction:
    """One instance: box (4,) x0 y0 x1 y1 and/or points P×2 (x, y) with labels P, image pixels."""
    from samtune.inference.predictor import SlicePredictor

    start = time.perf_counter()
    h, w = image.shape[:2]
    size = max(h, w)
    grid = np.zeros((1, size, size, 3), np.uint8)
    grid[0, :h, :w] = image
    device = next(model.parameters()).device
    predictor = SlicePredictor(model.eval(), size, device=device, content=(h, w))
    emb = predictor.encode(grid)
    prompts = predictor.to_model_prompts(_prompts(box, points, labels))
    low, iou = model.decode(emb, 0, prompts, multimask=multimask)
    if multimask:
        low, _ = select_best(low, iou)
    probs = predictor.to_slice_grid(low)[0, :h, :w]
    logits = postprocess_logits(predictor.preprocessing, low, h, w, model.img_size)[0, 0]
    return Prediction((probs > 0.5).cpu().numpy(), logits.cpu().numpy(),
                      time.perf_counter() - start)


def official_predict(model: PromptableModel, image: np.ndarray, box: np.ndarray | None = None,
                     points: np.ndarray | None = None, labels: np.ndarray | None = None,
                     multimask: bool = False) -> Prediction:
    """The same instance through the family's official inference code (module docstring)."""
    start = time.perf_counter()
    name = get_preprocessing(model.preprocess).name
    run = {"sam": _sam, "medsam": _medsam, "sam2": _sam2, "medsam2": _medsam2}[name]
    with torch.inference_mode():
        mask, logits = run(model.eval(), image, box, points, labels, multimask)
    return Prediction(mask, logits, time.perf_counter() - start)


def _sam(model, image, box, points, labels, multimask):  # type: ignore[no-untyped-def]
    from samtune.models.hq_sam import HqSamWrapper

    extra = {}
    if isinstance(model, HqSamWrapper):
        from segment_anything_hq import SamPredictor
        from segment_anything_hq.modeling import Sam
        extra = {"hq_token_only": model.hq_token_only}
    elif model.family == "mobile_sam":
        from mobile_sam import SamPredictor
        from mobile_sam.modeling import Sam
    else:
        from segment_anything import SamPredictor
        from segment_anything.modeling import Sam
    sam = Sam(model.image_encoder, model.prompt_encoder, model.mask_decoder,
              pixel_mean=model.pixel_mean.flatten().tolist(),
              pixel_std=model.pixel_std.flatten().tolist()).to(model.pixel_mean.device).eval()
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    logits, scores, _ = predictor.predict(point_coords=points, point_labels=labels, box=box,
                                          multimask_output=multimask, return_logits=True,
                                          **extra)
    best = int(np.argmax(scores)) if multimask else 0
    return logits[best] > predictor.model.mask_threshold, logits[best]


def _medsam(model, image, box, points, labels, multimask):  # type: ignore[no-untyped-def]
    import torch.nn.functional as F
    from skimage import transform

    if points is not None or multimask:
        raise ValueError("MedSAM's inference takes one box and returns one mask")
    h, w = image.shape[:2]
    size = model.img_size
    img = transform.resize(image, (size, size), order=3, preserve_range=True,
                           anti_aliasing=True).astype(np.uint8)
    img = (img - img.min()) / np.clip(img.max() - img.min(), a_min=1e-8, a_max=None)
    device = model.pixel_mean.device
    x = torch.tensor(img).float().permute(2, 0, 1).unsqueeze(0).to(device)
    embedding = model.image_encoder(x)
    box_s = torch.as_tensor(np.asarray(box)[None] / np.array([w, h, w, h]) * size,
                            dtype=torch.float, device=device)[:, None, :]
    sparse, dense = model.prompt_encoder(points=None, boxes=box_s, masks=None)
    low, _ = model.mask_decoder(image_embeddings=embedding,
                                image_pe=model.prompt_encoder.get_dense_pe(),
                                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                multimask_output=False)
    prob = F.interpolate(torch.sigmoid(low), size=(h, w), mode="bilinear", align_corners=False)
    prob = prob.squeeze().cpu().double()
    return (prob > 0.5).numpy(), torch.logit(prob, eps=1e-12).float().numpy()


def _sam2_base(model: PromptableModel, video: bool = False) -> torch.nn.Module:
    from samtune.models.sam2 import build_sam2_base, build_video_predictor

    if video:
        return build_video_predictor(model)
    config, overrides = model.build_args
    with torch.device(model.pixel_mean.device):
        base = build_sam2_base(config, model.img_size, overrides)
    base.load_state_dict(model.state_dict())
    return base.eval()


def _sam2(model, image, box, points, labels, multimask):  # type: ignore[no-untyped-def]
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    predictor = SAM2ImagePredictor(_sam2_base(model))
    s = model.img_size  # the predictor hard-codes the feature sizes of a 1024 input
    predictor._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    predictor.set_image(image)
    logits, scores, _ = predictor.predict(point_coords=points, point_labels=labels, box=box,
                                          multimask_output=multimask, return_logits=True)
    best = int(np.argmax(scores)) if multimask else 0
    return logits[best] > predictor.mask_threshold, logits[best]


def _medsam2(model, image, box, points, labels, multimask):  # type: ignore[no-untyped-def]
    from PIL import Image

    if multimask:
        raise ValueError("MedSAM2's video predictor chooses its masks itself")
    video = _sam2_base(model, video=True)
    with tempfile.TemporaryDirectory() as tmp:
        # the frame loader globs *.jpg; PNG bytes under that name keep the frame lossless
        Image.fromarray(image).save(Path(tmp) / "00000.jpg", format="PNG")
        state = video.init_state(video_path=tmp)
        _, _, logits = video.add_new_points_or_box(state, frame_idx=0, obj_id=1, box=box,
                                                   points=points, labels=labels)
    out = logits[0, 0].float().cpu().numpy()
    return out > 0.0, out
