"""Runs: the manifest, the report, the history of past runs (list, compare, regressions), reruns
and sweeps (grids and their comparison)."""
