"""Geodata helpers a practitioner can copy into a project: read and write GeoTIFFs, rasterise field
polygons into extent/boundary masks, run a segmentation model over a whole scene, turn masks back into polygons.

A raster is a grid of pixels tied to the Earth by a CRS and an affine transform (pixel -> map
coordinates); a prediction is only useful when it keeps both. Scenes are far larger than what a
model sees at once, so inference reads overlapping tiles, blends their class probabilities with a
weight that fades towards each tile's border (a model is least sure near the border, where it
sees the least context) and writes the finished rows while the next ones are computed.

The helpers work on real data of any size, CRS, dtype and band count, and fail with an error that
says what to do. Band numbers follow rasterio: the first band is 1. Products that ship each band as
its own file at its own resolution (Sentinel-2's 10, 20 and 60 m bands) are stacked onto one grid by
:func:`stack_bands`.
"""

from __future__ import annotations

import math
import os
import re
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from itertools import groupby
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import shapely
import torch
from pyogrio.errors import DataSourceError
from rasterio import features
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import RasterioIOError, WindowError
from rasterio.warp import reproject
from rasterio.windows import Window, from_bounds
from scipy import ndimage
from shapely.geometry import MultiPolygon, box, shape

from course_utils.config import get_device
from course_utils.files import atomic_path

#: Label values of the field masks (the convention of the Africa field-boundary labels).
NON_FIELD, FIELD_INTERIOR, FIELD_EDGE = 0, 1, 2

#: Value written where the input was nodata in a label prediction.
LABEL_NODATA = 255

PREDICTION_OUTPUTS = ("labels", "probabilities")

#: :func:`read_raster` refuses to read more than this fraction of the memory available.
MEMORY_FRACTION = 0.5

#: Vector files that :func:`read_fields` finds inside a zip archive.
VECTOR_SUFFIXES = (".gpkg", ".shp", ".geojson", ".fgb", ".kml", ".gml")

#: Raster files that :func:`stack_bands` looks at.
BAND_FILE_SUFFIXES = (".tif", ".tiff", ".jp2")


def _open(path: Path) -> rasterio.DatasetReader:
    """Open a raster for reading, with errors that name the file and say what to do."""
    if not path.is_file():
        raise FileNotFoundError(f"no raster at {path}; check the path (relative paths start at {Path.cwd()}).")
    try:
        return rasterio.open(path)
    except RasterioIOError as err:
        raise _unreadable(path, err) from err


def _unreadable(path: str | os.PathLike, err: Exception) -> RasterioIOError:
    """The error for a raster that GDAL cannot decode."""
    return RasterioIOError(
        f"cannot read {path}: the file is damaged or incomplete (an interrupted download, copy or write), or not "
        f"a raster GDAL reads; download or regenerate it. (GDAL: {err})"
    )


def _read(
    src: rasterio.DatasetReader, indexes: list[int], window: Window | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Bands ``indexes`` of ``src`` in ``window`` (default: all of it), and the pixels ``[h, w]`` that the file's
    mask band (a GDAL internal or ``.msk`` mask, or an alpha band) marks invalid; ``None`` when it has no mask band."""
    has_mask_band = any({MaskFlags.per_dataset, MaskFlags.alpha} & set(src.mask_flag_enums[i - 1]) for i in indexes)
    try:
        data = src.read(indexes, window=window)
        masked = (src.read_masks(indexes, window=window) == 0).any(axis=0) if has_mask_band else None
    except RasterioIOError as err:
        raise _unreadable(src.name, err) from err
    return data, masked


def _available_memory() -> int | None:
    """Bytes of memory available now, or ``None`` when psutil (which Jupyter installs) is missing."""
    try:
        import psutil
    except ImportError:
        return None
    return psutil.virtual_memory().available


def _check_fits_in_memory(n_bytes: int, what: str) -> None:
    """Refuse to allocate ``n_bytes`` for ``what`` when that is more than :data:`MEMORY_FRACTION` of the memory free."""
    available = _available_memory()
    if available is not None and n_bytes > MEMORY_FRACTION * available:
        raise MemoryError(
            f"{what} takes {n_bytes / 2**30:.1f} GiB, more than {MEMORY_FRACTION:.0%} of the "
            f"{available / 2**30:.1f} GiB of memory available: read fewer bands (bands=[...]), read it in windows "
            "(with rasterio.open(path) as src: src.read(window=w) for w in geo.iter_windows(...)), or run a model "
            "over it with geo.predict_raster, which reads it tile by tile."
        )


def _band_indexes(src: rasterio.DatasetReader, bands: Sequence[int] | None) -> list[int]:
    """Validated 1-based band numbers of ``src`` (all bands when ``bands`` is ``None``)."""
    if bands is None:
        return list(range(1, src.count + 1))
    indexes = [int(b) for b in bands]
    bad = [b for b in indexes if not 1 <= b <= src.count]
    if not indexes or bad:
        raise ValueError(
            f"{Path(src.name).name} has {src.count} bands (numbered 1..{src.count}); "
            f"bands {bad or '[]'} do not exist: pass bands= with numbers in that range."
        )
    return indexes


def read_raster(path: str | os.PathLike, bands: Sequence[int] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a raster into an array shaped ``[bands, height, width]`` and its rasterio profile.

    Args:
        path: a GeoTIFF (or any format GDAL reads).
        bands: 1-based band numbers to read, in that order; ``None`` reads all bands.

    Returns:
        ``(array, profile)``; the array keeps the file's dtype, ``profile["count"]`` matches it.
        Nodata pixels are left as stored; ``profile["nodata"]`` says which value marks them
        (:func:`nodata_mask` finds them). Pixels that the file's mask band marks invalid are set to the
        nodata value; a float raster without one gets NaN (and ``profile["nodata"]`` NaN); an integer
        raster without one keeps them as stored, with a warning.

    Raises:
        FileNotFoundError: if there is no file at ``path``.
        ValueError: if a band number does not exist (the message gives the file's band count).
        MemoryError: if the array would take more than :data:`MEMORY_FRACTION` of the available memory
            (the message says how to read less).
        rasterio.errors.RasterioIOError: for a damaged or incomplete file (the message names it).
    """
    path = Path(path)
    with _open(path) as src:
        indexes = _band_indexes(src, bands)
        dtype = np.dtype(src.dtypes[indexes[0] - 1])
        _check_fits_in_memory(len(indexes) * src.height * src.width * dtype.itemsize, f"reading {path.name}")
        array, masked = _read(src, indexes)
        profile = dict(src.profile)
    profile["count"] = len(indexes)
    if masked is not None and masked.any():
        if profile["nodata"] is None and np.issubdtype(array.dtype, np.floating):
            profile["nodata"] = np.nan
        if profile["nodata"] is None:
            warnings.warn(
                f"{path.name}'s mask band marks {int(masked.sum())} pixels invalid, but the file has no nodata value "
                f"to give them in {array.dtype}: they are left as stored; get them with "
                "rasterio.open(path).dataset_mask() == 0",
                stacklevel=2,
            )
        else:
            array[:, masked] = profile["nodata"]
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
    meta["nodata"] = _nodata_for(meta.get("nodata"), data.dtype)
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **meta) as dst:
        dst.write(data)
    return path


def _nodata_for(nodata: float | None, dtype: np.dtype) -> float | int | None:
    """``nodata`` as a value of ``dtype``: rasterio reports it as a float (0.0 for a uint16 raster), so an integer
    raster keeps a whole number that fits its range; ``None`` when it cannot hold it (NaN or -9999 on uint8 labels)."""
    if nodata is None or not np.issubdtype(dtype, np.integer):
        return nodata
    limits = np.iinfo(dtype)
    return int(nodata) if float(nodata).is_integer() and limits.min <= nodata <= limits.max else None


def nodata_mask(array: np.ndarray, profile: Mapping[str, Any]) -> np.ndarray:
    """Pixels of ``array`` (``[bands, H, W]``) where any band equals ``profile["nodata"]``, is NaN or is infinite.

    Returns:
        ``bool`` array ``[H, W]``.
    """
    invalid = np.zeros(array.shape[-2:], dtype=bool)
    nodata = profile.get("nodata")
    if nodata is not None and not np.isnan(nodata):
        invalid |= (array == nodata).any(axis=0)
    if np.issubdtype(array.dtype, np.floating):
        invalid |= (~np.isfinite(array)).any(axis=0)
    return invalid


def stack_bands(
    folder: str | os.PathLike,
    bands: Sequence[str],
    *,
    reference: str | None = None,
    resampling: Resampling = Resampling.nearest,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Stack a product's single-band files (Sentinel-2's 10, 20 and 60 m bands) onto one grid, in ``bands`` order.

    Each name picks the raster under ``folder`` (searched recursively: .tif, .tiff, .jp2) that has it as a
    part of its name, case-insensitively: ``"B8A"`` picks ``T33UVP_20230601T100559_B8A_20m.jp2`` and ``"B08"``
    does not. When several files hold a band (Sentinel-2 L2A stores B02 at 10, 20 and 60 m), the finest is
    taken. Every band is resampled onto the grid of ``reference``. The order is the caller's, never a sorted
    listing (which would put B8A after B12).

    Args:
        folder: the product's folder, e.g. a ``.SAFE`` folder.
        bands: band names, e.g. ``["B02", "B03", "B04", "B08", "B8A", "B11"]``.
        reference: the band whose grid (CRS, transform, size) the stack gets; default: the finest one (the first
            of those as fine).
        resampling: how the other bands are resampled; ``nearest`` (the default) keeps the measured values,
            ``bilinear`` is smoother, ``average`` suits a coarser reference.

    Returns:
        ``(array [len(bands), H, W], profile)`` on the reference grid, with the reference band's nodata.

    Raises:
        FileNotFoundError: for a band that no file's name holds.
        ValueError: for no or repeated band names, a ``reference`` not among them, a band in several files of the
            same resolution (two products in ``folder``) or a file with more than one band.
        MemoryError: if the stack would take more than :data:`MEMORY_FRACTION` of the available memory.
    """
    folder = Path(folder)
    if not bands or len(set(bands)) != len(bands):
        raise ValueError(f"give each band name once, e.g. bands=['B02', 'B03', 'B04', 'B08']; got {list(bands)}")
    if reference is not None and reference not in bands:
        raise ValueError(f"reference {reference!r} is not one of the bands {list(bands)}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in BAND_FILE_SUFFIXES)
    layers = {name: read_raster(_band_file(folder, files, name)) for name in bands}
    reference = reference or min(bands, key=lambda name: abs(layers[name][1]["transform"].a))
    grid = layers[reference][1]
    dtype = np.result_type(*(array.dtype for array, _ in layers.values()))
    _check_fits_in_memory(len(bands) * grid["height"] * grid["width"] * dtype.itemsize, f"stacking {len(bands)} bands")
    stack = np.zeros((len(bands), grid["height"], grid["width"]), dtype)
    for band, (array, profile) in zip(stack, layers.values(), strict=True):
        reproject(
            array[0],
            band,
            src_transform=profile["transform"],
            src_crs=profile["crs"],
            src_nodata=profile["nodata"],
            dst_transform=grid["transform"],
            dst_crs=grid["crs"],
            dst_nodata=grid["nodata"],
            resampling=resampling,
        )
    return stack, {**grid, "count": len(bands), "dtype": dtype.name}


def _band_file(folder: Path, files: list[Path], name: str) -> Path:
    """The file among ``files`` whose name has the part ``name``; the one with the finest pixels when several have."""
    matches = [p for p in files if name.casefold() in re.split(r"[^0-9a-z]+", p.stem.casefold())]
    if not matches:
        raise FileNotFoundError(
            f"no raster under {folder} has {name!r} in its name (as in T33UVP_20230601T100559_{name}_10m.jp2; "
            f"{len(files)} raster files there): check the band name and the folder."
        )
    pixel = {}
    for path in matches:
        with _open(path) as src:
            if src.count != 1:
                raise ValueError(f"{path} has {src.count} bands; stack_bands stacks single-band files")
            pixel[path] = abs(src.res[0])
    finest = [p for p in matches if pixel[p] == min(pixel.values())]
    if len(finest) > 1:
        raise ValueError(
            f"band {name} is in {len(finest)} files of the same resolution under {folder}: "
            f"{', '.join(str(p.relative_to(folder)) for p in finest)}; pass the folder of one product."
        )
    return finest[0]


def read_fields(source: str | os.PathLike | gpd.GeoDataFrame, layer: str | None = None) -> gpd.GeoDataFrame:
    """Field polygons from a vector file or a GeoDataFrame.

    Reads what GDAL reads (GeoPackage, Shapefile, GeoJSON, FlatGeobuf), GeoParquet, and zip archives
    holding one of these (pass the ``.zip`` path). GeometryCollections keep their polygons; empty and
    non-polygonal geometries are dropped, with a warning that counts them.

    Args:
        source: the file, or polygons already read.
        layer: the layer to read from a file with several (a GeoPackage); needed only then.

    Raises:
        FileNotFoundError: if there is no file at ``source``.
        ValueError: if the polygons have no CRS, the file has no geometry (a CSV) or is not a vector file,
            a zip does not hold exactly one vector file, or ``layer`` is needed or does not exist.
    """
    if isinstance(source, gpd.GeoDataFrame):
        fields = source
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"no vector file at {path}; check the path (relative paths start at {Path.cwd()}).")
        fields = gpd.read_parquet(path) if path.suffix in (".parquet", ".geoparquet") else _read_vector(path, layer)
    if fields.crs is None:
        raise ValueError("the field polygons have no CRS; set it first, e.g. fields.set_crs('EPSG:4326').")
    collections = fields.geometry.geom_type == "GeometryCollection"
    if collections.any():
        fields = fields.copy()
        fields.loc[collections, fields.geometry.name] = fields.geometry[collections].map(_polygon_parts)
    keep = ~(fields.geometry.isna() | fields.geometry.is_empty)
    keep &= fields.geometry.geom_type.isin(["Polygon", "MultiPolygon"])
    if (~keep).any():
        warnings.warn(f"dropped {int((~keep).sum())} empty or non-polygonal geometries", stacklevel=2)
    return fields[keep]


def _read_vector(path: Path, layer: str | None) -> gpd.GeoDataFrame:
    """One layer of a vector file (or of the one vector file in a zip), refusing to guess among several."""
    target = _vector_in_zip(path) if path.suffix.lower() == ".zip" else str(path)
    try:
        layers = gpd.list_layers(target)
    except DataSourceError as err:
        raise ValueError(
            f"{path} is not a vector file GDAL reads (GeoPackage, Shapefile, GeoJSON, FlatGeobuf, GeoParquet, or a "
            "zip of one), or it is damaged: check the file, or download it again."
        ) from err
    names = layers["name"].tolist()
    with_geometry = layers.loc[layers["geometry_type"].notna(), "name"].tolist()
    if layer is not None and layer not in names:
        raise ValueError(f"{path.name} has no layer {layer!r}; its layers: {', '.join(names)}.")
    if layer is None and not with_geometry:
        raise ValueError(
            f"{path.name} has no geometry: a table (CSV, spreadsheet) holds no polygons or CRS. Convert it to a "
            "GeoPackage, or read it with pandas and build the polygons from a WKT column: "
            "gpd.GeoDataFrame(table, geometry=gpd.GeoSeries.from_wkt(table['wkt']), crs='EPSG:...')."
        )
    if layer is None and len(with_geometry) > 1:
        raise ValueError(
            f"{path.name} has {len(with_geometry)} layers with geometries ({', '.join(with_geometry)}): "
            f"pass the one you want, e.g. read_fields(path, layer={with_geometry[0]!r})."
        )
    return gpd.read_file(target, layer=layer or with_geometry[0])


def _vector_in_zip(path: Path) -> str:
    """The GDAL path of the one vector file in the zip archive ``path`` (a Shapefile counts once)."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.namelist()
    except zipfile.BadZipFile as err:
        raise ValueError(f"{path} is not a readable zip archive (damaged or incomplete): download it again.") from err
    vectors = [m for m in members if Path(m).suffix.lower() in VECTOR_SUFFIXES and not Path(m).name.startswith("._")]
    if len(vectors) != 1:
        held = ", ".join(vectors or members[:10]) or "nothing"
        raise ValueError(
            f"{path.name} holds {len(vectors)} vector files ({', '.join(VECTOR_SUFFIXES)}), not one: it holds {held}. "
            "Extract the archive and pass the file you want to read_fields."
        )
    return f"/vsizip/{path.resolve().as_posix()}/{vectors[0]}"


def _polygon_parts(geometry: shapely.Geometry) -> MultiPolygon:
    """The polygons of a GeometryCollection (nested ones too) as one MultiPolygon, empty when it holds none."""
    polygons = []
    for part in shapely.get_parts(geometry):
        if part.geom_type == "GeometryCollection":
            part = _polygon_parts(part)
        if part.geom_type in ("Polygon", "MultiPolygon"):
            polygons.extend(shapely.get_parts(part))
    return MultiPolygon(polygons)


def grid_bounds(height: int, width: int, transform: rasterio.Affine) -> tuple[float, float, float, float]:
    """``(west, south, east, north)`` of a ``height`` x ``width`` grid, whatever the transform's signs (a south-up
    grid has a positive ``e``) or rotation: the extremes of its four corners."""
    xs, ys = transform @ (np.array([0, width, 0, width]), np.array([0, 0, height, height]))
    return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())


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

    Raises:
        ValueError: for an empty layer, a profile without CRS, a negative ``boundary_px``, or polygons that
            do not overlap the raster (the message gives both extents and CRSs).
    """
    if boundary_px < 0:
        raise ValueError(f"boundary_px must be >= 0, got {boundary_px}")
    source = "the GeoDataFrame" if isinstance(fields, gpd.GeoDataFrame) else str(fields)
    fields = read_fields(fields)
    if len(fields) == 0:
        raise ValueError(f"the polygon layer of {source} is empty: there is nothing to rasterise (check the file, "
                         "its layer or the filter that made it).")  # fmt: skip
    if profile.get("crs") is None:
        raise ValueError("the raster profile has no CRS; the polygons cannot be placed on it.")
    source_crs, source_bounds = fields.crs.to_string(), fields.total_bounds
    if fields.crs != profile["crs"]:
        print(f"rasterize_fields: reprojecting {len(fields)} polygons from {source_crs} to {profile['crs']}")
        fields = fields.to_crs(profile["crs"])
    height, width = int(profile["height"]), int(profile["width"])
    field_ids = features.rasterize(
        ((geom, i) for i, geom in enumerate(fields.geometry, start=1)),
        out_shape=(height, width),
        transform=profile["transform"],
        fill=0,
        dtype="int32",
    )
    raster_bounds = grid_bounds(height, width, profile["transform"])
    if not field_ids.any() and not fields.intersects(box(*raster_bounds)).any():
        extent, raster = (", ".join(f"{v:.8g}" for v in bounds) for bounds in (source_bounds, raster_bounds))
        raise ValueError(
            f"none of the {len(fields)} polygons overlaps the raster: the polygons span ({extent}) in {source_crs}, "
            f"the raster spans ({raster}) (west, south, east, north) in {profile['crs']}. Check that they are of "
            "the same place and that both CRSs are right (a wrong CRS puts data elsewhere)."
        )
    mask = (field_ids > 0).astype(np.uint8)
    if boundary_px > 0:
        size = 2 * boundary_px + 1
        lowest = ndimage.minimum_filter(field_ids, size=size, mode="nearest")
        highest = ndimage.maximum_filter(field_ids, size=size, mode="nearest")
        edge = (field_ids > 0) & ((lowest != field_ids) | (highest != field_ids))
        mask[edge] = FIELD_EDGE
    return mask


def polygonize(
    mask: np.ndarray,
    transform: rasterio.Affine,
    crs: Any,
    *,
    field_values: Sequence[int] = (FIELD_INTERIOR,),
    grow_px: float = 0,
    min_area_px: int = 4,
) -> gpd.GeoDataFrame:
    """Turn the connected regions of a label mask into polygons (the inverse of :func:`rasterize_fields`).

    Pixels whose value is in ``field_values`` form regions (4-connected); each region becomes one
    polygon, traced along pixel borders. Polygonising only the interior class of a 3-class mask keeps
    touching fields apart; ``grow_px=boundary_px`` then gives each field its edge ring back.

    Args:
        mask: label array ``[H, W]`` on the raster's grid.
        transform: the raster's affine transform (pixel -> map coordinates).
        crs: the raster's CRS; the polygons are in it.
        field_values: label values that count as field.
        grow_px: buffer each polygon outwards by this many pixels (square corners kept).
        min_area_px: drop regions of fewer pixels (speckle).

    Returns:
        GeoDataFrame with columns ``field_id`` (1..n), ``area_m2`` (after growing) and ``geometry``;
        empty (with the CRS and columns) when no region is found.

    Raises:
        ValueError: for a mask that is not 2-D, a missing CRS or a negative ``grow_px``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask [H, W], got shape {mask.shape}; for a one-band raster pass mask[0].")
    if crs is None:
        raise ValueError("crs is None: pass the raster's CRS (profile['crs']) so the polygons can be placed.")
    if grow_px < 0:
        raise ValueError(f"grow_px must be >= 0, got {grow_px}")
    selected = np.isin(mask, list(field_values))
    pixel_area = abs(transform.a * transform.e - transform.b * transform.d)
    regions = features.shapes(selected.astype(np.uint8), mask=selected, transform=transform, connectivity=4)
    polygons = [shape(geometry) for geometry, _ in regions]
    polygons = [p for p in polygons if round(p.area / pixel_area) >= min_area_px]
    if grow_px > 0:
        polygons = [p.buffer(grow_px * np.sqrt(pixel_area), join_style="mitre") for p in polygons]
    fields = gpd.GeoDataFrame({"field_id": np.arange(1, len(polygons) + 1, dtype=np.int64)}, geometry=polygons, crs=crs)
    in_metres = fields.to_crs(fields.estimate_utm_crs()) if fields.crs.is_geographic and len(fields) else fields
    fields.insert(1, "area_m2", in_metres.area.to_numpy(dtype=np.float64))
    return fields


def check_chip_size(height: int, width: int, stride: int) -> None:
    """Check that a chip fits a model that downsamples by ``stride`` (e.g. 32 for a 5-level U-Net).

    Raises:
        ValueError: if a side is smaller than ``stride`` or not a multiple of it; the message says
            the size to pad or crop to. (:func:`predict_raster` pads by itself.)
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    for name, size in (("height", height), ("width", width)):
        if size < stride or size % stride:
            down, up = size // stride * stride, -(-size // stride) * stride
            crop = f"crop to {down} or " if down else ""
            raise ValueError(
                f"chip {name} {size} is not a multiple of the model's stride {stride}: "
                f"{crop}pad to {up} (e.g. np.pad(..., mode='reflect')), or use predict_raster, which pads."
            )


def iter_windows(height: int, width: int, tile: int, overlap: int = 0) -> list[Window]:
    """Tiles of ``tile`` x ``tile`` pixels, overlapping by ``overlap``, that cover a raster.

    Tiles step by ``tile - overlap``; the last row and column of tiles are shifted back so that every
    window lies inside the raster. A side shorter than ``tile`` gives windows of that side's length.

    Returns:
        rasterio windows, row by row (top to bottom, left to right).

    Raises:
        ValueError: for an empty raster, ``tile < 1``, or an overlap that is negative or leaves a step
            ``tile - overlap`` below a quarter of the tile (every pixel read more than 16 times).
    """
    if height < 1 or width < 1:
        raise ValueError(f"the raster is empty ({height} x {width} px)")
    if tile < 1:
        raise ValueError(f"tile must be >= 1 px, got {tile}")
    _check_overlap(tile, overlap)

    def offsets(size: int) -> list[int]:
        if size <= tile:
            return [0]
        return [*range(0, size - tile, tile - overlap), size - tile]

    tile_h, tile_w = min(tile, height), min(tile, width)
    return [Window(col, row, tile_w, tile_h) for row in offsets(height) for col in offsets(width)]


def _check_overlap(tile: int, overlap: int) -> None:
    """Refuse an overlap that is negative or leaves a step (``tile - overlap``) below a quarter of the tile.

    A smaller step reads every pixel more than 16 times (``overlap = tile - 1`` reads it ``tile**2`` times,
    tens of thousands of windows on a scene); it is almost always a mix-up of overlap and step.
    """
    largest = tile - math.ceil(tile / 4)
    if not 0 <= overlap <= largest:
        raise ValueError(
            f"overlap must be between 0 and {largest} px for {tile} px tiles (tiles step by tile - overlap, at "
            f"least a quarter tile), got {overlap}; tile // 8 = {tile // 8} is usual."
        )


class _FirstLayerReached(Exception):
    """Ends :func:`model_input_bands`'s trial forward at the first layer that declares its input width."""

    def __init__(self, width: int) -> None:
        super().__init__(width)
        self.width = width


def model_input_bands(model: torch.nn.Module, bands: int, size: int = 32) -> int | None:
    """The number of input bands ``model`` takes: what it declares, else what its first layer takes.

    The model's own ``in_channels`` attribute (the course's models set one) answers first. Otherwise a trial forward
    on zeros ``[1, bands, size, size]`` stops at the first layer called (not the first registered: a head may be
    registered before the encoder) that declares ``in_channels``, ``in_features`` or ``num_features``, so no real
    work is done; a per-pixel model's first ``Linear`` counts too.

    Returns:
        The input width, or ``None`` when the model declares none and fails before any such layer.
    """
    declared = getattr(model, "in_channels", None)
    if isinstance(declared, int):
        return declared

    def first_layer(module: torch.nn.Module, inputs: tuple[Any, ...]) -> None:
        for name in ("in_channels", "in_features", "num_features"):
            if isinstance(width := getattr(module, name, None), int):
                raise _FirstLayerReached(width)

    parameter = next(model.parameters(), None)
    x = torch.zeros(1, bands, size, size, device=parameter.device if parameter is not None else "cpu")
    hooks = [m.register_forward_pre_hook(first_layer) for m in model.modules() if m is not model]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    except _FirstLayerReached as reached:
        return reached.width
    except (RuntimeError, ValueError, IndexError):
        return None
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return None


def _taper(tile: int, overlap: int) -> np.ndarray:
    """Blending weight ``[tile, tile]``: 1 in the centre, a linear ramp over the ``overlap`` border, never 0."""
    distance_to_border = np.minimum(np.arange(tile), np.arange(tile)[::-1]) + 0.5
    ramp = np.clip(distance_to_border / max(overlap, 1), None, 1.0)
    return np.outer(ramp, ramp).astype(np.float32)


def _read_tile(
    src: rasterio.DatasetReader, indexes: list[int], window: Window, margin: int
) -> tuple[np.ndarray, np.ndarray]:
    """Read a window of the scene padded by ``margin`` on each side, as float32; the padding is a reflection.

    Returns:
        ``(tile [C, h, w], invalid [h, w])``: invalid where :func:`nodata_mask` or the file's mask band says so.
    """
    top, left = int(window.row_off) - margin, int(window.col_off) - margin
    height, width = int(window.height), int(window.width)
    rows = (max(top, 0), min(top + height, src.height))
    cols = (max(left, 0), min(left + width, src.width))
    data, masked = _read(src, indexes, Window.from_slices(rows, cols))
    invalid = nodata_mask(data, {"nodata": src.nodata})
    if masked is not None:
        invalid |= masked
    pad = ((rows[0] - top, top + height - rows[1]), (cols[0] - left, left + width - cols[1]))
    return np.pad(data.astype(np.float32), ((0, 0), *pad), mode="reflect"), np.pad(invalid, pad, mode="reflect")


def _class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over classes; a single-channel (binary) output becomes ``[1 - p, p]`` with a sigmoid."""
    if logits.shape[1] == 1:
        positive = torch.sigmoid(logits)
        return torch.cat([1 - positive, positive], dim=1)
    return torch.softmax(logits, dim=1)


def _blended_rows(
    model: torch.nn.Module,
    src: rasterio.DatasetReader,
    indexes: list[int],
    tile: int,
    overlap: int,
    normalise: tuple[np.ndarray, np.ndarray],
    batch_size: int,
    device: torch.device,
    target: Window,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(first row, probabilities [K, n, w], invalid [n, w])`` for finished rows of ``target``, top to bottom
    (rows counted from the top of ``target``, which lies inside the scene).

    The scene is virtually padded by ``overlap // 2`` (reflect) so that its border pixels are not on
    a tile border, and to at least one tile. The tiles are those of the whole scene that touch ``target``, so a
    window's prediction equals the same window of the whole scene's. They are processed one strip (row of
    tiles) at a time; rows that no later strip touches are blended, yielded and dropped from the accumulators.
    """
    margin = overlap // 2
    windows = iter_windows(max(src.height + 2 * margin, tile), max(src.width + 2 * margin, tile), tile, overlap)
    rows_wanted = (int(target.row_off) + margin, int(target.row_off + target.height) + margin)  # padded grid
    cols_wanted = (int(target.col_off) + margin, int(target.col_off + target.width) + margin)
    windows = [
        w for w in windows
        if w.row_off < rows_wanted[1] and w.row_off + tile > rows_wanted[0]
        and w.col_off < cols_wanted[1] and w.col_off + tile > cols_wanted[0]
    ]  # fmt: skip
    strips = [list(strip) for _, strip in groupby(windows, key=lambda w: w.row_off)]
    first_col = min(int(w.col_off) for w in windows)
    span = max(int(w.col_off) for w in windows) + tile - first_col
    weight = _taper(tile, overlap)
    mean, std = normalise
    summed = weights = invalid = None  # accumulators [K, tile, span], [tile, span]; row 0 is padded row `top`
    top = int(strips[0][0].row_off)
    for number, strip in enumerate(strips):
        for start in range(0, len(strip), batch_size):
            batch = strip[start : start + batch_size]
            tiles, masks = zip(*(_read_tile(src, indexes, w, margin) for w in batch), strict=True)
            x = (np.stack(tiles) - mean[:, None, None]) / std[:, None, None]
            x = np.where(np.stack(masks)[:, None], np.float32(0), x)  # nodata -> the band mean
            logits = model(torch.from_numpy(x).to(device))
            probabilities = _class_probabilities(logits.float()).cpu().numpy()
            if summed is None:
                summed = np.zeros((probabilities.shape[1], tile, span), dtype=np.float32)
                weights, invalid = np.zeros((tile, span), np.float32), np.zeros((tile, span), bool)
            for window, tile_probabilities, tile_invalid in zip(batch, probabilities, masks, strict=True):
                cols = slice(int(window.col_off) - first_col, int(window.col_off) - first_col + tile)
                summed[:, :, cols] += tile_probabilities * weight
                weights[:, cols] += weight
                invalid[:, cols] |= tile_invalid
        next_top = int(strips[number + 1][0].row_off) if number + 1 < len(strips) else top + tile
        first, last = max(top, rows_wanted[0]), min(next_top, rows_wanted[1])  # finished rows of the target
        if last > first:
            rows, cols = slice(first - top, last - top), slice(cols_wanted[0] - first_col, cols_wanted[1] - first_col)
            yield first - rows_wanted[0], summed[:, rows, cols] / weights[rows, cols], invalid[rows, cols].copy()
        done = next_top - top
        for array in (summed, weights, invalid):
            array[..., : tile - done, :] = array[..., done:, :]
            array[..., tile - done :, :] = 0
        top = next_top


def _target_window(
    src: rasterio.DatasetReader,
    window: Window | None,
    bounds: Sequence[float] | None,
    area: Any,
) -> tuple[Window, np.ndarray | None]:
    """The part of the scene to predict, as a window inside it, and the pixels ``[h, w]`` of it outside ``area``
    (``None`` without an area): from a pixel ``window``, map ``bounds`` in the scene's CRS, or an ``area``."""
    given = [name for name, value in (("window", window), ("bounds", bounds), ("area", area)) if value is not None]
    if len(given) > 1:
        raise ValueError(f"give one of window=, bounds= and area=, not {' and '.join(given)}")
    scene = Window(0, 0, src.width, src.height)
    if not given:
        return scene, None
    geometry = None
    if area is not None:
        if isinstance(area, gpd.GeoDataFrame | gpd.GeoSeries):
            if area.crs is None:
                raise ValueError("area has no CRS; set it first, e.g. area.set_crs('EPSG:4326').")
            if area.crs != src.crs:
                print(f"predict_raster: reprojecting the area from {area.crs} to the scene's {src.crs}")
                area = area.to_crs(src.crs)
            geometry = area.geometry.union_all()
        else:
            geometry = area  # a shapely geometry, in the scene's CRS
        if geometry.is_empty:
            raise ValueError("area is empty: pass the polygon(s) to predict inside.")
        bounds = geometry.bounds
    if bounds is not None:
        west, south, east, north = bounds
        if not (west < east and south < north):
            raise ValueError(f"bounds must be (west, south, east, north), west < east and south < north: {bounds}")
        exact = from_bounds(west, south, east, north, src.transform)  # fractional pixels
        col, row = math.floor(exact.col_off + 1e-6), math.floor(exact.row_off + 1e-6)  # 1e-6: rounding noise
        end_col, end_row = math.ceil(exact.col_off + exact.width - 1e-6), math.ceil(exact.row_off + exact.height - 1e-6)
        window = Window(col, row, end_col - col, end_row - row)
    try:
        target = window.intersection(scene)
    except WindowError:
        target = None
    if target is None or target.width < 1 or target.height < 1:
        extent = ", ".join(f"{v:.8g}" for v in src.bounds)
        raise ValueError(
            f"the {given[0]} {bounds if bounds is not None else window} does not overlap the scene {src.name} "
            f"({src.width} x {src.height} px; bounds {extent} in {src.crs}): check its place and CRS."
        )
    target = Window(int(target.col_off), int(target.row_off), int(target.width), int(target.height))
    outside = None
    if geometry is not None:
        outside = features.geometry_mask([geometry], (target.height, target.width), src.window_transform(target))
    return target, outside


def _check_model_takes(model: torch.nn.Module, tile: int, channels: int, stride: int, device: torch.device) -> None:
    """Run the model once on a blank tile, so that a tile size it cannot take fails before any work."""
    x = torch.zeros(1, channels, tile, tile, device=device)
    try:
        logits = model(x)
    except (RuntimeError, ValueError) as err:
        raise ValueError(
            f"the model fails on a {tile} x {tile} px tile of {channels} bands ({err}). If it takes other bands, "
            f"select them with bands=[...]; if it downsamples by more than stride={stride} "
            "(e.g. a U-Net with more levels), pass its total downsampling as stride= and a tile that is a multiple "
            "of it (tile=256 works for strides 1, 2, 4, ..., 256)."
        ) from err
    if logits.ndim != 4 or logits.shape[-2:] != x.shape[-2:]:
        raise ValueError(
            f"the model must return logits [batch, classes, H, W] at the input's size {tuple(x.shape[-2:])}, "
            f"got {tuple(logits.shape)}"
        )


def _per_band(name: str, values: Sequence[float] | np.ndarray | None, default: float, count: int) -> np.ndarray:
    """``values`` as a float32 array of one value per band (``default`` for each when ``None``)."""
    if values is None:
        return np.full(count, default, dtype=np.float32)
    array = np.asarray(values, dtype=np.float32).ravel()
    if array.size != count:
        raise ValueError(f"{name} has {array.size} values; give one per selected band ({count}).")
    return array


def _write_rows(
    rows: Iterator[tuple[int, np.ndarray, np.ndarray]],
    path: Path,
    meta: Mapping[str, Any],
    output: str,
    outside: np.ndarray | None,
) -> int:
    """Write blended rows as labels or probabilities to a new GeoTIFF; returns the number of nodata pixels inside
    the area (pixels ``outside`` it are written as nodata too, uncounted)."""
    dst = None
    invalid_count = 0
    try:
        for first_row, probabilities, invalid in rows:
            if outside is not None:
                invalid_count += int((invalid & ~outside[first_row : first_row + len(invalid)]).sum())
                invalid = invalid | outside[first_row : first_row + len(invalid)]
            else:
                invalid_count += int(invalid.sum())
            classes = probabilities.shape[0]
            if dst is None:
                if output == "labels" and classes > LABEL_NODATA:
                    raise ValueError(f"{classes} classes do not fit uint8 labels; use output='probabilities'")
                layout = {"count": 1, "dtype": "uint8", "nodata": LABEL_NODATA}
                if output == "probabilities":
                    layout = {"count": classes, "dtype": "float32", "nodata": np.nan}
                dst = rasterio.open(path, "w", **meta, **layout)
            if output == "labels":
                values = np.where(invalid, LABEL_NODATA, probabilities.argmax(axis=0)).astype(np.uint8)[None]
            else:
                values = np.where(invalid[None], np.float32(np.nan), probabilities)
            dst.write(values, window=Window(0, first_row, invalid.shape[1], invalid.shape[0]))
    finally:
        if dst is not None:
            dst.close()
    return invalid_count


def predict_raster(
    model: torch.nn.Module,
    src_path: str | os.PathLike,
    dst_path: str | os.PathLike,
    *,
    tile: int = 256,
    overlap: int = 32,
    bands: Sequence[int] | None = None,
    mean: Sequence[float] | np.ndarray | None = None,
    std: Sequence[float] | np.ndarray | None = None,
    batch_size: int = 4,
    device: str | torch.device | None = None,
    output: str = "labels",
    stride: int | None = None,
    in_channels: int | None = None,
    window: Window | None = None,
    bounds: Sequence[float] | None = None,
    area: Any = None,
) -> Path:
    """Run a segmentation model over a whole scene of any size, or a part of it, and write a georeferenced GeoTIFF.

    The scene is read in overlapping ``tile`` x ``tile`` windows (reflect-padded beyond the scene's
    border, and up to one tile for small scenes), normalised with ``(x - mean) / std`` per band, and
    the class probabilities (softmax of the logits) of overlapping tiles are averaged with a weight
    that ramps down over the ``overlap`` towards each tile's border. Pixels that are nodata (the
    source's nodata value) or NaN in any band are filled with the band mean (0 after normalisation)
    before the model, written as nodata, and counted in a warning; so are pixels that the file's mask
    band marks invalid. Before any work, the model is run once on a blank tile, so that a tile size it
    cannot take fails at once.

    Memory: one strip of tiles at a time; what stays in memory is the accumulated probabilities of
    ``tile`` rows by the scene's width (``classes x tile x width`` float32) plus one batch of tiles
    and its activations, never the whole scene. Finished rows are written as soon as no later strip
    overlaps them. The output is written to a temporary file and renamed at the end, so on error
    nothing is left at ``dst_path``.

    A part: ``window``, ``bounds`` or ``area`` (one of them) predicts and writes only that part of the scene, with
    the part's transform. The tiles are the whole scene's tiles that touch the part, read with their context
    from the rest of the scene, so the part's prediction equals the same part of a whole-scene prediction.

    Args:
        model: returns logits ``[batch, classes, H, W]`` at the input's size (one channel: binary, sigmoid).
        src_path: the scene (any format GDAL reads), with a CRS.
        dst_path: the GeoTIFF to write (not the scene itself); it gets the source's CRS, transform and size.
        tile: tile side in pixels; a multiple of ``stride``.
        overlap: pixels shared by neighbouring tiles (blended); from 0 to 3/4 of the tile (tiles step by
            ``tile - overlap``, at least a quarter tile).
        bands: 1-based band numbers fed to the model, in order; ``None`` takes all bands.
        mean: per-band mean (length = number of bands) subtracted before the model; default 0.
        std: per-band standard deviation the bands are divided by; default 1.
        batch_size: tiles per forward pass.
        device: where the model runs; default :func:`course_utils.config.get_device`. The model is moved there.
        output: ``"labels"`` (uint8 argmax, nodata 255) or ``"probabilities"`` (float32, one band per
            class, nodata NaN).
        stride: the model's total downsampling factor; ``tile`` must be a multiple of it. Default: the model's
            ``stride`` attribute (the course's U-Net has one), else 32 (a 5-level U-Net).
        in_channels: input bands the model expects; default: :func:`model_input_bands`.
        window: a pixel window of the scene (``rasterio.windows.Window(col_off, row_off, width, height)``); the
            part inside the scene is predicted.
        bounds: ``(west, south, east, north)`` in the scene's CRS; the pixels they touch are predicted.
        area: polygon(s) as a GeoDataFrame or GeoSeries in any CRS (reprojected to the scene's, with a message), or a
            shapely geometry in the scene's CRS: their bounding box is written, pixels outside them as nodata.

    Returns:
        ``dst_path``.

    Raises:
        FileNotFoundError: if ``src_path`` does not exist.
        ValueError: for a band count the model does not take, a tile that is not a multiple of the
            stride or that the model fails on, ``mean``/``std`` of the wrong length, a bad
            ``output``/``batch_size``/``overlap``, a scene without CRS, ``dst_path`` naming the scene, more than one
            of ``window``/``bounds``/``area``, or a part that misses the scene.
        rasterio.errors.RasterioIOError: for a damaged or incomplete scene (the message names it).
    """
    src_path, dst_path = Path(src_path), Path(dst_path)
    if output not in PREDICTION_OUTPUTS:
        raise ValueError(f"output must be one of {PREDICTION_OUTPUTS}, got {output!r}")
    if stride is None:
        declared = getattr(model, "stride", None)  # a Conv2d's stride is a tuple: not a total downsampling
        stride = declared if isinstance(declared, int) else 32
    if stride < 1 or tile < stride or tile % stride:
        suggestion = max(stride, round(tile / max(stride, 1)) * stride)
        raise ValueError(
            f"tile {tile} is not a multiple of the model's stride {stride}; use {suggestion} (any multiple of {stride})"
        )
    _check_overlap(tile, overlap)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if dst_path.exists() and src_path.exists() and os.path.samefile(src_path, dst_path):
        raise ValueError(
            f"dst_path {dst_path} is the scene {src_path} itself: the prediction would replace it; "
            "choose another output file."
        )
    device = get_device(None if device is None else str(device))

    with _open(src_path) as src:
        if src.crs is None:
            raise ValueError(
                f"{src_path.name} has no CRS, so its prediction could not be placed on a map: give the scene its CRS "
                f"and transform first (e.g. rio edit-info --crs EPSG:32633 {src_path.name}, with the scene's own CRS), "
                "or run the model on the array directly."
            )
        indexes = _band_indexes(src, bands)
        expected = in_channels if in_channels is not None else model_input_bands(model, len(indexes))
        if expected is not None and expected != len(indexes):
            raise ValueError(
                f"the model expects {expected} input bands but {len(indexes)} were selected from {src_path.name} "
                f"({src.count} bands); choose {expected} with bands=[...] (1-based)."
            )
        normalise = (_per_band("mean", mean, 0.0, len(indexes)), _per_band("std", std, 1.0, len(indexes)))
        if np.any(normalise[1] <= 0):
            raise ValueError(f"std must be > 0 for every band, got {normalise[1].tolist()}")

        target, outside = _target_window(src, window, bounds, area)
        meta = {"driver": "GTiff", "height": target.height, "width": target.width, "crs": src.crs}
        meta |= {"transform": src.window_transform(target), "compress": "deflate", "BIGTIFF": "IF_SAFER"}
        was_training = model.training
        model.to(device).eval()
        try:
            with torch.inference_mode():
                _check_model_takes(model, tile, len(indexes), stride, device)
                with atomic_path(dst_path) as tmp:
                    rows = _blended_rows(model, src, indexes, tile, overlap, normalise, batch_size, device, target)
                    invalid_count = _write_rows(rows, tmp, meta, output, outside)
        finally:
            model.train(was_training)
    if invalid_count:
        warnings.warn(
            f"{invalid_count} pixels of {src_path.name} are nodata or NaN: filled with the band mean before the "
            f"model and written as nodata in {dst_path.name}",
            stacklevel=2,
        )
    return dst_path
