"""Parcel time series: Sentinel-2 reflectances of crop parcels over one season (modelled on BreizhCrops).

The physics, in the order the generator applies it:

1. **Phenology.** Each crop covers its parcel with a green canopy that grows and senesces along a
   double-logistic curve: ``green = winter + peak * rise(t) * (1 - fall(t))``. Winter cereals are
   green in January and harvested in summer; maize and sunflower start from bare soil in late spring;
   rapeseed flowers yellow in April; orchards and nut trees keep a green understorey and leaf out/off;
   meadows stay green and drop at each mowing. Two pairs of look-alikes differ by their timing only: barley
   follows wheat's curve about two weeks earlier, sunflower corn's about three weeks earlier. Senesced
   canopy turns into dry matter (straw) until the harvest removes it. Every parcel shifts its whole season
   (about a week either way) and scales its peak and its winter cover.
2. **Spectral mixing.** A parcel's surface reflectance mixes four endmember spectra by their cover:
   soil (brightness per parcel, darker when wet in winter), green vegetation (red absorption, red-edge,
   NIR plateau, SWIR water absorption), dry vegetation and yellow flowers.
3. **Atmosphere (L1C-like top of atmosphere).** Rayleigh scattering brightens the blue bands, haze (a
   per-date aerosol optical depth) adds a blue-weighted veil, water vapour absorbs B9 and nearly all of
   B10 (the cirrus band).
4. **Clouds.** Each acquisition date has a cloud probability (cloudier in winter). Cloudy observations
   are bright and spectrally flat; most are flagged in the ``cloud`` column, some thin ones are missed
   and stay in as unflagged noise.

Region ``A`` lies in Brittany, region ``B`` in Charente (further south-east, both in UTM zone 30N): B's
phenology is about 18 days earlier, its fields are larger, its soils brighter, its skies clearer and its
crop mix different, so a model trained on A meets a domain shift on B.

Files (in the dataset folder): ``observations_<region>.parquet`` (long format: ``parcel_id, date, doy,
cloud, B1..B12``; reflectances stored as ``uint16`` = reflectance x 10 000, as in Sentinel-2 products),
``parcels.gpkg`` (EPSG:4326 polygons with ``parcel_id, crop, label, region, split, area_m2``) and
``catalog.csv`` (one row per parcel). :class:`ParcelSeriesDataset` reads any folder in this layout, whatever its
bands: every column of the observations but ``parcel_id, date, doy, cloud`` is a band (e.g. 1 for an NDVI series,
3 or 4 for Formosat-2, 10 for Sentinel-2 L2A).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import torch
from pyproj import Transformer
from torch.utils.data import Dataset

from course_utils.config import by_mode, course_seed, data_family, get_mode
from course_utils.data.store import band_statistics, ensure_generated, read_catalog

FAMILY = data_family("parcels")  # versioned: see course_utils.config.DATA_VERSIONS
"""The cache folder's family name; the suffix is the generator's version, raised whenever its output changes."""
YEAR = 2017
SPLITS = ("train", "val", "test")
REFLECTANCE_SCALE = 10_000
"""Stored digital numbers are reflectance x 10 000 (``uint16``), like Sentinel-2 L1C/L2A products."""

S2_BANDS_13 = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
"""The bands the generator writes (Sentinel-2 L1C, in wavelength order)."""
NON_BAND_COLUMNS = ("parcel_id", "date", "doy", "cloud")
"""The columns of an observation table that are not bands."""
WAVELENGTHS_NM = np.array([443, 490, 560, 665, 705, 740, 783, 842, 865, 945, 1375, 1610, 2190], dtype=float)

# Surface reflectance endmembers, one value per band of S2_BANDS_13.
SOIL = np.array([0.07, 0.09, 0.13, 0.18, 0.20, 0.22, 0.24, 0.26, 0.27, 0.28, 0.33, 0.36, 0.30])
GREEN_VEGETATION = np.array([0.02, 0.03, 0.07, 0.025, 0.10, 0.30, 0.42, 0.46, 0.47, 0.45, 0.10, 0.20, 0.09])
DRY_VEGETATION = np.array([0.05, 0.07, 0.12, 0.16, 0.20, 0.24, 0.27, 0.30, 0.31, 0.32, 0.30, 0.38, 0.28])
YELLOW_FLOWERS = np.array([0.03, 0.04, 0.20, 0.12, 0.20, 0.30, 0.36, 0.40, 0.41, 0.40, 0.12, 0.22, 0.11])
# Clouds are bright and flat; ice/water absorb a little in B9, B11, B12; high clouds show in B10 (cirrus).
CLOUD_SHAPE = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.3, 0.75, 0.55])
RAYLEIGH = 0.07 * (443.0 / WAVELENGTHS_NM) ** 4
# Fraction of the surface signal that passes the water vapour: B9 is partly absorbed, B10 almost fully.
WATER_VAPOUR_BAND = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], dtype=bool)
B10_TRANSMITTANCE = 0.01


@dataclass(frozen=True)
class Phenology:
    """A crop's season in region A (days of year); each parcel varies around it.

    Attributes:
        winter_green: green cover before the green-up (autumn-sown crops, understorey, grass).
        peak_green: extra green cover at the peak of the season.
        green_up: day of year of half green-up.
        senescence: day of year of half senescence.
        harvest: day of year the canopy is removed; ``inf`` for perennials.
        regrowth: green cover the next crop (or weeds) reaches by December after the harvest.
        annual: ``True`` when the whole canopy senesces (crops); perennials keep ``winter_green``.
        cuts: how many mowing events a parcel has (fewest, most).
        flowering: peak cover of yellow flowers (rapeseed in April).
    """

    winter_green: float
    peak_green: float
    green_up: float
    senescence: float
    harvest: float = np.inf
    regrowth: float = 0.05
    annual: bool = True
    cuts: tuple[int, int] = (0, 0)
    flowering: float = 0.0


PHENOLOGY: dict[str, Phenology] = {
    "barley": Phenology(0.22, 0.62, green_up=66, senescence=149, harvest=187, regrowth=0.22),
    "wheat": Phenology(0.22, 0.62, green_up=82, senescence=165, harvest=203, regrowth=0.22),
    "rapeseed": Phenology(0.35, 0.50, green_up=58, senescence=152, harvest=192, regrowth=0.30, flowering=0.45),
    "corn": Phenology(0.00, 0.80, green_up=172, senescence=250, harvest=280),
    "sunflower": Phenology(0.00, 0.76, green_up=152, senescence=230, harvest=260),
    "orchards": Phenology(0.35, 0.35, green_up=105, senescence=295, annual=False),
    "nuts": Phenology(0.12, 0.55, green_up=125, senescence=285, annual=False),
    "permanent_meadows": Phenology(0.52, 0.32, green_up=75, senescence=298, annual=False, cuts=(1, 3)),
    "temporary_meadows": Phenology(0.47, 0.38, green_up=72, senescence=292, annual=False, cuts=(2, 4)),
}
CROP_CLASSES: tuple[str, ...] = tuple(PHENOLOGY)
"""Class index -> crop name (the ``label`` column holds the index)."""
MAX_CUTS = max(p.cuts[1] for p in PHENOLOGY.values())


@dataclass(frozen=True)
class Region:
    """Where a region lies and how its fields, seasons and skies differ."""

    name: str
    lon_lat: tuple[float, float]
    field_size_m: float
    phenology_shift_days: float
    soil_brightness: float
    cloudiness: float
    orbit_offset_days: int
    class_share: tuple[float, ...]  # in the order of CROP_CLASSES
    parcel_share: float  # fraction of all parcels


REGIONS = (
    Region(
        name="A",  # central Brittany: small fields, cloudy, meadows and maize
        lon_lat=(-2.95, 48.15),
        field_size_m=130.0,
        phenology_shift_days=0.0,
        soil_brightness=1.0,
        cloudiness=0.55,
        orbit_offset_days=2,
        class_share=(8, 18, 4, 20, 1, 2, 0.5, 22, 24),
        parcel_share=0.6,
    ),
    Region(
        name="B",  # Charente: larger fields, brighter calcareous soils, earlier season, sunflower and walnuts
        lon_lat=(-0.35, 45.65),
        field_size_m=230.0,
        phenology_shift_days=-18.0,
        soil_brightness=1.25,
        cloudiness=0.40,
        orbit_offset_days=4,
        class_share=(10, 20, 8, 18, 12, 3, 3, 14, 12),
        parcel_share=0.4,
    ),
)
UTM_CRS = "EPSG:32630"
N_PARCELS = {"smoke": 300, "lite": 3000, "full": 15000}
"""Parcels of both regions together, split 70/15/15 (rare classes get extra test parcels, see below)."""
MIN_PARCELS_PER_CLASS = 6  # per region, so every class has >= 4 train and 1 val parcels
MIN_TEST_PER_CLASS = {"smoke": 1, "lite": 60, "full": 150}
"""Test parcels per class and region at least: enough for per-class claims even for the rarest crops."""
OBSERVATIONS_PER_PARCEL = (15, 45)
FLAGGED_SHARE = 0.7  # of the cloudy observations; the rest are missed by the cloud mask
SEASON_SPREAD_DAYS = 6.0
"""Standard deviation of a parcel's shift of its whole season (sowing date, variety, microclimate)."""
AMPLITUDE_RANGE = (0.6, 1.15)
"""The range of the factor on a parcel's peak green cover (density, vigour)."""
COVER_RANGE = (0.5, 1.5)
"""The range of the factor on a parcel's winter and regrowth cover (weeds, cover crops, sowing density)."""


def ensure_parcels(mode: str | None = None, seed: int | None = None) -> Path:
    """The parcel dataset's folder, generated if missing.

    ``mode`` and ``seed`` default to ``COURSE_MODE`` and ``COURSE_SEED``.
    """
    return ensure_generated(FAMILY, mode or get_mode(), course_seed() if seed is None else seed, generate)


def generate(folder: Path, mode: str, seed: int) -> None:
    """Write the parcel dataset of ``mode``'s size into ``folder`` (observations, parcels, catalog).

    Args:
        folder: an empty folder (``ensure_parcels`` passes a temporary one and renames it when done).
        mode: ``smoke`` (~300 parcels), ``lite`` (~3000) or ``full`` (~15000).
        seed: the same seed gives the same files; different seeds give different data.
    """
    n_parcels, min_test = by_mode(mode, **N_PARCELS), by_mode(mode, **MIN_TEST_PER_CLASS)
    region_rngs = np.random.default_rng(seed).spawn(len(REGIONS))
    folder = Path(folder)
    parcels, catalogs = [], []
    for region, rng in zip(REGIONS, region_rngs, strict=True):
        table = _parcel_table(region, round(n_parcels * region.parcel_share), min_test, rng)
        observations = _observations(region, table, rng)
        observations_file = f"observations_{region.name}.parquet"
        observations.to_parquet(folder / observations_file, index=False)
        parcels.append(_parcel_polygons(region, table, rng))
        counts = observations.groupby("parcel_id", sort=False)["cloud"].agg(["size", "sum"])
        catalogs.append(
            pd.DataFrame(
                {
                    "id": table["parcel_id"],
                    "region": region.name,
                    "split": table["split"],
                    "crop": table["crop"],
                    "label": table["label"],
                    "n_obs": counts["size"].reindex(table["parcel_id"]).to_numpy(),
                    "n_cloudy": counts["sum"].reindex(table["parcel_id"]).to_numpy(),
                    "observations": observations_file,
                    "parcels": "parcels.gpkg",
                }
            )
        )
    pd.concat(parcels, ignore_index=True).to_file(folder / "parcels.gpkg", layer="parcels", driver="GPKG")
    pd.concat(catalogs, ignore_index=True).to_csv(folder / "catalog.csv", index=False)


def _class_counts(n: int, share: tuple[float, ...]) -> np.ndarray:
    """Parcels per class: a minimum for every class, the rest by share (largest remainders)."""
    spare = n - MIN_PARCELS_PER_CLASS * len(share)
    if spare < 0:
        raise ValueError(f"{n} parcels cannot hold {MIN_PARCELS_PER_CLASS} of each of {len(share)} classes.")
    exact = spare * np.asarray(share) / np.sum(share)
    counts = np.floor(exact).astype(int)
    counts[np.argsort(counts - exact)[: spare - counts.sum()]] += 1
    return counts + MIN_PARCELS_PER_CLASS


def _parcel_table(region: Region, n: int, min_test: int, rng: np.random.Generator) -> pd.DataFrame:
    """Crop, split and the per-parcel phenology of every parcel in ``region``.

    ``n`` parcels are split 70/15/15 per class; a class with fewer than ``min_test`` test parcels gets more
    test parcels on top, so that the rarest crops are still tested on enough parcels.
    """
    labels, splits = [], []
    for label, count in enumerate(_class_counts(n, region.class_share)):
        n_eval = max(1, round(0.15 * count))
        n_test = max(n_eval, min_test)
        labels += [label] * (count - n_eval + n_test)
        splits += ["val"] * n_eval + ["test"] * n_test + ["train"] * (count - 2 * n_eval)
    n = len(labels)
    order = rng.permutation(n)
    labels, splits = np.asarray(labels)[order], np.asarray(splits)[order]
    table = pd.DataFrame(
        {
            "parcel_id": [f"{region.name}{i:05d}" for i in range(n)],
            "crop": np.asarray(CROP_CLASSES)[labels],
            "label": labels,
            "split": splits,
        }
    )
    for name in ("winter_green", "peak_green", "green_up", "senescence", "harvest", "regrowth", "flowering"):
        table[name] = [getattr(PHENOLOGY[c], name) for c in table["crop"]]
    table["annual"] = [PHENOLOGY[c].annual for c in table["crop"]]
    # Per-parcel variation: sowing/green-up shift, amplitude, the steepness of the curves and soil colour.
    shift = region.phenology_shift_days + rng.normal(0, SEASON_SPREAD_DAYS, n)
    for name in ("green_up", "senescence", "harvest"):
        table[name] += shift
    table["harvest"] += rng.normal(0, 7, n)
    table["peak_green"] *= rng.uniform(*AMPLITUDE_RANGE, n)
    cover = rng.uniform(*COVER_RANGE, n)
    table["winter_green"] *= cover
    table["regrowth"] *= cover
    table["width_up"] = 8 * rng.uniform(0.8, 1.25, n)
    table["width_down"] = 10 * rng.uniform(0.8, 1.25, n)
    table["soil_brightness"] = region.soil_brightness * rng.uniform(0.75, 1.3, n)
    # Mowing: the first cut in May, then every 5-8 weeks.
    n_cuts = np.array([rng.integers(PHENOLOGY[c].cuts[0], PHENOLOGY[c].cuts[1] + 1) for c in table["crop"]])
    cut_days = shift[:, None] + rng.uniform(120, 145, (n, 1)) + np.cumsum(rng.uniform(35, 55, (n, MAX_CUTS)), 1) - 45
    cut_days[np.arange(MAX_CUTS)[None, :] >= n_cuts[:, None]] = np.inf
    for k in range(MAX_CUTS):
        table[f"cut_{k}"] = cut_days[:, k]
    return table


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def cover_fractions(doy: np.ndarray, p: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Green, dry and flower cover of parcels with phenology ``p`` (one row per observation) on days ``doy``.

    Returns:
        ``(green, dry, flowers)``, each in 0..1 with ``green + dry + flowers <= 1`` (the rest is soil).
    """
    annual = p["annual"].to_numpy(float)
    rise = _sigmoid((doy - p["green_up"].to_numpy()) / p["width_up"].to_numpy())
    fall = _sigmoid((doy - p["senescence"].to_numpy()) / p["width_down"].to_numpy())
    winter, peak = p["winter_green"].to_numpy(), p["peak_green"].to_numpy()
    canopy = winter * annual + peak * rise  # the part that senesces
    green = winter * (1 - annual) + canopy * (1 - fall)
    dry = canopy * fall * np.where(annual > 0, 1.0, 0.3)  # straw for crops, leaf litter for perennials
    for k in range(MAX_CUTS):  # each mowing removes ~70 % of the grass, which grows back within weeks
        since_cut = doy - p[f"cut_{k}"].to_numpy()
        green = green * np.where(since_cut >= 0, 1 - 0.7 * np.exp(-np.maximum(since_cut, 0) / 20), 1.0)
    harvest = p["harvest"].to_numpy()
    after = doy >= harvest
    since_harvest = np.where(after, doy - harvest, 0.0)
    regrowth = p["regrowth"].to_numpy() * _sigmoid((since_harvest - 100) / 12)  # the next crop, sown in autumn
    green = np.where(after, regrowth, green)
    dry = np.where(after, 0.15 * np.exp(-since_harvest / 30), dry)  # stubble, ploughed in over weeks
    flowers = p["flowering"].to_numpy() * np.exp(-0.5 * ((doy - p["green_up"].to_numpy() - 55) / 10) ** 2)
    green = green * (1 - flowers)
    total = np.maximum(green + dry + flowers, 0.95) / 0.95
    return green / total, dry / total, flowers / total


def _acquisitions(region: Region, rng: np.random.Generator) -> pd.DataFrame:
    """The region's acquisition dates (5-day revisit, some missing) with their haze, water vapour and clouds."""
    start = np.datetime64(f"{YEAR}-01-01") + region.orbit_offset_days
    dates = np.arange(start, np.datetime64(f"{YEAR + 1}-01-01"), 5)
    dates = dates[rng.random(len(dates)) > 0.08]  # products lost to acquisition gaps
    doy = (dates - np.datetime64(f"{YEAR}-01-01")).astype(int) + 1
    winter = np.cos(2 * np.pi * (doy - 15) / 365)  # +1 in mid-January, -1 in mid-July
    return pd.DataFrame(
        {
            "date": dates.astype("datetime64[s]"),
            "doy": doy,
            "aerosol_depth": rng.lognormal(np.log(0.1), 0.6, len(dates)),
            "vapour_transmittance": rng.uniform(0.3, 0.5, len(dates)),
            "cloud_probability": np.clip(region.cloudiness + 0.2 * winter + rng.normal(0, 0.15, len(dates)), 0.05, 0.9),
            "wetness": 0.5 + 0.5 * winter,
        }
    )


def _observations(region: Region, parcels: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Every parcel's observations (30-70 irregular dates each) as a long table of stored reflectances."""
    dates = _acquisitions(region, rng)
    n, n_dates = len(parcels), len(dates)
    n_obs = rng.integers(OBSERVATIONS_PER_PARCEL[0], min(OBSERVATIONS_PER_PARCEL[1], n_dates) + 1, n)
    rank = np.argsort(np.argsort(rng.random((n, n_dates)), axis=1), axis=1)
    parcel_index, date_index = np.nonzero(rank < n_obs[:, None])  # parcel-major, dates in order
    parcel, date = parcels.iloc[parcel_index], dates.iloc[date_index]
    doy = date["doy"].to_numpy(float)

    green, dry, flowers = cover_fractions(doy, parcel)
    soil = 1 - green - dry - flowers
    wet_soil = SOIL * (parcel["soil_brightness"].to_numpy() * (1 - 0.25 * date["wetness"].to_numpy()))[:, None]
    surface = (
        soil[:, None] * wet_soil
        + green[:, None] * GREEN_VEGETATION
        + dry[:, None] * DRY_VEGETATION
        + flowers[:, None] * YELLOW_FLOWERS
    )
    toa = _top_of_atmosphere(surface, date)

    cloudy = rng.random(len(doy)) < date["cloud_probability"].to_numpy()
    flagged = cloudy & (rng.random(len(doy)) < FLAGGED_SHARE)
    opacity = np.where(flagged, rng.uniform(0.7, 1.0, len(doy)), rng.uniform(0.2, 0.5, len(doy))) * cloudy
    cloud = rng.uniform(0.4, 0.8, (len(doy), 1)) * CLOUD_SHAPE
    toa = (1 - opacity[:, None]) * toa + opacity[:, None] * cloud
    # Sensor noise and per-observation gain (view angle, calibration).
    toa = toa * rng.normal(1, 0.02, (len(doy), 1)) + rng.normal(0, 0.004, toa.shape)
    stored = np.round(np.clip(toa, 0, 1) * REFLECTANCE_SCALE).astype(np.uint16)

    table = pd.DataFrame(
        {
            "parcel_id": parcel["parcel_id"].to_numpy(),
            "date": date["date"].to_numpy(),
            "doy": date["doy"].to_numpy().astype(np.int16),
            "cloud": flagged,
        }
    )
    return pd.concat([table, pd.DataFrame(stored, columns=list(S2_BANDS_13))], axis=1)


def _top_of_atmosphere(surface: np.ndarray, date: pd.DataFrame) -> np.ndarray:
    """L1C-like top-of-atmosphere reflectance: Rayleigh and haze path radiance, water vapour absorption."""
    haze = date["aerosol_depth"].to_numpy()[:, None] * (550.0 / WAVELENGTHS_NM) ** 1.3
    toa = surface * (1 - 0.3 * haze) + 0.2 * haze + RAYLEIGH
    toa[:, WATER_VAPOUR_BAND] *= date["vapour_transmittance"].to_numpy()[:, None]
    toa[:, S2_BANDS_13.index("B10")] = surface[:, S2_BANDS_13.index("B10")] * B10_TRANSMITTANCE + 0.002
    return toa


def _parcel_polygons(region: Region, parcels: pd.DataFrame, rng: np.random.Generator) -> gpd.GeoDataFrame:
    """Quadrilateral fields on a jittered grid around the region's centre, returned in EPSG:4326."""
    n = len(parcels)
    side = int(np.ceil(np.sqrt(1.3 * n)))
    cells = rng.choice(side * side, n, replace=False)  # not every field of the area is in the dataset
    size = region.field_size_m * np.array([1.2, 0.9])
    x0, y0 = Transformer.from_crs("EPSG:4326", UTM_CRS, always_xy=True).transform(*region.lon_lat)
    origin = np.array([x0, y0]) - side * size / 2 + np.column_stack([cells % side, cells // side]) * size
    unit_square = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=float)
    inset = 0.06 + unit_square * 0.88  # leave margins and tracks between fields
    corners = origin[:, None, :] + (inset[None] + rng.uniform(-0.05, 0.05, (n, 4, 2))) * size
    polygons = shapely.polygons(np.concatenate([corners, corners[:, :1]], axis=1))
    fields = gpd.GeoDataFrame(
        {
            "parcel_id": parcels["parcel_id"].to_numpy(),
            "crop": parcels["crop"].to_numpy(),
            "label": parcels["label"].to_numpy(),
            "region": region.name,
            "split": parcels["split"].to_numpy(),
            "area_m2": np.round(shapely.area(polygons), 1),
        },
        geometry=polygons,
        crs=UTM_CRS,
    )
    return fields.to_crs("EPSG:4326")


def read_observations(folder: Path, catalog: pd.DataFrame, drop_cloudy: bool = False) -> pd.DataFrame:
    """The observations of the parcels in ``catalog``, sorted by parcel (in catalog order) and date.

    Args:
        folder: the dataset folder (``ensure_parcels()``).
        catalog: rows of the catalog (``read_catalog``); its ``observations`` column names the files.
        drop_cloudy: leave out the observations flagged as cloudy.

    Returns:
        The long table with reflectances as stored (``uint16``, reflectance x 10 000).
    """
    frames = [
        pd.read_parquet(Path(folder) / path, filters=[("parcel_id", "in", list(ids))])
        for path, ids in catalog.groupby("observations")["id"]
    ]
    table = pd.concat(frames, ignore_index=True)
    if drop_cloudy:
        table = table[~table["cloud"]]
    table["parcel_id"] = pd.Categorical(table["parcel_id"], categories=catalog["id"])
    return table.sort_values(["parcel_id", "doy"], ignore_index=True)


def observation_bands(table: pd.DataFrame, bands: Sequence[str] | None = None) -> tuple[str, ...]:
    """The band columns of an observation table: ``bands``, or else every column but :data:`NON_BAND_COLUMNS`.

    Raises:
        ValueError: when one of ``bands`` is not a band column of the table, or there is no band to read.
    """
    available = tuple(str(column) for column in table.columns if column not in NON_BAND_COLUMNS)
    chosen = available if bands is None else tuple(bands)
    missing = [band for band in chosen if band not in available]
    if missing:
        raise ValueError(
            f"the observations have no band {', '.join(missing)}; their bands are {', '.join(available) or 'none'}: "
            "pass bands= naming some of those."
        )
    if not chosen:
        raise ValueError(
            f"no band to read: the observations have the columns {', '.join(map(str, table.columns))}; the layout is "
            f"{', '.join(NON_BAND_COLUMNS)} and one column per band (bands= names those to read)."
        )
    return chosen


class ParcelSeriesDataset(Dataset):
    """Satellite time series of crop parcels (Sentinel-2 for the generated data), one sample per parcel.

    A sample is a dict:

    * ``"x"``: float32 ``[T, C]``, one column per band of ``bands``: the stored values divided by
      :data:`REFLECTANCE_SCALE` (reflectance for the course's files), normalised per band with the training
      split's mean/std;
    * ``"doy"``: int64 ``[T]``, day of year of each observation (0 for padding);
    * ``"mask"``: bool ``[T]``, True for a real observation, False for padding (always at the end);
    * ``"label"``: int64 class index into ``CROP_CLASSES``; ``"id"``: the parcel id.

    With ``seq_len`` set, every sample has exactly ``seq_len`` steps: longer series are subsampled to
    ``seq_len`` observations (kept in date order), shorter ones are padded at the end. The subsample is
    deterministic per index (seeded by ``(seed, index)``), so evaluation is reproducible and DataLoader
    workers agree; for a fresh subset every epoch add ``transforms.RandomTemporalDropout``. With
    ``seq_len=None`` the full series is returned; batch it with :func:`collate_padded`.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        region: ``"A"`` or ``"B"``; ``None`` takes both.
        mode: dataset size (default ``COURSE_MODE``).
        seed: the dataset's seed.
        seq_len: fixed sequence length, or ``None`` for variable length.
        drop_cloudy: leave out observations flagged as cloudy (unflagged clouds stay in).
        transform: a callable applied to each sample dict (see ``course_utils.transforms``).
        stats: ``(mean, std)`` per band in reflectance; default: computed on the training split of the same
            region(s). Pass the training dataset's ``stats`` to normalise another region the same way.
        folder: a folder in the same layout (``catalog.csv``, ``observations_*.parquet``) to read instead of the
            generated data, e.g. BreizhCrops converted by :mod:`course_utils.data.breizhcrops`.
        bands: the band columns to read, in this order; default: every column of the observations but
            ``parcel_id, date, doy, cloud`` (the 13 of :data:`S2_BANDS_13` for the generated data).

    Attributes:
        bands: the bands of ``x``, in order; a model takes ``len(dataset.bands)`` input channels.
        stats: ``(mean, std)``, one value per band.

    Raises:
        ValueError: for an unknown split or region, a band that is not in the observations, or ``stats`` of
            the wrong shape.
    """

    def __init__(
        self,
        split: str,
        region: str | None = None,
        mode: str | None = None,
        seed: int = 0,
        seq_len: int | None = 45,
        drop_cloudy: bool = False,
        transform: Any = None,
        stats: tuple[np.ndarray, np.ndarray] | None = None,
        folder: Path | None = None,
        bands: Sequence[str] | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is not one of {', '.join(SPLITS)}.")
        if seq_len is not None and seq_len < 1:
            raise ValueError(f"seq_len={seq_len} must be a positive length, or None for full series.")
        self.folder = Path(folder) if folder is not None else ensure_parcels(mode, seed)
        self.catalog = read_catalog(self.folder, split=split, region=region)
        self.seed, self.seq_len, self.transform = seed, seq_len, transform
        table = read_observations(self.folder, self.catalog, drop_cloudy)
        self.bands = observation_bands(table, bands)
        reflectance = table[list(self.bands)].to_numpy(np.float32) / REFLECTANCE_SCALE
        if stats is None:
            train = table
            if split != "train":
                train = read_observations(self.folder, read_catalog(self.folder, "train", region), drop_cloudy)
            stats = band_statistics([train[list(self.bands)].to_numpy(np.float32).T / REFLECTANCE_SCALE])
        mean, std = (np.asarray(s, dtype=np.float32) for s in stats)
        if mean.shape != (len(self.bands),) or std.shape != (len(self.bands),):
            raise ValueError(
                f"stats must be (mean, std) with {len(self.bands)} values each, one per band ({', '.join(self.bands)})."
            )
        self.stats = (mean, std)
        self._x = torch.from_numpy((reflectance - mean) / std)
        self._doy = torch.from_numpy(table["doy"].to_numpy(np.int64))
        counts = np.bincount(table["parcel_id"].cat.codes.to_numpy(), minlength=len(self.catalog))
        self._offsets = np.concatenate([[0], np.cumsum(counts)])
        self.labels = torch.tensor(self.catalog["label"].to_numpy(np.int64))

    def __len__(self) -> int:
        return len(self.catalog)

    def __getitem__(self, index: int) -> dict[str, Any]:
        start, stop = self._offsets[index], self._offsets[index + 1]
        x, doy = self._x[start:stop], self._doy[start:stop]
        if self.seq_len is not None and len(x) > self.seq_len:
            keep = np.sort(np.random.default_rng([self.seed, index]).choice(len(x), self.seq_len, replace=False))
            x, doy = x[keep], doy[keep]
        sample = {
            "x": x,
            "doy": doy,
            "mask": torch.ones(len(x), dtype=torch.bool),
            "label": self.labels[index],
            "id": str(self.catalog["id"].iat[index]),
        }
        if self.seq_len is not None:
            sample = _pad_sample(sample, self.seq_len)
        return self.transform(sample) if self.transform is not None else sample


def _pad_sample(sample: dict[str, Any], length: int) -> dict[str, Any]:
    """``sample`` with ``x``, ``doy`` and ``mask`` padded at the end to ``length`` (zeros / False)."""
    missing = length - len(sample["x"])
    padded = dict(sample)
    padded["x"] = torch.nn.functional.pad(sample["x"], (0, 0, 0, missing))
    padded["doy"] = torch.nn.functional.pad(sample["doy"], (0, missing))
    padded["mask"] = torch.nn.functional.pad(sample["mask"], (0, missing), value=False)
    return padded


def collate_padded(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch samples of different lengths: pad each to the longest, stack, keep the ids as a list.

    Returns:
        ``{"x": [B, T, C], "doy": [B, T], "mask": [B, T], "label": [B], "id": list of B str}``.
    """
    length = max(len(sample["x"]) for sample in batch)
    padded = [_pad_sample(sample, length) for sample in batch]
    collated = {key: torch.stack([sample[key] for sample in padded]) for key in ("x", "doy", "mask")}
    collated["label"] = torch.stack([torch.as_tensor(sample["label"]) for sample in batch])
    collated["id"] = [sample["id"] for sample in batch]
    return collated


def flatten_for_baseline(dataset: Dataset, step_days: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Each sample's series linearly interpolated to a fixed grid of days, flattened for a random forest.

    Use a dataset with ``seq_len=None`` so that every observation counts.

    Args:
        dataset: yields the sample dicts of :class:`ParcelSeriesDataset`.
        step_days: spacing of the grid (day 1, 1 + step, ... up to 365).

    Returns:
        ``(X, y)``: float32 ``[N, n_days * C]`` (day-major, ``C`` bands as in the samples' ``x``) and int64
        ``[N]``. A series without any observation becomes zeros (the training mean).
    """
    grid = np.arange(1, 366, step_days)
    rows, labels = [], []
    for index in range(len(dataset)):
        sample = dataset[index]
        valid = sample["mask"].numpy()
        doy, x = sample["doy"].numpy()[valid], sample["x"].numpy()[valid]
        if len(doy) == 0:
            rows.append(np.zeros(len(grid) * x.shape[1], dtype=np.float32))
        else:
            rows.append(np.stack([np.interp(grid, doy, band) for band in x.T], axis=1).ravel())
        labels.append(int(sample["label"]))
    return np.asarray(rows, dtype=np.float32), np.asarray(labels, dtype=np.int64)
