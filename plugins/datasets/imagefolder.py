"""``imagefolder``: PNG/JPEG files below a folder, read through fsspec.

Layouts, decided by what is there:
  SOURCE/train/<class>/*.png + SOURCE/test/<class>/*.png   explicit splits
  SOURCE/<class>/*.png                                      labelled; test split by file-name hash
  SOURCE/*.png                                              unlabeled (label -1); test split by hash
  SOURCE/unlabeled/**.png (or SOURCE/train/unlabeled/)      unlabeled (label -1), always in train,
                                                            beside the class folders (unlabeled_dir)
The hash split is a function of each file's relative path only: adding files never moves old ones
between splits, and the same folder always gives the same dataset.

``scan`` lists the files (on a local disk with ``os.scandir`` and one ``stat`` per file: a folder of
200,000 images costs little memory) and reads the first image's header; ``read`` fetches a chunk's
files ``read_concurrency`` at a time and decodes them with PIL. Keys are the paths relative to the
source; stamps are size + mtime (local) or size + ETag / modification time (remote)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import fsspec
from pydantic import Field

from pretextflow.api import DataError, DatasetFormat, DecodedImage, SourceCatalog, SourceEntry, hookimpl

from .image_files import (
    EXTENSIONS,
    IO_OPTIONS,
    ImageOptions,
    check_file_size,
    check_options,
    decode_files,
    hash_fraction,
    probe_first,
    remote_stamp,
)

SPLITS = ("train", "test")


class ImageFolderOptions(ImageOptions):
    test_fraction: float = Field(0.2, ge=0, lt=1, description="hash-split fraction when there is no test/ folder")
    unlabeled_dir: str | None = Field(
        "unlabeled",
        min_length=1,
        description="images in this folder (at the top, or under train/) are unlabeled and always "
        "in the training split: pretraining uses them, probes do not; None = no such folder",
    )


class ImageFolderFormat(DatasetFormat):
    name = "imagefolder"
    description = "image files in class sub-folders (or none: unlabeled), optional train/ and test/"
    Options = ImageFolderOptions
    io_options = IO_OPTIONS

    def scan(self, source: str, options: ImageFolderOptions, storage_options: dict[str, Any]) -> SourceCatalog:
        check_options("imagefolder", options)
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
        places = _places([rel for rel, _ in files], options, source)
        classes = sorted({c for _, c in places if c})
        index = {c: i for i, c in enumerate(classes)}
        # no location: it is always ROOT/key (read() joins them), and at 10^5-10^7 images one full
        # path string per entry is the largest part of an ingest's memory
        entries = [
            SourceEntry(rel, split, index[cls] if cls else -1, stamp)
            for (rel, stamp), (split, cls) in zip(files, places, strict=True)
        ]
        first = _join(root, files[0][0])
        return SourceCatalog(classes, entries, read_options=probe_first(fs, first, first, options))

    def read(
        self,
        source: str,
        entries: Sequence[SourceEntry],
        options: ImageFolderOptions,
        storage_options: dict[str, Any],
    ) -> Iterator[DecodedImage]:
        fs, root = fsspec.core.url_to_fs(source, **storage_options)
        yield from decode_files(fs, [e.location or _join(root, e.key) for e in entries], options)


def _join(root: str, key: str) -> str:
    return f"{root.rstrip('/')}/{key}"


def _places(rels: list[str], options: ImageFolderOptions, source: str) -> list[tuple[str, str | None]]:
    """(split, class) of each relative path; class "" = in the unlabeled folder, None = a loose
    image (allowed only when no image is in a class folder)."""
    unlabeled = options.unlabeled_dir
    tops = {r.split("/", 1)[0] for r in rels}
    explicit = bool(tops & set(SPLITS)) and tops <= {*SPLITS, unlabeled}
    places = []
    for rel in rels:
        parts = rel.split("/")
        if explicit and parts[0] in SPLITS:
            split, parts = parts[0], parts[1:]
        elif len(parts) > 1 and parts[0] == unlabeled:  # SOURCE/unlabeled/...
            places.append(("train", ""))
            continue
        else:
            split = "test" if hash_fraction(rel) < options.test_fraction else "train"
        if len(parts) > 1 and parts[0] == unlabeled:  # SOURCE/train/unlabeled/...
            if split == "test":
                raise DataError(
                    f"{source}: {rel} is an unlabeled image in the test split; the test split is for "
                    f"measuring, so its images need labels. Move {split}/{unlabeled}/ to "
                    f"train/{unlabeled}/ (or pass --option unlabeled_dir=null to make it a class)."
                )
            places.append(("train", ""))
            continue
        places.append((split, parts[0] if len(parts) > 1 else None))
    _refuse_loose(places, rels, options, source)
    return places


def _refuse_loose(places: list, rels: list[str], options: ImageFolderOptions, source: str) -> None:
    if not any(c for _, c in places):
        return  # no class folders: loose images are the unlabeled dataset
    loose = next((r for r, (_, c) in zip(rels, places, strict=True) if c is None), None)
    if loose is None:
        return
    where = (
        f"or move the unlabeled ones into {options.unlabeled_dir}/ (at the top, or under train/): "
        f"the folder named by --option unlabeled_dir"
        if options.unlabeled_dir
        else "or put the unlabeled ones in one folder and name it with --option unlabeled_dir=FOLDER"
    )
    raise DataError(
        f"{source}: mixes images in class folders with loose images (e.g. {loose}). "
        f"Put every image in a class folder, {where}."
    )


def _image_files(fs, root: str) -> list[tuple[str, str]]:
    """(relative path, stamp) of the image files below ``root``, sorted. On a local disk a
    symlink is read only when it resolves inside the source: one pointing elsewhere (``/etc/...``,
    another dataset) is refused, naming it, before anything is read. Symlinked folders are not
    descended into."""
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem):
        return sorted(_local_files(root))
    out = []
    prefix = len(root.rstrip("/")) + 1
    for path, info in fs.find(root, detail=True).items():
        if not path.lower().endswith(EXTENSIONS):
            continue
        if info.get("type") not in ("file", None):
            raise DataError(f"{path}: not a regular file ({info.get('type')}). Remove it from the source.")
        check_file_size(path, info.get("size"))
        out.append((path[prefix:], remote_stamp(info)))
    return sorted(out)


def _local_files(root: str) -> Iterator[tuple[str, str]]:
    """The local walk: one ``os.scandir`` per folder, one ``stat`` per image, nothing kept but
    the result."""
    real_root = os.path.realpath(root)
    stack = [(root, "")]
    while stack:
        folder, prefix = stack.pop()
        with os.scandir(folder) as it:
            for d in it:
                rel = prefix + d.name
                if d.is_symlink():
                    target = _link_target(d.path, real_root, root)
                    if target is not None:
                        st = os.stat(target)
                        check_file_size(d.path, st.st_size)
                        yield rel, f"{st.st_size}-{st.st_mtime_ns}"
                elif d.is_dir(follow_symlinks=False):
                    stack.append((d.path, rel + "/"))
                elif d.name.lower().endswith(EXTENSIONS):
                    if not d.is_file(follow_symlinks=False):
                        raise DataError(f"{d.path}: not a regular file (other). Remove it from the source.")
                    st = d.stat(follow_symlinks=False)
                    check_file_size(d.path, st.st_size)
                    yield rel, f"{st.st_size}-{st.st_mtime_ns}"


def _link_target(path: str, real_root: str, root: str) -> str | None:
    """The file a symlink in the source stands for (an image inside the source), None for one
    that is skipped (a link to a non-image, or to a folder inside the source: its images are
    listed where they are); one leading outside the source is refused."""
    target = os.path.realpath(path)
    is_dir = os.path.isdir(target)
    if not (path.lower().endswith(EXTENSIONS) or is_dir):
        return None  # a link to some other file (a README...): never read
    if os.path.commonpath([real_root, target]) != real_root:
        raise DataError(
            f"{path} is a symlink to {target}, outside the source {root}; it was not read. "
            f"Copy the {'folder' if is_dir else 'file'} into the source folder, or remove the link."
        )
    return target if os.path.isfile(target) else None


_hash_fraction = hash_fraction  # the split rule's old name (tests, and code that mirrors the split)


@hookimpl
def pretextflow_dataset_formats():
    return [ImageFolderFormat]
