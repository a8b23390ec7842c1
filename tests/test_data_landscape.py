"""Landscape patches: files, determinism, physics that can fail, Dataset and pixel sampling (smoke size)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from course_utils.data import landscape as ls
from course_utils.data.store import read_catalog
from course_utils.geo import read_raster, write_raster

MODALITY_FILES = {"s2": "uint16", "s1": "float32", "dem": "float32", "landcover": "uint8", "cloud": "uint8"}


@pytest.fixture(scope="module")
def folder(course_data_dir: Path) -> Path:
    return ls.ensure_landscape("smoke", seed=0)


@pytest.fixture(scope="module")
def catalog(folder: Path) -> pd.DataFrame:
    return read_catalog(folder)


@pytest.fixture(scope="module")
def pixels(folder: Path, catalog: pd.DataFrame) -> dict[str, np.ndarray]:
    """Every pixel of the smoke set: S2 reflectance [12, N], S1 dB [2, N], WorldCover codes and cloud mask [N]."""
    arrays: dict[str, list[np.ndarray]] = {"s2": [], "s1": [], "landcover": [], "cloud": []}
    for _, row in catalog.iterrows():
        for key in arrays:
            array = ls.read_modality(folder, row[key], key)
            arrays[key].append(array.reshape(array.shape[0], -1))
    joined = {key: np.concatenate(parts, axis=1) for key, parts in arrays.items()}
    joined["landcover"] = joined["landcover"][0].astype(np.uint8)
    joined["cloud"] = joined["cloud"][0].astype(np.uint8)
    return joined


def _class_mean(pixels: dict[str, np.ndarray], modality: str, band: int, code: int) -> float:
    chosen = (pixels["landcover"] == code) & (pixels["cloud"] == ls.CLOUD_CLEAR)
    assert chosen.sum() > 100, f"too few clear {ls.WORLDCOVER[code]} pixels in the smoke set to test on"
    return float(pixels[modality][band, chosen].mean())


def test_catalog_columns_splits_and_sizes(catalog: pd.DataFrame) -> None:
    assert len(catalog) == ls.patch_count("smoke") == 48
    assert catalog["split"].value_counts().to_dict() == {"train": 34, "val": 7, "test": 7}
    assert catalog["id"].is_unique
    assert set(catalog["region"]) <= set(ls.CLIMATES) and catalog["region"].nunique() >= 4
    assert set(catalog["season"]) <= set(ls.SEASONS)
    fractions = catalog[[f"frac_{name}" for name in ls.CLASS_NAMES]].to_numpy()
    np.testing.assert_allclose(fractions.sum(axis=1), 1.0, atol=1e-4)
    assert catalog["cloud_cover"].between(0, 1).all()
    assert (catalog["cloud_cover"] == 0).mean() > 0.4, "most patches should be clear"
    assert (catalog["cloud_cover"] > 0.3).any(), "some patches should be heavily cloudy"


def test_dominant_labels_are_balanced(catalog: pd.DataFrame) -> None:
    counts = catalog["label"].value_counts()
    assert len(counts) >= 8, f"only {len(counts)} classes ever dominate"
    assert counts.max() <= 0.25 * len(catalog)


def test_label_is_argmax_of_fractions_from_the_raster(folder: Path, catalog: pd.DataFrame) -> None:
    for _, row in catalog.iterrows():
        codes, _ = read_raster(folder / row["landcover"])
        fractions = np.bincount(ls.codes_to_indices(codes).ravel(), minlength=ls.NUM_CLASSES) / codes.size
        np.testing.assert_allclose(row[[f"frac_{n}" for n in ls.CLASS_NAMES]].to_numpy(float), fractions, atol=1e-5)
        assert row["label"] == fractions.argmax()


def test_files_are_coregistered_utm_geotiffs(folder: Path, catalog: pd.DataFrame) -> None:
    for _, row in catalog.iloc[::8].iterrows():
        grids = set()
        for key, dtype in MODALITY_FILES.items():
            with rasterio.open(folder / row[key]) as src:
                assert src.driver == "GTiff" and src.dtypes[0] == dtype
                assert src.crs.to_epsg() == int(row["crs"].split(":")[1]) and 32601 <= src.crs.to_epsg() <= 32660
                assert src.res == (10.0, 10.0)
                grids.add((src.crs.to_string(), tuple(src.transform), src.width, src.height))
        assert len(grids) == 1, f"{row['id']}: modalities are not on one grid: {grids}"
        assert next(iter(grids))[2:] == (ls.PATCH_SIZE, ls.PATCH_SIZE)
        climate = ls.CLIMATES[row["region"]]
        assert abs(row["lon"] - climate.lon) < 1.0 and abs(row["lat"] - climate.lat) < 1.0


def test_value_ranges(pixels: dict[str, np.ndarray], catalog: pd.DataFrame) -> None:
    assert pixels["s2"].min() >= 0 and np.percentile(pixels["s2"], 99.9) <= 1.2
    low, high = np.percentile(pixels["s1"], [0.1, 99.9])
    assert -32 <= low and high <= 10, f"S1 dB range {low:.1f}..{high:.1f}"
    assert set(np.unique(pixels["landcover"])) <= set(ls.CLASS_CODES)
    assert set(np.unique(pixels["cloud"])) <= {ls.CLOUD_CLEAR, ls.CLOUD, ls.CLOUD_SHADOW}
    assert catalog["air_temperature"].between(-40, 45).all() and (catalog["precipitation"] >= 0).all()


def test_water_is_dark_in_nir_and_vv(pixels: dict[str, np.ndarray]) -> None:
    nir, vv = ls.S2_BANDS.index("B8"), ls.S1_BANDS.index("VV")
    for vegetation in (ls.TREE, ls.GRASS, ls.CROP):
        assert _class_mean(pixels, "s2", nir, ls.WATER) < _class_mean(pixels, "s2", nir, vegetation) - 0.1
        assert _class_mean(pixels, "s1", vv, ls.WATER) < _class_mean(pixels, "s1", vv, vegetation) - 5


def test_radar_brightness_of_built_up_and_forest(pixels: dict[str, np.ndarray]) -> None:
    vv, vh = ls.S1_BANDS.index("VV"), ls.S1_BANDS.index("VH")
    present = [c for c in ls.CLASS_CODES if ((pixels["landcover"] == c) & (pixels["cloud"] == 0)).sum() > 100]
    mean_vv = {code: _class_mean(pixels, "s1", vv, code) for code in present}
    assert max(mean_vv, key=mean_vv.get) == ls.BUILT
    assert _class_mean(pixels, "s1", vh, ls.TREE) > _class_mean(pixels, "s1", vh, ls.GRASS) + 1


def test_vegetation_red_edge_and_snow_swir(pixels: dict[str, np.ndarray]) -> None:
    red, nir, swir = (ls.S2_BANDS.index(b) for b in ("B4", "B8", "B11"))
    assert _class_mean(pixels, "s2", nir, ls.TREE) > 3 * _class_mean(pixels, "s2", red, ls.TREE)
    assert _class_mean(pixels, "s2", red, ls.SNOW) > 4 * _class_mean(pixels, "s2", swir, ls.SNOW)


def test_clouds_brighten_s2_but_leave_s1_alone(pixels: dict[str, np.ndarray]) -> None:
    """Per-class residuals: inside the cloud mask S2 blue is far above its class mean, S1 VV is not."""
    blue, vv = ls.S2_BANDS.index("B2"), ls.S1_BANDS.index("VV")
    clear = pixels["cloud"] == ls.CLOUD_CLEAR
    cloud = pixels["cloud"] == ls.CLOUD
    assert cloud.sum() > 1000
    s2_residual, s1_residual = np.zeros(cloud.size), np.zeros(cloud.size)
    for code in ls.CLASS_CODES:
        of_class = pixels["landcover"] == code
        if (of_class & clear).sum() > 100:
            s2_residual[of_class] = pixels["s2"][blue, of_class] - pixels["s2"][blue, of_class & clear].mean()
            s1_residual[of_class] = pixels["s1"][vv, of_class] - pixels["s1"][vv, of_class & clear].mean()
    assert s2_residual[cloud].mean() > 0.2
    assert abs(s1_residual[cloud].mean()) < 1.0


def test_add_clouds_flags_what_it_hides() -> None:
    rng = np.random.default_rng(3)
    ground = np.full((len(ls.S2_BANDS), 64, 64), 0.05, dtype=np.float32)
    cloudy, mask = ls.add_clouds(ground, cover=0.3, rng=rng)
    assert 0.25 <= (mask == ls.CLOUD).mean() <= 0.35
    assert (cloudy[:4, mask == ls.CLOUD] > 0.15).all()
    assert cloudy[:, mask == ls.CLOUD_SHADOW].mean() < 0.035, "shadows should darken the ground"
    clear, clear_mask = ls.add_clouds(ground, cover=0.0, rng=rng)
    assert (clear_mask == ls.CLOUD_CLEAR).all() and np.array_equal(clear, ground)


def test_clouds_are_opaque_inside_their_edge() -> None:
    """Most flagged cloud pixels carry the cloud's spectrum alone: the ground under them is lost."""
    rng = np.random.default_rng(4)
    ground = np.full((len(ls.S2_BANDS), 64, 64), 0.05, dtype=np.float32)
    cloudy, mask = ls.add_clouds(ground, cover=0.4, rng=rng)
    cloud_spectrum = np.array(ls.CLOUD_SPECTRUM, dtype=np.float32)[:, None]
    opaque = np.abs(cloudy[:, mask == ls.CLOUD] - cloud_spectrum).max(axis=0) < 1e-3
    assert opaque.mean() > 0.7


def _flat_landscape(code: int, size: int = ls.PATCH_SIZE) -> tuple[ls.Landscape, np.ndarray]:
    codes = np.full((size, size), code, dtype=np.uint8)
    land = ls.Landscape(codes=codes, dem=np.zeros((size, size), np.float32), crop_greenness=np.full((size, size), 0.5))
    return land, ls.class_abundances(codes)


def test_speckle_is_multiplicative_gamma_noise() -> None:
    """On a flat, uniform patch the power's coefficient of variation is about 1 / sqrt(looks)."""
    land, abundances = _flat_landscape(ls.GRASS)
    power = 10 ** (ls.sentinel1_backscatter(land, abundances, 37.5, 0.0, np.random.default_rng(0)) / 10)
    variation = power.std(axis=(1, 2)) / power.mean(axis=(1, 2))
    np.testing.assert_allclose(variation, 1 / np.sqrt(ls.LOOKS), rtol=0.25)


def test_backscatter_varies_between_patches_and_falls_with_incidence() -> None:
    land, abundances = _flat_landscape(ls.GRASS)
    means = [ls.sentinel1_backscatter(land, abundances, 37.5, 0.0, np.random.default_rng(s)).mean(axis=(1, 2))
             for s in range(40)]  # fmt: skip
    spread = np.std(means, axis=0)
    assert 0.5 * ls.BACKSCATTER_SPREAD_DB[ls.GRASS] < spread[0] < 2 * ls.BACKSCATTER_SPREAD_DB[ls.GRASS]
    steep, shallow = (ls.sentinel1_backscatter(land, abundances, angle, 0.0, np.random.default_rng(1)).mean()
                      for angle in (30.0, 45.0))  # fmt: skip
    assert steep > shallow + 1.0  # the same draw: only the incidence angle differs


def test_optical_separates_classes_better_than_radar(pixels: dict[str, np.ndarray]) -> None:
    """On clear pixels a linear classifier of the 12 S2 bands beats one of VV and VH by far (as in ben-ge,
    where Sentinel-2 is the stronger single modality); radar's value lies where clouds hide the optical."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    clear = np.flatnonzero(pixels["cloud"] == ls.CLOUD_CLEAR)
    train, test = np.split(rng.choice(clear, 8000, replace=False), 2)
    y = ls.codes_to_indices(pixels["landcover"])
    scores = {}
    for modality in ("s2", "s1"):
        X = pixels[modality].T
        X = (X - X[train].mean(0)) / X[train].std(0)
        scores[modality] = LogisticRegression(max_iter=1000).fit(X[train], y[train]).score(X[test], y[test])
    assert scores["s2"] > scores["s1"] + 0.2, scores


def test_same_seed_same_patch_other_seed_other_patch(folder: Path, catalog: pd.DataFrame, tmp_path: Path) -> None:
    plan = ls.plan_patches(ls.patch_count("smoke"), seed=0)[5]
    assert plan == ls.plan_patches(ls.patch_count("smoke"), seed=0)[5]
    row = ls.generate_patch(plan, tmp_path / "again", seed=0)
    assert row == {k: (v.item() if hasattr(v, "item") else v) for k, v in catalog.iloc[5].to_dict().items()}
    for key in MODALITY_FILES:
        np.testing.assert_array_equal(read_raster(tmp_path / "again" / row[key])[0], read_raster(folder / row[key])[0])
    other = ls.generate_patch(plan, tmp_path / "other", seed=1)
    assert not np.array_equal(read_raster(tmp_path / "other" / other["s2"])[0], read_raster(folder / row["s2"])[0])
    assert [p.target for p in ls.plan_patches(48, seed=1)] != [p.target for p in ls.plan_patches(48, seed=0)]


def test_dataset_sample_format(folder: Path) -> None:
    dataset = ls.LandscapeDataset("val", mode="smoke")
    assert len(dataset) == 7
    sample = dataset[0]
    size = ls.PATCH_SIZE
    expected = {"s2": (12, size, size), "s1": (2, size, size), "dem": (1, size, size), "cloud": (1, size, size)}
    for key, shape in expected.items():
        assert sample[key].dtype == torch.float32 and tuple(sample[key].shape) == shape
    assert sample["landcover"].dtype == torch.int64 and tuple(sample["landcover"].shape) == (size, size)
    assert 0 <= sample["landcover"].min() and sample["landcover"].max() < ls.NUM_CLASSES
    assert sample["label"].dtype == torch.int64 and sample["label"] == sample["fractions"].argmax()
    assert sample["fractions"].shape == (ls.NUM_CLASSES,) and abs(float(sample["fractions"].sum()) - 1) < 1e-3
    climate_one_hot = sample["scalars"][: len(ls.CLIMATES)]
    assert sample["scalars"].shape == (len(ls.CLIMATES) + len(ls.SEASONS) + 2,)
    assert climate_one_hot.sum() == 1
    assert list(ls.CLIMATES)[int(climate_one_hot.argmax())] == dataset.catalog["region"][0]
    assert isinstance(sample["id"], str) and sample["id"] == dataset.catalog["id"][0]
    only_s1 = ls.LandscapeDataset("val", mode="smoke", modalities=("s1",), transform=lambda s: {**s, "seen": True})[0]
    assert "s2" not in only_s1 and "dem" not in only_s1 and only_s1["seen"]


def test_dataset_normalises_with_training_statistics() -> None:
    train = ls.LandscapeDataset("train", mode="smoke")
    for modality in ls.MODALITIES:
        stacked = torch.stack([train[i][modality] for i in range(len(train))])
        mean, std = stacked.mean(dim=(0, 2, 3)), stacked.std(dim=(0, 2, 3))
        assert torch.allclose(mean, torch.zeros_like(mean), atol=0.02), (modality, mean)
        assert torch.allclose(std, torch.ones_like(std), atol=0.02), (modality, std)


def test_dataset_stats_override(folder: Path) -> None:
    identity = {m: (np.zeros(n, np.float32), np.ones(n, np.float32)) for m, n in (("s2", 12), ("s1", 2), ("dem", 1))}
    identity["weather"] = (np.zeros(2, np.float32), np.ones(2, np.float32))
    dataset = ls.LandscapeDataset("test", mode="smoke", stats=identity)
    raw_s2, _ = read_raster(folder / dataset.catalog["s2"][0])
    np.testing.assert_allclose(dataset[0]["s2"].numpy(), raw_s2 / ls.REFLECTANCE_SCALE, rtol=1e-6)
    assert dataset[0]["scalars"][-2].item() == pytest.approx(dataset.catalog["air_temperature"][0])
    with pytest.raises(ValueError, match="stats lacks"):
        ls.LandscapeDataset("test", mode="smoke", stats={"s2": identity["s2"]})


def write_patch_folder(folder: Path, s2_bands: int = 10, size: int = 16) -> Path:
    """Four co-registered patches in the course layout, as real ones may come: 10 S2 bands, no DEM, another place."""
    rng = np.random.default_rng(0)
    rows = []
    for k, split in enumerate(("train", "train", "train", "val")):
        name = f"real_{k}"
        profile = {"crs": "EPSG:32632", "transform": from_origin(400_000 + 1000 * k, 5_200_000, 10, 10), "nodata": None}
        codes = rng.choice([ls.TREE, ls.GRASS, ls.WATER], size=(size, size), p=[0.5, 0.3, 0.2]).astype(np.uint8)
        arrays = {
            "s2": rng.integers(0, 10_000, (s2_bands, size, size)).astype(np.uint16),
            "s1": rng.normal(-12, 4, (2, size, size)).astype(np.float32),
            "landcover": codes,
            "cloud": (rng.random((size, size)) < 0.1).astype(np.uint8),
        }
        paths = {key: f"{key}/{name}.tif" for key in arrays}
        for key, array in arrays.items():
            write_raster(folder / paths[key], array, profile)
        fractions = np.bincount(ls.codes_to_indices(codes).ravel(), minlength=ls.NUM_CLASSES) / codes.size
        rows.append(
            {"id": name, "region": "Alps", "split": split, **paths, "season": "summer", "air_temperature": 10.0 + k,
             "precipitation": 2.0 * k, "label": int(fractions.argmax()),
             **{f"frac_{n}": f for n, f in zip(ls.CLASS_NAMES, fractions, strict=True)}}
        )  # fmt: skip
    pd.DataFrame(rows).to_csv(folder / "catalog.csv", index=False)
    return folder


def test_dataset_reads_a_folder_of_real_patches(tmp_path: Path) -> None:
    folder = write_patch_folder(tmp_path / "real")
    modalities = ("s2", "s1")
    train = ls.LandscapeDataset("train", modalities=modalities, folder=folder)
    assert train.folder == folder and len(train) == 3 and set(train.stats) == {"s2", "s1", "weather"}
    stacked = torch.stack([train[i]["s2"] for i in range(len(train))])
    assert stacked.shape == (3, 10, 16, 16)
    torch.testing.assert_close(stacked.mean(dim=(0, 2, 3)), torch.zeros(10), atol=1e-4, rtol=0)
    sample = ls.LandscapeDataset("val", modalities=modalities, folder=folder)[0]
    row = read_catalog(folder, split="val").iloc[0]
    mean, std = train.stats["s2"]
    raw, _ = read_raster(folder / row["s2"])
    expected = (raw / ls.REFLECTANCE_SCALE - mean[:, None, None]) / std[:, None, None]
    np.testing.assert_allclose(sample["s2"].numpy(), expected, rtol=1e-5, atol=1e-5)
    assert sample["id"] == "real_3" and sample["s1"].shape == (2, 16, 16) and "dem" not in sample
    codes, _ = read_raster(folder / row["landcover"])
    np.testing.assert_array_equal(sample["landcover"].numpy(), ls.codes_to_indices(codes[0]))
    assert sample["label"] == sample["fractions"].argmax() == ls.CLASS_CODES.index(ls.TREE)
    assert sample["scalars"][: len(ls.CLIMATES)].sum() == 0  # a place outside the generator's climates
    assert sample["scalars"][len(ls.CLIMATES) + ls.SEASONS.index("summer")] == 1
    with pytest.raises(ValueError, match="has no column dem.*leave out the modalities it lacks"):
        ls.LandscapeDataset("val", folder=folder)  # the default modalities include the DEM


def test_sample_pixels_are_clear_spectra(folder: Path) -> None:
    X, y = ls.sample_pixels("val", 3000, mode="smoke")
    assert X.shape == (3000, 12) and X.dtype == np.float32 and y.shape == (3000,) and y.dtype == np.int64
    assert X.min() >= 0 and X.max() < 1.7  # sunlit snow slopes reach about 1.5
    assert 0 <= y.min() and y.max() < ls.NUM_CLASSES
    assert len(np.unique(y)) >= 6
    again, _ = ls.sample_pixels("val", 3000, mode="smoke")
    np.testing.assert_array_equal(X, again)
    table = read_catalog(folder, split="val")
    cloudy = set()
    for _, row in table.iterrows():
        s2 = ls.read_modality(folder, row["s2"], "s2").reshape(12, -1)
        cloud, _ = read_raster(folder / row["cloud"])
        cloudy |= {spectrum.tobytes() for spectrum in s2[:, cloud.ravel() != ls.CLOUD_CLEAR].T}
    assert cloudy, "the val split should hold some cloudy pixels for this test to mean something"
    assert not cloudy & {spectrum.tobytes() for spectrum in X}


def test_bad_input_gets_a_clear_error() -> None:
    with pytest.raises(ValueError, match="split 'training' is not one of train, val, test"):
        ls.LandscapeDataset("training", mode="smoke")
    with pytest.raises(ValueError, match="modality 'rgb'"):
        ls.LandscapeDataset("train", mode="smoke", modalities=("s2", "rgb"))
    with pytest.raises(ValueError, match="split"):
        ls.sample_pixels("everything", 10, mode="smoke")
    with pytest.raises(ValueError, match="not WorldCover classes"):
        ls.codes_to_indices(np.array([10, 95]))
    with pytest.raises(ValueError, match="mode"):
        ls.ensure_landscape("huge")


def test_interrupted_generation_leaves_nothing(course_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_generate_patch = ls.generate_patch
    calls = []

    def fail_on_third(plan: ls.PatchPlan, folder: Path, seed: int) -> dict:
        calls.append(plan.index)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_generate_patch(plan, folder, seed)

    monkeypatch.setattr(ls, "generate_patch", fail_on_third)
    with pytest.raises(KeyboardInterrupt):
        ls.ensure_landscape("smoke", seed=7)
    assert len(calls) == 3
    assert not (course_data_dir / "landscape-smoke-seed7").exists()
    assert not list(course_data_dir.glob(".partial-*"))
