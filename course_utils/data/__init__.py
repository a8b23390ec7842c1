"""The course's generated data families, each written in the formats real data comes in.

* ``fields``: field scenes (GeoTIFF chips and scenes, field polygons in a GeoPackage, label rasters);
* ``landscape``: co-registered Sentinel-2, Sentinel-1, DEM and WorldCover land-cover patches;
* ``parcels``: per-parcel Sentinel-2 time series (GeoParquet-style tables and parcel polygons).

Each family module has ``ensure_<family>(mode, seed)`` (generate on first use, return the folder)
and a torch ``Dataset`` that reads the files. ``python -m course_utils.data`` generates them all.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from course_utils.config import course_seed
from course_utils.data.fields import ensure_fields
from course_utils.data.landscape import ensure_landscape
from course_utils.data.parcels import ensure_parcels

FAMILIES: dict[str, Callable[..., Path]] = {
    "fields": ensure_fields,
    "landscape": ensure_landscape,
    "parcels": ensure_parcels,
}


def ensure_all(mode: str | None = None, seed: int | None = None) -> dict[str, Path]:
    """Generate every family that is not in the cache yet; return each family's folder.

    ``mode`` and ``seed`` default to ``COURSE_MODE`` and ``COURSE_SEED``.
    """
    seed = course_seed() if seed is None else seed
    return {name: ensure(mode=mode, seed=seed) for name, ensure in FAMILIES.items()}
