"""Where a config's checkpoint file should be, and one message that says how to get it.

`run.py` asks `missing_checkpoint_message` before any step runs (and before ZenML or the stack is
touched), so a run with a missing file stops at once with what to do; `--dry-run` prints the same
text as a warning. Downloading itself lives in `samtune.models.checkpoints.download`.
"""
from __future__ import annotations

from pathlib import Path

from samtune.config import Config

# Zoo entries without a direct URL (ModelSpec.url is None): where their official file is
# published. MedSAM: the Google Drive folder of bowang-lab/MedSAM's README ("Get Started");
# wanglab/medsam-vit-base on Hugging Face holds the transformers format, not medsam_vit_b.pth.
RELEASE_PAGES: dict[str, str] = {
    "medsam_vit_b": "the MedSAM release, https://drive.google.com/drive/folders/"
                    "1ETWmi4AiniJeWOt6HAsYgTjYv_fkgzoN (linked from "
                    "https://github.com/bowang-lab/MedSAM#get-started)",
    "medsam2": "https://huggingface.co/wanglab/MedSAM2/resolve/main/MedSAM2_latest.pt "
               "(bowang-lab/MedSAM2's download.sh)",
}


def checkpoint_path(cfg: Config) -> Path | None:
    """The absolute path of `model.checkpoints_dir / model.checkpoint` (an absolute checkpoint
    stays as it is); None when the config trains from random weights."""
    if cfg.model.checkpoint is None:
        return None
    return (cfg.model.checkpoints_dir / cfg.model.checkpoint).resolve()


def where_to_get(name: str, file_name: str) -> str:
    """Where the file comes from: the zoo URL (then `--download` fetches it), the release page,
    or, for a file that is not the zoo's official one, the user's own training."""
    from samtune.models.registry import get_spec

    spec = get_spec(name)
    if spec.checkpoint != file_name:
        official = f" (the zoo's official file is {spec.checkpoint})" if spec.checkpoint else ""
        return f"it is not the official file of '{name}'{official}: put your own file there"
    if spec.url is not None:
        return (f"download it from {spec.url}, or let `python run.py --download {name}` fetch "
                "it into model.checkpoints_dir (add --pipeline … to run right after)")
    page = RELEASE_PAGES.get(name, spec.description)
    return (f"no direct download URL is known, so --download cannot fetch it; get it from "
            f"{page}")


def missing_checkpoint_message(cfg: Config) -> str | None:
    """None when the configured checkpoint exists (or none is configured); else one message
    naming the file expected, the full path searched and where to get it."""
    path = checkpoint_path(cfg)
    from samtune.models.hf_checkpoints import is_hf_folder

    if path is None or path.is_file() or is_hf_folder(path):  # a file, or a Hugging Face folder
        return None
    return (f"checkpoint {path.name} for model '{cfg.model.name}' not found at {path} "
            f"(model.checkpoints_dir / model.checkpoint); "
            f"{where_to_get(cfg.model.name, path.name)}")
