"""Cache policies keyed on input content, parameters and samtune's own code.

ZenML hashes only the step function's source; a change inside samtune (a new conversion rule, a
fixed training loop) must invalidate cached outputs too, so the key includes that code.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from zenml.config import CachePolicy

import samtune

_ROOT = Path(samtune.__file__).parent


def _code_hash(parts: list[str]) -> str:
    digest = hashlib.sha256()
    files = sorted({p for part in parts for p in
                    ([_ROOT / part] if part.endswith(".py")
                     else _ROOT.joinpath(part).rglob("*.py"))})
    for path in files:
        digest.update(path.relative_to(_ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def samtune_data_code() -> str:
    """sha256 of samtune/config and samtune/data (the prepare steps' code)."""
    return _code_hash(["config", "data"])


def samtune_model_code() -> str:
    """sha256 of everything a training or evaluation result depends on."""
    return _code_hash(["config", "data", "models", "train", "inference", "eval"])


DATA_CACHE = CachePolicy(cache_func=samtune_data_code)
MODEL_CACHE = CachePolicy(cache_func=samtune_model_code)
