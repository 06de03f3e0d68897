"""Extraction: parallel replicas give the plain loop's numbers; the embedding cache; benchmarks."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.builders import make_dataset
from workbench.cli import app
from workbench.data.dataset import scan
from workbench.data.images import ImageError, Preprocessing, load_input
from workbench.extract.cache import FileKey, OutputCache
from workbench.extract.embeddings import run_model
from workbench.extract.runtime import load_model
from workbench.run.bench import WHOLE_RUN_PAIRS, classes_in_turn

runner = CliRunner()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = make_dataset(tmp_path_factory.mktemp("imgs"), per_class=10, fmt="jpg")
    paths = sorted(root.glob("*/*.jpg"))
    broken = root / "red" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return [*paths[:13], broken, *paths[13:]]


def plain_loop(model_path: Path, paths: list[Path]) -> tuple[np.ndarray, list[int]]:
    """The reference: decode, invoke, one image at a time, one interpreter."""
    model = load_model(model_path, num_threads=1)
    prep = Preprocessing.for_input(model.input)
    rows, kept = [], []
    for i, path in enumerate(paths):
        try:
            x = load_input(path, prep)
        except ImageError:
            continue
        rows.append(model.output.dequantize(model.run(x)).reshape(-1))
        kept.append(i)
    return np.stack(rows), kept


@pytest.mark.parametrize("kind", ["uint8", "int8", "float32"])
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_parallel_extraction_equals_the_plain_loop(
    models: dict[str, Path], images: list[Path], kind: str, workers: int
) -> None:
    expected, expected_kept = plain_loop(models[kind], images)
    model = load_model(models[kind])
    out = run_model(model, images, Preprocessing.for_input(model.input), workers=workers)
    assert out.kept == expected_kept
    np.testing.assert_array_equal(out.vectors, expected)
    assert [p.name for p, _ in out.failures] == ["broken.jpg"]


def test_progress_counts_every_file(models: dict[str, Path], images: list[Path]) -> None:
    model = load_model(models["uint8"])
    seen: list[int] = []
    run_model(model, images, Preprocessing.for_input(model.input), progress=seen.append)
    assert sum(seen) == len(images)


def make_cache(root: Path, model_path: Path) -> tuple[OutputCache, object, Preprocessing]:
    model = load_model(model_path)
    prep = Preprocessing.for_input(model.input)
    return OutputCache(root, model.sha256, prep.key(), 8), model, prep


def test_cache_hits_on_the_second_run_and_gives_the_same_numbers(
    tmp_path: Path, models: dict[str, Path], images: list[Path]
) -> None:
    cache, model, prep = make_cache(tmp_path, models["uint8"])
    first = run_model(model, images, prep, cache=cache)
    assert (cache.hits, cache.misses) == (0, len(images))
    again, model, prep = make_cache(tmp_path, models["uint8"])
    second = run_model(model, images, prep, cache=again)
    assert again.hits == len(images) - 1  # the broken file is never cached: retried each time
    np.testing.assert_array_equal(first.vectors, second.vectors)
    assert first.kept == second.kept and len(second.failures) == 1


def test_changed_file_or_model_is_extracted_again(
    tmp_path: Path, models: dict[str, Path], images: list[Path], tmp_path_factory
) -> None:
    folder = tmp_path_factory.mktemp("copy")
    paths = []
    for i, p in enumerate(images[:6]):
        paths.append(folder / f"{i}.jpg")
        paths[-1].write_bytes(p.read_bytes())
    cache, model, prep = make_cache(tmp_path, models["uint8"])
    run_model(model, paths, prep, cache=cache)
    Image.new("RGB", (40, 40), (0, 0, 250)).save(paths[2])  # new content, size, mtime
    os.utime(paths[4], ns=(0, 10**9))  # same bytes, different mtime: treated as changed
    again, model, prep = make_cache(tmp_path, models["uint8"])
    out = run_model(model, paths, prep, cache=again)
    assert (again.hits, again.misses) == (4, 2)
    np.testing.assert_array_equal(out.vectors[2], plain_loop(models["uint8"], [paths[2]])[0][0])
    other, model, prep = make_cache(tmp_path, models["uint8_2d"])
    run_model(model, paths, prep, cache=other)
    assert other.hits == 0 and other.path != again.path


def test_damaged_entries_and_files_are_never_trusted(
    tmp_path: Path, models: dict[str, Path], images: list[Path]
) -> None:
    cache, model, prep = make_cache(tmp_path, models["uint8"])
    reference = run_model(model, images[:5], prep, cache=cache)
    cache.close()
    with sqlite3.connect(cache.path) as db:
        (path,) = db.execute("SELECT path FROM outputs ORDER BY path LIMIT 1").fetchone()
        db.execute("UPDATE outputs SET vector = zeroblob(32) WHERE path = ?", (path,))
    again, model, prep = make_cache(tmp_path, models["uint8"])
    out = run_model(model, images[:5], prep, cache=again)
    assert (again.hits, again.misses) == (4, 1)
    np.testing.assert_array_equal(out.vectors, reference.vectors)
    again.close()
    cache.path.write_bytes(b"this is not a database" * 100)
    fresh, model, prep = make_cache(tmp_path, models["uint8"])
    out = run_model(model, images[:5], prep, cache=fresh)
    assert fresh.misses == 5
    np.testing.assert_array_equal(out.vectors, reference.vectors)


def test_imprint_backprop_and_evaluate_share_the_cache(
    tmp_path: Path, models: dict[str, Path], colors: Path
) -> None:
    cache_dir = tmp_path / "cache"
    common = ["-e", str(models["uint8"]), "--cache-dir", str(cache_dir), "--json"]
    first = runner.invoke(app, ["imprint", str(colors), "-o", str(tmp_path / "a.tflite"), *common])
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["cache"]["hits"] == 0
    second = runner.invoke(
        app, ["backprop", str(colors), "-o", str(tmp_path / "b.tflite"), *common]
    )
    assert second.exit_code == 0, second.output
    report = json.loads(second.stdout)
    assert report["cache"]["misses"] == 0 and report["cache"]["hits"] == 36
    off = runner.invoke(
        app,
        ["imprint", str(colors), "-o", str(tmp_path / "c.tflite"), "-e", str(models["uint8"]),
         "--no-cache", "--json"],
    )  # fmt: skip
    assert off.exit_code == 0 and json.loads(off.stdout)["cache"] is None
    # evaluate finds the extractor outputs in the cache: the head runs on them, no new entries
    evaluated = runner.invoke(
        app,
        ["evaluate", str(tmp_path / "a.tflite"), str(colors), "--cache-dir", str(cache_dir),
         "--json"],
    )  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["evaluation"]["method"] == "head+sample"
    assert len(list((cache_dir / "outputs").glob("*.sqlite"))) == 1  # the extractor's
    # with another cache folder the whole model runs, and its outputs are cached for next time
    other = tmp_path / "other"
    for _ in range(2):
        evaluated = runner.invoke(
            app,
            ["evaluate", str(tmp_path / "a.tflite"), str(colors), "--cache-dir", str(other),
             "--json"],
        )  # fmt: skip
        assert evaluated.exit_code == 0, evaluated.output
        assert json.loads(evaluated.stdout)["evaluation"]["method"] == "full"
    assert len(list((other / "outputs").glob("*.sqlite"))) == 1  # the trained model's


def test_cache_keys_follow_links_as_path_resolve_does(tmp_path: Path) -> None:
    """A linked image keys as its target (absolute, relative, chained, through a linked
    folder); a broken link or a loop is not cached."""
    real = tmp_path / "real"
    (real / "sub").mkdir(parents=True)
    (real / "a.jpg").write_bytes(b"a")
    (real / "sub" / "b.jpg").write_bytes(b"bb")
    other = tmp_path / "other"
    other.mkdir()
    (tmp_path / "linked_dir").symlink_to(real / "sub")
    links = {
        "abs.jpg": str(real / "a.jpg"),
        "rel.jpg": "../real/a.jpg",
        "chain.jpg": "rel.jpg",
        "via_folder_link.jpg": "../linked_dir/b.jpg",
        "up_from_linked.jpg": "../linked_dir/../a.jpg",
        "broken.jpg": "nowhere.jpg",
        "loop1.jpg": "loop2.jpg",
        "loop2.jpg": "loop1.jpg",
        "folder": "../real/",
        "parent": "..",
        "itself": ".",
    }
    for name, target in links.items():
        (other / name).symlink_to(target)
    # '..' after a linked folder goes up from where the link points, not from where it sits
    (tmp_path / "deep" / "a" / "b").mkdir(parents=True)
    (tmp_path / "deep" / "a" / "b" / "back.jpg").symlink_to(real / "a.jpg")
    (tmp_path / "bl").symlink_to(tmp_path / "deep" / "a" / "b")
    up_from_link = tmp_path / "bl" / ".." / "b" / "back.jpg"
    paths = [real / "a.jpg", tmp_path / "linked_dir" / "b.jpg", up_from_link]
    for path in [*paths, *(other / n for n in links)]:
        key = FileKey.of(path)
        try:
            expected = path.resolve(strict=True)
        except (OSError, RuntimeError):
            assert key is None, path
            continue
        assert key is not None and Path(key.path) == expected, path
        assert key.size == expected.stat().st_size


def test_unwritable_cache_dir_only_costs_time(
    tmp_path: Path, models: dict[str, Path], colors: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    result = runner.invoke(
        app,
        ["imprint", str(colors), "-e", str(models["uint8"]), "-o", str(tmp_path / "m.tflite"),
         "--cache-dir", str(blocker / "sub"), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output


def test_a_bench_limit_takes_the_classes_in_turn(tmp_path: Path) -> None:
    folder = make_dataset(tmp_path / "data", ("red", "green", "blue"), per_class=4)
    for extra in ("green/green_002.png", "green/green_003.png", "blue/blue_003.png"):
        (folder / extra).unlink()
    order = classes_in_turn(scan(folder))  # blue 3, green 2, red 4
    names = ["blue", "green", "red", "blue", "green", "red", "blue", "red", "red"]
    assert [name for name, _ in order] == names
    assert sorted(path for _, path in order) == sorted(folder.rglob("*.png"))


def test_bench_pipeline_and_model_print_their_figures(
    models: dict[str, Path], colors: Path
) -> None:
    result = runner.invoke(
        app, ["bench", "pipeline", str(colors), "-e", str(models["uint8"]), "--limit", "20",
              "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert figures["images"] == 20
    for key in ("cold_over_coral_loop", "cold_over_invoke", "warm_over_cold", "peak_rss_mb"):
        assert figures[key] > 0
    for key in ("imprint_over_coral_loop", "imprint_warm_over_cold"):
        assert figures[key] > 0
    # the whole-run ratio is of times summed over pairs each measured back to back
    pairs = figures["pairs"]
    assert len(pairs) == WHOLE_RUN_PAIRS
    cold = sum(p["imprint_cold_s"] for p in pairs)
    coral = sum(p["coral_loop_s"] for p in pairs)
    # pair times are rounded to ms (half a ms each way), the ratio to 3 decimals: within the
    # ratios those roundings allow (a few ms of Coral's loop on 20 tiny images: wide)
    slack = 0.0005 * len(pairs)
    lowest, highest = (cold - slack) / (coral + slack), (cold + slack) / max(coral - slack, 1e-9)
    assert lowest - 0.0005 <= figures["imprint_over_coral_loop"] <= highest + 0.0005
    # each figure is rounded to ms on its own: the mean of rounded pairs is within 1 ms of it
    assert figures["imprint_cold_s"] == pytest.approx(cold / len(pairs), abs=0.0011)
    # without --limit the imprint runs on the folder itself, which it leaves as it was
    before = sorted((p, p.stat().st_mtime_ns) for p in colors.rglob("*"))
    whole = runner.invoke(app, ["bench", "pipeline", str(colors), "-e", str(models["uint8"]),
                                "--json"])  # fmt: skip
    assert whole.exit_code == 0, whole.output
    assert json.loads(whole.stdout)["images"] == 36
    assert json.loads(whole.stdout)["imprint_warm_over_cold"] > 0
    assert sorted((p, p.stat().st_mtime_ns) for p in colors.rglob("*")) == before
    model = runner.invoke(app, ["bench", "model", str(models["int8"]), "--runs", "5", "--json"])
    assert model.exit_code == 0, model.output
    latency = json.loads(model.stdout)
    assert latency["runs"] == 5 and latency["min_ms"] <= latency["median_ms"] <= latency["p90_ms"]
