"""Metadata filters in mem0's language (its open-source "enhanced metadata filtering"):

    {"topic": "trip"}                                  equality (a plain value)
    {"topic": "*"}                                     the key is present (any non-null value)
    {"priority": {"gte": 2, "lt": 5}}                  eq ne gt gte lt lte in nin contains icontains
    {"AND": [f, g]}  {"OR": [f, g]}  {"NOT": [f]}      logic; several keys in one dict are ANDed

A missing key matches no operator (only NOT of one), as a NULL in SQL.

`compile_filter` checks the whole filter before any session is looked at: an unknown operator, a
malformed part or a non-dict raises `DataError` naming the part, never an empty result.
"""

from __future__ import annotations

from collections.abc import Callable

from suite.io import DataError

OPERATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin", "contains", "icontains")
LOGIC = ("AND", "OR", "NOT")
Pred = Callable[[dict], bool]


def _scalar(v) -> bool:
    return isinstance(v, str | int | float | bool)


def _ordered(a, b) -> bool:
    """Comparable without surprises: two numbers (never a bool) or two strings."""
    num = (int, float)
    return (isinstance(a, num) and isinstance(b, num) and not isinstance(a, bool) and not isinstance(b, bool)) or (
        isinstance(a, str) and isinstance(b, str)
    )


def _same(v, want) -> bool:
    """Equal and both or neither a bool (Python has True == 1)."""
    return v == want and isinstance(v, bool) == isinstance(want, bool)


def _op(verb: str, path: str, op: str, want) -> Callable[[object], bool]:
    """One operator's test of a stored value (None: the key is missing, which no operator matches)."""
    if op in ("in", "nin"):
        if not isinstance(want, list) or not all(_scalar(w) for w in want):
            raise DataError(verb, None, path, f"{op!r} takes a list of values, got {want!r}")
        vals = list(want)
        if op == "in":
            return lambda v: v is not None and any(_same(v, w) for w in vals)
        return lambda v: v is not None and not any(_same(v, w) for w in vals)
    if not _scalar(want):
        raise DataError(verb, None, path, f"{op!r} takes a string, number or bool, got {type(want).__name__}")
    if op == "eq":
        return lambda v: v is not None and _same(v, want)
    if op == "ne":
        return lambda v: v is not None and not _same(v, want)
    if op in ("contains", "icontains"):
        if not isinstance(want, str):
            raise DataError(verb, None, path, f"{op!r} takes a string, got {type(want).__name__}")
        if op == "contains":
            return lambda v: isinstance(v, str) and want in v
        return lambda v: isinstance(v, str) and want.lower() in v.lower()
    if op in ("gt", "gte", "lt", "lte"):
        if isinstance(want, bool):
            raise DataError(verb, None, path, f"{op!r} takes a number or string, got a bool")
        cmp = {
            "gt": lambda a: a > want,
            "gte": lambda a: a >= want,
            "lt": lambda a: a < want,
            "lte": lambda a: a <= want,
        }
        return lambda v: _ordered(v, want) and cmp[op](v)
    raise DataError(verb, None, path, f"unknown operator {op!r} (known: {', '.join(OPERATORS)})")


def _field(verb: str, path: str, key: str, cond) -> Pred:
    if cond is None:
        raise DataError(verb, None, path, "None matches nothing meaningful: use '*' (present) or NOT")
    if cond == "*":
        return lambda meta: meta.get(key) is not None
    if _scalar(cond):
        f = _op(verb, path, "eq", cond)
        return lambda meta: key in meta and f(meta[key])
    if not isinstance(cond, dict) or not cond:
        raise DataError(verb, None, path, f"expected a value, '*' or {{operator: value}}, got {cond!r}")
    tests = [_op(verb, f"{path}.{op}", op, w) for op, w in cond.items()]
    return lambda meta: all(t(meta.get(key)) for t in tests)


def compile_filter(filters, verb: str = "search()", path: str = "filters") -> Pred:
    """A predicate over a session's metadata; raises `DataError` for anything it cannot read."""
    if not isinstance(filters, dict):
        raise DataError(verb, None, path, f"expected a mapping, got {type(filters).__name__}")
    parts: list[Pred] = []
    for k, cond in filters.items():
        if not isinstance(k, str) or not k:
            raise DataError(verb, None, path, f"keys must be non-empty strings, got {k!r}")
        if k in LOGIC:
            subs = cond if isinstance(cond, list) else [cond] if (k == "NOT" and isinstance(cond, dict)) else None
            if not subs:
                raise DataError(verb, None, f"{path}.{k}", "expected a non-empty list of filters")
            preds = [compile_filter(f, verb, f"{path}.{k}[{i}]") for i, f in enumerate(subs)]
            if k == "AND":
                parts.append(lambda m, ps=preds: all(p(m) for p in ps))
            elif k == "OR":
                parts.append(lambda m, ps=preds: any(p(m) for p in ps))
            else:
                parts.append(lambda m, ps=preds: not any(p(m) for p in ps))
        elif k.upper() in LOGIC or k.startswith("$"):
            raise DataError(verb, None, f"{path}.{k}", f"unknown logical operator {k!r} (known: AND, OR, NOT)")
        else:
            parts.append(_field(verb, f"{path}.{k}", k, cond))
    return lambda meta: all(p(meta) for p in parts)
