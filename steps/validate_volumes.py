"""Check every case with Great Expectations and quarantine the failures with their reasons."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from zenml import log_metadata, step
from zenml.types import HTMLString

from materializers.case_collection import CaseCollectionMaterializer
from samtune.config import ValidateConfig
from samtune.data.cases import CaseCollection
from samtune.data.validate import apply_quarantine, collect_facts, run_expectations
from samtune.data.validation_report import write_report
from steps.caching import DATA_CACHE


@step(cache_policy=DATA_CACHE,
      output_materializers={"valid_cases": CaseCollectionMaterializer})
def validate_volumes(
    cases: CaseCollection, rules: dict[str, Any], output_dir: str, workers: int = 1
) -> tuple[
    Annotated[CaseCollection, "valid_cases"],
    Annotated[dict[str, Any], "validation_report"],
    Annotated[HTMLString, "validation_html"],
]:
    """Facts per case → expectations → report (JSON + HTML, also under output_dir/reports).

    Stops the run with one message listing every failed case when fewer than
    `validate.min_valid_fraction` of the cases pass.
    """
    cfg = ValidateConfig.model_validate(rules)
    facts = collect_facts(cases, cfg, workers=workers)
    result = run_expectations(facts, cfg)
    paths = write_report(result, cases, Path(output_dir) / "reports")
    log_metadata(metadata={"passed": len(result.passed), "failed": len(result.failed),
                           "valid_fraction": result.valid_fraction,
                           "report": str(paths["html"])})
    valid = apply_quarantine(cases, result, cfg)
    return valid, result.to_dict(), HTMLString(Path(paths["html"]).read_text())
