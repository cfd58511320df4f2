"""A model's life after training: MLflow run tracking and its offline buffer, the MLflow pyfunc
flavour (`SamtuneSegmenter`), registry aliases, champion judging and the promotion decision.
Imports config, models, inference and eval (to score a champion); mlflow only inside functions."""
