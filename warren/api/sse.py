"""Server-sent events, written the way each dialect's clients parse them."""

from __future__ import annotations

import json
from typing import Any

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}


def event(data: Any, name: str | None = None) -> bytes:
    """One SSE event: ``event: NAME`` (KoboldCpp sends ``message``) and one ``data:`` JSON line."""
    body = json.dumps(data, ensure_ascii=False, separators=(", ", ": ")) if not isinstance(data, str) else data
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {body}\n\n".encode()
