"""`workbench datasets get NAME`: public datasets as class folders, downloaded safely.

Downloads resume where they stopped (HTTP Range, or an offset into a local file), are checked
against a known sha256 before anything is unpacked, and are unpacked into a temporary folder
that is renamed into place only when complete: an interrupted run never leaves a half dataset.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from workbench.core.errors import WorkbenchError
from workbench.core.progress import Reporter

CHUNK = 1 << 20
MARKER = ".workbench-dataset.json"
OXFORD17_CLASSES = (
    "daffodil", "snowdrop", "lily_valley", "bluebell", "crocus", "iris", "tigerlily", "tulip",
    "fritillary", "sunflower", "daisy", "colts_foot", "dandelion", "cowslip", "buttercup",
    "windflower", "pansy",
)  # fmt: skip
OXFORD17_PER_CLASS = 80


def _flowers_layout(unpacked: Path, staging: Path) -> None:
    """flower_photos/<class>/*.jpg, plus its LICENSE.txt (the photos' CC-BY attributions)."""
    source = unpacked / "flower_photos"
    if not source.is_dir():
        raise WorkbenchError("archive does not hold flower_photos/")
    for entry in sorted(source.iterdir()):
        if entry.is_dir() or entry.name == "LICENSE.txt":
            shutil.move(str(entry), staging / entry.name)


def _oxford17_layout(unpacked: Path, staging: Path) -> None:
    """jpg/image_0001.jpg .. image_1360.jpg, 80 per class in the dataset's class order."""
    source = unpacked / "jpg"
    if not source.is_dir():
        raise WorkbenchError("archive does not hold jpg/")
    for name in OXFORD17_CLASSES:
        (staging / name).mkdir()
    moved = 0
    for image in sorted(source.glob("image_*.jpg")):
        match = re.fullmatch(r"image_(\d+)\.jpg", image.name)
        if not match:
            continue
        index = int(match.group(1)) - 1
        if 0 <= index < OXFORD17_PER_CLASS * len(OXFORD17_CLASSES):
            shutil.move(str(image), staging / OXFORD17_CLASSES[index // OXFORD17_PER_CLASS])
            moved += 1
    if moved != OXFORD17_PER_CLASS * len(OXFORD17_CLASSES):
        raise WorkbenchError(f"archive holds {moved} of the 1360 Oxford 17 images")


@dataclass(frozen=True)
class Source:
    name: str
    url: str
    sha256: str
    layout: Callable[[Path, Path], None]
    description: str


SOURCES = {
    "flowers": Source(
        "flowers",
        "http://download.tensorflow.org/example_images/flower_photos.tgz",
        "4c54ace7911aaffe13a365c34f650e71dd5bf1be0a58b464e5a7183e3e595d9c",
        _flowers_layout,
        "TensorFlow flower photos: 5 classes, 3,670 photos (CC-BY, see LICENSE.txt), 229 MB",
    ),
    "oxford17": Source(
        "oxford17",
        "http://www.robots.ox.ac.uk/~vgg/data/flowers/17/17flowers.tgz",
        "fe38a60f8b4a95e657551247d3e7d799a3fafcdbc595be504b12839967823d70",
        _oxford17_layout,
        "Oxford 17 Category Flowers: 17 classes, 80 photos each, 58 MB",
    ),
}


def _open(url: str, offset: int) -> tuple[BinaryIO, int | None, bool]:
    """(stream from `offset` if the source can resume, total size if known, resumed)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme in ("", "file"):
        path = Path(urllib.request.url2pathname(parsed.path))
        try:
            stream = open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
        except OSError as e:
            raise WorkbenchError(f"cannot read {url}: {e.strerror or e}") from None
        total = path.stat().st_size
        stream.seek(min(offset, total))
        return stream, total, offset > 0
    request = urllib.request.Request(url, headers={"User-Agent": "workbench"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # nothing left to fetch: the partial file is complete
            return io.BytesIO(), offset, True
        raise WorkbenchError(f"download failed: {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise WorkbenchError(f"download failed: {url}: {reason}") from None
    resumed = offset > 0 and response.status == 206
    length = response.headers.get("Content-Length")
    size = (int(length) + (offset if resumed else 0)) if length else None
    return response, size, resumed


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, target: Path, sha256: str, reporter: Reporter) -> Path:
    """Fetch `url` to `target` (resuming `target.part`), verified against `sha256`."""
    if target.exists() and _sha256(target) == sha256:
        return target
    partial = target.with_name(target.name + ".part")
    offset = partial.stat().st_size if partial.exists() else 0
    stream, total, resumed = _open(url, offset)
    if offset and not resumed:
        offset = 0  # the server ignored the range: start over
    try:
        with (
            open(partial, "ab" if offset else "wb") as out,
            reporter.task(f"downloading {target.name}", total or 0) as advance,
        ):
            if offset:
                advance(offset)
            while chunk := stream.read(CHUNK):
                out.write(chunk)
                advance(len(chunk))
    except OSError as e:
        raise WorkbenchError(f"download interrupted ({e}); run again to resume") from None
    finally:
        stream.close()
    actual = _sha256(partial)
    if actual != sha256:
        partial.unlink()
        raise WorkbenchError(
            f"checksum mismatch for {url}: expected {sha256}, got {actual}; the partial "
            "download was removed, run again to fetch it afresh"
        )
    os.replace(partial, target)
    return target


def _unpack(archive: Path, into: Path) -> None:
    try:
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(into, filter="data")
            else:  # Python without extraction filters: refuse paths that leave `into`
                root = into.resolve()
                for member in tar.getmembers():
                    if not (root / member.name).resolve().is_relative_to(root):
                        raise WorkbenchError(f"unsafe path in archive: {member.name}")
                    if member.issym() or member.islnk():
                        raise WorkbenchError(f"link in archive: {member.name}")
                tar.extractall(into)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        # A truncated gzip stream ends in EOFError, a corrupted one in zlib.error.
        reason = "the archive is truncated" if isinstance(e, EOFError) else str(e)
        reason = reason or type(e).__name__
        raise WorkbenchError(f"cannot unpack {archive.name}: {reason}") from None


def get_dataset(
    name: str,
    root: str | Path = "datasets",
    url: str | None = None,
    sha256: str | None = None,
    reporter: Reporter | None = None,
) -> Path:
    """Download and unpack dataset `name` into `root/name/` as class folders; returns it."""
    reporter = reporter or Reporter()
    if name not in SOURCES:
        raise WorkbenchError(f"unknown dataset {name!r}; known: {', '.join(SOURCES)}")
    source = SOURCES[name]
    source = replace(source, url=url or source.url, sha256=(sha256 or source.sha256).lower())
    if not re.fullmatch(r"[0-9a-f]{64}", source.sha256):
        raise WorkbenchError(f"--sha256 must be 64 hexadecimal digits, got {sha256!r}")
    root = Path(root)
    target = root / name
    marker = target / MARKER
    try:
        finished, started = marker.exists(), target.exists()
    except OSError as e:  # a folder name longer than the file system holds, ...
        raise WorkbenchError(f"cannot use --root {root}: {e.strerror or e}") from None
    if finished:
        reporter.info(f"{target} is already there")
        return target
    if started:
        raise WorkbenchError(f"{target} exists but is not a finished download; remove it first")
    downloads = root / ".downloads"
    try:
        downloads.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WorkbenchError(f"cannot create {downloads}: {e.strerror or e}") from None
    archive = download(source.url, downloads / f"{name}.tgz", source.sha256, reporter)
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{name}-") as scratch:
        unpacked = Path(scratch) / "unpacked"
        staging = Path(scratch) / name
        unpacked.mkdir()
        staging.mkdir()
        reporter.info(f"unpacking {archive.name}")
        _unpack(archive, unpacked)
        source.layout(unpacked, staging)
        info = {"dataset": name, "url": source.url, "sha256": source.sha256}
        (staging / MARKER).write_text(json.dumps(info, indent=2) + "\n")
        os.replace(staging, target)
    archive.unlink()
    if not any(downloads.iterdir()):
        downloads.rmdir()
    return target
