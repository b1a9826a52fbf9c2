"""Redaction: no secret reaches a message, a log record, a report or an error.

One pattern finds a URL's credentials (``scheme://USER:PASS@host``), one log-record factory rewrites
every record of this process as it is created (so no handler, console, file or Prefect's API, ever
receives a secret), and ``redact()`` masks what the process has learnt to be secret: values of
secret-looking environment variables and the credentials of the configs it validated."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable

__all__ = [
    "ENV_REF",
    "SECRET_OPTION_NAME",
    "SECRET_REMOTE_OPTIONS",
    "add_record_transform",
    "has_url_credentials",
    "install_log_redaction",
    "is_reference",
    "redact",
    "register_secret_value",
    "register_secrets",
    "register_url_secrets",
    "url_userinfo",
]

#: ``${env:NAME}``: a credential passed by reference (see ``core.security.credentials``).
ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
#: Names of fsspec storage options (and nested client_kwargs...) whose values are credentials.
SECRET_OPTION_NAME = re.compile(r"key|secret|token|passw|credential|signature|sas|auth", re.IGNORECASE)
# DVC remote options that hold credentials: they belong in the environment (AWS_ACCESS_KEY_ID,
# AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, read by boto) or in the untracked .dvc/config.local,
# never in the committed .dvc/config, and never in an error message.
SECRET_REMOTE_OPTIONS = frozenset(
    {
        "access_key_id",
        "secret_access_key",
        "session_token",
        "sse_customer_key",
        "password",
        "account_key",
        "sas_token",
        "connection_string",
        "client_secret",
        "gdrive_client_secret",
    }
)
_SECRET_ENV = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|ACCESS_KEY|API_KEY|CREDENTIAL", re.IGNORECASE)
# The one URL-credentials pattern: group 1 the scheme, group 2 the userinfo (USER:PASS).
_URL_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)([^/\s@]+)@")
_OPTION_VALUE = re.compile(
    r"\b(" + "|".join(sorted(SECRET_REMOTE_OPTIONS, key=len, reverse=True)) + r")(\s*[=:]\s*)(['\"]?)[^\s'\",]+",
    re.IGNORECASE,
)

_KNOWN_SECRETS: set[str] = set()  # values taken from configs; redact() masks them wherever they appear


def is_reference(value: object) -> bool:
    """True for a string that is exactly one ``${env:NAME}``."""
    return isinstance(value, str) and ENV_REF.fullmatch(value) is not None


def url_userinfo(uri: str | None) -> str | None:
    """The ``USER:PASS`` of ``scheme://USER:PASS@host/...``, or None."""
    parts = split_url_userinfo(uri or "")
    return parts[1] if parts else None


def split_url_userinfo(uri: str) -> tuple[str, str, str] | None:
    """``(scheme://, USER:PASS, rest after @)`` of a URI with credentials, or None."""
    match = _URL_USERINFO.match(uri)
    return (match.group(1), match.group(2), uri[match.end() :]) if match else None


def has_url_credentials(text: str) -> bool:
    """True when ``text`` holds a URL with literal credentials (a ``${env:NAME}@`` reference is none)."""
    return any(not is_reference(m.group(2)) for m in _URL_USERINFO.finditer(text))


def register_secret_value(value: str) -> None:
    """Mask ``value`` from now on in every message, log record and report of this process."""
    install_log_redaction()
    if len(value) >= 6:  # shorter values would mask ordinary words
        _KNOWN_SECRETS.add(value)


def register_secrets(options: object) -> None:
    """Remember the credential values in ``options`` (``{"key": ..., "secret": ..., "client_kwargs":
    {"aws_session_token": ...}}``) so that redact() masks them in every message, log and report, and
    turn on the redaction of log records. Called whenever a config's storage options are validated."""
    install_log_redaction()
    stack = [options]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for k, v in node.items():
                if isinstance(v, str) and SECRET_OPTION_NAME.search(str(k)):
                    register_secret_value(v)
                elif isinstance(v, (dict, list, tuple)):
                    stack.append(v)
        elif isinstance(node, (list, tuple)):
            stack.extend(node)


def register_url_secrets(url: str | None) -> None:
    """Remember the credentials in ``scheme://USER:PASSWORD@host/...`` so that redact() masks them
    even where a library prints the URL without its scheme (fsspec logs ``/USER:PASSWORD@host/...``)."""
    install_log_redaction()
    userinfo = url_userinfo(url)
    if userinfo:
        register_secret_value(userinfo)
        register_secret_value(userinfo.partition(":")[2])


def _mask_userinfo(match: re.Match) -> str:
    # a reference (scheme://${env:NAME}@) names no secret and stays
    return match.group(0) if is_reference(match.group(2)) else match.group(1) + "***@"


def redact(text: str) -> str:
    """``text`` without secrets: credentials in URLs (``s3://KEY:SECRET@...``), values of secret DVC
    options (``secret_access_key = ...``), the values of secret-looking environment variables and
    the credentials of storage options seen in a config (register_secrets)."""
    for name, value in os.environ.items():
        if len(value) >= 8 and _SECRET_ENV.search(name) and value in text:
            text = text.replace(value, "***")
    for value in sorted(_KNOWN_SECRETS, key=len, reverse=True):  # longest first: no partial leftovers
        if value in text:
            text = text.replace(value, "***")
    text = _URL_USERINFO.sub(_mask_userinfo, text)
    return _OPTION_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3)}***", text)


# -- the one log-record factory ------------------------------------------------------------------
_RECORD_TRANSFORMS: list[Callable[[logging.LogRecord], None]] = []
_FACTORY_INSTALLED = False


def _redact_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a malformed record: leave it to logging's own error report
        return
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, ()
    if record.exc_info and record.exc_info[1] is not None:
        text = logging.Formatter().formatException(record.exc_info)
        if redact(text) != text:
            record.exc_text = redact(text)


def add_record_transform(transform: Callable[[logging.LogRecord], None]) -> None:
    """Apply ``transform`` to every log record of this process as it is created, after redaction.
    A handler-level filter would be lost whenever a library (Prefect) sets up its logging again;
    a record factory is not. Idempotent per transform."""
    global _FACTORY_INSTALLED
    if transform not in _RECORD_TRANSFORMS:
        _RECORD_TRANSFORMS.append(transform)
    if _FACTORY_INSTALLED:
        return
    _FACTORY_INSTALLED = True
    make_record = logging.getLogRecordFactory()

    def transformed_record(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        for fn in _RECORD_TRANSFORMS:
            fn(record)
        return record

    logging.setLogRecordFactory(transformed_record)


def install_log_redaction() -> None:
    """Redact every log record of this process as it is created (its message and any traceback), so
    no handler (console, file, Prefect's API, pytest's capture) ever receives a secret. Idempotent."""
    add_record_transform(_redact_record)
