"""Real public datasets: a small registry of pinned files, and a download that is cached, resumable and verified.

The generated data is the course's default because it always works. Where a learner is online (Colab, a lab
machine), the loaders in ``course_utils.data.real_fields``, ``course_utils.data.eurosat`` and
``course_utils.data.breizhcrops`` read real data instead; they call :func:`fetch`, which

1. downloads a registered file into ``<data cache>/downloads`` with a progress bar, writing ``<name>.part``;
   an interrupted download keeps its ``.part`` and the next call resumes it with an HTTP ``Range`` request;
   one process at a time downloads a file: another that asks for it meanwhile waits and reuses it;
2. verifies the complete file (size where the publisher gives it, and the MD5 checksum published by the
   dataset's own distribution or a well-kept library, cited on each entry) and only then renames it into place;
   a file that fails the check is deleted, so a broken download is never used (BreizhCrops publishes no
   checksum: its loader checks the published size of the extracted file and the files' layout instead);
3. extracts the archive into a temporary folder, refusing members that would land outside it (path
   traversal), and renames the folder into place when extraction is complete.

Set ``COURSE_DOWNLOAD_MIRROR`` to a base URL (``https://mirror.example.org/dl4rs``) to fetch every registered
file from ``<mirror>/<filename>`` instead of its origin, e.g. behind a proxy or from a course server; the
checksums are still verified.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import urllib.response
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from course_utils.config import data_dir
from course_utils.data.store import explain_cache_errors, target_lock

MIRROR_ENV = "COURSE_DOWNLOAD_MIRROR"
"""Environment variable: a base URL that replaces every registered file's origin (``<mirror>/<filename>``)."""

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
OFFLINE_HINT = 'or keep the generated data, which needs no internet: DATASET = "generated" in the parameters cell'


@dataclass(frozen=True)
class RemoteFile:
    """One downloadable file, pinned to an immutable URL and verified by its published checksum.

    Attributes:
        filename: the name it is stored under in the downloads folder (and on a mirror).
        url: the pinned origin URL.
        md5: the published MD5 checksum (hex), or ``None`` where the publisher gives none (BreizhCrops): the
            module that reads such a file then checks what is published (a size, the file's structure) and
            deletes the download when the check fails.
        size: the exact size in bytes where the publisher gives it, else ``None`` (the MD5 still guards it).
        licence: the data licence.
        citation: what to cite when using it.
        source: where the URL and checksum were taken from.
    """

    filename: str
    url: str
    md5: str | None
    size: int | None
    licence: str
    citation: str
    source: str


FTW_LICENCE = "CC-BY-4.0 (labels) / Copernicus Sentinel-2 data, free and open (imagery); per-country terms vary"
FTW_CITATION = (
    "Kerner, H. et al. (2025). Fields of The World: A Machine Learning Benchmark Dataset for Global "
    "Agricultural Field Boundary Segmentation. AAAI. https://doi.org/10.48550/arXiv.2409.16252"
)
FTW_SOURCE = "torchgeo/datasets/ftw.py (FieldsOfTheWorld.base_url, country_to_md5), torchgeo 0.7"
#: Per-country archives of Fields of The World (MD5 from torchgeo's FieldsOfTheWorld.country_to_md5).
FTW_MD5 = {
    "austria": "35604e3e3e78b4469e443bc756e19d26",
    "belgium": "111a9048e15391c947bc778e576e99b4",
    "brazil": "2ba96f9f01f37ead1435406c3f2b7c63",
    "cambodia": "581e9b8dae9713e4d03459bcec3c0bd0",
    "corsica": "0b38846063a98a31747fdeaf1ba03980",
    "croatia": "dc5d33e19ae9e587c97f8f4c9852c87e",
    "denmark": "ec817210b06351668cacdbd1a8fb9471",
    "estonia": "b9c89e559e3c7d53a724e7f32ccf88ea",
    "finland": "23f853d6cbaea5a3596d1d38cc27fd65",
    "france": "f05314f148642ff72d8bea903c01802d",
    "germany": "d57a7ed203b9cf89c709aab29d687cee",
    "india": "361a688507e2e5cc7ca7138be01a5b80",
    "kenya": "80ca0335b25440379f99b7011dfbdfa2",
    "latvia": "6eeaaa57cdf18f25497f84e854a86d42",
    "lithuania": "0a2f4ab3309633e2de121d936e0763ba",
    "luxembourg": "5a8357eae364cca836b87827b3c6a3d3",
    "netherlands": "3afc61d184aab5c4fd6beaecf2b6c0a9",
    "portugal": "10485b747e1d8c082d33c73d032a7e05",
    "rwanda": "087ce56bbf06b32571ef27ff67bac43b",
    "slovakia": "f66a0294491086d4c49dc4a804446e50",
    "slovenia": "6fa3ae3920bcc2c890a0d74435d9d29b",
    "south_africa": "b7f1412d69922e8551cf91081401ec8d",
    "spain": "908bbf29597077c2c6954c439fe8265f",
    "sweden": "4b07726c421981bb2019e8900023393e",
    "vietnam": "32e1cacebcb2da656d40ab8522eb6737",
}

EUROSAT_LICENCE = "MIT (EuroSAT, github.com/phelber/EuroSAT); imagery: Copernicus Sentinel-2 data"
EUROSAT_CITATION = (
    "Helber, P., Bischke, B., Dengel, A., Borth, D. (2019). EuroSAT: A Novel Dataset and Deep Learning Benchmark "
    "for Land Use and Land Cover Classification. IEEE JSTARS 12(7). https://doi.org/10.1109/JSTARS.2019.2918242"
)
EUROSAT_SOURCE = "torchgeo/datasets/eurosat.py (EuroSAT100.url, md5, split_urls, split_md5s), torchgeo 0.5+"
EUROSAT_HF = "https://hf.co/datasets/torchgeo/eurosat/{kind}/06fd1b090bceecc0ce724cd21578ba7a6664fe8d/{name}"
#: The 100-image subset's train/val/test lists (torchgeo's EuroSAT100.split_md5s).
EUROSAT100_SPLIT_MD5 = {
    "train": "033d0c23e3a75e3fa79618b0e35fe1c7",
    "val": "3e3f8b3c344182b8d126c4cc88f3f215",
    "test": "f908f151b950f270ad18e61153579794",
}

# The package declares MIT (setup.py, commit 379c071fbf91ad42bba10109d47f79bd596d7d9a); the data states no licence
# of its own beyond its sources': the French parcel registry and Copernicus Sentinel-2.
BREIZHCROPS_LICENCE = (
    "labels: Registre Parcellaire Graphique 2017 (IGN/ASP), Licence Ouverte / Open Licence (Etalab); imagery: "
    "Copernicus Sentinel-2 data, free and open; breizhcrops package: MIT"
)
BREIZHCROPS_CITATION = (
    "Russwurm, M., Pelletier, C., Zollner, M., Lefevre, S., Koerner, M. (2020). BreizhCrops: A Time Series Dataset "
    "for Crop Type Mapping. ISPRS Archives XLIII-B2-2020. "
    "https://doi.org/10.5194/isprs-archives-XLIII-B2-2020-1545-2020"
)
# URLs from breizhcrops/datasets/urls.py of github.com/dl4sits/BreizhCrops (master: the S3 bucket; commit
# 83fd456ecfab3ffde58989e57493c6d452484197 pinned the same files on syncandshare.lrz.de). BreizhCrops publishes
# no checksum, only the size of the *extracted* HDF5 file (FILESIZES[2017]["L1C"]["belle-ile"] = 17 038 944
# bytes), so these entries carry md5=None and course_utils.data.breizhcrops checks that size, the HDF5 layout
# and the CSV columns, deleting what fails.
BREIZHCROPS_SOURCE = "dl4sits/BreizhCrops breizhcrops/datasets/urls.py (H5_URLs, INDEX_FILE_URLs, CLASSMAPPINGURL)"
BREIZHCROPS_S3 = "https://breizhcrops.s3.eu-central-1.amazonaws.com"
#: Registry name -> (file name in the downloads folder, path in the BreizhCrops bucket).
BREIZHCROPS_FILES = {
    "breizhcrops-belle-ile-l1c-h5": ("breizhcrops-2017-L1C-belle-ile.h5.tar.gz", "2017/L1C/belle-ile.h5.tar.gz"),
    "breizhcrops-belle-ile-l1c-index": ("breizhcrops-2017-L1C-belle-ile.csv", "2017/L1C/belle-ile.csv"),
    "breizhcrops-classmapping": ("breizhcrops-classmapping.csv", "classmapping.csv"),
}

REGISTRY: dict[str, RemoteFile] = {
    **{
        f"ftw-{country}": RemoteFile(
            filename=f"ftw-{country}.zip",
            url=f"https://data.source.coop/kerner-lab/fields-of-the-world-archive/{country}.zip",
            md5=md5,
            size=None,
            licence=FTW_LICENCE,
            citation=FTW_CITATION,
            source=FTW_SOURCE,
        )
        for country, md5 in FTW_MD5.items()
    },
    "eurosat100": RemoteFile(
        filename="EuroSAT100.zip",
        url=EUROSAT_HF.format(kind="resolve", name="EuroSAT100.zip"),
        md5="c21c649ba747e86eda813407ef17d596",
        size=None,
        licence=EUROSAT_LICENCE,
        citation=EUROSAT_CITATION,
        source=EUROSAT_SOURCE,
    ),
    **{
        f"eurosat100-{split}": RemoteFile(
            filename=f"eurosat100-{split}.txt",
            url=EUROSAT_HF.format(kind="raw", name=f"eurosat-{split}.txt"),
            md5=md5,
            size=None,
            licence=EUROSAT_LICENCE,
            citation=EUROSAT_CITATION,
            source=EUROSAT_SOURCE,
        )
        for split, md5 in EUROSAT100_SPLIT_MD5.items()
    },
    **{
        name: RemoteFile(
            filename=filename,
            url=f"{BREIZHCROPS_S3}/{path}",
            md5=None,
            size=None,
            licence=BREIZHCROPS_LICENCE,
            citation=BREIZHCROPS_CITATION,
            source=BREIZHCROPS_SOURCE,
        )
        for name, (filename, path) in BREIZHCROPS_FILES.items()
    },
}


def downloads_dir() -> Path:
    """Folder of the downloaded files: ``<data cache>/downloads``."""
    return data_dir() / "downloads"


def registered(name: str) -> RemoteFile:
    """The registry entry ``name``.

    Raises:
        ValueError: for a name that is not registered (the message lists the names).
    """
    if name not in REGISTRY:
        raise ValueError(f"no dataset file {name!r} is registered; choose one of {', '.join(sorted(REGISTRY))}.")
    return REGISTRY[name]


def source_url(item: RemoteFile) -> str:
    """Where ``item`` is fetched from: its origin, or ``<mirror>/<filename>`` when ``COURSE_DOWNLOAD_MIRROR`` is set."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    return f"{mirror.rstrip('/')}/{item.filename}" if mirror else item.url


def md5sum(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """The MD5 checksum (hex) of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, item: RemoteFile) -> None:
    """Check a downloaded file's size and MD5 against the registry (each where the registry has one).

    Raises:
        ValueError: when either differs, naming the expected and the found value.
    """
    size = path.stat().st_size
    if item.size is not None and size != item.size:
        raise ValueError(f"{item.filename}: {size} bytes, expected {item.size}")
    if item.md5 is None:
        return
    found = md5sum(path)
    if found != item.md5:
        raise ValueError(f"{item.filename}: MD5 {found}, expected {item.md5} (published in {item.source})")


def _open(url: str, start: int, timeout_s: float) -> urllib.request.addinfourl:
    """Open ``url``, asking for the bytes from ``start`` on when ``start > 0``.

    Raises:
        ConnectionError: when the host cannot be reached, saying what to do instead.
    """
    request = urllib.request.Request(url, headers={"User-Agent": "dl4rs-course"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    try:
        return urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError:
        raise  # the server answered: the caller decides
    except (urllib.error.URLError, OSError) as error:
        raise ConnectionError(
            f"cannot download {url}: {getattr(error, 'reason', error)}. Check the internet connection (or set "
            f"{MIRROR_ENV} to a mirror), {OFFLINE_HINT}."
        ) from error


def _append(response: urllib.response.addinfourl, part: Path, start: int, item: RemoteFile, progress: bool) -> None:
    """Write ``response``'s body to ``part`` (appended after ``start`` bytes when the server sent a range).

    Raises:
        ConnectionError: when the transfer stops before the announced length; ``part`` keeps what arrived.
        OSError: when writing fails (a full disk): not a connection problem, so it is raised as it is.
    """
    if start and response.status != 206:  # the server ignored the Range request: start again
        start = 0
    remaining = int(response.headers.get("Content-Length") or 0) or None
    total = start + remaining if remaining is not None else item.size
    received, problem = 0, None
    bar = tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=item.filename, disable=not progress)
    with bar, open(part, "ab" if start else "wb") as handle:
        while True:
            try:
                block = response.read(1 << 20)
            except OSError as error:
                problem = error
                break
            if not block:
                break
            handle.write(block)
            received += len(block)
            bar.update(len(block))
    if problem is not None or (remaining is not None and received < remaining):
        raise ConnectionError(
            f"the download of {item.filename} broke off after {start + received} bytes "
            f"({problem or 'the server closed early'}); run it again to resume from {part}, {OFFLINE_HINT}."
        ) from problem


def download(name: str, progress: bool = True, timeout_s: float = 60.0) -> Path:
    """The verified file of registry entry ``name`` in :func:`downloads_dir`, downloaded first if missing.

    A partial download is kept as ``<filename>.part`` and resumed by the next call (HTTP ``Range``; a server
    that ignores it sends the whole file, which then replaces the partial one). A process that finds another
    one downloading the same file waits for it (:func:`~course_utils.data.store.target_lock`) and reuses it.

    Args:
        name: a key of :data:`REGISTRY`, e.g. ``"ftw-austria"`` or ``"eurosat100"``.
        progress: show a tqdm progress bar.
        timeout_s: seconds to wait for the server before giving up.

    Returns:
        The path of the complete, verified file.

    Raises:
        ValueError: for an unknown name, or when the download fails the size/MD5 check (the file is deleted).
        ConnectionError: when the host cannot be reached, or the connection drops (the ``.part`` file is kept).
        OSError: when the disk is full or the data cache is not writable, saying how to move the cache.
    """
    item = registered(name)
    target = downloads_dir() / item.filename
    if target.is_file():
        return target
    with explain_cache_errors(), target_lock(target):
        if not target.is_file():  # else another process downloaded it while this one waited
            _download(item, target, progress, timeout_s)
    return target


def _download(item: RemoteFile, target: Path, progress: bool, timeout_s: float) -> None:
    """Download ``item`` to ``target`` through ``<target>.part`` (resumed if present), verify it, rename it."""
    part = target.with_name(target.name + ".part")
    start = part.stat().st_size if part.is_file() else 0
    url = source_url(item)
    try:
        with _open(url, start, timeout_s) as response:
            _append(response, part, start, item, progress)
    except urllib.error.HTTPError as error:
        if error.code != 416:  # 416: nothing after `start`, i.e. the partial file is already complete
            raise ConnectionError(
                f"cannot download {url}: HTTP {error.code} {error.reason}; {OFFLINE_HINT}."
            ) from error
    try:
        verify(part, item)
    except ValueError as error:
        part.unlink(missing_ok=True)
        raise ValueError(f"the download is damaged and was deleted ({error}); download it again.") from error
    os.replace(part, target)


def _safe_members(archive: Path, names: list[str], destination: Path) -> None:
    """Refuse archive members that would be written outside ``destination`` (absolute paths, ``..``)."""
    root = destination.resolve()
    for member in names:
        if Path(member).is_absolute() or not (root / member).resolve().is_relative_to(root):
            raise ValueError(f"{archive.name} holds a member that would land outside its folder ({member!r}): refused.")


def extract(archive: Path, destination: Path) -> Path:
    """Extract a zip or tar archive (``.zip``, ``.tar``, ``.tar.gz``, ``.tgz``) into ``destination``, all or nothing.

    Members go to a temporary folder beside ``destination``, which is renamed when extraction has finished.

    Raises:
        ValueError: for a member outside the folder (path traversal), or a damaged or truncated archive.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = destination.with_name(f".partial-{destination.name}-{uuid.uuid4().hex[:8]}")
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zipped:
                _safe_members(archive, zipped.namelist(), tmp)
                zipped.extractall(tmp)
        else:
            with tarfile.open(archive) as tarred:
                _safe_members(archive, tarred.getnames(), tmp)
                tarred.extractall(tmp, filter="data")  # "data" also refuses links and devices
        tmp.rename(destination)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(f"{archive} is damaged ({error}); delete it and download it again.") from error
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return destination


def fetch(name: str, progress: bool = True) -> Path:
    """The extracted folder of registry entry ``name`` (``<data cache>/downloads/<name>``), downloaded if needed.

    Files that are not archives (``.zip``, ``.tar``, ``.tar.gz``, ``.tgz``; e.g. a split list) are returned as the
    downloaded file itself.
    """
    path = download(name, progress=progress)
    if not path.name.endswith(ARCHIVE_SUFFIXES):
        return path
    folder = downloads_dir() / name
    if folder.is_dir():
        return folder
    with explain_cache_errors(), target_lock(folder):
        return folder if folder.is_dir() else extract(path, folder)
