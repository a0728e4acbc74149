"""Bounds on a JSON schema before llama-cpp-python's converter turns it into a grammar.

The converter (``llama_cpp.llama_grammar.json_schema_to_gbnf``) runs in the worker, and some small
schemas make it write huge or deep grammars: ``{"type": "string", "maxLength": 10000000}`` becomes ten
million nested groups (``(c (c (c …)?)?)?``), which crashed llama.cpp's parser (SIGSEGV); a 20,000-value
``enum`` becomes 20,000 alternatives (80 s for a few tokens). The supervisor cannot run the converter
(it imports ``llama_cpp``), so it checks the schema's own figures here, before any model is involved;
the worker then checks the grammar the converter made (``checks.py``) before llama.cpp sees it.

Only keywords the converter acts on are bounded; others (``description``, ``minimum`` …) are free
within the document-wide limits. Everything is iterative.
"""

from __future__ import annotations

import json
import re
from typing import Any

from warren.bounds import (
    SCHEMA_MAX_ALTERNATIVES,
    SCHEMA_MAX_DEPTH,
    SCHEMA_MAX_ENUM,
    SCHEMA_MAX_ENUM_TEXT,
    SCHEMA_MAX_LENGTH,
    SCHEMA_MAX_LITERAL,
    SCHEMA_MAX_OPTIONAL,
    SCHEMA_MAX_PATTERN,
    SCHEMA_MAX_PATTERN_REPEAT,
    SCHEMA_MAX_PROPERTIES,
    SCHEMA_MAX_TEXT,
    SCHEMA_MAX_VALUES,
)
from warren.errors import GrammarRejected

LENGTH_PAIRS = (("minLength", "maxLength"), ("minItems", "maxItems"))
LIST_KEYWORDS = ("anyOf", "oneOf", "allOf", "prefixItems")
MAP_KEYWORDS = ("properties", "$defs", "definitions")
_QUANTIFIER = re.compile(r"\{([^}]*)\}")


def check_schema(schema: Any) -> None:
    """Raise ``GrammarRejected`` if ``schema`` (parsed JSON) is over a bound or cannot be converted."""
    if not isinstance(schema, dict):
        raise GrammarRejected("the JSON schema must be an object")
    _check_keywords(schema)  # first: its messages name the keyword (an enum of 20,000 values …)
    _check_document(schema)


def _check_document(schema: dict[str, Any]) -> None:
    """Size and depth of the JSON document itself."""
    values = text = 0
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        value, depth = stack.pop()
        values += 1
        if values > SCHEMA_MAX_VALUES:
            raise GrammarRejected(f"the JSON schema has more than {SCHEMA_MAX_VALUES:,} values")
        if isinstance(value, str):
            text += len(value)
        elif isinstance(value, dict | list):
            if depth > SCHEMA_MAX_DEPTH:
                raise GrammarRejected(f"the JSON schema is nested more than {SCHEMA_MAX_DEPTH} deep")
            items = value.values() if isinstance(value, dict) else value
            if isinstance(value, dict):
                text += sum(len(str(k)) for k in value)
            stack.extend((item, depth + 1) for item in items)
        if text > SCHEMA_MAX_TEXT:
            raise GrammarRejected(f"the JSON schema's strings and keys are longer than {SCHEMA_MAX_TEXT:,} "
                                  "characters in all")


def _check_keywords(root: dict[str, Any]) -> None:
    """Every schema the converter may visit: the root, its subschemas, and the targets of ``$ref``."""
    seen: set[int] = set()
    stack: list[tuple[Any, str]] = [(root, "")]
    while stack:
        schema, path = stack.pop()
        if not isinstance(schema, dict) or id(schema) in seen:
            continue  # the converter itself refuses a non-object schema cleanly
        seen.add(id(schema))
        _check_one(schema, path or "/")
        for key in MAP_KEYWORDS:
            sub = schema.get(key)
            if isinstance(sub, dict):
                if key == "properties" and len(sub) > SCHEMA_MAX_PROPERTIES:
                    raise _over(path, f"has {len(sub):,} properties", SCHEMA_MAX_PROPERTIES)
                stack.extend((v, f"{path}/{key}/{k}") for k, v in sub.items())
        for key in LIST_KEYWORDS + ("items", "type"):
            sub = schema.get(key)
            if isinstance(sub, list):
                if len(sub) > SCHEMA_MAX_ALTERNATIVES:
                    raise _over(path, f"has {len(sub):,} entries in {key}", SCHEMA_MAX_ALTERNATIVES)
                stack.extend((v, f"{path}/{key}/{i}") for i, v in enumerate(sub))
        for key in ("items", "additionalProperties"):
            if isinstance(schema.get(key), dict):
                stack.append((schema[key], f"{path}/{key}"))
        if "$ref" in schema:
            stack.append((_resolve(root, schema["$ref"], path), str(schema["$ref"])))


def _check_one(schema: dict[str, Any], path: str) -> None:
    if "enum" in schema:
        values = schema["enum"]
        if not isinstance(values, list):
            raise GrammarRejected(f"the JSON schema's enum at {path} must be a list")
        if len(values) > SCHEMA_MAX_ENUM:
            raise _over(path, f"has an enum of {len(values):,} values", SCHEMA_MAX_ENUM)
        total = 0
        for value in values:
            size = _literal_size(value, path, "enum value")
            total += size
        if total > SCHEMA_MAX_ENUM_TEXT:
            raise _over(path, f"has an enum of {total:,} characters", SCHEMA_MAX_ENUM_TEXT)
    if "const" in schema:
        _literal_size(schema["const"], path, "const")
    for low_key, high_key in LENGTH_PAIRS:
        low = _length(schema, low_key, path)
        high = _length(schema, high_key, path)
        if high is not None:
            if high < (low or 0):
                raise GrammarRejected(f"the JSON schema's {high_key} {high} at {path} is below its {low_key} {low}")
            if high - (low or 0) > SCHEMA_MAX_OPTIONAL:
                raise _over(path, f"allows {high - (low or 0):,} optional items ({low_key} {low or 0}, "
                                  f"{high_key} {high})", SCHEMA_MAX_OPTIONAL)
    if "pattern" in schema:
        _check_pattern(schema["pattern"], path)
    if "$ref" in schema and not isinstance(schema["$ref"], str):
        raise GrammarRejected(f"the JSON schema's $ref at {path} must be a string")


def _length(schema: dict[str, Any], key: str, path: str) -> int | None:
    if key not in schema:
        return None
    value = schema[key]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SCHEMA_MAX_LENGTH:
        raise GrammarRejected(f"the JSON schema's {key} at {path} must be a whole number from 0 to "
                              f"{SCHEMA_MAX_LENGTH:,}, not {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    if isinstance(value, dict | list):
        return "an object" if isinstance(value, dict) else "a list"
    return json.dumps(value)[:40]


def _literal_size(value: Any, path: str, what: str) -> int:
    size = _json_size(value, SCHEMA_MAX_LITERAL)
    if size > SCHEMA_MAX_LITERAL:
        raise _over(path, f"has a {what} of more than {SCHEMA_MAX_LITERAL:,} characters", SCHEMA_MAX_LITERAL)
    return size


def _json_size(value: Any, limit: int) -> int:
    """About the length of ``json.dumps(value)``, without recursion; counting stops past ``limit``."""
    size = 0
    stack = [value]
    while stack and size <= limit:
        v = stack.pop()
        if isinstance(v, str):
            size += len(v) + 2
        elif isinstance(v, dict):
            size += 2 + 4 * len(v) + sum(len(str(k)) for k in v)
            stack.extend(v.values())
        elif isinstance(v, list):
            size += 2 + 2 * len(v)
            stack.extend(v)
        else:
            size += len(repr(v))
    return size


def _check_pattern(pattern: Any, path: str) -> None:
    if not isinstance(pattern, str):
        raise GrammarRejected(f"the JSON schema's pattern at {path} must be a string")
    if len(pattern) > SCHEMA_MAX_PATTERN:
        raise _over(path, f"has a pattern of {len(pattern):,} characters", SCHEMA_MAX_PATTERN)
    for m in _QUANTIFIER.finditer(pattern):
        parts = [s.strip() for s in m.group(1).split(",")]
        try:
            numbers = [int(s) for s in parts if s]
        except ValueError:
            continue  # not a quantifier the converter reads; it refuses it itself
        if any(n > SCHEMA_MAX_PATTERN_REPEAT for n in numbers):
            raise _over(path, f"has the repetition {m.group()} in its pattern", SCHEMA_MAX_PATTERN_REPEAT)
        if len(parts) == 2 and all(parts) and numbers[1] < numbers[0]:
            raise GrammarRejected(f"the JSON schema's pattern at {path} has the repetition {m.group()}, whose "
                                  "maximum is below its minimum")


def _resolve(root: dict[str, Any], ref: Any, path: str) -> Any:
    """The target of a local ``$ref`` (``#/$defs/x``), read the way the converter reads it."""
    if not isinstance(ref, str):
        raise GrammarRejected(f"the JSON schema's $ref at {path} must be a string")
    if ref.startswith(("https://", "http://")):
        raise GrammarRejected(f"the JSON schema's $ref {ref[:80]!r} is remote; warren does not fetch schemas")
    if not ref.startswith("#/"):
        raise GrammarRejected(f"the JSON schema's $ref {ref[:80]!r} is not supported: use a local one (#/…)")
    target: Any = root
    for part in ref[2:].split("/"):
        if not isinstance(target, dict) or part not in target:
            raise GrammarRejected(f"the JSON schema's $ref {ref[:80]!r} points at nothing")
        target = target[part]
    return target


def _over(path: str, what: str, limit: int) -> GrammarRejected:
    return GrammarRejected(f"the JSON schema at {path} {what}; the limit is {limit:,}")
