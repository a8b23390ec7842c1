"""Your own scene: a plain GeoTIFF and GeoPackage outside the catalog, through the split, training, baselines,
scores, prediction and polygons (course_utils.data.scene, baselines, metrics.match_fields, geo.predict_raster on a
part, train_fields --image)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window
from scipy import ndimage
from shapely.geometry import box

from course_utils.baselines import PixelForest, fit_threshold_rule
from course_utils.data.scene import IGNORE, PARTS, FieldScene, SceneCrops, write_demo_scene
from course_utils.geo import predict_raster, read_fields, read_raster
from course_utils.metrics import match_fields
from course_utils.models.unet import UNet
from course_utils.train_fields import main, predict_fields, train_on_scene

SMOKE = {"mode": "smoke", "samples_per_epoch": 8, "progress": False}  # one epoch of two batches: seconds


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A scratch folder, with the checkpoints and results of this module kept in it."""
    folder = tmp_path_factory.mktemp("own-scene")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COURSE_CHECKPOINT_DIR", str(folder / "checkpoints"))
        patch.setenv("COURSE_RESULTS_DIR", str(folder / "results"))
        yield folder


@pytest.fixture(scope="module")
def scenes(folders: Path) -> dict[int, tuple[Path, Path]]:
    """Generated scenes of 3, 4 and 10 bands (UTM, a nodata corner) with their polygons in EPSG:4326."""
    return {bands: write_demo_scene(folders / f"scene{bands}", bands, nodata_corner=12) for bands in (3, 4, 10)}


@pytest.mark.parametrize("bands", [3, 4, 10])
def test_whole_flow_on_any_band_count(
    bands: int, scenes: dict[int, tuple[Path, Path]], folders: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tif, gpkg = scenes[bands]
    assert read_fields(gpkg).crs.to_epsg() == 4326 and rasterio.open(tif).crs.to_epsg() == 32736
    result = train_on_scene(tif, gpkg, out_dir=folders / f"out{bands}", **SMOKE)
    said = capsys.readouterr().out
    assert "reprojecting" in said and "EPSG:4326" in said  # the polygons were reprojected, and it says so
    assert ("NDVI" in said) == (bands >= 4)  # NDVI where a near-infrared band is named, plain bands otherwise
    assert set(result.scores) == {"U-Net", "threshold rule", "pixel forest"}
    for scores in result.scores.values():
        assert 0 <= scores["miou"] <= 1 and 0 <= scores["field_f1"] <= 1 and scores["reference_fields"] > 0
    assert result.scores["pixel forest"]["miou"] > 0.3  # the baselines are fitted: far above a constant map's ~0.2
    prediction, profile = read_raster(result.prediction)
    with rasterio.open(tif) as src:
        assert profile["crs"] == src.crs and profile["transform"] == src.transform
        assert prediction.shape[1:] == (src.height, src.width)
    assert (prediction[0, :12, :12] == 255).all()  # the nodata corner stays nodata
    fields = read_fields(result.fields)
    assert fields.crs == profile["crs"]
    assert result.model.norm_mean.shape == (bands,)


def test_split_keeps_a_buffer_between_parts(scenes: dict[int, tuple[Path, Path]]) -> None:
    tif, gpkg = scenes[4]
    scene = FieldScene(tif, gpkg, block=64, buffer=10)
    assert (scene.split.parts >= 0).sum() >= 9 and all(count >= 2 for count in scene.field_counts.values())
    near = ndimage.binary_dilation(scene.mask("train"), np.ones((21, 21), bool))  # within 10 px of training
    assert not (near & scene.mask("test")).any() and not (near & scene.mask("val")).any()
    # the labels outside the part and at nodata are IGNORE; the statistics come from the training part only
    assert (scene.part_labels("test")[scene.part != PARTS.index("test")] == IGNORE).all()
    assert (scene.labels[:12, :12] == IGNORE).all()
    train_pixels = scene.image[:, scene.mask("train")].astype(np.float64)
    np.testing.assert_allclose(scene.stats[0], train_pixels.mean(1), rtol=1e-5)
    # every training crop lies inside the training part
    crops = SceneCrops([scene], 32, 4)
    rows, cols = np.divmod(crops.positions[0], scene.labels.shape[1])
    assert len(rows) and all((scene.part[r : r + 32, c : c + 32] == 0).all() for r, c in zip(rows, cols, strict=True))
    sample = crops[0]
    assert sample["image"].shape == (4, 32, 32) and sample["mask"].shape == (32, 32)


def test_baselines_for_any_band_count(scenes: dict[int, tuple[Path, Path]]) -> None:
    tif, gpkg = scenes[3]
    scene = FieldScene(tif, gpkg, block=128, buffer=16)
    images, labels = scene.image[None], scene.part_labels("train")[None]
    rule = fit_threshold_rule(images, labels, edge_px=1)
    assert rule.band in (0, 1, 2) and set(np.unique(rule.predict(images))) <= {0, 1, 2}
    forest = PixelForest(trees=5, depth=6, pixels=2_000, neighbourhood=1, n_jobs=1).fit(images, labels)
    assert forest.forest.n_features_in_ == 9  # 3 bands, their neighbourhood means and spreads
    with pytest.raises(ValueError, match="neither"):
        fit_threshold_rule(images, labels, red=0)


def test_window_prediction_equals_the_whole_scene(scenes: dict[int, tuple[Path, Path]], tmp_path: Path) -> None:
    tif, _ = scenes[10]
    torch.manual_seed(0)
    model = UNet(in_channels=4, width=4).eval()
    common = {"tile": 64, "overlap": 16, "bands": [1, 2, 3, 4], "mean": [500.0] * 4, "std": [300.0] * 4}
    with pytest.warns(UserWarning, match="nodata"):
        whole = read_raster(predict_raster(model, tif, tmp_path / "whole.tif", output="probabilities", **common))[0]
        labels = read_raster(predict_raster(model, tif, tmp_path / "labels.tif", **common))[0][0]
    part, profile = read_raster(predict_raster(model, tif, tmp_path / "part.tif", output="probabilities",
                                               window=Window(37, 50, 101, 77), batch_size=1, **common))  # fmt: skip
    assert part.shape == (3, 77, 101)
    np.testing.assert_allclose(part, whole[:, 50:127, 37:138], atol=1e-6)  # other batches: float rounding only
    with rasterio.open(tif) as src:
        assert profile["transform"] == src.window_transform(Window(37, 50, 101, 77))
        t = src.transform
    west, north = t @ (37.2, 50.3)
    east, south = t @ (137.6, 126.9)
    by_bounds = read_raster(predict_raster(model, tif, tmp_path / "b.tif", bounds=(west, south, east, north),
                                           **common))[0][0]  # fmt: skip
    assert np.array_equal(by_bounds, labels[50:127, 37:138])
    area = gpd.GeoSeries([box(west, south, east, north).buffer(-60)], crs=profile["crs"]).to_crs("EPSG:4326")
    inside = read_raster(predict_raster(model, tif, tmp_path / "a.tif", area=area, **common))[0][0]
    assert (inside == 255).any() and (inside != 255).any()  # the area's bounding box, nodata outside the polygon
    with pytest.raises(ValueError, match="does not overlap"):
        predict_raster(model, tif, tmp_path / "x.tif", window=Window(5000, 5000, 10, 10), **common)
    assert not (tmp_path / "x.tif").exists()


def test_match_fields_on_hand_made_polygons() -> None:
    reference = gpd.GeoDataFrame(geometry=[box(0, 0, 10, 10), box(20, 0, 30, 10), box(40, 0, 50, 10)], crs=32633)
    predicted = gpd.GeoDataFrame(
        geometry=[
            box(0, 0, 10, 10),  # IoU 1 with the first
            box(20, 0, 30, 20),  # IoU exactly 0.5 with the second: a match (>= 0.5)
            box(40, 0, 44, 10),  # IoU 0.4 with the third: no match
            box(100, 100, 110, 110),  # nothing there
        ],
        crs=32633,
    )
    match = match_fields(reference, predicted)
    assert match.matched == 2 and match.pairs.tolist() == [[0, 0], [1, 1]]
    assert match.precision == pytest.approx(0.5) and match.recall == pytest.approx(2 / 3)
    assert match.f1 == pytest.approx(4 / 7)
    # one to one: two predictions on the same field match it once; the better one wins
    doubled = gpd.GeoDataFrame(geometry=[box(0, 0, 10, 9), box(0, 0, 10, 10)], crs=32633)
    twice = match_fields(reference.iloc[:1], doubled)
    assert twice.matched == 1 and twice.pairs.tolist() == [[0, 1]]
    # another CRS is reprojected (IoU 1 stays a match, 0.4 stays none); no predictions score 0
    assert match_fields(reference, predicted.iloc[[0, 2]].to_crs(4326)).pairs.tolist() == [[0, 0]]
    assert match_fields(reference, predicted.iloc[:0]).f1 == 0.0


def test_command_line_end_to_end_and_bad_inputs(
    scenes: dict[int, tuple[Path, Path]], folders: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tif, gpkg = scenes[4]
    out = folders / "cli"
    run = ["--image", str(tif), "--fields", str(gpkg), "--mode", "smoke", "--samples-per-epoch", "8"]
    assert main([*run, "--out-dir", str(out)]) == 0
    said = capsys.readouterr().out
    assert "[5/5]" in said and "pixel forest" in said and "field_f1" in said
    assert sorted(p.name for p in out.iterdir()) == ["fields.gpkg", "prediction.tif", "scores.json"]

    elsewhere = read_fields(gpkg).translate(xoff=60)  # 60 degrees east: the polygons miss the scene
    gpd.GeoDataFrame(geometry=elsewhere, crs=4326).to_file(folders / "elsewhere.gpkg")
    few = read_fields(gpkg).iloc[:3]
    few.to_file(folders / "few.gpkg")
    with rasterio.open(tif) as src:
        small = src.read(window=Window(0, 0, 40, 40))
        profile = src.profile | {"width": 40, "height": 40}
    with rasterio.open(folders / "small.tif", "w", **profile) as dst:
        dst.write(small)
    bad = {
        "none of the": ["--image", str(tif), "--fields", str(folders / "elsewhere.gpkg")],
        "too few fields": ["--image", str(tif), "--fields", str(folders / "few.gpkg")],
        "smaller than one 64 px tile": ["--image", str(folders / "small.tif"), "--fields", str(gpkg)],
        "gives 3 bands but the model trains on 4": [*run[:4], "--predict", str(scenes[3][0])],
    }
    for message, args in bad.items():
        target = folders / "bad"
        assert main([*args, "--mode", "smoke", "--out-dir", str(target)]) == 2
        assert message in capsys.readouterr().err
        assert not target.exists()  # nothing half-written


def test_real_scene_window_predicted_and_polygonised(
    real_samples: Path, scenes: dict[int, tuple[Path, Path]], folders: Path
) -> None:
    """A model trained in smoke on a generated blue, green, red, NIR scene, on a window of a real Sentinel-2 scene
    whose 8 bands (two dates of R, G, B, NIR) are picked by name."""
    tif, gpkg = scenes[4]
    model = train_on_scene(tif, gpkg, out_dir=folders / "for-real", **SMOKE).model
    real = real_samples / "ftw_s2_austria" / "inference-img.tif"
    names = [f"{band}_{date}" for date in "ab" for band in ("red", "green", "blue", "nir")]
    window = Window(100, 60, 200, 150)
    prediction, polygons = predict_fields(model, real, folders / "real", bands=["blue_a", "green_a", "red_a", "nir_a"],
                                          band_names=names, tile=128, window=window)  # fmt: skip
    labels, profile = read_raster(prediction)
    with rasterio.open(real) as src:
        assert profile["crs"] == src.crs and profile["transform"] == src.window_transform(window)
    assert labels.shape == (1, 150, 200) and set(np.unique(labels)) <= {0, 1, 2}
    fields = read_fields(polygons) if len(gpd.read_file(polygons)) else gpd.read_file(polygons)
    assert fields.crs == profile["crs"]
    with pytest.raises(ValueError, match="no band named"):
        predict_fields(model, real, folders / "real2", bands=["blue", "green", "red", "nir"], band_names=names)
