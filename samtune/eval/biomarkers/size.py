"""Size biomarkers of a 3D mask with real voxel spacing: volume, lesion count and volumes, surface
area (marching cubes, Taubin-smoothed; the surface is closed at the array border)."""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix, diags
from skimage.measure import marching_cubes, mesh_surface_area

from samtune.eval.biomarkers.shape import FULL, check_inputs


def volume_ml(mask: np.ndarray, spacing: tuple[float, float, float], *,
              qmap: np.ndarray | None = None) -> dict[str, float]:
    """Voxel count × voxel volume (mm³) / 1000, in mL. Empty mask: 0.0."""
    m, sp = check_inputs(mask, spacing)
    return {"volume_ml": float(m.sum() * np.prod(sp) / 1000.0)}


def lesion_volumes_ml(mask: np.ndarray, spacing: tuple[float, float, float],
                      min_size_mm3: float = 10.0) -> list[float]:
    """Volumes (mL) of the 26-connected components of at least `min_size_mm3` mm³, largest
    first. Empty mask, or no component that large: []."""
    m, sp = check_inputs(mask, spacing)
    labels, n = ndi.label(m, structure=FULL)
    sizes_mm3 = np.bincount(labels.ravel(), minlength=n + 1)[1:] * float(np.prod(sp))
    return sorted((float(v) / 1000.0 for v in sizes_mm3 if v >= min_size_mm3), reverse=True)


def lesion_count(mask: np.ndarray, spacing: tuple[float, float, float], *,
                 qmap: np.ndarray | None = None, min_size_mm3: float = 10.0) -> dict[str, float]:
    """Number of 26-connected components of at least `min_size_mm3` mm³ (`count`), their total
    and mean volume in mL. No lesion: count 0, total 0.0, mean NaN."""
    volumes = lesion_volumes_ml(mask, spacing, min_size_mm3)
    return {"count": float(len(volumes)), "total_volume_ml": float(sum(volumes)),
            "mean_volume_ml": float(np.mean(volumes)) if volumes else math.nan}


def surface_area_mm2(mask: np.ndarray, spacing: tuple[float, float, float], *,
                     qmap: np.ndarray | None = None,
                     smoothing_iterations: int = 20) -> dict[str, float]:
    """Area (mm²) of the marching-cubes surface (level 0.5, `spacing`) of the zero-padded mask,
    so a cut by the array border closes the surface, after `smoothing_iterations` Taubin passes
    (λ=0.5, μ=-0.53) that keep each vertex within half a voxel of where marching cubes put it.
    Raw binary marching cubes (0 iterations) over-estimates a smooth surface by 9-15 %;
    smoothed, a 10 mm sphere comes within about 2 % and a box about 2 % under (rounded edges),
    while objects a few voxels across lose more (a 3³-voxel cube about 25 %). Empty mask: 0.0."""
    m, sp = check_inputs(mask, spacing)
    if not m.any():
        return {"surface_area_mm2": 0.0}
    box = ndi.find_objects(m.astype(np.uint8))[0]
    verts, faces, _, _ = marching_cubes(np.pad(m[box], 1).astype(np.float32), 0.5,
                                        spacing=tuple(sp))
    i, j = faces.ravel(), np.roll(faces, 1, axis=1).ravel()
    adj = coo_matrix((np.ones(len(i)), (i, j)), shape=(len(verts),) * 2).tocsr()
    adj = (adj + adj.T).tocsr()
    adj.data[:] = 1.0
    mean_of_neighbours = diags(1.0 / np.maximum(np.asarray(adj.sum(axis=1)).ravel(), 1.0)) @ adj
    lo, hi, v = verts - sp / 2, verts + sp / 2, verts
    for _ in range(int(smoothing_iterations)):
        for step in (0.5, -0.53):
            v = np.clip(v + step * (mean_of_neighbours @ v - v), lo, hi)
    return {"surface_area_mm2": float(mesh_surface_area(v, faces))}
