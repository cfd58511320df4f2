"""Run prepare (convert + split export) or training in a child process that kills itself with
SIGKILL just before its k-th file operation, as `kill -9` would at that point.

    python -m tests.crash_helper prepare <cases_root> <out> <kill_at>   (0: never; prints the
    python -m tests.crash_helper train <out> <kill_at>                    number of operations)

File operations counted: os.replace / os.rename (every atomic commit), os.link, PNG writes and
torch.save (the writes themselves), so a kill lands between any two writes of the run.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable

OPS = 0


def _counted(fn: Callable[..., Any], kill_at: int) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        global OPS
        OPS += 1
        if OPS == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return fn(*args, **kwargs)
    return wrapper


def arm(kill_at: int) -> None:
    """Count (and at `kill_at`, die before) every file operation named in the module doc."""
    import torch

    import samtune.data.convert as convert

    for name in ("replace", "rename", "link"):
        setattr(os, name, _counted(getattr(os, name), kill_at))
    convert.write_png = _counted(convert.write_png, kill_at)
    torch.save = _counted(torch.save, kill_at)


def prepare(cases_root: Path, out: Path) -> None:
    """tests.data.test_convert's collection of 3 cases → out/coco → out/dataset."""
    from samtune.config import ConvertConfig, SplitConfig
    from samtune.data.convert import convert_collection
    from samtune.data.export import export_splits
    from samtune.data.split import assign_splits
    from tests.data.test_convert import make_collection

    collection = make_collection(cases_root, n=3)
    convert_collection(collection, ConvertConfig(img_size=48, channels=1, workers=1),
                       out / "coco")
    assignment = assign_splits(collection.cases, SplitConfig(ratios=(0.34, 0.33, 0.33)))
    export_splits(out / "coco", assignment, out / "dataset", fingerprint="kill9",
                  method="random")


def train_run(out: Path, resume: Path | None = None) -> Any:
    """tests.train.test_resume's exact-resume setting (3 epochs of tiny SAM on blobs)."""
    from samtune.train.loop import train
    from tests.train.test_loop import tiny_cfg, tiny_model
    from tests.train.test_resume import RESUME_CFG, _data

    train_data, val_data = _data()
    model = tiny_model(0)
    result = train(model, train_data, val_data, tiny_cfg(**RESUME_CFG), out, resume=resume)
    return model, result


def main(argv: list[str]) -> None:
    kind, *paths, kill_at = argv
    arm(int(kill_at))
    if kind == "prepare":
        prepare(Path(paths[0]), Path(paths[1]))
    else:
        train_run(Path(paths[0]))
    print(OPS)


if __name__ == "__main__":
    main(sys.argv[1:])
