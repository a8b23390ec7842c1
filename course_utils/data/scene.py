"""Your own scene: a GeoTIFF of any band count and field polygons in any CRS, split for training without leaks.

The course's other datasets read its catalog. This one reads what a practitioner brings: one or more scenes and a
polygon layer (GeoPackage, Shapefile, GeoParquet, ...):

1. **Bands** by number or by name (:func:`resolve_bands`): the file's band descriptions, or names you give them.
2. **Labels**: the polygons are reprojected to the scene's CRS (with a message) and burned with
   :func:`course_utils.geo.rasterize_fields` (0 non-field, 1 interior, 2 edge). Labels are taken as complete
   inside the polygons' bounding box (or an ``area`` you pass): outside it nothing is known, so nothing is used.
   Nodata pixels (the file's nodata value, NaN, its mask band) are left out of training and scoring
   (:data:`IGNORE`).
3. **A spatial split** (:class:`BlockSplit`): the scene is cut into square blocks, each block goes to training,
   validation or test, and a **buffer** of pixels along every border between parts belongs to none, so no
   training pixel lies within ``buffer`` pixels of a test pixel. A random pixel split would put neighbouring, nearly
   identical pixels on both sides and flatter the model (notebook 07 shows the leak).
4. **Band statistics** from the training part only (:attr:`FieldScene.stats`), as a practitioner would have them
   before seeing the test part.
5. **Samples**: :class:`SceneCrops` draws random crops that lie wholly inside the training part, then applies the
   course's transforms (default: a random flip/rotation, :class:`course_utils.transforms.RandomFlipRotate`);
   :class:`SceneTiles` gives fixed tiles of a part (validation), pixels outside the part labelled :data:`IGNORE`.

:func:`write_demo_scene` writes a generated scene as a plain GeoTIFF and GeoPackage, in 3 to any number of bands,
for trying the flow offline (notebook 02's "Your own scene", the tests).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import torch
from scipy import ndimage
from shapely.geometry import box

from course_utils.data.fields import EDGE_PX, REGIONS, _field_table, _profile, lay_out, observe, render
from course_utils.geo import nodata_mask, rasterize_fields, read_fields, read_raster, write_raster
from course_utils.transforms import RandomFlipRotate

#: Label value of pixels that are not used: outside the part, outside the labelled area, nodata.
IGNORE = 255

#: The parts of a split, in the order of :attr:`BlockSplit.parts` codes 0, 1, 2.
PARTS = ("train", "val", "test")


def resolve_bands(
    path: str | os.PathLike, bands: Sequence[int | str] | None = None, band_names: Sequence[str] | None = None
) -> tuple[list[int], list[str]]:
    """1-based band numbers and names of the bands ``bands`` picks from the raster at ``path``.

    Args:
        path: the raster.
        bands: band numbers (1-based) or names, in the order the model gets them; ``None``: all bands.
        band_names: a name for each of the file's bands; default: the file's band descriptions, else
            ``band1``, ``band2``, ...

    Raises:
        ValueError: for a name that is not a band's name, a number outside the file's bands, repeated bands, or
            ``band_names`` of another length than the file's band count.
    """
    with rasterio.open(path) as src:
        count, descriptions = src.count, src.descriptions
    if band_names is None:
        band_names = [d or f"band{i}" for i, d in enumerate(descriptions, start=1)]
    band_names = [str(name) for name in band_names]
    if len(band_names) != count:
        raise ValueError(f"{Path(path).name} has {count} bands but {len(band_names)} band names were given "
                         f"({', '.join(band_names)}): name each of its bands once, in the file's order.")  # fmt: skip
    lowered = [name.casefold() for name in band_names]
    indexes = []
    for band in range(1, count + 1) if bands is None else bands:
        if isinstance(band, str) and not band.isdigit():
            if band.casefold() not in lowered:
                raise ValueError(f"no band named {band!r} in {Path(path).name}; its bands: {', '.join(band_names)} "
                                 "(name them with band_names=[...], one per band, or pick by number).")  # fmt: skip
            indexes.append(lowered.index(band.casefold()) + 1)
        elif not 1 <= int(band) <= count:
            raise ValueError(f"{Path(path).name} has bands 1..{count}; band {band} does not exist.")
        else:
            indexes.append(int(band))
    if len(set(indexes)) != len(indexes):
        raise ValueError(f"bands {list(bands or [])} pick a band twice; give each band once.")
    return indexes, [band_names[i - 1] for i in indexes]


@dataclass(frozen=True)
class BlockSplit:
    """A scene cut into ``block`` x ``block`` px blocks, each in a part: 0 train, 1 val, 2 test, -1 unused.

    Pixels within ``buffer // 2 + 1`` px (a square neighbourhood) of another part's block, or of an unused block,
    belong to no part, so the pixels of two parts are always more than ``buffer`` px apart.
    """

    block: int
    buffer: int
    parts: np.ndarray  # [block rows, block columns] int8

    def part_ids(self, height: int, width: int) -> np.ndarray:
        """``[height, width]`` int8: the part of each pixel (-1: none, buffers included)."""
        blocks = np.repeat(np.repeat(self.parts, self.block, axis=0), self.block, axis=1)[:height, :width]
        size = 2 * (self.buffer // 2 + 1) + 1
        lowest = ndimage.minimum_filter(blocks, size=size, mode="nearest")
        highest = ndimage.maximum_filter(blocks, size=size, mode="nearest")
        return np.where(lowest == highest, blocks, -1).astype(np.int8)


def split_blocks(
    labelled: np.ndarray, block: int, buffer: int, shares: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0
) -> BlockSplit:
    """Assign the blocks that are mostly inside ``labelled`` (``[H, W]`` bool) to train, val and test at random.

    At least one block goes to each part; the shares say roughly how many go to each.

    Raises:
        ValueError: when fewer than three blocks lie mostly inside the labelled area.
    """
    height, width = labelled.shape
    rows, cols = -(-height // block), -(-width // block)
    padded = np.zeros((rows * block, cols * block), bool)
    padded[:height, :width] = labelled
    inside = padded.reshape(rows, block, cols, block).mean(axis=(1, 3)) >= 0.5
    candidates = np.flatnonzero(inside)
    if len(candidates) < 3:
        raise ValueError(
            f"the labelled area of the scene ({height} x {width} px) holds {len(candidates)} blocks of {block} px; a "
            "spatial split into training, validation and test needs at least 3: use smaller blocks (block=, at least "
            "the crop plus the buffer) or label a larger area."
        )
    shares = np.asarray(shares, dtype=float) / np.sum(shares)
    n_val = max(1, round(shares[1] * len(candidates)))
    n_test = max(1, round(shares[2] * len(candidates)))
    n_val, n_test = min(n_val, len(candidates) - 2), min(n_test, len(candidates) - 1 - min(n_val, len(candidates) - 2))
    order = np.random.default_rng(seed).permutation(candidates)
    parts = np.full(rows * cols, -1, np.int8)
    parts[order] = 0
    parts[order[:n_val]] = 1
    parts[order[n_val : n_val + n_test]] = 2
    return BlockSplit(block, buffer, parts.reshape(rows, cols))


def _digest(path: Path) -> str:
    """SHA-256 of a file's bytes (the scene and the polygons are part of a checkpoint's key)."""
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


class FieldScene:
    """One scene, its labels burned from field polygons, and its spatial split.

    Args:
        image: the scene (a GeoTIFF, or anything GDAL reads), with a CRS.
        fields: field polygons (a vector file or a GeoDataFrame) in any CRS; reprojected to the scene's.
        bands: band numbers (1-based) or names to use, in order (:func:`resolve_bands`); default: all.
        band_names: names of the file's bands (default: its band descriptions, else ``band1``, ...).
        block: side of the split's blocks in px.
        buffer: px left out along the borders between parts.
        shares: rough shares of training, validation and test blocks.
        seed: the split's seed.
        min_fields: the fewest fields each part must hold.
        area: where the labels are complete (polygons in any CRS); default: the polygons' bounding box.
        boundary_px: edge width of the labels (:func:`course_utils.geo.rasterize_fields`).

    Attributes:
        image: the selected bands ``[C, H, W]`` as stored; ``profile`` its rasterio profile.
        labels: ``[H, W]`` uint8, :data:`IGNORE` at nodata and outside the labelled area.
        part: ``[H, W]`` int8, the part of each pixel (0 train, 1 val, 2 test, -1 none).
        fields: the polygons in the scene's CRS that overlap it. ``field_counts``: fields per part.

    Raises:
        ValueError: polygons that miss the scene, too few fields for a split, a scene smaller than a block, a
            missing CRS, unknown bands (each message says what to do).
    """

    def __init__(
        self,
        image: str | os.PathLike,
        fields: str | os.PathLike | gpd.GeoDataFrame,
        *,
        bands: Sequence[int | str] | None = None,
        band_names: Sequence[str] | None = None,
        block: int = 256,
        buffer: int = 32,
        shares: Sequence[float] = (0.6, 0.2, 0.2),
        seed: int = 0,
        min_fields: int = 2,
        area: str | os.PathLike | gpd.GeoDataFrame | None = None,
        boundary_px: int = EDGE_PX,
    ) -> None:
        self.path = Path(image)
        self.indexes, self.band_names = resolve_bands(self.path, bands, band_names)
        self.image, self.profile = read_raster(self.path, self.indexes)
        if self.profile.get("crs") is None:
            raise ValueError(f"{self.path.name} has no CRS, so the polygons cannot be placed on it: give it its CRS "
                             f"first (e.g. rio edit-info --crs EPSG:32633 {self.path.name}).")  # fmt: skip
        height, width = self.image.shape[1:]
        polygons = read_fields(fields)
        if polygons.crs != self.profile["crs"]:
            print(f"FieldScene: reprojecting {len(polygons)} polygons from {polygons.crs} to the scene's "
                  f"{self.profile['crs']}")  # fmt: skip
            polygons = polygons.to_crs(self.profile["crs"])
        labels = rasterize_fields(polygons, self.profile, boundary_px)  # raises when no polygon overlaps the scene
        scene_box = box(*rasterio.transform.array_bounds(height, width, self.profile["transform"]))
        self.fields = polygons[polygons.intersects(scene_box)].reset_index(drop=True)
        if block > min(height, width):
            raise ValueError(f"{self.path.name} is {height} x {width} px, smaller than one block of {block} px: use "
                             "smaller blocks (block=), or a larger scene.")  # fmt: skip
        if len(self.fields) < 3 * min_fields:
            raise ValueError(
                f"too few fields for a split: {len(self.fields)} polygons overlap {self.path.name}; training,"
                f" validation and test need at least {min_fields} each ({3 * min_fields} in all). Label more fields."
            )
        labelled = self._labelled_area(area, polygons, height, width)
        self.valid = ~nodata_mask(self.image, self.profile)
        self.labels = np.where(labelled & self.valid, labels, IGNORE).astype(np.uint8)
        self.split = split_blocks(labelled, block, buffer, shares, seed)
        self.part = self.split.part_ids(height, width)
        self.part[~labelled] = -1
        self.field_counts = self._count_fields()
        if min(self.field_counts.values()) < min_fields:
            raise ValueError(
                f"too few fields for a split: {len(self.fields)} polygons overlap {self.path.name}, and the blocks "
                f"hold {self.field_counts} of them (train, val, test); each part needs at least {min_fields}. Label "
                "more fields, use smaller blocks (block=), or another seed."
            )
        self.key = "-".join([_digest(self.path)[:12], *map(str, self.indexes), str(block), str(buffer),
                             *(f"{s:g}" for s in shares), str(seed), str(boundary_px)])  # fmt: skip
        if isinstance(fields, str | os.PathLike):
            self.key += f"-{_digest(Path(fields))[:12]}"
        else:  # polygons given in memory: key them by their geometry
            self.key += "-" + hashlib.sha256(b"".join(polygons.geometry.to_wkb())).hexdigest()[:12]

    def _labelled_area(
        self, area: str | os.PathLike | gpd.GeoDataFrame | None, polygons: gpd.GeoDataFrame, height: int, width: int
    ) -> np.ndarray:
        """``[H, W]`` bool: where the labels are complete (``area``, or the polygons' bounding box)."""
        if area is None:
            shapes = [box(*polygons.total_bounds)]
        else:
            shapes = list(read_fields(area).to_crs(self.profile["crs"]).geometry)
        return ~rasterio.features.geometry_mask(shapes, (height, width), self.profile["transform"], all_touched=True)

    def _count_fields(self) -> dict[str, int]:
        """Fields per part: a field counts for the part its representative point lies in."""
        points = self.fields.geometry.representative_point()
        rows, cols = rasterio.transform.rowcol(self.profile["transform"], points.x, points.y)
        rows, cols = np.asarray(rows), np.asarray(cols)
        height, width = self.part.shape
        inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
        found = self.part[rows[inside], cols[inside]]
        return {name: int((found == code).sum()) for code, name in enumerate(PARTS)}

    def mask(self, part: str) -> np.ndarray:
        """``[H, W]`` bool: the labelled, valid pixels of ``part`` (train, val or test)."""
        return (self.part == PARTS.index(part)) & (self.labels != IGNORE)

    def part_labels(self, part: str) -> np.ndarray:
        """``[H, W]`` uint8 labels of ``part``, :data:`IGNORE` everywhere else."""
        return np.where(self.mask(part), self.labels, IGNORE).astype(np.uint8)

    @property
    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-band ``(mean, std)`` in stored units over the valid pixels of the training part only."""
        return training_statistics([self])

    def part_bounds(self, part: str) -> tuple[slice, slice]:
        """Row and column slices of the smallest window that holds ``part``."""
        rows, cols = np.nonzero(self.mask(part))
        return slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)


def training_statistics(scenes: Sequence[FieldScene]) -> tuple[np.ndarray, np.ndarray]:
    """Per-band ``(mean, std)`` (float32) over the valid training pixels of all ``scenes``."""
    total = squares = None
    count = 0
    for scene in scenes:
        pixels = scene.image[:, scene.mask("train")].astype(np.float64)
        total = pixels.sum(1) + (0 if total is None else total)
        squares = (pixels**2).sum(1) + (0 if squares is None else squares)
        count += pixels.shape[1]
    if not count:
        raise ValueError("the training part has no valid pixels; check the scene's nodata and the split.")
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0))
    return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


def _normalised(image: np.ndarray, valid: np.ndarray, stats: tuple[np.ndarray, np.ndarray]) -> torch.Tensor:
    """``(x - mean) / std`` per band as float32, nodata set to 0 (the band mean), as predict_raster does."""
    mean, std = stats
    x = (image.astype(np.float32) - mean[:, None, None]) / std[:, None, None]
    return torch.from_numpy(np.where(valid[None], x, np.float32(0)))


def _positions(inside: np.ndarray, size: int) -> np.ndarray:
    """Flat indices of the top-left corners of the ``size`` x ``size`` windows wholly ``inside`` (``[H, W]`` bool)."""
    table = np.zeros((inside.shape[0] + 1, inside.shape[1] + 1), np.int64)
    table[1:, 1:] = inside.cumsum(0).cumsum(1)
    counts = table[size:, size:] - table[:-size, size:] - table[size:, :-size] + table[:-size, :-size]
    rows, cols = np.nonzero(counts == size * size)
    return rows * inside.shape[1] + cols


class SceneCrops(torch.utils.data.Dataset):
    """``length`` random ``crop`` x ``crop`` samples ``{"image", "mask"}`` from the training part of ``scenes``.

    Each crop lies wholly inside the part (so it never sees a buffer or another part's pixels); its window is drawn
    anew on every access from torch's random state, then ``transform`` is applied (default: one of the 8 flips and
    quarter turns). Images are normalised with ``stats`` (default: the training statistics of ``scenes``); nodata
    pixels are 0 in the image and :data:`IGNORE` in the mask.

    Raises:
        ValueError: when no crop fits inside the training part (the message says what to change).
    """

    def __init__(
        self,
        scenes: Sequence[FieldScene],
        crop: int,
        length: int,
        *,
        part: str = "train",
        stats: tuple[np.ndarray, np.ndarray] | None = None,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.scenes, self.crop, self.length, self.part = list(scenes), crop, length, part
        self.stats = stats if stats is not None else training_statistics(self.scenes)
        self.transform = transform if transform is not None else RandomFlipRotate()
        for scene in self.scenes:
            height, width = scene.labels.shape
            if min(height, width) < crop:
                raise ValueError(f"{scene.path.name} is {height} x {width} px, smaller than one {crop} px crop: use a "
                                 "smaller crop (a multiple of the model's stride), or a larger scene.")  # fmt: skip
        self.positions = [_positions(scene.part == PARTS.index(part), crop) for scene in self.scenes]
        if not sum(len(p) for p in self.positions):
            block = self.scenes[0].split
            raise ValueError(
                f"no {crop} px crop fits inside the {part} part (blocks of {block.block} px, buffer {block.buffer} "
                f"px): use blocks of at least crop + buffer = {crop + block.buffer} px, or a smaller crop."
            )
        self.weights = torch.tensor([len(p) for p in self.positions], dtype=torch.float64)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        number = int(torch.multinomial(self.weights, 1))
        scene, positions = self.scenes[number], self.positions[number]
        flat = int(positions[int(torch.randint(len(positions), (1,)))])
        top, left = divmod(flat, scene.labels.shape[1])
        rows, cols = slice(top, top + self.crop), slice(left, left + self.crop)
        image = _normalised(scene.image[:, rows, cols], scene.valid[rows, cols], self.stats)
        mask = torch.from_numpy(scene.part_labels(self.part)[rows, cols].astype(np.int64))
        return self.transform({"image": image, "mask": mask})


class SceneTiles(torch.utils.data.Dataset):
    """Fixed ``tile`` x ``tile`` samples ``{"image", "mask"}`` covering a part of ``scenes`` (validation, test).

    The tiles are a grid over each scene (the last row and column shifted back inside it); those without a
    labelled pixel of the part are skipped. The mask is :data:`IGNORE` outside the part, so scores count the
    part only; the image keeps its context.
    """

    def __init__(
        self, scenes: Sequence[FieldScene], tile: int, part: str, stats: tuple[np.ndarray, np.ndarray]
    ) -> None:
        self.scenes, self.tile, self.part, self.stats = list(scenes), tile, part, stats
        self.windows = []
        for number, scene in enumerate(self.scenes):
            labels = scene.part_labels(part)
            height, width = labels.shape
            for top in sorted({*range(0, height - tile, tile), height - tile}):
                for left in sorted({*range(0, width - tile, tile), width - tile}):
                    if (labels[top : top + tile, left : left + tile] != IGNORE).any():
                        self.windows.append((number, top, left))
        if not self.windows:
            raise ValueError(f"the {part} part holds no labelled pixels in {tile} px tiles; check the split.")

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        number, top, left = self.windows[index]
        scene = self.scenes[number]
        rows, cols = slice(top, top + self.tile), slice(left, left + self.tile)
        image = _normalised(scene.image[:, rows, cols], scene.valid[rows, cols], self.stats)
        return {"image": image, "mask": torch.from_numpy(scene.part_labels(self.part)[rows, cols].astype(np.int64))}


def write_demo_scene(
    folder: str | os.PathLike,
    bands: int = 4,
    size: int = 256,
    seed: int = 0,
    region: str = "smallholder",
    nodata_corner: int = 0,
) -> tuple[Path, Path]:
    """Write a generated scene as a plain GeoTIFF (UTM, uint16 reflectance x 10 000, nodata 0) and its field
    polygons as a GeoPackage in EPSG:4326, as a practitioner's files would come; returns ``(tif, gpkg)``.

    Bands: 3 are red, green, blue (an RGB product); 4 add near-infrared (named blue, green, red, nir as the
    course's chips); more add smooth mixtures of red and near-infrared (red-edge-like bands) and noisy copies,
    named ``b5``, ``b6``, .... The band names are written as the file's band descriptions.

    Args:
        folder: where to write ``demo_scene_<bands>b.tif`` and ``demo_fields.gpkg``.
        bands: band count, 3 or more.
        size: side in px (4.77 m pixels).
        seed: the landscape's seed.
        region: a region of :data:`course_utils.data.fields.REGIONS`.
        nodata_corner: side in px of a top-left square written as nodata (0), to exercise nodata handling.
    """
    if bands < 3:
        raise ValueError(f"a demo scene has at least 3 bands (red, green, blue), got {bands}")
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    place = REGIONS[region]
    land = lay_out(rng, place, size, size)
    stored = observe(rng, place, render(rng, place, land, size, size), cloudy=False)  # [4: blue, green, red, nir]
    names = ["red", "green", "blue"] if bands == 3 else ["blue", "green", "red", "nir"]
    image = stored[[2, 1, 0]] if bands == 3 else stored
    extra = []
    for k in range(bands - len(names)):
        share = (k % 3 + 1) / 4  # red edge: between red and near-infrared
        noise = rng.normal(0, 60, stored.shape[1:])
        extra.append(np.clip((1 - share) * stored[2] + share * stored[3] + noise, 1, 10_000).astype(np.uint16))
        names.append(f"b{len(names) + 1}")
    image = np.concatenate([image, *(e[None] for e in extra)]) if extra else image
    image[:, :nodata_corner, :nodata_corner] = 0
    profile = _profile(place, (500_000.0, 9_925_000.0), size)
    tif = write_raster(folder / f"demo_scene_{bands}b.tif", image, profile)
    with rasterio.open(tif, "r+") as dst:
        dst.descriptions = tuple(names)
    gpkg = folder / "demo_fields.gpkg"
    _field_table(land, place, "demo", profile).to_file(gpkg, driver="GPKG")
    return tif, gpkg
