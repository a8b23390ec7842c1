"""The field-scene family: real GeoTIFF/GeoPackage files, labels that agree with the polygons, regions that differ."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import torch

from course_utils.data import fields, store
from course_utils.geo import read_raster


@pytest.fixture(scope="module")
def smoke(course_data_dir: Path) -> Path:
    """The smoke dataset with seed 0, generated once for this module."""
    return fields.ensure_fields("smoke", seed=0)


@pytest.fixture(scope="module")
def catalog(smoke: Path) -> pd.DataFrame:
    return store.read_catalog(smoke)


def test_catalog_lists_every_split_region_and_file(smoke: Path, catalog: pd.DataFrame) -> None:
    assert set(catalog["region"]) == set(fields.REGIONS)
    assert set(catalog["split"]) == set(fields.SPLITS)
    assert catalog["id"].is_unique
    for column in ("image", "label", "fields"):
        assert all((smoke / path).is_file() for path in catalog[column])
    assert (catalog.loc[catalog["split"] == "train", "field_fraction"] > 0.1).all()


def test_chips_are_utm_geotiffs_with_planet_pixels_and_reflectance(smoke: Path, catalog: pd.DataFrame) -> None:
    for row in catalog.groupby("region").head(1).itertuples():
        with rasterio.open(smoke / row.image) as src:
            assert src.driver == "GTiff" and src.count == 4 and src.dtypes[0] == "uint16" and src.nodata == 0
            assert src.crs.to_epsg() == fields.REGIONS[row.region].epsg and src.crs.is_projected
            assert src.transform.a == pytest.approx(fields.PIXEL_SIZE) and src.transform.e == pytest.approx(-4.77)
            assert src.width == src.height == 128
            lon, lat = rasterio.warp.transform(src.crs, "EPSG:4326", [src.bounds.left], [src.bounds.top])
            assert np.allclose((lon[0], lat[0]), fields.REGIONS[row.region].lon_lat, atol=1.0)
            image = src.read()
        assert image.min() >= 1
        median = np.median(image.reshape(4, -1), axis=1)  # vegetation: NIR well above red, blue darkest
        assert 100 < median[0] < 1500 and median[3] > median[2] and 800 < median[3] < 6000


def test_labels_equal_the_rasterised_written_polygons(smoke: Path, catalog: pd.DataFrame) -> None:
    polygons = {region: gpd.read_file(smoke / f"fields/{region}.gpkg") for region in fields.REGIONS}
    for region, table in polygons.items():
        assert table.crs.to_epsg() == 4326
        assert {"field_id", "crop", "region", "chip_id"} <= set(table.columns)
        assert set(table["region"]) == {region} and table["field_id"].is_unique
    for row in catalog.itertuples():
        label, profile = read_raster(smoke / row.label)
        chip_fields = polygons[row.region][polygons[row.region]["chip_id"] == row.id]
        assert len(chip_fields) == row.n_fields
        np.testing.assert_array_equal(label[0], fields.label_mask(chip_fields, profile))


def test_all_classes_present_with_a_plausible_edge_share(smoke: Path, catalog: pd.DataFrame) -> None:
    for region, chips in catalog[catalog["split"] == "train"].groupby("region"):
        labels = np.stack([read_raster(smoke / path)[0][0] for path in chips["label"]])
        shares = np.bincount(labels.ravel(), minlength=3) / labels.size
        assert set(np.unique(labels)) == {0, 1, 2}
        assert 0.1 < shares[0] < 0.8, (region, shares)
        assert 0.03 < shares[2] < 0.5 and 0.05 < shares[2] / (shares[1] + shares[2]) < 0.8, (region, shares)


def test_regions_differ_in_field_size_soil_greenness_and_gain(smoke: Path, catalog: pd.DataFrame) -> None:
    chips = catalog[catalog["split"] != "scene"].groupby("region")
    field_px = chips["mean_field_px"].median()
    assert field_px["commercial"] > 5 * field_px["smallholder"]
    band_means = {}
    for region, table in chips:
        images = np.stack([read_raster(smoke / path)[0] for path in table["image"]]).astype(float)
        band_means[region] = np.median(images, axis=(0, 2, 3))
    small, large = band_means["smallholder"], band_means["commercial"]
    assert large[2] > 1.3 * small[2]  # pale sandy soil and an early season: redder, brighter
    assert small[3] / small[2] > 1.5 * large[3] / large[2]  # the smallholder season is greener
    assert fields.REGIONS["commercial"].gain != fields.REGIONS["smallholder"].gain


def test_same_seed_same_files_other_seed_other_data(smoke: Path, catalog: pd.DataFrame, tmp_path: Path) -> None:
    wanted = {"smallholder-train-0000", "commercial-test-0001", "commercial-scene-0000"}
    rows = {}
    for seed in (0, 1):
        for job in fields._chip_jobs("smoke", seed):
            if job[1] in wanted:
                rows[seed, job[1]], _, _ = fields._write_chip(tmp_path / f"seed{seed}", *job)
    for chip_id in wanted:
        assert rows[0, chip_id] == catalog.set_index("id").loc[chip_id].to_dict() | {"id": chip_id}
        assert rows[1, chip_id]["n_fields"] != rows[0, chip_id]["n_fields"]
        for path in (f"{'scenes' if 'scene' in chip_id else 'chips'}/{chip_id}.tif", f"labels/{chip_id}.tif"):
            original = (smoke / path).read_bytes()
            assert original == (tmp_path / "seed0" / path).read_bytes()
            assert original != (tmp_path / "seed1" / path).read_bytes()


def test_dataset_sample_format_and_train_normalisation(smoke: Path) -> None:
    train = fields.FieldChipDataset("train", region="smallholder", mode="smoke")
    assert len(train) == len(train.catalog) == 6 and set(train.catalog["split"]) == {"train"}
    sample = train[0]
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (4, 128, 128)
    assert sample["mask"].dtype == torch.int64 and set(sample["mask"].unique().tolist()) <= {0, 1, 2}
    assert sample["id"] == train.catalog["id"][0]
    images = torch.stack([s["image"] for s in train])
    torch.testing.assert_close(images.mean((0, 2, 3)), torch.zeros(4), atol=1e-3, rtol=0)
    torch.testing.assert_close(images.std((0, 2, 3)), torch.ones(4), atol=1e-2, rtol=0)
    test = fields.FieldChipDataset("test", region="smallholder", mode="smoke")
    np.testing.assert_array_equal(test.stats[0], train.stats[0])  # statistics come from the train split


def test_stats_override_and_transform(smoke: Path) -> None:
    small = fields.FieldChipDataset("train", region="smallholder", mode="smoke")
    shifted = fields.FieldChipDataset("test", region="commercial", mode="smoke", stats=small.stats)
    own = fields.FieldChipDataset("test", region="commercial", mode="smoke")
    assert not np.allclose(own.stats[0], small.stats[0])
    raw = read_raster(smoke / shifted.catalog["image"][0])[0][:, 0, 0].astype(np.float32)
    expected = (raw - small.stats[0]) / small.stats[1]
    np.testing.assert_allclose(shifted[0]["image"][:, 0, 0].numpy(), expected, rtol=1e-5)
    flipped = fields.FieldChipDataset(
        "test", region="commercial", mode="smoke", transform=lambda s: {**s, "mask": s["mask"].flip(-1)}
    )
    assert torch.equal(flipped[0]["mask"], own[0]["mask"].flip(-1))


def test_ndvi_of_vegetation_and_soil() -> None:
    image = np.array([[300, 300], [700, 1700], [450, 1700], [4000, 2250]], np.uint16).reshape(4, 1, 2)
    values = fields.ndvi(image)
    np.testing.assert_allclose(values[0], [(4000 - 450) / 4450, (2250 - 1700) / 3950], rtol=1e-5)
    torch.testing.assert_close(fields.ndvi(torch.from_numpy(image.astype(np.int32))), torch.from_numpy(values))



def test_ndvi_takes_band_names_or_indices_and_refuses_a_stack_it_cannot_read() -> None:
    from course_utils.data.landscape import S2_BANDS

    rng = np.random.default_rng(0)
    stack = rng.integers(100, 5000, size=(2, len(S2_BANDS), 3, 5)).astype(np.uint16)  # [batch, 12 bands, H, W]
    red, nir = stack[:, 3].astype(np.float32), stack[:, 7].astype(np.float32)  # B4, B8
    expected = (nir - red) / (nir + red + 1e-6)
    np.testing.assert_allclose(fields.ndvi(stack, red="B4", nir="B8", bands=S2_BANDS), expected, rtol=1e-6)
    np.testing.assert_allclose(fields.ndvi(stack, red=3, nir=7), expected, rtol=1e-6)
    np.testing.assert_allclose(fields.ndvi(torch.from_numpy(stack.astype(np.int32)), red=3, nir=-5).numpy(), expected)
    with pytest.raises(ValueError, match="has 12 bands but bands= names 4"):
        fields.ndvi(stack)  # the 4-band default names on a 12-band stack would read B3 and B4
    with pytest.raises(ValueError, match="red band 'B4' is not one of the bands blue, green, red, nir"):
        fields.ndvi(stack[:, :4], red="B4")
    with pytest.raises(IndexError, match="nir band index 12 is outside the 12 bands"):
        fields.ndvi(stack, red=3, nir=12)
    chip = stack[0, [1, 2, 3, 7]]  # a 4-band B, G, R, NIR chip: the default still reads red and NIR
    np.testing.assert_allclose(fields.ndvi(chip), expected[0], rtol=1e-6)

def test_bad_split_region_or_stats_say_what_to_do(smoke: Path) -> None:
    with pytest.raises(ValueError, match="split 'training' is not one of train, val, test, scene"):
        fields.FieldChipDataset("training", mode="smoke")
    with pytest.raises(ValueError, match="region 'kenya' is not one of smallholder, commercial"):
        fields.FieldChipDataset("train", region="kenya", mode="smoke")
    with pytest.raises(ValueError, match="stats must hold 4 means"):
        fields.FieldChipDataset("train", mode="smoke", stats=(np.zeros(3), np.ones(3)))


def test_an_interrupted_generation_leaves_nothing_behind(
    course_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt("interrupted while writing the polygons")

    monkeypatch.setattr(gpd.GeoDataFrame, "to_file", fail)  # after every chip is written
    with pytest.raises(KeyboardInterrupt):
        fields.ensure_fields("smoke", seed=7)
    assert not store.dataset_dir("fields", "smoke", 7).exists()
    assert not list(course_data_dir.glob(".partial-*"))


def test_the_archive_images_each_chip_again_on_other_dates(smoke: Path, catalog: pd.DataFrame) -> None:
    archive = store.read_catalog(smoke / fields.ARCHIVE)
    chips = catalog[catalog["split"] != "scene"]
    assert len(archive) == 2 * len(chips) and set(archive["chip_id"]) == set(chips["id"])  # smoke: 2 dates a chip
    row = archive.iloc[0]
    chip = chips.set_index("id").loc[row["chip_id"]]
    assert (smoke / fields.ARCHIVE / row["label"]).resolve() == (smoke / chip["label"]).resolve()  # same fields
    dated, dated_profile = read_raster(smoke / fields.ARCHIVE / row["image"])
    labelled, profile = read_raster(smoke / chip["image"])
    assert dated_profile["transform"] == profile["transform"] and dated.shape == labelled.shape
    assert np.abs(dated.astype(float) - labelled).mean() > 20  # another date looks different
    samples = fields.FieldChipDataset("test", folder=smoke / fields.ARCHIVE)  # the course's dataset reads it as is
    assert samples[0]["mask"].shape == samples[0]["image"].shape[1:]


def test_the_labelled_date_is_neutral_and_other_dates_vary() -> None:
    region = fields.REGIONS["smallholder"]
    assert fields.LABELLED.on(region) == region
    dates = [fields.Acquisition.draw(np.random.default_rng(k)) for k in range(50)]
    for name in ("canopy", "soil_moisture", "haze", "offset"):
        values = [getattr(date, name) for date in dates]
        assert np.std(values) > 0, name
    assert any(date.harvested > 0 for date in dates) and any(date.shadow_px > 0 for date in dates)
