"""Prefect 3 flows: thin wrappers around the stage functions in ``pretextflow.core.stages``.

``ingest``, ``pretrain``, ``freeze``, ``probe`` and ``report`` each run alone; ``pipeline`` chains
them in one flow run. Parameters are plain JSON (the validated config as a dict, the workspace
path), so every run's inputs show in the Prefect UI."""
