"""What the image-file formats (``imagefolder``, ``csv``) share: their common options, the stamp of
a listed file, fetching a chunk of files concurrently and decoding each with PIL, with the same
limits and messages everywhere.

Decoding is guarded: a file over :data:`MAX_FILE_BYTES` is refused when listed, an image over
:data:`MAX_PIXELS` (or one PIL takes for a decompression bomb) before its pixels are decoded. The
first image (by key) decides the channel count and the size when the options do not: ``scan``
reads its header and hands it to every reader as the option ``first_image`` (in
``SourceCatalog.read_options``), so workers decoding any chunk agree, and an image that differs
is named together with the first one.

Sizes: by default every image must be square and of the first image's size; ``image_size=N``
resizes each to N x N (squashing a non-square one); ``max_side=N`` keeps each image's aspect
ratio: it is resized so that its longer side is N and pasted, centred, on a zero N x N canvas,
its content's ``(h, w)`` given as the ``DecodedImage.extent`` (so mixed sizes and non-square
images are accepted)."""

from __future__ import annotations

import datetime
import hashlib
import io
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
from pydantic import Field, model_serializer

from pretextflow.api import DataError, DecodedImage, Params

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
MAX_PIXELS = 4096 * 4096  # larger images are refused instead of exhausting memory
MAX_FILE_BYTES = 256 * 2**20  # an image file larger than this is refused before it is read
HEADER_BYTES = 256 * 2**10  # what scan reads of the first image to learn its mode and size
# PIL modes without colour: mixing them with colour images needs an explicit `channels` choice
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
T = TypeVar("T")


class FirstImage(Params):
    """The first image of a source (by key), as ``scan`` found it."""

    path: str
    gray: bool | None = None  # None: `channels` was given, every image is converted to it
    width: int
    height: int


class ImageOptions(Params):
    """The options every image-file format has."""

    image_size: int | None = Field(
        None, gt=0, description="resize every image to this square size; None = all must match"
    )
    max_side: int | None = Field(
        None,
        gt=0,
        le=4096,
        description="keep each image's aspect ratio: resize it so that its longer side is this, centred "
        "on a zero square canvas of this size (its content's size is stored); None = all must match. "
        "Not with image_size",
    )
    channels: int | None = Field(None, description="1 (grayscale) or 3 (RGB); None = from the first image")
    read_concurrency: int = Field(
        32,
        ge=1,
        le=1024,
        description="files each reader fetches at once: 1 = one after the other; more overlaps the "
        "round trips of remote storage (s3://, https://). Changes how, never what, is read",
    )
    first_image: FirstImage | None = Field(None, description="set by the format's scan for its readers; leave it unset")

    @model_serializer(mode="wrap")
    def _without_unset_max_side(self, handler):
        """``max_side`` is left out while unset: the options recorded in meta.json (and compared
        by the next ingest) stay those of datasets ingested before the option existed."""
        data = handler(self)
        if isinstance(data, dict) and data.get("max_side") is None:
            data.pop("max_side", None)
        return data


IO_OPTIONS = frozenset({"read_concurrency"})


def check_channels(name: str, options: ImageOptions) -> None:
    if options.channels not in (None, 1, 3):
        raise DataError(
            f"{name}: channels must be 1 or 3, got {options.channels}. "
            f"Pass --option channels=1 (grayscale) or --option channels=3 (RGB)."
        )


def check_options(name: str, options: ImageOptions) -> None:
    """The checks of the options every image-file format makes before it reads anything."""
    check_channels(name, options)
    if options.image_size and options.max_side:
        raise DataError(
            f"{name}: image_size={options.image_size} and max_side={options.max_side} were both given; "
            f"choose one. Pass only --option image_size=N to resize every image to N x N (squashing "
            f"non-square ones), or only --option max_side=N to keep each image's aspect ratio on an "
            f"N x N canvas."
        )


def check_file_size(path: str, size: int | None) -> None:
    if (size or 0) > MAX_FILE_BYTES:
        raise DataError(
            f"{path}: {size} bytes is more than the {MAX_FILE_BYTES} byte limit for one "
            f"image. Downscale it first, or remove it."
        )


def remote_stamp(info: dict[str, Any]) -> str:
    """A listed remote file's stamp: its size and ETag (or modification time); "" (always read
    again) when the filesystem tells neither."""
    size = info.get("size")
    tag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("md5")
    if tag:
        return f"{size}-{str(tag).strip(chr(34))}"
    for k in ("LastModified", "last_modified", "mtime", "updated", "created"):
        when = info.get(k)
        if when:
            when = when.timestamp() if isinstance(when, datetime.datetime) else when
            return f"{size}-{when}"
    return ""


def hash_fraction(rel_path: str) -> float:
    """Where ``rel_path`` falls in [0, 1): below ``test_fraction`` = the test split. A function of
    the path only, so adding images never moves old ones between splits."""
    return int.from_bytes(hashlib.sha256(rel_path.encode()).digest()[:8], "big") / 2**64


# -- decoding ----------------------------------------------------------------------------------
def _guarded(raw: bytes, path: str, use: Callable[[Any], T]) -> T:
    """``use(image)`` on the opened (not yet decoded) image, with the size and bomb guards; a file
    that is no image is a DataError naming it."""
    from PIL import Image, UnidentifiedImageError

    if not raw:
        raise DataError(f"{path}: empty file (0 bytes). Remove it or replace it with a valid image.")
    try:
        with warnings.catch_warnings():
            # PIL's decompression-bomb guard warns first and raises at twice its limit; ours is lower
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise DataError(
                        f"{path}: {im.width}x{im.height} pixels is more than the limit of "
                        f"{MAX_PIXELS} (4096x4096). Downscale it first, or remove it."
                    )
                return use(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{path}: refused as a decompression bomb ({exc}). Downscale it first, or remove it.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        # from None: a broken file is not a transient I/O fault, so it must not be retried
        raise DataError(f"{path}: not a readable image ({exc}). Remove or replace it.") from None


def probe_first(fs, path: str, shown: str, options: ImageOptions) -> dict[str, Any]:
    """The read options a scan hands its readers: the first image's header (and, when
    ``channels`` was not given, the channel count it implies). Decodes no pixels, and reads only
    the file's first :data:`HEADER_BYTES` unless its header is longer (a JPEG with a large EXIF)."""

    def header(im) -> FirstImage:
        gray = im.mode in GRAY_MODES
        return FirstImage(path=shown, gray=None if options.channels else gray, width=im.width, height=im.height)

    try:
        with fs.open(path, "rb") as f:
            head = f.read(HEADER_BYTES)
    except FileNotFoundError:
        raise _gone(shown) from None
    try:
        first = _guarded(head, shown, header)
    except DataError as exc:
        if len(head) < HEADER_BYTES or "not a readable image" not in str(exc):
            raise  # that was the whole file, or the header was read and refused
        first = _guarded(_cat(fs, path), shown, header)
    channels = options.channels or (1 if first.gray else 3)
    return {"channels": channels, "first_image": first.model_dump()}


def decode_image(raw: bytes, path: str, options: ImageOptions) -> tuple[np.ndarray, tuple[int, int] | None]:
    """One file's bytes as uint8 (C, H, W), checked against the first image (see the module), and
    its extent: ``(h, w)`` of its content on the canvas with ``max_side``, else None."""
    from PIL import Image

    first = options.first_image

    def convert(im) -> np.ndarray:
        gray = im.mode in GRAY_MODES
        if first is not None and first.gray is not None and gray != first.gray:
            kinds = {True: "grayscale", False: "colour"}
            raise DataError(
                f"{path} is {kinds[gray]} but {first.path} is {kinds[first.gray]}: the source "
                f"mixes channel counts. Pass --option channels=1 (convert all to "
                f"grayscale) or --option channels=3 (convert all to RGB)."
            )
        channels = options.channels or (1 if gray else 3)
        im = im.convert("L" if channels == 1 else "RGB")
        if options.image_size:
            im = im.resize((options.image_size, options.image_size), Image.Resampling.BILINEAR)
        elif options.max_side:
            im = im.resize(fit_size(im.width, im.height, options.max_side), Image.Resampling.BILINEAR)
        return np.asarray(im, dtype=np.uint8)

    arr = _guarded(raw, path, convert)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    if options.max_side:
        return on_canvas(arr, options.max_side)
    if first is not None and not options.image_size and arr.shape[1:] != (first.height, first.width):
        raise DataError(
            f"{path}: size {arr.shape[1:]} differs from the first image's {(first.height, first.width)} "
            f"({first.path}). {SIZE_FIX}."
        )
    if arr.shape[1] != arr.shape[2]:
        raise DataError(f"{path}: images must be square ({arr.shape[1]}x{arr.shape[2]}). {SIZE_FIX}.")
    return np.ascontiguousarray(arr), None


SIZE_FIX = (
    "Pass --option image_size=N to resize every image to N x N, or --option max_side=N to keep each "
    "image's aspect ratio on an N x N canvas"
)


def fit_size(width: int, height: int, side: int) -> tuple[int, int]:
    """(width, height) scaled so that the longer side is ``side``; the shorter is rounded (half
    up, in integers: no float differs between machines) and at least 1 pixel."""
    long, short = max(width, height), min(width, height)
    scaled = max(1, (2 * short * side + long) // (2 * long))
    return (side, scaled) if width >= height else (scaled, side)


def on_canvas(arr: np.ndarray, side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """``arr`` (C, h, w) pasted, centred, on a zero (C, side, side) canvas; and (h, w)."""
    c, h, w = arr.shape
    canvas = np.zeros((c, side, side), np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    canvas[:, top : top + h, left : left + w] = arr
    return canvas, (int(h), int(w))


def decode_files(fs, paths: Sequence[str], options: ImageOptions) -> Iterator[DecodedImage]:
    """Fetch ``paths`` (on ``fs``) and decode each, in order: one image per path."""
    check_options("image files", options)
    for path, raw in zip(paths, fetch(fs, paths, options.read_concurrency), strict=True):
        image, extent = decode_image(raw, path, options)
        yield DecodedImage(image, hashlib.sha256(raw).hexdigest(), extent)


# -- fetching ----------------------------------------------------------------------------------
def fetch(fs, paths: Sequence[str], concurrency: int) -> Iterator[bytes]:
    """The bytes of each of ``paths``, in order, at most ``concurrency`` files in flight (so in
    memory) at once. An async filesystem (s3, http, gcs...) fetches a window of files in one
    concurrent batch (``cat_ranges``: unlike ``cat``, it keeps the order and expands no glob
    characters in file names); another remote one (sftp, smb...) uses a thread pool. A local disk
    and ``memory://`` read one file at a time: measured, threads only slow them down (their reads
    are memory copies, and ingest already decodes in one process per core)."""
    from fsspec.asyn import AsyncFileSystem

    if concurrency <= 1 or len(paths) <= 1 or isinstance(fs, _sequential_filesystems()):
        for p in paths:
            yield _cat(fs, p)
    elif isinstance(fs, AsyncFileSystem):
        for start in range(0, len(paths), concurrency):
            window = list(paths[start : start + concurrency])
            got = fs.cat_ranges(window, None, None, batch_size=concurrency, on_error="return")
            for p, data in zip(window, got, strict=True):
                yield _checked(p, data)
    else:
        yield from _threaded(fs, paths, concurrency)


def _sequential_filesystems() -> tuple[type, ...]:
    from fsspec.implementations.local import LocalFileSystem
    from fsspec.implementations.memory import MemoryFileSystem

    return (LocalFileSystem, MemoryFileSystem)


def _threaded(fs, paths: Sequence[str], concurrency: int) -> Iterator[bytes]:
    with ThreadPoolExecutor(min(concurrency, len(paths)), thread_name_prefix="pretextflow-fetch") as pool:
        pending: deque = deque()
        todo = iter(paths)
        for p in todo:
            pending.append(pool.submit(_cat, fs, p))
            if len(pending) >= concurrency:
                break
        while pending:
            data = pending.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(_cat, fs, nxt))
            yield data


def _cat(fs, path: str) -> bytes:
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        raise _gone(path) from None


def _checked(path: str, data: Any) -> bytes:
    if isinstance(data, FileNotFoundError):
        raise _gone(path) from None
    if isinstance(data, BaseException):
        raise data
    return data


def _gone(path: str) -> DataError:
    return DataError(
        f"{path}: the file is gone (it was listed when the source was scanned). Keep the source "
        f"unchanged while it is ingested, and ingest again."
    )
