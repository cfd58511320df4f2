"""ModelBundle (exported weights + config + history) as a folder artifact."""
from __future__ import annotations

from typing import Any, ClassVar

from zenml.enums import ArtifactType

from materializers.folder import FolderDatasetMaterializer
from samtune.models.bundle import ModelBundle


class ModelBundleMaterializer(FolderDatasetMaterializer):
    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (ModelBundle,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.MODEL
