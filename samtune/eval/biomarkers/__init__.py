"""Clinical biomarkers on prediction and ground truth: the `registry` (name → function, values,
parameters) and one module per family: size, shape (vessel radius, thickness), qmap; agreement
(Bland-Altman) over cases. Imports numpy/scipy/scikit-image only, no other samtune package."""
from samtune.eval.biomarkers.agreement import (
    SUMMARY_COLUMNS,
    agreement,
    summarize_biomarkers,
)
from samtune.eval.biomarkers.qmap import qmap_mean, qmap_median
from samtune.eval.biomarkers.registry import (
    BIOMARKERS,
    ROW_KEYS,
    BiomarkerSpec,
    compute_biomarkers,
    validate_selection,
)
from samtune.eval.biomarkers.shape import thickness, vessel
from samtune.eval.biomarkers.size import (
    lesion_count,
    lesion_volumes_ml,
    surface_area_mm2,
    volume_ml,
)

__all__ = ["BIOMARKERS", "ROW_KEYS", "SUMMARY_COLUMNS", "BiomarkerSpec", "agreement",
           "compute_biomarkers", "lesion_count", "lesion_volumes_ml", "qmap_mean", "qmap_median",
           "summarize_biomarkers", "surface_area_mm2", "thickness", "validate_selection",
           "vessel", "volume_ml"]
