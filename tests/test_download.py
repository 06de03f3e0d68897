"""`workbench datasets get`: offline, against archives the tests build, over file:// and HTTP."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from workbench.cli import app
from workbench.data.download import OXFORD17_CLASSES, get_dataset

runner = CliRunner()


def jpeg_bytes(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buffer, "JPEG")
    return buffer.getvalue()


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def flowers_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("archives") / "flower_photos.tgz"
    with tarfile.open(path, "w:gz") as tar:
        for c, name in enumerate(["daisy", "roses", "tulips"]):
            for i in range(3):
                add(tar, f"flower_photos/{name}/{i}.jpg", jpeg_bytes((80 * c, 40 * i, 100)))
        add(tar, "flower_photos/LICENSE.txt", b"attributions\n")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def oxford_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("archives") / "17flowers.tgz"
    tiny = jpeg_bytes((10, 200, 10))
    with tarfile.open(path, "w:gz") as tar:
        for i in range(1, 1361):
            add(tar, f"jpg/image_{i:04d}.jpg", tiny)
        add(tar, "jpg/files.txt", b"index\n")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_flowers_from_a_local_archive(tmp_path: Path, flowers_archive: tuple[Path, str]) -> None:
    archive, digest = flowers_archive
    result = runner.invoke(
        app,
        ["datasets", "get", "flowers", "--root", str(tmp_path), "--url", archive.as_uri(),
         "--sha256", digest],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    target = tmp_path / "flowers"
    assert sorted(p.name for p in target.iterdir() if not p.name.startswith(".")) == [
        "LICENSE.txt", "daisy", "roses", "tulips",
    ]  # fmt: skip
    assert len(list((target / "roses").glob("*.jpg"))) == 3
    assert "3 classes, 9 images" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flowers"]  # no leftovers
    again = runner.invoke(app, ["datasets", "get", "flowers", "--root", str(tmp_path),
                                "--url", archive.as_uri(), "--sha256", digest])  # fmt: skip
    assert again.exit_code == 0 and "already there" in again.stderr
    as_json = runner.invoke(
        app,
        ["datasets", "get", "flowers", "--root", str(tmp_path), "--url", archive.as_uri(),
         "--sha256", digest, "--json"],
    )  # fmt: skip
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout) == {
        "folder": str(target), "classes": ["daisy", "roses", "tulips"], "images": 9,
    }  # fmt: skip


def test_oxford17_gets_its_class_folders(tmp_path: Path, oxford_archive: tuple[Path, str]) -> None:
    archive, digest = oxford_archive
    target = get_dataset("oxford17", tmp_path, archive.as_uri(), digest)
    folders = sorted(p.name for p in target.iterdir() if p.is_dir())
    assert folders == sorted(OXFORD17_CLASSES)
    assert all(len(list((target / c).iterdir())) == 80 for c in OXFORD17_CLASSES)
    assert (target / "daffodil" / "image_0001.jpg").exists()
    assert (target / "pansy" / "image_1360.jpg").exists()
    assert (target / "snowdrop" / "image_0081.jpg").exists()


def test_wrong_checksum_leaves_nothing(tmp_path: Path, flowers_archive: tuple[Path, str]) -> None:
    archive, _ = flowers_archive
    result = runner.invoke(
        app,
        ["datasets", "get", "flowers", "--root", str(tmp_path), "--url", archive.as_uri(),
         "--sha256", "0" * 64],
    )  # fmt: skip
    assert result.exit_code == 2 and "checksum mismatch" in result.stderr
    assert not (tmp_path / "flowers").exists()
    assert list((tmp_path / ".downloads").iterdir()) == []


def test_resumes_a_partial_download_from_a_file(
    tmp_path: Path, flowers_archive: tuple[Path, str]
) -> None:
    archive, digest = flowers_archive
    downloads = tmp_path / ".downloads"
    downloads.mkdir()
    data = archive.read_bytes()
    (downloads / "flowers.tgz.part").write_bytes(data[: len(data) // 2])
    target = get_dataset("flowers", tmp_path, archive.as_uri(), digest)
    assert (target / "daisy").is_dir()


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves one file and honours `Range: bytes=N-`, as a real download server does."""

    payload = b""
    ranges: list[str] = []  # noqa: RUF012 - shared with the test on purpose

    def do_GET(self) -> None:
        header = self.headers.get("Range")
        start = 0
        if header:
            self.ranges.append(header)
            start = int(header.split("=")[1].rstrip("-"))
            self.send_response(206)
        else:
            self.send_response(200)
        body = self.payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(flowers_archive: tuple[Path, str]) -> Iterator[str]:
    RangeHandler.payload = flowers_archive[0].read_bytes()
    RangeHandler.ranges = []
    httpd = http.server.HTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/flower_photos.tgz"
    httpd.shutdown()


def test_resumes_over_http_with_a_range_request(
    tmp_path: Path, server: str, flowers_archive: tuple[Path, str]
) -> None:
    archive, digest = flowers_archive
    downloads = tmp_path / ".downloads"
    downloads.mkdir()
    half = len(archive.read_bytes()) // 2
    (downloads / "flowers.tgz.part").write_bytes(archive.read_bytes()[:half])
    target = get_dataset("flowers", tmp_path, server, digest)
    assert RangeHandler.ranges == [f"bytes={half}-"]
    assert len(list((target / "tulips").iterdir())) == 3


def test_unknown_dataset_and_unreachable_url(tmp_path: Path) -> None:
    unknown = runner.invoke(app, ["datasets", "get", "imagenet", "--root", str(tmp_path)])
    assert unknown.exit_code == 2 and "unknown dataset" in unknown.stderr
    missing = runner.invoke(app, ["datasets", "get", "flowers", "--root", str(tmp_path),
                                  "--url", (tmp_path / "none.tgz").as_uri()])  # fmt: skip
    assert missing.exit_code == 2 and "cannot read" in missing.stderr
