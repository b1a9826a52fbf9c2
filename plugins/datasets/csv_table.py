"""``csv``: a table of image files, a ``.csv`` (or ``.tsv``) or a ``.parquet`` file (by extension;
Parquet needs pyarrow), with the columns ``path``, ``label`` and optionally ``split`` and ``sha256``.

  path     the image file: relative to the table's folder, or any fsspec URI (``s3://...``). A
           table that is itself remote may not name local files.
  label    the class name; empty = unlabeled (-1). Class names are sorted (numerically when every
           label is an integer), or given in order with the option ``class_names`` (a label may
           then also be the class's index).
  split    ``train`` or ``test``; empty (or no column) = the path-hash split of ``imagefolder``
           (``test_fraction``), except that unlabeled images without a split are always trained on.
  sha256   the file's sha256: its stamp (an unchanged hash is never read again) and checked when
           it is read; without it the stamp is size + mtime (local) or size + ETag (remote).

Keys are the paths as written in the table. ``scan`` reads the table, checks every row (each file
must exist: a row naming a missing one is refused, with its row number, before anything is
decoded) and reads the first image's header; decoding is ``imagefolder``'s. Rows are numbered
from 1, the header not counted. ``storage_options`` are for the table's filesystem; files on
another one get ``storage_options[<protocol>]`` when that is a mapping (``{"s3": {...}}``)."""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import groupby
from typing import Any

import fsspec
from pydantic import Field

from pretextflow.api import (
    DataError,
    DatasetFormat,
    DecodedImage,
    SourceCatalog,
    SourceEntry,
    hookimpl,
    read_source_bytes,
)

from .image_files import (
    IO_OPTIONS,
    ImageOptions,
    check_file_size,
    check_options,
    decode_files,
    hash_fraction,
    probe_first,
    remote_stamp,
)

MAX_TABLE_BYTES = 1 << 30
_PROTOCOLS = frozenset(fsspec.available_protocols())
SHA256 = re.compile(r"[0-9a-f]{64}")
COLUMNS = ("path", "label", "split", "sha256")


class CsvOptions(ImageOptions):
    class_names: list[str] | None = Field(
        None, description="the class names in label order; default: the labels found, sorted"
    )
    test_fraction: float = Field(0.2, ge=0, lt=1, description="hash-split fraction for rows without a split")


@dataclass
class Row:
    """One row of the table, as written (``n`` counts from 1, the header not counted)."""

    n: int
    path: str
    label: str
    split: str
    sha256: str


class CsvFormat(DatasetFormat):
    name = "csv"
    description = "a CSV or Parquet table of image files: path, label[, split][, sha256]"
    Options = CsvOptions
    io_options = IO_OPTIONS

    def scan(self, source: str, options: CsvOptions, storage_options: dict[str, Any]) -> SourceCatalog:
        check_options("csv", options)
        table = _Table(source, storage_options)
        rows = table.rows()
        if not rows:
            raise DataError(f"{source}: the table has no rows: the dataset would be empty. Add a row per image.")
        classes, labels = _classes(rows, options, source)
        stamps = table.stamps(rows, options.read_concurrency)
        entries = [
            SourceEntry(r.path, _split(r, label, options), label, stamp, table.location(r.path))
            for r, label, stamp in zip(rows, labels, stamps, strict=True)
        ]
        first = min(entries, key=lambda e: e.key)
        fs, path = table.fs_path(first.location)
        return SourceCatalog(classes, entries, read_options=probe_first(fs, path, first.location, options))

    def read(
        self,
        source: str,
        entries: Sequence[SourceEntry],
        options: CsvOptions,
        storage_options: dict[str, Any],
    ) -> Iterator[DecodedImage]:
        table = _Table(source, storage_options)
        located = [(e, *table.fs_path(e.location)) for e in entries]
        for _, run in groupby(located, key=lambda x: id(x[1])):
            group = list(run)
            chunk = [e for e, _, _ in group]
            decoded = decode_files(group[0][1], [p for *_, p in group], options)
            for entry, item in zip(chunk, decoded, strict=True):
                if SHA256.fullmatch(entry.stamp) and item.sha256 != entry.stamp:
                    raise DataError(
                        f"{entry.location}: its sha256 is {item.sha256}, the table's sha256 column says "
                        f"{entry.stamp}. Correct the column (or the file), then ingest again."
                    )
                yield item


class _Table:
    """The table file: where it is, its rows, and where the files it names are."""

    def __init__(self, source: str, storage_options: dict[str, Any]) -> None:
        self.source, self.so = source, storage_options
        self.fs, self.path = fsspec.core.url_to_fs(source, **self._own_options())
        self.local = _is_local(self.fs)
        parent = self.fs._parent(self.path)
        self.base = os.path.abspath(parent) if self.local else self.fs.unstrip_protocol(parent)
        self._fs: dict[str, Any] = {}

    def _own_options(self) -> dict[str, Any]:
        """The storage options without the per-protocol ones (``{"s3": {...}}``)."""
        return {k: v for k, v in self.so.items() if not (isinstance(v, dict) and k in _PROTOCOLS)}

    def rows(self) -> list[Row]:
        ext = self.source.lower().rsplit(".", 1)[-1] if "." in self.source else ""
        if ext not in ("csv", "tsv", "parquet", "pq"):
            raise DataError(
                f"{self.source}: a csv source is a .csv, .tsv or .parquet file (by its extension). "
                f"Rename the table, or use the format that reads this kind of source."
            )
        try:
            raw = read_source_bytes(self.source, self._own_options(), MAX_TABLE_BYTES)
        except FileNotFoundError:
            raise DataError(f"{self.source}: no such table. Check the path.") from None
        records = (
            _parquet_records(raw, self.source) if ext in ("parquet", "pq") else _csv_records(raw, ext, self.source)
        )
        return _check_rows(records, self.source, self.local)

    def location(self, path: str) -> str:
        """Where a table's path is: a URI as written, else relative to the table's folder."""
        if "://" in path or "::" in path or (self.local and os.path.isabs(path)):
            return path
        if self.local:
            return os.path.normpath(os.path.join(self.base, path))
        return self.base.rstrip("/") + "/" + path

    def fs_path(self, location: str) -> tuple[Any, str]:
        """(filesystem, path on it) of a location; one filesystem object per protocol."""
        if self.local and "://" not in location and "::" not in location:
            return self.fs, location
        protocol = location.split("://", 1)[0] if "://" in location else "file"
        opts = self.so.get(protocol) if protocol in _PROTOCOLS and isinstance(self.so.get(protocol), dict) else None
        if opts is None:
            opts = self._own_options() if protocol in _protocols(self.fs) else {}
        fs, path = fsspec.core.url_to_fs(location, **opts)
        return self._fs.setdefault(f"{protocol}:{type(fs).__name__}", fs), path

    def stamps(self, rows: list[Row], concurrency: int) -> list[str]:
        """Each row's stamp (its sha256 when the table gives one); a missing file is refused.
        Remote files are asked about ``concurrency`` at a time; local ones one by one (a ``stat``
        is fast, and threads would only add overhead)."""
        located = [(r, self.location(r.path)) for r in rows]
        if all(_is_local(self.fs_path(loc)[0]) for _, loc in located):
            return [self._stamp(r, loc) for r, loc in located]
        with ThreadPoolExecutor(max(1, min(concurrency, 64)), thread_name_prefix="pretextflow-info") as pool:
            return list(pool.map(lambda item: self._stamp(*item), located))

    def _stamp(self, row: Row, location: str) -> str:
        fs, path = self.fs_path(location)
        try:
            if _is_local(fs):
                st = os.stat(path)
                info = {"size": st.st_size, "type": "directory" if os.path.isdir(path) else "file"}
                found = f"{st.st_size}-{st.st_mtime_ns}"
            else:
                info = fs.info(path)
                found = remote_stamp(info)
        except FileNotFoundError:
            raise _missing(self.source, row, location) from None
        if info.get("type") not in ("file", None):
            raise _missing(self.source, row, location, "is a folder, not an image file")
        check_file_size(location, info.get("size"))
        return row.sha256 or found


def _is_local(fs) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def _protocols(fs) -> tuple[str, ...]:
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)


def _missing(table: str, row: Row, location: str, what: str = "does not exist") -> DataError:
    return DataError(
        f"{table} row {row.n}: {row.path} {what} (looked for {location}). Fix the path in the table "
        f"(a relative path is relative to the table's folder), or remove the row."
    )


def _csv_records(raw: bytes, ext: str, source: str) -> list[dict[str, Any]]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{source}: not a UTF-8 text file ({exc}). Save the table as UTF-8 CSV.") from None
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if ext == "tsv" else ",")
    try:
        _check_columns([c.strip() for c in reader.fieldnames or []], source)
        return [{(k or "").strip(): v for k, v in rec.items()} for rec in reader]
    except csv.Error as exc:
        raise DataError(f"{source}: not a readable CSV table ({exc}). Fix the file.") from None


def _parquet_records(raw: bytes, source: str) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"{source}: reading a Parquet table needs pyarrow, which is not installed. Run "
            f"`pip install pyarrow` (or `pip install pretextflow[parquet]`), or save the table as CSV."
        ) from None
    try:
        table = pq.read_table(io.BytesIO(raw))
    except Exception as exc:  # pyarrow's errors are its own classes
        raise DataError(f"{source}: not a readable Parquet file ({exc}). Re-create the table.") from None
    _check_columns(table.column_names, source)
    return table.select([c for c in COLUMNS if c in table.column_names]).to_pylist()


def _check_columns(columns: list[str], source: str) -> None:
    missing = [c for c in ("path", "label") if c not in columns]
    if missing:
        raise DataError(
            f"{source}: the table has no column {' or '.join(repr(c) for c in missing)} (its columns: "
            f"{', '.join(map(repr, columns)) or 'none'}). Name the columns path, label[, split][, sha256]."
        )


def _cell(value: Any) -> str:
    """A table cell as text: None (a Parquet null, a short CSV row) is empty; 3.0 is "3"."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if value != value else (str(int(value)) if value.is_integer() else str(value))
    return str(value).strip()


def _check_rows(records: list[dict[str, Any]], source: str, local_table: bool) -> list[Row]:
    rows, seen = [], {}
    for n, rec in enumerate(records, 1):
        row = Row(n, *(_cell(rec.get(c)) for c in COLUMNS))
        row.split, row.sha256 = row.split.lower(), row.sha256.lower()
        if not row.path:
            raise DataError(f"{source} row {n}: the path is empty. Give every row the image file's path.")
        if row.path in seen:
            raise DataError(f"{source} rows {seen[row.path]} and {n} both name {row.path}. Every image needs one row.")
        if not local_table and row.path.startswith(("/", "file:", "local:")):
            raise DataError(
                f"{source} row {n}: {row.path} is a local file, and the table is not: a remote table may "
                f"only name remote files. Make the path relative to the table, or a remote URI."
            )
        if row.split not in ("", "train", "test"):
            raise DataError(f"{source} row {n}: split {row.split!r}; use train, test or leave it empty.")
        if row.sha256 and not SHA256.fullmatch(row.sha256):
            raise DataError(f"{source} row {n}: {row.sha256!r} is not a sha256 (64 hex digits); fix or empty it.")
        seen[row.path] = n
        rows.append(row)
    return rows


def _classes(rows: list[Row], options: CsvOptions, source: str) -> tuple[list[str], list[int]]:
    """The class names, and each row's label index (-1 = unlabeled)."""
    found = {r.label for r in rows if r.label}
    if options.class_names is not None:
        names = list(options.class_names)
    elif all(re.fullmatch(r"-?\d+", x) for x in found):
        names = sorted(found, key=int)
    else:
        names = sorted(found)
    index = {name: i for i, name in enumerate(names)}
    labels = []
    for r in rows:
        if not r.label:
            labels.append(-1)
        elif r.label in index:
            labels.append(index[r.label])
        elif options.class_names is not None and r.label.isdigit() and int(r.label) < len(names):
            labels.append(int(r.label))
        else:
            raise DataError(
                f"{source} row {r.n}: label {r.label!r} is not one of the class names given "
                f"({', '.join(names)}). Add it to --option class_names, or fix the label."
            )
    return names, labels


def _split(row: Row, label: int, options: CsvOptions) -> str:
    if row.split:
        return row.split
    if label < 0:
        return "train"  # an unlabeled image is for pretraining; a test split measures with labels
    return "test" if hash_fraction(row.path) < options.test_fraction else "train"


@hookimpl
def pretextflow_dataset_formats():
    return [CsvFormat]
