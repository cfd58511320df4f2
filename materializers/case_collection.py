"""CaseCollection ↔ `cases.json` in the artifact store; content hash = file contents."""
from __future__ import annotations

import json
import os
from typing import Any, ClassVar

from zenml.enums import ArtifactType
from zenml.io import fileio
from zenml.materializers.base_materializer import BaseMaterializer

from samtune.data.cases import CaseCollection


class CaseCollectionMaterializer(BaseMaterializer):
    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (CaseCollection,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA

    def load(self, data_type: type[Any]) -> CaseCollection:
        with fileio.open(os.path.join(self.uri, "cases.json"), "r") as f:
            return CaseCollection.from_dict(json.load(f))

    def save(self, data: CaseCollection) -> None:
        with fileio.open(os.path.join(self.uri, "cases.json"), "w") as f:
            json.dump(data.to_dict(), f, indent=1)

    def compute_content_hash(self, data: CaseCollection) -> str:
        return data.content_hash()

    def extract_metadata(self, data: CaseCollection) -> dict[str, Any]:
        labelled = sum(c.label_path is not None for c in data.cases)
        return {"layout": data.layout, "n_cases": len(data.cases), "n_labelled": labelled,
                "n_patients": len({c.patient_id for c in data.cases}),
                "n_skipped_files": len(data.skipped)}
