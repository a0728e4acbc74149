"""Property test: grammars and JSON schemas — generated, mutated and hostile — through all three dialects
against a real server with the real model: no request gets a 5xx and no worker dies.

Each example is a 3-token greedy request, so the grammars that pass the checks are also run by
llama.cpp on the model's real vocabulary (its apply and accept steps, where "[z-a]" used to abort the
worker), with ``ban_eos_token`` and banned strings mixed in to reach the dead ends no static check sees.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Server, Servers

GRAMMARS = Path(__file__).resolve().parent.parent / "fixtures" / "grammars"
SEEDS = [p.read_text() for p in sorted(GRAMMARS.glob("*.gbnf"))] + ['root ::= " yes" | " no"', "root ::= [a-z]+"]


@pytest.fixture(scope="module")
def srv(module_servers: Servers, model_path: Path) -> Server:
    # One thread: this test counts crashes, not tokens per second, and on a busy 2-core machine two
    # llama.cpp threads waiting on each other made it 6x slower (80 s instead of 12 s).
    return module_servers.start("--model", str(model_path), "--contextsize", "512", "--no-warm-spare",
                                "--threads", "1")


# -- GBNF ---------------------------------------------------------------------------------------------------
SAFE_CHARS = ["a", "b", "é", "ж", " ", "\\n", "\\t", '\\"', "\\\\", "\\x41", "\\x7F", "\\u00E9", "\\U0001F600",
              "\\U0010FFFF", "-", "]", "^"]
HOSTILE_CHARS = ["\\x00", "\\uD800", "\\uDFFF", "\\U00110000", "\\xFF", "\\x4", "\\q"]
SAFE_REPEAT = ["", "", "", "*", "+", "?", "{2}", "{0,3}", "{1,}", "{0}", "{3,3}"]
HOSTILE_REPEAT = ["{5,2}", "{2001}", "{0,2001}", "{99999999999999999999}", "{,}", "{"]
SAFE_TOKENS = ["<[100]>", "<[49151]>", "!<[0]>", "<|im_start|>", "!<[5]>"]
HOSTILE_TOKENS = ["<[0]>", "<[2]>", "<[49152]>", "<[4294967295]>", "<|im_end|>", "<|endoftext|>", "<nope>"]
NAMES = ["root", "a", "b", "item", "ws"]


def expression(safe: bool, names: list[str]) -> st.SearchStrategy[str]:
    chars = st.sampled_from(SAFE_CHARS if safe else SAFE_CHARS + HOSTILE_CHARS)
    in_class = chars.filter(lambda c: c not in ("]", "^", "-")) if safe else chars
    repeat = st.sampled_from(SAFE_REPEAT if safe else SAFE_REPEAT + HOSTILE_REPEAT)
    tokens = st.sampled_from(SAFE_TOKENS if safe else SAFE_TOKENS + HOSTILE_TOKENS)
    literal = st.lists(chars.filter(lambda c: c not in ("]", "^", "-")), min_size=int(safe), max_size=4).map(
        lambda cs: '"' + "".join(cs) + '"')
    ranges = st.tuples(in_class, in_class).map(lambda p: "-".join(sorted(p, key=_code_point) if safe else p))
    char_class = st.tuples(st.booleans(), st.lists(st.one_of(in_class, ranges), min_size=int(safe), max_size=3)).map(
        lambda t: "[" + ("^" if t[0] else "") + "".join(t[1]) + "]")
    atom = st.one_of(literal, char_class, st.sampled_from(names if safe else [*names, "undefined-rule"]),
                     st.just("."), tokens)
    return st.recursive(
        st.tuples(atom, repeat).map("".join),
        lambda inner: st.one_of(
            st.lists(inner, min_size=1, max_size=3).map(" ".join),
            st.tuples(st.lists(inner, min_size=1, max_size=3).map(" | ".join), repeat).map(
                lambda t: f"({t[0]}){t[1]}")),
        max_leaves=8)


def _code_point(char: str) -> int:
    """The code point a grammar character (raw or escaped) stands for."""
    if char.startswith("\\") and len(char) > 2 and char[1] in "xuU":
        return int(char[2:], 16)
    return {"\\n": 10, "\\t": 9}.get(char, ord(char[-1]))


@st.composite
def structured_grammar(draw: st.DrawFn, safe: bool) -> str:
    """Rule sets from literals, classes, tokens, groups and repetitions: ``safe`` ones mostly pass the
    checks and run on the model; the others add what crashed or stalled llama.cpp."""
    names = ["root", *draw(st.lists(st.sampled_from(NAMES[1:]), max_size=3, unique=True))]
    bodies = [" | ".join(draw(st.lists(expression(safe, names), min_size=1, max_size=3))) for _ in names]
    depth = draw(st.sampled_from([0, 0, 0, 5, 40] if safe else [0, 0, 5, 40, 100_000]))  # nesting
    bodies[0] = "(" * depth + bodies[0] + ")" * depth
    return "\n".join(f"{name} ::= {body}" for name, body in zip(names, bodies, strict=True))


@st.composite
def mutated_grammar(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        edit = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(st.sampled_from(["(", ")", "|", "*", "{5,2}", "[z-a]", '"', "\\x00", "root", "\n", " ", "?",
                                      "x", "[", "]", "<[0]>", "{2000}"]))
        if edit == "insert":
            text = text[:at] + piece + text[at:]
        elif edit == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 5)):]
        else:
            text = text[:at] + piece + text[at + len(piece):]
    return text


GRAMMAR = st.one_of(structured_grammar(safe=True), structured_grammar(safe=False), mutated_grammar())

# -- JSON schemas -------------------------------------------------------------------------------------------
NUMBERS = st.one_of(st.integers(-3, 12), st.sampled_from([0, 1000, 1001, 10_000, 10_000_000, 10**30, -1]),
                    st.floats(allow_nan=False, allow_infinity=False, width=32), st.booleans())
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=6))


def schema() -> st.SearchStrategy[Any]:
    leaf = st.one_of(
        st.sampled_from([{"type": t} for t in ("string", "integer", "number", "boolean", "null", "object", "array")]),
        st.fixed_dictionaries({"type": st.just("string")}, optional={
            "minLength": NUMBERS, "maxLength": NUMBERS,
            "pattern": st.sampled_from(["^[a-z]+$", "^a{5,2}$", "^a{2000}$", "no anchors", "^(a|b)*$", "^[$", "^x{3}$"]),
            "format": st.sampled_from(["date", "date-time", "uuid", "email", "time"])}),
        st.fixed_dictionaries({"enum": st.lists(SCALARS, min_size=1, max_size=6)}),
        st.fixed_dictionaries({"const": SCALARS}),
        st.sampled_from([{"enum": list(range(600))}, {"$ref": "https://example.com/s.json"}, {"$ref": "#/nowhere"},
                         {"$ref": "#/$defs/node"}, {"enum": "abc"}, {}]),
    )
    return st.recursive(leaf, lambda inner: st.one_of(
        st.fixed_dictionaries({"type": st.just("array"), "items": inner},
                              optional={"minItems": NUMBERS, "maxItems": NUMBERS}),
        st.fixed_dictionaries({"type": st.just("object"),
                               "properties": st.dictionaries(st.sampled_from(["a", "b", "c", "maxLength"]), inner,
                                                             max_size=3)},
                              optional={"required": st.lists(st.sampled_from(["a", "b"]), max_size=2),
                                        "additionalProperties": st.one_of(st.booleans(), inner)}),
        st.fixed_dictionaries({"anyOf": st.lists(inner, min_size=1, max_size=3)}),
        st.fixed_dictionaries({"prefixItems": st.lists(inner, max_size=3)}),
    ), max_leaves=6).map(lambda s: {**s, "$defs": {"node": {"type": "integer"}}} if isinstance(s, dict) else s)


# -- one request in one dialect -----------------------------------------------------------------------------
def request(dialect: str, grammar: str | None, fmt: Any, ban_eos: bool) -> tuple[str, dict[str, Any]]:
    if dialect == "kobold":
        body: dict[str, Any] = {"prompt": "Answer:", "max_length": 3, "temperature": 0, "ban_eos_token": ban_eos}
        if ban_eos:
            body["banned_strings"] = ["a", " "]
        return "/api/v1/generate", {**body, "grammar": grammar}
    if dialect == "openai-grammar":
        return "/v1/completions", {"prompt": "Answer:", "max_tokens": 3, "temperature": 0, "grammar": grammar}
    if dialect == "openai-schema":
        return "/v1/chat/completions", {"messages": [{"role": "user", "content": "JSON please"}], "max_tokens": 3,
                                        "temperature": 0,
                                        "response_format": {"type": "json_schema", "json_schema": {"schema": fmt}}}
    return "/api/generate", {"prompt": "JSON please", "stream": False, "format": fmt,
                             "options": {"num_predict": 3, "temperature": 0}}


def check(srv: Server, path: str, body: dict[str, Any]) -> None:
    if path == "/api/generate":
        body = {**body, "model": srv.pool()["active"]}
    r = httpx.post(f"{srv.url}{path}", content=json.dumps(body), timeout=120,
                   headers={"content-type": "application/json"})
    assert r.status_code < 500, (r.status_code, r.text[:500], json.dumps(body)[:500])
    assert "Traceback" not in r.text


def active(srv: Server) -> dict[str, Any]:
    pool = srv.pool()
    return next(i for i in pool["instances"] if i["name"] == pool["active"])


@pytest.fixture(scope="module")
def pid(srv: Server) -> Iterator[int]:
    before = active(srv)
    yield before["pid"]
    after = active(srv)  # after every example of the module: the same worker, never crashed
    assert after["pid"] == before["pid"] and after["crashes"] == 0, after


@settings(max_examples=80, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(grammar=GRAMMAR, dialect=st.sampled_from(["kobold", "openai-grammar"]), ban_eos=st.booleans())
def test_grammars(srv: Server, pid: int, grammar: str, dialect: str, ban_eos: bool) -> None:
    check(srv, *request(dialect, grammar, None, ban_eos))


@settings(max_examples=50, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(fmt=schema(), dialect=st.sampled_from(["openai-schema", "ollama"]))
def test_schemas(srv: Server, pid: int, fmt: Any, dialect: str) -> None:
    check(srv, *request(dialect, None, fmt, False))
