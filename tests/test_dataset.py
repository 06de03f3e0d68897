from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from workbench.core.errors import WorkbenchError
from workbench.core.options import DataOptions, OptionError
from workbench.data.dataset import fingerprints, held_out_count, load_split, scan, split


def touch_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"not decoded by scan")


def test_scan_finds_sorted_classes_and_skips_other_files(tmp_path: Path) -> None:
    touch_images(tmp_path / "zebra", ["a.JPG", "b.jpeg", "c.png", "notes.txt", ".hidden.jpg"])
    touch_images(tmp_path / "apple", ["x.bmp", "y.gif", "z.WebP"])
    touch_images(tmp_path / ".cache", ["q.jpg", "r.jpg"])
    (tmp_path / "README.md").write_text("files beside the class folders are skipped")

    dataset = scan(tmp_path)

    assert dataset.classes == ["apple", "zebra"]
    assert [p.name for p in dataset.images["zebra"]] == ["a.JPG", "b.jpeg", "c.png"]
    assert [p.name for p in dataset.images["apple"]] == ["x.bmp", "y.gif", "z.WebP"]
    assert sorted(p.name for p in dataset.skipped) == ["README.md", "notes.txt"]
    assert dataset.num_images == 6


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"only": ["a.jpg", "b.jpg"]}, "at least 2 class folders"),
        ({"cats": ["a.jpg", "b.jpg"], "dogs": ["a.jpg"]}, "dogs (1)"),
        ({"cats": ["a.jpg", "b.jpg"], "empty": []}, "empty (0)"),
        ({"cats": ["a.jpg", "b.jpg"], "texts": ["a.txt", "b.txt"]}, "texts (0)"),
    ],
)
def test_scan_rejects_too_few_classes_or_images(
    tmp_path: Path, layout: dict[str, list[str]], message: str
) -> None:
    for name, files in layout.items():
        (tmp_path / name).mkdir()
        touch_images(tmp_path / name, files)
    with pytest.raises(WorkbenchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        scan(tmp_path)


def test_scan_rejects_missing_folder_and_file(tmp_path: Path) -> None:
    with pytest.raises(WorkbenchError, match="not found"):
        scan(tmp_path / "nope")
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(WorkbenchError, match="not a folder"):
        scan(tmp_path / "file.jpg")


@pytest.mark.parametrize(
    ("n", "ratio", "expected"),
    [(2, 0.25, 1), (4, 0.25, 1), (10, 0.25, 3), (6, 0.25, 2), (100, 0.25, 25), (3, 0.0, 1)],
)
def test_held_out_count_rounds_half_up_with_at_least_one(
    n: int, ratio: float, expected: int
) -> None:
    assert held_out_count(n, ratio) == expected


def make_classes(root: Path, sizes: dict[str, int]) -> None:
    for name, n in sizes.items():
        touch_images(root / name, [f"{name}_{i:03d}.jpg" for i in range(n)])


def test_split_holds_out_rounded_share_and_caps_training(tmp_path: Path) -> None:
    make_classes(tmp_path, {"a": 10, "b": 300, "c": 2})
    s = split(scan(tmp_path), DataOptions(test_ratio=0.25, max_per_class=200, seed=0))
    assert (len(s.test["a"]), len(s.train["a"])) == (3, 7)
    assert (len(s.test["b"]), len(s.train["b"])) == (75, 200)
    assert (len(s.test["c"]), len(s.train["c"])) == (1, 1)
    for name in "abc":
        assert not set(s.test[name]) & set(s.train[name])


def test_split_is_deterministic_and_seeded(tmp_path: Path) -> None:
    make_classes(tmp_path, {"a": 40, "b": 40})
    dataset = scan(tmp_path)
    first, again = split(dataset, DataOptions(seed=3)), split(dataset, DataOptions(seed=3))
    other = split(dataset, DataOptions(seed=4))
    assert first.test == again.test and first.train == again.train
    assert first.test["a"] != other.test["a"]


def test_adding_a_class_keeps_the_split_of_the_others(tmp_path: Path) -> None:
    make_classes(tmp_path, {"a": 30, "b": 30})
    before = split(scan(tmp_path), DataOptions(seed=0))
    make_classes(tmp_path, {"c": 30})
    after = split(scan(tmp_path), DataOptions(seed=0))
    assert after.test["a"] == before.test["a"] and after.train["b"] == before.train["b"]


def test_split_rejects_bad_ratio_and_cap(tmp_path: Path) -> None:
    make_classes(tmp_path, {"a": 4, "b": 4})
    dataset = scan(tmp_path)
    with pytest.raises(OptionError, match="test_ratio"):
        split(dataset, DataOptions(test_ratio=1.0))
    with pytest.raises(OptionError, match="max_per_class"):
        split(dataset, DataOptions(max_per_class=0))


def test_split_round_trips_through_a_report(tmp_path: Path) -> None:
    make_classes(tmp_path / "data", {"a": 8, "b": 9})
    s = split(scan(tmp_path / "data"), DataOptions(seed=1))
    report = tmp_path / "r.json"
    report.write_text(json.dumps({"classes": s.classes, "split": s.to_json()}))
    loaded = load_split(report)
    assert loaded.classes == s.classes
    assert loaded.files("test")[0] == [p.absolute() for p in s.files("test")[0]]
    assert loaded.files("test")[1] == s.files("test")[1]


def test_load_split_rejects_a_file_without_split(tmp_path: Path) -> None:
    (tmp_path / "r.json").write_text("{}")
    with pytest.raises(WorkbenchError, match="no 'split'"):
        load_split(tmp_path / "r.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(WorkbenchError, match="cannot read report"):
        load_split(tmp_path / "bad.json")


def test_fingerprints_tell_files_apart_skip_unreadable_ones_and_stop_when_told(
    tmp_path: Path,
) -> None:
    a, b, same_as_a = tmp_path / "a.jpg", tmp_path / "b.jpg", tmp_path / "copy.jpg"
    a.write_bytes(b"\xff\xd8 one photo")
    b.write_bytes(b"\xff\xd8 another photo")
    same_as_a.write_bytes(a.read_bytes())
    found = fingerprints([a, b, same_as_a, tmp_path / "missing.jpg"])
    assert found.dtype == np.uint64 and len(found) == 2  # a copy has a's fingerprint
    assert np.array_equal(found, np.sort(found))
    stop = threading.Event()
    stop.set()
    assert len(fingerprints([a, b], stop)) == 0
