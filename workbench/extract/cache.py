"""An on-disk cache of model outputs per image file, so a second run skips the interpreter.

Extraction is almost all of a run's time, and users run `imprint`, `backprop` and `evaluate`
on the same folder again and again. Entries are keyed by the model's content hash and the
preprocessing (one SQLite file per pair), then by each file's absolute path, size and mtime: a
changed image or model is simply a miss. Every entry carries a digest of its vector and key; an
entry that does not check out is ignored and rewritten, and a damaged database file is replaced.
SQLite gives atomic, concurrent-safe writes for free.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import sqlite3
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS outputs (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    vector BLOB NOT NULL,
    digest BLOB NOT NULL
)
"""
FORMAT = "workbench-cache-1"
LOOKUP_BATCH = 500
COLUMNS = ["path", "size", "mtime_ns", "vector", "digest"]
# How long to wait for another process's lock before running without the cache.
LOCK_WAIT_S = 5.0


def default_cache_dir() -> Path:
    """$WORKBENCH_CACHE_DIR, else the platform's user cache folder + /workbench."""
    explicit = os.environ.get("WORKBENCH_CACHE_DIR")
    if explicit:
        return Path(explicit)
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "workbench"


@dataclass(frozen=True)
class FileKey:
    path: str  # absolute
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str | Path) -> FileKey | None:
        """The file's key, or None (not cached) if it cannot be read or named in UTF-8.

        A linked image keys as the file it points to, so it shares that file's entry.
        """
        text = os.fspath(path)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return None
        try:
            # Joined, not normalized: a '..' after a linked folder is for the OS to follow.
            absolute, st = _resolved_file(os.path.join(os.getcwd(), text))
        except OSError:
            return None
        return cls(absolute, st.st_size, st.st_mtime_ns)


# Symbolic links followed in a row before a path counts as unreadable (as the OS's ELOOP).
MAX_LINKS = 40


def _resolved_file(absolute: str) -> tuple[str, os.stat_result]:
    """The real path of a file and its status, as `Path.resolve()` and `stat()` give them.

    Folders are resolved once each (cached): thousands of images share a few. A link is
    followed to its target, whose folder is resolved the same way, until a path is not a
    link; one `lstat` for an ordinary file, three for a linked one.
    """
    for _ in range(MAX_LINKS):
        st = os.lstat(absolute)
        folder, name = os.path.split(absolute)
        if name in ("", ".", ".."):  # a folder named by its own path: no shortcut
            real = str(Path(absolute).resolve())
            return real, os.stat(real)
        if not stat.S_ISLNK(st.st_mode):
            return os.path.join(_resolved_folder(folder), name), st
        # The target, its folder resolved; a target named by a folder's own path ("dir/",
        # "..") takes the branch above on the next turn.
        target_folder, target_name = os.path.split(os.readlink(absolute))
        absolute = os.path.join(
            _resolved_folder(os.path.join(_resolved_folder(folder), target_folder)), target_name
        )
    raise OSError(f"too many levels of symbolic links: {absolute}")


@functools.lru_cache(maxsize=4096)
def _resolved_folder(folder: str) -> str:
    return str(Path(folder).resolve())


def _digest(key: FileKey, vector: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{FORMAT}\0{key.path}\0{key.size}\0{key.mtime_ns}\0".encode())
    h.update(vector)
    return h.digest()


class OutputCache:
    """Cached outputs of one model with one preprocessing; see the module docstring."""

    def __init__(self, root: str | Path, model_sha256: str, prep_key: str, width: int) -> None:
        name = hashlib.sha256(f"{FORMAT}\0{model_sha256}\0{prep_key}".encode()).hexdigest()[:32]
        self.path = Path(root) / "outputs" / f"{name}.sqlite"
        self.width = width
        self.hits = 0
        self.misses = 0
        self.problem: str | None = None  # why the cache is not used, for the caller to say
        self._db: sqlite3.Connection | None = None
        self._tried = False

    def _connect(self) -> sqlite3.Connection | None:
        """The open database, or None (with `problem` set) when it cannot be used.

        A file that is not a cache database (damaged, truncated, another schema) is rebuilt;
        one locked by another process is waited for LOCK_WAIT_S, then left alone: "locked"
        is not "damaged". Anything in the way that is not a file (a folder) is left too.
        """
        if self._db is not None or self._tried:
            return self._db
        self._tried = True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            self.problem = f"cannot create {self.path.parent} ({e.strerror or e})"
            return None
        if self.path.exists() and not self.path.is_file():
            self.problem = f"{self.path} is not a file"
            return None
        for attempt in range(2):
            try:
                db = sqlite3.connect(self.path, timeout=LOCK_WAIT_S)
                self._check_schema(db)
                self._db = db
                return db
            except sqlite3.OperationalError as e:
                if "locked" in str(e) or "busy" in str(e):
                    self.problem = f"{self.path} is locked by another process"
                    return None
                if attempt == 0:
                    self._discard()
            except sqlite3.DatabaseError:
                if attempt == 0:
                    self._discard()  # not a database (damaged, truncated): start afresh
            except OSError as e:
                self.problem = f"cannot open {self.path} ({e.strerror or e})"
                return None
        self.problem = f"cannot use {self.path}"
        return None

    @staticmethod
    def _check_schema(db: sqlite3.Connection) -> None:
        """Create the table, or rebuild it if a table of that name has other columns."""
        db.execute(SCHEMA)
        columns = [row[1] for row in db.execute("PRAGMA table_info(outputs)")]
        if columns != COLUMNS:
            with db:
                db.execute("DROP TABLE outputs")
                db.execute(SCHEMA)
        db.commit()

    def _discard(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)

    def fill(
        self, paths: Sequence[str | Path], vectors: np.ndarray
    ) -> tuple[np.ndarray, list[FileKey | None]]:
        """Write cached outputs into `vectors` [len(paths), width]; which rows were found.

        Rows are read in batches and copied straight into place, so a warm run over thousands
        of images holds no per-image objects. Also returns each file's key (None if
        unreadable), for storing the outputs computed for the rest.
        """
        keys = [FileKey.of(p) for p in paths]
        found = np.zeros(len(paths), bool)
        db = self._connect()
        if db is not None:
            wanted = {key.path: i for i, key in enumerate(keys) if key is not None}
            names = list(wanted)
            for start in range(0, len(names), LOOKUP_BATCH):
                try:
                    rows = self._rows(db, names[start : start + LOOKUP_BATCH])
                except sqlite3.DatabaseError:
                    break
                for path, size, mtime_ns, vector, digest in rows:
                    index = wanted[path]
                    key = keys[index]
                    assert key is not None
                    if (size, mtime_ns) != (key.size, key.mtime_ns):
                        continue  # the file changed since it was cached
                    if len(vector) != 4 * self.width or _digest(key, vector) != digest:
                        continue  # damaged entry: never trusted, recomputed and rewritten
                    vectors[index] = np.frombuffer(vector, dtype="<f4")
                    found[index] = True
        hits = int(found.sum())
        self.hits += hits
        self.misses += len(paths) - hits
        return found, keys

    @staticmethod
    def _rows(db: sqlite3.Connection, paths: list[str]) -> list[tuple]:
        """The entries for these paths (at most LOOKUP_BATCH: SQLite limits parameters)."""
        marks = ",".join("?" * len(paths))
        return db.execute(
            f"SELECT path, size, mtime_ns, vector, digest FROM outputs WHERE path IN ({marks})",
            paths,
        ).fetchall()

    def store(self, entries: Sequence[tuple[FileKey, np.ndarray]]) -> None:
        db = self._connect()
        if db is None or not entries:
            return
        rows = []
        for key, vector in entries:
            raw = np.ascontiguousarray(vector, dtype="<f4").tobytes()
            rows.append((key.path, key.size, key.mtime_ns, raw, _digest(key, raw)))
        try:
            with db:
                db.executemany("INSERT OR REPLACE INTO outputs VALUES (?, ?, ?, ?, ?)", rows)
        except sqlite3.DatabaseError:
            pass  # a cache that cannot be written only costs the next run time

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
