"""`model.name: oracle`: answers every prompt with the ground-truth mask of its instance.

It has no weights and no encoder; `samtune.eval.predict.SlicePredictor` recognises it
(`is_oracle`) and resamples each prompted instance's ground truth slice grid → model grid →
slice grid, through the same conversion, prompting and reassembly path as a real model. Users
evaluate it on their own data to check the geometry and metric chain: volume Dice must be
≥ 0.99 wherever slices are not larger than the model input.
"""
from __future__ import annotations

from samtune.models.base import Embeddings, Prompts, PromptableModel

__all__ = ["OracleModel", "build_oracle"]


class OracleModel(PromptableModel):
    """A parameter-free stand-in whose input grid is img_size² (only the resampling matters)."""

    family = "oracle"
    is_oracle = True

    def __init__(self, img_size: int):
        super().__init__(img_size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

    def encode(self, images):  # type: ignore[no-untyped-def]
        raise TypeError("the oracle model has no encoder: predict through "
                        "samtune.eval.predict.SlicePredictor, which gives it the ground truth")

    def decode(self, emb: Embeddings, b: int, prompts: Prompts, multimask: bool = False):
        raise TypeError("the oracle model answers through SlicePredictor with ground truth only")


def build_oracle(img_size: int) -> OracleModel:
    return OracleModel(img_size)
