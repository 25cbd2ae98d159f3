"""Bounded JSON: every untrusted body is parsed through :func:`loads_bounded`, so a body nested
100,000 deep or with a 5,000-digit number is refused with ``MalformedJson`` before the standard
parser can raise ``RecursionError`` or spend seconds converting digits.

The depth is measured by one linear scan that skips string contents, without recursion.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 64
MAX_NUMBER_DIGITS = 40


class MalformedJson(ValueError):
    """The text is not JSON, is nested deeper than allowed, or holds an absurd number."""


def nesting_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in ``text``, ignoring brackets inside strings."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise MalformedJson(f"a number has more than {MAX_NUMBER_DIGITS} digits")
    return int(text)


def _bounded_float(text: str) -> float:
    if len(text) > MAX_NUMBER_DIGITS * 2:
        raise MalformedJson(f"a number has more than {MAX_NUMBER_DIGITS * 2} characters")
    return float(text)


def loads_bounded(raw: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` for untrusted input. Raises ``MalformedJson`` (a ``ValueError``) for text
    that is not UTF-8 JSON, nests deeper than ``max_depth``, or carries a number too long to be real."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes | bytearray) else raw
    except UnicodeDecodeError as exc:
        raise MalformedJson("the body is not UTF-8") from exc
    if nesting_depth(text) > max_depth:
        raise MalformedJson(f"the JSON is nested more than {max_depth} levels deep")
    try:
        return json.loads(text, parse_int=_bounded_int, parse_float=_bounded_float)
    except MalformedJson:
        raise
    except (ValueError, RecursionError) as exc:
        raise MalformedJson("the body is not valid JSON") from exc
