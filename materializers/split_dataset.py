"""SplitDataset (train/val/test export) as a folder artifact."""
from __future__ import annotations

from typing import Any, ClassVar

from zenml.enums import ArtifactType

from materializers.folder import FolderDatasetMaterializer
from samtune.data.datasets import SplitDataset


class SplitDatasetMaterializer(FolderDatasetMaterializer):
    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (SplitDataset,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA
