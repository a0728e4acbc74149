"""The table of request bounds and its documentation stay equal."""

from __future__ import annotations

from pathlib import Path

from warren.bounds import BOUNDS

DOC = Path(__file__).resolve().parent.parent.parent / "docs" / "api-compat.md"


def test_every_bound_is_documented_with_its_value() -> None:
    text = DOC.read_text()
    for bound in BOUNDS:
        value = f"{bound.value:,}" if isinstance(bound.value, int) else f"{bound.value:g}"
        assert f"| {bound.name} | {value} |" in text, f"docs/api-compat.md lacks the row for {bound.name!r} = {value}"


def test_every_bound_says_why() -> None:
    assert len({b.name for b in BOUNDS}) == len(BOUNDS)
    assert all(len(b.why) > 20 for b in BOUNDS)
