"""Tests of the geodata helpers: rasterising, raster I/O, windows, tiled inference, polygonising."""

from __future__ import annotations

import math
import re
import zipfile
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from rasterio.enums import Resampling
from rasterio.transform import Affine, from_origin
from scipy import ndimage
from shapely.geometry import GeometryCollection, LineString, MultiPolygon, Point, Polygon, box

from course_utils import geo
from course_utils.models.unet import UNet

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


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson", ".shp"])
def test_an_empty_vector_file_is_named(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"my fields{suffix}"
    layer().iloc[:0].to_file(path)
    with pytest.raises(ValueError, match=f"the polygon layer of {re.escape(str(path))} is empty"):
        geo.rasterize_fields(path, grid_profile(5, 5))


def test_read_fields_drops_empty_geometries_with_a_warning(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no vector file"):
        geo.read_fields(tmp_path / "missing.gpkg")
    fields = layer(pixel_box(0, 0, 2, 2), Polygon())
    with pytest.warns(UserWarning, match="dropped 1 empty"):
        assert len(geo.read_fields(fields)) == 1


def test_rasterize_refuses_polygons_that_miss_the_raster() -> None:
    danish = layer(box(10.0, 56.0, 10.01, 56.01), crs="EPSG:4326")  # parcels of Denmark on a grid in Austria
    both_extents = r"overlaps the raster.*\(10, 56, 10.01, 56.01\) in EPSG:4326.*\(500000, 5299800, 500200, 5300000\)"
    with pytest.raises(ValueError, match=rf"none of the 1 polygons {both_extents} .* in EPSG:32633"):
        geo.rasterize_fields(danish, grid_profile(20, 20))
    south_up = grid_profile(20, 20) | {"transform": Affine(PIXEL, 0, ORIGIN[0], 0, PIXEL, ORIGIN[1] - 200)}
    with pytest.raises(ValueError, match=r"the raster spans \(500000, 5299800, 500200, 5300000\) \(west, south,"):
        geo.rasterize_fields(danish, south_up)  # the same extent: south below north whatever the transform's sign
    partly_inside = layer(pixel_box(-5, -5, 7, 7))
    assert (geo.rasterize_fields(partly_inside, grid_profile(20, 20), boundary_px=0) > 0).sum() == 4
    sliver = layer(box(ORIGIN[0] + 1, ORIGIN[1] - 4, ORIGIN[0] + 3, ORIGIN[1] - 1))  # inside, but no pixel centre
    assert geo.rasterize_fields(sliver, grid_profile(20, 20)).sum() == 0


def test_geometry_collections_keep_their_polygons(tmp_path: Path) -> None:
    fields = layer(
        GeometryCollection([pixel_box(2, 2, 4, 4), Point(ORIGIN), GeometryCollection([pixel_box(10, 10, 3, 3)])]),
        GeometryCollection([LineString([ORIGIN, (ORIGIN[0] + 50, ORIGIN[1])])]),
        pixel_box(2, 10, 2, 2),
    )
    fields.to_file(tmp_path / "collections.gpkg")
    with pytest.warns(UserWarning, match="dropped 1 empty or non-polygonal"):
        read = geo.read_fields(tmp_path / "collections.gpkg")
    assert read["field"].tolist() == [0, 2] and read.geometry.iloc[0].geom_type == "MultiPolygon"
    assert read.geometry.iloc[0].area == (16 + 9) * PIXEL**2
    profile = grid_profile(20, 20)
    with pytest.warns(UserWarning, match="dropped 1"):
        mask = geo.rasterize_fields(fields, profile, boundary_px=0)
    assert mask.sum() == 16 + 9 + 4
    assert fields.geometry.iloc[0].geom_type == "GeometryCollection"  # the caller's layer is left as it was


def test_read_fields_errors_say_what_to_do(tmp_path: Path) -> None:
    table = tmp_path / "parcels.csv"
    table.write_text("id,crop\n1,wheat\n")
    with pytest.raises(ValueError, match=r"parcels.csv has no geometry.*GeoSeries.from_wkt"):
        geo.read_fields(table)
    with pytest.raises(ValueError, match="not a vector file GDAL reads"):
        geo.read_fields(geo.write_raster(tmp_path / "image.tif", np.zeros((2, 2), np.uint8), grid_profile(2, 2)))

    fields = layer(pixel_box(0, 0, 2, 2))
    fields.to_file(tmp_path / "a.gpkg", layer="parcels")
    fields.to_file(tmp_path / "a.gpkg", layer="roads")
    with pytest.raises(ValueError, match=r"2 layers with geometries \(parcels, roads\).*layer='parcels'"):
        geo.read_fields(tmp_path / "a.gpkg")
    assert len(geo.read_fields(tmp_path / "a.gpkg", layer="roads")) == 1
    with pytest.raises(ValueError, match="no layer 'fields'; its layers: parcels, roads"):
        geo.read_fields(tmp_path / "a.gpkg", layer="fields")

    fields.to_file(tmp_path / "b.geojson")
    for name, members in (("none.zip", ["parcels.csv"]), ("two.zip", ["b.geojson", "one.gpkg"])):
        with zipfile.ZipFile(tmp_path / name, "w") as archive:
            for member in members:
                archive.write(tmp_path / ("a.gpkg" if member == "one.gpkg" else member), member)
        count = len(members) - (name == "none.zip")
        with pytest.raises(ValueError, match=rf"{name} holds {count} vector files .*Extract the archive"):
            geo.read_fields(tmp_path / name)
    with zipfile.ZipFile(tmp_path / "one.zip", "w") as archive:
        archive.write(tmp_path / "b.geojson", "folder/b.geojson")
        archive.write(table, "folder/readme.csv")
    assert len(geo.read_fields(tmp_path / "one.zip")) == 1


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


def test_nodata_mask_marks_infinite_values() -> None:
    array = np.ones((2, 3, 3), np.float32)
    array[0, 0, 1], array[1, 1, 1] = np.inf, -np.inf
    assert np.argwhere(geo.nodata_mask(array, {"nodata": None})).tolist() == [[0, 1], [1, 1]]


@pytest.mark.parametrize(("dtype", "nodata"), [("uint16", 0), ("int16", -9999), ("uint8", 255), ("float32", -9999.5)])
def test_nodata_survives_a_read_write_round_trip(tmp_path: Path, dtype: str, nodata: float) -> None:
    path = geo.write_raster(tmp_path / "in.tif", np.ones((1, 3, 3), dtype), {**grid_profile(3, 3), "nodata": nodata})
    array, profile = geo.read_raster(path)
    assert profile["nodata"] == nodata  # rasterio reports it as a float
    again = geo.read_raster(geo.write_raster(tmp_path / "out.tif", array, profile))[1]
    assert again["nodata"] == nodata


def test_nodata_that_the_dtype_cannot_hold_is_dropped(tmp_path: Path) -> None:
    for nodata, dtype in ((np.nan, "uint8"), (-9999.0, "uint8"), (0.5, "int16"), (70000.0, "uint16")):
        profile = {**grid_profile(2, 2), "nodata": nodata}
        path = geo.write_raster(tmp_path / "labels.tif", np.ones((2, 2), dtype), profile)
        assert geo.read_raster(path)[1]["nodata"] is None


def write_masked(path: Path, image: np.ndarray, masked: np.ndarray, nodata: float | None = None) -> Path:
    """A GeoTIFF of ``image`` with a GDAL internal mask band that is 0 where ``masked``."""
    meta = {"driver": "GTiff", "count": image.shape[0], "height": image.shape[1], "width": image.shape[2]}
    meta |= {"dtype": image.dtype.name, "crs": UTM, "transform": from_origin(*ORIGIN, PIXEL, PIXEL), "nodata": nodata}
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **meta) as dst:
        dst.write(image)
        dst.write_mask(np.where(masked, 0, 255).astype(np.uint8))
    assert not Path(f"{path}.msk").exists()
    return path


def test_mask_band_marks_nodata(tmp_path: Path, scene: tuple[Path, np.ndarray]) -> None:
    _, image = scene
    masked = np.zeros(image.shape[1:], bool)
    masked[20:30, 40:45] = True
    path = write_masked(tmp_path / "masked.tif", image, masked)
    array, profile = geo.read_raster(path)
    np.testing.assert_array_equal(geo.nodata_mask(array, profile), masked)
    np.testing.assert_array_equal(array[:, ~masked], image[:, ~masked])
    with pytest.warns(UserWarning, match="^50 pixels of masked.tif"):
        dst = geo.predict_raster(threshold_model(), path, tmp_path / "labels.tif", tile=64, device="cpu")
    np.testing.assert_array_equal(geo.read_raster(dst)[0][0] == geo.LABEL_NODATA, masked)

    digital_numbers = write_masked(tmp_path / "dn.tif", np.full((1, 4, 4), 7, np.uint16), masked[20:24, 40:44], 0)
    array, profile = geo.read_raster(digital_numbers)
    assert (array[0] == 0).sum() == 4 * 4 and profile["nodata"] == 0
    without_nodata = write_masked(tmp_path / "no-nodata.tif", np.full((1, 4, 4), 7, np.uint16), masked[20:24, 40:44])
    with pytest.warns(UserWarning, match="mask band marks 16 pixels invalid.*dataset_mask"):
        assert (geo.read_raster(without_nodata)[0] == 7).all()


def test_damaged_raster_errors_name_the_file(tmp_path: Path, scene: tuple[Path, np.ndarray]) -> None:
    path, image = scene
    complete = geo.write_raster(tmp_path / "tiled.tif", image, {**grid_profile(187, 301), "tiled": True})
    content = complete.read_bytes()
    (tmp_path / "truncated.tif").write_bytes(content[: len(content) // 2])
    (tmp_path / "header.tif").write_bytes(content[:100])
    for name in ("truncated.tif", "header.tif"):
        damaged = tmp_path / name
        with pytest.raises(rasterio.errors.RasterioIOError, match=rf"{name}: the file is damaged or incomplete.*"
                           "download or regenerate it"):  # fmt: skip
            geo.read_raster(damaged)
        with pytest.raises(rasterio.errors.RasterioIOError, match=rf"{name}: the file is damaged"):
            geo.predict_raster(threshold_model(), damaged, tmp_path / "labels.tif", tile=64, device="cpu")
    assert not (tmp_path / "labels.tif").exists()


def test_read_raster_refuses_what_does_not_fit_in_memory(monkeypatch: pytest.MonkeyPatch, scene) -> None:
    path, _ = scene  # 2 x 187 x 301 float32: 450 kB
    monkeypatch.setattr(geo, "_available_memory", lambda: 800_000)
    with pytest.raises(MemoryError, match=r"scene.tif takes .*bands=\[\.\.\.\].*iter_windows.*predict_raster"):
        geo.read_raster(path)
    assert geo.read_raster(path, bands=[2])[0].shape == (1, 187, 301)  # 225 kB


# --- stack_bands -------------------------------------------------------------------------------------


def write_band(folder: Path, name: str, pixel: float, rng: np.random.Generator) -> np.ndarray:
    """One band of a 600 m x 600 m Sentinel-2 L2A-like tile at ``pixel`` m, named as in a .SAFE product."""
    size = round(600 / pixel)
    values = rng.integers(1, 16_000, (1, size, size)).astype(np.uint16)
    profile = {"crs": UTM, "transform": from_origin(*ORIGIN, pixel, pixel), "nodata": 0}
    geo.write_raster(folder / f"R{pixel:.0f}m" / f"T33UVP_20230601T100559_{name}_{pixel:.0f}m.tif", values, profile)
    return values[0]


def test_stack_bands_puts_10_20_and_60_m_bands_on_one_grid_in_the_callers_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    product = tmp_path / "S2A_MSIL2A.SAFE"
    bands = {name: write_band(product, name, pixel, rng) for name, pixel in
             (("B02", 10), ("B08", 10), ("B8A", 20), ("B11", 20), ("B01", 60), ("B12", 20))}  # fmt: skip
    write_band(product, "B02", 20, rng)  # L2A also ships the 10 m bands at 20 and 60 m: the finest is taken
    order = ["B02", "B08", "B8A", "B11", "B12", "B01"]  # a sorted listing would give B01 B02 B08 B11 B12 B8A
    stack, profile = geo.stack_bands(product, order)
    assert stack.shape == (6, 60, 60) and stack.dtype == np.uint16 and profile["count"] == 6
    assert profile["transform"] == from_origin(*ORIGIN, 10, 10) and profile["nodata"] == 0
    for band, name in zip(stack, order, strict=True):
        factor = 60 // bands[name].shape[0]
        np.testing.assert_array_equal(band, np.kron(bands[name], np.ones((factor, factor), np.uint16)))

    coarse, profile = geo.stack_bands(product, ["B02", "B8A"], reference="B8A", resampling=Resampling.average)
    assert coarse.shape == (2, 30, 30) and profile["transform"].a == 20
    np.testing.assert_array_equal(coarse[1], bands["B8A"])
    means = bands["B02"].reshape(30, 2, 30, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(coarse[0], means, atol=1)


def test_stack_bands_errors_say_what_to_do(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    write_band(tmp_path / "one", "B02", 10, rng)
    with pytest.raises(FileNotFoundError, match="no raster under .* has 'B8A' in its name"):
        geo.stack_bands(tmp_path / "one", ["B02", "B8A"])
    with pytest.raises(ValueError, match="each band name once"):
        geo.stack_bands(tmp_path / "one", ["B02", "B02"])
    with pytest.raises(ValueError, match="reference 'B04' is not one of the bands"):
        geo.stack_bands(tmp_path / "one", ["B02"], reference="B04")
    write_band(tmp_path / "two", "B02", 10, rng)
    with pytest.raises(ValueError, match="band B02 is in 2 files of the same resolution .* one product"):
        geo.stack_bands(tmp_path, ["B02"])


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


def test_windows_refuse_a_step_below_a_quarter_tile(scene: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    assert len(geo.iter_windows(1000, 1000, 256, 192)) == 13**2  # a step of 64 px: the largest overlap allowed
    with pytest.raises(ValueError, match=r"overlap must be between 0 and 192 px for 256 px tiles.*got 255"):
        geo.iter_windows(600, 600, 256, 255)  # would be 345**2 = 119 025 windows
    with pytest.raises(ValueError, match="between 0 and 48 px for 64 px tiles"):
        geo.predict_raster(threshold_model(), scene[0], tmp_path / "labels.tif", tile=64, overlap=63)


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


class HeadFirst(torch.nn.Module):
    """A per-pixel model over 2 bands whose 16-wide head is registered before its 2-wide input layer."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(16, 2)
        self.encoder = torch.nn.Linear(2, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = x.permute(0, 2, 3, 1)  # [B, H, W, bands]
        return self.head(torch.relu(self.encoder(pixels))).permute(0, 3, 1, 2)


def test_predict_raster_takes_the_band_count_from_the_layer_that_reads_the_input(
    scene: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    path, _ = scene
    model = HeadFirst()
    assert geo.model_input_bands(model, bands=2) == 2 and geo.model_input_bands(model, bands=5) == 2
    assert geo.model_input_bands(UNet(in_channels=3), bands=4) == 3  # declared by the course's U-Net
    geo.predict_raster(model, path, tmp_path / "out.tif", tile=64, overlap=8, stride=1)  # not refused as 16 bands
    with pytest.raises(ValueError, match=r"the model expects 2 input bands but 1 were selected .* bands=") as error:
        geo.predict_raster(model, path, tmp_path / "one.tif", tile=64, overlap=8, stride=1, bands=[1])
    assert "stride" not in str(error.value)


def test_predict_raster_refuses_to_overwrite_its_source(
    scene: tuple[Path, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = scene
    before = path.read_bytes()
    (tmp_path / "link.tif").symlink_to(path)
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    for dst in (path, tmp_path / "link.tif", Path("../scene.tif"), tmp_path / "sub" / ".." / "scene.tif"):
        with pytest.raises(ValueError, match="is the scene .* itself: the prediction would replace it"):
            geo.predict_raster(threshold_model(), path, dst, tile=64, device="cpu")
    with pytest.raises(ValueError, match="itself"):
        geo.predict_raster(threshold_model(), "../scene.tif", path, tile=64, device="cpu")
    assert path.read_bytes() == before


def test_predict_raster_refuses_a_scene_without_crs(tmp_path: Path, scene: tuple[Path, np.ndarray]) -> None:
    path = geo.write_raster(tmp_path / "plain.tif", scene[1], {"transform": from_origin(*ORIGIN, PIXEL, PIXEL)})
    with pytest.raises(ValueError, match="plain.tif has no CRS.*rio edit-info --crs"):
        geo.predict_raster(threshold_model(), path, tmp_path / "labels.tif", tile=64, device="cpu")
    assert not (tmp_path / "labels.tif").exists()


def test_predict_raster_checks_the_tile_against_the_model(scene: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, _ = scene
    deep = UNet(in_channels=2, classes=3, width=2, depth=6)  # downsamples by 64
    with pytest.raises(ValueError, match=r"tile 96 is not a multiple of the model's stride 64; use 128"):
        geo.predict_raster(deep, path, tmp_path / "labels.tif", tile=96, device="cpu")
    with pytest.raises(ValueError, match=r"the model fails on a 96 x 96 px tile.*stride=32.*tile=256 works"):
        geo.predict_raster(deep, path, tmp_path / "labels.tif", tile=96, stride=32, device="cpu")
    with pytest.raises(ValueError, match=r"logits \[batch, classes, H, W\] at the input's size \(32, 32\)"):
        geo.predict_raster(torch.nn.Conv2d(2, 2, 3), path, tmp_path / "labels.tif", tile=32, overlap=8, device="cpu")
    assert not (tmp_path / "labels.tif").exists()
    labels = geo.read_raster(geo.predict_raster(deep, path, tmp_path / "labels.tif", tile=128, device="cpu"))[0]
    assert labels.shape == (1, 187, 301)


def test_predict_raster_leaves_nothing_when_the_model_fails(scene: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    class FailsLater(torch.nn.Module):
        """Works for the check on a blank tile and for one batch (so part of the output is written), then raises."""

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
