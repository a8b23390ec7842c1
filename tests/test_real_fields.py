"""Fields of The World in the course layout, on a tiny FTW-like folder the test writes (no download)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from rasterio.crs import CRS
from rasterio.transform import from_origin

from course_utils.data import download
from course_utils.data.fields import BANDS, FieldChipDataset
from course_utils.data.real_fields import (
    FTW_BANDS,
    FTWChipDataset,
    chips_per_split,
    field_chip_dataset,
    ftw_to_course_bands,
    prepare_ftw,
)
from course_utils.data.store import read_catalog
from course_utils.geo import read_raster, write_raster

SIZE = 32
SPLIT_SIZES = {"train": 14, "val": 5, "test": 4}  # smoke keeps 12 / 4 / 4


def write_ftw_country(root: Path, country: str, label_value: int = 2) -> dict[str, np.ndarray]:
    """A tiny FTW country: window a/b images (R, G, B, NIR), 2- and 3-class masks, the split table.

    Chip ``k`` has red = 1000 + k, green = 2000 + k, blue = 3000 + k, NIR = 4000 + k everywhere, so a test can
    tell the bands and the chips apart. One training AOI has no imagery, as some have in FTW.
    """
    profile = {"crs": CRS.from_epsg(32633), "transform": from_origin(500_000, 5_300_000, 10, 10), "nodata": 0}
    rows, images = [], {}
    k = 0
    for split, count in SPLIT_SIZES.items():
        for _ in range(count):
            aoi = f"g{k:03d}"
            rows.append({"aoi_id": aoi, "split": split})
            image = (np.array([1000, 2000, 3000, 4000], np.uint16) + k)[:, None, None] * np.ones((1, SIZE, SIZE), "u2")
            images[aoi] = image
            mask = np.zeros((SIZE, SIZE), np.uint8)
            mask[4:20, 4:20] = 1
            mask[4, 4:20] = label_value
            for window in ("a", "b"):
                write_raster(root / "s2_images" / f"window_{window}" / f"{aoi}.tif", image + (window == "b"), profile)
            write_raster(root / "label_masks" / "semantic_3class" / f"{aoi}.tif", mask, profile)
            write_raster(root / "label_masks" / "semantic_2class" / f"{aoi}.tif", (mask > 0).astype("u1"), profile)
            k += 1
    rows.append({"aoi_id": "no-imagery", "split": "train"})
    pd.DataFrame(rows).to_parquet(root / f"chips_{country}.parquet")
    return images


@pytest.fixture(scope="module")
def ftw_source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("ftw") / "austria"
    return root, write_ftw_country(root, "austria")


def test_bands_are_reordered_to_blue_green_red_nir() -> None:
    image = np.arange(4)[:, None, None] * np.ones((4, 2, 2))
    course = ftw_to_course_bands(image)
    for band in BANDS:
        assert course[BANDS.index(band), 0, 0] == FTW_BANDS.index(band)
    with pytest.raises(ValueError, match="one FTW window"):
        ftw_to_course_bands(np.zeros((8, 2, 2)))


def test_prepare_converts_a_seeded_subset_into_the_course_layout(course_data_dir, ftw_source) -> None:
    source, images = ftw_source
    folder = prepare_ftw("austria", "smoke", seed=0, source=source)
    catalog = read_catalog(folder)
    assert catalog.groupby("split").size().to_dict() == chips_per_split("smoke")
    assert "no-imagery" not in set(catalog["id"]) and set(catalog["region"]) == {"austria"}
    row = catalog.iloc[0]
    chip, profile = read_raster(folder / row["image"])
    assert chip[:, 0, 0].tolist() == ftw_to_course_bands(images[row["id"]])[:, 0, 0].tolist()
    assert profile["crs"] == CRS.from_epsg(32633) and profile["transform"].a == 10
    mask = read_raster(folder / row["label"])[0][0]
    assert np.bincount(mask.ravel(), minlength=3).tolist() == [SIZE * SIZE - 256, 240, 16]
    assert row["field_fraction"] == pytest.approx(256 / SIZE**2, abs=1e-4)
    other_seed = read_catalog(prepare_ftw("austria", "smoke", seed=1, source=source), split="train")
    assert set(other_seed["id"]) != set(read_catalog(folder, split="train")["id"])
    window_b = read_catalog(prepare_ftw("austria", "smoke", seed=0, window="b", source=source))
    assert read_raster(folder.parent / "ftw-austria-windowb-smoke-seed0" / window_b.iloc[0]["image"])[0][
        0, 0, 0
    ] == 3001 + int(window_b.iloc[0]["id"][1:])


def test_converted_chips_keep_ftw_nodata(course_data_dir, ftw_source) -> None:
    """FTW's uint16 chips mark nodata 0; rasterio reads it as 0.0, which must not be lost on the way."""
    folder = prepare_ftw("austria", "smoke", seed=0, source=ftw_source[0])
    row = read_catalog(folder).iloc[0]
    assert read_raster(folder / row["image"])[1]["nodata"] == 0
    assert read_raster(folder / row["label"])[1]["nodata"] is None  # every label value is a class


def test_dataset_yields_course_samples_normalised_with_real_statistics(course_data_dir, ftw_source) -> None:
    source, images = ftw_source
    train = FTWChipDataset("train", "austria", "smoke", source=source)
    test = FTWChipDataset("test", "austria", "smoke", source=source, stats=train.stats)
    blue = np.array([ftw_to_course_bands(images[aoi])[0, 0, 0] for aoi in train.catalog["id"]], float)
    assert train.stats[0][0] == pytest.approx(blue.mean(), rel=1e-5)  # blue: FTW's third band
    assert train.stats[1][0] == pytest.approx(blue.std(), rel=1e-4)
    sample = test[0]
    assert sample["image"].shape == (4, SIZE, SIZE) and sample["image"].dtype == torch.float32
    expected = (ftw_to_course_bands(images[sample["id"]])[:, 0, 0] - train.stats[0]) / train.stats[1]
    assert sample["image"][:, 0, 0].numpy() == pytest.approx(expected, rel=1e-5)
    assert sample["mask"].dtype == torch.int64 and set(sample["mask"].unique().tolist()) == {0, 1, 2}


def test_entry_point_switches_between_generated_and_ftw(course_data_dir, ftw_source, monkeypatch) -> None:
    monkeypatch.setattr("course_utils.data.real_fields.fetch", lambda name: ftw_source[0])
    real = field_chip_dataset("val", "ftw-austria", mode="smoke")
    assert isinstance(real, FTWChipDataset) and len(real) == chips_per_split("smoke")["val"]
    generated = field_chip_dataset("val", "generated", region="smallholder", mode="smoke")
    assert type(generated) is FieldChipDataset
    assert real[0].keys() == generated[0].keys() and real[0]["image"].shape[0] == generated[0]["image"].shape[0]
    with pytest.raises(ValueError, match="'generated' or 'ftw-<country>'"):
        field_chip_dataset("val", "eurosat")


def test_bad_input_is_refused_with_what_to_do(course_data_dir, tmp_path) -> None:
    with pytest.raises(ValueError, match="presence-only.*choose a fully labelled country"):
        prepare_ftw("kenya", "smoke", source=tmp_path)
    with pytest.raises(ValueError, match="no country 'atlantis'"):
        prepare_ftw("atlantis", "smoke", source=tmp_path)
    with pytest.raises(ValueError, match="window 'c'"):
        prepare_ftw("austria", "smoke", window="c", source=tmp_path)
    with pytest.raises(FileNotFoundError, match="not an extracted FTW archive"):
        prepare_ftw("belgium", "smoke", source=tmp_path)
    with pytest.raises(ValueError, match="no chips, no scenes|FTW has chips only"):
        FTWChipDataset("scene", "austria", "smoke", source=tmp_path)
    assert not list(course_data_dir.glob("ftw-belgium*"))  # the failed conversion left nothing behind


def test_unlabelled_pixels_are_refused_and_nothing_is_left(course_data_dir, tmp_path) -> None:
    write_ftw_country(tmp_path / "denmark", "denmark", label_value=3)
    with pytest.raises(ValueError, match=r"label values \[0, 1, 3\]; expected 0-2"):
        prepare_ftw("denmark", "smoke", source=tmp_path)
    assert not list(course_data_dir.glob("*denmark*"))


def test_offline_download_names_the_generated_alternative(course_data_dir, monkeypatch) -> None:
    monkeypatch.setenv(download.MIRROR_ENV, "http://127.0.0.1:9")  # the discard port: connection refused
    with pytest.raises(ConnectionError, match='DATASET = "generated"'):
        prepare_ftw("luxembourg", "smoke")


def test_real_ftw_sample_reorders_to_plausible_reflectance(real_samples: Path) -> None:
    """The FTW sample scene (window A then B, each R, G, B, NIR): blue is the darkest visible band of farmland."""
    image, profile = read_raster(real_samples / "ftw_s2_austria" / "inference-img.tif")
    assert image.shape[0] == 8 and profile["crs"].to_epsg() == 32633
    for window in (image[:4], image[4:]):
        blue, green, red, nir = ftw_to_course_bands(window).reshape(4, -1).astype(float).mean(1)
        assert blue < red < green < nir / 2  # summer vegetation, L2A: blue absorbed most, NIR plateau
