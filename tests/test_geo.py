"""Tests of the geodata helpers: rasterising, raster I/O, windows, tiled inference, polygonising."""

from __future__ import annotations

import math
import re
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin
from scipy import ndimage
from shapely.geometry import MultiPolygon, Polygon, box

from course_utils import geo

UTM = "EPSG:32633"
PIXEL = 10.0
ORIGIN = (500_000.0, 5_300_000.0)  # top-left corner of the test grids


def grid_profile(height: int, width: int, crs: str = UTM) -> dict:
    """A profile of a 10 m grid whose top-left corner is ORIGIN."""
    return {"crs": crs, "transform": from_origin(*ORIGIN, PIXEL, PIXEL), "height": height, "width": width}


def pixel_box(row: int, col: int, rows: int, cols: int) -> Polygon:
    """The map-coordinate box covering pixels [row, row + rows) x [col, col + cols) of grid_profile."""
    left, top = ORIGIN[0] + col * PIXEL, ORIGIN[1] - row * PIXEL
    return box(left, top - rows * PIXEL, left + cols * PIXEL, top)


def layer(*geometries: Polygon | MultiPolygon, crs: str | None = UTM) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame({"field": range(len(geometries))}, geometry=list(geometries), crs=crs)


def threshold_model() -> torch.nn.Conv2d:
    """A 1x1 convolution over 2 bands: class 0 where band 1 > 0.5, else class 1 (logits 10 * b1 - 5 vs 0)."""
    model = torch.nn.Conv2d(2, 2, kernel_size=1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[10.0, 0.0], [0.0, 0.0]]).reshape(2, 2, 1, 1))
        model.bias.copy_(torch.tensor([-5.0, 0.0]))
    return model


@pytest.fixture
def scene(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A 2-band float32 scene of odd size (187 x 301 px) in UTM, values uniform in [0, 1)."""
    image = np.random.default_rng(7).uniform(0, 1, (2, 187, 301)).astype(np.float32)
    path = geo.write_raster(tmp_path / "scene.tif", image, grid_profile(187, 301))
    return path, image


# --- rasterize_fields --------------------------------------------------------------------------------


def test_square_has_expected_interior_and_edge_counts() -> None:
    mask = geo.rasterize_fields(layer(pixel_box(5, 5, 10, 10)), grid_profile(20, 20), boundary_px=1)
    assert (mask == geo.FIELD_INTERIOR).sum() == 64
    assert (mask == geo.FIELD_EDGE).sum() == 36
    assert (mask == geo.FIELD_INTERIOR)[6:14, 6:14].all()
    extent = geo.rasterize_fields(layer(pixel_box(5, 5, 10, 10)), grid_profile(20, 20), boundary_px=0)
    assert set(np.unique(extent)) == {0, 1} and extent.sum() == 100


def test_touching_squares_are_separated_by_edges() -> None:
    fields = layer(pixel_box(5, 2, 10, 10), pixel_box(5, 12, 10, 10))
    mask = geo.rasterize_fields(fields, grid_profile(20, 24), boundary_px=1)
    assert (mask[5:15, 11:13] == geo.FIELD_EDGE).all()  # both sides of the shared border
    _, regions = ndimage.label(mask == geo.FIELD_INTERIOR)
    assert regions == 2
    assert (mask == geo.FIELD_INTERIOR).sum() == 2 * 64


def test_hole_stays_non_field_and_multipolygon_parts_are_burned() -> None:
    ring = pixel_box(2, 2, 20, 20).difference(pixel_box(9, 9, 6, 6))
    two_parts = MultiPolygon([pixel_box(2, 26, 5, 5), pixel_box(15, 26, 5, 5)])
    mask = geo.rasterize_fields(layer(ring, two_parts), grid_profile(25, 34), boundary_px=1)
    assert (mask[9:15, 9:15] == geo.NON_FIELD).all()
    assert (mask[8, 8:16] == geo.FIELD_EDGE).all()  # the ring around the hole is edge
    assert (mask[2:7, 26:31] > 0).sum() == 25 and (mask[15:20, 26:31] > 0).sum() == 25
    assert (mask > 0).sum() == 400 - 36 + 50


def test_polygons_in_lat_lon_give_the_same_mask_on_a_utm_grid(capsys: pytest.CaptureFixture[str]) -> None:
    fields = layer(pixel_box(3, 4, 12, 9), pixel_box(3, 13, 12, 6), pixel_box(17, 2, 5, 20))
    profile = grid_profile(25, 25)
    in_utm = geo.rasterize_fields(fields, profile)
    assert "reprojecting" not in capsys.readouterr().out
    in_lat_lon = geo.rasterize_fields(fields.to_crs("EPSG:4326"), profile)
    assert "reprojecting 3 polygons from EPSG:4326" in capsys.readouterr().out
    np.testing.assert_array_equal(in_lat_lon, in_utm)


def test_rasterize_rejects_empty_layers_and_missing_crs() -> None:
    with pytest.raises(ValueError, match="empty"):
        geo.rasterize_fields(layer().iloc[:0], grid_profile(5, 5))
    with pytest.raises(ValueError, match="no CRS"):
        geo.rasterize_fields(layer(pixel_box(0, 0, 2, 2), crs=None), grid_profile(5, 5))
    with pytest.raises(ValueError, match="no CRS"):
        geo.rasterize_fields(layer(pixel_box(0, 0, 2, 2)), grid_profile(5, 5, crs=None))


def test_read_fields_drops_empty_geometries_with_a_warning(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no vector file"):
        geo.read_fields(tmp_path / "missing.gpkg")
    fields = layer(pixel_box(0, 0, 2, 2), Polygon())
    with pytest.warns(UserWarning, match="dropped 1 empty"):
        assert len(geo.read_fields(fields)) == 1


# --- read_raster / write_raster ----------------------------------------------------------------------


def test_raster_round_trip_and_band_selection(tmp_path: Path) -> None:
    image = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5)
    path = geo.write_raster(tmp_path / "sub" / "image.tif", image, {**grid_profile(4, 5), "nodata": 0})
    array, profile = geo.read_raster(path)
    np.testing.assert_array_equal(array, image)
    assert profile["crs"] == rasterio.crs.CRS.from_string(UTM)
    assert profile["transform"] == from_origin(*ORIGIN, PIXEL, PIXEL) and profile["nodata"] == 0
    selected, profile = geo.read_raster(path, bands=[3, 1])
    np.testing.assert_array_equal(selected, image[[2, 0]])
    assert profile["count"] == 2
    with pytest.raises(ValueError, match=r"has 3 bands .*\[4\]"):
        geo.read_raster(path, bands=[1, 4])
    with pytest.raises(FileNotFoundError, match="no raster"):
        geo.read_raster(tmp_path / "missing.tif")


def test_failing_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(rasterio.errors.CRSError):
        geo.write_raster(tmp_path / "bad.tif", np.zeros((2, 2), np.uint8), grid_profile(2, 2, crs="EPSG:999999"))
    assert list(tmp_path.iterdir()) == []


def test_nodata_mask_marks_nodata_and_nan_in_any_band() -> None:
    array = np.ones((2, 3, 3), np.float32)
    array[0, 0, 0], array[1, 2, 2] = -9999, np.nan
    expected = np.zeros((3, 3), bool)
    expected[0, 0] = expected[2, 2] = True
    np.testing.assert_array_equal(geo.nodata_mask(array, {"nodata": -9999}), expected)
    assert geo.nodata_mask(array, {"nodata": None}).sum() == 1


# --- windows and chip sizes --------------------------------------------------------------------------


@pytest.mark.parametrize(("height", "width", "tile", "overlap"), [(187, 301, 64, 16), (97, 33, 32, 0), (5, 300, 64, 8)])
def test_windows_cover_every_pixel_and_stay_inside(height: int, width: int, tile: int, overlap: int) -> None:
    coverage = np.zeros((height, width), int)
    for window in geo.iter_windows(height, width, tile, overlap):
        assert window.row_off >= 0 and window.col_off >= 0
        assert window.row_off + window.height <= height and window.col_off + window.width <= width
        assert window.height == min(tile, height) and window.width == min(tile, width)
        coverage[window.toslices()] += 1
    assert coverage.min() >= 1
    if overlap == 0 and height % tile == 0:  # exact tiling along the rows: no pixel counted twice there
        assert coverage[:, :tile].max() == 1


def test_windows_reject_bad_arguments() -> None:
    assert len(geo.iter_windows(10, 10, 256, 32)) == 1
    with pytest.raises(ValueError, match="overlap"):
        geo.iter_windows(100, 100, 32, 32)
    with pytest.raises(ValueError, match="empty"):
        geo.iter_windows(0, 100, 32, 0)


def test_check_chip_size() -> None:
    geo.check_chip_size(256, 64, stride=32)
    with pytest.raises(ValueError, match="width 250 .* crop to 224 or pad to 256"):
        geo.check_chip_size(256, 250, stride=32)
    with pytest.raises(ValueError, match="height 16 .* pad to 32"):
        geo.check_chip_size(16, 64, stride=32)


# --- predict_raster ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("tile", "overlap", "batch_size"), [(64, 16, 4), (96, 0, 1), (256, 32, 3), (32, 8, 16)])
def test_predict_raster_labels_everywhere(
    scene: tuple[Path, np.ndarray], tmp_path: Path, tile: int, overlap: int, batch_size: int
) -> None:
    path, image = scene
    dst = geo.predict_raster(
        threshold_model(),
        path,
        tmp_path / "labels.tif",
        tile=tile,
        overlap=overlap,
        batch_size=batch_size,
        device="cpu",
    )
    labels, profile = geo.read_raster(dst)
    with rasterio.open(path) as src:
        assert (profile["crs"], profile["transform"]) == (src.crs, src.transform)
    assert labels.shape == (1, 187, 301) and labels.dtype == np.uint8 and profile["nodata"] == 255
    np.testing.assert_array_equal(labels[0], np.where(image[0] > 0.5, 0, 1))


def test_predict_raster_probabilities_are_the_blended_softmax(scene: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, image = scene
    model = threshold_model()
    dst = geo.predict_raster(model, path, tmp_path / "p.tif", tile=64, overlap=32, output="probabilities", device="cpu")
    probabilities, profile = geo.read_raster(dst)
    assert probabilities.shape == (2, 187, 301) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-5)
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(image)[None]), dim=1)[0].numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)  # placement and weights are right


class BorderArtefacts(torch.nn.Module):
    """Wrong near its tile borders, as a CNN is from zero padding: class 1 in a 4 px ring, class 0 inside."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ring = torch.ones(x.shape[-2:], dtype=torch.bool)
        ring[4:-4, 4:-4] = False
        logits = torch.zeros(x.shape[0], 2, *x.shape[-2:])
        logits[:, 1] = torch.where(ring, 5.0, -5.0)
        return logits


def test_blending_hides_tile_border_artefacts(scene: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, _ = scene
    dst = geo.predict_raster(BorderArtefacts(), path, tmp_path / "b.tif", tile=64, overlap=16, device="cpu")
    labels = geo.read_raster(dst)[0][0]
    assert (labels == 0).all()  # tapered weights favour tile centres; the scene border is padded away from tiles'


def test_predict_raster_normalises_per_band(scene: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, image = scene
    dst = geo.predict_raster(threshold_model(), path, tmp_path / "n.tif", tile=64, mean=[0.25, 0], std=[0.5, 1])
    labels, _ = geo.read_raster(dst)
    np.testing.assert_array_equal(labels[0], np.where((image[0] - 0.25) / 0.5 > 0.5, 0, 1))


def test_predict_raster_scene_smaller_than_the_stride(tmp_path: Path) -> None:
    image = np.array([[[0.9, 0.1, 0.7], [0.2, 0.8, 0.3]], [[0, 0, 0], [0, 0, 0]]], np.float32)
    path = geo.write_raster(tmp_path / "tiny.tif", image, grid_profile(2, 3))
    labels, _ = geo.read_raster(geo.predict_raster(threshold_model(), path, tmp_path / "t.tif", tile=64, device="cpu"))
    np.testing.assert_array_equal(labels[0], [[0, 1, 0], [1, 0, 1]])


def test_predict_raster_marks_nan_pixels_as_nodata(tmp_path: Path, scene: tuple[Path, np.ndarray]) -> None:
    _, image = scene
    image = image.copy()
    image[1, 10:15, 20:30] = np.nan
    image[0, 100, 200] = -1.0
    path = geo.write_raster(tmp_path / "holes.tif", image, {**grid_profile(187, 301), "nodata": -1.0})
    with pytest.warns(UserWarning, match=r"^51 pixels of holes.tif are nodata or NaN"):
        dst = geo.predict_raster(threshold_model(), path, tmp_path / "labels.tif", tile=64, device="cpu")
    labels = geo.read_raster(dst)[0][0]
    invalid = np.isnan(image).any(axis=0) | (image == -1).any(axis=0)
    assert (labels[invalid] == 255).all() and (labels[~invalid] < 2).all()


def test_predict_raster_rejects_bad_input(scene: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, _ = scene
    dst = tmp_path / "out.tif"
    with pytest.raises(ValueError, match=r"expects 3 input bands but 2 were selected .* bands="):
        geo.predict_raster(torch.nn.Conv2d(3, 2, 1), path, dst)
    with pytest.raises(ValueError, match=r"expects 1 input bands but 2 .* bands="):
        geo.predict_raster(torch.nn.Identity(), path, dst, in_channels=1)
    with pytest.raises(ValueError, match="tile 250 is not a multiple of the model's stride 32; use 256"):
        geo.predict_raster(threshold_model(), path, dst, tile=250)
    with pytest.raises(ValueError, match="mean has 3 values"):
        geo.predict_raster(threshold_model(), path, dst, tile=64, mean=[0, 0, 0])
    with pytest.raises(ValueError, match="bands"):
        geo.predict_raster(threshold_model(), path, dst, bands=[1, 3])
    with pytest.raises(FileNotFoundError):
        geo.predict_raster(threshold_model(), tmp_path / "missing.tif", dst)
    assert not dst.exists()


def test_predict_raster_leaves_nothing_when_the_model_fails(scene: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    class FailsLater(torch.nn.Module):
        """Works for two batches (so part of the output is written), then raises."""

        def __init__(self) -> None:
            super().__init__()
            self.inner, self.calls = threshold_model(), 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.calls > 2:
                raise RuntimeError("out of memory (simulated)")
            return self.inner(x)

    path, _ = scene
    model = FailsLater().train()
    out_folder = tmp_path / "out"
    with pytest.raises(RuntimeError, match="simulated"):
        geo.predict_raster(model, path, out_folder / "labels.tif", tile=32, overlap=0, batch_size=4, device="cpu")
    assert model.calls == 3 and list(out_folder.iterdir()) == []
    assert model.training  # the caller's mode is given back


# --- polygonize --------------------------------------------------------------------------------------


def test_polygonize_two_squares() -> None:
    mask = np.zeros((20, 30), np.uint8)
    mask[2:8, 3:9] = 1  # 36 px
    mask[10:18, 15:25] = 1  # 80 px
    mask[0, 29] = 1  # speckle, dropped
    fields = geo.polygonize(mask, from_origin(*ORIGIN, PIXEL, PIXEL), UTM)
    assert list(fields.columns) == ["field_id", "area_m2", "geometry"] and fields.crs == UTM
    assert sorted(fields["area_m2"]) == [3600.0, 8000.0] and sorted(fields["field_id"]) == [1, 2]
    assert fields.geometry.union_all().equals(pixel_box(2, 3, 6, 6).union(pixel_box(10, 15, 8, 10)))
    grown = geo.polygonize(mask, from_origin(*ORIGIN, PIXEL, PIXEL), UTM, grow_px=1)
    assert sorted(grown["area_m2"]) == [6400.0, 12000.0]  # 8 x 8 and 10 x 12 px, square corners


def test_polygonize_empty_and_bad_input() -> None:
    empty = geo.polygonize(np.zeros((5, 5), np.uint8), from_origin(*ORIGIN, PIXEL, PIXEL), UTM)
    assert len(empty) == 0 and empty.crs == UTM and list(empty.columns) == ["field_id", "area_m2", "geometry"]
    with pytest.raises(ValueError, match="mask"):
        geo.polygonize(np.zeros((1, 5, 5)), from_origin(*ORIGIN, PIXEL, PIXEL), UTM)
    with pytest.raises(ValueError, match="crs"):
        geo.polygonize(np.zeros((5, 5)), from_origin(*ORIGIN, PIXEL, PIXEL), None)


def test_rasterize_polygonize_round_trip_keeps_the_fields() -> None:
    fields = layer(pixel_box(3, 3, 20, 14), pixel_box(3, 17, 20, 11), pixel_box(25, 3, 12, 25), pixel_box(40, 10, 8, 8))
    profile = grid_profile(50, 32)
    mask = geo.rasterize_fields(fields, profile, boundary_px=1)
    polygons = geo.polygonize(mask, profile["transform"], profile["crs"], field_values=(1,), grow_px=1)
    assert len(polygons) == 4  # touching fields stay apart
    again = geo.rasterize_fields(polygons, profile, boundary_px=0)
    extent = mask > 0
    iou = (extent & (again > 0)).sum() / (extent | (again > 0)).sum()
    assert iou > 0.99


# --- real data (skipped without ../shared/samples/real) ----------------------------------------------

POLYGON_FILES = (
    "1_vietnam_areas.gpkg",
    "4_cambodia_areas.gpkg",
    "LandUse.ExistingLandUse.GSAAAgriculturalParcel.gpkg",
    "be_vlg_2024_fiboa_0_2.parquet",
    "brpgewaspercelen_definitief_2023.gpkg",
    "dk_2024_fiboa_0_2.parquet",
    "india_10k.zip",
    "inspire_schlaege_2025-1_polygon.gpkg.zip",
    "jp_field_polygons_2024.parquet",
)


@pytest.mark.parametrize("name", POLYGON_FILES)
def test_real_field_polygons_rasterise_on_a_local_utm_grid(real_samples: Path, name: str) -> None:
    path = real_samples / "field_polygons" / name
    if not path.exists():
        pytest.skip(f"{name} is not among the samples")
    fields = geo.read_fields(path)
    local = fields.to_crs(fields.estimate_utm_crs())
    first = local.geometry.iloc[0].centroid
    nearby = local[local.geometry.centroid.distance(first) < 3000]  # keeps the grid small (< ~700 px a side)
    left, bottom, right, top = nearby.total_bounds
    left, top = math.floor(left / PIXEL) * PIXEL, math.ceil(top / PIXEL) * PIXEL
    height, width = math.ceil((top - bottom) / PIXEL), math.ceil((right - left) / PIXEL)
    assert height <= 2000 and width <= 2000
    profile = {"crs": local.crs, "transform": from_origin(left, top, PIXEL, PIXEL), "height": height, "width": width}
    mask = geo.rasterize_fields(fields.loc[nearby.index], profile, boundary_px=1)  # reprojects from the file's CRS
    assert (mask == geo.FIELD_INTERIOR).any() and (mask == geo.FIELD_EDGE).any()
    burned_m2 = (mask > 0).sum() * PIXEL**2
    assert burned_m2 == pytest.approx(nearby.area.sum(), rel=0.1)  # measured 0.99..1.05 of the polygon area


def test_real_scene_tiled_inference(real_samples: Path, tmp_path: Path) -> None:
    path = real_samples / "ftw_s2_austria" / "inference-img.tif"
    image, profile = geo.read_raster(path, bands=[1, 2, 3, 4])
    assert image.shape == (4, 379, 578) and image.dtype == np.uint16
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 1))
    mean, std = image.reshape(4, -1).mean(axis=1), image.reshape(4, -1).std(axis=1)
    dst = geo.predict_raster(
        model, path, tmp_path / "pred.tif", tile=128, overlap=32, bands=[1, 2, 3, 4], mean=mean, std=std, device="cpu"
    )
    labels, out = geo.read_raster(dst)
    assert (out["crs"], out["transform"], out["height"], out["width"]) == (
        profile["crs"],
        profile["transform"],
        profile["height"],
        profile["width"],
    )
    assert set(np.unique(labels)) <= {0, 1, 2}
    with pytest.raises(ValueError, match=re.escape("expects 4 input bands but 8 were selected")):
        geo.predict_raster(model, path, tmp_path / "all-bands.tif", tile=128)
