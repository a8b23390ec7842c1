"""BreizhCrops in the course's parcel layout, on tiny BreizhCrops-like files the test writes (no internet)."""

from __future__ import annotations

import functools
import http.server
import io
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from course_utils.data import breizhcrops, download
from course_utils.data.breizhcrops import (
    H5_COLUMNS,
    BreizhCropsDataset,
    class_table,
    parcel_class_names,
    parcel_dataset,
    parcel_folder,
    prepare_breizhcrops,
)
from course_utils.data.parcels import CROP_CLASSES, S2_BANDS_13, ParcelSeriesDataset
from course_utils.data.store import dataset_dir, read_catalog

BREIZHCROPS_CLASSES = [  # in BreizhCrops' own id order here, so that the test sees labels mapped by name
    ("temporary meadows", ["PTR"]),
    ("permanent meadows", ["PPH", "PRL"]),
    ("nuts", ["NOX"]),
    ("orchards", ["PFR", "VRG"]),
    ("sunflower", ["TRN"]),
    ("corn", ["MIS", "MIE"]),
    ("rapeseed", ["CZH"]),
    ("wheat", ["BTH", "BTP"]),
    ("barley", ["ORH", "ORP"]),
]
PER_CLASS = 12  # smoke keeps up to 150 parcels: all 108, split 8 / 2 / 2 per class


def reflectance_x10000(band: str, parcel: int) -> float:
    """The value the fixture stores for ``band`` of parcel ``parcel``: 1000 + 10 x (course band index) + parcel.

    B10 (cirrus) is dark, as at the real surface: 20 + parcel / 10.
    """
    return 20 + parcel / 10 if band == "B10" else 1000 + 10 * S2_BANDS_13.index(band) + parcel


def write_breizhcrops_root(root: Path, columns: tuple[str, ...] = H5_COLUMNS, doa_unit: str = "ns") -> pd.DataFrame:
    """Write ``classmapping.csv``, ``2017/L1C/belle-ile.csv`` and ``.h5`` as the breizhcrops package stores them.

    Returns the index, with the dates of each parcel in ``dates``.
    """
    mapping = [(class_id, name, code) for class_id, (name, codes) in enumerate(BREIZHCROPS_CLASSES) for code in codes]
    (root / "2017" / "L1C").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(mapping, columns=["id", "classname", "code"]).to_csv(root / "classmapping.csv")
    rng = np.random.default_rng(7)
    rows, days = [], pd.date_range("2017-01-03", "2017-12-28", freq="5D")
    with h5py.File(root / "2017" / "L1C" / "belle-ile.h5", "w") as h5:
        for k in range(len(BREIZHCROPS_CLASSES) * PER_CLASS + 2):
            name, codes = BREIZHCROPS_CLASSES[k % len(BREIZHCROPS_CLASSES)]
            code = "XXX" if k == len(BREIZHCROPS_CLASSES) * PER_CLASS else codes[k % len(codes)]  # not mapped
            dates = days[np.sort(rng.choice(len(days), rng.integers(10, 20), replace=False))]
            path = f"csv/belle-ile/{100000 + k}.csv"
            rows.append({"idx": k, "CODE_CULTU": code, "path": path, "sequencelength": len(dates), "dates": dates})
            if k == len(BREIZHCROPS_CLASSES) * PER_CLASS + 1:  # no observation: left out, as breizhcrops does
                rows[-1]["sequencelength"] = 0
                continue
            series = np.zeros((len(dates), len(columns)))
            for band in S2_BANDS_13:
                series[:, columns.index(band)] = reflectance_x10000(band, k)
            series[::4, columns.index("QA60")] = 1024.0  # every fourth date is cloudy
            series[:, columns.index("doa")] = dates.as_unit(doa_unit).asi8
            h5.create_dataset(path, data=series)
    index = pd.DataFrame(rows)
    index.drop(columns="dates").to_csv(root / "2017" / "L1C" / "belle-ile.csv")
    return index


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("breizhcrops")
    return root, write_breizhcrops_root(root)


def test_classes_keep_the_course_names_and_are_mapped_by_name() -> None:
    mapping = pd.DataFrame(
        [(i, name, code) for i, (name, codes) in enumerate(BREIZHCROPS_CLASSES) for code in codes],
        columns=["id", "classname", "code"],
    )
    classes = class_table(mapping)
    assert list(classes.sort_values("label")["crop"]) == list(CROP_CLASSES)
    wheat = classes[classes["classname"] == "wheat"].iloc[0]
    assert (wheat["breizhcrops_id"], wheat["label"]) == (7, CROP_CLASSES.index("wheat"))
    mapping.loc[mapping["classname"] == "nuts", "classname"] = "walnuts"  # one name differs: keep BreizhCrops'
    own = class_table(mapping)
    assert list(own["label"]) == list(range(9)) and own["crop"].iloc[2] == "walnuts"


def test_prepare_converts_bands_scale_dates_and_clouds(course_data_dir, source) -> None:
    root, index = source
    folder = prepare_breizhcrops("belle-ile", "smoke", seed=0, source=root)
    catalog = read_catalog(folder)
    assert len(catalog) == len(BREIZHCROPS_CLASSES) * PER_CLASS  # unmapped code and empty series left out
    assert catalog["split"].value_counts().to_dict() == {"train": 72, "val": 18, "test": 18}
    per_class = catalog.groupby(["crop", "split"]).size().unstack()[["train", "val", "test"]]
    assert sorted(per_class.index) == sorted(CROP_CLASSES) and (per_class == [8, 2, 2]).all().all()
    observations = pd.read_parquet(folder / catalog["observations"].iat[0])
    assert list(observations.columns[4:]) == list(S2_BANDS_13)
    k = 10  # parcel 10 (permanent meadows): every band, the dates and the cloud flags
    parcel = observations[observations["parcel_id"] == f"belle-ile-{100000 + k}"]
    for band in S2_BANDS_13:
        assert (parcel[band] == round(reflectance_x10000(band, k))).all(), band
    assert parcel[S2_BANDS_13[0]].dtype == np.uint16
    dates = index.loc[k, "dates"]
    assert list(parcel["doy"]) == list(dates.day_of_year) and list(parcel["date"]) == list(dates)
    assert list(parcel["cloud"]) == [i % 4 == 0 for i in range(len(dates))]
    row = catalog.set_index("id").loc[f"belle-ile-{100000 + k}"]
    assert row["crop"] == BREIZHCROPS_CLASSES[k % 9][0].replace(" ", "_") and CROP_CLASSES[row["label"]] == row["crop"]
    assert (row["n_obs"], row["n_cloudy"]) == (len(dates), (len(dates) + 3) // 4)


def test_seeds_draw_different_splits(course_data_dir, source) -> None:
    root, _ = source
    val = [set(read_catalog(prepare_breizhcrops(seed=seed, mode="smoke", source=root), "val")["id"]) for seed in (0, 1)]
    assert val[0] != val[1] and len(val[0]) == len(val[1]) == 18


def test_dataset_reads_real_parcels_with_training_statistics(course_data_dir, source) -> None:
    root, index = source
    train = BreizhCropsDataset("train", mode="smoke", seed=0, seq_len=None, source=root)
    test = BreizhCropsDataset("test", mode="smoke", seed=0, seq_len=None, source=root, stats=train.stats)
    assert train.class_names == CROP_CLASSES and len(train) == 72 and len(test) == 18
    observations = pd.read_parquet(train.folder / "observations_belle-ile.parquet")
    train_rows = observations[observations["parcel_id"].isin(train.catalog["id"])]
    expected_mean = train_rows[list(S2_BANDS_13)].to_numpy(float).mean(0) / 10_000
    np.testing.assert_allclose(train.stats[0], expected_mean, rtol=1e-5)
    sample = test[0]
    k = int(sample["id"].removeprefix("belle-ile-")) - 100000
    reflectance = sample["x"] * torch.from_numpy(train.stats[1]) + torch.from_numpy(train.stats[0])
    expected = [reflectance_x10000(band, k) / 10_000 for band in S2_BANDS_13]
    np.testing.assert_allclose(reflectance.numpy(), np.tile(expected, (len(reflectance), 1)), atol=6e-5)
    assert sample["doy"].tolist() == list(index.loc[k, "dates"].day_of_year)
    assert test.class_names[int(sample["label"])] == BREIZHCROPS_CLASSES[k % 9][0].replace(" ", "_")
    padded = BreizhCropsDataset("val", mode="smoke", seed=0, seq_len=45, source=root)[0]
    assert padded["x"].shape == (45, 13) and not padded["mask"][-1]


def test_entry_point_and_class_names(course_data_dir, source, monkeypatch) -> None:
    root, _ = source

    def prepare_from_root(region: str, mode: str | None, seed: int, source: Path | None = None) -> Path:
        return prepare_breizhcrops(region, mode, seed, source or root)

    monkeypatch.setattr(breizhcrops, "prepare_breizhcrops", prepare_from_root)
    real = parcel_dataset("val", "breizhcrops-belle-ile", region="A", mode="smoke")  # region: generated data only
    assert isinstance(real, BreizhCropsDataset) and set(real.catalog["region"]) == {"belle-ile"}
    assert parcel_class_names("breizhcrops-belle-ile", "smoke") == CROP_CLASSES == parcel_class_names()
    assert parcel_folder("breizhcrops-belle-ile", "smoke") == real.folder != parcel_folder("generated", "smoke")
    generated = parcel_dataset("val", region="A", mode="smoke")
    assert type(generated) is ParcelSeriesDataset and set(generated.catalog["region"]) == {"A"}
    with pytest.raises(ValueError, match="breizhcrops-belle-ile"):
        parcel_dataset("val", "breizhcrops-frh01")


@pytest.mark.parametrize(
    ("columns", "doa_unit", "message"),
    [
        ((*S2_BANDS_13, "QA10", "QA20", "QA60", "doa"), "ns", "not in BreizhCrops' L1C order"),
        (H5_COLUMNS, "s", "nanoseconds since 1970"),
    ],
)
def test_wrong_band_order_or_date_unit_is_refused_and_nothing_is_left(
    course_data_dir, tmp_path, columns, doa_unit, message
) -> None:
    write_breizhcrops_root(tmp_path, columns, doa_unit)
    with pytest.raises(ValueError, match=message):
        prepare_breizhcrops(mode="lite", seed=5, source=tmp_path)
    assert not dataset_dir("breizhcrops-belle-ile", "lite", 5).exists()


def test_bad_input_is_refused_with_what_to_do(course_data_dir, tmp_path) -> None:
    with pytest.raises(ValueError, match="frh01-frh04"):
        prepare_breizhcrops("frh01", source=tmp_path)
    with pytest.raises(FileNotFoundError, match="belle-ile.h5"):
        prepare_breizhcrops(mode="lite", seed=6, source=tmp_path)
    write_breizhcrops_root(tmp_path)
    pd.DataFrame({"code": ["ORH"]}).to_csv(tmp_path / "classmapping.csv")
    with pytest.raises(ValueError, match="no column id, classname"):
        prepare_breizhcrops(mode="lite", seed=6, source=tmp_path)


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder served over HTTP on 127.0.0.1 as ``COURSE_DOWNLOAD_MIRROR``, with a fresh data cache."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(download.MIRROR_ENV, f"http://127.0.0.1:{httpd.server_port}")
    yield served
    httpd.shutdown()
    httpd.server_close()


def serve(served: Path, root: Path, h5: bytes) -> None:
    """Put BreizhCrops' three registered files for belle-ile on the mirror, the HDF5 file as ``h5``."""
    files = {name: download.REGISTRY[name].filename for name in download.BREIZHCROPS_FILES}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        member = tarfile.TarInfo("belle-ile.h5")
        member.size = len(h5)
        archive.addfile(member, io.BytesIO(h5))
    (served / files["breizhcrops-belle-ile-l1c-h5"]).write_bytes(buffer.getvalue())
    (served / files["breizhcrops-belle-ile-l1c-index"]).write_bytes((root / "2017/L1C/belle-ile.csv").read_bytes())
    (served / files["breizhcrops-classmapping"]).write_bytes((root / "classmapping.csv").read_bytes())


def test_registry_download_is_verified_by_the_published_size(mirror, source, monkeypatch) -> None:
    root, _ = source
    h5 = (root / "2017/L1C/belle-ile.h5").read_bytes()
    serve(mirror, root, h5)
    with pytest.raises(ValueError, match="expected an HDF5 file of 17038944 bytes.*deleted"):
        prepare_breizhcrops(mode="smoke")
    assert not any(download.downloads_dir().glob("*belle-ile*"))  # neither the archive nor its extracted folder
    monkeypatch.setitem(breizhcrops.H5_SIZE, "belle-ile", len(h5))  # the same file, now of the "published" size
    folder = prepare_breizhcrops(mode="smoke")
    assert len(read_catalog(folder)) == len(BREIZHCROPS_CLASSES) * PER_CLASS


def test_a_download_that_is_not_a_breizhcrops_csv_is_deleted(mirror, source, monkeypatch) -> None:
    root, _ = source
    h5 = (root / "2017/L1C/belle-ile.h5").read_bytes()
    serve(mirror, root, h5)
    (mirror / download.REGISTRY["breizhcrops-classmapping"].filename).write_text("<html>moved</html>\n")
    monkeypatch.setitem(breizhcrops.H5_SIZE, "belle-ile", len(h5))
    with pytest.raises(ValueError, match="class mapping.*deleted; run again"):
        prepare_breizhcrops(mode="smoke")
    assert not (download.downloads_dir() / download.REGISTRY["breizhcrops-classmapping"].filename).exists()
