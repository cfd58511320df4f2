"""Find the dataset's cases and fingerprint their files (always re-run: it reads the disk)."""
from __future__ import annotations

from typing import Annotated, Any

from zenml import log_metadata, step

from materializers.case_collection import CaseCollectionMaterializer
from samtune.config import DataConfig
from samtune.data.cases import CaseCollection
from samtune.data.layouts import ingest


@step(enable_cache=False, output_materializers=CaseCollectionMaterializer)
def ingest_volumes(data: dict[str, Any]) -> Annotated[CaseCollection, "cases"]:
    """Scan `data.root` with the configured layout; downstream caching keys on file contents."""
    collection = ingest(DataConfig.model_validate(data))
    log_metadata(metadata={
        "layout": collection.layout,
        "cases": len(collection.cases),
        "patients": len({c.patient_id for c in collection.cases}),
        "skipped_files": len(collection.skipped),
        "content_hash": collection.content_hash(),
    })
    return collection
