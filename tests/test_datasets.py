"""`edgewatch data fetch`, against a local HTTP server (the tests never leave 127.0.0.1)."""

import io
import threading
import zipfile
from functools import partial
from http.server import HTTPServer, SimpleHTTPRequestHandler

import pytest
from typer.testing import CliRunner

from edgewatch.cli import app
from edgewatch.evaluation import datasets
from tests.support.cli import said

runner = CliRunner()


def make_zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    nab = {
        "NAB-master/README.md": b"nab",
        "NAB-master/data/realTraffic/speed_6005.csv": b"timestamp,value\n2015-01-01 00:00:00,1\n",
        "NAB-master/labels/combined_windows.json": b"{}",
        "NAB-master/config/profiles.json": b"{}",
        "NAB-master/results/numenta/x.csv": b"big",
    }
    (root / "nab.zip").write_bytes(make_zip(nab))
    cmapss = make_zip({f"CMAPSSData/{n}_FD00{i}.txt": b"1 1 0.1\n" for n in ("train", "test", "RUL") for i in (1, 2)})
    (root / "nasa.zip").write_bytes(make_zip({"6. Turbofan/CMAPSSData.zip": cmapss}))
    (root / "other.zip").write_bytes(make_zip({"x/readme.txt": b"nothing"}))
    httpd = HTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    thread.join()


def test_fetch_nab_keeps_data_labels_config(server, tmp_path):
    root = datasets.fetch_nab(tmp_path / "data", f"{server}/nab.zip")
    assert (root / "data" / "realTraffic" / "speed_6005.csv").read_bytes().startswith(b"timestamp")
    assert (root / "labels" / "combined_windows.json").exists()
    assert (root / "config" / "profiles.json").exists()
    assert not (root / "results").exists() and not (root / "README.md").exists()


def test_fetch_cmapss_from_nasas_nested_zip(server, tmp_path):
    result = runner.invoke(app, ["data", "fetch", "cmapss", "--dest", str(tmp_path), "--url", f"{server}/nasa.zip"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "cmapss").iterdir()) == [
        "RUL_FD001.txt", "RUL_FD002.txt", "test_FD001.txt", "test_FD002.txt", "train_FD001.txt", "train_FD002.txt",
    ]  # fmt: skip


def test_wrong_archive_and_unreachable_server_are_clear_errors(server, tmp_path):
    with pytest.raises(datasets.DatasetError, match="not a NAB archive"):
        datasets.fetch_nab(tmp_path, f"{server}/other.zip")
    result = runner.invoke(app, ["data", "fetch", "nab", "--dest", str(tmp_path), "--url", f"{server}/missing.zip"])
    assert result.exit_code == 2 and "could not fetch nab" in said(result)
    result = runner.invoke(app, ["data", "fetch", "weather"])
    assert result.exit_code == 2 and "unknown dataset" in said(result)
