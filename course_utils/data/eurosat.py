"""EuroSAT (13-band Sentinel-2 L1C patches, 10 land-use classes) as scene-classification samples.

EuroSAT (Helber et al. 2019) cuts 64 x 64 px (10 m) patches from Sentinel-2 L1C scenes over Europe and labels
each with one land-use class. Its GeoTIFFs hold all 13 bands, stored as reflectance x 10 000 (``uint16``),
in the order B01-B08, B8A, B09, B10, B11, B12. The course's landscape patches have 12 bands: the cirrus band
B10 is dropped (it sees the stratosphere, not the ground), the rest keep their order, and reflectances are
divided by 10 000 and normalised with the training split's per-band statistics, as in
:class:`course_utils.data.landscape.LandscapeDataset`.

``eurosat100`` is torchgeo's 100-image subset (10 per class; 6 train, 2 val, 2 test): a few MB, for
workshops, not for benchmarking. There is no Sentinel-1 or land-cover map: a sample has ``s2`` and ``label``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from course_utils.data.download import fetch
from course_utils.data.landscape import S2_BANDS
from course_utils.data.store import band_statistics
from course_utils.geo import read_raster

EUROSAT_BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
"""Band order of EuroSAT's 13-band GeoTIFFs (B01 written B1, as the course names bands)."""
TO_COURSE_BANDS = [EUROSAT_BANDS.index(band) for band in S2_BANDS]
"""Indexes into :data:`EUROSAT_BANDS` that give the course's 12 Sentinel-2 bands (all but B10)."""
CLASS_NAMES = (
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
)
"""Class index -> EuroSAT class (the folder names, in torchgeo's order)."""
SPLITS = ("train", "val", "test")
REFLECTANCE_SCALE = 10_000


def split_files(folder: Path, split_list: Path) -> list[Path]:
    """The GeoTIFFs of one split: the names in ``split_list`` (``Forest_12.jpg``, one a line) found under ``folder``.

    Raises:
        FileNotFoundError: when a listed image is missing (the extracted archive is incomplete).
    """
    paths = {path.name: path for path in Path(folder).rglob("*.tif")}
    names = [line.strip().replace(".jpg", ".tif") for line in split_list.read_text().splitlines() if line.strip()]
    missing = [name for name in names if name not in paths]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} images of {split_list.name} are not under {folder} (e.g. {missing[0]}); delete the folder "
            "and download it again."
        )
    return [paths[name] for name in names]


def read_patch(path: Path) -> np.ndarray:
    """A EuroSAT GeoTIFF as the course's 12 bands of reflectance, float32 ``[12, 64, 64]``.

    Raises:
        ValueError: when the file does not have EuroSAT's 13 bands.
    """
    image, _ = read_raster(path)
    if image.shape[0] != len(EUROSAT_BANDS):
        raise ValueError(f"{path.name} has {image.shape[0]} bands; EuroSAT's all-band GeoTIFFs have 13.")
    return image[TO_COURSE_BANDS].astype(np.float32) / REFLECTANCE_SCALE


class EuroSATDataset(torch.utils.data.Dataset):
    """EuroSAT patches of one split: ``{"s2": float32 [12, 64, 64] normalised, "label": int64, "id": str}``.

    Args:
        split: ``train``, ``val`` or ``test``.
        transform: callable taking and returning a sample dict, applied after normalisation.
        stats: ``(mean, std)`` per band in reflectance, instead of the training split's.
        folder: an extracted EuroSAT archive; ``None`` downloads ``eurosat100``.
        split_lists: ``{split: path}`` of the split lists; ``None`` downloads ``eurosat100-<split>``.

    Raises:
        ValueError: for an unknown split, or an image whose class folder is not a EuroSAT class.
    """

    def __init__(
        self,
        split: str,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        stats: tuple[np.ndarray, np.ndarray] | None = None,
        folder: Path | None = None,
        split_lists: dict[str, Path] | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}.")
        folder = Path(folder) if folder is not None else fetch("eurosat100")
        lists = split_lists or {name: fetch(f"eurosat100-{name}") for name in SPLITS}
        self.paths = split_files(folder, lists[split])
        unknown = {path.parent.name for path in self.paths} - set(CLASS_NAMES)
        if unknown:
            raise ValueError(f"class folders {sorted(unknown)} are not EuroSAT classes ({', '.join(CLASS_NAMES)}).")
        self.labels = [CLASS_NAMES.index(path.parent.name) for path in self.paths]
        if stats is None:
            stats = band_statistics(read_patch(path) for path in split_files(folder, lists["train"]))
        self.stats = stats
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        mean, std = self.stats
        image = (read_patch(self.paths[index]) - mean[:, None, None]) / std[:, None, None]
        sample = {
            "s2": torch.from_numpy(image.astype(np.float32)),
            "label": torch.tensor(self.labels[index], dtype=torch.int64),
            "id": self.paths[index].stem,
        }
        return self.transform(sample) if self.transform is not None else sample
