"""``--preloadstory``: a KoboldAI Lite story served to every client that connects.

KoboldAI Lite asks ``GET /api/extra/preloadstory`` on every connect and opens the story it gets (``{}``:
none). KoboldCpp takes a file path, or (from a ``.kcpps`` the GUI saved) the story itself as a JSON
object. The story is read once, at start-up, and checked there: a missing file or one that is not a JSON
object stops start-up with one line, instead of every client getting a broken story later.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from warren.errors import ConfigError

MAX_STORY_BYTES = 64 * 2**20  # KoboldCpp's save slots hold 10 MB stories; a story is sent whole on every connect


def read_story(value: Any) -> str:
    """The story's JSON text ("" for none), from a path or an embedded object; ``ConfigError`` otherwise."""
    if value in (None, "", {}):
        return ""
    if isinstance(value, dict):
        return json.dumps(value)
    path = Path(str(value))
    if not path.is_file():
        raise ConfigError(f"--preloadstory {value}: no such file", hint="give a KoboldAI Lite story saved as .json")
    if path.stat().st_size > MAX_STORY_BYTES:
        raise ConfigError(f"--preloadstory {value}: the file is larger than {MAX_STORY_BYTES // 2**20} MB",
                          hint="a story is sent whole to every client that connects")
    try:
        text = path.read_text(encoding="utf-8")
        story = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"--preloadstory {value}: not a JSON story ({exc})",
                          hint="save the story from KoboldAI Lite as .json") from None
    if not isinstance(story, dict):
        raise ConfigError(f"--preloadstory {value}: a story is a JSON object", hint="save it from KoboldAI Lite")
    return text
