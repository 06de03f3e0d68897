"""Dataset manager: a folder with one sub-folder of images per class, split per class.

The split is a pure function of the file names, `test_ratio`, `max_per_class` and `seed`, and
each class is shuffled with a seed derived from its own name: adding a class later (continued
imprinting) leaves the split of the existing classes as it was, and `workbench evaluate` with
the same arguments sees exactly the images that training held out.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
from collections.abc import Set
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from workbench.core.errors import WorkbenchError
from workbench.core.jsonfile import parse_json
from workbench.core.options import DataOptions
from workbench.core.progress import Reporter
from workbench.data.labels import label_problem

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"})
# Folders a scan never enters: the kernel's pseudo-file systems, whose trees are huge, change
# while they are read, or block on reading. With "/" (everything), a data folder may not be
# one of them or lead into one through a link.
SYSTEM_FOLDERS = (Path("/proc"), Path("/sys"), Path("/dev"))
# Folder levels below a class folder that are searched for images. Photo collections sit a
# few levels deep; a tree deeper than this is a runaway (or hostile) one, and stops the scan.
MAX_DEPTH = 32


@dataclass(frozen=True)
class Dataset:
    """What a scan of a data folder found: images per class, and what it passed over."""

    root: Path
    classes: list[str]
    images: dict[str, list[Path]]
    skipped: list[Path] = field(default_factory=list)
    # class folders that are links leading where no scan goes, and why
    refused: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def num_images(self) -> int:
        return sum(len(files) for files in self.images.values())


@dataclass(frozen=True)
class Split:
    """Training and held-out images per class, in class order."""

    classes: list[str]
    train: dict[str, list[Path]]
    test: dict[str, list[Path]]
    unused: dict[str, list[Path]] = field(default_factory=dict)

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per class trained on, held out, and left out by the cap."""
        return {
            part: {c: len(getattr(self, part).get(c, [])) for c in self.classes}
            for part in ("train", "test", "unused")
        }

    def files(self, part: str) -> tuple[list[Path], list[int]]:
        """Flat (paths, class ids) of the `train` or `test` part, class by class."""
        per_class = self.train if part == "train" else self.test
        paths: list[Path] = []
        labels: list[int] = []
        for class_id, name in enumerate(self.classes):
            paths.extend(per_class.get(name, []))
            labels.extend([class_id] * len(per_class.get(name, [])))
        return paths, labels

    def to_json(self) -> dict[str, dict[str, list[str]]]:
        """Absolute paths, so a report's split can be reused from any working folder."""
        return {
            "train": {c: [str(p.absolute()) for p in self.train.get(c, [])] for c in self.classes},
            "test": {c: [str(p.absolute()) for p in self.test.get(c, [])] for c in self.classes},
        }

    @classmethod
    def from_json(cls, data: dict, classes: list[str] | None = None) -> Split:
        """Rebuild a split from a report's `split` entry (optionally reordered to `classes`)."""
        try:
            train = {c: [Path(p) for p in files] for c, files in data["train"].items()}
            test = {c: [Path(p) for p in files] for c, files in data["test"].items()}
        except (KeyError, AttributeError, TypeError):
            raise WorkbenchError("the report's split must have 'train' and 'test' maps") from None
        return cls(classes or list(test), train, test)


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def system_folder(resolved: Path) -> Path | None:
    """The pseudo-file system (/proc, /sys, /dev) that `resolved` lies in, if any."""
    return next((f for f in SYSTEM_FOLDERS if _is_within(resolved, f)), None)


def _link_problem(entry: Path, root: Path) -> str | None:
    """Why the class folder `entry`, a symbolic link, may not be scanned (None if it may).

    `root` is the data folder, resolved. A link to "/" or to a folder holding the data
    folder would walk the whole file system or the data folder again (its other classes
    counted twice); one into /proc, /sys or /dev walks the kernel's pseudo-files.
    """
    try:
        target = entry.resolve()
    except (OSError, RuntimeError):
        return "is a link that cannot be followed"
    if target == Path(target.anchor):
        return f"is a link to {target} (the whole file system)"
    inside = system_folder(target)
    if inside is not None:
        return f"is a link into {inside}"
    if _is_within(root, target):
        return f"is a link to {target}, which holds the data folder itself"
    return None


def image_files_under(folder: Path, skipped: list[Path], what: str = "class folder") -> list[Path]:
    """The image files under `folder`, at any depth up to MAX_DEPTH; the rest goes to
    `skipped`. A tree deeper than that is a WorkbenchError.

    Hidden entries (and what is inside hidden folders) are ignored; a linked folder is not
    followed, as `Path.rglob` does not. Directory entries say whether they are files
    without a stat call for every image, which thousands of images add up to.
    """
    files: list[Path] = []
    pending = [(folder, 0)]
    while pending:
        current, depth = pending.pop()
        try:
            with os.scandir(current) as listing:
                entries = list(listing)
        except OSError:
            continue
        for item in entries:
            if item.name.startswith("."):
                continue
            path = current / item.name
            try:
                is_file = item.is_file()
                if not is_file and item.is_dir(follow_symlinks=False):
                    if depth >= MAX_DEPTH:
                        raise WorkbenchError(
                            f"{what} {folder} holds folders nested more than {MAX_DEPTH} "
                            f"deep ({path}); move the images up or out of it"
                        )
                    pending.append((path, depth + 1))
            except OSError:
                is_file = False
            if is_file:
                (files if is_image_file(path) else skipped).append(path)
            elif is_image_file(path):  # a folder named x.jpg: say so rather than ignore it
                skipped.append(path)
    return files


def check_folder(root: Path, what: str = "data folder") -> Path:
    """`root` resolved, or a WorkbenchError if it is no folder a scan may walk."""
    try:
        exists, is_dir = root.exists(), root.is_dir()
        resolved = root.resolve()
    except (OSError, RuntimeError) as e:  # a name too long, a link loop
        why = getattr(e, "strerror", None) or e
        raise WorkbenchError(f"cannot use {what} {root}: {why}") from None
    if not exists:
        raise WorkbenchError(f"{what} not found: {root}")
    if not is_dir:
        raise WorkbenchError(f"not a folder: {root} (expected one sub-folder of images per class)")
    inside = system_folder(resolved)
    if resolved == Path(resolved.anchor) or inside is not None:
        where = "the whole file system" if inside is None else f"in {inside}, the kernel's files"
        raise WorkbenchError(
            f"refusing to scan {what} {root}: it is {where}; give a folder of class folders"
        )
    return resolved


def scan(root: str | Path, min_classes: int = 2) -> Dataset:
    """Find the classes (sub-folders, sorted by name) and their image files.

    Hidden entries and files that are not images by extension are skipped and counted; files
    directly in the root are skipped too. A class folder that is a link to "/", to a folder
    holding the data folder, or into /proc, /sys or /dev is left out (in `refused`); one
    nested deeper than MAX_DEPTH is an error. Fewer than `min_classes` classes (2 to train
    a classifier; 1 to add a class or images to a base model's), or a class with fewer than
    2 images, is an error that names the problem.
    """
    root = Path(root)
    resolved = check_folder(root)
    skipped: list[Path] = []
    refused: list[tuple[Path, str]] = []
    images: dict[str, list[Path]] = {}
    try:
        entries = sorted(root.iterdir())
    except OSError as e:
        raise WorkbenchError(f"cannot read data folder {root}: {e.strerror or e}") from None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            skipped.append(entry)
            continue
        problem = _link_problem(entry, resolved) if entry.is_symlink() else None
        if problem:
            refused.append((entry, problem))
            continue
        images[entry.name] = sorted(image_files_under(entry, skipped))

    for name in images:
        problem = label_problem(name)
        if problem:
            raise WorkbenchError(
                f"class folder {name!r} in {root} {problem}, which a labels file cannot keep; "
                "rename the folder"
            )
    if len(images) < min_classes:
        found = ", ".join(images) or "none"
        needed = "a class folder" if min_classes == 1 else f"at least {min_classes} class folders"
        raise WorkbenchError(f"{root} needs {needed} with images (found: {found})")
    too_small = [f"{name} ({len(files)})" for name, files in images.items() if len(files) < 2]
    if too_small:
        raise WorkbenchError(
            f"every class needs at least 2 images; too few in {root}: {', '.join(too_small)}"
        )
    return Dataset(root, sorted(images), images, sorted(skipped), refused)


def passed_over(dataset: Dataset, reporter: Reporter) -> None:
    """One warning line for the class folders left out, one for the non-image files."""
    if dataset.refused:
        shown = "; ".join(f"{path.name} {why}" for path, why in dataset.refused[:3])
        more = f"; and {len(dataset.refused) - 3} more" if len(dataset.refused) > 3 else ""
        reporter.warn(f"skipped {len(dataset.refused)} linked class folders: {shown}{more}")
    if dataset.skipped:
        shown = ", ".join(p.name for p in dataset.skipped[:3])
        more = f" and {len(dataset.skipped) - 3} more" if len(dataset.skipped) > 3 else ""
        reporter.warn(f"skipped {len(dataset.skipped)} non-image files ({shown}{more})")


def held_out_count(n: int, test_ratio: float) -> int:
    """Images held out of a class of `n`: test_ratio * n rounded half up, at least 1."""
    return max(1, int(test_ratio * n + 0.5))


def split(
    dataset: Dataset, options: DataOptions = DataOptions(), exclude: Set[Path] = frozenset()
) -> Split:
    """Shuffle each class deterministically, hold out its test part, cap its training part.

    What the cap leaves out of training is kept in `unused` (it is neither trained on nor
    held out), so the report can say how many images a larger cap would add. Files in
    `exclude` (found unreadable) are taken out after the shuffle, before the split: the other
    files keep their order, and the held-out share is of the images that can be used.
    """
    train: dict[str, list[Path]] = {}
    test: dict[str, list[Path]] = {}
    unused: dict[str, list[Path]] = {}
    for name in dataset.classes:
        files = list(dataset.images[name])
        random.Random(f"{options.seed}/{name}").shuffle(files)
        files = [f for f in files if f not in exclude]
        n_test = max(0, min(held_out_count(len(files), options.test_ratio), len(files) - 1))
        test[name] = files[:n_test]
        train[name] = files[n_test:][: options.max_per_class]
        unused[name] = files[n_test:][options.max_per_class :]
    return Split(list(dataset.classes), train, test, unused)


def prepare_split(
    data_dir: str | Path, options: DataOptions, reporter: Reporter, min_classes: int = 2
) -> tuple[Dataset, Split]:
    """Scan the folder (saying what was skipped) and split it."""
    dataset = scan(data_dir, min_classes)
    passed_over(dataset, reporter)
    return dataset, split(dataset, options)


def load_split(report_path: str | Path) -> Split:
    """The split recorded in a training report (`OUT.report.json`)."""
    path = Path(report_path)
    try:
        report = parse_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WorkbenchError(f"report not found: {path}") from None
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        raise WorkbenchError(f"cannot read report {path}: {e}") from None
    if not isinstance(report, dict) or "split" not in report:
        raise WorkbenchError(f"{path} has no 'split' entry (is it a workbench report?)")
    return Split.from_json(report["split"], report.get("classes"))


# Bytes of a file's start that its fingerprint covers, besides its size: enough to tell two
# photos apart, cheap enough to take for every training image.
FINGERPRINT_BYTES = 1 << 16


def fingerprints(paths: list[Path], stop: threading.Event | None = None) -> np.ndarray:
    """A 64-bit fingerprint of each file (size and first 64 KiB), sorted; unreadable: none.

    Models record their training images' fingerprints, so `evaluate` can tell when images
    it is asked to score were trained on, wherever the folder was copied or moved. One plain
    loop: training runs it in a thread beside the fit, where a pool's per-file futures would
    add to the fit's peak memory. Setting `stop` ends it early (what it found so far).
    """
    found = np.zeros(len(paths), np.uint64)
    readable = np.zeros(len(paths), bool)
    for i, path in enumerate(paths):
        if stop is not None and stop.is_set():
            break
        try:
            with open(path, "rb") as f:
                head = f.read(FINGERPRINT_BYTES)
                size = os.fstat(f.fileno()).st_size
        except OSError:
            continue
        digest = hashlib.blake2b(head, digest_size=8, key=str(size).encode())
        found[i] = int.from_bytes(digest.digest(), "little")
        readable[i] = True
    return np.unique(found[readable])
