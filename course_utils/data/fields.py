"""Field scenes: 4-band PlanetScope-like chips of farmland with field polygons and 3-class labels.

Modelled on the Africa field-boundary labels (Planet NICFI basemaps, 4.77 m, bands B, G, R, NIR) and on
Fields of The World. Each scene is built the way a landscape is:

1. **Parcels**: a block of land is split recursively, with slightly oblique cuts, until each piece has the
   region's field size; the first cuts become roads. Each parcel shrinks by a margin (grass strip, path).
2. **Land use**: most parcels are crop fields; some are fallow grass, woodlots or homesteads (non-field);
   patches of bush/grassland have no parcels at all.
3. **Reflectance**: a field is a linear mix of its crop's canopy spectrum and the region's soil, weighted by
   the canopy cover (the season), with row/tramline stripes at the field's orientation and growth patches;
   hedgerows, tree clumps, roads and bright roofs are painted on the non-field land.
4. **Sensor**: per-region gain, haze (strongest in blue), the sensor's blur (mixed pixels at borders), a few
   clouds with shadows, and noise; stored as uint16 reflectance x 10 000 (nodata 0).

Labels are burned from the written polygons with :func:`course_utils.geo.rasterize_fields`:
0 non-field, 1 field interior, 2 field edge (the outer pixel, about 5 m, of each field).

Two regions differ in field size, soil colour, season (greenness) and sensor gain, so a model trained on
one loses accuracy on the other: ``smallholder`` (0.1-1 ha plots, peak long-rains season, dark red soil)
and ``commercial`` (3-15 ha fields, early season, pale sandy soil); see :data:`REGIONS`.

**An archive of acquisitions.** The chips of ``catalog.csv`` are the labelled acquisition of each place: one
date, as a label campaign draws its polygons on a few images. The same places are imaged again on other dates
(``archive/catalog.csv``): same layout and labels, another :class:`Acquisition` (stage of the season and share of
harvested fields, soil moisture, haze, sensor gain and offset, sun elevation, clouds). That is what a real archive
holds: many unlabelled acquisitions for few labelled ones, and two dates of one place are a natural positive pair
for self-supervision (Seasonal Contrast, Mañas et al., 2021).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import torch
from pyproj import Transformer
from rasterio import features
from rasterio.crs import CRS
from rasterio.transform import Affine
from scipy import ndimage
from shapely.geometry import LineString, Polygon

from course_utils.config import by_mode, course_seed, data_family, get_mode
from course_utils.data.store import band_statistics, ensure_generated, read_catalog, worker_pool
from course_utils.geo import rasterize_fields, read_raster, write_raster

FAMILY = data_family("fields")  # versioned: see course_utils.config.DATA_VERSIONS
BANDS = ("blue", "green", "red", "nir")
PIXEL_SIZE = 4.77  # metres, the Planet NICFI basemap's pixel
EDGE_PX = 1  # width of the field-edge class in pixels (about 5 m)
SPLITS = ("train", "val", "test", "scene")
SCALE = 10_000  # stored value = reflectance x SCALE; 0 is nodata
ARCHIVE = "archive"  # sub-folder of the other dates' images of the same chips, with their own catalog.csv

# Reflectance spectra (blue, green, red, NIR) of closed canopies, bare materials and targets.
TREES = (0.022, 0.045, 0.028, 0.28)
METAL_ROOF = (0.30, 0.32, 0.34, 0.36)
RUSTY_ROOF = (0.10, 0.12, 0.17, 0.22)
CLOUD = (0.45, 0.45, 0.46, 0.48)
NON_FIELD_USES = ("fallow", "woodlot", "homestead")  # parcels that are not fields
HAZE_SHAPE = np.array([1.0, 0.7, 0.45, 0.25])  # path radiance falls with wavelength


@dataclass(frozen=True)
class Region:
    """The landscape, season and sensor of one region."""

    name: str
    modelled_on: str
    epsg: int
    lon_lat: tuple[float, float]  # where the chips are placed
    field_area_ha: float  # median field area
    margin_px: tuple[float, float]  # range of the gap between neighbouring fields
    crops: dict[str, tuple[float, float, float, float]]  # crop -> canopy spectrum
    soil: tuple[float, float, float, float]
    grass: tuple[float, float, float, float]
    road: tuple[float, float, float, float]
    crop_cover: tuple[float, float]  # canopy cover range of growing crops: the season
    grass_cover: float  # mean cover of grass margins and bush
    bare_fields: float  # share of fields ploughed or harvested (still fields)
    natural_scale_px: int  # size of bush/grassland patches
    land_use: dict[str, float]  # share of parcels that are not fields
    hedge_share: float  # share of parcels with a hedgerow around them
    cut_jitter_deg: float  # irregularity of parcel shapes
    gain: tuple[float, float, float, float]  # sensor gain per band
    haze: float  # mean haze reflectance in blue


REGIONS: dict[str, Region] = {
    region.name: region
    for region in (
        Region(
            name="smallholder",
            modelled_on="western Kenya near Kisii (0.68 S, 34.77 E): hand-tilled plots, long-rains season",
            epsg=32736,
            lon_lat=(34.77, -0.68),
            field_area_ha=0.6,
            margin_px=(0.6, 1.6),
            crops={
                "maize": (0.030, 0.070, 0.045, 0.40),
                "beans": (0.030, 0.080, 0.040, 0.46),
                "sorghum": (0.035, 0.072, 0.055, 0.34),
                "cassava": (0.028, 0.068, 0.040, 0.42),
            },
            soil=(0.045, 0.065, 0.105, 0.160),  # dark red nitisol
            grass=(0.040, 0.075, 0.065, 0.32),
            road=(0.080, 0.110, 0.170, 0.21),  # red murram
            crop_cover=(0.45, 0.95),
            grass_cover=0.65,
            bare_fields=0.10,
            natural_scale_px=40,
            land_use={"fallow": 0.08, "woodlot": 0.04, "homestead": 0.06},
            hedge_share=0.25,
            cut_jitter_deg=8.0,
            gain=(1.0, 1.0, 1.0, 1.0),
            haze=0.012,
        ),
        Region(
            name="commercial",
            modelled_on="the Free State maize belt near Bothaville, South Africa (27.38 S, 26.62 E): "
            "mechanised farms, early summer season",
            epsg=32735,
            lon_lat=(26.62, -27.38),
            field_area_ha=6.0,
            margin_px=(1.2, 3.0),
            crops={
                "maize": (0.030, 0.070, 0.045, 0.40),
                "sunflower": (0.032, 0.085, 0.045, 0.48),
                "soybean": (0.030, 0.078, 0.042, 0.44),
                "wheat": (0.040, 0.080, 0.060, 0.36),
            },
            soil=(0.090, 0.125, 0.170, 0.225),  # pale sandy arenosol
            grass=(0.055, 0.085, 0.090, 0.28),  # drier highveld grass
            road=(0.100, 0.110, 0.120, 0.14),  # gravel and tar
            crop_cover=(0.10, 0.65),
            grass_cover=0.50,
            bare_fields=0.20,
            natural_scale_px=80,
            land_use={"fallow": 0.08, "woodlot": 0.02, "homestead": 0.02},
            hedge_share=0.15,
            cut_jitter_deg=4.0,
            gain=(1.06, 1.04, 1.08, 0.93),
            haze=0.025,
        ),
    )
}


def _sizes(mode: str) -> dict[str, Any]:
    """Chip size, chips per split and region, scene size and scenes per region, archive dates per chip, for a mode."""
    return by_mode(
        mode,
        smoke={"chip": 128, "train": 6, "val": 2, "test": 2, "scene": 256, "scenes": 1, "dates": 2},
        lite={"chip": 256, "train": 48, "val": 12, "test": 16, "scene": 768, "scenes": 2, "dates": 3},
        full={"chip": 256, "train": 96, "val": 24, "test": 32, "scene": 1024, "scenes": 2, "dates": 4},
    )


@dataclass(frozen=True)
class Acquisition:
    """What changes between two images of the same place: the date's conditions, as factors on the region's.

    The default is the region's labelled acquisition (every factor neutral), which renders the chips of
    ``catalog.csv`` exactly.
    """

    canopy: float = 1.0  # growing crops' canopy cover x this: the stage of the season
    harvested: float = 0.0  # share of growing fields harvested or ploughed by this date
    soil_moisture: float = 1.0  # soil reflectance x this (wet soil is darker)
    haze: float = 1.0  # the region's haze x this
    gain: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)  # the sensor's gain this date, per band
    offset: float = 0.0  # the sensor's dark-level error this date (reflectance, all bands)
    shadow_px: int = 0  # length of tree shadows (a low sun in the morning pass casts longer ones)
    cloud_share: float = 0.2  # probability that the image holds clouds

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Acquisition:
        """Another date in the same season of the same region, with its own atmosphere and calibration."""
        return cls(
            canopy=float(rng.uniform(0.35, 1.15)),
            harvested=float(rng.choice([0.0, rng.uniform(0.1, 0.5)], p=[0.6, 0.4])),
            soil_moisture=float(rng.uniform(0.7, 1.2)),
            haze=float(rng.uniform(0.5, 3.0)),
            gain=tuple(float(g) for g in rng.uniform(0.9, 1.1) * rng.uniform(0.96, 1.04, 4)),
            offset=float(rng.uniform(-0.008, 0.008)),
            shadow_px=int(rng.integers(0, 4)),
            cloud_share=0.3,
        )

    def on(self, region: Region) -> Region:
        """The region as this acquisition sees it: season, soil and sensor shifted by the date's factors."""
        return replace(
            region,
            crop_cover=(region.crop_cover[0] * self.canopy, min(region.crop_cover[1] * self.canopy, 1.0)),
            soil=tuple(v * self.soil_moisture for v in region.soil),
            haze=region.haze * self.haze,
            gain=tuple(g * d for g, d in zip(region.gain, self.gain, strict=True)),
        )


LABELLED = Acquisition()


# ----------------------------------------------------------------------------------------------- parcels


def _linear_upsampling(n_out: int, n_in: int, scale: float) -> np.ndarray:
    """Matrix ``[n_out, n_in]`` that linearly interpolates a coarse axis onto one ``scale`` times finer."""
    position = np.arange(n_out) / scale
    left = position.astype(int)
    weights = np.zeros((n_out, n_in))
    weights[np.arange(n_out), left] = 1 - (position - left)
    weights[np.arange(n_out), left + 1] = position - left
    return weights


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale_px: float) -> np.ndarray:
    """Smooth random field with unit standard deviation and features about ``scale_px`` pixels wide."""
    if scale_px <= 3:
        field = ndimage.gaussian_filter(rng.standard_normal(shape), scale_px / 2)
    else:  # smooth coarse noise, interpolated onto the pixel grid (fast for wide features)
        coarse = ndimage.gaussian_filter(
            rng.standard_normal((int(shape[0] / scale_px) + 2, int(shape[1] / scale_px) + 2)), 0.7
        )
        rows = _linear_upsampling(shape[0], coarse.shape[0], scale_px)
        cols = _linear_upsampling(shape[1], coarse.shape[1], scale_px)
        field = rows @ coarse @ cols.T
    return (field - field.mean()) / (field.std() + 1e-9)


def _cut(vertices: np.ndarray, point: np.ndarray, normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split a convex polygon (``[k, 2]`` vertices) by the line through ``point`` with ``normal``."""
    side = ((vertices - point) @ normal).tolist()
    corners = vertices.tolist()
    ahead, behind = [], []
    for i, (a, side_a) in enumerate(zip(corners, side, strict=True)):
        b, side_b = corners[(i + 1) % len(corners)], side[(i + 1) % len(corners)]
        (ahead if side_a >= 0 else behind).append(a)
        if side_a * side_b < 0:  # the edge a-b crosses the line
            t = side_a / (side_a - side_b)
            crossing = [a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])]
            ahead.append(crossing)
            behind.append(crossing)
    return np.array(ahead), np.array(behind)


def _area(vertices: np.ndarray) -> float:
    """Area of a polygon from its vertices (shoelace formula)."""
    x, y = vertices[:, 0], vertices[:, 1]
    return 0.5 * abs(float(x[:-1] @ y[1:] - x[1:] @ y[:-1] + x[-1] * y[0] - x[0] * y[-1]))


def split_parcels(
    rng: np.random.Generator, region: Region, height: int, width: int
) -> tuple[list[Polygon], list[LineString]]:
    """Cut the land (pixel coordinates, with a border beyond the chip) into parcels and roads.

    Each piece is cut across its longer side (sometimes the shorter: strips), near the middle and
    slightly oblique, until it is smaller than a field size drawn for it; the first one or two cuts are
    roads, which leave a gap.

    Returns:
        ``(parcels, roads)``: convex polygons and road centre lines, both in pixel coordinates.
    """
    pad = 24
    orientation = rng.uniform(0, np.pi)
    axes = np.array([[np.cos(orientation), np.sin(orientation)], [-np.sin(orientation), np.cos(orientation)]])
    median_px = region.field_area_ha * 1e4 / PIXEL_SIZE**2
    road_levels = int(rng.integers(1, 3)) if height * width > 4 * median_px else 0
    land = np.array([[-pad, -pad], [width + pad, -pad], [width + pad, height + pad], [-pad, height + pad]], float)
    stack = [(land, 0)]
    parcels, roads = [], []
    while stack:
        piece, depth = stack.pop()
        if depth >= road_levels and _area(piece) < median_px * rng.lognormal(0.0, 0.5) * 1.5:
            parcels.append(Polygon(piece))
            continue
        coords = piece @ axes.T
        extent = coords.max(0) - coords.min(0)
        along = int(np.argmax(extent)) if rng.random() > 0.25 or extent.max() > 2.5 * extent.min() else 1
        jitter = np.deg2rad(rng.normal(0.0, region.cut_jitter_deg))
        cut_direction = axes[1 - along] * np.cos(jitter) + axes[along] * np.sin(jitter)
        centre = piece.mean(0)
        position = coords.min(0)[along] + rng.uniform(0.35, 0.65) * extent[along]
        point = centre + (position - coords.mean(0)[along]) * axes[along]
        halves = _cut(piece, point, np.array([-cut_direction[1], cut_direction[0]]))
        if depth < road_levels:
            reach = 2.0 * (height + width + 2 * pad)
            roads.append(
                LineString([point - reach * cut_direction, point + reach * cut_direction]).intersection(Polygon(piece))
            )
            gapped = (Polygon(half).buffer(-1.5, join_style="mitre") for half in halves if len(half) >= 3)
            halves = [np.asarray(g.exterior.coords)[:-1] for g in gapped if not g.is_empty]
        stack.extend((half, depth + 1) for half in halves if len(half) >= 3 and _area(half) > 4)
    return parcels, roads


@dataclass
class Landscape:
    """What a scene is made of, in pixel coordinates: parcels with their land use, roads."""

    parcels: list[Polygon]  # shrunk by their margins, clipped to the chip
    uses: list[str]  # crop name, "bare", or a non-field use ("fallow", "woodlot", "homestead")
    roads: list[LineString]

    def fields(self) -> tuple[list[Polygon], list[str]]:
        """The parcels that are fields (growing or bare) and their crops."""
        keep = [i for i, use in enumerate(self.uses) if use not in NON_FIELD_USES]
        return [self.parcels[i] for i in keep], [self.uses[i] for i in keep]


def lay_out(rng: np.random.Generator, region: Region, height: int, width: int) -> Landscape:
    """Parcels, their land use and roads for one scene; bush/grassland patches hold no parcels."""
    parcels, roads = split_parcels(rng, region, height, width)
    pad = 32
    bush = smooth_noise(rng, (height + 2 * pad, width + 2 * pad), region.natural_scale_px) > 0.9
    centres = shapely.get_coordinates(shapely.centroid(parcels)).astype(int) + pad
    in_bush = bush[centres[:, 1].clip(0, height + 2 * pad - 1), centres[:, 0].clip(0, width + 2 * pad - 1)]
    margins = rng.uniform(*region.margin_px, len(parcels)) / 2
    shrunk = shapely.clip_by_rect(shapely.buffer(parcels, -margins, join_style="mitre"), 0, 0, width, height)
    keep = ~in_bush & (shapely.get_type_id(shrunk) == shapely.GeometryType.POLYGON) & (shapely.area(shrunk) >= 2)
    farmed = 1.0 - sum(region.land_use.values())
    uses = [*region.land_use, "bare", *region.crops]
    odds = [*region.land_use.values(), farmed * region.bare_fields]
    odds += [farmed * (1 - region.bare_fields) / len(region.crops)] * len(region.crops)
    drawn = rng.choice(uses, size=int(keep.sum()), p=odds)
    return Landscape(list(shrunk[keep]), [str(use) for use in drawn], roads)


# ----------------------------------------------------------------------------------------------- rendering


def _mix(cover: np.ndarray, canopy: np.ndarray, ground: np.ndarray) -> np.ndarray:
    """Linear mixture per pixel of a canopy and a ground spectrum (each ``[4]`` or ``[4, H, W]``) by ``cover``."""
    if canopy.ndim == 1:
        canopy = canopy[:, None, None]
    if ground.ndim == 1:
        ground = ground[:, None, None]
    return cover[None] * canopy + (1 - cover[None]) * ground


def render(
    rng: np.random.Generator, region: Region, land: Landscape, height: int, width: int, date: Acquisition = LABELLED
) -> np.ndarray:
    """Surface reflectance ``[4, H, W]`` (float, 0-1) of a laid-out landscape on a date, before the sensor.

    ``region`` is the region as ``date`` sees it (:meth:`Acquisition.on`); ``date`` adds the harvested fields and the
    tree shadows. The neutral date draws nothing extra, so the labelled chips do not depend on the archive.
    """
    shape = (height, width)
    soil = np.array(region.soil)
    ids = np.zeros(shape, np.int32)
    if land.parcels:
        ids = features.rasterize(
            ((p, i) for i, p in enumerate(land.parcels, start=1)), out_shape=shape, fill=0, dtype="int32"
        )
    n = len(land.parcels) + 1  # per-parcel properties; index 0 is the land between parcels
    uses = np.array(["between", *land.uses])
    growing = np.isin(uses, list(region.crops))
    cover = np.where(growing, rng.uniform(*region.crop_cover, n), 0.0)
    if date.harvested > 0:  # harvested or ploughed by this date: still fields, now bare
        uses = np.where(growing & (rng.random(n) < date.harvested), "bare", uses)
    cover[uses == "bare"] = rng.uniform(0.0, 0.08, int((uses == "bare").sum()))
    cover[uses == "fallow"] = np.clip(
        rng.normal(np.mean(region.crop_cover), 0.15, int((uses == "fallow").sum())), 0.2, 0.95
    )
    canopy = np.array([region.crops.get(use, region.grass) for use in uses])
    ground = soil * np.where(uses == "bare", rng.uniform(0.7, 0.9, n), rng.uniform(0.9, 1.1, n))[:, None]
    row_angle, row_period = rng.uniform(0, np.pi, n), rng.uniform(2.5, 6.0, n)
    row_depth = np.where(growing | (uses == "bare"), rng.uniform(0.05, 0.25, n), 0.0)

    # within-field texture: rows/tramlines (deepest where the canopy is open) and growth patches
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = row_angle[ids]
    rows = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / row_period[ids] + ids)
    patches = 0.10 * smooth_noise(rng, shape, 10) + 0.04 * smooth_noise(rng, shape, 2)
    px_cover = cover[ids] * (1 + patches) + row_depth[ids] * (1 - cover[ids] + 0.3) * rows * 0.5

    # between parcels and in the bush: grass, shrubs and bare patches
    between = ids == 0
    bush_cover = region.grass_cover + 0.20 * smooth_noise(rng, shape, 8) + 0.08 * smooth_noise(rng, shape, 1.5)
    px_cover = np.clip(np.where(between, bush_cover, px_cover), 0.0, 1.0)
    image = _mix(px_cover, canopy[ids].transpose(2, 0, 1), ground[ids].transpose(2, 0, 1))

    # trees: hedgerows on some parcel outlines, clumps in the bush and around homesteads, woodlots
    hedged = [p.exterior for p in land.parcels if rng.random() < region.hedge_share]
    hedges = features.rasterize(hedged, out_shape=shape, dtype="uint8") > 0 if hedged else np.zeros(shape, bool)
    use_map = uses[ids]
    clumps = smooth_noise(rng, shape, 4) > np.where(use_map == "homestead", 0.6, 1.7)
    trees = ((hedges | clumps) & (between | (use_map == "homestead"))) | (use_map == "woodlot")
    crowns = np.clip(0.75 + 0.25 * smooth_noise(rng, shape, 1.2), 0.4, 1.1)
    image = np.where(trees[None], np.array(TREES)[:, None, None] * crowns[None], image)
    if date.shadow_px > 0:  # shadows fall away from the sun, here to the north-west
        shadow = ndimage.shift(trees.astype(np.float32), (-date.shadow_px, -date.shadow_px), order=0) > 0
        image = np.where((shadow & ~trees)[None], image * 0.55, image)

    # roads and homesteads: murram/gravel strips, bare compounds with metal or rusty roofs
    road_lines = [road.buffer(rng.uniform(1.0, 2.0)) for road in land.roads if not road.is_empty]
    if road_lines:
        roads = (features.rasterize(road_lines, out_shape=shape) > 0) & between
        surface = np.array(region.road)[:, None, None] * (0.95 + 0.1 * rng.random(shape))
        image = np.where(roads[None], surface, image)
    yards = use_map == "homestead"
    roofs = ndimage.binary_dilation(yards & (rng.random(shape) < 0.015), iterations=1) & yards & ~trees
    roof = np.where(smooth_noise(rng, shape, 3) > 0, 1.0, 0.0)
    roof_spectra = _mix(roof, np.array(METAL_ROOF), np.array(RUSTY_ROOF))
    compound = yards & ~trees & ~roofs
    image = np.where(compound[None], soil[:, None, None] * 1.25, image)
    return np.where(roofs[None], roof_spectra, image)


def observe(
    rng: np.random.Generator, region: Region, reflectance: np.ndarray, cloudy: bool, offset: float = 0.0
) -> np.ndarray:
    """What the sensor records: blur, haze, clouds with shadows, gain, dark-level ``offset``, noise; uint16 x 10 000,
    never 0."""
    shape = reflectance.shape[1:]
    image = ndimage.gaussian_filter(reflectance, sigma=(0, 0.6, 0.6))  # the sensor's blur mixes border pixels
    haze = region.haze * rng.uniform(0.5, 1.5) * (1 + 0.3 * smooth_noise(rng, shape, 64))
    image = image + HAZE_SHAPE[:, None, None] * haze[None]
    if cloudy:
        density = smooth_noise(rng, shape, 24)
        cloud = np.clip((density - rng.uniform(1.0, 1.8)) * 2.0, 0.0, 1.0)
        shift = rng.integers(4, 12, 2)
        shadow = ndimage.shift(cloud, shift, order=0, cval=0.0) * (1 - cloud)
        image = image * (1 - 0.55 * shadow[None])
        image = _mix(cloud, np.array(CLOUD), image)
    image = image * np.array(region.gain)[:, None, None] + offset
    read_noise = rng.normal(0.0, 0.004, image.shape)
    shot_noise = rng.normal(0.0, 0.01, image.shape) * np.sqrt(image.clip(0))  # grows with the signal
    image = image + read_noise + shot_noise
    return np.clip(np.round(image * SCALE), 1, SCALE).astype(np.uint16)


# ----------------------------------------------------------------------------------------------- files


def _profile(region: Region, origin: tuple[float, float], size: int) -> dict[str, Any]:
    """GeoTIFF profile of a square chip whose top-left corner is at ``origin`` (UTM metres)."""
    transform = Affine(PIXEL_SIZE, 0.0, origin[0], 0.0, -PIXEL_SIZE, origin[1])
    return {"crs": CRS.from_epsg(region.epsg), "transform": transform, "height": size, "width": size, "nodata": 0}


def _field_table(land: Landscape, region: Region, chip_id: str, profile: dict[str, Any]) -> gpd.GeoDataFrame:
    """The chip's field polygons in EPSG:4326 with their attributes, as they are written to the GeoPackage."""
    polygons, crops = land.fields()
    t = profile["transform"]
    to_map = np.array([t.a, t.e]), np.array([t.c, t.f])
    geometry = shapely.transform(np.array(polygons, dtype=object), lambda xy: xy * to_map[0] + to_map[1])
    table = gpd.GeoDataFrame(
        {
            "field_id": [f"{chip_id}-f{k:04d}" for k in range(len(polygons))],
            "crop": crops,
            "region": region.name,
            "chip_id": chip_id,
        },
        geometry=list(geometry),
        crs=profile["crs"],
    )
    return table.to_crs("EPSG:4326")


def label_mask(fields: gpd.GeoDataFrame, profile: dict[str, Any]) -> np.ndarray:
    """The 3-class label of a chip from its field polygons (all non-field when it has none)."""
    if len(fields) == 0:
        return np.zeros((profile["height"], profile["width"]), np.uint8)
    return rasterize_fields(fields.to_crs(profile["crs"]), profile, boundary_px=EDGE_PX)


def _write_chip(
    folder: Path, region_name: str, chip_id: str, split: str, size: int, origin: tuple[float, float], seed: list[int],
    dates: int = 0,
) -> tuple[dict[str, Any], gpd.GeoDataFrame, list[dict[str, Any]]]:
    """Generate, write and describe one chip or scene and its place on ``dates`` other dates (the archive);
    returns its catalog row, its fields and the archive's rows."""
    region = REGIONS[region_name]
    rng = np.random.default_rng(seed)
    land = lay_out(rng, region, size, size)
    image = observe(rng, region, render(rng, region, land, size, size), cloudy=rng.random() < 0.2)
    profile = _profile(region, origin, size)
    fields = _field_table(land, region, chip_id, profile)
    label = label_mask(fields, profile)
    kind = "scenes" if split == "scene" else "chips"
    row = {
        "id": chip_id,
        "region": region.name,
        "split": split,
        "image": f"{kind}/{chip_id}.tif",
        "label": f"labels/{chip_id}.tif",
        "fields": f"fields/{region.name}.gpkg",
        "n_fields": len(fields),
        "field_fraction": round(float((label > 0).mean()), 4),
        "edge_fraction": round(float((label == 2).mean()), 4),
        "mean_field_px": round(float((label > 0).sum() / max(len(fields), 1)), 1),
    }
    write_raster(folder / row["image"], image, {**profile, "dtype": "uint16"})
    write_raster(folder / row["label"], label, {**profile, "nodata": None})
    archive = [_write_archive_date(folder, land, region, chip_id, split, profile, seed, k) for k in range(1, dates + 1)]
    return row, fields, archive


def _write_archive_date(
    folder: Path, land: Landscape, region: Region, chip_id: str, split: str, profile: dict[str, Any], seed: list[int],
    date_index: int,
) -> dict[str, Any]:
    """Image one chip's laid-out place again on another date (:meth:`Acquisition.draw`); returns its archive row.

    Fields and labels are the chip's; the date's conditions and the rendering draw from ``seed + [date_index]``,
    never from the chip's own random stream.
    """
    size = profile["height"]
    rng = np.random.default_rng([*seed, date_index])
    date = Acquisition.draw(rng)
    seen = date.on(region)
    cloudy = bool(rng.random() < date.cloud_share)
    image = observe(rng, seen, render(rng, seen, land, size, size, date), cloudy=cloudy, offset=date.offset)
    row = {
        "id": f"{chip_id}-d{date_index}",
        "region": region.name,
        "split": split,
        "image": f"chips/{chip_id}-d{date_index}.tif",
        "label": f"../labels/{chip_id}.tif",
        "fields": f"../fields/{region.name}.gpkg",
        "chip_id": chip_id,
        "date": date_index,
        "cloudy": cloudy,
    }
    row |= {name: round(value, 4) for name, value in vars(date).items() if name not in ("gain", "cloud_share")}
    row["gain"] = round(float(np.mean(date.gain)), 4)
    write_raster(folder / ARCHIVE / row["image"], image, {**profile, "dtype": "uint16"})
    return row


def _chip_jobs(mode: str, seed: int) -> list[tuple]:
    """Arguments of :func:`_write_chip` for every chip and scene: id, split, size, origin, seed sequence.

    Chips of a region lie on a 2 km grid at the region's place; its scenes lie 40 km south of them.
    Every chip has its own random generator derived from ``(seed, region, split, index)``.
    """
    sizes = _sizes(mode)
    jobs = []
    for region_index, region in enumerate(REGIONS.values()):
        east, north = Transformer.from_crs(4326, region.epsg, always_xy=True).transform(*region.lon_lat)
        splits = [(split, i) for split in ("train", "val", "test") for i in range(sizes[split])]
        splits += [("scene", i) for i in range(sizes["scenes"])]
        for k, (split, i) in enumerate(splits):
            if split == "scene":
                size, origin = sizes["scene"], (round(east + 6000 * i), round(north - 40000))
            else:
                size, origin = sizes["chip"], (round(east + (k % 25) * 2000), round(north - (k // 25) * 2000))
            chip_seed = [seed, region_index, SPLITS.index(split), i]
            jobs.append((region.name, f"{region.name}-{split}-{i:04d}", split, size, origin, chip_seed))
    return jobs


def generate(folder: Path, mode: str, seed: int) -> None:
    """Write the field-scene dataset of ``mode`` into ``folder``: chips, scenes, labels, polygons, catalog.

    Chips are generated in parallel processes (one per CPU core, at most 8); the result does not depend
    on their number. Polygons go to one GeoPackage per region, ``fields/<region>.gpkg`` (layer ``fields``).
    """
    folder = Path(folder)
    jobs = [(*job, 0 if job[2] == "scene" else _sizes(mode)["dates"]) for job in _chip_jobs(mode, seed)]
    with worker_pool() as pool:
        results = list(pool.map(_write_chip, [folder] * len(jobs), *zip(*jobs, strict=True)))
    pd.DataFrame([row for *_, archive in results for row in archive]).to_csv(folder / ARCHIVE / "catalog.csv",
                                                                             index=False)  # fmt: skip
    rows = [row for row, _, _ in results]
    (folder / "fields").mkdir(exist_ok=True)
    for region in REGIONS:
        tables = [fields for row, fields, _ in results if row["region"] == region]
        pd.concat(tables, ignore_index=True).to_file(folder / f"fields/{region}.gpkg", layer="fields", driver="GPKG")
    pd.DataFrame(rows).to_csv(folder / "catalog.csv", index=False)


def ensure_fields(mode: str | None = None, seed: int | None = None) -> Path:
    """The field-scene dataset's folder, generated on first use (seconds in smoke/lite).

    ``mode`` and ``seed`` default to ``COURSE_MODE`` and ``COURSE_SEED``.
    """
    return ensure_generated(FAMILY, mode or get_mode(), course_seed() if seed is None else seed, generate)


def ndvi(
    image: np.ndarray | torch.Tensor,
    red: int | str = "red",
    nir: int | str = "nir",
    bands: Sequence[str] = BANDS,
) -> np.ndarray | torch.Tensor:
    """Normalised difference vegetation index ``(NIR - red) / (NIR + red)`` of an image ``[..., bands, H, W]``.

    Args:
        image: reflectance (or the stored uint16 values), not normalised images: the ratio needs a zero offset.
        red, nir: the red and near-infrared bands, each a band index or a name in ``bands``. The defaults fit
            the course's 4-band field chips (:data:`BANDS`: blue, green, red, NIR); for a 12-band Sentinel-2 stack
            pass ``red="B4", nir="B8", bands=S2_BANDS`` (:data:`course_utils.data.landscape.S2_BANDS`), or the
            indices ``red=3, nir=7``.
        bands: the names of the image's bands, in order; used to look up names and to check the band count.

    Raises:
        ValueError: a band name not in ``bands``, or a name used on an image whose band count is not ``len(bands)``
            (a 12-band stack with the 4-band default names would otherwise read the wrong bands).
        IndexError: a band index outside the image's bands.
    """
    image = image.float() if isinstance(image, torch.Tensor) else np.asarray(image, dtype=np.float32)
    count = image.shape[-3] if image.ndim >= 3 else 0
    positions = []
    for role, band in (("red", red), ("nir", nir)):
        if isinstance(band, str):
            if band not in bands:
                raise ValueError(f"{role} band {band!r} is not one of the bands {', '.join(bands)}; "
                                 f"pass bands= with the image's band names, or {role}= a band index.")  # fmt: skip
            if count != len(bands):
                raise ValueError(
                    f"image of shape {tuple(image.shape)} has {count} bands but bands= names {len(bands)} "
                    f"({', '.join(bands)}); pass the image's band names as bands= (e.g. S2_BANDS for a Sentinel-2 "
                    f"stack) or the band indices as red= and nir=."
                )
            band = bands.index(band)
        if not -count <= int(band) < count:
            raise IndexError(f"{role} band index {band} is outside the {count} bands of an image {tuple(image.shape)}.")
        positions.append(int(band))
    red_band, nir_band = image[..., positions[0], :, :], image[..., positions[1], :, :]
    return (nir_band - red_band) / (nir_band + red_band + 1e-6)


# ----------------------------------------------------------------------------------------------- dataset


class FieldChipDataset(torch.utils.data.Dataset):
    """Chips (or scenes) of the field family, read from their GeoTIFFs on each access.

    A sample is ``{"image": float32 [4, H, W] normalised, "mask": int64 [H, W] in {0, 1, 2}, "id": str}``.
    Images are normalised with per-band statistics of the training split of the same region selection,
    or with ``stats`` when given (e.g. one region's statistics applied to the other).

    Args:
        split: ``train``, ``val``, ``test`` or ``scene`` (the larger scenes, for tiled prediction).
        region: one of :data:`REGIONS`, or ``None`` for both.
        mode: data size; ``None`` reads ``COURSE_MODE``.
        seed: the dataset's seed.
        transform: callable taking and returning a sample dict, applied after normalisation.
        stats: ``(mean, std)`` per band, in stored units, instead of the training split's.
        folder: a folder in the same layout (``catalog.csv``, chips, labels) to read instead of the generated
            data, e.g. real chips converted by :func:`course_utils.data.real_fields.prepare_ftw`.

    Raises:
        ValueError: for an unknown split or region, or ``stats`` without 4 bands.
    """

    def __init__(
        self,
        split: str,
        region: str | None = None,
        mode: str | None = None,
        seed: int = 0,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        stats: tuple[np.ndarray, np.ndarray] | None = None,
        folder: Path | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}.")
        if folder is None and region is not None and region not in REGIONS:
            raise ValueError(f"region {region!r} is not one of {', '.join(REGIONS)} (or None for both).")
        self.folder = Path(folder) if folder is not None else ensure_fields(mode, seed)
        self.catalog = read_catalog(self.folder, split=split, region=region)
        if stats is None:
            train = read_catalog(self.folder, split="train", region=region)
            stats = band_statistics(read_raster(self.folder / path)[0] for path in train["image"])
        mean, std = (np.asarray(s, dtype=np.float32).reshape(-1) for s in stats)
        if mean.size != len(BANDS) or std.size != len(BANDS):
            raise ValueError(f"stats must hold {len(BANDS)} means and {len(BANDS)} stds ({', '.join(BANDS)}).")
        self.stats = (mean, std)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.catalog)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.catalog.iloc[index]
        image, _ = read_raster(self.folder / row["image"])
        mask, _ = read_raster(self.folder / row["label"])
        mean, std = self.stats
        normalised = (image.astype(np.float32) - mean[:, None, None]) / std[:, None, None]
        sample = {
            "image": torch.from_numpy(normalised),
            "mask": torch.from_numpy(mask[0].astype(np.int64)),
            "id": row["id"],
        }
        return self.transform(sample) if self.transform is not None else sample
