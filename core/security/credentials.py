"""Credentials travel by reference, never by value.

A config may name a secret as ``${env:NAME}`` in ``store.uri``, ``store.storage_options`` and
``data.source``; validation resolves the reference from the environment. Whenever a config is
serialised (``model_dump``: the parameters of a Prefect flow run, which Prefect stores in its
database; the payload file of a training rank; a sweep point), each credential is written back as a
reference: a reference the user wrote stays as written, and a secret given literally is moved into
this process's environment under a generated name (``PRETEXTFLOW_SECRET_<n>``) and written as
``${env:PRETEXTFLOW_SECRET_<n>}``. Child processes (sweep workers, training ranks, DVC) inherit the
environment, so they resolve it; Prefect's database, artifacts and logs only ever see the reference.

Why not Prefect Secret blocks: they need a server-side block per credential and do not exist for a
plain ``python -c`` call of a stage function; environment variables work for the CLI, deployments
(a work pool's job variables), Dask workers and tests alike.
"""

from __future__ import annotations

import itertools
import os
import re
from typing import Any

from pretextflow.core.security.redaction import (
    ENV_REF,
    SECRET_OPTION_NAME,
    is_reference,
    register_secret_value,
    split_url_userinfo,
)

GENERATED_PREFIX = "PRETEXTFLOW_SECRET_"

_NAME_OF: dict[str, str] = {}  # a secret's value -> the environment variable that holds it


def resolve(text: str) -> str:
    """``text`` with every ``${env:NAME}`` replaced by the variable's value (registered for redaction).
    A ValueError names an unset variable and says how to set it."""

    def value_of(match: re.Match) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ValueError(
                f"refers to the environment variable {name}, which is not set. Export {name} before "
                f"running (credentials are passed by reference, so they never enter the config, "
                f"Prefect's database or the manifest)"
            )
        value = os.environ[name]
        _NAME_OF.setdefault(value, name)
        register_secret_value(value)
        return value

    return ENV_REF.sub(value_of, text)


def reference(value: str) -> str:
    """``${env:NAME}`` for a secret value: the variable it was read from, or a new variable of this
    process (inherited by its children) that now holds it."""
    name = _NAME_OF.get(value)
    if name is None or os.environ.get(name) != value:
        name = next(n for n in (f"{GENERATED_PREFIX}{i}" for i in itertools.count(1)) if n not in os.environ)
        os.environ[name] = value
        _NAME_OF[value] = name
    return "${env:" + name + "}"


def resolve_options(options: Any) -> Any:
    """Storage options with the references in their string values resolved (nested dicts/lists too)."""
    if isinstance(options, dict):
        return {k: resolve_options(v) for k, v in options.items()}
    if isinstance(options, list):
        return [resolve_options(v) for v in options]
    return resolve(options) if isinstance(options, str) else options


def protect_options(options: Any) -> Any:
    """Storage options with every credential-named string value (key, secret, token...) as a reference."""
    if isinstance(options, dict):
        return {
            k: reference(v)
            if isinstance(v, str) and v and SECRET_OPTION_NAME.search(str(k)) and not is_reference(v)
            else protect_options(v)
            for k, v in options.items()
        }
    if isinstance(options, list):
        return [protect_options(v) for v in options]
    return options


def protect_uri(uri: str | None) -> str | None:
    """``scheme://USER:PASS@host/...`` -> ``scheme://${env:...}@host/...``; other URIs unchanged."""
    if not uri:
        return uri
    parts = split_url_userinfo(uri)
    if parts is None or is_reference(parts[1]):
        return uri
    return parts[0] + reference(parts[1]) + "@" + parts[2]


def for_record(value: Any) -> Any:
    """What a manifest or report may keep of a credential-bearing URI or storage options: references
    the user wrote (``${env:AWS_SECRET_ACCESS_KEY}``: a rerun resolves them again) stay, and anything
    else that is a credential becomes ``***``."""
    if isinstance(value, dict):
        return {
            k: for_record(v)
            if isinstance(v, (dict, list))
            else (
                _recordable(protect_options({k: v})[k])
                if isinstance(v, str) and SECRET_OPTION_NAME.search(str(k))
                else v
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [for_record(v) for v in value]
    if isinstance(value, str):
        protected = protect_uri(value)
        parts = split_url_userinfo(protected or "")
        if parts and _recordable(parts[1]) == "***":
            return parts[0] + "***@" + parts[2]
        return protected
    return value


def _recordable(value: str) -> str:
    match = ENV_REF.fullmatch(value)
    return value if match and not match.group(1).startswith(GENERATED_PREFIX) else "***"
