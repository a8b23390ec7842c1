"""The parcel time-series family: files, phenology physics, Dataset format and a baseline that learns."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.ensemble import RandomForestClassifier

from course_utils.data import parcels
from course_utils.data.parcels import (
    CROP_CLASSES,
    S2_BANDS_13,
    ParcelSeriesDataset,
    collate_padded,
    ensure_parcels,
    flatten_for_baseline,
    generate,
)
from course_utils.data.store import dataset_dir
from course_utils.models.sits import LTAE, TempCNN

REAL_BANDS = {
    "ndvi": ("NDVI",),
    "formosat2": ("B1", "B2", "B3"),
    "s2_l2a": ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"),
}


@pytest.fixture(scope="module")
def folder(course_data_dir: Path) -> Path:
    return ensure_parcels("smoke", seed=0)


@pytest.fixture(scope="module")
def observations(folder: Path) -> pd.DataFrame:
    """All observations with their parcel's crop and region, reflectance as floats, and NDVI."""
    catalog = pd.read_csv(folder / "catalog.csv")
    table = pd.concat([pd.read_parquet(folder / name) for name in sorted(set(catalog["observations"]))])
    table = table.merge(catalog[["id", "crop", "region"]], left_on="parcel_id", right_on="id")
    for band in S2_BANDS_13:
        table[band] = table[band] / parcels.REFLECTANCE_SCALE
    table["ndvi"] = (table["B8"] - table["B4"]) / (table["B8"] + table["B4"])
    return table


def mean_ndvi_by_period(observations: pd.DataFrame, crop: str, region: str = "A", days: int = 20) -> pd.Series:
    """Mean NDVI of the clear observations of ``crop`` in periods of ``days`` days (index: period start)."""
    clear = observations[~observations["cloud"] & (observations["crop"] == crop) & (observations["region"] == region)]
    return clear.groupby((clear["doy"] - 1) // days * days + 1)["ndvi"].mean()


def green_up_day(observations: pd.DataFrame, crop: str, region: str) -> float:
    """Day the 10-day mean NDVI first rises through halfway between its minimum and maximum (interpolated)."""
    ndvi = mean_ndvi_by_period(observations, crop, region, days=10)
    days, values = ndvi.index.to_numpy() + 4.5, ndvi.to_numpy()
    halfway = (values.min() + values.max()) / 2
    after = int(np.argmax(values > halfway))
    return float(np.interp(halfway, values[after - 1 : after + 1], days[after - 1 : after + 1]))


def write_series_folder(folder: Path, bands: tuple[str, ...], n_parcels: int = 12) -> Path:
    """A small folder in the course's parcel layout with ``bands``; parcel R000 (train) is cloudy on every date."""
    rng = np.random.default_rng(len(bands))
    observations, catalog = [], []
    for k in range(n_parcels):
        parcel_id, label, n_obs = f"R{k:03d}", k % 3, 3 + k % 5
        doy = np.sort(rng.choice(np.arange(1, 366), n_obs, replace=False))
        table = pd.DataFrame(
            {
                "parcel_id": parcel_id,
                "date": (np.datetime64(f"{parcels.YEAR}-01-01") + doy - 1).astype("datetime64[s]"),
                "doy": doy.astype(np.int16),
                "cloud": np.full(n_obs, k == 0),
            }
        )
        values = rng.integers(500, 4000, (n_obs, len(bands))) + 1000 * label
        observations.append(pd.concat([table, pd.DataFrame(values.astype(np.uint16), columns=list(bands))], axis=1))
        split = ("train", "train", "val", "test")[k % 4]
        catalog.append(
            {"id": parcel_id, "region": "R", "split": split, "crop": CROP_CLASSES[label], "label": label,
             "n_obs": n_obs, "n_cloudy": n_obs * (k == 0), "observations": "observations_R.parquet"}
        )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    pd.concat(observations, ignore_index=True).to_parquet(folder / "observations_R.parquet", index=False)
    pd.DataFrame(catalog).to_csv(folder / "catalog.csv", index=False)
    return folder


@pytest.mark.parametrize("kind", list(REAL_BANDS))
def test_series_of_any_band_count_are_read_from_a_folder(kind: str, tmp_path: Path) -> None:
    bands = REAL_BANDS[kind]
    folder = write_series_folder(tmp_path / kind, bands)
    train = ParcelSeriesDataset("train", folder=folder, seq_len=None)
    assert train.bands == bands and all(s.shape == (len(bands),) for s in train.stats)
    stored = pd.read_parquet(folder / "observations_R.parquet").set_index("parcel_id")
    sample = train[1]
    expected = (stored.loc[[sample["id"]], list(bands)].to_numpy(np.float32) / 10_000 - train.stats[0]) / train.stats[1]
    np.testing.assert_allclose(sample["x"].numpy(), expected, rtol=1e-5, atol=1e-6)
    val = ParcelSeriesDataset("val", folder=folder, seq_len=8, stats=train.stats)
    assert val[0]["x"].shape == (8, len(bands))
    batch = collate_padded([val[i] for i in range(len(val))])
    for model in (TempCNN(len(train.bands), 3, hidden=8, dense=8), LTAE(len(train.bands), 3, dim=16, heads=4)):
        assert torch.isfinite(model.eval()(batch["x"], batch["doy"], batch["mask"])).all()
    clear = ParcelSeriesDataset("train", folder=folder, seq_len=None, drop_cloudy=True, stats=train.stats)
    assert len(clear[0]["x"]) == 0  # parcel R000 has no clear date
    features, labels = flatten_for_baseline(clear)
    assert features.shape == (len(clear), 37 * len(bands)) and (features[0] == 0).all()
    assert labels.tolist() == clear.catalog["label"].tolist()


def test_bands_argument_chooses_and_orders_the_bands(tmp_path: Path) -> None:
    folder = write_series_folder(tmp_path, REAL_BANDS["s2_l2a"])
    every = ParcelSeriesDataset("test", folder=folder, seq_len=None)
    nir_red = ParcelSeriesDataset("test", folder=folder, seq_len=None, bands=("B8", "B4"))
    assert nir_red.bands == ("B8", "B4") and nir_red[0]["x"].shape[1] == 2
    for chosen, full in zip(nir_red.stats, every.stats, strict=True):
        np.testing.assert_array_equal(chosen, full[[every.bands.index("B8"), every.bands.index("B4")]])
    mean, std = nir_red.stats
    stored = pd.read_parquet(folder / "observations_R.parquet").set_index("parcel_id").loc[[nir_red[0]["id"]]]
    np.testing.assert_allclose(nir_red[0]["x"].numpy() * std + mean, stored[["B8", "B4"]] / 10_000, rtol=1e-5)
    with pytest.raises(ValueError, match="no band B1; their bands are B2, B3, .*bands="):
        ParcelSeriesDataset("test", folder=folder, bands=("B1", "B4"))
    with pytest.raises(ValueError, match=r"10 values each, one per band \(B2, B3"):
        ParcelSeriesDataset("test", folder=folder, stats=(np.zeros(13), np.ones(13)))


def test_flatten_for_baseline_keeps_the_band_count_of_an_empty_series() -> None:
    """A series with no valid date becomes zeros of the samples' band count (not 13): here 3 bands."""
    doy = torch.tensor([10, 100, 200])
    full = {"x": torch.ones(3, 3), "doy": doy, "mask": torch.ones(3, dtype=torch.bool), "label": torch.tensor(1)}
    empty = {**full, "mask": torch.zeros(3, dtype=torch.bool), "label": torch.tensor(0)}
    features, labels = flatten_for_baseline([full, empty], step_days=10)
    assert features.shape == (2, 37 * 3) and (features[0] == 1).all() and (features[1] == 0).all()
    assert labels.tolist() == [1, 0]


def test_same_seed_same_files_different_seed_different_data(tmp_path: Path) -> None:
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        (tmp_path / name).mkdir()
        generate(tmp_path / name, "smoke", seed)
    first, same, other = (pd.read_parquet(tmp_path / name / "observations_A.parquet") for name in "abc")
    pd.testing.assert_frame_equal(first, same)
    assert not first[list(S2_BANDS_13)].equals(other[list(S2_BANDS_13)])
    assert (tmp_path / "a" / "catalog.csv").read_text() == (tmp_path / "b" / "catalog.csv").read_text()


def test_catalog_covers_every_class_in_every_split_and_region(folder: Path, observations: pd.DataFrame) -> None:
    catalog = pd.read_csv(folder / "catalog.csv")
    assert 280 <= len(catalog) <= 320 and catalog["id"].is_unique
    for (region, split), rows in catalog.groupby(["region", "split"]):
        assert set(rows["crop"]) == set(CROP_CLASSES), (region, split)
    assert (catalog["crop"] == [CROP_CLASSES[label] for label in catalog["label"]]).all()
    counts = observations.groupby("parcel_id").size()
    assert (counts.reindex(catalog["id"]).to_numpy() == catalog["n_obs"].to_numpy()).all()
    assert catalog["n_obs"].between(*parcels.OBSERVATIONS_PER_PARCEL).all() and catalog["n_obs"].nunique() > 10
    # imbalanced like real data: meadows and wheat common, nuts rare
    share = catalog["crop"].value_counts(normalize=True)
    assert share["temporary_meadows"] > 3 * share["nuts"] and share["wheat"] > 2 * share["nuts"]


def test_rare_classes_get_extra_test_parcels() -> None:
    table = parcels._parcel_table(parcels.REGIONS[0], 300, 20, np.random.default_rng(0))
    counts = pd.crosstab(table["crop"], table["split"])
    assert (counts["test"] >= 20).all() and (counts["train"] >= 4).all() and (counts["val"] >= 1).all()
    common = counts["train"].idxmax()  # the 70/15/15 split where a class is common enough
    assert counts.loc[common, "test"] == 20 or counts.loc[common, "test"] == counts.loc[common, "val"]
    assert table["parcel_id"].is_unique and len(table) == counts.to_numpy().sum()


def test_look_alike_crops_differ_by_timing_only() -> None:
    pairs = (("barley", "wheat", 14), ("sunflower", "corn", 18))  # (earlier, later, at least so many days apart)
    for early, late, days in pairs:
        a, b = parcels.PHENOLOGY[early], parcels.PHENOLOGY[late]
        assert b.green_up - a.green_up >= days and b.harvest - a.harvest >= days
        assert abs(a.winter_green - b.winter_green) < 0.01 and abs(a.peak_green - b.peak_green) < 0.05
        # the season's length and the wait from senescence to harvest are about the same
        assert abs((b.senescence - b.green_up) - (a.senescence - a.green_up)) <= 12
        assert abs((b.harvest - b.senescence) - (a.harvest - a.senescence)) <= 8


def test_parcel_polygons_are_realistic_fields(folder: Path) -> None:
    fields = gpd.read_file(folder / "parcels.gpkg")
    catalog = pd.read_csv(folder / "catalog.csv")
    assert fields.crs.to_epsg() == 4326
    assert list(fields["parcel_id"]) == list(catalog["id"])
    assert {"crop", "label", "region", "split", "area_m2"} <= set(fields.columns)
    assert fields.is_valid.all() and (fields.geometry.geom_type == "Polygon").all()
    hectares = fields.groupby("region")["area_m2"].median() / 1e4
    assert 0.5 < hectares["A"] < hectares["B"] < 10  # Breton fields are smaller
    centre = fields.to_crs(parcels.UTM_CRS).dissolve("region").centroid.to_crs(4326)
    assert 47.5 < centre["A"].y < 49 and -4 < centre["A"].x < -1.5  # Brittany
    assert centre["B"].y < centre["A"].y and centre["B"].x > centre["A"].x  # further south-east
    utm_area = fields.to_crs(parcels.UTM_CRS).area
    np.testing.assert_allclose(utm_area, fields["area_m2"], rtol=1e-3)


def test_dates_are_irregular_and_within_the_season(observations: pd.DataFrame) -> None:
    assert observations["date"].dt.year.eq(parcels.YEAR).all()
    assert observations["doy"].between(1, 365).all()
    np.testing.assert_array_equal(observations["date"].dt.day_of_year, observations["doy"])
    gaps = observations.groupby("parcel_id")["doy"].diff().dropna()
    assert (gaps > 0).all() and (gaps % 5 == 0).all()  # sorted, on the 5-day revisit
    assert gaps.nunique() > 4 and gaps.max() >= 20  # irregular, with long gaps
    first_day = observations.groupby("region")["doy"].min()
    assert first_day["A"] % 5 != first_day["B"] % 5  # regions are seen from different orbits


def test_summer_crops_peak_later_than_winter_cereals(observations: pd.DataFrame) -> None:
    peak = {crop: mean_ndvi_by_period(observations, crop).idxmax() for crop in ("corn", "wheat", "barley")}
    assert peak["corn"] >= peak["wheat"] + 60 and peak["corn"] >= peak["barley"] + 60, peak
    assert mean_ndvi_by_period(observations, "corn").max() > 0.55
    # barley greens up about two weeks before wheat
    assert green_up_day(observations, "barley", "A") < green_up_day(observations, "wheat", "A")


def test_meadows_stay_green_and_bare_soil_is_not(observations: pd.DataFrame) -> None:
    for crop in ("permanent_meadows", "temporary_meadows"):
        ndvi = mean_ndvi_by_period(observations, crop, days=30)
        months = ndvi.iloc[:12]  # the last period holds the few dates of the year's last five days
        assert len(ndvi) >= 12 and months.min() > 0.25, (crop, ndvi.round(2).to_dict())
    corn_winter = mean_ndvi_by_period(observations, "corn", days=30).iloc[:3]
    assert corn_winter.max() < 0.2  # bare soil before maize is sown


def test_region_b_greens_up_earlier(observations: pd.DataFrame) -> None:
    for crop in ("wheat", "corn"):
        days_a, days_b = green_up_day(observations, crop, "A"), green_up_day(observations, crop, "B")
        assert 8 <= days_a - days_b <= 28, (crop, days_a, days_b)  # 18 days in the generator


def test_flagged_clouds_are_bright_and_flat(observations: pd.DataFrame) -> None:
    cloudy, clear = observations[observations["cloud"]], observations[~observations["cloud"]]
    assert 0.15 < observations["cloud"].mean() < 0.6
    assert cloudy["B2"].median() > 0.3 and cloudy["B2"].median() > 2 * clear["B2"].median()
    assert cloudy["ndvi"].abs().median() < 0.05  # flat spectrum
    assert clear["B10"].median() < 0.01 < cloudy["B10"].median()  # the cirrus band sees clouds only


def test_dataset_sample_format_and_padding(course_data_dir: Path, folder: Path) -> None:
    dataset = ParcelSeriesDataset("val", mode="smoke", seq_len=45)
    catalog = pd.read_csv(folder / "catalog.csv").set_index("id")
    assert len(dataset) == (catalog["split"] == "val").sum()
    for index in range(len(dataset)):
        sample = dataset[index]
        n_obs = catalog.loc[sample["id"], "n_obs"]
        assert sample["x"].shape == (45, 13) and sample["x"].dtype == torch.float32 and dataset.bands == S2_BANDS_13
        assert sample["doy"].dtype == torch.int64 and sample["mask"].dtype == torch.bool
        assert sample["label"].dtype == torch.int64 and int(sample["label"]) == catalog.loc[sample["id"], "label"]
        n_real = min(n_obs, 45)
        assert sample["mask"][:n_real].all() and not sample["mask"][n_real:].any()  # padding at the end
        assert (sample["x"][n_real:] == 0).all() and (sample["doy"][n_real:] == 0).all()
        assert (torch.diff(sample["doy"][:n_real]) > 0).all()  # date order, also when subsampled
    again = dataset[0]
    torch.testing.assert_close(again["x"], dataset[0]["x"])  # deterministic per index


def test_normalisation_uses_the_training_split_and_stats_override(course_data_dir: Path, folder: Path) -> None:
    train = ParcelSeriesDataset("train", mode="smoke", seq_len=None)
    values = torch.cat([train[i]["x"] for i in range(len(train))])
    torch.testing.assert_close(values.mean(0), torch.zeros(13), atol=1e-3, rtol=0)
    torch.testing.assert_close(values.std(0), torch.ones(13), atol=1e-3, rtol=0)
    test = ParcelSeriesDataset("test", mode="smoke", seq_len=None)
    np.testing.assert_array_equal(test.stats[0], train.stats[0])

    identity = (np.zeros(13, np.float32), np.ones(13, np.float32))
    raw = ParcelSeriesDataset("test", mode="smoke", seq_len=None, stats=identity)
    stored = pd.read_parquet(folder / "observations_A.parquet")
    stored = stored[stored["parcel_id"] == raw[0]["id"]]
    np.testing.assert_allclose(raw[0]["x"].numpy() * 10_000, stored[list(S2_BANDS_13)].to_numpy(), atol=0.01)
    with pytest.raises(ValueError, match="13 values"):
        ParcelSeriesDataset("test", mode="smoke", stats=(np.zeros(12), np.ones(12)))


def test_drop_cloudy_leaves_out_flagged_observations(course_data_dir: Path, folder: Path) -> None:
    dataset = ParcelSeriesDataset("test", region="B", mode="smoke", seq_len=None, drop_cloudy=True)
    catalog = pd.read_csv(folder / "catalog.csv").set_index("id")
    for index in range(len(dataset)):
        sample = dataset[index]
        row = catalog.loc[sample["id"]]
        assert row["region"] == "B" and len(sample["x"]) == row["n_obs"] - row["n_cloudy"]


def test_collate_padded_batches_series_of_different_lengths(course_data_dir: Path) -> None:
    dataset = ParcelSeriesDataset("val", mode="smoke", seq_len=None)
    samples = [dataset[i] for i in range(6)]
    lengths = [len(sample["x"]) for sample in samples]
    assert len(set(lengths)) > 1
    batch = collate_padded(samples)
    assert batch["x"].shape == (6, max(lengths), 13) and batch["doy"].shape == (6, max(lengths))
    assert batch["mask"].sum(1).tolist() == lengths
    assert batch["id"] == [sample["id"] for sample in samples]
    assert batch["label"].tolist() == [int(sample["label"]) for sample in samples]
    torch.testing.assert_close(batch["x"][0, : lengths[0]], samples[0]["x"])
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, collate_fn=collate_padded)
    assert next(iter(loader))["x"].shape[0] == 8


def test_random_forest_on_flattened_series_beats_the_majority_class(course_data_dir: Path) -> None:
    train = ParcelSeriesDataset("train", mode="smoke", seq_len=None, drop_cloudy=True)  # cloud-masked, as in 06
    test = ParcelSeriesDataset("test", mode="smoke", seq_len=None, drop_cloudy=True, stats=train.stats)
    features, labels = flatten_for_baseline(train)
    assert features.shape == (len(train), 37 * 13) and np.isfinite(features).all()
    forest = RandomForestClassifier(n_estimators=100, random_state=0, n_jobs=1).fit(features, labels)
    test_features, test_labels = flatten_for_baseline(test)
    accuracy = (forest.predict(test_features) == test_labels).mean()
    majority = np.bincount(test_labels).max() / len(test_labels)
    assert accuracy > majority + 0.25, (accuracy, majority)


def test_bad_split_or_region_says_what_exists(course_data_dir: Path) -> None:
    with pytest.raises(ValueError, match="train, val, test"):
        ParcelSeriesDataset("training", mode="smoke")
    with pytest.raises(ValueError, match=r"\['A', 'B'\]"):
        ParcelSeriesDataset("train", region="C", mode="smoke")


def test_interrupted_generation_leaves_nothing_behind(course_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object) -> None:
        raise KeyboardInterrupt("simulated interruption")

    target = dataset_dir(parcels.FAMILY, "smoke", 7)
    with monkeypatch.context() as patch:
        patch.setattr(parcels, "_parcel_polygons", fail)
        with pytest.raises(KeyboardInterrupt):
            ensure_parcels("smoke", seed=7)
    assert not target.exists()
    assert not list(target.parent.glob(f"*{target.name}*"))
    assert (ensure_parcels("smoke", seed=7) / "catalog.csv").is_file()
