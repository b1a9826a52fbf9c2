"""Reading sources through fsspec, and fetching the known public datasets with checksums.

Checksums are of the *uncompressed* payload (sha256), so a mirror that re-compresses the files
(Debian's ``dataset-fashion-mnist`` does) verifies as well as the official archives; the official
archives' own md5s are checked too when they are what was downloaded.
"""
from __future__ import annotations

import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from contextlib import contextmanager
from typing import IO, Any, Callable, Iterator

import fsspec

from pretextflow.core.errors import DataError, PretextflowError



def join_uri(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


def read_source_bytes(uri: str, storage_options: dict[str, Any] | None = None, max_bytes: int | None = None,
                      too_large_hint: str = "") -> bytes:
    """All bytes of one source file. Raises FileNotFoundError if absent, DataError if unreachable or
    larger than ``max_bytes`` (read no further than that: a bound on memory, whatever the file holds).
    Messages are redacted: a URI or a library's error may hold credentials (``https://user:pw@...``)."""
    def read(f) -> bytes:
        data = f.read() if max_bytes is None else f.read(max_bytes + 1)
        if max_bytes is not None and len(data) > max_bytes:
            raise DataError(f"{uri}: larger than {max_bytes} bytes; refused before reading it all. "
                            f"{too_large_hint}".rstrip())
        return data

    return _with_source(uri, storage_options, read)


def copy_source(uri: str, storage_options: dict[str, Any] | None, target: IO[bytes]) -> int:
    """Stream one source file into ``target`` in 1 MiB chunks (never all in memory); returns its size.
    Errors as read_source_bytes."""
    return _with_source(uri, storage_options, lambda f: _copy_chunks(f, target))


def _copy_chunks(f, target: IO[bytes]) -> int:
    size = 0
    while chunk := f.read(1 << 20):
        target.write(chunk)
        size += len(chunk)
    return size


def _with_source(uri: str, storage_options: dict[str, Any] | None, use: Callable[[Any], Any]) -> Any:
    from pretextflow.core.security.redaction import redact

    try:
        with fsspec.open(uri, "rb", **(storage_options or {})) as f:
            return use(f)
    except DataError:
        raise
    except FileNotFoundError as exc:
        cause = _network_cause(exc)  # fsspec's http reports a refused connection as "not found"
        if cause is None:
            raise
        raise _unreachable(f"{uri}: cannot reach the source ({cause.__class__.__name__}: {cause}). "
                           f"Check the URL and your network.") from None
    except ImportError as exc:
        raise DataError(redact(f"{uri}: reading this kind of URI needs an extra package ({exc}). "
                               f"For http(s): pip install 'pretextflow[http]'.")) from None
    except OSError as exc:
        if getattr(exc, "errno", None) == 2:
            raise FileNotFoundError(redact(uri)) from None
        raise _unreachable(f"{uri}: cannot read the source ({exc}). Check the path/URL and your network.") from None
    except Exception as exc:  # aiohttp's ClientError and friends: unreachable host
        if "404" in str(exc) or "Not Found" in str(exc):
            raise FileNotFoundError(redact(uri)) from None
        raise _unreachable(f"{uri}: cannot reach the source ({exc.__class__.__name__}: {exc}). "
                           f"Check the URL and your network.") from None


def gunzip_bounded(data: bytes, name: str, max_bytes: int, hint: str = "") -> bytes:
    """``gzip.decompress`` that stops at ``max_bytes`` of output: a 10 MB gzip bomb that expands to
    10 GB is refused after ``max_bytes``, not after exhausting the memory. Concatenated gzip
    members are joined, as gzip does."""
    out = bytearray()
    pending = data
    try:
        inflater = zlib.decompressobj(wbits=31)  # 31: gzip header and trailer (CRC, size) checked
        while pending:
            if inflater.eof:  # another gzip member follows
                inflater = zlib.decompressobj(wbits=31)
            out += inflater.decompress(pending, max_bytes + 1 - len(out))
            if len(out) > max_bytes:
                raise DataError(f"{name}: decompresses to more than {max_bytes} bytes; refused there (a gzip "
                                f"bomb or the wrong file). {hint}".rstrip())
            pending = inflater.unconsumed_tail or inflater.unused_data
        if not inflater.eof:
            raise EOFError("the compressed stream ends before its end marker")
    except (zlib.error, EOFError) as exc:
        raise DataError(f"{name}: corrupt or truncated gzip ({exc}). Re-download the file.") from None  # no retry
    return bytes(out)


def _unreachable(message: str) -> DataError:
    """A network or I/O failure: redacted (the URI or the library's message may hold credentials),
    and transient, so the stage is retried (flows.common.is_transient); not chained, for the same
    reason."""
    from pretextflow.core.security.redaction import redact

    err = DataError(redact(message))
    err.transient = True
    return err


def _network_cause(exc: BaseException) -> BaseException | None:
    """The connection failure behind ``exc``, if there is one in its chain."""
    cause = exc.__cause__ or exc.__context__
    while cause is not None:
        if isinstance(cause, (ConnectionError, TimeoutError)) or type(cause).__name__ in (
                "ClientConnectorError", "ClientOSError", "ServerDisconnectedError", "ServerTimeoutError"):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


# -- archive sources -----------------------------------------------------------------------------
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def is_archive(source: str) -> bool:
    return source.lower().rstrip("/").endswith(ARCHIVE_SUFFIXES)


@contextmanager
def local_source(source: str, storage_options: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yields ``(source, storage_options)`` for a dataset format to read. A ``.zip`` / ``.tar[.gz|.bz2|.xz]``
    source (any fsspec URI) is extracted into a temporary folder first, refusing unsafe members, and
    removed afterwards; when the archive holds a single folder, that folder is the source. Errors
    raised while reading name ``ARCHIVE!member`` instead of the temporary path."""
    if not is_archive(source):
        yield source, storage_options
        return
    from pretextflow.core.security.redaction import redact

    with tempfile.TemporaryDirectory(prefix="pretextflow-archive-") as tmp:
        extract_archive(source, storage_options, tmp)
        entries = [e for e in os.listdir(tmp) if e not in ("__MACOSX", ".DS_Store")]
        root = os.path.join(tmp, entries[0]) if len(entries) == 1 and os.path.isdir(os.path.join(tmp, entries[0])) else tmp
        try:
            yield root, {}
        except PretextflowError as exc:
            message = str(exc).replace(tmp + os.sep, redact(source) + "!").replace(tmp, redact(source))
            raise type(exc)(message) from None


def extract_archive(source: str, storage_options: dict[str, Any], dest: str) -> None:
    """Extract a zip or tar archive into ``dest`` after checking every member: no absolute path, no
    ``..``, no link that leaves ``dest``, no device file, and no more bytes than ``dest`` has room for.
    One unsafe member refuses the whole archive before anything is written."""
    from fsspec.implementations.local import LocalFileSystem

    from pretextflow.core.security.redaction import redact

    shown = redact(source)
    fs, path = fsspec.core.url_to_fs(source, **storage_options)
    try:
        if isinstance(fs, LocalFileSystem):  # read in place: a large archive is not loaded into memory
            fileobj: Any = open(path, "rb")
        else:  # streamed to an unnamed temporary file beside dest (the disk, not memory, holds it)
            fileobj = tempfile.TemporaryFile(dir=os.path.dirname(os.path.abspath(dest)))
            try:
                copy_source(source, storage_options, fileobj)
            except BaseException:
                fileobj.close()
                raise
    except FileNotFoundError:
        raise DataError(f"{shown}: no such archive. Check the path or URL.") from None
    except IsADirectoryError:
        raise DataError(f"{shown}: is a folder, not an archive. Drop the archive suffix from the name, or "
                        f"point the source at the archive file.") from None
    with fileobj:
        try:
            if zipfile.is_zipfile(fileobj):
                fileobj.seek(0)
                with zipfile.ZipFile(fileobj) as zf:
                    _check_zip(zf, shown, dest)
                    zf.extractall(dest)
            else:
                fileobj.seek(0)
                with tarfile.open(fileobj=fileobj, mode="r:*") as tf:
                    _check_tar(tf, shown, dest)
                    if hasattr(tarfile, "data_filter"):  # Python's own guard as a second line of defence
                        tf.extractall(dest, filter="data")
                    else:  # pragma: no cover - Python < 3.10.12: the members were checked above
                        tf.extractall(dest)
        except DataError:
            raise
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error, ValueError) as exc:
            raise DataError(f"{shown}: not a readable zip or tar archive ({exc.__class__.__name__}: {exc}). "
                            f"Re-download or re-create it.") from None


def _unsafe_name(name: str) -> str | None:
    n = name.replace("\\", "/")
    if n.startswith("/") or (len(n) > 1 and n[1] == ":"):
        return "has an absolute path"
    if ".." in n.split("/"):
        return "has a '..' component (it would be written outside the target folder)"
    return None


def _refuse(shown: str, member: str, reason: str) -> DataError:
    return DataError(f"{shown}: member {member!r} {reason}; the archive was refused and nothing was extracted. "
                     f"Re-create the archive with plain files under relative paths.")


def _check_space(shown: str, total: int, dest: str) -> None:
    free = shutil.disk_usage(dest).free
    if total > free:
        raise DataError(f"{shown}: extracts to {total} bytes but the temporary folder {dest} has {free} free. "
                        f"Free some space, set TMPDIR to a larger disk, or ingest the extracted folder.")


def _check_zip(zf: zipfile.ZipFile, shown: str, dest: str) -> None:
    total = 0
    for info in zf.infolist():
        reason = _unsafe_name(info.filename)
        mode = info.external_attr >> 16
        if reason is None and stat.S_ISLNK(mode):
            reason = "is a symlink (links are not extracted from zip archives)"
        elif reason is None and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            reason = "is not a regular file or folder"
        if reason:
            raise _refuse(shown, info.filename, reason)
        total += info.file_size
    _check_space(shown, total, dest)


def _check_tar(tf: tarfile.TarFile, shown: str, dest: str) -> None:
    total = 0
    for m in tf.getmembers():
        reason = _unsafe_name(m.name)
        if reason is None and (m.issym() or m.islnk()):
            # a symlink resolves from its own folder, a hard link from the archive's root
            base = os.path.dirname(m.name) if m.issym() else ""
            target = os.path.normpath(os.path.join(base, m.linkname))
            if os.path.isabs(m.linkname) or target == ".." or target.startswith("../"):
                reason = f"is a link to {m.linkname!r}, outside the archive"
        elif reason is None and not (m.isfile() or m.isdir()):
            reason = "is a device, FIFO or other special file"
        if reason:
            raise _refuse(shown, m.name, reason)
        total += m.size
    _check_space(shown, total, dest)
