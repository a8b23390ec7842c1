"""Landscape patches: co-registered Sentinel-2, Sentinel-1, DEM and land cover (modelled on ben-ge / BigEarthNet-MM).

The physics, in the order the generator follows it:

1. **Terrain.** A fractal surface (power spectrum ~ 1/f^4) is the DEM; lakes fill its lowest basins and
   their surface is flat.
2. **Land cover** (ESA WorldCover codes) is laid out from the terrain: natural cover competes per pixel
   (forest on slopes, grass on flats, bare rock, moss and lichen above the tree line, snow above the snow
   line), cropland comes as rectangular parcels on flat ground, built-up areas as clusters, wetland on the
   low flats beside water. The climate zone sets the mix.
3. **Sentinel-2** reflectance is the per-class spectrum, mixed at class borders (a blur of the class
   abundances), changed by season (vegetation greenness: red-edge rise and high NIR when green, soil-like
   when dry; each crop parcel at its own growth stage), by within-class variation and by terrain shading.
   Clouds (bright, flagged in a mask, opaque a short way inside their edge: under them the ground is lost)
   and their shadows then hide parts of it.
4. **Sentinel-1** backscatter is the per-class radar brightness (water specular and dark, built-up double
   bounce and bright in VV, forest volume scattering and bright in VH), drawn per patch around its reference
   (moisture, roughness and structure vary, so the low-vegetation classes overlap), falling with the incidence
   angle, rising in VH with a crop's growth, brightened by wet soil after rain and by slopes facing the
   sensor, plus the noise floor and multiplicative speckle. Clouds do not touch it.

Patches are 128 x 128 pixels at 10 m (ben-ge's 120 x 120, rounded up so that a U-Net with five
downsamplings fits), GeoTIFFs in the UTM zone of their place. ``catalog.csv`` holds per-patch scalars
(climate zone, season, weather), the dominant class and the class fractions. A dataset holds 48 (smoke),
400 (lite) or 1000 (full) patches, split 70/15/15 into train/val/test.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pyproj import Transformer
from rasterio.transform import from_origin
from scipy import ndimage
from torch.utils.data import Dataset

from course_utils.config import by_mode, course_seed, data_family, get_mode
from course_utils.data.store import CATALOG, band_statistics, ensure_generated, read_catalog
from course_utils.geo import read_raster, write_raster

FAMILY = data_family("landscape")  # versioned: see course_utils.config.DATA_VERSIONS
PATCH_SIZE = 128
PIXEL_SIZE = 10.0  # metres
REFLECTANCE_SCALE = 10_000  # Sentinel-2 L2A digital numbers per unit reflectance
SPLITS = ("train", "val", "test")
MODALITIES = ("s2", "s1", "dem")
S2_BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B11", "B12")
S1_BANDS = ("VV", "VH")

TREE, SHRUB, GRASS, CROP, BUILT, BARE, SNOW, WATER, WETLAND, MOSS = 10, 20, 30, 40, 50, 60, 70, 80, 90, 100
#: ESA WorldCover codes used here and their names (95 mangroves is left out: the patches lie in Europe).
WORLDCOVER = {
    TREE: "tree_cover",
    SHRUB: "shrubland",
    GRASS: "grassland",
    CROP: "cropland",
    BUILT: "built_up",
    BARE: "bare_sparse",
    SNOW: "snow_ice",
    WATER: "water",
    WETLAND: "wetland",
    MOSS: "moss_lichen",
}
#: Class index -> WorldCover code; the models predict indices 0..K-1 in this order.
CLASS_CODES = tuple(WORLDCOVER)
CLASS_NAMES = tuple(WORLDCOVER.values())
NUM_CLASSES = len(CLASS_CODES)
#: The WorldCover map legend's colours, in class-index order (for plot.show_mask).
CLASS_COLOURS = (
    "#006400", "#ffbb22", "#ffff4c", "#f096ff", "#fa0000", "#b4b4b4", "#f0f0f0", "#0064c8", "#0096a0", "#fae6a0"
)  # fmt: skip
SEASONS = ("winter", "spring", "summer", "autumn")
CLOUD_CLEAR, CLOUD, CLOUD_SHADOW = 0, 1, 2  # values of the cloud mask

#: Sentinel-2 surface reflectance of each class, green vegetation in season (B1 ... B12 as in S2_BANDS).
GREEN_SPECTRA = {
    TREE: (0.020, 0.025, 0.045, 0.025, 0.075, 0.220, 0.270, 0.290, 0.300, 0.300, 0.150, 0.070),
    SHRUB: (0.035, 0.040, 0.065, 0.060, 0.110, 0.190, 0.220, 0.240, 0.250, 0.250, 0.220, 0.130),
    GRASS: (0.030, 0.035, 0.070, 0.045, 0.110, 0.260, 0.310, 0.330, 0.340, 0.340, 0.220, 0.110),
    CROP: (0.030, 0.035, 0.075, 0.040, 0.120, 0.300, 0.370, 0.400, 0.410, 0.410, 0.230, 0.110),
    BUILT: (0.100, 0.105, 0.115, 0.125, 0.140, 0.160, 0.170, 0.185, 0.190, 0.190, 0.210, 0.190),
    BARE: (0.080, 0.090, 0.130, 0.170, 0.200, 0.220, 0.240, 0.250, 0.270, 0.270, 0.330, 0.270),
    SNOW: (0.750, 0.760, 0.740, 0.720, 0.700, 0.680, 0.660, 0.640, 0.620, 0.550, 0.070, 0.050),
    WATER: (0.050, 0.055, 0.060, 0.040, 0.030, 0.020, 0.015, 0.012, 0.010, 0.010, 0.005, 0.003),
    WETLAND: (0.030, 0.035, 0.060, 0.045, 0.090, 0.170, 0.200, 0.220, 0.220, 0.220, 0.140, 0.070),
    MOSS: (0.045, 0.055, 0.080, 0.085, 0.120, 0.180, 0.210, 0.220, 0.230, 0.230, 0.220, 0.140),
}
#: Variants a patch may have instead: needle-leaved forest (darker NIR and SWIR) and bare rock (no soil SWIR rise).
CONIFER_SPECTRUM = (0.015, 0.020, 0.035, 0.020, 0.050, 0.140, 0.170, 0.180, 0.190, 0.190, 0.090, 0.040)
ROCK_SPECTRUM = (0.120, 0.130, 0.150, 0.160, 0.170, 0.180, 0.190, 0.190, 0.200, 0.200, 0.220, 0.200)
#: Dry, senescent vegetation (or the soil of a ploughed field): no red edge, brighter in red and SWIR.
DRY_SPECTRUM = (0.060, 0.070, 0.100, 0.130, 0.170, 0.210, 0.230, 0.250, 0.260, 0.260, 0.320, 0.240)
#: How far each class follows the season's greenness (0: not at all, 1: fully); crops follow their parcel.
SEASON_SENSITIVITY = {TREE: 0.5, SHRUB: 0.6, GRASS: 1.0, CROP: 1.0, WETLAND: 0.7, MOSS: 0.5}
CLOUD_SPECTRUM = (0.62, 0.63, 0.62, 0.62, 0.62, 0.62, 0.62, 0.61, 0.61, 0.55, 0.45, 0.35)
#: Sentinel-1 backscatter (VV, VH) in dB at the reference incidence angle, on a flat surface.
BACKSCATTER_DB = {
    TREE: (-7.5, -13.0),
    SHRUB: (-9.0, -15.5),
    GRASS: (-10.5, -17.5),
    CROP: (-11.0, -18.0),  # at the middle growth stage
    BUILT: (1.0, -9.0),
    BARE: (-13.0, -22.0),
    SNOW: (-14.0, -23.0),
    WATER: (-22.0, -29.0),
    WETLAND: (-8.5, -17.0),
    MOSS: (-12.0, -19.5),
}
#: How far a class's backscatter varies from patch to patch (dB, one standard deviation): soil moisture and
#: roughness, canopy water and structure, wet or dry snow, street orientation. The spread is why radar alone
#: confuses the low-vegetation classes (and bare ground with snow), while their optical spectra stay apart.
BACKSCATTER_SPREAD_DB = {
    TREE: 0.7, SHRUB: 1.0, GRASS: 1.0, CROP: 1.0, BUILT: 1.5, BARE: 1.2, SNOW: 2.0, WATER: 0.0, WETLAND: 1.2,
    MOSS: 1.0,
}  # fmt: skip
#: Change of backscatter with incidence angle (dB per degree, from REFERENCE_INCIDENCE): steep for surface
#: scattering (bare ground, water), gentle for volume scattering (forest).
INCIDENCE_SLOPE_DB = {
    TREE: -0.05, SHRUB: -0.1, GRASS: -0.15, CROP: -0.15, BUILT: -0.1, BARE: -0.2, SNOW: -0.15, WATER: -0.3,
    WETLAND: -0.1, MOSS: -0.15,
}  # fmt: skip
REFERENCE_INCIDENCE = 37.5  # degrees, the middle of the IW swath
#: (VV, VH) change of a crop parcel from bare soil (growth stage 0) to full canopy (1): VH rises with biomass.
CROP_STAGE_DB = (2.0, 6.0)
WET_SOIL_CLASSES = (GRASS, CROP, BARE, SHRUB)  # radar brightens when their soil is wet
NOISE_FLOOR_DB = -25.0  # Sentinel-1 IW noise-equivalent sigma nought
LOOKS = 4.4  # equivalent number of looks of a GRD product


@dataclass(frozen=True)
class Climate:
    """A Köppen climate zone and the place its patches come from.

    ``background`` weighs the natural classes that compete per pixel; ``extras`` is the chance that a patch
    holds each of cropland, built-up, water and wetland. Temperatures are at the zone's mid elevation.
    """

    place: str
    lon: float
    lat: float
    epsg: int
    elevation: tuple[float, float]  # lowest point of a patch, metres
    relief: tuple[float, float]  # height range within a patch, metres
    background: dict[int, float]
    extras: dict[int, float]
    mean_temperature: float  # degrees C
    temperature_amplitude: float  # half the summer-winter difference
    weekly_precipitation: float  # mm
    green_peak_day: int  # day of the year when vegetation is greenest
    min_greenness: float
    conifer_share: float  # chance that a patch's forest is needle-leaved
    acquisition_days: tuple[int, int] = (1, 365)  # days with sun enough for Sentinel-2 and no snow cover
    winter_rain: bool = False  # Mediterranean: rain in winter, dry summer
    tree_line: float = math.inf
    snow_line: float = math.inf


CLIMATES = {
    "Cfb": Climate(
        place="Normandy, France", lon=-0.6, lat=49.1, epsg=32630, elevation=(20, 250), relief=(20, 150),
        background={TREE: 1.0, SHRUB: 0.3, GRASS: 1.5, BARE: 0.05},
        extras={CROP: 0.6, BUILT: 0.35, WATER: 0.2, WETLAND: 0.15},
        mean_temperature=11.0, temperature_amplitude=7.0, weekly_precipitation=15.0,
        green_peak_day=170, min_greenness=0.55, conifer_share=0.2,
    ),
    "Dfb": Climate(
        place="Masuria, Poland", lon=21.6, lat=53.8, epsg=32634, elevation=(100, 200), relief=(10, 80),
        background={TREE: 1.5, SHRUB: 0.2, GRASS: 1.0, BARE: 0.05},
        extras={CROP: 0.6, BUILT: 0.2, WATER: 0.45, WETLAND: 0.35},
        mean_temperature=7.5, temperature_amplitude=10.0, weekly_precipitation=12.0,
        green_peak_day=190, min_greenness=0.15, conifer_share=0.6, acquisition_days=(60, 330),
    ),
    "Csa": Climate(
        place="Andalusia, Spain", lon=-4.6, lat=37.6, epsg=32630, elevation=(100, 900), relief=(20, 300),
        background={TREE: 0.6, SHRUB: 1.5, GRASS: 0.8, BARE: 0.6},
        extras={CROP: 0.6, BUILT: 0.3, WATER: 0.1, WETLAND: 0.05},
        mean_temperature=17.5, temperature_amplitude=8.0, weekly_precipitation=8.0, winter_rain=True,
        green_peak_day=90, min_greenness=0.2, conifer_share=0.3,
    ),
    "BSk": Climate(
        place="Central Anatolia, Turkey", lon=32.8, lat=39.0, epsg=32636, elevation=(850, 1300), relief=(10, 200),
        background={TREE: 0.1, SHRUB: 0.6, GRASS: 1.2, BARE: 1.0},
        extras={CROP: 0.6, BUILT: 0.25, WATER: 0.08},
        mean_temperature=11.5, temperature_amplitude=11.0, weekly_precipitation=6.0,
        green_peak_day=130, min_greenness=0.1, conifer_share=0.5,
    ),
    "ET": Climate(
        place="Bernese Alps, Switzerland", lon=8.3, lat=46.6, epsg=32632, elevation=(900, 2400), relief=(200, 700),
        background={TREE: 1.2, SHRUB: 0.3, GRASS: 1.0, BARE: 0.6, MOSS: 0.4},
        extras={BUILT: 0.1, WATER: 0.15, WETLAND: 0.05},
        mean_temperature=3.0, temperature_amplitude=8.0, weekly_precipitation=25.0,
        green_peak_day=200, min_greenness=0.1, conifer_share=0.8, acquisition_days=(100, 310),
        tree_line=2000.0, snow_line=2800.0,
    ),
    "Dfc": Climate(
        place="Lapland, Finland", lon=26.0, lat=67.6, epsg=32635, elevation=(150, 600), relief=(20, 250),
        background={TREE: 1.5, SHRUB: 0.6, GRASS: 0.3, BARE: 0.2, MOSS: 0.8},
        extras={BUILT: 0.05, WATER: 0.4, WETLAND: 0.5},
        mean_temperature=-0.5, temperature_amplitude=13.0, weekly_precipitation=10.0,
        green_peak_day=200, min_greenness=0.05, conifer_share=0.9, acquisition_days=(130, 270), tree_line=450.0,
    ),
}  # fmt: skip
FLAT_CLASSES = (CROP, BUILT, WATER, WETLAND, GRASS)  # patches dominated by these lie in gentle terrain


def codes_to_indices(codes: np.ndarray) -> np.ndarray:
    """Map WorldCover codes to class indices 0..K-1 (the order of ``CLASS_CODES``).

    Raises:
        ValueError: when the array holds a code that is not one of ``CLASS_CODES``.
    """
    lookup = np.full(256, -1, dtype=np.int64)
    lookup[list(CLASS_CODES)] = np.arange(NUM_CLASSES)
    indices = lookup[np.asarray(codes, dtype=np.uint8)]
    if (indices < 0).any():
        unknown = sorted(set(np.unique(np.asarray(codes)[indices < 0]).tolist()))
        raise ValueError(f"land-cover codes {unknown} are not WorldCover classes used here ({list(CLASS_CODES)}).")
    return indices


# ----------------------------------------------------------------------------------------------------------
# 1. Terrain and land cover
# ----------------------------------------------------------------------------------------------------------


def fractal_noise(rng: np.random.Generator, count: int, beta: float, size: int = PATCH_SIZE) -> np.ndarray:
    """``count`` Gaussian random fields ``[count, size, size]`` with power spectrum ~ 1/f^beta, standardised.

    beta ~ 4 looks like terrain; smaller beta gives smaller, patchier blobs.
    """
    shape = (count, size, size // 2 + 1)
    spectrum = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) * _power_law(size, beta)
    fields = np.fft.irfft2(spectrum, s=(size, size))
    fields -= fields.mean(axis=(1, 2), keepdims=True)
    return fields / fields.std(axis=(1, 2), keepdims=True)


@lru_cache(maxsize=16)
def _power_law(size: int, beta: float) -> np.ndarray:
    """Amplitude filter f^(-beta/2) on the grid of a real 2-D FFT, zero at the mean."""
    frequency = np.hypot(np.fft.fftfreq(size)[:, None], np.fft.rfftfreq(size)[None, :])
    frequency[0, 0] = np.inf
    return frequency ** (-beta / 2)


def make_terrain(climate: Climate, target: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The DEM (metres) and its lake mask; the patch's target class decides how high and rugged it is.

    Lakes fill the lowest basins: their share of the patch is drawn first, and their surface is flat.
    """
    low, high = climate.relief
    relief = rng.uniform(5, 40) if target in FLAT_CLASSES else rng.uniform(low, high)
    base_low, base_high = climate.elevation
    if target == SNOW:
        base_low = base_high = climate.snow_line - rng.uniform(0.1, 0.4) * relief
    elif target in (BARE, MOSS) and math.isfinite(climate.tree_line):
        base_low = max(base_low, climate.tree_line)
        base_high = max(base_low, min(base_high, climate.snow_line - relief))
    elif target == TREE and math.isfinite(climate.tree_line):
        base_high = max(base_low, min(base_high, climate.tree_line - relief))
    unit = fractal_noise(rng, 1, beta=4.0)[0]
    dem = rng.uniform(base_low, base_high) + relief * (unit - unit.min()) / (unit.max() - unit.min())
    lake_share = _overlay_share(WATER, climate, target, rng, dominant=(0.45, 0.75), minor=(0.02, 0.15))
    lakes = dem <= np.quantile(dem, lake_share) if lake_share > 0 else np.zeros(dem.shape, dtype=bool)
    if lakes.any():
        dem[lakes] = dem[lakes].max()
    return dem.astype(np.float32), lakes


def slope_degrees(dem: np.ndarray) -> np.ndarray:
    """Terrain slope in degrees from a DEM on the 10 m grid."""
    d_row, d_col = np.gradient(dem.astype(np.float64), PIXEL_SIZE)
    return np.degrees(np.arctan(np.hypot(d_row, d_col)))


def _overlay_share(
    code: int,
    climate: Climate,
    target: int,
    rng: np.random.Generator,
    dominant: tuple[float, float],
    minor: tuple[float, float],
) -> float:
    """Share of the patch an overlay class takes: large when it is the target, small when it just occurs."""
    if code == target:
        return rng.uniform(*dominant)
    if rng.random() < climate.extras.get(code, 0.0):
        return rng.uniform(*minor)
    return 0.0


def natural_cover(
    dem: np.ndarray, slope: np.ndarray, climate: Climate, target: int, rng: np.random.Generator
) -> np.ndarray:
    """WorldCover codes of the natural classes, which compete per pixel.

    Each class scores its climate weight (raised for the patch's target class), its terrain preference (forest
    on slopes and below the tree line, grass on flats, rock and moss above the tree line) and a smooth random
    field; the highest score wins.
    """
    classes = list(climate.background)
    weights = np.array([climate.background[c] * (8.0 if c == target else 1.0) for c in classes])
    steepness = slope / 30.0
    above_tree_line = 1.0 / (1.0 + np.exp(-(dem - climate.tree_line) / 50.0))
    preference = {
        TREE: 1.0 * steepness - 5.0 * above_tree_line,
        SHRUB: 0.5 * above_tree_line,
        GRASS: -0.8 * steepness,
        BARE: 1.5 * np.clip(steepness - 1.0, 0, None) + 1.5 * above_tree_line,
        MOSS: 2.0 * above_tree_line,
    }
    scores = np.log(weights)[:, None, None] + fractal_noise(rng, len(classes), beta=2.5)
    scores += np.stack([preference[c] for c in classes])
    return np.array(classes, dtype=np.uint8)[scores.argmax(axis=0)]


def crop_parcels(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Parcel ids on a rotated grid of rectangles 150-400 m long; 0 marks the 10 m margins between parcels."""
    angle = rng.uniform(0, np.pi)
    rows, cols = np.indices(shape, dtype=np.float64)
    along = cols * np.cos(angle) + rows * np.sin(angle)
    across = -cols * np.sin(angle) + rows * np.cos(angle)
    length, width = rng.uniform(15, 40), rng.uniform(10, 20)
    strip = np.floor(across / width).astype(np.int64)
    strip -= strip.min()
    staggered = along + rng.uniform(0, length, strip.max() + 1)[strip]  # parcel ends do not line up
    cell = np.floor(staggered / length).astype(np.int64)
    _, parcel = np.unique(strip * 10_000 + cell - cell.min(), return_inverse=True)
    parcel = parcel.reshape(shape) + 1
    margin = (parcel != np.roll(parcel, 1, axis=0)) | (parcel != np.roll(parcel, 1, axis=1))
    return np.where(margin, 0, parcel)


@dataclass
class Landscape:
    """One patch's ground truth: the land cover (WorldCover codes), the DEM and each pixel's crop stage."""

    codes: np.ndarray  # uint8 [H, W]
    dem: np.ndarray  # float32 [H, W], metres
    crop_greenness: np.ndarray  # float [H, W], growth stage of the crop parcel (0 bare soil .. 1 green)


def lay_out_land_cover(climate: Climate, target: int, rng: np.random.Generator) -> Landscape:
    """Terrain first, then natural cover, cropland parcels, built-up clusters, wetland, snow and water."""
    dem, lakes = make_terrain(climate, target, rng)
    slope = slope_degrees(dem)
    codes = natural_cover(dem, slope, climate, target, rng)
    land = ~lakes

    parcels = crop_parcels(dem.shape, rng)
    parcel_slope = np.bincount(parcels.ravel(), slope.ravel()) / np.maximum(np.bincount(parcels.ravel()), 1)
    crop_chance = 0.95 if target == CROP else climate.extras.get(CROP, 0.0) * rng.uniform(0, 1)
    is_crop = (rng.random(parcel_slope.size) < crop_chance) & (parcel_slope < 8.0)
    is_crop[0] = False  # margins stay hedges and grass
    crop_stage = rng.uniform(0, 1, parcel_slope.size)[parcels]
    codes[is_crop[parcels] & land] = CROP

    built_share = _overlay_share(BUILT, climate, target, rng, dominant=(0.5, 0.8), minor=(0.02, 0.15))
    if built_share > 0:
        settlement = fractal_noise(rng, 1, beta=3.0)[0] - slope / 10.0
        codes[land & (settlement >= np.quantile(settlement[land], 1 - built_share))] = BUILT

    wetland_share = _overlay_share(WETLAND, climate, target, rng, dominant=(0.45, 0.7), minor=(0.03, 0.15))
    if wetland_share > 0:
        lowest = np.quantile(dem, min(lakes.mean() + wetland_share, 1.0))
        codes[land & (dem <= lowest) & (slope < 10.0)] = WETLAND

    if math.isfinite(climate.snow_line):
        snow_height = dem + 80.0 * fractal_noise(rng, 1, beta=2.5)[0]
        codes[snow_height > climate.snow_line] = SNOW
    codes[lakes] = WATER
    return Landscape(codes=codes, dem=dem, crop_greenness=crop_stage)


# ----------------------------------------------------------------------------------------------------------
# 2. Season and weather
# ----------------------------------------------------------------------------------------------------------


def season_of(day_of_year: int) -> str:
    """Meteorological season of the northern hemisphere (winter: December to February)."""
    if 60 <= day_of_year < 152:
        return "spring"
    if 152 <= day_of_year < 244:
        return "summer"
    if 244 <= day_of_year < 335:
        return "autumn"
    return "winter"


def greenness_of_season(climate: Climate, day_of_year: int) -> float:
    """Vegetation greenness 0..1: a bell around the climate's green peak over its dry or cold minimum."""
    distance = abs((day_of_year - climate.green_peak_day + 182) % 365 - 182)
    return climate.min_greenness + (1 - climate.min_greenness) * math.exp(-0.5 * (distance / 60.0) ** 2)


def draw_weather(climate: Climate, day_of_year: int, elevation: float, rng: np.random.Generator) -> tuple[float, float]:
    """Air temperature (degrees C, mean of the previous 7 days) and precipitation (mm over the previous 7 days).

    Temperature follows the annual cycle (coldest mid-January) and cools 6.5 degrees per km above the zone's
    mid elevation; rain is gamma distributed, in the Mediterranean mostly in winter.
    """
    annual = math.cos(2 * math.pi * (day_of_year - 15) / 365)
    lapse = -0.0065 * (elevation - sum(climate.elevation) / 2)
    temperature = climate.mean_temperature - climate.temperature_amplitude * annual + lapse + rng.normal(0, 2.5)
    mean_rain = climate.weekly_precipitation * ((1 + 0.9 * annual) if climate.winter_rain else 1.0)
    precipitation = rng.gamma(0.8, mean_rain / 0.8)
    return round(float(temperature), 1), round(float(precipitation), 1)


# ----------------------------------------------------------------------------------------------------------
# 3. Sentinel-2 and clouds; 4. Sentinel-1
# ----------------------------------------------------------------------------------------------------------


def class_abundances(codes: np.ndarray, blur_px: float = 0.7) -> np.ndarray:
    """Per-class area fractions ``[K, H, W]``, blurred so that pixels on class borders are mixtures."""
    abundances = np.zeros((NUM_CLASSES, *codes.shape), dtype=np.float32)
    for index in np.unique(codes_to_indices(codes)):
        abundances[index] = ndimage.gaussian_filter((codes == CLASS_CODES[index]).astype(np.float32), blur_px)
    return abundances


def mix(abundances: np.ndarray, signatures: np.ndarray) -> np.ndarray:
    """Linear mixing: per-class signatures ``[K, B]`` weighted by abundances ``[K, H, W]`` -> ``[B, H, W]``."""
    return np.tensordot(signatures.T, abundances, axes=1)


def surface_normal_dot(dem: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Cosine between the terrain normal and a unit vector (east, north, up) towards the sun or the sensor."""
    d_row, d_col = np.gradient(dem.astype(np.float64), PIXEL_SIZE)
    normal = np.stack([-d_col, d_row, np.ones_like(dem, dtype=np.float64)])  # rows run south: d/dnorth = -d_row
    normal /= np.linalg.norm(normal, axis=0)
    return np.tensordot(direction, normal, axes=1)


def sun_direction(latitude: float, day_of_year: int) -> np.ndarray:
    """Unit vector to the sun at Sentinel-2's 10:30 overpass (azimuth about 150 degrees, south-east)."""
    declination = math.radians(23.44) * math.sin(2 * math.pi * (day_of_year - 81) / 365)
    lat, hour_angle = math.radians(latitude), math.radians(-22.5)
    sin_elevation = math.sin(lat) * math.sin(declination) + math.cos(lat) * math.cos(declination) * math.cos(hour_angle)
    elevation, azimuth = math.asin(max(sin_elevation, 0.1)), math.radians(150)
    return np.array([math.sin(azimuth) * math.cos(elevation), math.cos(azimuth) * math.cos(elevation), sin_elevation])


def patch_spectra(climate: Climate, land: Landscape, rng: np.random.Generator) -> np.ndarray:
    """The patch's in-season class spectra ``[K, 12]``: its forest may be needle-leaved, its bare ground rock.

    Bare ground is rock above the tree line (and sometimes below it), soil otherwise.
    """
    spectra = np.array([GREEN_SPECTRA[c] for c in CLASS_CODES], dtype=np.float32)
    if rng.random() < climate.conifer_share:
        spectra[CLASS_CODES.index(TREE)] = CONIFER_SPECTRUM
    if land.dem.mean() > climate.tree_line or rng.random() < 0.3:
        spectra[CLASS_CODES.index(BARE)] = ROCK_SPECTRUM
    return spectra


def sentinel2_reflectance(
    land: Landscape,
    abundances: np.ndarray,
    green: np.ndarray,
    greenness: float,
    sun: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Cloud-free surface reflectance ``[12, H, W]``: mixed class spectra, season, variation, shading, noise.

    Args:
        land: the patch's land cover and DEM.
        abundances: per-class area fractions ``[K, H, W]``.
        green: in-season class spectra ``[K, 12]`` (see :func:`patch_spectra`).
        greenness: the season's vegetation greenness 0..1.
        sun: unit vector towards the sun (terrain shading).
        rng: the patch's random generator.
    """
    dryness_shift = np.array([SEASON_SENSITIVITY.get(c, 0.0) for c in CLASS_CODES], dtype=np.float32)[:, None] * (
        np.array(DRY_SPECTRUM, dtype=np.float32) - green
    )
    vigour, brightness = fractal_noise(rng, 2, beta=2.0)
    pixel_greenness = np.clip(greenness + 0.25 * vigour, 0, 1)
    crop_pixels = land.codes == CROP
    pixel_greenness[crop_pixels] = np.clip(land.crop_greenness[crop_pixels] + 0.1 * vigour[crop_pixels], 0, 1)
    dryness = (1 - pixel_greenness).astype(np.float32)
    reflectance = mix(abundances, green) + dryness * mix(abundances, dryness_shift)
    shading = np.clip(surface_normal_dot(land.dem, sun) / sun[2], 0.3, 1.3)
    reflectance *= (shading * np.exp(0.15 * brightness)).astype(np.float32)
    reflectance += abundances[CLASS_CODES.index(WATER)] * rng.uniform(0, 0.04)  # turbid water: brighter visible
    return reflectance + 0.004 * rng.standard_normal(reflectance.shape, dtype=np.float32)  # sensor noise


def draw_cloud_cover(rng: np.random.Generator) -> float:
    """Target cloud cover: most patches clear, some partly cloudy, a few heavily cloudy."""
    kind = rng.random()
    if kind < 0.65:
        return 0.0
    return rng.uniform(0.05, 0.35) if kind < 0.9 else rng.uniform(0.5, 0.9)


def add_clouds(reflectance: np.ndarray, cover: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Blend bright clouds into a square reflectance ``[B, S, S]``, darken their shadows; return it and the mask.

    The mask flags clouds (1) and shadows (2); thin haze at cloud edges stays unflagged, as in real masks. A
    cloud is opaque a short way inside its edge (the optical depth of a cumulus is tens): under it the ground is
    lost, while shadows only darken it.
    """
    mask = np.full(reflectance.shape[1:], CLOUD_CLEAR, dtype=np.uint8)
    if cover == 0:
        return reflectance, mask
    field = fractal_noise(rng, 1, beta=3.0, size=reflectance.shape[-1])[0]
    threshold = np.quantile(field, 1 - cover)
    opacity = np.clip((field - threshold) / 0.15 + 0.3, 0, 1).astype(np.float32)
    opacity[field < threshold - 0.12] = 0
    shift = rng.integers(8, 25, size=2) * rng.choice([-1, 1], size=2)
    shadow = np.roll(opacity, tuple(shift), axis=(0, 1))
    cloud_spectrum = np.array(CLOUD_SPECTRUM, dtype=np.float32)[:, None, None]
    shaded = reflectance * (1 - 0.7 * shadow * (field < threshold))
    cloudy = (1 - opacity) * shaded + opacity * cloud_spectrum
    mask[(shadow > 0.2) & (field < threshold)] = CLOUD_SHADOW
    mask[field >= threshold] = CLOUD
    return cloudy, mask


def sentinel1_backscatter(
    land: Landscape,
    abundances: np.ndarray,
    incidence_deg: float,
    wetness: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """VV and VH in dB ``[2, H, W]``: class backscatter, its spread, incidence angle, wet soil, crop growth,
    terrain facing the sensor, the noise floor and speckle.

    Each class's backscatter is drawn per patch around its reference (:data:`BACKSCATTER_SPREAD_DB`, shared by VV
    and VH plus a smaller VH-only part) and falls with the incidence angle (:data:`INCIDENCE_SLOPE_DB`); a crop
    parcel's VH rises with its growth stage. The sensor looks east from the west (ascending orbit); a slope facing
    it returns more power. Speckle is multiplicative: gamma noise of :data:`LOOKS` looks on the power.
    """
    backscatter_db = np.array([BACKSCATTER_DB[c] for c in CLASS_CODES], dtype=np.float32)
    spread = np.array([BACKSCATTER_SPREAD_DB[c] for c in CLASS_CODES], dtype=np.float32)
    backscatter_db += (spread * rng.standard_normal(NUM_CLASSES))[:, None]
    backscatter_db[:, 1] += 0.5 * spread * rng.standard_normal(NUM_CLASSES)
    slope_db = np.array([INCIDENCE_SLOPE_DB[c] for c in CLASS_CODES], dtype=np.float32)
    backscatter_db += (slope_db * (incidence_deg - REFERENCE_INCIDENCE))[:, None]
    backscatter_db[[CLASS_CODES.index(c) for c in WET_SOIL_CLASSES]] += 2.5 * wetness
    backscatter_db[CLASS_CODES.index(WATER)] += rng.uniform(0, 5)  # wind roughens the water surface
    power = mix(abundances, 10 ** (backscatter_db / 10))
    crop = CLASS_CODES.index(CROP)
    stage_db = np.array(CROP_STAGE_DB, dtype=np.float32)[:, None, None] * (land.crop_greenness - 0.5)
    power += abundances[crop] * 10 ** (backscatter_db[crop][:, None, None] / 10) * (10 ** (stage_db / 10) - 1)
    theta = math.radians(incidence_deg)
    to_sensor = np.array([-math.sin(theta), 0.0, math.cos(theta)])
    local = np.clip(surface_normal_dot(land.dem, to_sensor) / math.cos(theta), 0.1, 2.0)
    texture = np.exp(0.15 * fractal_noise(rng, 1, beta=2.0)[0])
    power = power * (local * texture).astype(np.float32) + 10 ** (NOISE_FLOOR_DB / 10)
    speckle = rng.gamma(LOOKS, 1 / LOOKS, size=power.shape)
    return (10 * np.log10(power * speckle)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# Generation: one patch, then the dataset
# ----------------------------------------------------------------------------------------------------------


@dataclass
class PatchPlan:
    """What the dataset decides about a patch before it is drawn."""

    index: int
    target: int  # the class meant to dominate (the label is measured afterwards)
    climate: str
    split: str
    slot: int  # position among the climate's patches on its grid of places


def plan_patches(count: int, seed: int) -> list[PatchPlan]:
    """Targets cycle through the classes (balanced dominant labels); each goes to a climate where it occurs."""
    rng = np.random.default_rng(seed)
    targets = rng.permutation(np.arange(count) % NUM_CLASSES)
    n_train, n_val = round(0.7 * count), round(0.15 * count)
    splits = rng.permutation(["train"] * n_train + ["val"] * n_val + ["test"] * (count - n_train - n_val))
    slots = dict.fromkeys(CLIMATES, 0)
    plans = []
    for index, (target, split) in enumerate(zip(targets, splits, strict=True)):
        code = CLASS_CODES[target]
        options = [name for name, c in CLIMATES.items() if _occurs(code, c)]
        climate = options[rng.integers(len(options))]
        plans.append(PatchPlan(index, code, climate, str(split), slots[climate]))
        slots[climate] += 1
    return plans


def _occurs(code: int, climate: Climate) -> bool:
    if code == SNOW:
        return math.isfinite(climate.snow_line)
    return code in climate.background or code in climate.extras


@cache
def _to_utm(epsg: int) -> Transformer:
    return Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True)


def patch_profile(climate: Climate, slot: int, rng: np.random.Generator) -> dict[str, Any]:
    """GeoTIFF profile of a patch: its place on a 2 km grid around the climate's place, in its UTM zone."""
    east, north = _to_utm(climate.epsg).transform(climate.lon, climate.lat)
    column, row = slot % 25, slot // 25
    jitter = rng.integers(0, 60, size=2) * PIXEL_SIZE
    west = round(east / PIXEL_SIZE) * PIXEL_SIZE + column * 2000.0 + jitter[0]
    top = round(north / PIXEL_SIZE) * PIXEL_SIZE - row * 2000.0 - jitter[1]
    return {"crs": f"EPSG:{climate.epsg}", "transform": from_origin(west, top, PIXEL_SIZE, PIXEL_SIZE), "nodata": None}


def generate_patch(plan: PatchPlan, folder: Path, seed: int) -> dict[str, Any]:
    """Draw one patch, write its five GeoTIFFs under ``folder`` and return its catalog row."""
    rng = np.random.default_rng([seed, plan.index])
    climate = CLIMATES[plan.climate]
    land = lay_out_land_cover(climate, plan.target, rng)
    day = int(rng.integers(climate.acquisition_days[0], climate.acquisition_days[1] + 1))
    temperature, precipitation = draw_weather(climate, day, float(land.dem.mean()), rng)
    abundances = class_abundances(land.codes)
    spectra = patch_spectra(climate, land, rng)
    greenness, sun = greenness_of_season(climate, day), sun_direction(climate.lat, day)
    clear = sentinel2_reflectance(land, abundances, spectra, greenness, sun, rng)
    s2, cloud = add_clouds(clear, draw_cloud_cover(rng), rng)
    wetness = 1 - math.exp(-precipitation / 20)
    s1 = sentinel1_backscatter(land, abundances, rng.uniform(30, 45), wetness, rng)

    profile = patch_profile(climate, plan.slot, rng)
    name = f"patch_{plan.index:05d}"
    paths = {key: f"{key}/{name}.tif" for key in ("s2", "s1", "dem", "landcover", "cloud")}
    digital_numbers = np.clip(np.round(s2 * REFLECTANCE_SCALE), 0, 65535).astype(np.uint16)
    for key, array in (("s2", digital_numbers), ("s1", s1), ("dem", land.dem), ("landcover", land.codes),
                       ("cloud", cloud)):  # fmt: skip
        write_raster(folder / paths[key], array, profile)

    fractions = np.bincount(codes_to_indices(land.codes).ravel(), minlength=NUM_CLASSES) / land.codes.size
    centre_east, centre_north = profile["transform"] @ (PATCH_SIZE / 2, PATCH_SIZE / 2)
    lon, lat = _to_utm(climate.epsg).transform(centre_east, centre_north, direction="INVERSE")
    return {
        "id": name,
        "region": plan.climate,
        "place": climate.place,
        "split": plan.split,
        **paths,
        "crs": profile["crs"],
        "lon": round(lon, 5),
        "lat": round(lat, 5),
        "day_of_year": day,
        "season": season_of(day),
        "air_temperature": temperature,
        "precipitation": precipitation,
        "cloud_cover": round(float((cloud != CLOUD_CLEAR).mean()), 4),
        "label": int(fractions.argmax()),
        **{f"frac_{name}": round(float(f), 5) for name, f in zip(CLASS_NAMES, fractions, strict=True)},
    }


def patch_count(mode: str) -> int:
    """How many patches a mode's dataset holds."""
    return by_mode(mode, smoke=48, lite=400, full=1000)


def generate(folder: Path, mode: str, seed: int) -> None:
    """Write a landscape dataset of the mode's size into ``folder``: GeoTIFFs per modality and ``catalog.csv``."""
    rows = [generate_patch(plan, Path(folder), seed) for plan in plan_patches(patch_count(mode), seed)]
    pd.DataFrame(rows).to_csv(Path(folder) / CATALOG, index=False)


def ensure_landscape(mode: str | None = None, seed: int | None = None) -> Path:
    """The folder of the landscape dataset, generated on first use.

    ``mode`` and ``seed`` default to ``COURSE_MODE`` and ``COURSE_SEED``.
    """
    return ensure_generated(FAMILY, mode or get_mode(), course_seed() if seed is None else seed, generate)


# ----------------------------------------------------------------------------------------------------------
# Reading: Dataset and per-pixel samples
# ----------------------------------------------------------------------------------------------------------


def read_modality(folder: Path, relative_path: str, modality: str) -> np.ndarray:
    """A modality's raster as float32 ``[C, H, W]`` in physical units (S2 reflectance 0..1, S1 dB, DEM m)."""
    array, _ = read_raster(Path(folder) / relative_path)
    array = array.astype(np.float32)
    return array / REFLECTANCE_SCALE if modality == "s2" else array


def _check_choice(kind: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{kind} {value!r} is not one of {', '.join(allowed)}; pass one of those.")


@lru_cache(maxsize=8)
def training_statistics(folder: Path, max_patches: int = 256) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-band mean and std of each modality (S2 reflectance, S1 dB, DEM m) and of the weather scalars.

    Computed on the training split only (up to ``max_patches`` patches, evenly spaced); apply them to every split.
    Modalities without a column in the catalog are left out. The result is cached per folder for the session.
    """
    train = read_catalog(folder, split="train")
    subset = train.iloc[np.linspace(0, len(train) - 1, min(len(train), max_patches)).astype(int)]
    present = [m for m in MODALITIES if m in train.columns]
    stats = {m: band_statistics(read_modality(folder, p, m) for p in subset[m]) for m in present}
    weather = train[["air_temperature", "precipitation"]].to_numpy(np.float32).T[:, :, None]
    stats["weather"] = band_statistics([weather])
    return stats


CATALOG_COLUMNS = (
    "id", "split", "landcover", "cloud", "region", "season", "air_temperature", "precipitation", "label",
    *(f"frac_{name}" for name in CLASS_NAMES),
)  # fmt: skip
"""The catalog columns :class:`LandscapeDataset` reads besides the paths of its modalities (``s2``, ``s1``, ``dem``)."""


def patch_scalars(row: pd.Series, weather_stats: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """One-hot climate zone and season, then standardised air temperature and precipitation."""
    climate = np.array([row["region"] == name for name in CLIMATES], dtype=np.float32)
    season = np.array([row["season"] == name for name in SEASONS], dtype=np.float32)
    mean, std = weather_stats
    weather = (np.array([row["air_temperature"], row["precipitation"]], dtype=np.float32) - mean) / std
    return np.concatenate([climate, season, weather]).astype(np.float32)


class LandscapeDataset(Dataset):
    """Landscape patches of one split as dicts of tensors, read from the GeoTIFFs on access.

    A sample holds the requested modalities among ``s2`` (12 bands), ``s1`` (VV, VH in dB) and ``dem``, each
    normalised per band with the training split's statistics, and ``landcover`` (class indices ``[H, W]``),
    ``label`` (dominant class index), ``fractions`` (``[K]``), ``scalars`` (one-hot climate and season,
    standardised weather), ``cloud`` (1 where cloud or shadow hides S2, ``[1, H, W]``) and ``id``.

    Args:
        split: ``train``, ``val`` or ``test``.
        mode: dataset size (default: ``COURSE_MODE``); the data is generated on first use.
        seed: the dataset's seed.
        modalities: which of ``s2``, ``s1``, ``dem`` to load.
        transform: called on the sample dict, returns a dict (augmentations).
        stats: ``{modality: (mean, std)}`` plus ``"weather"`` to use instead of the training split's.
        folder: a folder in the same layout to read instead of the generated data, e.g. real co-registered
            patches: :data:`~course_utils.data.store.CATALOG` with a column per modality and those of
            :data:`CATALOG_COLUMNS` (paths relative to the folder), and one GeoTIFF per patch and modality, all on
            one grid (S2 as reflectance x 10 000, with as many bands as its files hold; land cover in WorldCover
            codes). A ``region`` outside :data:`CLIMATES` or a ``season`` outside :data:`SEASONS` gets an
            all-zero one-hot in ``scalars``.

    Raises:
        ValueError: for an unknown split or modality, a catalog without a column the samples need, or ``stats``
            without an entry for each modality and the weather.
    """

    def __init__(
        self,
        split: str,
        mode: str | None = None,
        seed: int = 0,
        modalities: tuple[str, ...] = ("s2", "s1", "dem"),
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        stats: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
        folder: Path | None = None,
    ) -> None:
        _check_choice("split", split, SPLITS)
        if not modalities:
            raise ValueError(f"modalities is empty; pass some of {', '.join(MODALITIES)}.")
        for modality in modalities:
            _check_choice("modality", modality, MODALITIES)
        self.folder = Path(folder) if folder is not None else ensure_landscape(mode, seed)
        self.catalog = read_catalog(self.folder, split=split)
        needed = (*modalities, *CATALOG_COLUMNS)
        missing = [column for column in needed if column not in self.catalog.columns]
        if missing:
            raise ValueError(
                f"{self.folder / CATALOG} has no column {', '.join(missing)}; a patch's row needs {', '.join(needed)} "
                "(or leave out the modalities it lacks)."
            )
        self.modalities = tuple(modalities)
        self.transform = transform
        self.stats = stats if stats is not None else training_statistics(self.folder)
        missing = [key for key in (*self.modalities, "weather") if key not in self.stats]
        if missing:
            raise ValueError(f"stats lacks {missing}; give (mean, std) per band for each, e.g. from a training set.")

    def __len__(self) -> int:
        return len(self.catalog)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.catalog.iloc[index]
        sample: dict[str, Any] = {}
        for modality in self.modalities:
            mean, std = self.stats[modality]
            array = (read_modality(self.folder, row[modality], modality) - mean[:, None, None]) / std[:, None, None]
            sample[modality] = torch.from_numpy(array.astype(np.float32))
        codes, _ = read_raster(self.folder / row["landcover"])
        cloud, _ = read_raster(self.folder / row["cloud"])
        fractions = row[[f"frac_{name}" for name in CLASS_NAMES]].to_numpy(np.float32)
        sample.update(
            landcover=torch.from_numpy(codes_to_indices(codes[0])),
            label=torch.tensor(int(row["label"]), dtype=torch.int64),
            fractions=torch.from_numpy(fractions),
            scalars=torch.from_numpy(patch_scalars(row, self.stats["weather"])),
            cloud=torch.from_numpy((cloud != CLOUD_CLEAR).astype(np.float32)),
            id=str(row["id"]),
        )
        return self.transform(sample) if self.transform is not None else sample


def sample_pixels(split: str, n: int, mode: str | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random cloud-free pixels of a split: S2 spectra ``X`` (reflectance, float32 ``[n, 12]``), classes ``y``.

    Every patch contributes about equally; the dataset's ``seed`` also seeds the draw.

    Raises:
        ValueError: for an unknown split, ``n < 1``, or when the split has fewer than ``n`` clear pixels.
    """
    _check_choice("split", split, SPLITS)
    if n < 1:
        raise ValueError(f"n must be a positive number of pixels, got {n}.")
    folder = ensure_landscape(mode, seed)
    table = read_catalog(folder, split=split)
    rng = np.random.default_rng([seed, n])
    per_patch = -(-n // len(table))
    spectra, classes = [], []
    for _, row in table.iterrows():
        s2 = read_modality(folder, row["s2"], "s2").reshape(len(S2_BANDS), -1)
        codes, _ = read_raster(folder / row["landcover"])
        cloud, _ = read_raster(folder / row["cloud"])
        clear = np.flatnonzero(cloud.ravel() == CLOUD_CLEAR)
        chosen = rng.choice(clear, size=min(per_patch, clear.size), replace=False)
        spectra.append(s2[:, chosen].T)
        classes.append(codes_to_indices(codes.ravel()[chosen]))
    X, y = np.concatenate(spectra), np.concatenate(classes)
    if len(y) < n:
        raise ValueError(f"the {split} split has only {len(y)} cloud-free pixels at this sampling; ask for fewer.")
    keep = rng.choice(len(y), size=n, replace=False)
    return X[keep].astype(np.float32), y[keep]
