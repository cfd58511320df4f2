"""Model zoo: name → builder, like segment-anything's `build_sam.py`.

One private builder per family holds the shared settings; each public variant is a few lines.
Every builder takes the input size S (divisible by the patch size) and returns a
`PromptableModel` whose `state_dict()` has the official key layout of its family, so the
official checkpoint files load as they are (see `samtune.models.checkpoints`).
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Callable, Iterator

import torch
from torch.overrides import TorchFunctionMode

from samtune.config import ModelConfig
from samtune.models import hq_sam as hq
from samtune.models import sam2 as s2
from samtune.models import sam_med3d as m3
from samtune.models.base import PromptableModel
from samtune.models.oracle import build_oracle

log = logging.getLogger(__name__)

SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
SAM2_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/072824/"
SAM21_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"


@dataclass(frozen=True)
class ModelSpec:
    """One zoo entry. `builder(img_size)` builds the architecture with random weights.

    checkpoint/url: the official file name and where it is published (None for the small CPU
    architectures, which have no pretrained weights). sha256: the full published hash where
    known, else None (never guessed).
    """

    family: str
    builder: Callable[[int], PromptableModel]
    img_size: int
    patch_size: int
    checkpoint: str | None
    url: str | None
    sha256: str | None
    description: str
    preprocess: str = "sam"  # samtune.models.preprocess.PREPROCESSING key: upstream's input path


# ---------------------------------------------------------------- SAM / MedSAM / MobileSAM
def _sam_heads(img_size: int, prompt_dim: int, mlp_dim: int, heads: int, iou_hidden: int
               ) -> tuple[torch.nn.Module, torch.nn.Module]:
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    grid = img_size // 16
    prompt_encoder = PromptEncoder(embed_dim=prompt_dim, image_embedding_size=(grid, grid),
                                   input_image_size=(img_size, img_size), mask_in_chans=16)
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=mlp_dim,
                                      num_heads=heads),
        transformer_dim=prompt_dim, iou_head_depth=3, iou_head_hidden_dim=iou_hidden)
    return prompt_encoder, mask_decoder


def _build_sam(img_size: int, *, embed_dim: int, depth: int, num_heads: int,
               global_attn: tuple[int, ...], window_size: int = 14, prompt_dim: int = 256,
               mlp_dim: int = 2048, decoder_heads: int = 8, iou_hidden: int = 256
               ) -> PromptableModel:
    """segment-anything's `_build_sam` with the input size (and, for tiny models, the widths)
    as arguments."""
    from segment_anything.modeling import ImageEncoderViT

    from samtune.models.sam import SamWrapper

    encoder = ImageEncoderViT(
        depth=depth, embed_dim=embed_dim, img_size=img_size, mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=num_heads, patch_size=16,
        qkv_bias=True, use_rel_pos=True, global_attn_indexes=global_attn,
        window_size=window_size, out_chans=prompt_dim)
    prompt_encoder, mask_decoder = _sam_heads(img_size, prompt_dim, mlp_dim, decoder_heads,
                                              iou_hidden)
    return SamWrapper(encoder, prompt_encoder, mask_decoder, img_size, "sam")


def _build_mobile_sam(img_size: int, *, embed_dims: tuple[int, ...], depths: tuple[int, ...],
                      num_heads: tuple[int, ...], window_sizes: tuple[int, ...]
                      ) -> PromptableModel:
    """mobile_sam's `build_sam_vit_t`: TinyViT encoder (neck fixed at 256) + SAM-size heads."""
    with warnings.catch_warnings():  # mobile_sam re-registers timm models on import
        warnings.simplefilter("ignore")
        from mobile_sam.modeling import TinyViT

    from samtune.models.sam import SamWrapper

    encoder = TinyViT(img_size=img_size, in_chans=3, num_classes=1000, embed_dims=list(embed_dims),
                      depths=list(depths), num_heads=list(num_heads),
                      window_sizes=list(window_sizes), mlp_ratio=4.0, drop_rate=0.0,
                      drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0,
                      local_conv_size=3, layer_lr_decay=0.8)
    prompt_encoder, mask_decoder = _sam_heads(img_size, 256, 2048, 8, 256)
    return SamWrapper(encoder, prompt_encoder, mask_decoder, img_size, "mobile_sam")


build_sam_vit_b = partial(_build_sam, embed_dim=768, depth=12, num_heads=12,
                          global_attn=(2, 5, 8, 11))
build_sam_vit_l = partial(_build_sam, embed_dim=1024, depth=24, num_heads=16,
                          global_attn=(5, 11, 17, 23))
build_sam_vit_h = partial(_build_sam, embed_dim=1280, depth=32, num_heads=16,
                          global_attn=(7, 15, 23, 31))
build_sam_tiny = partial(_build_sam, embed_dim=64, depth=2, num_heads=2, global_attn=(1,),
                         window_size=8, prompt_dim=64, mlp_dim=256, decoder_heads=4,
                         iou_hidden=64)
build_mobile_sam = partial(_build_mobile_sam, embed_dims=(64, 128, 160, 320),
                           depths=(2, 2, 6, 2), num_heads=(2, 4, 5, 10),
                           window_sizes=(7, 7, 14, 7))


# SAM2 / SAM2.1 / MedSAM2 builders live in samtune.models.sam2 (they compose sam2's hydra configs).


def _spec(family: str, builder: Callable[[int], PromptableModel], checkpoint: str | None,
          url: str | None, description: str, img_size: int = 1024,
          sha256: str | None = None, preprocess: str | None = None) -> ModelSpec:
    # SAM's ViT patch is 16; SAM2's Hiera patch is 4, but its first stage tiles an 8×8 window
    # position embedding over the S/4 grid, so S must be a multiple of 32.
    patch_size = {"sam2": 32, "oracle": 1}.get(family, 16)
    preprocess = preprocess or ("sam2" if family == "sam2" else "sam")
    return ModelSpec(family, builder, img_size, patch_size, checkpoint, url, sha256, description,
                     preprocess)


# sha256: Meta publishes the files (their names carry a hash prefix, e.g. 01ec64) but not the
# full sha256 in its READMEs; left None rather than guessed. Add full values here when verified.
MODELS: dict[str, ModelSpec] = {
    "sam_vit_b": _spec("sam", build_sam_vit_b, "sam_vit_b_01ec64.pth",
                       SAM_URL + "sam_vit_b_01ec64.pth", "SAM ViT-B (94 M), Meta 2023"),
    "sam_vit_l": _spec("sam", build_sam_vit_l, "sam_vit_l_0b3195.pth",
                       SAM_URL + "sam_vit_l_0b3195.pth", "SAM ViT-L (312 M), Meta 2023"),
    "sam_vit_h": _spec("sam", build_sam_vit_h, "sam_vit_h_4b8939.pth",
                       SAM_URL + "sam_vit_h_4b8939.pth", "SAM ViT-H (641 M), Meta 2023"),
    "medsam_vit_b": _spec("sam", build_sam_vit_b, "medsam_vit_b.pth", None,
                          "MedSAM: SAM ViT-B fine-tuned on 1.5 M medical image-mask pairs "
                          "(Ma et al. 2024); from the bowang-lab/MedSAM release",
                          preprocess="medsam"),
    "mobile_sam": _spec("mobile_sam", build_mobile_sam, "mobile_sam.pt",
                        "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/"
                        "mobile_sam.pt", "MobileSAM: TinyViT-5M encoder distilled from SAM"),
    # HQ-SAM (SysCV/sam-hq, Ke et al. 2023): SAM + HQ output token; builders in models/hq_sam.py
    "hq_sam_vit_b": _spec("sam", hq.build_hq_sam_vit_b, "sam_hq_vit_b.pth",
                          hq.HQ_URL + "sam_hq_vit_b.pth", "HQ-SAM ViT-B (SAM + HQ token)"),
    "hq_sam_vit_l": _spec("sam", hq.build_hq_sam_vit_l, "sam_hq_vit_l.pth",
                          hq.HQ_URL + "sam_hq_vit_l.pth", "HQ-SAM ViT-L (SAM + HQ token)"),
    "hq_sam_vit_h": _spec("sam", hq.build_hq_sam_vit_h, "sam_hq_vit_h.pth",
                          hq.HQ_URL + "sam_hq_vit_h.pth", "HQ-SAM ViT-H (SAM + HQ token)"),
    "hq_sam_vit_tiny": _spec("mobile_sam", hq.build_hq_sam_vit_tiny, "sam_hq_vit_tiny.pth",
                             hq.HQ_URL + "sam_hq_vit_tiny.pth",
                             "Light HQ-SAM: MobileSAM's TinyViT encoder + HQ decoder"),
    "hq_sam_tiny": _spec("sam", hq.build_hq_sam_tiny, None, None,
                         "tiny HQ-SAM ViT (random weights) for CPU tests and demos",
                         img_size=256),
    "sam_tiny": _spec("sam", build_sam_tiny, None, None,
                      "tiny SAM ViT (random weights) for CPU tests and demos", img_size=256),
    "sam2_hiera_t": _spec("sam2", s2.build_sam2_hiera_t, "sam2_hiera_tiny.pt",
                          SAM2_URL + "sam2_hiera_tiny.pt", "SAM2 Hiera-T (39 M), Meta 2024"),
    "sam2_hiera_s": _spec("sam2", s2.build_sam2_hiera_s, "sam2_hiera_small.pt",
                          SAM2_URL + "sam2_hiera_small.pt", "SAM2 Hiera-S (46 M), Meta 2024"),
    "sam2_hiera_b+": _spec("sam2", s2.build_sam2_hiera_bp, "sam2_hiera_base_plus.pt",
                           SAM2_URL + "sam2_hiera_base_plus.pt", "SAM2 Hiera-B+ (81 M), Meta 2024"),
    "sam2_hiera_l": _spec("sam2", s2.build_sam2_hiera_l, "sam2_hiera_large.pt",
                          SAM2_URL + "sam2_hiera_large.pt", "SAM2 Hiera-L (224 M), Meta 2024"),
    "sam2.1_hiera_t": _spec("sam2", s2.build_sam21_hiera_t, "sam2.1_hiera_tiny.pt",
                            SAM21_URL + "sam2.1_hiera_tiny.pt", "SAM2.1 Hiera-T (39 M)"),
    "sam2.1_hiera_s": _spec("sam2", s2.build_sam21_hiera_s, "sam2.1_hiera_small.pt",
                            SAM21_URL + "sam2.1_hiera_small.pt", "SAM2.1 Hiera-S (46 M)"),
    "sam2.1_hiera_b+": _spec("sam2", s2.build_sam21_hiera_bp, "sam2.1_hiera_base_plus.pt",
                             SAM21_URL + "sam2.1_hiera_base_plus.pt", "SAM2.1 Hiera-B+ (81 M)"),
    "sam2.1_hiera_l": _spec("sam2", s2.build_sam21_hiera_l, "sam2.1_hiera_large.pt",
                            SAM21_URL + "sam2.1_hiera_large.pt", "SAM2.1 Hiera-L (224 M)"),
    "medsam2": _spec("sam2", s2.build_medsam2, "MedSAM2_latest.pt",
                     "https://huggingface.co/wanglab/MedSAM2/resolve/main/MedSAM2_latest.pt",
                     "MedSAM2: SAM2.1 Hiera-T at 512 px fine-tuned on 3D medical images and "
                     "videos (Ma et al. 2025); from the bowang-lab/MedSAM2 release",
                     img_size=512, preprocess="medsam2"),
    "sam2_tiny": _spec("sam2", s2.build_sam2_tiny, None, None,
                       "tiny SAM2.1 Hiera (random weights) for CPU tests and demos",
                       img_size=256),
    # SAM-Med3D (uni-medical/SAM-Med3D, Wang et al. 2023): medim's 3D ViT-B/16 on 128³ crops;
    # the original file is on Google Drive only (link in the repository's README history).
    "sam_med3d": _spec("sam_med3d", m3.build_sam_med3d, "sam_med3d.pth", None,
                       "SAM-Med3D ViT-B 3D, uni-medical/SAM-Med3D original release (Google "
                       "Drive; no direct URL)", img_size=128, preprocess="sam_med3d"),
    "sam_med3d_turbo": _spec("sam_med3d", m3.build_sam_med3d, "sam_med3d_turbo.pth",
                             m3.HF_URL + "sam_med3d_turbo.pth", "SAM-Med3D-turbo: SAM-Med3D "
                             "fine-tuned on 44 datasets; uni-medical/SAM-Med3D on Hugging Face "
                             "(blueyo0/SAM-Med3D)", img_size=128, preprocess="sam_med3d"),
    "sam_med3d_tiny": _spec("sam_med3d", m3.build_sam_med3d_tiny, None, None,
                            "tiny SAM-Med3D (random weights) for CPU tests on 32³ crops",
                            img_size=32, preprocess="sam_med3d"),
    "oracle": _spec("oracle", build_oracle, None, None,
                    "ground truth as the answer to every prompt: checks geometry + metrics",
                    img_size=256),
}


def get_spec(name: str) -> ModelSpec:
    """The zoo entry `name`; an unknown name → ValueError listing the valid ones."""
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}'; valid models: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def check_img_size(name: str, img_size: int) -> None:
    """img_size must be a positive multiple of the entry's patch size → ValueError otherwise."""
    spec = get_spec(name)
    if img_size <= 0 or img_size % spec.patch_size:
        raise ValueError(f"model '{name}': img_size {img_size} must be a positive multiple of "
                         f"{spec.patch_size} (e.g. {spec.img_size})")


class _MetaItem(TorchFunctionMode):
    """Builders read stochastic-depth rates with `.item()` (Hiera, TinyViT); on the meta device
    there is no value, and none is needed for shapes, so it reads as 0."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func is torch.Tensor.item and args and args[0].is_meta:
            return 0.0
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def meta_device() -> Iterator[None]:
    """Build modules without allocating memory (`torch.device("meta")` that tolerates `.item()`)."""
    with torch.device("meta"), _MetaItem():
        yield


def build_architecture(name: str, img_size: int | None = None, meta: bool = False
                       ) -> PromptableModel:
    """Random-weight model `name` at S = img_size (default: the entry's); `meta=True` builds on
    the meta device, without allocating (for parameter counts and key/shape checks)."""
    spec = get_spec(name)
    size = img_size or spec.img_size
    check_img_size(name, size)
    with meta_device() if meta else contextlib.nullcontext():
        model = spec.builder(size)
    model.preprocess = spec.preprocess
    return model


def build_model(cfg: ModelConfig) -> PromptableModel:
    """The model of `cfg.name` at `cfg.img_size` (or its default), with `cfg.checkpoint`
    (relative to `cfg.checkpoints_dir`) loaded when set; size differences are interpolated."""
    spec = get_spec(cfg.name)
    model = build_architecture(cfg.name, cfg.img_size)
    if cfg.checkpoint is not None:
        from samtune.models.checkpoints import load_checkpoint

        # an absolute checkpoint path stays as it is; sha256 is looked up by the file name
        load_checkpoint(model, cfg.checkpoints_dir / cfg.checkpoint, family=spec.family)
    log.info("built %s (img_size %d, %s)", cfg.name, model.img_size,
             cfg.checkpoint or "random weights")
    return model


@lru_cache(maxsize=None)
def count_parameters(name: str) -> int:
    """Parameters of zoo entry `name` at its default size, counted on the meta device."""
    return sum(p.numel() for p in build_architecture(name, meta=True).parameters())


def list_models() -> list[dict[str, object]]:
    """One row per zoo entry: name, family, params, img_size, patch_size, preprocess (the
    upstream input path it reproduces), checkpoint, sha256, url, description."""
    from samtune.models.preprocess import get_preprocessing

    return [{"name": name, "family": spec.family, "params": count_parameters(name),
             "img_size": spec.img_size, "patch_size": spec.patch_size,
             "preprocess": f"{spec.preprocess}: {get_preprocessing(spec.preprocess).describe()}",
             "checkpoint": spec.checkpoint, "sha256": spec.sha256, "url": spec.url,
             "description": spec.description} for name, spec in MODELS.items()]


VOLUMETRIC_FAMILIES = ("sam_med3d",)  # models on 3D crops: the 3D export, crops, 3D inference


def is_volumetric(name: str) -> bool:
    """Whether zoo entry `name` is a 3D model (SAM-Med3D): pipelines then use the 3D export,
    3D crops in training and 3D inference; every other model sees 2D slices."""
    return get_spec(name).family in VOLUMETRIC_FAMILIES
