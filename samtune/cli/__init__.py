"""What run.py calls besides the pipelines: the pipeline plans (listed and dry-run without zenml),
the end-of-run summary, and the system check (`--check`). May import any samtune package."""
