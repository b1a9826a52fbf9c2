"""``sklearn-digits``: scikit-learn's embedded 8x8 handwritten digits (1,797 images, 10 classes).
No download: for tests and a smoke run in under a minute. The source argument is ignored
(write ``sklearn:digits``). Split: stratified 75/25 with a fixed seed."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from pretextflow.api import ArrayDatasetFormat, DatasetArrays, Params, hookimpl


class DigitsFormat(ArrayDatasetFormat):
    name = "sklearn-digits"
    description = "scikit-learn's embedded 8x8 digits (no download)"
    Options = Params

    def arrays(self, source: str, options: Params, storage_options: dict[str, Any]) -> DatasetArrays:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # 0..16 -> 0..255
        labels = digits.target.astype(np.int64)
        tr, te = train_test_split(np.arange(len(labels)), test_size=0.25, random_state=0, stratify=labels)
        tr, te = np.sort(tr), np.sort(te)
        digest = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
        return DatasetArrays(
            train_images=images[tr],
            train_labels=labels[tr],
            test_images=images[te],
            test_labels=labels[te],
            class_names=[str(i) for i in range(10)],
            source_files={"sklearn.datasets.load_digits": digest},
        )


@hookimpl
def pretextflow_dataset_formats():
    return [DigitsFormat]
