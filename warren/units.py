"""Amounts people type: memory sizes (``8G``, ``60%``) and durations (``5m``, ``90s``, ``-1``)."""

from __future__ import annotations

import math
from typing import Any

from warren.errors import ConfigError


def parse_bytes(text: str, total: int) -> int | None:
    """``8G``, ``512MiB``, ``1000000``, ``60%`` (of ``total``) -> bytes; None if it is none of those."""
    t = text.strip().lower().replace(" ", "").removesuffix("ib").removesuffix("b")
    try:
        if t.endswith("%"):
            return int(total * float(t[:-1]) / 100)
        scale = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}.get(t[-1:], 1)
        return int(float(t[:-1] if scale != 1 else t) * scale)
    except ValueError:
        return None


MAX_DURATION = 366 * 24 * 3600.0  # a year: longer is "never" (-1), and larger numbers overflow date arithmetic


def parse_duration(value: Any, what: str) -> float:
    """Seconds from a number or a duration string (``"90s"``, ``"5m"``, ``"1h"``, ``"-1"``). Any negative value
    means "never" and is returned as -1; NaN, infinities and anything over ``MAX_DURATION`` are refused, so
    no keep-alive can become a value that date arithmetic or a comparison cannot handle."""
    hint = 'use seconds or "5m", "1h", at most a year; -1: never'
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be a duration, not {value!r}", hint=hint)
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
        for unit in ("ms", "s", "m", "h"):
            if text.endswith(unit):
                number, scale = text[: -len(unit)], units[unit]
                break
        else:
            number, scale = text, 1
        try:
            seconds = float(number) * scale
        except (ValueError, OverflowError):
            raise ConfigError(f"{what} {value!r} is not a duration", hint=hint) from None
    if not math.isfinite(seconds) or seconds > MAX_DURATION:
        raise ConfigError(f"{what} {value!r} is not a usable duration (at most {MAX_DURATION / 86400:.0f} days)",
                          hint=hint)
    return -1.0 if seconds < 0 else seconds
