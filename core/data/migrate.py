"""``pretextflow migrate NAME``: rewrite a schema-1 dataset (one ``.npy`` per split) as schema 2
(shards with an index), through the same staged, journalled swap as an ingest, then version it.
The images, labels and classes are unchanged; only the layout is new."""

from __future__ import annotations

import json
import logging
from typing import Any

from pretextflow.core.data.dataset import check_name, load_dataset
from pretextflow.core.data.ingest import recover_interrupted_ingest, summary, swap_in
from pretextflow.core.data.layout import DEFAULT_SHARD_MB, write_arrays_into
from pretextflow.core.data.versioning import workspace_lock
from pretextflow.core.errors import DataError
from pretextflow.core.registry.contracts import DatasetArrays
from pretextflow.core.workspace import Workspace

log = logging.getLogger("pretextflow.migrate")


def migrate_dataset(
    ws: Workspace,
    name: str,
    shard_mb: float = DEFAULT_SHARD_MB,
    push: bool = True,
    logger: logging.Logger | logging.LoggerAdapter = log,
) -> dict[str, Any]:
    ws.require_initialised()
    check_name(name)
    target = ws.data_dir / name
    with workspace_lock(ws, f"migrate {name}"):
        recover_interrupted_ingest(ws, logger)
        if not (target / "meta.json").is_file():
            raise DataError(f"no dataset {name!r} in {ws.data_dir}. `pretextflow ingest` it first.")
        schema = json.loads((target / "meta.json").read_bytes()).get("schema_version")
        if schema != 1:
            raise DataError(f"dataset {name!r} is schema {schema}, not 1: nothing to migrate.")
        old = load_dataset(str(ws.data_dir), name)
        arrays = DatasetArrays(
            old.train_images, old.train_labels, old.test_images, old.test_labels, list(old.meta["class_names"])
        )
        version = swap_in(
            ws,
            name,
            lambda staging: write_arrays_into(staging, name, old.meta["format"], arrays, shard_mb),
            old.train_images.nbytes + old.test_images.nbytes,
            push,
            logger,
            what="migrate",
        )
    dataset = load_dataset(str(ws.data_dir), name)
    logger.info("migrate %s: schema 1 -> 2, %d shards; data version %s", name, len(dataset.meta["shards"]), version)
    return summary(dataset, version, True)
