"""Geometry: canonical reorientation, radiological 2D views, resize/pad and the exact inverse."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from samtune.data.slicing import (CANONICAL_AXIS, from_canonical, mask_to_original,
                                  nearest_indices, resize_geometry, resize_images, resize_labels,
                                  slice_transform, to_canonical, view_stack)


def rotation_z(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])


AFFINES = {
    "ras_iso": np.eye(4),
    "negative_lps_like": np.diag([-0.7, -0.7, 2.5, 1.0]),
    "oblique_aniso": np.block([[rotation_z(25) @ np.diag([0.6, -0.9, 1.7]), np.ones((3, 1))],
                               [np.zeros((1, 3)), np.ones((1, 1))]]),
    "permuted": np.array([[0, 0, -1.2, 5], [0.8, 0, 0, 0], [0, -0.5, 0, 1], [0, 0, 0, 1.0]]),
}


def blob_labels(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Random multi-class label map with spheres and a tube along k."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape)
    label = np.zeros(shape, dtype=np.uint8)
    for value in (1, 2, 1, 3):
        centre = rng.uniform(3, np.array(shape) - 3)
        r = rng.uniform(2.5, 5)
        label[((grid - centre[:, None, None, None]) ** 2).sum(0) < r * r] = value
    label[4:6, 3:5, :] = 2
    return label


def forward(label: np.ndarray, affine: np.ndarray, axis: str, img_size: int):
    """The forward geometry of convert for labels: all slices on the output grid + records."""
    canon, _, ornt = to_canonical(label, affine)
    views = view_stack(canon, CANONICAL_AXIS[axis])
    n, h, w = views.shape
    geom = resize_geometry(h, w, img_size)
    nh, nw = geom["resized_shape"]
    grid = np.zeros((n, img_size, img_size), dtype=label.dtype)
    grid[:, :nh, :nw] = resize_labels(views, (nh, nw))
    spacing = tuple(np.linalg.norm(affine[:3, :3], axis=0))
    records = [slice_transform(ornt=ornt, axis=axis, k_canonical=k, original_shape=label.shape,
                               spacing=spacing, affine=affine, slice_shape=(h, w),
                               img_size=img_size, geometry=geom) for k in range(n)]
    return grid, records


def back_to_3d(grid: np.ndarray, records: list[dict], shape: tuple[int, int, int]) -> np.ndarray:
    out = np.full(shape, 255, dtype=np.uint8)
    for plane, record in zip(grid, records):
        arr, index = mask_to_original(plane, record)
        out[index] = arr
    return out


def test_picture_comes_out_as_it_was():
    pic = np.random.default_rng(1).integers(0, 255, (7, 11), dtype=np.uint8)  # rows × cols
    vol = pic.T[:, :, None]  # i = column, j = row
    canon, _, _ = to_canonical(vol, np.diag([-1.0, -1.0, 1.0, 1.0]))
    np.testing.assert_array_equal(view_stack(canon, 2)[0], pic)


@pytest.mark.parametrize("axis,marker,pixel", [
    ("axial", (9, 0, 2), (7, 0)),      # most right i → column 0; j = 0 posterior → last row
    ("axial", (0, 7, 2), (0, 9)),      # most anterior j → row 0; left i → last column
    ("coronal", (0, 3, 5), (0, 9)),    # most superior k → row 0
    ("sagittal", (4, 7, 0), (5, 0)),   # most anterior j → column 0, inferior → last row
])
def test_radiological_view(axis, marker, pixel):
    vol = np.zeros((10, 8, 6), dtype=np.uint8)
    vol[marker] = 1
    views = view_stack(vol, CANONICAL_AXIS[axis])
    n = marker[CANONICAL_AXIS[axis]]
    assert views[n][pixel] == 1 and views.sum() == 1


def test_slice_index_in_flipped_axis():
    affine = np.diag([1.0, 1.0, -2.0, 1.0])  # k runs inferior
    _, records = forward(np.zeros((4, 5, 6), np.uint8), affine, "axial", 16)
    assert [r["slice_index"] for r in records] == [5, 4, 3, 2, 1, 0]
    assert records[0]["slice_index_canonical"] == 0 and records[0]["original_axis"] == 2


def test_resize_geometry_values():
    g = resize_geometry(24, 32, 64)
    assert g == {"scale": 2.0, "resized_shape": [48, 64], "pad": [0, 16, 0, 0]}
    g = resize_geometry(30, 20, 16)
    assert g["resized_shape"] == [16, 11] and g["pad"] == [0, 0, 0, 5]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(0, 40))
def test_nearest_up_then_down_is_identity(n_in, extra):
    n_out = n_in + extra
    up = nearest_indices(n_in, n_out)
    down = nearest_indices(n_out, n_in)
    np.testing.assert_array_equal(up[down], np.arange(n_in))


@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
@pytest.mark.parametrize("affine_name", sorted(AFFINES))
def test_round_trip_exact_without_downscaling(axis, affine_name):
    label = blob_labels((20, 16, 13))
    grid, records = forward(label, AFFINES[affine_name], axis, img_size=23)  # non-integer upscale
    np.testing.assert_array_equal(back_to_3d(grid, records, label.shape), label)


def test_round_trip_index_expression():
    grid, records = forward(blob_labels((12, 10, 8)), np.eye(4), "coronal", 16)
    arr, index = mask_to_original(grid[3], records[3])
    assert index == (slice(None), 3, slice(None)) and arr.shape == (12, 8)


@pytest.mark.parametrize("axis", ["axial", "sagittal"])
def test_round_trip_with_downscaling_keeps_blobs(axis):
    grid3 = np.indices((64, 56, 40))
    label = np.zeros((64, 56, 40), dtype=np.uint8)
    for centre, r in (((20, 20, 15), 9), ((44, 34, 24), 12)):
        label[((grid3 - np.array(centre)[:, None, None, None]) ** 2).sum(0) < r * r] = 1
    grid, records = forward(label, AFFINES["oblique_aniso"], axis, img_size=27)  # ÷ 2.4
    back = back_to_3d(grid, records, label.shape)
    dice = 2 * np.sum((back == 1) & (label == 1)) / (np.sum(back == 1) + np.sum(label == 1))
    assert dice > 0.9


def test_from_canonical_inverts_to_canonical():
    vol = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    for affine in AFFINES.values():
        canon, _, ornt = to_canonical(vol, affine)
        np.testing.assert_array_equal(from_canonical(canon, ornt), vol)


def test_resize_images_pads_and_keeps_constant():
    stack = np.full((2, 6, 9, 1), 200, dtype=np.uint8)
    out = resize_images(stack, resize_geometry(6, 9, 16))
    assert out.shape == (2, 16, 16, 1)
    assert np.all(out[:, :11, :16] == 200) and np.all(out[:, 11:] == 0)
    same = resize_images(stack, resize_geometry(6, 9, 9))
    assert np.all(same[:, :6] == 200) and np.all(same[:, 6:] == 0)


def test_mask_of_wrong_size_is_refused():
    _, records = forward(np.zeros((4, 5, 6), np.uint8), np.eye(4), "axial", 16)
    with pytest.raises(ValueError, match="does not hold"):
        mask_to_original(np.zeros((8, 8)), records[0])
