"""Data: the canonical dataset format, ingest from a source, reading sources through fsspec, and
versioning with DVC and git."""
