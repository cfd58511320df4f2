"""`model.name: oracle`: answers every prompt with the ground-truth mask of its instance.

It has no weights and no encoder; `samtune.inference.predictor.SlicePredictor` recognises it
(`is_oracle`) and answers each prompted instance with `answer`: its ground truth as seen through
the oracle's input grid, through the same conversion, prompting and reassembly path as a real
model. Users evaluate it on their own data to check the geometry and metric chain.

Its grid: with `model.img_size` unset the oracle's input grid IS the evaluation slice grid
(`convert.img_size`; `samtune.eval.volume_eval` builds it so), the answer is the ground truth
itself and volume Dice is 1.0 wherever the slice grid holds the source slice (convert.img_size ≥
the slice's longer side), however small the structures: a 1-voxel lesion survives. With an
explicit `model.img_size` the answer is resampled slice grid → s×s → slice grid, nearest-exact
(pixel centres) both ways, which is lossless when s ≥ the slice grid and otherwise shows what a
coarser grid costs: structures narrower than S/s slice pixels can vanish (the zoo's 256, once
used against a 1024 slice grid of 182×218 MNI slices, lost 17 % of small lesions: Dice 0.84).
"""
from __future__ import annotations

import numpy as np

from samtune.data.slicing import nearest_indices
from samtune.models.base import Embeddings, PromptableModel, Prompts

__all__ = ["OracleModel", "build_oracle", "answer"]


class OracleModel(PromptableModel):
    """A parameter-free stand-in whose input grid is img_size² (only the resampling matters)."""

    family = "oracle"
    is_oracle = True

    def __init__(self, img_size: int):
        super().__init__(img_size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

    def encode(self, images):  # type: ignore[no-untyped-def]
        raise TypeError("the oracle model has no encoder: predict through "
                        "samtune.inference.predictor.SlicePredictor, which gives it the "
                        "ground truth")

    def decode(self, emb: Embeddings, b: int, prompts: Prompts, multimask: bool = False):
        raise TypeError("the oracle model answers through SlicePredictor with ground truth only")


def build_oracle(img_size: int) -> OracleModel:
    return OracleModel(img_size)


def answer(gt: np.ndarray, img_size: int) -> np.ndarray:
    """Ground-truth instances K×S×S bool on the slice grid → the oracle's K×S×S float32
    probabilities (0 or 1): the masks themselves when img_size == S, else their nearest-exact
    round trip S → img_size → S (see the module docstring)."""
    gt = np.asarray(gt, dtype=bool)
    size = gt.shape[-1]
    if img_size == size:
        return gt.astype(np.float32)
    down = nearest_indices(size, img_size)
    up = nearest_indices(img_size, size)
    index = down[up]  # slice-grid pixel read by each slice-grid pixel after the round trip
    return gt[:, index[:, None], index[None, :]].astype(np.float32)
