"""Intensity → uint8: CT windows on known values, MR percentiles, RGB pass-through."""
from __future__ import annotations

import numpy as np
import pytest

from samtune.config import ConvertConfig
from samtune.data.intensity import (CT_WINDOWS, apply_intensity, intensity_params, resolve_window,
                                    to_uint8)


def test_soft_tissue_window_known_values():
    cfg = ConvertConfig(window="soft_tissue")  # L 40, W 400 → −160 … 240 HU
    hu = np.array([[-1000, -160, 40, 240, 3000]], dtype=np.int16)
    np.testing.assert_array_equal(to_uint8(hu, "CT", cfg)[0], [0, 0, 128, 255, 255])


def test_lookup_table_matches_float_path():
    rng = np.random.default_rng(0)
    hu = rng.integers(-2000, 3000, (1, 40, 30), dtype=np.int16)
    cfg = ConvertConfig(window="lung")
    as_float = to_uint8(hu.astype(np.float32), "CT", cfg)
    np.testing.assert_array_equal(to_uint8(hu, "CT", cfg), as_float)


def test_auto_ct_defaults_to_cta_and_explicit_level_width_wins():
    p = intensity_params(np.zeros((1, 2, 2)), "CT", ConvertConfig())
    assert (p.mode, p.low, p.high) == ("window", (-100.0,), (700.0,))
    cfg = ConvertConfig(window="bone", window_level=100, window_width=50)
    assert resolve_window(cfg) == (100.0, 50.0)
    hu = np.array([[75, 100, 125]], dtype=np.int16)
    np.testing.assert_array_equal(to_uint8(hu, "CT", cfg)[0], [0, 128, 255])


def test_presets_present():
    for name, value in {"cta": (300, 800), "soft_tissue": (40, 400), "lung": (-600, 1500),
                        "bone": (400, 1800), "brain": (40, 80), "mediastinum": (50, 350)}.items():
        assert CT_WINDOWS[name] == value


def test_unknown_preset_lists_presets():
    with pytest.raises(ValueError, match="soft_tissue") as err:
        resolve_window(ConvertConfig(window="nope"))
    assert "nope" in str(err.value)
    with pytest.raises(ValueError, match="both"):
        resolve_window(ConvertConfig(window_level=40))


def test_mr_percentiles_per_channel():
    ch0 = np.arange(1001, dtype=np.float32).reshape(1, 11, 91)  # 0 … 1000
    ch1 = ch0 * 10 + 5000
    image = np.concatenate([ch0, ch1])
    cfg = ConvertConfig(percentiles=(10.0, 90.0))
    p = intensity_params(image, "MR", cfg)
    assert p.mode == "percentile"
    np.testing.assert_allclose(p.low, [100.0, 6000.0])
    np.testing.assert_allclose(p.high, [900.0, 14000.0])
    out = to_uint8(image, "MR", cfg)
    np.testing.assert_array_equal(out[0], out[1])  # same relative position in each channel
    assert out[0].ravel()[100] == 0 and out[0].ravel()[500] == 128 and out[0].ravel()[900] == 255


def test_percentile_forced_on_ct_and_constant_volume():
    cfg = ConvertConfig(intensity="percentile")
    out = to_uint8(np.full((1, 3, 3), 7, dtype=np.int16), "CT", cfg)
    assert out.dtype == np.uint8 and np.all(out == 255)


def test_rgb_passes_through_unchanged():
    rgb = np.random.default_rng(2).integers(0, 256, (3, 5, 4, 1), dtype=np.uint8)
    out = to_uint8(rgb, "RGB", ConvertConfig(window="bone"))
    assert out is rgb


def test_channel_last_axis():
    hu = np.array([[[-1000, 240], [40, 3000]]], dtype=np.int16)[..., None]  # 1×2×2×1
    p = intensity_params(np.moveaxis(hu, -1, 0), "CT", ConvertConfig(window="soft_tissue"))
    out = apply_intensity(hu, p, channel_axis=-1)
    np.testing.assert_array_equal(out[..., 0], [[[0, 255], [128, 255]]])
