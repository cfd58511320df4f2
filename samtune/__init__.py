"""samtune: fine-tune Segment-Anything-family models on 3D medical images — a plain library that
the ZenML steps call. It never imports zenml, steps/, pipelines/, materializers/, bench/ or tests/.

Floors (a package imports, at module level, only its own floor and those below it;
tests/test_floors.py checks it):
    0  config (the one config tree), atomic (atomic writes), figures (matplotlib drawings)
    1  data        volumes, layouts, validation, slice conversion, patient split
    2  models      the zoo, wrappers, preprocessing, checkpoints, adapters, export
    3  inference   a model on a volume's slices: prompts, propagation, reassembly, infer
    4  train, eval one floor: training validates with eval's slice scoring, slice scoring reads
                   train's SliceDataset; eval also scores inference's volume predictions
    5  lifecycle   MLflow tracking, the model flavour, registry aliases, champion, promotion
    6  benchmark, cli   the benchmark matrix; what run.py calls (plans, summary, --check)
config checks a model name or a biomarker against the zoo inside its validators (lazily).
"""
