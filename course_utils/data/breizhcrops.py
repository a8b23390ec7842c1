"""BreizhCrops as course parcel series: one ``DATASET`` parameter switches notebook 06 to real crop time series.

BreizhCrops (Russwurm et al. 2020) holds Sentinel-2 time series of 2017 for the crop parcels of Brittany: each
parcel's pixels averaged per acquisition date, at top of atmosphere (L1C, 13 bands) or bottom of atmosphere
(L2A, 10 bands), labelled with the crop declared in the French parcel registry. The course's generated parcels
were modelled on it (same 13 L1C bands, same 9 classes), so a real parcel and a generated one differ only in:

* **band order**: BreizhCrops' HDF5 rows hold ``B1, B10, B11, B12, B2, ..., B9, QA10, QA20, QA60, doa`` (the
  alphabetical column order of its CSV files); the bands are reordered by name to
  :data:`~course_utils.data.parcels.S2_BANDS_13` (``B1 ... B8A, B9, B10, B11, B12``);
* **scale**: both are reflectance x 10 000; BreizhCrops stores floats, the course ``uint16``, so values are rounded;
* **dates**: ``doa`` (date of acquisition) is stored as nanoseconds since 1970; it becomes ``date`` and ``doy``;
* **clouds**: the ``cloud`` flag is the Sentinel-2 cloud mask ``QA60`` (1024 opaque, 2048 cirrus, averaged over
  the parcel's pixels): flagged when any part of the parcel is masked;
* **classes**: BreizhCrops' 9 classes (from its ``classmapping.csv``, which groups the registry's crop codes)
  carry the course's names, so labels index :data:`~course_utils.data.parcels.CROP_CLASSES`; should a name
  differ, BreizhCrops' own ids and names are kept and :func:`parcel_class_names` reports them;
* **splits**: the region is one island, so train/val/test are drawn per class (70/15/15) with a seed.

Only ``belle-ile`` (the smallest region, an island off southern Brittany) is offered: the four departments are
1.5-2.6 GB each. :func:`prepare_breizhcrops` converts it once into the course layout (``catalog.csv``,
``observations_belle-ile.parquet``, ``classes.csv``) in the data cache; :func:`parcel_dataset` is the one entry
point a notebook calls, with :func:`parcel_folder`, :func:`parcel_class_names` and :func:`parcel_region` for the
files, the class names and the catalog's region name.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from course_utils.config import by_mode, get_mode
from course_utils.data.download import downloads_dir, fetch, registered
from course_utils.data.parcels import (
    CROP_CLASSES,
    REFLECTANCE_SCALE,
    S2_BANDS_13,
    YEAR,
    ParcelSeriesDataset,
    ensure_parcels,
)
from course_utils.data.store import ensure_generated

REGIONS = ("belle-ile",)
DATASETS = ("generated", *(f"breizhcrops-{region}" for region in REGIONS))
H5_COLUMNS = (
    *("B1", "B10", "B11", "B12", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9"),
    *("QA10", "QA20", "QA60", "doa"),
)
"""Columns of a BreizhCrops L1C HDF5 series (``BANDS["L1C"]`` in breizhcrops/datasets/breizhcrops.py, commit
8b6f6fea3fa41eda5fa8dee8b0150e29f162adad); ``doa`` is the acquisition time in nanoseconds since 1970. Later
releases list a natural order (``SELECTED_BANDS``) for re-compiled files, but the 2017 files keep the published
size of the first release, so the conversion also checks the order physically (B10 must be the darkest band)."""
TO_COURSE_BANDS = [H5_COLUMNS.index(band) for band in S2_BANDS_13]
"""Indexes into :data:`H5_COLUMNS` that give the course's band order."""
BREIZHCROPS_SCALE = 10_000
"""BreizhCrops' L1C values are top-of-atmosphere reflectance x 10 000 (its own transform multiplies by 1e-4)."""
H5_SIZE = {"belle-ile": 17_038_944}
"""Published size in bytes of the extracted L1C file (``FILESIZES[2017]["L1C"]``, breizhcrops/datasets/urls.py)."""
INDEX_COLUMNS = ("CODE_CULTU", "path", "sequencelength")
CLASSMAPPING_COLUMNS = ("id", "classname", "code")
MIN_PARCELS_PER_CLASS = 3  # a class with at least this many parcels is in every split
EVAL_SHARE = 0.15  # of a class's parcels, for validation and again for test


def parcels_kept(mode: str) -> int | None:
    """About how many parcels a mode keeps (a seeded, class-stratified subset); ``None`` keeps all."""
    return by_mode(mode, smoke=150, lite=1500, full=None)


def breizhcrops_to_course_bands(series: np.ndarray) -> np.ndarray:
    """The 13 bands of BreizhCrops L1C rows ``[T, 17]`` (:data:`H5_COLUMNS`) in the course's order ``[T, 13]``.

    Raises:
        ValueError: when the rows do not have the 17 columns of BreizhCrops' L1C files.
    """
    if series.ndim != 2 or series.shape[1] != len(H5_COLUMNS):
        raise ValueError(
            f"expected BreizhCrops L1C rows [T, {len(H5_COLUMNS)}] ({', '.join(H5_COLUMNS)}), got shape "
            f"{series.shape}; L2A files (10 bands) do not carry the course's 13 bands."
        )
    return series[:, TO_COURSE_BANDS]


def class_table(classmapping: pd.DataFrame) -> pd.DataFrame:
    """One row per BreizhCrops class: its id, its name, the course's ``label`` and ``crop`` name for it.

    A class name matches a course crop when it is equal after lower-casing and replacing spaces by
    underscores ("permanent meadows" -> ``permanent_meadows``). When every class matches, ``label`` indexes
    :data:`CROP_CLASSES`; otherwise BreizhCrops' ids and names are kept for all classes.
    """
    classes = classmapping.groupby("id", sort=True)["classname"].first().reset_index()
    classes["course_name"] = classes["classname"].str.strip().str.lower().str.replace(" ", "_")
    if classes["course_name"].isin(CROP_CLASSES).all():
        classes["label"] = [CROP_CLASSES.index(name) for name in classes["course_name"]]
        classes["crop"] = classes["course_name"]
    else:
        classes["label"], classes["crop"] = classes["id"], classes["classname"]
    return classes[["label", "crop", "id", "classname"]].rename(columns={"id": "breizhcrops_id"})


def stratified_splits(labels: np.ndarray, keep: int | None, rng: np.random.Generator) -> np.ndarray:
    """A split name per parcel (``""`` for parcels left out), drawn per class.

    Each class keeps the same share of its parcels (``keep`` of all, at least :data:`MIN_PARCELS_PER_CLASS`
    where it has them), then gives 15 % to val, 15 % to test (at least one each) and the rest to train.
    Classes with fewer than :data:`MIN_PARCELS_PER_CLASS` parcels go to train only.
    """
    splits = np.full(len(labels), "", dtype=object)
    share = 1.0 if keep is None else min(1.0, keep / max(len(labels), 1))
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n = min(len(members), max(MIN_PARCELS_PER_CLASS, round(share * len(members))))
        n_eval = max(1, round(EVAL_SHARE * n)) if n >= MIN_PARCELS_PER_CLASS else 0
        splits[members[:n_eval]] = "val"
        splits[members[n_eval : 2 * n_eval]] = "test"
        splits[members[2 * n_eval : n]] = "train"
    return splits


def _read_csv(path: Path, columns: tuple[str, ...], what: str, downloaded: bool) -> pd.DataFrame:
    """Read a BreizhCrops CSV as the breizhcrops package does (first column = index) and check its columns.

    Raises:
        ValueError: for missing columns; a downloaded file is deleted first, so the next call fetches it again.
    """
    table = pd.read_csv(path, index_col=0)
    missing = [column for column in columns if column not in table.columns]
    if missing:
        if downloaded:
            path.unlink(missing_ok=True)
        action = "it was deleted; run again to download it" if downloaded else "pass the files breizhcrops downloads"
        raise ValueError(f"{path} is not BreizhCrops' {what} (no column {', '.join(missing)}): {action}.")
    return table


def _series(h5: h5py.File, key: str, h5_path: Path) -> np.ndarray:
    """One parcel's rows ``[T, 17]`` from the HDF5 file.

    Raises:
        ValueError: when the file has no such series or it is not ``[T, 17]``.
    """
    if key not in h5:
        raise ValueError(f"{h5_path} has no series {key!r} listed in the index: index and HDF5 file do not match.")
    series = np.asarray(h5[key][()], dtype=np.float64)
    if series.ndim != 2 or series.shape[1] != len(H5_COLUMNS):
        raise ValueError(f"{h5_path}: series {key!r} has shape {series.shape}; BreizhCrops L1C rows have 17 columns.")
    return series


def _observations(series: np.ndarray, parcel_ids: np.ndarray) -> pd.DataFrame:
    """BreizhCrops rows ``[N, 17]`` of parcels ``parcel_ids`` ``[N]`` as the course's observation table.

    Raises:
        ValueError: when a date falls outside :data:`YEAR` (``doa`` is not in nanoseconds since 1970).
    """
    dates = pd.to_datetime(series[:, H5_COLUMNS.index("doa")].astype(np.int64), unit="ns")
    if (dates.year != YEAR).any():
        raise ValueError(
            f"acquisition dates from {dates.min()} to {dates.max()} are not all in {YEAR}; BreizhCrops stores `doa` "
            "as nanoseconds since 1970. Is this the 2017 L1C file?"
        )
    reflectance = breizhcrops_to_course_bands(series) * (REFLECTANCE_SCALE / BREIZHCROPS_SCALE)
    stored = np.clip(np.rint(reflectance), 0, np.iinfo(np.uint16).max).astype(np.uint16)
    table = pd.DataFrame(
        {
            "parcel_id": parcel_ids,
            "date": dates.astype("datetime64[s]"),
            "doy": dates.day_of_year.to_numpy().astype(np.int16),
            "cloud": series[:, H5_COLUMNS.index("QA60")] > 0,
        }
    )
    return pd.concat([table, pd.DataFrame(stored, columns=list(S2_BANDS_13))], axis=1)


def _check_band_order(observations: pd.DataFrame) -> None:
    """Refuse bands that are not in BreizhCrops' L1C order: B10 (cirrus) must be the darkest band.

    Water vapour absorbs nearly all sunlight at 1375 nm, so B10 sees only high clouds: its median is far below
    every other band's, which a shifted column order would break.
    """
    medians = observations[list(S2_BANDS_13)].median()
    if medians.idxmin() != "B10":
        raise ValueError(
            f"the darkest band is {medians.idxmin()}, not B10 (cirrus): the HDF5 columns are not in BreizhCrops' L1C "
            f"order ({', '.join(H5_COLUMNS)})."
        )


def convert_breizhcrops(
    folder: Path, mode: str, seed: int, *, h5_path: Path, index_path: Path, classmapping_path: Path, region: str
) -> None:
    """Write a BreizhCrops region in the course's parcel layout into ``folder`` (observations, classes, catalog).

    Parcels with a crop outside the class mapping or without observations are left out, as in breizhcrops.

    Args:
        folder: an empty folder (``prepare_breizhcrops`` passes a temporary one and renames it when done).
        mode: decides how many parcels are kept (:func:`parcels_kept`).
        seed: seeds the subset and the split.
        h5_path: the region's L1C HDF5 file (``<region>.h5``).
        index_path: the region's index (``<region>.csv``: ``CODE_CULTU``, ``path``, ``sequencelength``).
        classmapping_path: ``classmapping.csv`` (``id``, ``classname``, ``code``).
        region: the region's name, written to the catalog.

    Raises:
        ValueError: for CSVs or an HDF5 file not in BreizhCrops' layout, or no parcel in a mapped class.
    """
    mapping = _read_csv(classmapping_path, CLASSMAPPING_COLUMNS, "class mapping", downloaded=False)
    classes = class_table(mapping)
    index = _read_csv(index_path, INDEX_COLUMNS, "index of a region", downloaded=False)
    index = index[index["CODE_CULTU"].isin(mapping["code"]) & (index["sequencelength"] > 0)].reset_index(drop=True)
    if index.empty:
        raise ValueError(f"no parcel of {index_path} has a crop code of {classmapping_path} and observations.")
    class_of_code = mapping.set_index("code")["id"]
    label_of_class = classes.set_index("breizhcrops_id")["label"]
    index["label"] = label_of_class.loc[class_of_code.loc[index["CODE_CULTU"]].to_numpy()].to_numpy()
    index["split"] = stratified_splits(index["label"].to_numpy(), parcels_kept(mode), np.random.default_rng(seed))
    index = index[index["split"] != ""]
    index["id"] = [f"{region}-{Path(path).stem}" for path in index["path"]]
    observations_file = f"observations_{region}.parquet"
    if not h5py.is_hdf5(h5_path):
        raise ValueError(f"{h5_path} is not an HDF5 file; delete it and fetch BreizhCrops' {region}.h5 again.")
    with h5py.File(h5_path, "r") as h5:
        series = [_series(h5, key, h5_path) for key in index["path"]]
    parcel_ids = np.repeat(index["id"].to_numpy(), [len(rows) for rows in series])
    observations = _observations(np.concatenate(series), parcel_ids)
    observations = observations.sort_values(["parcel_id", "doy"], ignore_index=True)
    _check_band_order(observations)
    observations.to_parquet(folder / observations_file, index=False)
    counts = observations.groupby("parcel_id", sort=False)["cloud"].agg(["size", "sum"])
    crops = classes.set_index("label")["crop"]
    catalog = pd.DataFrame(
        {
            "id": index["id"],
            "region": region,
            "split": index["split"],
            "crop": crops.loc[index["label"]].to_numpy(),
            "label": index["label"],
            "code": index["CODE_CULTU"],
            "n_obs": counts["size"].reindex(index["id"]).to_numpy(),
            "n_cloudy": counts["sum"].reindex(index["id"]).to_numpy(),
            "observations": observations_file,
        }
    )
    classes.sort_values("label").to_csv(folder / "classes.csv", index=False)
    catalog.to_csv(folder / "catalog.csv", index=False)


def _fetch_h5(region: str) -> Path:
    """The region's L1C HDF5 file, downloaded and extracted if needed, checked against its published size.

    Raises:
        ValueError: when the extracted file is missing, has another size or is not HDF5 (archive and folder are
            deleted).
    """
    name = f"breizhcrops-{region}-l1c-h5"
    folder = fetch(name)
    found = sorted(folder.rglob(f"{region}.h5"))
    size = found[0].stat().st_size if found else None
    if size != H5_SIZE[region] or not h5py.is_hdf5(found[0]):
        shutil.rmtree(folder, ignore_errors=True)
        (downloads_dir() / registered(name).filename).unlink(missing_ok=True)
        raise ValueError(
            f"the BreizhCrops archive {name} holds {f'a {size}-byte {region}.h5' if found else f'no {region}.h5'}, "
            f"expected an HDF5 file of {H5_SIZE[region]} bytes (published in breizhcrops/datasets/urls.py): the "
            "download is damaged and was deleted; run again to download it."
        )
    return found[0]


def _source_files(region: str, source: Path | None) -> dict[str, Path]:
    """The HDF5 file, index and class mapping: found under ``source``, or downloaded.

    Raises:
        FileNotFoundError: when ``source`` lacks one of them.
    """
    if source is None:
        return {
            "h5_path": _fetch_h5(region),
            "index_path": _checked_download(f"breizhcrops-{region}-l1c-index", INDEX_COLUMNS, "index of a region"),
            "classmapping_path": _checked_download("breizhcrops-classmapping", CLASSMAPPING_COLUMNS, "class mapping"),
        }
    names = {"h5_path": f"{region}.h5", "index_path": f"{region}.csv", "classmapping_path": "classmapping.csv"}
    files = {}
    for key, filename in names.items():
        found = sorted(Path(source).rglob(filename))
        if not found:
            raise FileNotFoundError(
                f"no {filename} under {source}: pass the folder the breizhcrops package downloads into (its root, "
                f"with classmapping.csv and 2017/L1C/{region}.h5 and .csv), or source=None to download."
            )
        files[key] = found[0]
    return files


def _convert_region(folder: Path, mode: str, seed: int, *, region: str, source: Path | None) -> None:
    """:func:`convert_breizhcrops` on the files under ``source``, or downloaded ones (only when converting)."""
    convert_breizhcrops(folder, mode, seed, **_source_files(region, source), region=region)


def _checked_download(name: str, columns: tuple[str, ...], what: str) -> Path:
    """A downloaded CSV of the registry, whose columns are checked (BreizhCrops publishes no checksum)."""
    path = fetch(name)
    _read_csv(path, columns, what, downloaded=True)
    return path


def prepare_breizhcrops(
    region: str = "belle-ile", mode: str | None = None, seed: int = 0, source: Path | None = None
) -> Path:
    """The folder of a BreizhCrops region in the course's parcel layout, downloaded and converted on first use.

    Args:
        region: ``"belle-ile"`` (:data:`REGIONS`; about 17 MB).
        mode: decides how many parcels are kept (:func:`parcels_kept`); ``None`` reads ``COURSE_MODE``.
        seed: seeds the subset and the stratified split.
        source: a folder holding ``<region>.h5``, ``<region>.csv`` (L1C) and ``classmapping.csv``, e.g. the
            breizhcrops package's root folder; ``None`` downloads them (see :mod:`course_utils.data.download`).

    Raises:
        ValueError: for another region, or files that are not BreizhCrops' (downloaded ones are deleted).
        ConnectionError: when the files must be downloaded and the host cannot be reached.
    """
    if region not in REGIONS:
        raise ValueError(
            f"BreizhCrops region {region!r} is not offered; choose one of {', '.join(REGIONS)} (the departments "
            "frh01-frh04 are 1.5-2.6 GB each)."
        )
    convert = partial(_convert_region, region=region, source=source)
    return ensure_generated(f"breizhcrops-{region}", mode or get_mode(), seed, convert)


class BreizhCropsDataset(ParcelSeriesDataset):
    """BreizhCrops parcels with the samples of :class:`~course_utils.data.parcels.ParcelSeriesDataset`.

    A sample is ``{"x": float32 [T, 13] normalised, "doy": int64 [T], "mask": bool [T], "label": int64, "id": str}``;
    the bands are normalised with the statistics of the region's training parcels, or with ``stats``.

    Args:
        split: ``train``, ``val`` or ``test``.
        region: a BreizhCrops region (:data:`REGIONS`).
        mode: how many parcels are kept; ``None`` reads ``COURSE_MODE``.
        seed: seeds the subset and the split (and the subsampling of long series).
        seq_len: fixed sequence length, or ``None`` for variable length.
        drop_cloudy: leave out observations flagged by the QA60 cloud mask.
        transform: applied to each sample dict after normalisation.
        stats: ``(mean, std)`` per band in reflectance, instead of the training parcels'.
        source: a folder with the BreizhCrops files (default: download them).

    Attributes:
        class_names: the name of each label index.
    """

    def __init__(
        self,
        split: str,
        region: str = "belle-ile",
        mode: str | None = None,
        seed: int = 0,
        seq_len: int | None = 45,
        drop_cloudy: bool = False,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        stats: tuple[np.ndarray, np.ndarray] | None = None,
        source: Path | None = None,
    ) -> None:
        folder = prepare_breizhcrops(region, mode, seed, source)
        super().__init__(split, None, mode, seed, seq_len, drop_cloudy, transform, stats, folder=folder)
        self.class_names = _class_names(folder)


def _class_names(folder: Path) -> tuple[str, ...]:
    """Label index -> class name, from a converted folder's ``classes.csv``."""
    classes = pd.read_csv(folder / "classes.csv").sort_values("label")
    return tuple(classes["crop"])


def _check_dataset(dataset: str) -> str:
    """The BreizhCrops region named by ``dataset`` (``breizhcrops-<region>``), or ``""`` for the generated data."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset {dataset!r} is not one of {', '.join(DATASETS)}.")
    return dataset.removeprefix("breizhcrops-") if dataset != "generated" else ""


def parcel_dataset(
    split: str,
    dataset: str = "generated",
    region: str | None = None,
    mode: str | None = None,
    seed: int = 0,
    seq_len: int | None = 45,
    drop_cloudy: bool = False,
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    stats: tuple[np.ndarray, np.ndarray] | None = None,
) -> ParcelSeriesDataset:
    """Parcel time series of the generated data or of BreizhCrops, with the same samples.

    Args:
        split: ``train``, ``val`` or ``test``.
        dataset: ``"generated"`` (the default, offline) or ``"breizhcrops-belle-ile"`` (downloaded on first use).
        region: a region of the generated data, ``"A"`` or ``"B"`` (ignored for BreizhCrops: its region is its name).
        mode: data size; ``None`` reads ``COURSE_MODE``.
        seed: the generator's seed, or the seed of BreizhCrops' subset and split.
        seq_len: fixed sequence length, or ``None`` for variable length.
        drop_cloudy: leave out observations flagged as cloudy.
        transform: applied to each sample after normalisation.
        stats: ``(mean, std)`` per band in reflectance, instead of the training split's.

    Raises:
        ValueError: for an unknown dataset name.
    """
    breizhcrops_region = _check_dataset(dataset)
    if not breizhcrops_region:
        return ParcelSeriesDataset(split, region, mode, seed, seq_len, drop_cloudy, transform, stats)
    return BreizhCropsDataset(split, breizhcrops_region, mode, seed, seq_len, drop_cloudy, transform, stats)


def parcel_folder(dataset: str = "generated", mode: str | None = None, seed: int = 0) -> Path:
    """The folder of ``dataset`` in the course's parcel layout (see :func:`parcel_dataset`), made on first use.

    Raises:
        ValueError: for an unknown dataset name.
    """
    breizhcrops_region = _check_dataset(dataset)
    if not breizhcrops_region:
        return ensure_parcels(mode, seed)
    return prepare_breizhcrops(breizhcrops_region, mode, seed)


def parcel_class_names(dataset: str = "generated", mode: str | None = None, seed: int = 0) -> tuple[str, ...]:
    """The class name of each label index of ``dataset`` (see :func:`parcel_dataset`).

    Raises:
        ValueError: for an unknown dataset name.
    """
    return CROP_CLASSES if dataset == "generated" else _class_names(parcel_folder(dataset, mode, seed))


def parcel_region(dataset: str = "generated", region: str = "A") -> str:
    """The region name that the catalog of ``dataset`` uses: ``region`` for the generated data, else BreizhCrops'.

    Raises:
        ValueError: for an unknown dataset name.
    """
    return _check_dataset(dataset) or region
