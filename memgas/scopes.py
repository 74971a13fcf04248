"""The API's scoping rules: checked ids and metadata, agent / run / metadata filters, the public
view of a stored session, and turning chat messages into a session."""

from __future__ import annotations

import time

import numpy as np

from memgas.data import Session, Turn
from memgas.filters import compile_filter
from suite.io import (
    DataError,
    check_id,
    check_text,
)


def _check_meta(metadata, agent_id, run_id) -> dict:
    """A session's metadata: flat, JSON-safe values (scopes `agent_id` / `run_id` included)."""
    if metadata is not None and not isinstance(metadata, dict):
        raise DataError("add()", None, "metadata", f"expected a mapping, got {type(metadata).__name__}")
    meta = {}
    scopes = {k: v for k, v in (("agent_id", agent_id), ("run_id", run_id)) if v is not None}
    for k, v in {**(metadata or {}), **scopes}.items():
        if v is None:
            continue
        k = check_text("add()", None, "metadata key", k) if isinstance(k, str) else None
        if k is None or not (isinstance(v, str | bool) or (isinstance(v, int | float) and np.isfinite(v))):
            raise DataError("add()", None, f"metadata.{k}", "keys must be strings and values str/int/float/bool")
        meta[k] = check_text("add()", None, f"metadata.{k}", v) if isinstance(v, str) else v
    return meta


def scope(agent_id=None, run_id=None, filters: dict | None = None, verb: str = "search()"):
    """A predicate over stored sessions: of this agent / run (if given) and matching `filters`
    (mem0's filter language, `memgas.filters`); None when nothing narrows. Checked before any work."""
    ids = {k: _check_id(v, k, verb) for k, v in (("agent_id", agent_id), ("run_id", run_id)) if v is not None}
    pred = compile_filter(filters, verb) if filters is not None else None
    if not ids and pred is None:
        return None

    def ok(s: dict) -> bool:
        meta = s.get("meta") or {}
        return all(meta.get(k) == v for k, v in ids.items()) and (pred is None or pred(meta))

    return ok


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _public(s: dict) -> dict:
    u = s["units"]
    return {
        "session_id": s["session_id"],
        "date": s["date"],
        "metadata": dict(s.get("meta") or {}),
        "text": u["session"][0],
        "summary": u["summary"][0],
        "keywords": u["keywords"][0],
        "turns": list(u["turn"]),
    }


def _to_session(messages, session_id: str, date: str) -> Session:
    """A `Session` from what `add()` accepts, every text checked before anything is stored (a text
    that cannot be saved would otherwise make every later `save()` of the whole store fail)."""
    if isinstance(messages, Session):
        for j, t in enumerate(messages.turns):
            check_text("add()", f"{session_id} turn {j}", "text", t.text)
            check_text("add()", f"{session_id} turn {j}", "speaker", t.speaker)
        return messages
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not isinstance(messages, list) or not messages:
        raise DataError("add()", session_id, "messages", "expected a non-empty list of {role, content}")
    turns = []
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise DataError("add()", f"{session_id} message {j}", "content", "missing or not a string")
        check_text("add()", f"{session_id} message {j}", "content", m["content"])
        role = check_text("add()", f"{session_id} message {j}", "role", m.get("role", "user"))
        turns.append(Turn(role, m["content"], f"{session_id}:{j}"))
    return Session(session_id, turns, date)


def _check_id(value, field: str, verb: str = "add()") -> str:
    """`suite.io.check_id` (so 5 and "5" are one id), plus text that can be saved (no lone surrogates)."""
    return check_text(verb, None, field, check_id(verb, None, field, value))
