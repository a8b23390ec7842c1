"""Fields of The World (FTW) as course field chips: one ``DATASET`` parameter switches notebook 02 to real data.

FTW (Kerner et al. 2025) pairs Sentinel-2 L2A chips (256 x 256 px, 10 m) from two dates of one season,
``window_a`` (early) and ``window_b`` (late), with field masks rasterised from official parcel registries:
2-class (background, field) and 3-class (background, field interior, field boundary), plus a split table
``chips_<country>.parquet`` (``aoi_id``, ``split``). The 3-class mask uses the course's own convention
(0 non-field, 1 interior, 2 edge), so a real chip and a generated one differ only in:

* **band order**: FTW stores red, green, blue, NIR; the course's chips are blue, green, red, NIR
  (:data:`course_utils.data.fields.BANDS`), so the bands are reordered once, when the chips are converted;
* **scale**: both store reflectance x 10 000 as ``uint16``; the normalisation statistics are recomputed on
  the real training chips, as for the generated ones;
* **labels**: Brazil, India, Kenya and Rwanda have presence-only labels (value 3, "unlabelled"), which the
  course's losses do not ignore; those countries are refused with an explanation.

The conversion writes the whole layout of the generated field data, so notebook 02 runs unchanged on it:
field polygons traced from each chip's 3-class mask (``fields/<country>.gpkg``, one row per field with its
``chip_id``) and the catalog's statistics columns. FTW has no larger scenes, only 256 x 256 px chips, so a few
test chips (those with the most fields) are listed a second time with split ``scene``: the notebook's whole-scene
prediction, polygonising and field matching run on them tile by tile, as on a generated scene.

:func:`prepare_ftw` converts a downloaded country once into the course layout (``catalog.csv``, ``chips/``,
``labels/``, ``fields/``) in the data cache; :func:`field_chip_dataset` is the one entry point a notebook calls,
with :func:`field_folder` and :func:`field_region` for the folder and the catalog's region name.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd

from course_utils.config import by_mode, get_mode
from course_utils.data.download import FTW_MD5, fetch
from course_utils.data.fields import EDGE_PX, FieldChipDataset, ensure_fields
from course_utils.data.store import ensure_generated
from course_utils.geo import FIELD_EDGE, FIELD_INTERIOR, polygonize, read_raster, write_raster

FTW_BANDS = ("red", "green", "blue", "nir")
"""Band order of FTW's ``window_a`` / ``window_b`` GeoTIFFs."""
TO_COURSE_BANDS = [2, 1, 0, 3]
"""Indexes into :data:`FTW_BANDS` that give the course's blue, green, red, NIR."""
PRESENCE_ONLY = ("brazil", "india", "kenya", "rwanda")
COUNTRIES = tuple(country for country in FTW_MD5 if country not in PRESENCE_ONLY)
"""Countries with complete 3-class labels (every pixel is background, field or boundary)."""
WINDOWS = ("a", "b")
SPLITS = ("train", "val", "test")


def chips_per_split(mode: str) -> dict[str, int | None]:
    """How many chips of each split a mode keeps (a seeded random subset); ``None`` keeps all.

    ``scene`` is how many of the kept test chips are listed again as scenes (FTW has no larger scenes).
    """
    return by_mode(
        mode,
        smoke={"train": 12, "val": 4, "test": 4, "scene": 1},
        lite={"train": 400, "val": 100, "test": 100, "scene": 2},
        full={"train": None, "val": None, "test": None, "scene": 2},
    )


def ftw_to_course_bands(image: np.ndarray) -> np.ndarray:
    """Reorder one FTW window ``[4, H, W]`` (red, green, blue, NIR) to the course's blue, green, red, NIR.

    Raises:
        ValueError: when ``image`` does not have 4 bands (an FTW chip holds one window of 4 bands).
    """
    if image.ndim != 3 or image.shape[0] != len(FTW_BANDS):
        raise ValueError(f"expected one FTW window [4, H, W] ({', '.join(FTW_BANDS)}), got shape {image.shape}.")
    return image[TO_COURSE_BANDS]


def _check_country(country: str) -> None:
    """Refuse countries that FTW does not have, or that have presence-only labels."""
    if country in PRESENCE_ONLY:
        raise ValueError(
            f"FTW's {country} labels are presence-only (unlabelled pixels, value 3), which the course's losses "
            f"count as wrong; choose a fully labelled country: {', '.join(COUNTRIES)}."
        )
    if country not in COUNTRIES:
        raise ValueError(f"FTW has no country {country!r}; choose one of {', '.join(COUNTRIES)}.")


def _country_root(source: Path, country: str) -> Path:
    """The folder in an extracted FTW archive that holds ``chips_<country>.parquet``."""
    tables = sorted(Path(source).rglob(f"chips_{country}.parquet"))
    if not tables:
        raise FileNotFoundError(
            f"no chips_{country}.parquet under {source}: this is not an extracted FTW archive of {country}; "
            f"delete the folder and call prepare_ftw({country!r}) to download it again."
        )
    return tables[0].parent


def chip_fields(mask: np.ndarray, profile: dict[str, Any], chip_id: str, country: str) -> gpd.GeoDataFrame:
    """The field polygons of one chip's 3-class mask, in EPSG:4326 like the generated GeoPackage.

    Each connected region of interior pixels becomes a polygon, grown by the edge width
    (:func:`course_utils.geo.polygonize`), so the polygons rasterise back to the mask's fields.
    """
    fields = polygonize(mask, profile["transform"], profile["crs"], field_values=(FIELD_INTERIOR,), grow_px=EDGE_PX)
    table = gpd.GeoDataFrame(
        {"field_id": [f"{chip_id}-f{k:04d}" for k in range(len(fields))], "region": country, "chip_id": chip_id},
        geometry=fields.geometry.to_numpy(),
        crs=fields.crs,
    )
    return table.to_crs("EPSG:4326")


def catalog_row(chip_id: str, country: str, split: str, mask: np.ndarray, n_fields: int) -> dict[str, Any]:
    """A catalog row with the generated catalog's columns: paths and the label's field statistics."""
    return {
        "id": chip_id,
        "region": country,
        "split": split,
        "image": f"chips/{chip_id}.tif",
        "label": f"labels/{chip_id}.tif",
        "fields": f"fields/{country}.gpkg",
        "n_fields": n_fields,
        "field_fraction": round(float((mask > 0).mean()), 4),
        "edge_fraction": round(float((mask == FIELD_EDGE).mean()), 4),
        "mean_field_px": round(float((mask > 0).sum() / max(n_fields, 1)), 1),
    }


def convert_ftw(folder: Path, mode: str, seed: int, *, source: Path, country: str, window: str = "a") -> None:
    """Write an FTW country in the course's field-chip layout into ``folder`` (chips, labels, fields, catalog).

    Chips whose imagery is missing (FTW lists some AOIs without images) are skipped. Each split keeps a
    random subset of :func:`chips_per_split` chips, drawn with ``seed``. The kept test chips with the most
    fields are listed again with split ``scene`` (FTW has no larger scenes).

    Args:
        folder: an empty folder (``prepare_ftw`` passes a temporary one and renames it when done).
        mode: decides how many chips are kept.
        seed: seeds the subset.
        source: the extracted FTW archive (``label_masks/``, ``s2_images/``, ``chips_<country>.parquet``).
        country: the FTW country name.
        window: ``"a"`` (early season) or ``"b"`` (late season) image.

    Raises:
        ValueError: for a split with no chip, or a mask with values other than 0, 1, 2.
    """
    root = _country_root(source, country)
    table = pd.read_parquet(root / f"chips_{country}.parquet", columns=["aoi_id", "split"])
    image_dir, label_dir = root / "s2_images" / f"window_{window}", root / "label_masks" / "semantic_3class"
    table = table[table["split"].isin(SPLITS)]
    table = table[[(image_dir / f"{aoi}.tif").is_file() for aoi in table["aoi_id"]]]
    rng = np.random.default_rng(seed)
    rows, fields = [], []
    keeps = chips_per_split(mode)
    for split in SPLITS:
        aois = table.loc[table["split"] == split, "aoi_id"].astype(str).to_numpy()
        if len(aois) == 0:
            raise ValueError(f"FTW {country} has no {split} chip with window_{window} imagery under {root}.")
        if keeps[split] is not None and keeps[split] < len(aois):
            aois = np.sort(rng.choice(aois, keeps[split], replace=False))
        for aoi in aois:
            image, profile = read_raster(image_dir / f"{aoi}.tif")
            mask, mask_profile = read_raster(label_dir / f"{aoi}.tif")
            if mask.max() > FIELD_EDGE:
                raise ValueError(f"{label_dir / aoi}.tif has label values {np.unique(mask).tolist()}; expected 0-2.")
            fields.append(chip_fields(mask[0], mask_profile, aoi, country))
            rows.append(catalog_row(aoi, country, split, mask[0], len(fields[-1])))
            write_raster(folder / rows[-1]["image"], ftw_to_course_bands(image), profile)
            write_raster(folder / rows[-1]["label"], mask.astype(np.uint8), {**mask_profile, "nodata": None})
    catalog = pd.DataFrame(rows)
    test = catalog[catalog["split"] == "test"].sort_values(["n_fields", "id"], ascending=[False, True])
    scenes = test.head(keeps["scene"]).assign(split="scene")
    (folder / "fields").mkdir()
    pd.concat(fields, ignore_index=True).to_file(folder / f"fields/{country}.gpkg", layer="fields", driver="GPKG")
    pd.concat([catalog, scenes], ignore_index=True).to_csv(folder / "catalog.csv", index=False)


def prepare_ftw(
    country: str = "austria", mode: str | None = None, seed: int = 0, window: str = "a", source: Path | None = None
) -> Path:
    """The folder of an FTW country in the course layout, downloaded and converted on first use.

    Args:
        country: a fully labelled FTW country (:data:`COUNTRIES`).
        mode: decides how many chips are kept (:func:`chips_per_split`); ``None`` reads ``COURSE_MODE``.
        seed: seeds the subset of chips.
        window: ``"a"`` (early season) or ``"b"`` (late season) Sentinel-2 image.
        source: an already extracted FTW country folder; ``None`` downloads ``ftw-<country>`` (see
            :mod:`course_utils.data.download`).

    Raises:
        ValueError: for an unknown or presence-only country, or an unknown window.
        ConnectionError: when the archive must be downloaded and the host cannot be reached.
    """
    _check_country(country)
    if window not in WINDOWS:
        raise ValueError(f"window {window!r} is not one of {', '.join(WINDOWS)} (early or late season).")
    convert = partial(_convert_country, source=source, country=country, window=window)
    return ensure_generated(f"ftw-{country}-window{window}", mode or get_mode(), seed, convert)


def _convert_country(folder: Path, mode: str, seed: int, *, source: Path | None, country: str, window: str) -> None:
    """:func:`convert_ftw` on ``source``, or on the downloaded archive (fetched only when a conversion is needed)."""
    source = Path(source) if source is not None else fetch(f"ftw-{country}")
    convert_ftw(folder, mode, seed, source=source, country=country, window=window)


class FTWChipDataset(FieldChipDataset):
    """FTW chips of one country with the samples of :class:`~course_utils.data.fields.FieldChipDataset`.

    A sample is ``{"image": float32 [4, H, W] (blue, green, red, NIR) normalised, "mask": int64 [H, W] in
    {0, 1, 2}, "id": str}``. Images are normalised with the per-band statistics of the country's training
    chips, or with ``stats``.

    Args:
        split: ``train``, ``val`` or ``test`` (FTW has no larger scenes; its ``scene`` rows are test chips).
        country: a fully labelled FTW country.
        mode: how many chips are kept; ``None`` reads ``COURSE_MODE``.
        seed: seeds the subset of chips.
        transform: callable taking and returning a sample dict, applied after normalisation.
        stats: ``(mean, std)`` per band in stored units, instead of the training chips'.
        window: ``"a"`` (early season) or ``"b"`` (late season) image.
        source: an extracted FTW country folder (default: download it).
    """

    def __init__(
        self,
        split: str,
        country: str = "austria",
        mode: str | None = None,
        seed: int = 0,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        stats: tuple[np.ndarray, np.ndarray] | None = None,
        window: str = "a",
        source: Path | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(
                f"split {split!r} is not one of {', '.join(SPLITS)} (FTW has chips only, no scenes: its catalog's "
                "'scene' rows are test chips listed again; read them as chips of the 'test' split)."
            )
        folder = prepare_ftw(country, mode, seed, window, source)
        super().__init__(split, mode=mode, seed=seed, transform=transform, stats=stats, folder=folder)


def field_chip_dataset(
    split: str,
    dataset: str = "generated",
    region: str | None = None,
    mode: str | None = None,
    seed: int = 0,
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    stats: tuple[np.ndarray, np.ndarray] | None = None,
) -> FieldChipDataset:
    """Field chips of the generated data or of a real dataset, with the same samples.

    Args:
        split: ``train``, ``val`` or ``test`` (and ``scene`` for the generated data).
        dataset: ``"generated"`` (the default, offline) or ``"ftw-<country>"``, e.g. ``"ftw-austria"``
            (downloaded on first use; see :data:`COUNTRIES`).
        region: a region of the generated data (ignored for FTW, whose region is its country).
        mode: data size; ``None`` reads ``COURSE_MODE``.
        seed: the generator's seed, or the seed of FTW's chip subset.
        transform: applied to each sample after normalisation.
        stats: ``(mean, std)`` per band in stored units, instead of the training split's.

    Raises:
        ValueError: for an unknown dataset name.
    """
    country = _ftw_country(dataset)
    if not country:
        return FieldChipDataset(split, region, mode, seed, transform=transform, stats=stats)
    return FTWChipDataset(split, country, mode, seed, transform=transform, stats=stats)


def _ftw_country(dataset: str) -> str:
    """The country of ``dataset`` (``"ftw-<country>"``), or ``""`` for the generated data.

    Raises:
        ValueError: for an unknown dataset name.
    """
    if dataset == "generated":
        return ""
    if dataset.startswith("ftw-"):
        return dataset.removeprefix("ftw-")
    raise ValueError(f"dataset {dataset!r} is not 'generated' or 'ftw-<country>' (countries: {', '.join(COUNTRIES)}).")


def field_folder(dataset: str = "generated", mode: str | None = None, seed: int = 0) -> Path:
    """The folder of ``dataset`` in the course's field layout (see :func:`field_chip_dataset`), made on first use.

    Raises:
        ValueError: for an unknown dataset name.
    """
    country = _ftw_country(dataset)
    return prepare_ftw(country, mode, seed) if country else ensure_fields(mode, seed)


def field_region(dataset: str = "generated", region: str = "smallholder") -> str:
    """The region name that the catalog of ``dataset`` uses: ``region`` for the generated data, else the country.

    Raises:
        ValueError: for an unknown dataset name.
    """
    return _ftw_country(dataset) or region
