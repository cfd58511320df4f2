"""Training: the slice dataset and augmentation, losses, the step and loop, optimiser, resumable
state, the embedding cache, DDP, and `finetune` (train on an export, QC overlays).
Imports config, atomic, figures, data, models and eval's slice scoring (validation QC)."""
