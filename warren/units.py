"""Amounts people type: memory sizes (``8G``, ``60%``) and durations (``5m``, ``90s``, ``-1``)."""

from __future__ import annotations

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


def parse_duration(value: Any, what: str) -> float:
    """Seconds from a number or a duration string (``"90s"``, ``"5m"``, ``"1h"``, ``"-1"``)."""
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be a duration, not {value!r}", hint='use seconds or "5m", "1h"; -1: never')
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip().lower()
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit):
            number, scale = text[: -len(unit)], units[unit]
            break
    else:
        number, scale = text, 1
    try:
        return float(number) * scale
    except ValueError:
        raise ConfigError(f"{what} {value!r} is not a duration", hint='use seconds or "5m", "1h"; -1: never') \
            from None
