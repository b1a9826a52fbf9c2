"""Secrets: credentials passed by reference, and their redaction from every message and log record.
Imports nothing else of pretextflow, so every other module may use it."""
