"""Fetch the public datasets edgewatch is evaluated on (they are never shipped in the repo).

* NAB — the Numenta Anomaly Benchmark (MIT licence): ``data/``, ``labels/`` and ``config/``
  of github.com/numenta/NAB, into ``DEST/nab``.
* CMAPSS — NASA's turbofan engine degradation data (FD001–FD004 text files), into
  ``DEST/cmapss``. NASA publishes it as a zip that holds ``CMAPSSData.zip``; both the outer
  and the inner zip are accepted.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

from tenacity import retry, stop_after_attempt, wait_exponential

NAB_URL = "https://github.com/numenta/NAB/archive/refs/heads/master.zip"
CMAPSS_URL = "https://phm-datasets.s3.amazonaws.com/NASA/6.+Turbofan+Engine+Degradation+Simulation+Data+Set.zip"
NAB_PARTS = ("data/", "labels/", "config/")
CMAPSS_REQUIRED = ("train_FD001.txt", "test_FD001.txt", "RUL_FD001.txt")


class DatasetError(RuntimeError):
    """The download did not contain what the dataset needs."""


@retry(stop=stop_after_attempt(3), wait=wait_exponential(multiplier=1, max=10), reraise=True)
def download(url: str, target: Path, progress: Callable[[int, int | None], None] = lambda done, total: None) -> Path:
    """Download ``url`` to ``target`` (retried with backoff); ``progress(bytes, total)``."""
    with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as out:
        total = response.headers.get("Content-Length")
        total = int(total) if total else None
        done = 0
        while chunk := response.read(1 << 16):
            out.write(chunk)
            done += len(chunk)
            progress(done, total)
    return target


def _fetch_zip(url: str, progress) -> zipfile.ZipFile:
    with tempfile.TemporaryDirectory() as tmp:
        path = download(url, Path(tmp) / "download.zip", progress)
        return zipfile.ZipFile(io.BytesIO(path.read_bytes()))


def fetch_nab(dest: Path, url: str = NAB_URL, progress=lambda done, total: None) -> Path:
    """NAB's data, labels and config into ``dest/nab``; returns that directory."""
    archive = _fetch_zip(url, progress)
    root = Path(dest) / "nab"
    for member in archive.infolist():
        # NAB-master/data/realTraffic/speed_6005.csv -> data/realTraffic/speed_6005.csv
        inner = member.filename.split("/", 1)[1] if "/" in member.filename else member.filename
        if member.is_dir() or not inner.startswith(NAB_PARTS):
            continue
        _extract(archive, member, root / inner)
    if not (root / "labels" / "combined_windows.json").exists():
        raise DatasetError(f"{url} has no labels/combined_windows.json: not a NAB archive")
    return root


def fetch_cmapss(dest: Path, url: str = CMAPSS_URL, progress=lambda done, total: None) -> Path:
    """The CMAPSS text files into ``dest/cmapss``; returns that directory."""
    archive = _fetch_zip(url, progress)
    inner = next((m for m in archive.namelist() if m.endswith("CMAPSSData.zip")), None)
    if inner is not None:
        archive = zipfile.ZipFile(io.BytesIO(archive.read(inner)))
    root = Path(dest) / "cmapss"
    for member in archive.infolist():
        name = Path(member.filename).name
        if not member.is_dir() and name.endswith(".txt") and name.split("_")[0] in ("train", "test", "RUL"):
            _extract(archive, member, root / name)
    missing = [name for name in CMAPSS_REQUIRED if not (root / name).exists()]
    if missing:
        raise DatasetError(f"{url} lacks {', '.join(missing)}: not the CMAPSS archive")
    return root


def _extract(archive: zipfile.ZipFile, member: zipfile.ZipInfo, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with archive.open(member) as source, open(target, "wb") as out:
        shutil.copyfileobj(source, out)
