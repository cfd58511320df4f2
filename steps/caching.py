"""Cache policy for data steps: keyed on input content, parameters and samtune's own code.

ZenML hashes only the step function's source; a change inside samtune/data (a new conversion
rule, a fixed reader) must invalidate cached outputs too, so the key includes that code.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from zenml.config import CachePolicy

import samtune


def samtune_data_code() -> str:
    """sha256 of the config modules and every module under samtune/data (cache key part)."""
    root = Path(samtune.__file__).parent
    digest = hashlib.sha256()
    config = [root / "config.py", root / "config_sections.py"]
    for path in sorted([*config, *root.joinpath("data").rglob("*.py")]):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


DATA_CACHE = CachePolicy(cache_func=samtune_data_code)
