"""EuroSAT on a tiny EuroSAT-like archive the test writes (13-band GeoTIFFs in class folders, split lists)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from rasterio.crs import CRS
from rasterio.transform import from_origin

from course_utils.data.eurosat import CLASS_NAMES, EUROSAT_BANDS, EuroSATDataset, read_patch
from course_utils.data.landscape import S2_BANDS
from course_utils.geo import write_raster

BASE = "ds/images/remote_sensing/otherDatasets/sentinel_2/tif"


@pytest.fixture(scope="module")
def eurosat(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """Two classes x 3 patches; band ``b`` of patch ``k`` holds ``100 * (b + 1) + k`` (stored units)."""
    root = tmp_path_factory.mktemp("eurosat")
    profile = {"crs": CRS.from_epsg(32632), "transform": from_origin(533_000, 5_567_000, 10, 10), "nodata": None}
    lists = {split: [] for split in ("train", "val", "test")}
    for name in ("Forest", "River"):
        for k in range(1, 4):
            image = (100 * np.arange(1, 14) + k)[:, None, None] * np.ones((1, 8, 8))
            write_raster(root / BASE / name / f"{name}_{k}.tif", image.astype(np.uint16), profile)
            lists[("train", "train", "test")[k - 1]].append(f"{name}_{k}.jpg")  # listed as .jpg, as EuroSAT does
    lists["val"] = lists["test"]
    paths = {}
    for split, names in lists.items():
        paths[split] = root / f"eurosat-{split}.txt"
        paths[split].write_text("\n".join(names) + "\n")
    return root, paths


def test_patch_drops_the_cirrus_band_and_scales_to_reflectance(eurosat) -> None:
    root, _ = eurosat
    patch = read_patch(root / BASE / "Forest" / "Forest_2.tif")
    assert patch.shape == (12, 8, 8) and patch.dtype == np.float32
    expected = [(100 * (EUROSAT_BANDS.index(band) + 1) + 2) / 10_000 for band in S2_BANDS]
    assert patch[:, 0, 0] == pytest.approx(expected)
    assert not np.isclose(patch, 0.1102).any()  # B10, the eleventh band, is gone


def test_dataset_labels_and_normalises_with_training_statistics(eurosat) -> None:
    root, lists = eurosat
    train = EuroSATDataset("train", folder=root, split_lists=lists)
    test = EuroSATDataset("test", folder=root, split_lists=lists, stats=train.stats)
    assert len(train) == 4 and len(test) == 2
    assert sorted(int(s["label"]) for s in (train[i] for i in range(4))) == [1, 1, 8, 8]  # Forest, River
    assert CLASS_NAMES[int(test[0]["label"])] in ("Forest", "River")
    assert train.stats[0][0] == pytest.approx((100 + 1.5) / 10_000)  # B1 of patches 1 and 2
    sample = test[0]
    assert sample["s2"].shape == (12, 8, 8) and sample["s2"].dtype == torch.float32
    assert torch.allclose(sample["s2"][:, 0, 0], torch.full((12,), 1.5 / 0.5), atol=1e-3)  # k=3: 1.5 std above


def test_missing_images_and_bad_split_are_explained(eurosat, tmp_path) -> None:
    root, lists = eurosat
    broken = tmp_path / "train.txt"
    broken.write_text("Forest_99.jpg\n")
    with pytest.raises(FileNotFoundError, match="download it again"):
        EuroSATDataset("train", folder=root, split_lists={**lists, "train": broken})
    with pytest.raises(ValueError, match="split 'scene'"):
        EuroSATDataset("scene", folder=root, split_lists=lists)
