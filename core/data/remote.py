"""A ``.npy`` image array on a remote filesystem (s3://, gcs://, http...), read by byte ranges.

A local shard is memory-mapped; a remote one used to be downloaded whole on open. :class:`RemoteNpy`
reads only the header on open and then only the rows asked for: a slice is one ranged read, an
index array one ranged read per run of neighbouring rows. So a dataset in an object store opens in
milliseconds and trains or probes in bounded memory (each batch crosses the network once)."""

from __future__ import annotations

from typing import Any

import numpy as np

from pretextflow.core.errors import DataError

MERGE_GAP = 8  # rows: two wanted runs closer than this are fetched as one read (fewer round trips)


def _header(fs, path: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) from the ``.npy`` header, refusing what is not a plain C array."""
    with fs.open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        offset = f.tell()
    if fortran or dtype.hasobject:
        raise ValueError(f"{'Fortran-ordered' if fortran else 'object'} arrays are not read")
    return tuple(int(x) for x in shape), dtype, offset


class RemoteNpy:
    """The rows of a remote ``.npy`` (see the module); ``head(n)`` is the first ``n`` rows, unread."""

    def __init__(self, fs, path: str, rows: int | None = None, header: tuple | None = None):
        self.fs, self.path = fs, path
        try:
            shape, self.dtype, self.offset = header or _header(fs, path)
        except (ValueError, EOFError, OSError) as exc:
            raise DataError(f"{path} is not a plain numeric .npy array ({exc})") from None
        self._full = shape
        self.shape = (shape[0] if rows is None else min(rows, shape[0]), *shape[1:])
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * self.dtype.itemsize

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def head(self, n: int) -> RemoteNpy:
        return RemoteNpy(self.fs, self.path, max(0, min(int(n), len(self))), (self._full, self.dtype, self.offset))

    def _read(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo:hi`` in one ranged read."""
        if hi <= lo:
            return np.empty((0, *self.shape[1:]), self.dtype)
        start = self.offset + lo * self.row_bytes
        data = self.fs.cat_file(self.path, start=start, end=start + (hi - lo) * self.row_bytes)
        if len(data) != (hi - lo) * self.row_bytes:
            raise DataError(f"{self.path} is truncated: rows {lo}:{hi} are not all there. Re-ingest it.")
        return np.frombuffer(data, dtype=self.dtype).reshape(hi - lo, *self.shape[1:])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self._read(0, len(self)).copy()
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key: Any):
        n = len(self)
        if isinstance(key, (int, np.integer)):
            i = int(key) + (n if key < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"index {key} out of range for {n} rows")
            return self._read(i, i + 1)[0]
        if isinstance(key, slice):
            lo, hi, step = key.indices(n)
            return self._read(lo, hi) if step == 1 else self[np.arange(lo, hi, step)]
        idx = np.asarray(key)
        idx = np.flatnonzero(idx) if idx.dtype == bool else np.where(idx < 0, idx + n, idx).astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"index out of range for {n} rows")
        return self._gather(idx.reshape(-1))

    def _gather(self, idx: np.ndarray) -> np.ndarray:
        """The rows ``idx`` (any order): one read per run of nearby rows, placed where asked."""
        out = np.empty((len(idx), *self.shape[1:]), self.dtype)
        if not len(idx):
            return out
        order = np.argsort(idx, kind="stable")
        rows = idx[order]
        breaks = np.flatnonzero(np.diff(rows) > MERGE_GAP) + 1
        for run in np.split(np.arange(len(rows)), breaks):
            lo, hi = int(rows[run[0]]), int(rows[run[-1]]) + 1
            block = self._read(lo, hi)
            out[order[run]] = block[rows[run] - lo]
        return out

    def __repr__(self) -> str:
        return f"RemoteNpy({self.path}, shape={self.shape}, dtype={self.dtype})"
