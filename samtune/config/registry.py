"""Config section `registry`: the MLflow model registry and the promotion policy.
"""
from __future__ import annotations

from pydantic import Field, model_validator

from samtune.config.base import Section


class RegistryConfig(Section):
    """Registration and evidence-based promotion (see samtune.lifecycle.promotion,
    samtune.lifecycle.registry).

    A challenger becomes champion when its mean per-volume Dice beats the champion's by at least
    `min_improvement` AND the lower bound of the paired bootstrap CI of the mean difference is
    > 0; with no champion yet, when its mean Dice is ≥ `floor`."""

    model_name: str = "samtune"
    enabled: bool = Field(True, description="register the trained model in MLflow")
    min_improvement: float = Field(0.005, ge=0, le=1, description="least mean Dice gain (0-1)")
    floor: float = Field(0.5, ge=0, le=1, description="least mean Dice of a first champion")
    bootstrap_samples: int = Field(10000, ge=100, le=1_000_000)
    confidence: float = Field(0.95, gt=0, lt=1, description="two-sided bootstrap CI level")
    seed: int = Field(0, ge=0, description="bootstrap RNG seed")
    rollback: bool = Field(False, description="roll the champion back to previous, no promotion")
    promote: bool = Field(True, description="finetune: decide promotion after registering")
    challenger: str = Field("latest", description="promote pipeline: the version to judge "
                            "(a number, or latest)")
    skip_unchanged: bool = Field(True, description="retrain: skip training when the dataset "
                                 "fingerprint equals the champion's")
    champion_alias: str = Field("champion", min_length=1, max_length=255, pattern=r"^[\w\-]+$")
    previous_alias: str = Field("previous", min_length=1, max_length=255, pattern=r"^[\w\-]+$")

    @model_validator(mode="after")
    def _usable_aliases(self) -> "RegistryConfig":
        for alias in (self.champion_alias, self.previous_alias):
            if alias.lower() == "latest" or (alias[0] in "vV" and alias[1:].isdigit()):
                raise ValueError(f"alias '{alias}' is reserved by MLflow ('latest', 'v<number>')")
        if self.champion_alias == self.previous_alias:
            raise ValueError("champion_alias and previous_alias must differ")
        return self
