"""course_utils.plot: the display stretch and composites."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from course_utils.plot import composite, show_mask, stretch


def test_stretch_maps_percentiles_to_zero_and_one() -> None:
    band = np.arange(101, dtype=np.float32).reshape(1, 1, 101)  # values 0..100: percentile p is value p
    out = stretch(band, low=10, high=90)
    assert out[0, 0, 10] == pytest.approx(0.0) and out[0, 0, 90] == pytest.approx(1.0)
    assert out[0, 0, 50] == pytest.approx(0.5)
    assert out.min() == 0.0 and out.max() == 1.0  # clipped outside the percentiles


def test_stretch_is_per_band_and_ignores_nan() -> None:
    image = np.stack([np.linspace(0, 1, 100), np.linspace(0, 1000, 100)]).reshape(2, 10, 10).astype(np.float32)
    image[0, 0, 0] = np.nan
    out = stretch(image)
    assert np.allclose(out[0].ravel()[1:], out[1].ravel()[1:], atol=0.02)  # same shape of values per band
    assert out[0, 0, 0] == 0.0


def test_composite_orders_bands_and_checks_them() -> None:
    image = np.zeros((4, 5, 5), dtype=np.float32)
    image[3] = np.linspace(0, 1, 25).reshape(5, 5)  # only the NIR band varies
    rgb = composite(image, (3, 2, 1))
    assert rgb.shape == (5, 5, 3) and rgb[..., 0].max() == 1.0 and rgb[..., 1].max() == 0.0
    with pytest.raises(ValueError, match="do not exist"):
        composite(image, (4, 2, 1))


def test_show_mask_draws_the_classes() -> None:
    ax = show_mask(np.array([[0, 1], [2, 1]]))
    assert ax.images[0].get_array().max() == 2 and ax.get_legend() is not None


def test_stretch_from_clear_pixels_ignores_bright_clouds():
    import numpy as np

    from course_utils.plot import composite, stretch

    rng = np.random.default_rng(0)
    image = rng.uniform(0.02, 0.1, (3, 20, 20)).astype(np.float32)
    cloudy = np.zeros((20, 20), bool)
    cloudy[:8] = True
    image[:, cloudy] = 0.45
    whole, clear = stretch(image), stretch(image, clear=~cloudy)
    assert clear[:, ~cloudy].mean() > 2 * whole[:, ~cloudy].mean()  # the ground is no longer dark
    assert np.allclose(clear[:, cloudy], 1.0)  # clouds saturate
    assert composite(image, (0, 1, 2), clear=~cloudy).shape == (20, 20, 3)
