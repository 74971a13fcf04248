"""Secrets never written: URLs lose their credentials (user:password@, and query parameters that
carry keys) wherever a URL is written — config.json, logs, W&B config, error messages."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

SECRET_PARAM = re.compile(r"(key|token|secret|password|passwd|auth|signature|sig|credential)", re.I)
URL_FIELD = re.compile(r"(^|_)(url|uri|endpoint|address)$", re.I)


def redact_url(url: str) -> str:
    """`url` with its password / userinfo and any secret-looking query values replaced by ***."""
    if not isinstance(url, str) or "://" not in url:
        return url
    try:
        u = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    netloc = u.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = urlencode(
        [(k, "***" if SECRET_PARAM.search(k) else v) for k, v in parse_qsl(u.query, keep_blank_values=True)]
    )
    return urlunsplit((u.scheme, netloc, u.path, query, u.fragment))


def redact_config(obj: Any, key: str = "") -> Any:
    """A copy of a (nested) config dict with every URL-valued field redacted."""
    if isinstance(obj, dict):
        return {k: redact_config(v, str(k)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact_config(v, key) for v in obj]
    if isinstance(obj, str) and ("://" in obj or URL_FIELD.search(key)):
        return redact_url(obj)
    return obj
