"""Prediction: a promptable model on the slices of a volume, fed as its family's official code
does (`predictor`), prompted from ground truth, key-slice boxes or a point grid, propagated, and
reassembled on the source grid; the infer path and its outputs. Imports config, data, models."""
