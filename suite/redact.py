"""Secrets never written: one redaction for every shape a credential takes in a URL or in free text,
applied wherever anything derived from the command line, the environment or a config is written —
config.json, summaries, logs, W&B, resume records, error messages.

Shapes covered (with or without a scheme, anywhere in a string):
- userinfo: `alice:PW@host`, `https://token@host` -> `***@host`;
- secret-named parameters in a query, a fragment or free text: `api_key=K`, `#access_token=K`,
  `token: K` -> `api_key=***`;
- path tokens: the segment after a secret-named one (`/key/K`, `/token/K`) and segments shaped like
  API keys (`sk-...`, `ghp_...`, `xoxb-...`, or 32+ characters of letters and digits mixed).
"""

from __future__ import annotations

import re
from typing import Any

SECRET_NAME = (
    r"(?:api[_-]?key|apikey|key|token|secret|password|passwd|pwd|auth|authorization|signature|sig|credentials?)"
)
# a name holding a secret word as a whole part (`access_token`, `api-key`, `X-Auth`), not inside
# another word (`max_new_tokens`, `keywords` are settings, not secrets)
_NAME = rf"(?<![\w.-])(?:[\w.-]*[._-])?{SECRET_NAME}(?:[._-][\w.-]*)?(?![\w])"
SECRET_PARAM = re.compile(rf"^{_NAME}$", re.I)
# userinfo before a host: anything without whitespace, '/', '@' up to the last '@' before the host
_USERINFO = re.compile(r"(?P<pre>(?:[a-zA-Z][a-zA-Z0-9+.-]*://)|(?<![\w@/.:-]))(?P<user>[^\s/@'\"<>]+)@(?=[\w.-]+)")
# name=value / name: value where name carries a secret word (query, fragment, free text)
_PARAM = re.compile(rf"(?P<name>{_NAME})(?P<sep>=|:\s*)(?P<val>[^\s&#;,'\"<>)]+)", re.I)
# /key/VALUE, /token/VALUE
_PATH_AFTER = re.compile(rf"(?P<seg>/{SECRET_NAME}s?/)(?P<val>[^/\s?#'\"<>]+)", re.I)
# segments shaped like API keys: a known prefix, or 32+ characters mixing upper case, lower case and
# digits (base62 tokens; lower-case hex digests such as commits and checksums are not secrets)
_KEYLIKE = re.compile(
    r"(?<![\w-])(?:(?:sk|pk|rk|ghp|gho|ghs|xox[abpr]|hf)[-_][A-Za-z0-9_-]{8,}"
    r"|(?=[A-Za-z0-9_-]*\d)(?=[A-Za-z0-9_-]*[a-z])(?=[A-Za-z0-9_-]*[A-Z])[A-Za-z0-9_-]{32,})(?![\w-])"
)


def is_secret_name(name: str) -> bool:
    """Does a config key or parameter name hold a secret word as a whole part?"""
    return bool(SECRET_PARAM.match(str(name)))


def redact_text(text: str) -> str:
    """`text` with every credential shape above replaced by ***."""
    if not isinstance(text, str) or not text:
        return text
    out = _USERINFO.sub(
        lambda m: m.group("pre") + "***@" if ":" in m.group("user") or m.group("pre") else m.group(0), text
    )
    out = _PARAM.sub(lambda m: f"{m.group('name')}{m.group('sep')}***", out)
    out = _PATH_AFTER.sub(lambda m: m.group("seg") + "***", out)
    return _KEYLIKE.sub("***", out)


def redact_url(url: str) -> str:
    """A URL (with or without a scheme) with its credentials replaced by *** (`redact_text`)."""
    return redact_text(url) if isinstance(url, str) else url


def redact_config(obj: Any, key: str = "") -> Any:
    """A copy of a (nested) config dict with every string redacted (`redact_text`)."""
    if isinstance(obj, dict):
        return {k: redact_config(v, str(k)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact_config(v, key) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj)
    return obj
