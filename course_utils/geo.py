"""Geodata helpers a practitioner can copy into a project: read and write GeoTIFFs, rasterise
field polygons into extent/boundary masks.

They work on real data of any size, CRS, dtype and band count, and fail with an error that says
what to do. Band numbers follow rasterio: the first band is 1.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
from rasterio import features
from scipy import ndimage

#: Label values of the field masks (the convention of the Africa field-boundary labels).
NON_FIELD, FIELD_INTERIOR, FIELD_EDGE = 0, 1, 2


def read_raster(path: str | os.PathLike, bands: Sequence[int] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a raster into an array shaped ``[bands, height, width]`` and its rasterio profile.

    Args:
        path: a GeoTIFF (or any format GDAL reads).
        bands: 1-based band numbers to read, in that order; ``None`` reads all bands.

    Returns:
        ``(array, profile)``; the array keeps the file's dtype, ``profile["count"]`` matches it.
        Nodata pixels are left as stored; ``profile["nodata"]`` says which value marks them.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no raster at {path}; check the path (relative paths start at {Path.cwd()}).")
    with rasterio.open(path) as src:
        indexes = list(bands) if bands is not None else list(range(1, src.count + 1))
        bad = [b for b in indexes if not 1 <= int(b) <= src.count]
        if bad:
            raise ValueError(f"{path.name} has {src.count} bands (numbered 1..{src.count}); bands {bad} do not exist.")
        array = src.read(indexes)
        profile = dict(src.profile)
    profile["count"] = len(indexes)
    return array, profile


def write_raster(path: str | os.PathLike, array: np.ndarray, profile: Mapping[str, Any]) -> Path:
    """Write ``array`` (``[bands, H, W]`` or ``[H, W]``) as a GeoTIFF with ``profile``'s CRS and transform.

    The count, dtype, height and width are taken from the array. The file is written to a temporary
    name and renamed when complete, so an interrupted write leaves nothing behind.
    """
    path = Path(path)
    data = array[None] if array.ndim == 2 else array
    if data.ndim != 3:
        raise ValueError(f"expected an array [bands, H, W] or [H, W], got shape {array.shape}")
    meta = {k: v for k, v in profile.items() if k not in ("blockxsize", "blockysize", "tiled")}
    meta.update(driver="GTiff", count=data.shape[0], height=data.shape[1], width=data.shape[2], dtype=data.dtype.name)
    meta.setdefault("compress", "deflate")
    if meta.get("nodata") is not None and not np.can_cast(np.min_scalar_type(meta["nodata"]), data.dtype):
        meta["nodata"] = None  # e.g. a float nodata on an integer label raster
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tif")
    os.close(handle)
    try:
        with rasterio.open(tmp, "w", **meta) as dst:
            dst.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_fields(source: str | os.PathLike | gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Field polygons from a vector file (GeoPackage, GeoParquet, Shapefile, zipped too) or a GeoDataFrame.

    Empty and non-polygonal geometries are dropped, with a warning that counts them.
    """
    if isinstance(source, gpd.GeoDataFrame):
        fields = source
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"no vector file at {path}")
        fields = gpd.read_parquet(path) if path.suffix == ".parquet" else gpd.read_file(path)
    if fields.crs is None:
        raise ValueError("the field polygons have no CRS; set it first, e.g. fields.set_crs('EPSG:4326').")
    keep = fields.geometry.notna() & ~fields.geometry.is_empty
    keep &= fields.geometry.geom_type.isin(["Polygon", "MultiPolygon"])
    if (~keep).any():
        warnings.warn(f"dropped {int((~keep).sum())} empty or non-polygonal geometries", stacklevel=2)
    return fields[keep]


def rasterize_fields(
    fields: str | os.PathLike | gpd.GeoDataFrame, profile: Mapping[str, Any], boundary_px: int = 2
) -> np.ndarray:
    """Burn field polygons into a label mask on a raster's grid.

    Each pixel becomes 0 (non-field), 1 (field interior) or 2 (field edge). A field pixel is an edge
    pixel when a pixel of another field, or of no field, lies within ``boundary_px`` pixels of it
    (a square neighbourhood), so neighbouring fields stay separated by their edges. Pixels are
    burned where their centre falls inside a polygon; holes stay non-field.

    Args:
        fields: polygons (any CRS; reprojected to the raster's CRS with a message) or a vector file.
        profile: the raster's profile, with ``crs``, ``transform``, ``height`` and ``width``.
        boundary_px: edge width in pixels; 0 gives an extent mask of 0 and 1 only.

    Returns:
        ``uint8`` array ``[height, width]``.
    """
    if boundary_px < 0:
        raise ValueError(f"boundary_px must be >= 0, got {boundary_px}")
    fields = read_fields(fields)
    if len(fields) == 0:
        raise ValueError("the polygon layer is empty: there is nothing to rasterise (check the file or the filter).")
    if profile.get("crs") is None:
        raise ValueError("the raster profile has no CRS; the polygons cannot be placed on it.")
    if fields.crs != profile["crs"]:
        print(f"rasterize_fields: reprojecting {len(fields)} polygons from {fields.crs.to_string()} to {profile['crs']}")
        fields = fields.to_crs(profile["crs"])
    shape = (int(profile["height"]), int(profile["width"]))
    field_ids = features.rasterize(
        ((geom, i) for i, geom in enumerate(fields.geometry, start=1)),
        out_shape=shape,
        transform=profile["transform"],
        fill=0,
        dtype="int32",
    )
    mask = (field_ids > 0).astype(np.uint8)
    if boundary_px > 0:
        size = 2 * boundary_px + 1
        lowest = ndimage.minimum_filter(field_ids, size=size, mode="nearest")
        highest = ndimage.maximum_filter(field_ids, size=size, mode="nearest")
        edge = (field_ids > 0) & ((lowest != field_ids) | (highest != field_ids))
        mask[edge] = FIELD_EDGE
    return mask
