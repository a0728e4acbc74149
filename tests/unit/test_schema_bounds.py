"""Bounds on JSON schemas before they are converted to grammars (``warren/grammar/schema.py``)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from warren.errors import GrammarRejected
from warren.grammar import check_schema


def deep(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "array", "items": schema}
    return schema


REFUSED: list[tuple[Any, str]] = [
    ({"type": "string", "maxLength": 10_000_000}, "maxLength at / must be a whole number from 0 to 10,000, not 10000000"),
    ({"enum": list(range(20_000))}, "at / has an enum of 20,000 values; the limit is 512"),
    ({"type": "string", "enum": ["x" * 5000]}, "has a enum value of more than 4,096 characters"),
    ({"enum": ["x" * 3000] * 30}, "has an enum of"),
    ({"const": {"k": "v" * 5000}}, "has a const of more than 4,096 characters"),
    ({"type": "string", "minLength": 1e9}, "minLength at / must be a whole number"),
    ({"type": "string", "maxLength": 5.0}, "maxLength at / must be a whole number from 0 to 10,000, not 5.0"),
    ({"type": "string", "maxLength": True}, "maxLength at / must be a whole number"),
    ({"type": "string", "maxLength": -1}, "must be a whole number"),
    ({"type": "string", "minLength": 10, "maxLength": 5}, "maxLength 5 at / is below its minLength 10"),
    ({"type": "string", "maxLength": 5000}, "allows 5,000 optional items (minLength 0, maxLength 5000); the limit is 1,000"),
    ({"type": "array", "items": {"type": "string"}, "maxItems": 2000}, "allows 2,000 optional items"),
    ({"type": "object", "properties": {"a": {"type": "string", "maxLength": 9999}}}, "at /properties/a allows"),
    ({"type": "string", "pattern": "^a{5000}$"}, "has the repetition {5000} in its pattern"),
    ({"type": "string", "pattern": "^a{5,2}$"}, "has the repetition {5,2}, whose maximum is below its minimum"),
    ({"type": "string", "pattern": "^" + "a" * 2000 + "$"}, "has a pattern of 2,002 characters"),
    ({"type": "string", "pattern": 5}, "pattern at / must be a string"),
    ({"$ref": "https://example.com/schema.json"}, "is remote; warren does not fetch schemas"),
    ({"$ref": "other.json#/x"}, "is not supported: use a local one"),
    ({"$ref": "#/$defs/missing"}, "points at nothing"),
    ({"$ref": 5}, "$ref at / must be a string"),
    ({"anyOf": [{"type": "string"}] * 600}, "has 600 entries in anyOf; the limit is 512"),
    ({"type": "object", "properties": {f"p{i}": {} for i in range(300)}}, "has 300 properties; the limit is 256"),
    ({"enum": "abc"}, "enum at / must be a list"),
    (deep(100), "nested more than 64 deep"),
    ({"type": "object", "description": "x" * 300_000}, "longer than 262,144 characters in all"),
    ({"type": "array", "items": [{"type": "null"}] * 400, "default": [[0] * 50] * 400}, "more than 20,000 values"),
    ("not a schema", "must be an object"),
    # Bounds hold wherever a $ref leads
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/s"}}, "$defs": {"s": {"enum": list(range(600))}}},
     "at /$defs/s has an enum of 600 values"),
    ({"type": "object", "properties": {"a": {"$ref": "#/x"}}, "x": {"enum": list(range(600))}},
     "at #/x has an enum of 600 values"),
]


@pytest.mark.parametrize(("schema", "words"), REFUSED, ids=[w[:40] for _, w in REFUSED])
def test_refused_with_a_message_that_names_the_bound(schema: Any, words: str) -> None:
    started = time.perf_counter()
    with pytest.raises(GrammarRejected) as info:
        check_schema(schema)
    assert words in info.value.message
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("schema", [
    {"type": "object"},
    {"type": "string", "minLength": 10_000},
    {"type": "string", "minLength": 9_000, "maxLength": 10_000},
    {"type": "array", "items": {"type": "integer"}, "maxItems": 1_000},
    {"enum": list(range(512))},
    {"type": "string", "pattern": "^[a-z]{1,1000}$"},
    {"type": "object", "properties": {"maxLength": {"type": "string"}, "enum": {"type": "integer"}}},  # names
    {"type": "object", "properties": {"a": {"$ref": "#/$defs/a"}}, "$defs": {"a": {"type": "string"}}},
    {"$defs": {"self": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/self"}]}}, "$ref": "#/$defs/self"},
    {"type": "object", "description": "free text is not bounded apart from the document's size", "minimum": 1e300},
    deep(30),
])
def test_typical_and_boundary_schemas_pass(schema: dict[str, Any]) -> None:
    check_schema(schema)
