"""Where a run's outputs go: checked against everything the run reads, committed as one unit.

A run writes a model, its labels file and its reports. Nothing it writes may land on
something it reads (the extractor, a base model, the data folder) or on an unrelated file of
another kind, and an interrupted or failed run must leave earlier outputs exactly as they
were. So every target is checked before any work starts (its name included: one the file
system cannot hold fails then, not after minutes of extraction), outputs are staged beside
their targets under temporary names carrying the writer's process id, and `commit()`
renames them into place, restoring whatever it had already replaced if a later rename fails.

A staged file is locked (`flock`) by its writer for as long as it exists. A run killed with
SIGKILL cannot remove its staged files, but the kernel drops its locks: the next run of the
same outputs removes those whose writer's process is gone and that nobody holds locked,
which proves the writer dead even for a writer in another PID namespace or on another host
sharing the folder.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from workbench.core.errors import WorkbenchError
from workbench.core.jsonfile import parse_json

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; the process check and age decide
    fcntl = None  # type: ignore[assignment]

# Where locks cannot be taken (a file system without them), a staged file whose writer's
# process is gone counts as debris only once it is this old: the writer might be a live
# process that this one cannot see.
STALE_AFTER_S = 60.0
_STAGED = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.(?:tmp|bak)$")
# What a staged name adds to the target's: ".", ".<pid>.", mkstemp's 8 characters, ".tmp".
_STAGED_EXTRA = 1 + 1 + 1 + 8 + 4
# File systems that do not say how long a name may be get the common limit.
DEFAULT_NAME_MAX = 255
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


def name_limit(folder: Path) -> int:
    """The longest file name, in bytes, that `folder`'s file system holds."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return DEFAULT_NAME_MAX


def check_name(target: Path, what: str = "output") -> None:
    """Refuse an output whose name (or the temporary name it is first written under) the
    file system cannot hold, or whose path is too long, before any work is done."""
    folder = target.parent if str(target.parent) else Path(".")
    limit = name_limit(folder)
    name = len(os.fsencode(target.name))
    staged = name + _STAGED_EXTRA + len(str(os.getpid()))
    if staged > limit:
        longest = limit - _STAGED_EXTRA - len(str(os.getpid()))
        raise WorkbenchError(
            f"{what} file name too long: {target.name} is {name} bytes and is written under a "
            f"temporary name of {staged}; this file system holds names of up to {limit} "
            f"bytes, so at most {longest} here; choose a shorter name"
        )
    try:
        path_max = int(os.pathconf(folder, "PC_PATH_MAX"))
    except (OSError, ValueError, AttributeError):
        path_max = 4096
    if len(os.fsencode(str(target.absolute()))) + staged - name >= path_max:
        raise WorkbenchError(f"{what} path too long: {target} ({path_max} bytes at most)")


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
    try:
        return _existing_kind_problem(kind, path, model_exists)
    except OSError as e:
        return f"cannot be checked ({e.strerror or e})"


def _existing_kind_problem(kind: str, path: Path, model_exists: bool) -> str | None:
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
            data = parse_json(path.read_text(encoding="utf-8"))
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
    the same kind. Its folder must exist and be writable, and its name fit the file system.
    """
    for target in targets.values():
        check_name(Path(target))  # first: a name too long makes every other check fail
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
    try:
        is_dir, parent_is_dir = path.is_dir(), parent.is_dir()
    except OSError as e:  # a folder name longer than the file system holds, ...
        raise WorkbenchError(f"cannot use output {path}: {e.strerror or e}") from None
    if is_dir:
        raise WorkbenchError(
            f"output {path} is a directory; give a file name like {path}/model.tflite"
        )
    if not parent_is_dir:
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
    except OverflowError:  # a number no process can have
        return False
    return True


def _lock(fd: int) -> bool | None:
    """Take an exclusive lock on the open file without waiting.

    True: taken. False: another process holds it. None: this file system (or platform)
    has no such locks.
    """
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return False
        return None
    return True


def _writer_gone(entry: Path, pid: int, now: float) -> bool:
    """True when the run that staged `entry` has provably ended.

    Its process is gone and nobody holds the lock a live writer keeps on the file; where
    locks cannot be taken, its process is gone and the file is older than STALE_AFTER_S.
    """
    if pid == os.getpid() or _process_alive(pid):
        return False  # this run, or a live process (maybe a new one under a reused id)
    try:
        fd = os.open(
            entry, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        )
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False  # a folder or pipe under a staged file's name: not ours to remove
        locked = _lock(fd)
        if locked is not None:
            return locked  # released when we close it, an instant before the file goes
        return now - os.fstat(fd).st_mtime > STALE_AFTER_S
    finally:
        os.close(fd)


def remove_stale(targets: Iterable[str | Path], now: float | None = None) -> list[Path]:
    """Delete staged files of earlier runs of these targets whose writer is gone.

    A run killed with SIGKILL cannot clean up; its `.NAME.PID.XXXX.tmp` files would stay
    forever. Only files of the same target names whose writer provably ended (see
    `_writer_gone`) are removed, however recent: a run started right after a killed one
    cleans up after it.
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
            if _writer_gone(entry, int(match.group("pid")), now):
                try:
                    entry.unlink(missing_ok=True)
                except OSError:  # another user's, in a shared folder: theirs to remove
                    continue
                removed.append(entry)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _sibling(target: Path, suffix: str) -> tuple[Path, int]:
    """A new empty file beside `target`, named for it and this process, and an open
    descriptor of it holding its lock (kept open for as long as the file is staged)."""
    folder = target.parent if str(target.parent) else Path(".")
    fd, name = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.{os.getpid()}.", suffix=suffix)
    _lock(fd)
    return Path(name), fd


class StagedFiles:
    """Files written beside their targets under temporary names, renamed in `commit()`.

    Leaving the `with` block without committing (an error, Ctrl-C) deletes the temporary
    files, so either every output appears complete or none of them changes. Each staged file
    stays locked until then, so that another run can tell it from a killed run's debris.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []
        self._held: list[int] = []  # descriptors holding the staged files' locks

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)
        self._staged.clear()
        self._release()

    def _release(self) -> None:
        for fd in self._held:
            os.close(fd)
        self._held.clear()

    def stage(self, target: str | Path, data: bytes) -> Path:
        """Write `data` to a temp file in the target's folder; returns the temp path."""
        target = Path(target)
        try:
            tmp, fd = _sibling(target, ".tmp")
        except OSError as e:
            raise WorkbenchError(f"cannot write {target}: {e.strerror or e}") from None
        self._held.append(fd)
        self._staged.append((tmp, target))
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are ordinary files
            # Written through the locking descriptor itself: where locks are emulated with
            # POSIX record locks (NFS), closing any other descriptor would drop the lock.
            with os.fdopen(fd, "wb", closefd=False) as f:
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
        self._release()

    def _backup(self, target: Path) -> Path | None:
        if not target.exists():
            return None
        backup, fd = _sibling(target, ".bak")
        os.close(fd)
        try:
            backup.unlink()
            os.link(target, backup)  # instant, and the original stays where it is
        except OSError:
            try:  # file systems without hard links (FAT, some network mounts): copy
                shutil.copy2(target, backup)
            except OSError as e:
                backup.unlink(missing_ok=True)
                raise WorkbenchError(f"cannot write {target}: {e.strerror or e}") from None
        try:  # locked like a staged file until the commit is over
            fd = os.open(backup, os.O_RDONLY)
        except OSError:
            return backup
        self._held.append(fd)
        _lock(fd)
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
