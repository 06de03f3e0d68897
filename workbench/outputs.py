"""Where a run's outputs go: checked against everything the run reads, committed as one unit.

A run writes a model, its labels file and its reports. Nothing it writes may land on
something it reads (the extractor, a base model, the data folder) or on an unrelated file of
another kind, and an interrupted or failed run must leave earlier outputs exactly as they
were. So every target is checked before any work starts, outputs are staged beside their
targets under temporary names carrying the writer's process id, and `commit()` renames them
into place, restoring whatever it had already replaced if a later rename fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from workbench.errors import WorkbenchError

# A staged file older than this whose writer is gone is debris of a killed run.
STALE_AFTER_S = 60.0
_STAGED = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.(?:tmp|bak)$")
# What an existing file at each target must already be, so a run replaces only its own kind.
KINDS = ("model", "labels", "report", "html")


def output_files(model_path: str | Path) -> dict[str, Path]:
    """`OUT.tflite` -> its labels `OUT.txt`, reports `OUT.report.json` and `OUT.report.html`."""
    model_path = Path(model_path)
    name = str(model_path)
    stem = name[: -len(".tflite")] if model_path.suffix == ".tflite" else name
    return {
        "model": model_path,
        "labels": Path(f"{stem}.txt"),
        "report": Path(f"{stem}.report.json"),
        "html": Path(f"{stem}.report.html"),
    }


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except (ValueError, OSError):
        return False
    return True


def _kind_problem(kind: str, path: Path, model_exists: bool) -> str | None:
    """Why an existing file at `path` is not a previous output of this kind (None if it is)."""
    if path.is_dir():
        return "is a folder"
    if not path.exists() and not path.is_symlink():
        return None
    if not path.is_file():
        return "is not a regular file"
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if kind == "model":
        return None if head[4:8] == b"TFL3" else "exists and is not a TFLite model"
    if kind == "labels":
        return None if model_exists else "exists but belongs to no model of that name"
    if kind == "report":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            return "exists and is not a workbench report"
        return (
            None
            if isinstance(data, dict) and "workbench_version" in data
            else ("exists and is not a workbench report")
        )
    return (
        None
        if b'name="generator" content="workbench' in head
        else ("exists and is not a workbench report")
    )


def check_outputs(
    targets: Mapping[str, Path],
    inputs: Iterable[str | Path] = (),
    data_dirs: Iterable[str | Path] = (),
) -> None:
    """Refuse, before any work, outputs that would overwrite an input or a foreign file.

    `targets` maps a kind (model, labels, report, html) to a path. A target may not be an
    input (the same file by resolved path or by inode, so symlinks and hard links count),
    may not lie inside a data folder, and an existing file there must be an earlier output of
    the same kind. Its folder must exist and be writable.
    """
    if "model" in targets:
        check_writable(targets["model"])  # the clearest message for a folder or a bad path
    input_ids = {_identity(Path(p)) for p in inputs} - {None}
    input_paths = {Path(p).resolve() for p in inputs}
    model_exists = targets.get("model") is not None and Path(targets["model"]).is_file()
    for kind, target in targets.items():
        target = Path(target)
        if target.resolve() in input_paths or _identity(target) in input_ids:
            raise WorkbenchError(f"output {target} is an input of this run; choose another -o")
        for folder in data_dirs:
            if _is_within(target, Path(folder)):
                raise WorkbenchError(
                    f"output {target} is inside the data folder {folder}; write it elsewhere"
                )
        problem = _kind_problem(kind, target, model_exists)
        if problem:
            raise WorkbenchError(f"output {target} {problem}; refusing to replace it")
    for target in targets.values():
        check_writable(Path(target))


def check_cache_folder(cache: object, data_dirs: Iterable[str | Path]) -> None:
    """A cache folder inside a data folder would become a class folder of the next run."""
    if not isinstance(cache, str | Path):
        return
    for folder in data_dirs:
        if _is_within(Path(cache), Path(folder)):
            raise WorkbenchError(
                f"the cache folder {cache} is inside the data folder {folder}; put it elsewhere"
            )


def check_writable(path: str | Path) -> None:
    """Fail now, before minutes of extraction, if `path` cannot be written."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise WorkbenchError(
            f"output {path} is a directory; give a file name like {path}/model.tflite"
        )
    if not parent.is_dir():
        raise WorkbenchError(f"output folder does not exist: {parent}")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".workbench-check-"):
            pass
    except OSError as e:
        raise WorkbenchError(f"cannot write to {parent}: {e.strerror or e}") from None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(targets: Iterable[str | Path], now: float | None = None) -> list[Path]:
    """Delete staged files of earlier runs of these targets whose writer is gone.

    A run killed with SIGKILL cannot clean up; its `.NAME.PID.XXXX.tmp` files would stay
    forever. Only files of the same target names, older than STALE_AFTER_S and whose process
    no longer exists, are removed.
    """
    now = time.time() if now is None else now
    removed = []
    for target in targets:
        target = Path(target)
        folder = target.parent if str(target.parent) else Path(".")
        try:
            entries = list(folder.iterdir())
        except OSError:
            continue
        for entry in entries:
            match = _STAGED.match(entry.name)
            if not match or match.group("name") != target.name:
                continue
            try:
                old = now - entry.stat().st_mtime > STALE_AFTER_S
            except OSError:
                continue
            if (
                old
                and int(match.group("pid")) != os.getpid()
                and not _process_alive(int(match.group("pid")))
            ):
                entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _sibling(target: Path, suffix: str) -> Path:
    folder = target.parent if str(target.parent) else Path(".")
    fd, name = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.{os.getpid()}.", suffix=suffix)
    os.close(fd)
    return Path(name)


class StagedFiles:
    """Files written beside their targets under temporary names, renamed in `commit()`.

    Leaving the `with` block without committing (an error, Ctrl-C) deletes the temporary
    files, so either every output appears complete or none of them changes.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)
        self._staged.clear()

    def stage(self, target: str | Path, data: bytes) -> Path:
        """Write `data` to a temp file in the target's folder; returns the temp path."""
        target = Path(target)
        try:
            tmp = _sibling(target, ".tmp")
        except OSError as e:
            raise WorkbenchError(f"cannot write {target}: {e.strerror or e}") from None
        self._staged.append((tmp, target))
        try:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are ordinary files
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise WorkbenchError(f"cannot write {target}: {e.strerror or e}") from None
        return tmp

    def commit(self) -> None:
        """Rename every staged file into place; if one fails, put the replaced ones back.

        Each existing target is first hard-linked to a backup name (it stays where it is),
        so a failed rename leaves the earlier outputs complete and consistent.
        """
        backups: list[tuple[Path, Path | None]] = []
        done: list[Path] = []
        try:
            for _, target in self._staged:
                backups.append((target, self._backup(target)))
            for tmp, target in self._staged:
                try:
                    os.replace(tmp, target)
                except OSError as e:
                    raise WorkbenchError(
                        f"cannot write {target}: {e.strerror or e}; earlier outputs were kept"
                    ) from None
                done.append(target)
        except WorkbenchError:
            self._restore(done, backups)
            raise
        finally:
            for _, backup in backups:
                if backup is not None:
                    backup.unlink(missing_ok=True)
        self._staged.clear()

    @staticmethod
    def _backup(target: Path) -> Path | None:
        if not target.exists():
            return None
        backup = _sibling(target, ".bak")
        try:
            backup.unlink()
            os.link(target, backup)  # instant, and the original stays where it is
        except OSError:
            try:  # file systems without hard links (FAT, some network mounts): copy
                shutil.copy2(target, backup)
            except OSError as e:
                backup.unlink(missing_ok=True)
                raise WorkbenchError(f"cannot write {target}: {e.strerror or e}") from None
        return backup

    @staticmethod
    def _restore(done: list[Path], backups: list[tuple[Path, Path | None]]) -> None:
        originals = dict(backups)
        for target in done:
            backup = originals.get(target)
            try:
                if backup is None:
                    target.unlink(missing_ok=True)  # it did not exist before this run
                else:
                    os.replace(backup, target)
            except OSError:
                pass  # best effort; the error already names the target that failed


def write_files_atomically(contents: Mapping[Path, bytes]) -> None:
    """Write several files so that all of them or none of them change."""
    with StagedFiles() as staged:
        for target, data in contents.items():
            staged.stage(target, data)
        staged.commit()
