"""``imagefolder``: PNG/JPEG files below a folder, read through fsspec.

Layouts, decided by what is there:
  SOURCE/train/<class>/*.png + SOURCE/test/<class>/*.png   explicit splits
  SOURCE/<class>/*.png                                      labelled; test split by file-name hash
  SOURCE/*.png                                              unlabeled (label -1); test split by hash
The hash split is a function of each file's relative path only: adding files never moves old ones
between splits, and the same folder always gives the same dataset."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from typing import Any

import fsspec
import numpy as np
from pydantic import Field

from pretextflow.api import DataError, DatasetArrays, DatasetFormat, Params, hookimpl

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
MAX_PIXELS = 4096 * 4096  # larger images are refused instead of exhausting memory
MAX_FILE_BYTES = 256 * 2**20  # an image file larger than this is refused before it is read
# PIL modes without colour: mixing them with colour images needs an explicit `channels` choice
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


class ImageFolderOptions(Params):
    image_size: int | None = Field(
        None, gt=0, description="resize every image to this square size; None = all must match"
    )
    channels: int | None = Field(None, description="1 (grayscale) or 3 (RGB); None = from the first image")
    test_fraction: float = Field(0.2, ge=0, lt=1, description="hash-split fraction when there is no test/ folder")


class ImageFolderFormat(DatasetFormat):
    name = "imagefolder"
    description = "image files in class sub-folders (or none: unlabeled), optional train/ and test/"
    Options = ImageFolderOptions

    def read(self, source: str, options: ImageFolderOptions, storage_options: dict[str, Any]) -> DatasetArrays:
        if options.channels not in (None, 1, 3):
            raise DataError(
                f"imagefolder: channels must be 1 or 3, got {options.channels}. "
                f"Pass --option channels=1 (grayscale) or --option channels=3 (RGB)."
            )
        fs, root = fsspec.core.url_to_fs(source, **storage_options)
        if not fs.isdir(root):
            raise DataError(
                f"{source}: not a folder. An imagefolder source is a folder of images "
                f"(or a .zip / .tar[.gz] archive of one)."
            )
        files = _image_files(fs, root)
        if not files:
            raise DataError(
                f"{source}: no image files ({', '.join(EXTENSIONS)}) found: the dataset would be empty. "
                f"Point the source at the folder that holds the images or their class folders."
            )
        rel = [p[len(root.rstrip("/")) + 1 :] for p in files]
        explicit = all(r.split("/", 1)[0] in ("train", "test") for r in rel)
        entries = []  # (split, class or None, path)
        for path, r in zip(files, rel, strict=False):
            parts = r.split("/")
            if explicit:
                split, parts = parts[0], parts[1:]
            else:
                split = "test" if _hash_fraction(r) < options.test_fraction else "train"
            cls = parts[0] if len(parts) > 1 else None
            entries.append((split, cls, path))
        labelled = {c for _, c, _ in entries if c is not None}
        if labelled and any(c is None for _, c, _ in entries):
            loose = next(p for _, c, p in entries if c is None)
            raise DataError(
                f"{source}: mixes images in class folders with loose images (e.g. {loose}). "
                f"Put every image in a class folder, or none (unlabeled)."
            )
        classes = sorted(labelled)
        index = {c: i for i, c in enumerate(classes)}
        images, digests = self._load_all(fs, root, entries, options)
        out: dict[str, list] = {"train_images": [], "train_labels": [], "test_images": [], "test_labels": []}
        for (split, cls, _), img in zip(entries, images, strict=False):
            out[f"{split}_images"].append(img)
            out[f"{split}_labels"].append(index[cls] if cls is not None else -1)
        shape = images[0].shape
        arrays = {
            k: (np.stack(v) if v and k.endswith("images") else np.asarray(v, dtype=np.int64)) for k, v in out.items()
        }
        for k in ("train_images", "test_images"):
            if arrays[k].size == 0:
                arrays[k] = np.zeros((0, *shape), dtype=np.uint8)
        return DatasetArrays(class_names=classes, source_files=digests, **arrays)

    def _load_all(self, fs, root: str, entries, options: ImageFolderOptions):
        from PIL import Image, UnidentifiedImageError

        images, digests, channels, size = [], {}, options.channels, None
        first: tuple[str, bool] | None = None  # (path, is gray) of the first image, when channels is not given
        for _, _, path in entries:
            rel = path[len(root.rstrip("/")) + 1 :]
            raw = fs.cat_file(path)
            if not raw:
                raise DataError(f"{path}: empty file (0 bytes). Remove it or replace it with a valid image.")
            digests[rel] = hashlib.sha256(raw).hexdigest()
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
                        gray = im.mode in GRAY_MODES
                        if channels is None and first is None:
                            first = (path, gray)
                        elif options.channels is None and gray != first[1]:
                            kinds = {True: "grayscale", False: "colour"}
                            raise DataError(
                                f"{path} is {kinds[gray]} but {first[0]} is {kinds[first[1]]}: the folder "
                                f"mixes channel counts. Pass --option channels=1 (convert all to "
                                f"grayscale) or --option channels=3 (convert all to RGB)."
                            )
                        if channels is None:
                            channels = 1 if gray else 3
                        im = im.convert("L" if channels == 1 else "RGB")
                        if options.image_size:
                            im = im.resize((options.image_size, options.image_size), Image.Resampling.BILINEAR)
                        arr = np.asarray(im, dtype=np.uint8)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise DataError(
                    f"{path}: refused as a decompression bomb ({exc}). Downscale it first, or remove it."
                ) from None
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
                # from None: a broken file is not a transient I/O fault, so it must not be retried
                raise DataError(f"{path}: not a readable image ({exc}). Remove or replace it.") from None
            arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
            if size is None:
                size = arr.shape
            elif arr.shape != size:
                raise DataError(
                    f"{path}: size {arr.shape[1:]} differs from the first image's {size[1:]}. "
                    f"Pass --option image_size=N to resize every image to N x N."
                )
            if arr.shape[1] != arr.shape[2]:
                raise DataError(
                    f"{path}: images must be square ({arr.shape[1]}x{arr.shape[2]}). "
                    f"Pass --option image_size=N to resize to N x N."
                )
            images.append(arr)
        return images, digests


def _image_files(fs, root: str) -> list[str]:
    """The image files below ``root``, sorted. On a local disk a symlink is read only when it
    resolves inside the source: one pointing elsewhere (``/etc/...``, another dataset) is refused,
    naming it, before anything is read. Symlinked folders are not descended into."""
    from fsspec.implementations.local import LocalFileSystem

    local = isinstance(fs, LocalFileSystem)
    real_root = os.path.realpath(root) if local else root
    out = []
    for path, info in fs.find(root, detail=True).items():
        is_image = path.lower().endswith(EXTENSIONS)
        if local and (info.get("islink") or os.path.realpath(path) != os.path.abspath(path)):
            target = os.path.realpath(path)
            if not (is_image or os.path.isdir(target)):
                continue  # a link to some other file (a README...): never read
            if os.path.commonpath([real_root, target]) != real_root:
                raise DataError(
                    f"{path} is a symlink to {target}, outside the source {root}; it was not read. "
                    f"Copy the {'folder' if os.path.isdir(target) else 'file'} into the source folder, "
                    f"or remove the link."
                )
            if not os.path.isfile(target):
                continue  # a link to a folder inside the source: its images are listed where they are
        elif not is_image:
            continue
        elif info.get("type") not in ("file", None):
            raise DataError(f"{path}: not a regular file ({info.get('type')}). Remove it from the source.")
        if (info.get("size") or 0) > MAX_FILE_BYTES:
            raise DataError(
                f"{path}: {info['size']} bytes is more than the {MAX_FILE_BYTES} byte limit for one "
                f"image. Downscale it first, or remove it."
            )
        out.append(path)
    return sorted(out)


def _hash_fraction(rel_path: str) -> float:
    return int.from_bytes(hashlib.sha256(rel_path.encode()).digest()[:8], "big") / 2**64


@hookimpl
def pretextflow_dataset_formats():
    return [ImageFolderFormat]
