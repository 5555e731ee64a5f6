"""Per-step numbers of an episode as append-only column files.

Format: one raw little-endian float64 file per column (`steps/state.f8`: N rows x 14 values, row
major), grouped by rate: `steps/` at the control rate (t, state, action, leader, follower and any
extra column), `frames/<camera>.f8` with each camera's frame timestamps at its own rate. A
`columns.json` manifest, written and fsynced before the first row, names the columns, their widths
and the joint names.

Why this form and not parquet/HDF5/npz:
- Appending is a plain `write()` of a contiguous chunk at the end of a file: cheap in a 50 Hz loop
  (rows are buffered in memory and written by a writer thread about once a second, no fsync until
  the episode finishes) and nothing is rewritten at finish, so finalising costs one fsync per file.
- A crash can only cut files short. A reader takes the longest prefix of whole rows common to all
  columns of a group, so a `kill -9` loses at most the rows not yet flushed (about one second) and
  never corrupts earlier rows. A parquet or npz file is unreadable until its footer is written.
- Readers memory-map or read a file straight into an (N, width) numpy array: random access for the
  training dataset without decoding. float64 keeps monotonic timestamps exact to the microsecond over
  days of uptime; for 14-d joints at 50 Hz that is ~5.6 kB/s per column, small next to video.
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path

import numpy as np

FORMAT = "xr0-columns/1"
MANIFEST = "columns.json"
DTYPE = np.dtype("<f8")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$")


def check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(
            f"{what} name {name!r} is not usable as a file name: use letters, digits, '_' or '-' "
            f"(at most 64, starting with a letter or digit)"
        )
    return name


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(folder: Path, manifest: dict) -> None:
    """Write columns.json atomically (temp file, fsync, rename, fsync the folder)."""
    tmp = folder / (MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"format": FORMAT, **manifest}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / MANIFEST)
    fsync_dir(folder)


def read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is corrupt ({e})") from None
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def column_path(folder: Path, group: str, column: str) -> Path:
    return folder / group / f"{column}.f8"


class ColumnGroup:
    """Append-only writer of the columns of one group (all rows of a group have the same length).

    `append(row)` only stores the row in memory; `flush()` writes everything pending with one
    write per column and may run on another thread. `sync()` flushes and fsyncs.
    """

    def __init__(self, folder: Path, group: str, widths: dict[str, int], opener=open):
        self.group = group
        self.widths = dict(widths)
        (folder / group).mkdir(parents=True, exist_ok=True)
        self.paths = {c: column_path(folder, group, c) for c in widths}
        self._files = {c: opener(p, "ab", buffering=0) for c, p in self.paths.items()}
        self._pending: list[dict[str, np.ndarray]] = []
        self._lock = threading.Lock()
        self._io_lock = threading.Lock()
        self.rows_written = 0
        self.rows = 0  # appended so far, written or not


    @property
    def pending(self) -> int:
        return len(self._pending)

    def append(self, row: dict[str, np.ndarray]) -> None:
        with self._lock:
            self._pending.append(row)
            self.rows += 1

    def flush(self) -> None:
        with self._io_lock:
            with self._lock:
                rows, self._pending = self._pending, []
            if not rows:
                return
            try:
                for c, f in self._files.items():
                    block = np.ascontiguousarray(
                        np.stack([r[c] for r in rows]).astype(DTYPE, copy=False))
                    data = memoryview(block).cast("B")
                    while data:  # raw files may write short
                        n = f.write(data)
                        data = data[n:]
            except BaseException:
                with self._lock:  # keep them, so the caller can tell what was not written
                    self._pending = rows + self._pending
                raise
            self.rows_written += len(rows)

    def sync(self) -> None:
        self.flush()
        for f in self._files.values():
            os.fsync(f.fileno())

    def close(self) -> None:
        for f in self._files.values():
            try:
                f.close()
            except OSError:
                pass


def read_group(folder: Path, group: str, widths: dict[str, int], rows: int | None = None
               ) -> dict[str, np.ndarray]:
    """Read one group's columns as (N, width) arrays (1-wide columns as (N,)).

    With `rows` (a finished episode) every file must hold exactly that many rows; without it (a
    crashed recording) the longest prefix of whole rows common to every column is returned.
    Raises ValueError naming the file and the problem.
    """
    sizes = {}
    for c, w in widths.items():
        path = column_path(folder, group, c)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise ValueError(f"{path} is missing") from None
        row_bytes = w * DTYPE.itemsize
        if rows is not None and size != rows * row_bytes:
            raise ValueError(
                f"{path} holds {size} bytes, expected {rows * row_bytes} for {rows} rows of {w} "
                f"values (truncated or corrupt)")
        sizes[c] = size // row_bytes
    n = min(sizes.values()) if sizes else 0
    out = {}
    for c, w in widths.items():
        path = column_path(folder, group, c)
        a = np.fromfile(path, dtype=DTYPE, count=n * w).reshape(n, w)
        out[c] = a[:, 0] if w == 1 else a
    return out


def truncate_group(folder: Path, group: str, widths: dict[str, int], rows: int) -> None:
    """Cut every column of a group to `rows` whole rows and fsync (recovery of a crashed episode)."""
    for c, w in widths.items():
        path = column_path(folder, group, c)
        with open(path, "r+b") as f:
            f.truncate(rows * w * DTYPE.itemsize)
            f.flush()
            os.fsync(f.fileno())
