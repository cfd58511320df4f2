"""Each family's official image → model input → mask path, so a model sees what it was trained on.

A `Preprocessing` names the upstream inference code it reproduces; the functions here take an
H×W×3 uint8 image (a slice's content, no padding) and do what that code does:

- `sam` (SAM, MobileSAM, HQ-SAM; segment_anything `SamPredictor`): `ResizeLongestSide(S)`
  (torchvision resize of a PIL image, bilinear), ImageNet mean/std on 0–255, then zero padding
  at the bottom and right *after* normalisation (`Sam.preprocess`); masks: low-res logits →
  S×S (bilinear) → crop to the resized image → H×W (bilinear) → logit > 0.
- `medsam` (MedSAM, `MedSAM_Inference.py`): skimage `resize` to S×S (order 3, anti-aliased,
  preserve_range) → uint8 → min-max to [0, 1] over the image, no mean/std, no padding; boxes
  scaled by S/W, S/H; masks: sigmoid(low-res) → H×W (bilinear) → probability > 0.5.
- `sam2` (SAM2/SAM2.1, `SAM2ImagePredictor`): sam2's `SAM2Transforms` (ToTensor → Resize S×S →
  ImageNet mean/std on 0–1); coordinates normalised by W, H then × S; masks: low-res → H×W
  (bilinear) → logit > 0.
- `medsam2` (MedSAM2, `medsam2_infer_3D_CT.py` and sam2's video predictor frame loader): PIL
  RGB resize to S×S (PIL's default filter, bicubic) → /255 → ImageNet mean/std; prompts and
  masks as `sam2`.

Every function returns probabilities from `postprocess`, so one threshold (0.5) serves all
families: sigmoid(logit) > 0.5 ⇔ logit > 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)
IMAGENET_MEAN_01 = (0.485, 0.456, 0.406)
IMAGENET_STD_01 = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """One family's input/output rules (see the module docstring)."""

    name: Literal["sam", "medsam", "sam2", "medsam2", "sam_med3d"]
    resize: Literal["longest", "square", "crop"]
    intensity: str
    postprocess: str
    reference: str

    def describe(self) -> str:
        """One line for `--list-models`."""
        return f"{self.resize} side, {self.intensity}; {self.postprocess} ({self.reference})"


PREPROCESSING: dict[str, Preprocessing] = {
    "sam": Preprocessing("sam", "longest", "ImageNet mean/std on 0-255, pad 0 after norm",
                         "bilinear to S, crop, bilinear to HxW, logit>0",
                         "segment_anything.SamPredictor"),
    "medsam": Preprocessing("medsam", "square", "skimage cubic resize, min-max to [0,1]",
                            "sigmoid, bilinear to HxW, p>0.5", "MedSAM_Inference.py"),
    "sam2": Preprocessing("sam2", "square", "SAM2Transforms: ImageNet mean/std on 0-1",
                          "bilinear to HxW, logit>0", "sam2.SAM2ImagePredictor"),
    "medsam2": Preprocessing("medsam2", "square", "PIL bicubic resize, ImageNet mean/std on 0-1",
                             "bilinear to HxW, logit>0", "MedSAM2 medsam2_infer_3D_CT.py"),
    # 3D crops: SamMed3DWrapper.normalize does the intensity step; the slice functions below
    # do not apply to it.
    "sam_med3d": Preprocessing("sam_med3d", "crop", "torchio ZNormalization over voxels > 0",
                               "trilinear to the crop, sigmoid>0.5",
                               "SAM-Med3D utils/infer_utils.py"),
}


def get_preprocessing(name: str) -> Preprocessing:
    if name not in PREPROCESSING:
        raise ValueError(f"unknown preprocessing '{name}'; valid: {', '.join(PREPROCESSING)}")
    return PREPROCESSING[name]


def resized_shape(pre: Preprocessing, h: int, w: int, size: int) -> tuple[int, int]:
    """(h', w') of the image content on the S×S model grid (top-left; the rest is padding)."""
    if pre.resize == "square":
        return size, size
    from segment_anything.utils.transforms import ResizeLongestSide

    return ResizeLongestSide.get_preprocess_shape(h, w, size)


def coord_scale(pre: Preprocessing, h: int, w: int, size: int) -> tuple[float, float]:
    """(sx, sy): model-grid coordinate = image coordinate × scale (x, y order), as upstream's
    `apply_coords` (SAM: new/old per axis) or `transform_coords` (SAM2, MedSAM: S/W, S/H)."""
    nh, nw = resized_shape(pre, h, w, size)
    return nw / w, nh / h


def resize_to_model(pre: Preprocessing, image: np.ndarray, size: int) -> torch.Tensor:
    """H×W×3 uint8 → 3×S×S float32 on the 0–255 scale, resized as upstream resizes (see the
    module docstring). `sam` pads bottom/right with the ImageNet mean, which the family's
    normalisation maps to exactly 0: upstream pads with 0 after normalising."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an H×W×3 uint8 image, got {image.shape} {image.dtype}")
    if pre.name == "sam":
        from segment_anything.utils.transforms import ResizeLongestSide

        resized = torch.as_tensor(ResizeLongestSide(size).apply_image(image))
        out = torch.tensor(IMAGENET_MEAN_255).view(3, 1, 1).repeat(1, size, size)
        out[:, :resized.shape[0], :resized.shape[1]] = resized.permute(2, 0, 1).float()
        return out
    if pre.name == "medsam":
        from skimage.transform import resize

        r = resize(image, (size, size), order=3, preserve_range=True,
                   anti_aliasing=True).astype(np.uint8)
        return torch.from_numpy(r.transpose(2, 0, 1).astype(np.float32))
    if pre.name == "sam2":
        # SAM2Transforms: ToTensor (/255) → Resize((S, S)) (bilinear, antialiased) → Normalize;
        # the resize is linear, so resizing x and dividing by 255 afterwards is the same.
        from torchvision.transforms.functional import resize as tv_resize

        x = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
        return tv_resize(x, [size, size], antialias=True) * 255.0
    if pre.name == "medsam2":
        from PIL import Image

        r = np.asarray(Image.fromarray(image).convert("RGB").resize((size, size)))
        return torch.from_numpy(r.transpose(2, 0, 1).astype(np.float32))
    raise ValueError(f"unknown preprocessing '{pre.name}'")


def normalize_images(pre: Preprocessing, images: torch.Tensor) -> torch.Tensor:
    """B×3×S×S on 0–255 (from `resize_to_model`) → the model input: MedSAM min-max per image
    to [0, 1]; every other family ImageNet mean/std (SAM2's /255 then mean/std on 0–1 is the
    same map: 255·0.485 = 123.675, …)."""
    if pre.name == "medsam":
        lo = images.amin(dim=(1, 2, 3), keepdim=True)
        hi = images.amax(dim=(1, 2, 3), keepdim=True)
        return (images - lo) / (hi - lo).clamp_min(1e-8)
    mean = torch.tensor(IMAGENET_MEAN_255, dtype=images.dtype, device=images.device)
    std = torch.tensor(IMAGENET_STD_255, dtype=images.dtype, device=images.device)
    return (images - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def prepare_image(pre: Preprocessing, image: np.ndarray, size: int) -> torch.Tensor:
    """H×W×3 uint8 → 3×S×S float32 model input (resized, normalised, padded as upstream)."""
    return normalize_images(pre, resize_to_model(pre, image, size)[None])[0]


def masks_to_model(pre: Preprocessing, masks: torch.Tensor, size: int) -> torch.Tensor:
    """K×H×W bool masks on the image → K×S×S bool on the model grid (nearest; zero padding),
    aligned with `prepare_image` (for training targets)."""
    h, w = masks.shape[-2:]
    nh, nw = resized_shape(pre, h, w, size)
    if len(masks) == 0:
        return torch.zeros(0, size, size, dtype=torch.bool, device=masks.device)
    m = masks[None].to(torch.uint8)
    if (nh, nw) != (h, w):
        m = F.interpolate(m, (nh, nw), mode="nearest-exact")
    return F.pad(m[0], (0, size - nw, 0, size - nh)).bool()


def postprocess_logits(pre: Preprocessing, low_res: torch.Tensor, h: int, w: int, size: int
                       ) -> torch.Tensor:
    """N×M×s×s low-res logits → N×M×H×W logits on the image, as upstream (MedSAM resizes
    probabilities, not logits: its values are the logit of those)."""
    low_res = low_res.float()
    if pre.name == "medsam":
        return torch.logit(postprocess(pre, low_res, h, w, size).double(), eps=1e-12).float()
    if pre.name == "sam":
        nh, nw = resized_shape(pre, h, w, size)
        up = F.interpolate(low_res, (size, size), mode="bilinear", align_corners=False)
        return F.interpolate(up[..., :nh, :nw], (h, w), mode="bilinear", align_corners=False)
    return F.interpolate(low_res, (h, w), mode="bilinear", align_corners=False)


def postprocess(pre: Preprocessing, low_res: torch.Tensor, h: int, w: int, size: int
                ) -> torch.Tensor:
    """N×M×s×s low-res logits → N×M×H×W probabilities on the image, as upstream; > 0.5 is the
    family's binary mask."""
    if pre.name == "medsam":
        return F.interpolate(torch.sigmoid(low_res.float()), (h, w), mode="bilinear",
                             align_corners=False)
    return torch.sigmoid(postprocess_logits(pre, low_res, h, w, size))
