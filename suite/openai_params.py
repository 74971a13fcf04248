"""The request rules both OpenAI-compatible servers apply (`memgas.serve`, `serving.app`), in one
place: a strict JSON body (no Infinity / NaN, bounded integers), a prompt that is valid Unicode
text, and the generation parameters. Each function raises ValueError with the message the server
returns in its 400 body."""

from __future__ import annotations

import json
import math
from typing import Any


def _no_constants(name: str):
    raise ValueError(f"{name} is not a JSON number")


def strict_json(raw: bytes) -> dict:
    """The body as a JSON object: Infinity/NaN, 5,000-digit integers, bad UTF-8 or nesting are refused."""
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError):  # ValueError: JSON errors, over-long integers
        raise ValueError("body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    return body


def check_prompt(prompt: Any) -> str:
    if not isinstance(prompt, str):
        raise ValueError("the prompt / last message content must be a string")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("the prompt holds a lone surrogate (not valid Unicode text)") from None
    return prompt


def generation_params(body: dict, max_tokens_cap: int, default_max_tokens: int) -> tuple[int, float, bool]:
    """(max_tokens, temperature, stream), each checked: an integer in [1, cap], a finite number in
    [0, 2] (answers are greedy), a boolean."""
    mt = body.get("max_tokens", default_max_tokens)
    if isinstance(mt, bool) or not isinstance(mt, int) or not 1 <= mt <= max_tokens_cap:
        raise ValueError(f"max_tokens must be an integer in [1, {max_tokens_cap}]")
    t = body.get("temperature", 0.0)
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or not 0 <= t <= 2:
        raise ValueError("temperature must be a number in [0, 2] (answers are greedy)")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ValueError("stream must be true or false")
    return mt, float(t), stream
