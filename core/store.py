"""The artifact store: any fsspec URI (a local folder, ``memory://``, ``s3://``), laid out by stage
and key (``pretrain/<key>/...``). Writes go to a temporary name and are renamed into place, so a
crash never leaves half a file under the real name; a stage is complete only once its
``_COMPLETE`` marker exists (written last)."""
from __future__ import annotations

import json
import uuid
from typing import Any

import fsspec

from .errors import PretextflowError

COMPLETE = "_COMPLETE"


class StoreError(PretextflowError):
    pass


class ArtifactStore:
    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None):
        self.uri = uri.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.uri, **(storage_options or {}))
        self.root = self.root.rstrip("/")

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def uri_of(self, *parts: str) -> str:
        return "/".join([self.uri, *parts])

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def read_bytes(self, *parts: str) -> bytes:
        return self.fs.cat_file(self.path(*parts))

    def read_json(self, *parts: str) -> Any:
        return json.loads(self.read_bytes(*parts))

    def write_bytes(self, data: bytes, *parts: str) -> str:
        target = self.path(*parts)
        parent = target.rsplit("/", 1)[0]
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{target.rsplit('/', 1)[1]}"
        try:
            self.fs.makedirs(parent, exist_ok=True)
            self.fs.pipe_file(tmp, data)
            self.fs.mv(tmp, target)
        except OSError as exc:
            try:
                if self.fs.exists(tmp):
                    self.fs.rm(tmp)
            except OSError:
                pass
            raise StoreError(f"cannot write {self.uri_of(*parts)}: {exc}. Check free space and permissions "
                             f"of the artifact store (store.uri).") from exc
        return self.uri_of(*parts)

    def write_json(self, obj: Any, *parts: str) -> str:
        return self.write_bytes((json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode(), *parts)

    def is_complete(self, stage: str, key: str) -> bool:
        return self.exists(stage, key, COMPLETE)

    def mark_complete(self, stage: str, key: str, info: dict[str, Any] | None = None) -> None:
        self.write_json(info or {}, stage, key, COMPLETE)

    def listdir(self, *parts: str) -> list[str]:
        p = self.path(*parts)
        if not self.fs.exists(p):
            return []
        return sorted(x.rstrip("/").rsplit("/", 1)[-1] for x in self.fs.ls(p, detail=False))
