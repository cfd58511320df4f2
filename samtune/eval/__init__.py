"""Scoring: slice evaluation with box-fill baseline, volume evaluation on the source grid,
`metrics/` and `biomarkers/` (a registry and a module per family), reports and plots.
Imports config, data, models, inference and train's SliceDataset; never lifecycle or cli."""
