"""Geodata helpers a practitioner can copy into a project: read and write GeoTIFFs, rasterise field
polygons into extent/boundary masks, run a segmentation model over a whole scene, turn masks back into polygons.

A raster is a grid of pixels tied to the Earth by a CRS and an affine transform (pixel -> map
coordinates); a prediction is only useful when it keeps both. Scenes are far larger than what a
model sees at once, so inference reads overlapping tiles, blends their class probabilities with a
weight that fades towards each tile's border (a model is least sure near the border, where it
sees the least context) and writes the finished rows while the next ones are computed.

The helpers work on real data of any size, CRS, dtype and band count, and fail with an error that
says what to do. Band numbers follow rasterio: the first band is 1.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from itertools import groupby
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import torch
from rasterio import features
from rasterio.windows import Window
from scipy import ndimage
from shapely.geometry import shape

from course_utils.config import get_device
from course_utils.files import atomic_path

#: Label values of the field masks (the convention of the Africa field-boundary labels).
NON_FIELD, FIELD_INTERIOR, FIELD_EDGE = 0, 1, 2

#: Value written where the input was nodata in a label prediction.
LABEL_NODATA = 255

PREDICTION_OUTPUTS = ("labels", "probabilities")


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
        Nodata pixels are left as stored; ``profile["nodata"]`` says which value marks them.

    Raises:
        FileNotFoundError: if there is no file at ``path``.
        ValueError: if a band number does not exist (the message gives the file's band count).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no raster at {path}; check the path (relative paths start at {Path.cwd()}).")
    with rasterio.open(path) as src:
        indexes = _band_indexes(src, bands)
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
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **meta) as dst:
        dst.write(data)
    return path


def nodata_mask(array: np.ndarray, profile: Mapping[str, Any]) -> np.ndarray:
    """Pixels of ``array`` (``[bands, H, W]``) where any band equals ``profile["nodata"]`` or is NaN.

    Returns:
        ``bool`` array ``[H, W]``.
    """
    invalid = np.zeros(array.shape[-2:], dtype=bool)
    nodata = profile.get("nodata")
    if nodata is not None and not np.isnan(nodata):
        invalid |= (array == nodata).any(axis=0)
    if np.issubdtype(array.dtype, np.floating):
        invalid |= np.isnan(array).any(axis=0)
    return invalid


def read_fields(source: str | os.PathLike | gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Field polygons from a vector file or a GeoDataFrame.

    Reads what GDAL reads (GeoPackage, Shapefile, GeoJSON, FlatGeobuf), GeoParquet, and zip archives
    of these (pass the ``.zip`` path; GDAL opens it through ``/vsizip/``). Empty and non-polygonal
    geometries are dropped, with a warning that counts them.

    Raises:
        FileNotFoundError: if there is no file at ``source``.
        ValueError: if the polygons have no CRS.
    """
    if isinstance(source, gpd.GeoDataFrame):
        fields = source
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"no vector file at {path}; check the path (relative paths start at {Path.cwd()}).")
        fields = gpd.read_parquet(path) if path.suffix in (".parquet", ".geoparquet") else gpd.read_file(path)
    if fields.crs is None:
        raise ValueError("the field polygons have no CRS; set it first, e.g. fields.set_crs('EPSG:4326').")
    keep = ~(fields.geometry.isna() | fields.geometry.is_empty)
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

    Raises:
        ValueError: for an empty layer, a profile without CRS or a negative ``boundary_px``.
    """
    if boundary_px < 0:
        raise ValueError(f"boundary_px must be >= 0, got {boundary_px}")
    fields = read_fields(fields)
    if len(fields) == 0:
        raise ValueError("the polygon layer is empty: there is nothing to rasterise (check the file or the filter).")
    if profile.get("crs") is None:
        raise ValueError("the raster profile has no CRS; the polygons cannot be placed on it.")
    if fields.crs != profile["crs"]:
        source_crs = fields.crs.to_string()
        print(f"rasterize_fields: reprojecting {len(fields)} polygons from {source_crs} to {profile['crs']}")
        fields = fields.to_crs(profile["crs"])
    shape_hw = (int(profile["height"]), int(profile["width"]))
    field_ids = features.rasterize(
        ((geom, i) for i, geom in enumerate(fields.geometry, start=1)),
        out_shape=shape_hw,
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
        ValueError: for an empty raster, ``tile < 1`` or an overlap outside ``[0, tile)``.
    """
    if height < 1 or width < 1:
        raise ValueError(f"the raster is empty ({height} x {width} px)")
    if tile < 1:
        raise ValueError(f"tile must be >= 1 px, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile) = [0, {tile}), got {overlap}")

    def offsets(size: int) -> list[int]:
        if size <= tile:
            return [0]
        return [*range(0, size - tile, tile - overlap), size - tile]

    tile_h, tile_w = min(tile, height), min(tile, width)
    return [Window(col, row, tile_w, tile_h) for row in offsets(height) for col in offsets(width)]


def _model_in_channels(model: torch.nn.Module) -> int | None:
    """Input channels of the model's first 2-D convolution, or ``None`` when it has none."""
    first_conv = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
    return None if first_conv is None else first_conv.in_channels


def _taper(tile: int, overlap: int) -> np.ndarray:
    """Blending weight ``[tile, tile]``: 1 in the centre, a linear ramp over the ``overlap`` border, never 0."""
    distance_to_border = np.minimum(np.arange(tile), np.arange(tile)[::-1]) + 0.5
    ramp = np.clip(distance_to_border / max(overlap, 1), None, 1.0)
    return np.outer(ramp, ramp).astype(np.float32)


def _read_tile(
    src: rasterio.DatasetReader, indexes: list[int], window: Window, margin: int, nodata: Mapping[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Read a window of the scene padded by ``margin`` on each side, as float32; the padding is a reflection.

    Returns:
        ``(tile [C, h, w], invalid [h, w])``.
    """
    top, left = int(window.row_off) - margin, int(window.col_off) - margin
    height, width = int(window.height), int(window.width)
    rows = (max(top, 0), min(top + height, src.height))
    cols = (max(left, 0), min(left + width, src.width))
    data = src.read(indexes, window=Window.from_slices(rows, cols))
    invalid = nodata_mask(data, nodata)
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
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(first row, probabilities [K, n, W], invalid [n, W])`` for finished rows, top to bottom.

    The scene is virtually padded by ``overlap // 2`` (reflect) so that its border pixels are not on
    a tile border, and to at least one tile. Windows are processed one strip (row of windows) at a
    time; rows that no later strip touches are blended, yielded and dropped from the accumulators.
    """
    margin = overlap // 2
    padded_w = max(src.width + 2 * margin, tile)
    windows = iter_windows(max(src.height + 2 * margin, tile), padded_w, tile, overlap)
    strips = [list(strip) for _, strip in groupby(windows, key=lambda w: w.row_off)]
    weight = _taper(tile, overlap)
    mean, std = normalise
    nodata = {"nodata": src.nodata}
    summed = weights = invalid = None  # accumulators [K, tile, padded_w], [tile, padded_w]; row 0 is padded row `top`
    top = 0
    for number, strip in enumerate(strips):
        for start in range(0, len(strip), batch_size):
            batch = strip[start : start + batch_size]
            tiles, masks = zip(*(_read_tile(src, indexes, w, margin, nodata) for w in batch), strict=True)
            x = (np.stack(tiles) - mean[:, None, None]) / std[:, None, None]
            x = np.where(np.stack(masks)[:, None], np.float32(0), x)  # nodata -> the band mean
            logits = model(torch.from_numpy(x).to(device))
            if logits.ndim != 4 or logits.shape[-2:] != x.shape[-2:]:
                raise ValueError(
                    f"the model must return logits [batch, classes, H, W] at the input's size {x.shape[-2:]}, "
                    f"got {tuple(logits.shape)}"
                )
            probabilities = _class_probabilities(logits.float()).cpu().numpy()
            if summed is None:
                summed = np.zeros((probabilities.shape[1], tile, padded_w), dtype=np.float32)
                weights, invalid = np.zeros((tile, padded_w), np.float32), np.zeros((tile, padded_w), bool)
            for window, tile_probabilities, tile_invalid in zip(batch, probabilities, masks, strict=True):
                cols = slice(int(window.col_off), int(window.col_off) + tile)
                summed[:, :, cols] += tile_probabilities * weight
                weights[:, cols] += weight
                invalid[:, cols] |= tile_invalid
        next_top = int(strips[number + 1][0].row_off) if number + 1 < len(strips) else top + tile
        first, last = max(top, margin), min(next_top, margin + src.height)  # finished rows inside the scene
        if last > first:
            rows, cols = slice(first - top, last - top), slice(margin, margin + src.width)
            yield first - margin, summed[:, rows, cols] / weights[rows, cols], invalid[rows, cols].copy()
        done = next_top - top
        for array in (summed, weights, invalid):
            array[..., : tile - done, :] = array[..., done:, :]
            array[..., tile - done :, :] = 0
        top = next_top


def _per_band(name: str, values: Sequence[float] | np.ndarray | None, default: float, count: int) -> np.ndarray:
    """``values`` as a float32 array of one value per band (``default`` for each when ``None``)."""
    if values is None:
        return np.full(count, default, dtype=np.float32)
    array = np.asarray(values, dtype=np.float32).ravel()
    if array.size != count:
        raise ValueError(f"{name} has {array.size} values; give one per selected band ({count}).")
    return array


def _write_rows(
    rows: Iterator[tuple[int, np.ndarray, np.ndarray]], path: Path, meta: Mapping[str, Any], output: str
) -> int:
    """Write blended rows as labels or probabilities to a new GeoTIFF; returns the number of nodata pixels."""
    dst = None
    invalid_count = 0
    try:
        for first_row, probabilities, invalid in rows:
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
            invalid_count += int(invalid.sum())
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
    stride: int = 32,
    in_channels: int | None = None,
) -> Path:
    """Run a segmentation model over a whole scene of any size and write a georeferenced GeoTIFF.

    The scene is read in overlapping ``tile`` x ``tile`` windows (reflect-padded beyond the scene's
    border, and up to one tile for small scenes), normalised with ``(x - mean) / std`` per band, and
    the class probabilities (softmax of the logits) of overlapping tiles are averaged with a weight
    that ramps down over the ``overlap`` towards each tile's border. Pixels that are nodata (the
    source's nodata value) or NaN in any band are filled with the band mean (0 after normalisation)
    before the model, written as nodata, and counted in a warning.

    Memory: one strip of tiles at a time; what stays in memory is the accumulated probabilities of
    ``tile`` rows by the scene's width (``classes x tile x width`` float32) plus one batch of tiles
    and its activations, never the whole scene. Finished rows are written as soon as no later strip
    overlaps them. The output is written to a temporary file and renamed at the end, so on error
    nothing is left at ``dst_path``.

    Args:
        model: returns logits ``[batch, classes, H, W]`` at the input's size (one channel: binary, sigmoid).
        src_path: the scene (any format GDAL reads).
        dst_path: the GeoTIFF to write; it gets the source's CRS, transform and size.
        tile: tile side in pixels; a multiple of ``stride``.
        overlap: pixels shared by neighbouring tiles (blended); ``0 <= overlap < tile``.
        bands: 1-based band numbers fed to the model, in order; ``None`` takes all bands.
        mean: per-band mean (length = number of bands) subtracted before the model; default 0.
        std: per-band standard deviation the bands are divided by; default 1.
        batch_size: tiles per forward pass.
        device: where the model runs; default :func:`course_utils.config.get_device`. The model is moved there.
        output: ``"labels"`` (uint8 argmax, nodata 255) or ``"probabilities"`` (float32, one band per
            class, nodata NaN).
        stride: the model's total downsampling factor; ``tile`` must be a multiple of it.
        in_channels: input channels the model expects; default: the first ``Conv2d``'s ``in_channels``.

    Returns:
        ``dst_path``.

    Raises:
        FileNotFoundError: if ``src_path`` does not exist.
        ValueError: for a band count the model does not take, a tile that is not a multiple of the
            stride, ``mean``/``std`` of the wrong length, or a bad ``output``/``batch_size``/``overlap``.
    """
    src_path, dst_path = Path(src_path), Path(dst_path)
    if output not in PREDICTION_OUTPUTS:
        raise ValueError(f"output must be one of {PREDICTION_OUTPUTS}, got {output!r}")
    if stride < 1 or tile < stride or tile % stride:
        suggestion = max(stride, round(tile / max(stride, 1)) * stride)
        raise ValueError(f"tile {tile} is not a multiple of the model's stride {stride}; use {suggestion}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile) = [0, {tile}), got {overlap}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not src_path.is_file():
        raise FileNotFoundError(f"no raster at {src_path}; check the path (relative paths start at {Path.cwd()}).")
    device = get_device(None if device is None else str(device))

    with rasterio.open(src_path) as src:
        indexes = _band_indexes(src, bands)
        expected = in_channels if in_channels is not None else _model_in_channels(model)
        if expected is not None and expected != len(indexes):
            raise ValueError(
                f"the model expects {expected} input bands but {len(indexes)} were selected from {src_path.name} "
                f"({src.count} bands); choose {expected} with bands=[...] (1-based)."
            )
        normalise = (_per_band("mean", mean, 0.0, len(indexes)), _per_band("std", std, 1.0, len(indexes)))
        if np.any(normalise[1] <= 0):
            raise ValueError(f"std must be > 0 for every band, got {normalise[1].tolist()}")

        meta = {"driver": "GTiff", "height": src.height, "width": src.width, "crs": src.crs}
        meta |= {"transform": src.transform, "compress": "deflate", "BIGTIFF": "IF_SAFER"}
        was_training = model.training
        model.to(device).eval()
        try:
            with torch.inference_mode(), atomic_path(dst_path) as tmp:
                rows = _blended_rows(model, src, indexes, tile, overlap, normalise, batch_size, device)
                invalid_count = _write_rows(rows, tmp, meta, output)
        finally:
            model.train(was_training)
    if invalid_count:
        warnings.warn(
            f"{invalid_count} pixels of {src_path.name} are nodata or NaN: filled with the band mean before the "
            f"model and written as nodata in {dst_path.name}",
            stacklevel=2,
        )
    return dst_path
