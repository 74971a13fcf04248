"""Hypothesis strategies for hostile inputs: a valid document, then one mutation of it, written to
disk as JSON or as raw (possibly non-UTF-8, truncated) bytes."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import strategies as st

# any JSON value, including the wrong types a field might carry
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=6,
)
HUGE = st.sampled_from(["x" * 200_000, "word " * 50_000, "\u00e9\u4e2d\U0001f600" * 30_000])


def paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value inside `doc` (dict keys and list indices)."""
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += paths(v, prefix + (i,))
    return out


def _get(doc, path):
    node = doc
    for p in path:
        node = node[p]
    return node


@st.composite
def mutated(draw, doc: Any) -> tuple[str, Any]:
    """(kind, new document or raw bytes) — one hostile change to a valid document."""
    doc = copy.deepcopy(doc)
    kind = draw(st.sampled_from(["delete", "retype", "huge", "empty", "duplicate", "bytes", "truncate"]))
    ps = paths(doc)
    if kind in ("delete", "retype", "huge", "empty"):
        path = draw(st.sampled_from(ps))
        parent, key = _get(doc, path[:-1]), path[-1]
        if kind == "delete":
            del parent[key]
        elif kind == "retype":
            parent[key] = draw(JSON)
        elif kind == "huge":
            parent[key] = draw(HUGE)
        else:
            parent[key] = draw(st.sampled_from(["", "   ", [], {}]))
        return kind, doc
    if kind == "duplicate":
        lists = [p for p in [()] + ps if isinstance(v := _get(doc, p), list) and v]
        path = draw(st.sampled_from(lists))
        lst = _get(doc, path)
        lst.append(copy.deepcopy(lst[draw(st.integers(0, len(lst) - 1))]))
        return kind, doc
    raw = json.dumps(doc).encode()
    pos = draw(st.integers(0, len(raw) - 1))
    if kind == "bytes":
        return kind, raw[:pos] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\x80\x80", b"\xed\xa0\x80"])) + raw[pos:]
    return kind, raw[:pos]


def write(path, value) -> None:
    path.write_bytes(value if isinstance(value, bytes) else json.dumps(value).encode())
