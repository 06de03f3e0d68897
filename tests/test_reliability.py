"""Bad input and faults: what a user (or an attacker) can hand the CLI, and what must happen.

The contract: bad input prints one line on stderr starting `error: ` and exits 2, with no
traceback and nothing half-written; a run never writes over one of its inputs (an extractor, a
base model, a labels file or report it reads, anything inside the data folder) nor over an
unrelated file of another kind; an interrupted run leaves earlier outputs as they were. Every
input here is real: images written by Pillow, tiny models built with workbench's own
flatbuffer code, real archives, real signals, a real SQLite lock and a real full disk.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.builders import (
    Outcome,
    assert_error,
    assert_ok,
    class_image,
    cli_command,
    fake_edgetpu_model,
    invoke,
    make_dataset,
    run_cli,
    stderr_lines,
    tiny_extractor,
    warnings_of,
    write_model,
)
from workbench.data.images import Preprocessing, decode, load_input
from workbench.extract.runtime import load_model
from workbench.model.export import workbench_metadata
from workbench.tflite.graph import Graph
from workbench.tflite.heads import append_softmax_regression_tail

IS_ROOT = os.geteuid() == 0
KINDS = ("model", "labels", "report", "html")


# --- files ----------------------------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every entry under `folder` (hidden ones too) with its bytes; folders as a marker."""
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<folder>"
        for p in sorted(folder.rglob("*"))
    }


def output_paths(model: Path) -> dict[str, Path]:
    stem = str(model)[: -len(".tflite")]
    return {
        "model": model,
        "labels": Path(f"{stem}.txt"),
        "report": Path(f"{stem}.report.json"),
        "html": Path(f"{stem}.report.html"),
    }


def copy_outputs(trained: Path, model: Path) -> dict[str, Path]:
    """A previous run's four outputs, copied to `model` (OUT.tflite) and its siblings."""
    model.parent.mkdir(parents=True, exist_ok=True)
    targets = output_paths(model)
    for kind, source in output_paths(trained).items():
        shutil.copyfile(source, targets[kind])
    return targets


def small_copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def classifier_bytes(width: int = 1001, informative: bool = True) -> bytes:
    """The tiny extractor + FULLY_CONNECTED to `width` classes + SOFTMAX: a real classifier.

    Informative: class i < 8 follows embedding channel i strongly, so the top scores carry
    the image's colour. Otherwise the weights are small and random: every 8-bit score is 0.
    """
    graph = Graph.from_bytes(tiny_extractor("uint8", output_shape="2d"))
    if informative:
        weights = np.zeros((width, 8))
        weights[np.arange(8), np.arange(8)] = 3.0
        append_softmax_regression_tail(graph, weights, np.zeros(width), (0.0, 12.0))
    else:
        weights = np.random.default_rng(0).normal(0.0, 0.1, (width, 8))
        append_softmax_regression_tail(graph, weights, np.zeros(width), (-2.0, 2.0))
    return graph.to_bytes()


def png_claiming(width: int, height: int) -> bytes:
    """A small, valid-looking PNG whose header claims `width` x `height` RGB pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress((b"\x00" + b"\x00" * 3 * width) * 4, 9)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


def dead_pid() -> int:
    """The id of a process that has exited (and was reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    pid = child.pid
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    return pid


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            _, err = process.communicate()
            pytest.fail(f"the run ended (exit {process.returncode}) before it was caught: {err}")
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for the run to reach the point under test")
        time.sleep(0.005)


def sqlite_files(cache: Path) -> list[Path]:
    return sorted((cache / "outputs").glob("*.sqlite")) if (cache / "outputs").is_dir() else []


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three colour classes, 4 PNGs each: the smallest folder every trainer accepts."""
    return make_dataset(tmp_path_factory.mktemp("small") / "data", per_class=4)


@pytest.fixture(scope="module")
def extractor(models: dict[str, Path]) -> Path:
    return models["uint8"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, extractor: Path, small: Path) -> Path:
    """A previous imprinting run's outputs (model, labels, report, HTML report)."""
    out = tmp_path_factory.mktemp("trained") / "prev.tflite"
    assert_ok(invoke("imprint", small, "-e", extractor, "-o", out, "--no-cache"))
    return out


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1001-class classifier (softmax output) over the tiny extractor."""
    return write_model(tmp_path_factory.mktemp("classifier") / "c.tflite", classifier_bytes())


@pytest.fixture(scope="module")
def many_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes of 150 256x256 PNGs each: an extraction that lasts long enough to kill."""
    root = tmp_path_factory.mktemp("many") / "data"
    rng = np.random.default_rng(0)
    for name in ("red", "blue"):
        folder = root / name
        folder.mkdir(parents=True)
        source = folder / "source.png"
        class_image(name, rng, size=256, noise=8.0).save(source)
        for i in range(150):
            shutil.copyfile(source, folder / f"{name}_{i:03d}.png")
        source.unlink()
    return root


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (needs root and mount); skipped where it cannot be made."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if not IS_ROOT or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode(errors='replace')}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


# --- 1. outputs never destroy inputs --------------------------------------------------------------


@pytest.mark.parametrize("trainer", ["imprint", "backprop"])
@pytest.mark.parametrize("via", ["same path", "symlink", "hard link", "dot-dot path"])
def test_output_onto_the_extractor_is_refused(
    tmp_path: Path, extractor: Path, small: Path, trainer: str, via: str
) -> None:
    """`TRAINER D -e X.tflite -o X.tflite`, also through a symlink, hard link or `..`."""
    x = tmp_path / "X.tflite"
    shutil.copyfile(extractor, x)
    (tmp_path / "sub").mkdir()
    output = {
        "same path": x,
        "symlink": tmp_path / "link.tflite",
        "hard link": tmp_path / "hard.tflite",
        "dot-dot path": tmp_path / "sub" / ".." / "X.tflite",
    }[via]
    if via == "symlink":
        output.symlink_to(x)
    elif via == "hard link":
        os.link(x, output)
    before = snapshot(tmp_path)
    outcome = invoke(trainer, small, "-e", x, "-o", output, "--cache-dir", tmp_path / "cache")
    assert_error(outcome, "is an input of this run")
    assert snapshot(tmp_path) == before  # X unchanged, no cache, no labels or report beside it


def test_output_through_a_symlinked_extractor_is_refused(
    tmp_path: Path, extractor: Path, small: Path
) -> None:
    """`-e LINK.tflite -o TARGET.tflite` where LINK points at TARGET."""
    x = tmp_path / "X.tflite"
    shutil.copyfile(extractor, x)
    (tmp_path / "link.tflite").symlink_to(x)
    before = snapshot(tmp_path)
    assert_error(invoke("imprint", small, "-e", tmp_path / "link.tflite", "-o", x, "--no-cache"))
    assert snapshot(tmp_path) == before


def test_labels_output_onto_the_extractor_is_refused(
    tmp_path: Path, extractor: Path, small: Path
) -> None:
    """An extractor named `m.txt` and `-o m.tflite`: the labels file would land on it."""
    x = tmp_path / "m.txt"
    shutil.copyfile(extractor, x)
    before = snapshot(tmp_path)
    outcome = invoke("imprint", small, "-e", x, "-o", tmp_path / "m.tflite", "--no-cache")
    assert_error(outcome, "m.txt", "input")
    assert snapshot(tmp_path) == before


def test_extractor_output_onto_its_classifier_is_refused(tmp_path: Path, classifier: Path) -> None:
    """`extractor C.tflite -o C.tflite` is refused; the classifier is unchanged."""
    c = tmp_path / "C.tflite"
    shutil.copyfile(classifier, c)
    before = snapshot(tmp_path)
    assert_error(invoke("extractor", c, "-o", c), "is an input of this run")
    assert snapshot(tmp_path) == before
    assert_ok(invoke("extractor", c, "-o", tmp_path / "cut.tflite"))  # the same cut elsewhere works


def test_base_model_as_output_is_refused(tmp_path: Path, trained: Path, small: Path) -> None:
    """`imprint D --base B.tflite -o B.tflite` (with and without --keep-classes)."""
    base = copy_outputs(trained, tmp_path / "B.tflite")["model"]
    before = snapshot(tmp_path)
    for extra in ((), ("--keep-classes",)):
        outcome = invoke("imprint", small, "--base", base, *extra, "-o", base, "--no-cache")
        assert_error(outcome, "is an input of this run")
    assert snapshot(tmp_path) == before


def test_base_labels_as_output_labels_are_refused(
    tmp_path: Path, trained: Path, small: Path
) -> None:
    """`--base B --base-labels N.txt -o N.tflite`: the new labels would replace the ones read."""
    base = copy_outputs(trained, tmp_path / "B.tflite")["model"]
    copy_outputs(trained, tmp_path / "N.tflite")
    before = snapshot(tmp_path)
    outcome = invoke(
        "imprint", small, "--base", base, "--keep-classes", "--base-labels", tmp_path / "N.txt",
        "-o", tmp_path / "N.tflite", "--no-cache",
    )  # fmt: skip
    assert_error(outcome, "N.txt", "input")
    assert snapshot(tmp_path) == before


def test_existing_report_as_model_output_is_refused(
    tmp_path: Path, trained: Path, extractor: Path, small: Path
) -> None:
    """`-o prev.report.json`: refused, the report unchanged, no `prev.report.json.txt`."""
    report = tmp_path / "prev.report.json"
    shutil.copyfile(output_paths(trained)["report"], report)
    before = snapshot(tmp_path)
    outcome = invoke("imprint", small, "-e", extractor, "-o", report, "--no-cache")
    assert_error(outcome, "prev.report.json")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "inside", ["red/red_000.png", "red/new.tflite", "new.tflite", ".hidden.tflite"]
)
def test_output_inside_the_data_folder_is_refused(
    tmp_path: Path, extractor: Path, small: Path, inside: str
) -> None:
    """`-o D/red/img000.png` (and any other path in D): refused, no new files in D."""
    data = small_copy(small, tmp_path / "data")
    before = snapshot(data)
    outcome = invoke("imprint", data, "-e", extractor, "-o", data / inside, "--no-cache")
    assert_error(outcome, "inside the data folder")
    assert snapshot(data) == before


def test_output_through_a_symlink_into_the_data_folder_is_refused(
    tmp_path: Path, extractor: Path, small: Path
) -> None:
    """`-o LINK/m.tflite` where LINK is a symlink to a class folder."""
    data = small_copy(small, tmp_path / "data")
    (tmp_path / "link").symlink_to(data / "red")
    before = snapshot(data)
    outcome = invoke(
        "imprint", data, "-e", extractor, "-o", tmp_path / "link" / "m.tflite", "--no-cache"
    )
    assert_error(outcome, "inside the data folder")
    assert snapshot(data) == before


def test_output_equal_to_the_data_folder_is_refused(extractor: Path, small: Path) -> None:
    """`-o D` where D is the data folder itself."""
    before = snapshot(small)
    assert_error(invoke("imprint", small, "-e", extractor, "-o", small, "--no-cache"))
    assert snapshot(small) == before


@pytest.mark.parametrize(
    ("kind", "content"),
    [
        ("model", b"my notes, not a model\n"),
        ("labels", b"my notes\n"),
        ("report", b'{"mine": true}\n'),
        ("html", b"<html><body>my page</body></html>\n"),
    ],
)
def test_unrelated_file_at_an_output_is_refused(
    tmp_path: Path, extractor: Path, small: Path, kind: str, content: bytes
) -> None:
    """`-o existing_notes.tflite` with only `existing_notes.txt` there (and the like for the
    model, report and HTML report): an unrelated file of another kind is never replaced."""
    model = tmp_path / "existing_notes.tflite"
    output_paths(model)[kind].write_bytes(content)
    before = snapshot(tmp_path)
    outcome = invoke("imprint", small, "-e", extractor, "-o", model, "--cache-dir", tmp_path / "c")
    assert_error(outcome, "refusing to replace it")
    assert snapshot(tmp_path) == before


def test_evaluate_report_onto_its_inputs_is_refused(tmp_path: Path, trained: Path) -> None:
    """`evaluate M D -o` onto the model, its labels, or inside the data folder."""
    files = copy_outputs(trained, tmp_path / "m.tflite")
    data = small_copy(Path(json.loads(files["report"].read_text())["data_dir"]), tmp_path / "d")
    before = snapshot(tmp_path)
    for target in (files["model"], files["labels"], data / "red" / "x.json", data):
        assert_error(invoke("evaluate", files["model"], data, "-o", target, "--no-cache"))
    assert_error(
        invoke("evaluate", files["model"], data, "--labels", files["labels"], "-o", files["labels"])
    )
    assert snapshot(tmp_path) == before


def test_evaluate_report_onto_the_split_it_reads_is_refused(
    tmp_path: Path, trained: Path, small: Path
) -> None:
    """`evaluate M D --split S.report.json -o S.report.json`: S is an input of the run."""
    files = copy_outputs(trained, tmp_path / "m.tflite")
    split = tmp_path / "split.report.json"
    shutil.copyfile(files["report"], split)
    before = snapshot(tmp_path)
    outcome = invoke("evaluate", files["model"], small, "--split", split, "-o", split, "--no-cache")
    assert_error(outcome, "split.report.json")
    assert snapshot(tmp_path) == before


def test_report_command_never_replaces_its_input_or_a_foreign_page(
    tmp_path: Path, trained: Path
) -> None:
    """`report R.json -o R.json`, `-o MODEL.tflite`, and a foreign `R.html` beside it."""
    files = copy_outputs(trained, tmp_path / "m.tflite")
    (tmp_path / "r.report.html").write_text("<html>mine</html>")
    shutil.copyfile(files["report"], tmp_path / "r.report.json")
    before = snapshot(tmp_path)
    assert_error(invoke("report", files["report"], "-o", files["report"]), "input")
    assert_error(invoke("report", files["report"], "-o", files["model"]), "refusing")
    assert_error(invoke("report", tmp_path / "r.report.json"), "refusing")
    assert snapshot(tmp_path) == before


# --- 2. outputs are committed as one unit ---------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_folder_at_any_output_is_refused_before_any_work(
    tmp_path: Path, trained: Path, extractor: Path, small: Path, kind: str
) -> None:
    """A folder where one of the four outputs goes: refused before extraction, the earlier
    outputs byte-identical."""
    files = copy_outputs(trained, tmp_path / "out" / "m.tflite")
    files[kind].unlink()
    files[kind].mkdir()
    before = snapshot(tmp_path)
    cache = tmp_path / "cache"
    outcome = invoke("imprint", small, "-e", extractor, "-o", files["model"], "--cache-dir", cache)
    assert_error(outcome, files[kind].name)
    assert not cache.exists()  # nothing was extracted
    assert snapshot(tmp_path) == before


def test_failed_commit_restores_every_earlier_output(
    tmp_path: Path, trained: Path, extractor: Path, small: Path
) -> None:
    """The HTML report's target turns into a folder while the run evaluates its staged model:
    the commit fails, and model, labels and report are the earlier ones, byte for byte."""
    files = copy_outputs(trained, tmp_path / "out" / "m.tflite")
    kept = {kind: files[kind].read_bytes() for kind in ("model", "labels", "report")}
    proc = subprocess.Popen(
        cli_command(
            "imprint", small, "-e", extractor, "-o", files["model"], "--no-cache", "--seed", 3
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: any(files["model"].parent.glob(".m.tflite.*.tmp")), proc, timeout=60)
        files["html"].unlink()
        files["html"].mkdir()
        (files["html"] / "inside").write_text("a folder in the way")
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert_error(Outcome(proc.returncode, "", stderr), "m.report.html")
    assert {kind: files[kind].read_bytes() for kind in kept} == kept
    leftovers = sorted(p.name for p in files["model"].parent.iterdir())
    assert leftovers == ["m.report.html", "m.report.json", "m.tflite", "m.txt"]


# --- 3. staged files of killed runs ---------------------------------------------------------------


def test_stale_staged_files_are_removed_and_live_ones_kept(
    tmp_path: Path, trained: Path, extractor: Path, small: Path
) -> None:
    """`.OUT.tflite.<dead pid>.abcd.tmp` goes at once, however recent; one of a live process
    (this one, or a running child), one a live process holds locked (a writer this process
    cannot see, in another PID namespace or on another host), and other targets' files
    stay."""
    files = copy_outputs(trained, tmp_path / "m.tflite")
    gone_pid = dead_pid()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    locked = tmp_path / f".m.tflite.{gone_pid}.lock.tmp"
    locked.write_bytes(b"staged by a writer in another namespace")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1]); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)", locked],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        stale = [
            tmp_path / f".m.tflite.{gone_pid}.abcd.tmp",
            tmp_path / f".m.txt.{gone_pid}.ef01.tmp",
            tmp_path / f".m.report.json.{gone_pid}.zz99.bak",
            tmp_path / f".m.tflite.{gone_pid}.new1.tmp",  # written a moment ago
        ]
        kept = [
            tmp_path / f".m.tflite.{os.getpid()}.abcd.tmp",
            tmp_path / f".m.tflite.{sleeper.pid}.abcd.tmp",
            tmp_path / f".other.tflite.{gone_pid}.abcd.tmp",
        ]
        for path in [*stale, *kept]:
            path.write_bytes(b"debris")
        old = time.time() - 180
        for path in stale[:3]:
            os.utime(path, (old, old))
        assert_ok(invoke("imprint", small, "-e", extractor, "-o", files["model"], "--no-cache"))
    finally:
        for process in (sleeper, holder):
            process.kill()
            process.wait()
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in [*kept, locked])


# --- 4. signals -----------------------------------------------------------------------------------


def as_in_a_terminal() -> None:
    """Ctrl-C's signal as a terminal's foreground command gets it: a suite started in the
    background of a shell script (`cmd &`) inherits SIGINT ignored, and so would the CLI."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=str)
def test_signal_during_extraction_leaves_earlier_outputs(
    tmp_path: Path,
    trained: Path,
    extractor: Path,
    many_images: Path,
    sig: signal.Signals,
) -> None:
    """kill -9 / SIGTERM / SIGINT while 300 images are extracted: the earlier model, labels
    and reports at the same -o are unchanged; no traceback; a later run works."""
    files = copy_outputs(trained, tmp_path / "out" / "m.tflite")
    before = snapshot(files["model"].parent)
    cache = tmp_path / "cache"
    proc = subprocess.Popen(
        cli_command(
            "imprint", many_images, "-e", extractor, "-o", files["model"], "--cache-dir", cache
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=as_in_a_terminal,
    )
    try:
        wait_for(lambda: bool(sqlite_files(cache)), proc, timeout=60)  # extraction started
        time.sleep(0.2)
        assert proc.poll() is None, "the run ended before the signal: extraction too short"
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert "Traceback" not in stderr, stderr
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and stderr.strip().endswith("nothing was written"), stderr
    assert snapshot(files["model"].parent) == before
    if sig == signal.SIGKILL:  # the cache a killed run leaves behind is still usable
        again = invoke("imprint", many_images, "-e", extractor, "-o", files["model"],
                    "--cache-dir", cache, "--json")  # fmt: skip
        assert_ok(again)
        assert json.loads(again.stdout)["num_images"] > 0


# --- 5, 6. every numeric option is checked --------------------------------------------------------


@pytest.mark.parametrize("trainer", ["imprint", "backprop"])
@pytest.mark.parametrize("seed", ["-1", "99999999999"])
def test_out_of_range_seed_is_refused(
    tmp_path: Path, extractor: Path, small: Path, trainer: str, seed: str
) -> None:
    """`TRAINER D --seed -1` and `--seed 99999999999`: one line naming --seed."""
    outcome = invoke(trainer, small, "-e", extractor, "-o", tmp_path / "m.tflite", "--seed", seed)
    assert_error(outcome, "--seed", seed)
    assert list(tmp_path.iterdir()) == []


# Placeholders: {data} a class folder tree, {model} an extractor, {image} one image,
# {classifier} a trained model, {out} an output path.
NUMERIC_CASES = [
    (("bench", "backprop", "--samples", "0"), "--samples"),
    (("bench", "backprop", "--samples", "-5"), "--samples"),
    (("bench", "backprop", "--dim", "0"), "--dim"),
    (("bench", "backprop", "--epochs", "0"), "--epochs"),
    (("bench", "backprop", "--classes", "0"), "--classes"),
    (("bench", "backprop", "--classes", "1"), "--classes"),
    (("bench", "model", "{model}", "--runs", "0"), "--runs"),
    (("bench", "pipeline", "{data}", "-e", "{model}", "--limit", "0"), "--limit"),
    (("classify", "{classifier}", "{image}", "--top-k", "0"), "--top-k"),
    (("classify", "{classifier}", "{image}", "--repeat", "-1"), "--repeat"),
    (("classify", "{classifier}", "{image}", "--threshold", "-0.5"), "--threshold"),
    (("classify", "{classifier}", "{image}", "--threshold", "nan"), "--threshold"),
    (("inspect", "{model}", "--runtime-version", "0"), "--runtime-version"),
    (("imprint", "{data}", "-e", "{model}", "-o", "{out}", "--test-ratio", "1.0"), "--test-ratio"),
    (("imprint", "{data}", "-e", "{model}", "-o", "{out}", "--test-ratio", "-0.1"), "--test-ratio"),
    (("imprint", "{data}", "-e", "{model}", "-o", "{out}", "--test-ratio", "nan"), "--test-ratio"),
    (("imprint", "{data}", "-e", "{model}", "-o", "{out}", "--max-per-class", "0"),
     "--max-per-class"),
    (("backprop", "{data}", "-e", "{model}", "-o", "{out}", "--epochs", "0"), "--epochs"),
    (("backprop", "{data}", "-e", "{model}", "-o", "{out}", "--epochs", "100001"), "--epochs"),
    (("backprop", "{data}", "-e", "{model}", "-o", "{out}", "--learning-rate", "0"),
     "--learning-rate"),
    (("backprop", "{data}", "-e", "{model}", "-o", "{out}", "--learning-rate", "inf"),
     "--learning-rate"),
    (("backprop", "{data}", "-e", "{model}", "-o", "{out}", "--learning-rate", "-0.1"),
     "--learning-rate"),
    (("backprop", "{data}", "-e", "{model}", "-o", "{out}", "--batch-size", "0"), "--batch-size"),
    (("backprop", "{data}", "-e", "{model}", "-o", "{out}", "--reg", "-1"), "--reg"),
    (("backprop", "{data}", "-e", "{model}", "-o", "{out}", "--reg", "nan"), "--reg"),
    (("backprop", "{data}", "-e", "{model}", "-o", "{out}", "--test-ratio", "1.5"),
     "--test-ratio"),
    (("backprop", "{data}", "-e", "{model}", "-o", "{out}", "--max-per-class", "-3"),
     "--max-per-class"),
    (("curve", "{data}", "-e", "{model}", "--caps", "0,1"), "--caps"),
    (("curve", "{data}", "-e", "{model}", "--caps", "x"), "--caps"),
    (("curve", "{data}", "-e", "{model}", "--caps", ""), "--caps"),
    (("curve", "{data}", "-e", "{model}", "--exported-at", "0"), "--exported-at"),
    (("curve", "{data}", "-e", "{model}", "--test-ratio", "2"), "--test-ratio"),
    (("curve", "{data}", "-e", "{model}", "--seed", "-3"), "--seed"),
    (("evaluate", "{classifier}", "{data}", "--test-ratio", "5"), "--test-ratio"),
    (("evaluate", "{classifier}", "{data}", "--max-per-class", "0"), "--max-per-class"),
    (("evaluate", "{classifier}", "{data}", "--seed", "-1"), "--seed"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "flag"), NUMERIC_CASES, ids=[" ".join(c[0]) for c in NUMERIC_CASES]
)
def test_out_of_range_number_is_refused(
    tmp_path: Path,
    extractor: Path,
    small: Path,
    trained: Path,
    args: tuple[str, ...],
    flag: str,
) -> None:
    """Every numeric option of every command: one `error:` line naming the flag, exit 2."""
    values = {
        "{data}": str(small),
        "{model}": str(extractor),
        "{image}": str(small / "red" / "red_000.png"),
        "{classifier}": str(trained),
        "{out}": str(tmp_path / "m.tflite"),
    }
    outcome = invoke(
        *(values.get(a, a) for a in args), *(["--no-cache"] if "{out}" in args else [])
    )
    assert_error(outcome, flag)
    assert not (tmp_path / "m.tflite").exists()


def test_bench_backprop_too_large_to_allocate_is_refused() -> None:
    """`bench backprop --samples 10000000 --dim 100000`: each value is in range, the
    embeddings (7 TiB) are not; one error line instead of a MemoryError traceback."""
    outcome = run_cli("bench", "backprop", "--samples", 10_000_000, "--dim", 100_000,
                  timeout=60, limit_memory=True)  # fmt: skip
    assert_error(outcome)


# --- 7. the embedding cache -----------------------------------------------------------------------


def cache_entry(outcome: Outcome) -> dict[str, object]:
    assert_ok(outcome)
    entry = json.loads(outcome.stdout)["cache"]
    assert isinstance(entry, dict)
    return entry


def test_cache_file_replaced_by_a_folder_costs_only_time(
    tmp_path: Path, extractor: Path, small: Path
) -> None:
    """`<cache>/outputs/<name>.sqlite` is a folder: the run succeeds with a warning."""
    cache = tmp_path / "cache"
    args = ("imprint", small, "-e", extractor, "-o", tmp_path / "m.tflite", "--cache-dir", cache)
    path = Path(str(cache_entry(invoke(*args, "--json"))["file"]))
    path.unlink()
    path.mkdir()
    outcome = invoke(*args)
    assert_ok(outcome)
    assert any(path.name in w and "cache" in w for w in warnings_of(outcome)), outcome.describe()
    assert path.is_dir()


def test_cache_with_another_schema_is_rebuilt(tmp_path: Path, extractor: Path, small: Path) -> None:
    """The `outputs` table dropped and made again with other columns: the next run rebuilds
    it, and the run after that is served from it."""
    cache = tmp_path / "cache"
    args = ("imprint", small, "-e", extractor, "-o", tmp_path / "m.tflite", "--cache-dir", cache,
            "--json")  # fmt: skip
    first = cache_entry(invoke(*args))
    with sqlite3.connect(str(first["file"])) as db:
        db.execute("DROP TABLE outputs")
        db.execute("CREATE TABLE outputs (name TEXT, value REAL)")
    rebuilt = cache_entry(invoke(*args))
    assert rebuilt["hits"] == 0 and rebuilt["misses"] == first["misses"]
    again = cache_entry(invoke(*args))
    assert again["hits"] == first["misses"] and again["misses"] == 0


def test_cache_locked_by_another_process_is_left_alone(
    tmp_path: Path, extractor: Path, small: Path
) -> None:
    """Another process holds `BEGIN EXCLUSIVE` on the cache file: the run finishes within
    15 s with a warning saying "locked", and the cache file is the same file afterwards."""
    cache = tmp_path / "cache"
    args = ("imprint", small, "-e", extractor, "-o", tmp_path / "m.tflite", "--cache-dir", cache)
    path = Path(str(cache_entry(invoke(*args, "--json"))["file"]))
    inode = path.stat().st_ino
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sqlite3, sys, time\n"
         "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
         "db.execute('BEGIN EXCLUSIVE')\n"
         "print('locked', flush=True)\n"
         "time.sleep(120)\n",
         str(path)],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        start = time.monotonic()
        outcome = invoke(*args)
        seconds = time.monotonic() - start
    finally:
        holder.kill()
        holder.wait()
    assert_ok(outcome)
    assert seconds < 15
    assert any("locked" in w for w in warnings_of(outcome)), outcome.describe()
    assert path.is_file() and path.stat().st_ino == inode


def test_cache_dir_that_is_a_file_costs_only_time(
    tmp_path: Path, extractor: Path, small: Path
) -> None:
    """`--cache-dir FILE`: the run succeeds with a warning and the file is untouched."""
    blocker = tmp_path / "cachefile"
    blocker.write_text("not a folder")
    outcome = invoke("imprint", small, "-e", extractor, "-o", tmp_path / "m.tflite",
                  "--cache-dir", blocker)  # fmt: skip
    assert_ok(outcome)
    assert any("cache" in w for w in warnings_of(outcome)), outcome.describe()
    assert blocker.read_text() == "not a folder"


def test_cache_dir_inside_the_data_folder_writes_nothing_there(
    tmp_path: Path, extractor: Path, small: Path
) -> None:
    """`--cache-dir D/cache`: nothing may be written inside the data folder (the cache
    would also become a class folder on the next run); refused, or run without the cache."""
    data = small_copy(small, tmp_path / "data")
    before = snapshot(data)
    outcome = invoke("imprint", data, "-e", extractor, "-o", tmp_path / "m.tflite",
                  "--cache-dir", data / "cache")  # fmt: skip
    if outcome.code == 2:
        assert_error(outcome, "cache")
    else:
        assert_ok(outcome)
        assert warnings_of(outcome), outcome.describe()
    assert snapshot(data) == before


# --- 8. datasets ----------------------------------------------------------------------------------


def flowers_archive(path: Path, extra: Callable[[tarfile.TarFile], None] | None = None) -> str:
    """A real flower_photos .tgz (2 classes of 3 JPEGs); returns its sha256."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        if extra is not None:
            extra(tar)
        for name in ("daisy", "roses"):
            for i in range(3):
                buffer = io.BytesIO()
                class_image("red" if name == "roses" else "blue", rng).save(buffer, "JPEG")
                info = tarfile.TarInfo(f"flower_photos/{name}/{i}.jpg")
                info.size = buffer.tell()
                buffer.seek(0)
                tar.addfile(info, buffer)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_dataset_error(outcome: Outcome, *needles: str) -> None:
    assert "Aborted" not in outcome.stderr, outcome.describe()
    assert_error(outcome, *needles, alone=False)  # an "unpacking ..." line may come first


def test_truncated_archive_is_a_clear_error(tmp_path: Path) -> None:
    """A real .tgz cut in half, with its real sha256: one error line, exit 2, no dataset."""
    full = tmp_path / "full.tgz"
    flowers_archive(full)
    half = tmp_path / "half.tgz"
    half.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    digest = hashlib.sha256(half.read_bytes()).hexdigest()
    root = tmp_path / "root"
    outcome = invoke("datasets", "get", "flowers", "--root", root, "--url", half.as_uri(),
                  "--sha256", digest)  # fmt: skip
    assert_dataset_error(outcome, "truncated")
    assert not (root / "flowers").exists()


def test_archive_with_a_path_leaving_the_folder_is_refused(tmp_path: Path) -> None:
    """A tar member `../evil`: refused, and nothing is written outside the dataset folder."""

    def evil(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("../evil")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))

    archive = tmp_path / "evil.tgz"
    digest = flowers_archive(archive, evil)
    root = tmp_path / "a" / "root"
    root.mkdir(parents=True)
    outcome = invoke("datasets", "get", "flowers", "--root", root, "--url", archive.as_uri(),
                  "--sha256", digest)  # fmt: skip
    assert_dataset_error(outcome, "evil")
    assert not (root / "flowers").exists()
    assert [p for p in tmp_path.rglob("evil") if p.is_file()] == []


def test_archive_with_a_link_leaving_the_folder_is_refused(tmp_path: Path) -> None:
    """A tar member that is a symlink to /etc/passwd: refused, no dataset."""

    def link(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("flower_photos/daisy/link.jpg")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)

    archive = tmp_path / "link.tgz"
    digest = flowers_archive(archive, link)
    root = tmp_path / "root"
    outcome = invoke("datasets", "get", "flowers", "--root", root, "--url", archive.as_uri(),
                  "--sha256", digest)  # fmt: skip
    assert_dataset_error(outcome, "link.jpg")
    assert not (root / "flowers").exists()


def test_archive_that_is_not_gzip_is_a_clear_error(tmp_path: Path) -> None:
    """A gzip stream with garbage inside (checksum matches): one error line."""
    archive = tmp_path / "junk.tgz"
    archive.write_bytes(gzip.compress(os.urandom(4096)))
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    outcome = invoke("datasets", "get", "flowers", "--root", tmp_path / "root", "--url",
                  archive.as_uri(), "--sha256", digest)  # fmt: skip
    assert_dataset_error(outcome)


@pytest.mark.parametrize("digest", ["xyz", "0" * 63, "g" * 64])
def test_malformed_sha256_is_refused(tmp_path: Path, digest: str) -> None:
    """`--sha256 xyz` (or 63 digits, or not hexadecimal): refused before any download."""
    outcome = invoke("datasets", "get", "flowers", "--root", tmp_path / "root", "--url",
                  (tmp_path / "none.tgz").as_uri(), "--sha256", digest)  # fmt: skip
    assert_error(outcome, "--sha256")
    assert not (tmp_path / "root").exists()


def test_dataset_from_a_missing_file_or_unknown_name_is_refused(tmp_path: Path) -> None:
    """`--url file:///missing.tgz` and an unknown dataset name: one error line each."""
    missing = (tmp_path / "missing.tgz").as_uri()
    outcome = invoke("datasets", "get", "flowers", "--root", tmp_path / "root", "--url", missing,
                  "--sha256", "0" * 64)  # fmt: skip
    assert_dataset_error(outcome, "missing.tgz")
    assert_error(invoke("datasets", "get", "tulips", "--root", tmp_path / "root"), "tulips")


# --- 9. usage errors ------------------------------------------------------------------------------


USAGE_ERRORS = [
    ("imprint",),
    ("imprint", "D", "--bogus"),
    ("imprint", "D", "--test-ratio", "abc"),
    ("backprop", "D", "--epochs", "1.5"),
    ("bench", "backprop", "--samples", "abc"),
    ("datasets", "get"),
    ("no-such-command",),
]


def assert_usage_error(outcome: Outcome) -> None:
    assert outcome.code == 2, outcome.describe()
    assert "Traceback" not in outcome.stderr, outcome.describe()
    lines = stderr_lines(outcome)
    assert lines and lines[-1].startswith("error: "), outcome.describe()


@pytest.mark.parametrize("args", USAGE_ERRORS, ids=" ".join)
def test_usage_error_ends_in_one_error_line(args: tuple[str, ...]) -> None:
    """Typer's usage errors: a usage line may come first, the last line is `error: ...`."""
    assert_usage_error(invoke(*args))


def test_usage_error_from_the_console_entry_point() -> None:
    """The same through `python -m workbench`, as a shell script sees it."""
    assert_usage_error(run_cli("imprint", "D", "--bogus"))


def test_no_arguments_prints_help_without_a_traceback() -> None:
    """`workbench` alone: help, no traceback (exit 0 or 2)."""
    outcome = run_cli()
    assert "Traceback" not in outcome.stderr, outcome.describe()
    assert outcome.code in (0, 2), outcome.describe()
    assert "imprint" in outcome.stdout + outcome.stderr


# --- 10. training that goes wrong -----------------------------------------------------------------


def test_divergent_backprop_falls_back_with_one_warning_line(
    tmp_path: Path, extractor: Path, small: Path
) -> None:
    """`backprop --learning-rate 1e6 --epochs 30 --reg 10`: SGD diverges; the head is the imprinting
    solution, said in one warning line and in the report; no RuntimeWarning or source path on
    stderr."""
    out = tmp_path / "m.tflite"
    outcome = run_cli("backprop", small, "-e", extractor, "-o", out, "--no-cache",
                      "--learning-rate", "1e6", "--epochs", "30", "--reg", "10")  # fmt: skip
    assert_ok(outcome)
    warned = [w for w in warnings_of(outcome) if "diverged" in w]
    assert len(warned) == 1 and "imprinting solution" in warned[0], outcome.describe()
    assert "RuntimeWarning" not in outcome.stderr
    assert ".py:" not in outcome.stderr and '.py", line' not in outcome.stderr
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert report["fallbacks"] == [warned[0][len("warning: ") :]]
    assert report["head"]["fallback"] == report["fallbacks"][0]


def test_backprop_on_indistinguishable_classes_exports_a_sane_model(
    tmp_path: Path, extractor: Path, small: Path
) -> None:
    """Two classes of byte-identical images: whatever the verdict (a model with a warning, or
    an error), stderr has no numpy RuntimeWarning or source path, and a model written has
    no int32 bias that overflowed (all-zero weights give a tiny weight scale, and the bias
    at input scale x weight scale no longer fits: it saturates at -2**31)."""
    data = tmp_path / "data"
    image = (small / "red" / "red_000.png").read_bytes()
    for name in ("a", "b"):
        (data / name).mkdir(parents=True)
        for i in range(4):
            (data / name / f"{i}.png").write_bytes(image)
    out = tmp_path / "m.tflite"
    outcome = run_cli("backprop", data, "-e", extractor, "-o", out, "--no-cache", "--epochs", "10")
    assert outcome.code in (0, 1, 2), outcome.describe()
    assert "Traceback" not in outcome.stderr, outcome.describe()
    assert "RuntimeWarning" not in outcome.stderr, outcome.describe()
    assert ".py:" not in outcome.stderr, outcome.describe()
    if outcome.code != 2:
        graph = Graph.load(out)
        limits = np.iinfo(np.int32)
        for index in range(len(graph.tensors)):
            values = graph.constant(index)
            if values is not None and values.dtype == np.int32:
                name = graph.tensor_name(index)
                assert values.min() > limits.min and values.max() < limits.max, (name, values)


@pytest.mark.parametrize("trainer", ["imprint", "curve"])
def test_extractor_with_all_zero_outputs_is_not_a_traceback(
    tmp_path: Path, small: Path, trainer: str
) -> None:
    """A classifier forced in as the extractor whose 8-bit scores are all 0 for every image:
    there is nothing to learn from; a model with a warning or one error line, no traceback."""
    zeros = write_model(tmp_path / "zeros.tflite", classifier_bytes(informative=False))
    extra = {
        "imprint": ("-o", tmp_path / "m.tflite"),
        "curve": ("--caps", "1,2", "--exported-at", "1"),
    }[trainer]
    outcome = invoke(trainer, small, "-e", zeros, "--force", *extra, "--no-cache")
    assert outcome.code in (0, 1, 2), outcome.describe()
    assert "Traceback" not in outcome.stderr, outcome.describe()
    if outcome.code == 2:
        assert_error(outcome, alone=False)


# --- 11. deep images ------------------------------------------------------------------------------


def test_16_bit_and_float_images_match_their_8_bit_twin(tmp_path: Path, extractor: Path) -> None:
    """A 16-bit greyscale PNG and a 32-bit float TIFF in [0, 1] decode like the 8-bit PNG
    (mean pixel within 1) and give (almost) the same embedding."""
    rng = np.random.default_rng(1)
    grey = np.clip(rng.normal(120, 40, (40, 40)), 0, 255).astype(np.uint8)
    Image.fromarray(grey, "L").save(tmp_path / "eight.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")
    Image.fromarray(grey.astype(np.float32) / 255.0, "F").save(tmp_path / "float.tiff")
    with Image.open(tmp_path / "sixteen.png") as deep, Image.open(tmp_path / "float.tiff") as f:
        assert deep.mode.startswith("I") and f.mode == "F"  # really 16-bit and 32-bit float
    prep = Preprocessing(32, 32, "uint8")
    reference = decode(tmp_path / "eight.png", prep).astype(np.float64)
    model = load_model(extractor)
    embedding = model.output.dequantize(model.run(load_input(tmp_path / "eight.png", prep)))
    for name in ("sixteen.png", "float.tiff"):
        pixels = decode(tmp_path / name, prep).astype(np.float64)
        assert abs(pixels.mean() - reference.mean()) <= 1.0, name
        assert np.abs(pixels - reference).max() <= 2, name
        other = model.output.dequantize(model.run(load_input(tmp_path / name, prep)))
        np.testing.assert_allclose(other, embedding, atol=2 * model.output.scale)


# --- 12. class folder names -----------------------------------------------------------------------


def class_folders(root: Path, names: list[str | bytes], source: Path) -> Path:
    """Class folders under `root` (a bytes name need not be UTF-8), each holding the 4 images
    of one colour class of `source`."""
    colours = ["red", "green", "blue"]
    for i, name in enumerate(names):
        raw = name if isinstance(name, bytes) else os.fsencode(name)
        shutil.copytree(source / colours[i % 3], Path(os.fsdecode(os.fsencode(root) + b"/" + raw)))
    return root


UNKEEPABLE_NAMES: list[str | bytes] = [" daisy", "roses ", "new\nline", "tab\there", b"re\xffd"]


@pytest.mark.parametrize("name", UNKEEPABLE_NAMES, ids=repr)
def test_class_name_a_labels_file_cannot_keep_is_refused_before_extraction(
    tmp_path: Path, extractor: Path, small: Path, name: str | bytes
) -> None:
    """Class folders " daisy", "roses ", one with a newline or a tab, one not UTF-8: refused
    before anything is extracted, with a message naming the folder."""
    data = class_folders(tmp_path / "data", [name, "plain", "other"], small)
    cache = tmp_path / "cache"
    outcome = invoke("imprint", data, "-e", extractor, "-o", tmp_path / "m.tflite",
                  "--cache-dir", cache)  # fmt: skip
    line = assert_error(outcome)
    assert not cache.exists()  # refused before extraction
    if isinstance(name, str):
        assert repr(name) in line, line
    else:
        assert "re" in line and "plain" not in line, line
    assert not (tmp_path / "m.tflite").exists()


def test_class_name_with_an_inner_double_space_round_trips(
    tmp_path: Path, extractor: Path, small: Path
) -> None:
    """A class folder "tu  lips": trained, labelled exactly, and evaluate of the fresh model
    on the same folder succeeds; classify names it too."""
    data = class_folders(tmp_path / "data", ["tu  lips", "roses", "daisy"], small)
    out = tmp_path / "m.tflite"
    assert_ok(invoke("imprint", data, "-e", extractor, "-o", out, "--no-cache"))
    assert (tmp_path / "m.txt").read_text().splitlines() == ["0 daisy", "1 roses", "2 tu  lips"]
    evaluated = invoke("evaluate", out, data, "--no-cache", "--json")
    assert_ok(evaluated)
    assert json.loads(evaluated.stdout)["classes"] == ["daisy", "roses", "tu  lips"]
    classified = invoke("classify", out, data / "tu  lips", "--json")
    assert_ok(classified)
    labels = {item["top"][0]["label"] for item in json.loads(classified.stdout)["results"]}
    assert labels == {"tu  lips"}


# --- 13. a classifier given as the extractor ------------------------------------------------------


@pytest.mark.parametrize("trainer", ["imprint", "backprop", "curve"])
def test_classifier_as_extractor_is_refused(
    tmp_path: Path, classifier: Path, small: Path, trainer: str
) -> None:
    """A 1001-wide softmax classifier as `--extractor`: refused before extraction, and the
    message points to `workbench extractor` (and --force)."""
    cache = tmp_path / "cache"
    out = ("-o", tmp_path / "m.tflite") if trainer != "curve" else ()
    outcome = invoke(trainer, small, "-e", classifier, *out, "--cache-dir", cache)
    assert_error(outcome, "workbench extractor", "--force")
    assert not cache.exists()


def test_classifier_as_extractor_is_accepted_with_force(
    tmp_path: Path, classifier: Path, small: Path
) -> None:
    """The same classifier with `--force`: trained on its 1001 scores."""
    out = tmp_path / "m.tflite"
    outcome = invoke("imprint", small, "-e", classifier, "--force", "-o", out, "--no-cache")
    assert_ok(outcome)
    assert Graph.load(out).shape(Graph.load(out).outputs[0]) == (1, 3)


# --- 14. inputs that already work must keep working -----------------------------------------------


def test_undecodable_files_are_skipped_with_a_warning_naming_each(
    tmp_path: Path, extractor: Path, small: Path
) -> None:
    """Corrupt JPEG, truncated PNG, zero-byte .jpg, a text file named .png, a decompression
    bomb (a PNG claiming 20000x20000), a folder named x.jpg: skipped, the run succeeds."""
    data = small_copy(small, tmp_path / "data")
    red = data / "red"
    good = (red / "red_000.png").read_bytes()
    bad = {
        "corrupt.jpg": b"\xff\xd8\xff\xe0" + bytes(range(256)) * 2,
        "truncated.png": good[: len(good) // 2],
        "zero.jpg": b"",
        "text.png": b"hello, not an image\n",
        "bomb.png": png_claiming(20000, 20000),
    }
    for name, content in bad.items():
        (red / name).write_bytes(content)
    (red / "x.jpg").mkdir()
    out = tmp_path / "m.tflite"
    start = time.monotonic()
    outcome = invoke("imprint", data, "-e", extractor, "-o", out, "--no-cache")
    assert time.monotonic() - start < 30  # the bomb was not decoded
    assert_ok(outcome)
    warned = "\n".join(warnings_of(outcome))
    for name in bad:
        assert name in warned, outcome.describe()
    report = json.loads((tmp_path / "m.report.json").read_text())
    assert sorted(Path(u["file"]).name for u in report["unreadable"]) == sorted(bad)


@pytest.mark.parametrize("problem", ["empty class", "one image", "only non-images"])
def test_class_with_too_few_images_is_a_clear_error(
    tmp_path: Path, extractor: Path, small: Path, problem: str
) -> None:
    """An empty class folder, or a class with 1 image: one error line naming the class."""
    data = small_copy(small, tmp_path / "data")
    folder = data / "sparse"
    folder.mkdir()
    if problem == "one image":
        shutil.copyfile(small / "red" / "red_000.png", folder / "only.png")
    elif problem == "only non-images":
        (folder / "notes.txt").write_text("notes")
    cache = tmp_path / "cache"
    outcome = invoke("imprint", data, "-e", extractor, "-o", tmp_path / "m.tflite",
                  "--cache-dir", cache)  # fmt: skip
    assert_error(outcome, "sparse", alone=problem != "only non-images")
    assert not cache.exists()


@pytest.mark.parametrize(
    "problem", ["a file", "missing", "a symlink loop", "empty", "one class", "no permission"]
)
def test_data_folder_that_cannot_be_used_is_a_clear_error(
    tmp_path: Path, extractor: Path, small: Path, problem: str
) -> None:
    """The data folder is a file, missing, a symlink loop, empty, or has one class."""
    data = tmp_path / "data"
    if problem == "a file":
        data.write_text("not a folder")
    elif problem == "a symlink loop":
        data.symlink_to(data)
    elif problem == "empty":
        data.mkdir()
    elif problem == "one class":
        shutil.copytree(small / "red", data / "red")
    elif problem == "no permission":
        if IS_ROOT:
            pytest.skip("root reads any folder")
        small_copy(small, data).chmod(0o000)
    for trainer in ("imprint", "backprop"):
        outcome = invoke(trainer, data, "-e", extractor, "-o", tmp_path / "m.tflite", "--no-cache")
        assert_error(outcome, "data")
    assert not (tmp_path / "m.tflite").exists()


def bad_model(folder: Path, kind: str, extractor: Path) -> Path:
    path = folder / f"{kind.replace(' ', '_')}.tflite"
    if kind == "text":
        path.write_text("hello, I am not a model\n")
    elif kind == "truncated":
        path.write_bytes(extractor.read_bytes()[:300])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "folder":
        path.mkdir()
    elif kind == "identifier only":
        path.write_bytes(b"\x00\x00\x00\x00TFL3" + bytes(64))
    (folder / f"{path.stem}.txt").write_text("0 blue\n1 green\n2 red\n")  # labels beside it
    return path


@pytest.mark.parametrize("kind", ["text", "truncated", "empty", "folder", "missing",
                                  "identifier only"])  # fmt: skip
@pytest.mark.parametrize(
    "use", ["imprint -e", "backprop -e", "evaluate", "classify", "inspect", "bench model",
            "extractor", "imprint --base"],
)  # fmt: skip
def test_damaged_model_is_a_clear_error(
    tmp_path: Path, extractor: Path, small: Path, kind: str, use: str
) -> None:
    """A model that is text, truncated, empty, a folder, missing or only a header, handed to
    every command that reads one: one error line naming it."""
    model = bad_model(tmp_path, kind, extractor)
    image = small / "red" / "red_000.png"
    out = tmp_path / "out.tflite"
    args: tuple[object, ...] = {
        "imprint -e": ("imprint", small, "-e", model, "-o", out, "--no-cache"),
        "backprop -e": ("backprop", small, "-e", model, "-o", out, "--no-cache"),
        "evaluate": ("evaluate", model, small, "--no-cache", "-o", tmp_path / "e.json"),
        "classify": ("classify", model, image),
        "inspect": ("inspect", model),
        "bench model": ("bench", "model", model, "--runs", "1"),
        "extractor": ("extractor", model, "-o", out),
        "imprint --base": ("imprint", small, "--base", model, "-o", out, "--no-cache"),
    }[use]
    assert_error(invoke(*args), model.name)
    assert not out.exists()


no_edgetpu_runtime = pytest.mark.skipif(
    __import__("ctypes.util").util.find_library("edgetpu") is not None,
    reason="an Edge TPU runtime is installed",
)


@no_edgetpu_runtime
@pytest.mark.parametrize("use", ["imprint -e", "classify", "bench model"])
def test_edgetpu_model_without_edgetpu_names_the_cpu_build(
    tmp_path: Path, small: Path, use: str
) -> None:
    """An `_edgetpu` model with no Edge TPU runtime: one error line naming the CPU build."""
    model = fake_edgetpu_model(tmp_path)
    args: tuple[object, ...] = {
        "imprint -e": ("imprint", small, "-e", model, "-o", tmp_path / "m.tflite", "--no-cache"),
        "classify": ("classify", model, small / "red" / "red_000.png"),
        "bench model": ("bench", "model", model, "--runs", "1"),
    }[use]
    assert_error(invoke(*args), "compiled for the Edge TPU", "CPU build")


@pytest.mark.parametrize("where", ["/proc", "read-only folder"])
def test_unwritable_output_folder_is_refused_before_any_work(
    tmp_path: Path, extractor: Path, small: Path, where: str
) -> None:
    """`-o` in a folder that cannot be written (/proc; chmod 555 where not root)."""
    if where == "/proc":
        folder = Path("/proc")
    else:
        if IS_ROOT:
            pytest.skip("root writes into a chmod 555 folder; /proc covers it")
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
    cache = tmp_path / "cache"
    outcome = invoke("imprint", small, "-e", extractor, "-o", folder / "m.tflite",
                  "--cache-dir", cache)  # fmt: skip
    assert_error(outcome, "cannot write")
    assert not cache.exists()


def test_full_disk_is_an_error_and_keeps_earlier_outputs(
    tiny_disk: Path, trained: Path, extractor: Path, small: Path
) -> None:
    """A 64 KiB tmpfs with 8 KiB left: the run fails with one error line, the earlier outputs
    on it are byte-identical and no staged file is left behind."""
    files = copy_outputs(trained, tiny_disk / "m.tflite")
    filler = tiny_disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while f.write(b"\0" * 1024):
                pass
        except OSError:
            pass
    os.truncate(filler, max(0, filler.stat().st_size - 8192))
    before = snapshot(tiny_disk)
    outcome = invoke("imprint", small, "-e", extractor, "-o", files["model"], "--no-cache")
    assert_error(outcome, "No space left")
    assert snapshot(tiny_disk) == before


# --- what else a user can hand the CLI ------------------------------------------------------------


@pytest.mark.parametrize("labels", ["binary", "folder", "empty", "missing"])
@pytest.mark.parametrize("use", ["evaluate", "classify"])
def test_labels_file_that_cannot_be_read_is_a_clear_error(
    tmp_path: Path, trained: Path, small: Path, labels: str, use: str
) -> None:
    """`--labels` pointing to a binary file, a folder, an empty file or nothing."""
    path = tmp_path / "labels.txt"
    if labels == "binary":
        path.write_bytes(bytes(range(256)) * 4)
    elif labels == "folder":
        path.mkdir()
    elif labels == "empty":
        path.write_bytes(b"")
    args: tuple[object, ...] = (
        ("evaluate", trained, small, "--no-cache", "-o", tmp_path / "e.report.json")
        if use == "evaluate"
        else ("classify", trained, small / "red" / "red_000.png")
    )
    assert_error(invoke(*args, "--labels", path), "labels.txt")


@pytest.mark.parametrize("use", ["evaluate", "classify"])
def test_labels_file_with_fewer_classes_than_the_model_is_refused(
    tmp_path: Path, trained: Path, small: Path, use: str
) -> None:
    """A labels file with 2 lines for a 3-class model."""
    path = tmp_path / "short.txt"
    path.write_text("0 blue\n1 green\n")
    args: tuple[object, ...] = (
        ("evaluate", trained, small, "--no-cache", "-o", tmp_path / "e.report.json")
        if use == "evaluate"
        else ("classify", trained, small / "red" / "red_000.png")
    )
    assert_error(invoke(*args, "--labels", path), "2")


def test_symlink_loop_inside_a_class_folder_does_not_hang(
    tmp_path: Path, extractor: Path, small: Path
) -> None:
    """A class folder holding a symlink to its parent (a loop): the run ends, promptly."""
    data = small_copy(small, tmp_path / "data")
    (data / "red" / "again").symlink_to(data)
    (data / "green" / "self").symlink_to(data / "green")
    outcome = run_cli("imprint", data, "-e", extractor, "-o", tmp_path / "m.tflite", "--no-cache",
                  "--json", timeout=60)  # fmt: skip
    assert_ok(outcome)
    assert json.loads(outcome.stdout)["counts"]["train"]["red"] == 3  # the loop added nothing


def test_image_without_read_permission_is_skipped(
    tmp_path: Path, extractor: Path, small: Path
) -> None:
    """An image file with mode 000: skipped with a warning naming it."""
    if IS_ROOT:
        pytest.skip("root reads files without read permission")
    data = small_copy(small, tmp_path / "data")
    locked = data / "red" / "red_000.png"
    locked.chmod(0o000)
    outcome = invoke("imprint", data, "-e", extractor, "-o", tmp_path / "m.tflite", "--no-cache")
    assert_ok(outcome)
    assert any("red_000.png" in w for w in warnings_of(outcome)), outcome.describe()


def test_image_name_that_is_not_utf8_is_handled(
    tmp_path: Path, extractor: Path, small: Path
) -> None:
    """An image named with bytes that are not UTF-8, with the embedding cache on: the run
    succeeds (the image used or skipped with a warning), no traceback."""
    data = small_copy(small, tmp_path / "data")
    odd = os.fsencode(data / "red") + b"/\xff\xfe.png"
    shutil.copyfile(data / "red" / "red_000.png", os.fsdecode(odd))
    outcome = invoke("imprint", data, "-e", extractor, "-o", tmp_path / "m.tflite",
                  "--cache-dir", tmp_path / "cache")  # fmt: skip
    assert_ok(outcome)
    assert (tmp_path / "m.tflite").exists() and (tmp_path / "m.report.html").exists()


def test_output_without_tflite_suffix_names_its_siblings(
    tmp_path: Path, extractor: Path, small: Path
) -> None:
    """`-o model` (no suffix): the model is written there, with `model.txt` and reports."""
    out = tmp_path / "model"
    assert_ok(invoke("imprint", small, "-e", extractor, "-o", out, "--no-cache"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model", "model.report.html", "model.report.json", "model.txt",
    ]  # fmt: skip
    assert out.read_bytes()[4:8] == b"TFL3"


def test_evaluate_of_an_extractor_is_refused(tmp_path: Path, extractor: Path, small: Path) -> None:
    """`evaluate EXTRACTOR D`: a model with no head (and no labels) is one error line."""
    model = tmp_path / "extractor.tflite"
    shutil.copyfile(extractor, model)
    assert_error(invoke("evaluate", model, small, "--no-cache"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["extractor.tflite"]


def test_classify_takes_folders_and_refuses_an_empty_one(
    tmp_path: Path, trained: Path, small: Path
) -> None:
    """`classify M FOLDER` classifies the images inside; an empty folder is an error."""
    outcome = invoke("classify", trained, small / "red", "--json")
    assert_ok(outcome)
    assert len(json.loads(outcome.stdout)["results"]) == 4
    (tmp_path / "empty").mkdir()
    assert_error(invoke("classify", trained, tmp_path / "empty"), "empty")


@pytest.mark.parametrize("content", ['{"hello": 1}', "[1, 2]", "\x89PNG binary", "", "folder"])
def test_report_of_something_that_is_not_a_report_is_refused(tmp_path: Path, content: str) -> None:
    """`report X` where X is other JSON, binary, empty, or a folder: one error line."""
    path = tmp_path / "x.json"
    if content == "folder":
        path.mkdir()
    else:
        path.write_bytes(content.encode("latin-1") + (b"\xff\xfe" if "binary" in content else b""))
    assert_error(invoke("report", path), "x.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_extractor_of_a_model_without_logits_is_refused(tmp_path: Path, extractor: Path) -> None:
    """`extractor` on an extractor (no logits layer), and `--tensor` naming no tensor."""
    assert_error(invoke("extractor", extractor, "-o", tmp_path / "cut.tflite"), "--tensor")
    outcome = invoke("extractor", extractor, "-o", tmp_path / "cut.tflite", "--tensor", "nope")
    assert_error(outcome, "nope")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("use", ["imprint", "evaluate", "classify", "bench model"])
def test_unknown_device_is_refused(tmp_path: Path, trained: Path, small: Path, use: str) -> None:
    """`--device bogus` on every command that runs a model."""
    args: tuple[object, ...] = {
        "imprint": ("imprint", small, "-e", trained, "--force", "-o", tmp_path / "m.tflite"),
        "evaluate": ("evaluate", trained, small, "-o", tmp_path / "e.report.json"),
        "classify": ("classify", trained, small / "red" / "red_000.png"),
        "bench model": ("bench", "model", trained),
    }[use]
    assert_error(invoke(*args, "--device", "bogus"), "bogus")
    assert list(tmp_path.iterdir()) == []


# Metadata entries workbench writes into a model (names as `workbench.run.training` writes them).
TRAINING_FILES = "workbench_training_files"


@pytest.mark.parametrize(
    "damage",
    ["split with an unknown key", "split with a bad value", "metadata not JSON",
     "training files of odd length", "embedding tensor out of range"],
)  # fmt: skip
@pytest.mark.parametrize("use", ["evaluate", "imprint --base"])
def test_model_with_crafted_metadata_is_not_a_traceback(
    tmp_path: Path, trained: Path, small: Path, damage: str, use: str
) -> None:
    """A model from elsewhere whose workbench metadata is malformed: it is evaluated (or
    continued) as a model without that metadata, or refused with one error line."""
    files = copy_outputs(trained, tmp_path / "m.tflite")
    graph = Graph.load(files["model"])
    meta = workbench_metadata(graph)
    assert meta is not None
    if damage == "split with an unknown key":
        meta["split"] = {"bogus": 1}
    elif damage == "split with a bad value":
        meta["split"] = {"test_ratio": "a lot"}
    elif damage == "embedding tensor out of range":
        meta["embedding_tensor"] = 10**6
    if damage == "metadata not JSON":
        graph.set_metadata("workbench", b"\xff{not json")
    elif damage == "training files of odd length":
        graph.set_metadata(TRAINING_FILES, b"abc")
    else:
        graph.set_metadata("workbench", json.dumps(meta).encode())
    files["model"].write_bytes(graph.to_bytes())
    args: tuple[object, ...] = (
        ("evaluate", files["model"], small, "--no-cache", "-o", tmp_path / "e.report.json")
        if use == "evaluate"
        else ("imprint", small, "--base", files["model"], "-o", tmp_path / "n.tflite",
              "--no-cache")
    )  # fmt: skip
    outcome = invoke(*args)
    assert outcome.code in (0, 2), outcome.describe()
    assert "Traceback" not in outcome.stderr, outcome.describe()
    if outcome.code == 2:
        assert_error(outcome, alone=False)


def test_fifo_at_the_output_is_refused_without_hanging(
    tmp_path: Path, extractor: Path, small: Path
) -> None:
    """A named pipe where the model goes: refused at once (reading it to check its kind would
    wait forever for a writer)."""
    fifo = tmp_path / "m.tflite"
    os.mkfifo(fifo)
    try:
        outcome = run_cli("imprint", small, "-e", extractor, "-o", fifo, "--no-cache", timeout=6)
    except subprocess.TimeoutExpired:
        pytest.fail("the run hung on the named pipe at the output")
    assert_error(outcome, "m.tflite")


REPORT_DAMAGE: dict[str, Callable[[dict], dict]] = {
    "per_class is a list": lambda r: {**r, "per_class": [1, 2]},
    "classes is a string": lambda r: {**r, "classes": "abc"},
    "top_k_accuracy is a string": lambda r: {**r, "top_k_accuracy": "abc"},
    "confusion matrix too small": lambda r: {**r, "confusion_matrix": [[1]]},
    "confusion cell outside the matrix": lambda r: {**r, "confusion": [[99, 0, 1]]},
    "confusion cells are text": lambda r: {**r, "confusion": "abc"},
    "old report: full matrix only": lambda r: {k: v for k, v in r.items() if k != "confusion"},
    "split is null": lambda r: {**r, "split": None},
    "mistakes are numbers": lambda r: {**r, "mistakes": [1]},
    "curve points is a number": lambda r: {"points": 5},
    "curve points are numbers": lambda r: {"points": [1, 2]},
}


@pytest.mark.parametrize("damage", list(REPORT_DAMAGE))
def test_report_with_malformed_fields_is_not_a_traceback(
    tmp_path: Path, trained: Path, damage: str
) -> None:
    """`report R.json` on a hand-edited report with fields of the wrong type: a page, or one
    error line; never a traceback, never a half-written page."""
    report = json.loads(output_paths(trained)["report"].read_text())
    path = tmp_path / "r.report.json"
    path.write_text(json.dumps(REPORT_DAMAGE[damage](report)))
    outcome = invoke("report", path)
    assert outcome.code in (0, 2), outcome.describe()
    assert "Traceback" not in outcome.stderr, outcome.describe()
    if outcome.code == 2:
        assert_error(outcome)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["r.report.json"]
