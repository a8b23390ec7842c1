"""Plotting helpers: colour composites with a percentile stretch, label masks with a legend."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

#: Colours of the field-mask classes (non-field, interior, edge).
FIELD_COLOURS = ("#d9d9d9", "#4daf4a", "#e41a1c")
FIELD_NAMES = ("non-field", "field interior", "field edge")


def stretch(
    image: np.ndarray, low: float = 2.0, high: float = 98.0, clear: np.ndarray | None = None
) -> np.ndarray:
    """Scale each band of ``image`` (``[C, H, W]``) to 0..1 between its ``low`` and ``high`` percentiles.

    Reflectances fill only a small part of their range, so a plain min-max scaling looks dark;
    clipping the extreme 2 % on each side is the usual display stretch. NaNs are ignored and shown black.
    ``clear`` (``[H, W]`` booleans) takes the percentiles from those pixels only, so that bright clouds do not set
    the stretch of the ground; the other pixels are scaled the same way (clouds then saturate to white).
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"expected an image [bands, H, W], got shape {image.shape}")
    basis = image
    if clear is not None:
        clear = np.asarray(clear, dtype=bool)
        if clear.shape != image.shape[1:]:
            raise ValueError(f"clear has shape {clear.shape}, the image {image.shape[1:]}")
        if not clear.any():
            raise ValueError("clear selects no pixel: nothing to take the stretch from")
        basis = np.where(clear[None], image, np.nan)
    lo = np.nanpercentile(basis, low, axis=(1, 2), keepdims=True)
    hi = np.nanpercentile(basis, high, axis=(1, 2), keepdims=True)
    scaled = (image - lo) / np.maximum(hi - lo, 1e-12)
    return np.nan_to_num(np.clip(scaled, 0.0, 1.0))


def composite(
    image: np.ndarray, bands: Sequence[int], low: float = 2.0, high: float = 98.0, clear: np.ndarray | None = None
) -> np.ndarray:
    """An ``[H, W, 3]`` colour composite of three bands (0-based indices into ``image``), stretched.

    True colour puts red, green, blue into R, G, B; the classic false colour puts near-infrared,
    red, green there, so healthy vegetation shows bright red. ``clear``: see :func:`stretch`.
    """
    if len(bands) != 3:
        raise ValueError(f"a composite needs three bands, got {list(bands)}")
    if max(bands) >= image.shape[0] or min(bands) < 0:
        raise ValueError(f"bands {list(bands)} do not exist in an image with {image.shape[0]} bands")
    return np.moveaxis(stretch(image[list(bands)], low, high, clear), 0, -1)


def show_mask(
    mask: np.ndarray,
    ax: Axes | None = None,
    names: Sequence[str] = FIELD_NAMES,
    colours: Sequence[str] = FIELD_COLOURS,
    legend: bool = True,
) -> Axes:
    """Draw a class mask (``[H, W]`` of 0..K-1) with one colour per class and a legend."""
    ax = ax or plt.gca()
    ax.imshow(mask, cmap=ListedColormap(colours), vmin=0, vmax=len(colours) - 1, interpolation="nearest")
    if legend:
        handles = [Patch(color=c, label=n) for c, n in zip(colours, names, strict=True)]
        ax.legend(handles=handles, loc="lower right", fontsize="small", framealpha=0.8)
    ax.set_axis_off()
    return ax
