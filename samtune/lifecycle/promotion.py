"""Promotion with evidence: should a challenger replace the champion? Pure arithmetic, no MLflow
(`samtune.lifecycle.registry` applies a `Decision` to the registry).

The rule, on per-volume Dice (0-1) of the SAME test volumes:
    champion present  promote iff mean(challenger) − mean(champion) ≥ `min_improvement` AND the
                      lower bound of the paired percentile-bootstrap CI (level `confidence`) of
                      the mean per-volume difference is > 0. Fewer than 2 paired volumes give no
                      CI worth the name and are never promoted.
    no champion       promote iff mean(challenger) ≥ `floor`.

`min_improvement` defaults to 0.005 (half a Dice point): the CI alone would promote a gain that
is real but too small to matter once the test set is large. Identical scores never promote (all
differences 0, so the CI's lower bound is 0, not > 0). Bootstrap resamples are drawn with
`numpy.random.default_rng(seed)` over the volumes sorted by case id, so a decision is
reproducible from its inputs and its config.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

CHUNK = 2000  # bootstrap resamples drawn at once (bounds memory to CHUNK × n indices)


@dataclass(frozen=True)
class PromotionPolicy:
    """The thresholds of the rule above; the defaults are `RegistryConfig`'s."""

    min_improvement: float = 0.005
    floor: float = 0.5
    bootstrap_samples: int = 10000
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        if self.bootstrap_samples < 1:
            raise ValueError(f"bootstrap_samples must be ≥ 1, got {self.bootstrap_samples}")
        if self.min_improvement < 0:
            raise ValueError(f"min_improvement must be ≥ 0, got {self.min_improvement}")

    @classmethod
    def from_config(cls, registry: Any) -> "PromotionPolicy":
        """From a `RegistryConfig` (or anything with the same attribute names)."""
        return cls(min_improvement=registry.min_improvement, floor=registry.floor,
                   bootstrap_samples=registry.bootstrap_samples,
                   confidence=registry.confidence, seed=registry.seed)


@dataclass(frozen=True)
class Decision:
    """The outcome and its evidence. Champion fields are None when there was no champion;
    `pairs` holds one {case_id, challenger, champion, diff} per volume, sorted by case id."""

    promote: bool
    reason: str
    challenger_mean: float
    champion_mean: float | None
    mean_diff: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    pairs: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (floats, str, bool, None, lists, dicts)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Decision":
        """Inverse of `to_dict`; unknown keys (e.g. registry context in evidence) are ignored."""
        names = cls.__dataclass_fields__.keys()
        return cls(**{k: data[k] for k in names if k in data})


def _mean(values: np.ndarray) -> float:
    """Exactly rounded mean (math.fsum), so equal score lists give equal means in any order."""
    return math.fsum(values.tolist()) / len(values)


def _scores(scores: Mapping[str, float], who: str) -> dict[str, float]:
    """Per-volume Dice as {str case id: float}, each finite and within [0, 1]."""
    if not scores:
        raise ValueError(f"{who} has no per-volume Dice scores")
    out = {str(k): float(v) for k, v in scores.items()}
    bad = sorted(k for k, v in out.items() if not (math.isfinite(v) and 0.0 <= v <= 1.0))
    if bad:
        raise ValueError(f"{who} Dice must be finite and within [0, 1]; bad cases: {bad[:10]}")
    return out


def paired_bootstrap_ci(diffs: np.ndarray, samples: int, confidence: float,
                        seed: int) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of `diffs` (shape n): resample the n volumes with
    replacement `samples` times, take the (1−c)/2 and (1+c)/2 quantiles of the resampled means."""
    rng = np.random.default_rng(seed)
    n = len(diffs)
    means = np.empty(samples)
    for start in range(0, samples, CHUNK):
        stop = min(start + CHUNK, samples)
        means[start:stop] = diffs[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _pairs(challenger: dict[str, float],
           champion: dict[str, float]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Case ids (sorted) and aligned score arrays; the case sets must match exactly."""
    missing = sorted(set(champion) - set(challenger))
    extra = sorted(set(challenger) - set(champion))
    if missing or extra:
        raise ValueError("challenger and champion must be scored on the same test volumes; "
                         f"missing from challenger: {missing[:20]}, "
                         f"missing from champion: {extra[:20]}")
    cases = sorted(challenger)
    return (cases, np.array([challenger[c] for c in cases]),
            np.array([champion[c] for c in cases]))


def decide(challenger: Mapping[str, float], champion: Mapping[str, float] | None,
           policy: PromotionPolicy | None = None) -> Decision:
    """Apply the module's rule to per-volume Dice {case_id: dice}; `champion` None means there is
    no champion yet. Raises ValueError for empty, out-of-range or mismatched case sets."""
    policy = policy or PromotionPolicy()
    config = asdict(policy)
    chal = _scores(challenger, "challenger")
    if champion is None:
        cases = sorted(chal)
        values = np.array([chal[c] for c in cases])
        mean = _mean(values)
        promote = mean >= policy.floor
        verb = "promoted as first champion" if promote else "not promoted"
        reason = (f"no champion yet; challenger mean Dice {mean:.4f} "
                  f"{'≥' if promote else '<'} floor {policy.floor:.4f}: {verb}")
        pairs = [{"case_id": c, "challenger": chal[c], "champion": None, "diff": None}
                 for c in cases]
        return Decision(promote, reason, mean, None, None, None, None, len(cases), pairs, config)

    cases, a, b = _pairs(chal, _scores(champion, "champion"))
    diffs = a - b
    chal_mean, champ_mean = _mean(a), _mean(b)
    mean_diff = chal_mean - champ_mean  # ≥ 0 exactly when chal_mean ≥ champ_mean (IEEE)
    pairs = [{"case_id": c, "challenger": float(x), "champion": float(y), "diff": float(d)}
             for c, x, y, d in zip(cases, a, b, diffs)]
    if len(cases) < 2:
        reason = (f"only {len(cases)} paired volume: a bootstrap CI needs at least 2; "
                  "not promoted")
        return Decision(False, reason, chal_mean, champ_mean, mean_diff, None, None,
                        len(cases), pairs, config)
    ci_low, ci_high = paired_bootstrap_ci(diffs, policy.bootstrap_samples, policy.confidence,
                                          policy.seed)
    big_enough = mean_diff >= policy.min_improvement
    significant = ci_low > 0.0
    promote = big_enough and significant
    level = f"{policy.confidence:.0%} CI [{ci_low:+.4f}, {ci_high:+.4f}]"
    if promote:
        why = (f"≥ min_improvement {policy.min_improvement:.4f} and the {level} is above 0: "
               "promoted")
    elif not big_enough:
        why = f"< min_improvement {policy.min_improvement:.4f} ({level}): not promoted"
    else:
        why = (f"≥ min_improvement {policy.min_improvement:.4f} but the {level} does not "
               "exclude 0: not promoted")
    reason = (f"challenger mean Dice {chal_mean:.4f} vs champion {champ_mean:.4f} on "
              f"{len(cases)} volumes: difference {mean_diff:+.4f} {why}")
    log.info("promotion decision: %s", reason)
    return Decision(promote, reason, chal_mean, champ_mean, mean_diff, ci_low, ci_high,
                    len(cases), pairs, config)
