"""Notebooks 02 and 06 switched to real data by their one ``DATASET`` parameter, run top to bottom in smoke mode.

No download: each test writes a tiny dataset in the publisher's layout (with the writers of the loaders' own
tests), converts it with ``source=`` into a temporary data cache, and runs a copy of the notebook whose only
change is the ``DATASET`` line. The notebook then finds the converted data in the cache, as it would after a
download, and must record the real dataset in its results file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import numpy as np
import pytest
import test_real_fields
from nbclient import NotebookClient
from test_real_breizhcrops import BREIZHCROPS_CLASSES, write_breizhcrops_root
from test_real_fields import write_ftw_country

from course_utils.data.breizhcrops import parcel_region, prepare_breizhcrops
from course_utils.data.real_fields import chips_per_split, field_folder, field_region, prepare_ftw
from course_utils.data.store import read_catalog
from course_utils.geo import rasterize_fields, read_fields, read_raster
from course_utils.models.unet import field_unet_path

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CHIP_PX = 128  # the generated smoke chips' size: the notebook's random crops (64 px) and tiles (128 px) fit
CATALOG_COLUMNS = [
    *("id", "region", "split", "image", "label", "fields"),
    *("n_fields", "field_fraction", "edge_fraction", "mean_field_px"),
]


@pytest.fixture
def course_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Smoke mode with a temporary data cache, results and checkpoint folder (the kernel inherits them)."""
    folders = {"COURSE_DATA_DIR": "data", "COURSE_RESULTS_DIR": "results", "COURSE_CHECKPOINT_DIR": "ckpt"}
    for variable, name in folders.items():
        monkeypatch.setenv(variable, str(tmp_path / name))
    monkeypatch.setenv("COURSE_MODE", "smoke")
    return tmp_path


@pytest.fixture
def ftw_austria(course_env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny FTW Austria of 128-px chips, converted into the course layout of smoke mode, seed 0."""
    monkeypatch.setattr(test_real_fields, "SIZE", CHIP_PX)
    write_ftw_country(course_env / "ftw" / "austria", "austria")
    return prepare_ftw("austria", "smoke", seed=0, source=course_env / "ftw")


def run_with_dataset(notebook: str, dataset: str, folder: Path) -> dict:
    """Execute a copy of ``notebook`` whose parameters cell sets ``DATASET = dataset``; return its results record."""
    nb = nbformat.read(NOTEBOOKS / notebook, as_version=4)
    parameters = next(cell for cell in nb.cells if "parameters" in cell.metadata.get("tags", []))
    assert parameters.source.count('DATASET = "generated"') == 1, "the parameters cell has no DATASET line"
    parameters.source = parameters.source.replace('DATASET = "generated"', f'DATASET = "{dataset}"')
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
    return json.loads((folder / "results" / f"{Path(notebook).stem}.json").read_text())


def cached_datasets(folder: Path) -> list[str]:
    """The dataset folders in the data cache (not its lock files)."""
    return sorted(path.name for path in (folder / "data").iterdir() if not path.name.startswith("."))


def test_ftw_conversion_writes_the_generated_layout(ftw_austria: Path) -> None:
    catalog = read_catalog(ftw_austria)
    assert list(catalog.columns) == CATALOG_COLUMNS
    assert catalog.groupby("split").size().to_dict() == chips_per_split("smoke")
    scene = read_catalog(ftw_austria, split="scene").iloc[0]
    test = read_catalog(ftw_austria, split="test")
    assert scene["id"] in set(test["id"]) and scene["image"] == test.set_index("id").loc[scene["id"], "image"]
    fields = read_fields(ftw_austria / scene["fields"])
    assert fields.crs.to_epsg() == 4326 and set(fields["chip_id"]) == set(catalog["id"])
    chip_fields = fields[fields["chip_id"] == scene["id"]]
    assert len(chip_fields) == scene["n_fields"] == 1  # the writer's chips hold one field each
    mask, profile = read_raster(ftw_austria / scene["label"])
    redrawn = rasterize_fields(chip_fields, profile, boundary_px=1)
    assert np.array_equal(redrawn == 1, mask[0] == 1)  # the polygon rasterises back to the field's interior
    assert scene["field_fraction"] == pytest.approx(256 / CHIP_PX**2, abs=1e-4)
    assert scene["mean_field_px"] == 256 and field_folder("ftw-austria", "smoke") == ftw_austria


def test_region_and_checkpoint_names_follow_the_dataset(course_env: Path) -> None:
    assert field_region("generated", "commercial") == "commercial" and field_region("ftw-austria") == "austria"
    assert parcel_region("generated", "B") == "B" and parcel_region("breizhcrops-belle-ile", "B") == "belle-ile"
    assert field_unet_path("smallholder", "lite", 1).name.startswith("field_unet_smallholder_lite_seed1-")
    assert field_unet_path("austria", "lite", 1, "ce", dataset="ftw-austria").name.startswith(
        "field_unet_ftw-austria_lite_seed1_ce-"
    )
    with pytest.raises(ValueError, match="'generated' or 'ftw-<country>'"):
        field_region("eurosat")
    with pytest.raises(ValueError, match="breizhcrops-belle-ile"):
        parcel_region("breizhcrops-frh01")


def test_notebook_02_runs_on_fields_of_the_world(ftw_austria: Path, course_env: Path) -> None:
    record = run_with_dataset("02_cnn_unet_fields.ipynb", "ftw-austria", course_env)
    assert record["mode"] == "smoke" and "(austria test of the ftw-austria data" in record["headline"]
    metrics = record["metrics"]
    assert metrics["scene_true_fields"] == 1  # the scene is a test chip with the writer's one field
    assert all(0 <= metrics[key] <= 1 for key in ("unet_extent_iou", "forest_extent_iou", "ndvi_extent_iou"))
    checkpoints = sorted(
        re.sub(r"-[0-9a-f]{10}\.pt$", ".pt", path.name) for path in (course_env / "ckpt").glob("field_unet_*.pt")
    )
    course_checkpoints = [name for name in checkpoints if "demo_scene" not in name]  # "your own scene" trains its own
    assert course_checkpoints == ["field_unet_ftw-austria_smoke_seed0.pt", "field_unet_ftw-austria_smoke_seed0_ce.pt"]
    assert cached_datasets(course_env) == ["ftw-austria-windowa-smoke-seed0"]  # no generated data was made


def test_notebook_06_runs_on_breizhcrops(course_env: Path) -> None:
    write_breizhcrops_root(course_env / "breizhcrops")
    prepare_breizhcrops("belle-ile", "smoke", seed=0, source=course_env / "breizhcrops")
    record = run_with_dataset("06_time_series.ipynb", "breizhcrops-belle-ile", course_env)
    assert (
        record["mode"] == "smoke" and "(region belle-ile test of the breizhcrops-belle-ile data" in record["headline"]
    )
    accuracy = record["metrics"]["random_forest_accuracy"]
    test_parcels = 2 * len(BREIZHCROPS_CLASSES)  # 15 % of each class's PER_CLASS = 12 parcels
    assert 0 <= accuracy <= 1 and (accuracy * test_parcels) == pytest.approx(round(accuracy * test_parcels))
    checkpoints = list((course_env / "ckpt" / "06_time_series").glob("*.pt"))
    assert checkpoints and all(path.name.startswith("breizhcrops-belle-ile-") for path in checkpoints)
    assert cached_datasets(course_env) == ["breizhcrops-belle-ile-smoke-seed0"]  # no generated data was made
