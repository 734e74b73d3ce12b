"""Mask credentials in URLs before they are written to disk or shown.

A base URL such as ``http://user:secret@host/v1?api-key=abc`` carries credentials in its user part and in its query.
Every JSON artifact the toolkit writes (config.json, manifest.json, pipeline.json, ...) passes through
:func:`redact_obj`, and model labels through :func:`redact_url`, so such secrets never reach a run folder or report.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

MASK = "***"

_SECRET_PARAM = re.compile(
    r"(key|token|secret|passw|pwd|auth|signature|sig|credential|session|code)", re.IGNORECASE
)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s\"'<>]+")


def redact_url(url: str) -> str:
    """``url`` with its user/password part and secret-looking query values replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _fallback(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_SECRET_PARAM.search(k) for k, _ in pairs):
            query = "&".join(
                f"{quote(k, safe='')}={MASK if _SECRET_PARAM.search(k) else quote(v, safe='')}" for k, v in pairs
            )
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _fallback(url: str) -> str:
    """For strings ``urlsplit`` rejects: mask anything between ``//`` and ``@``."""
    return re.sub(r"//[^/@\s]*@", f"//{MASK}@", url)


def redact_text(text: str) -> str:
    """Every URL inside ``text`` redacted; text without ``://`` is returned unchanged."""
    if "://" not in text:
        return text
    return _URL.sub(lambda m: redact_url(m.group(0)), text)


def redact_obj(obj: Any) -> Any:
    """A copy of a JSON-like value (dict, list, str, ...) with every URL in every string redacted."""
    if isinstance(obj, str):
        return redact_text(obj)
    if isinstance(obj, dict):
        return {redact_text(k) if isinstance(k, str) else k: redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_obj(v) for v in obj]
    return obj
