"""The grammar checks (``warren/grammar``): one row per refusal with its message, and a corpus of
grammars real users send that must pass. No model, no llama.cpp (``tests/integration/test_gbnf_mirror.py``
compares with llama.cpp's own parser)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from warren.bounds import GRAMMAR_MAX_CHARS, GRAMMAR_MAX_LEFT_DEPTH
from warren.errors import GrammarRejected
from warren.grammar import Constraints, check_gbnf, check_request

GRAMMARS = Path(__file__).resolve().parent.parent / "fixtures" / "grammars"


def nested(depth: int) -> str:
    return "root ::= " + "(" * depth + '"a"' + ")" * depth


def alternatives(n: int) -> str:
    return "root ::= " + " | ".join(f'"a{i}"' for i in range(n))


def left_chain(n: int) -> str:
    return "\n".join(["root ::= r0", *(f'r{i} ::= r{i + 1} "x"' for i in range(n)), f'r{n} ::= "y"'])


def doubling(n: int) -> str:
    return "\n".join(["root ::= a0", *(f"a{i} ::= a{i + 1} a{i + 1}" for i in range(n)), f'a{n} ::= ""'])


REFUSED = [
    # What llama.cpp crashes on (SIGABRT, SIGSEGV) or hangs in
    ("root ::= [z-a]", "the character range [z-a] is empty: its start comes after its end (line 1, column 11"),
    ('root ::= "\\x00"', "the literal character \\x00 can never be generated: NUL ends every token piece"),
    ('root ::= "\\uD800"', "the literal character \\uD800 can never be generated: surrogates are not UTF-8"),
    ("root ::= [\\U00110000]", "\\U00110000 is not a Unicode code point"),
    ("root ::= [^\\x01-\\U0010FFFF]", "matches no character a model can produce"),
    ("root ::= [\\uD800-\\uDFFF]", "matches no character a model can produce"),
    ('root ::= "a"{5,2}', "the repetition {5,2} has its maximum below its minimum"),
    ('root ::= "a"{3000}', "the repetition {3000} is above 2,000"),
    ('root ::= "a"{0,2001}', "the repetition {0,2001} is above 2,000"),
    (nested(100_000), "groups are nested more than 2,000 deep (line 1, column 2010"),
    ('root ::= a root "x" | "y"\na ::= b\nb ::= ""', "is left-recursive (root -> root): it can begin with itself "
                                                    "through rules that can match nothing"),
    ('root ::= root "x" | "y"', "the rule 'root' is left-recursive"),
    ('root ::= x "a"\nx ::= y\ny ::= x "b" | "c"', "left-recursive (x -> y -> x)"),
    ('root ::= ("")*', "the rule 'root(…)' is left-recursive"),
    (alternatives(20_000), "the rule 'root' can begin in 20,000 different ways; the limit is 1,024"),
    (doubling(22), "can begin through 8,388,608 paths of rule references; the limit is 50,000"),
    (left_chain(GRAMMAR_MAX_LEFT_DEPTH + 100), f"begins with a chain of {GRAMMAR_MAX_LEFT_DEPTH + 102:,} rule "
                                               f"references; the limit is {GRAMMAR_MAX_LEFT_DEPTH:,}"),
    ('root ::= "' + "x" * 60_000 + '"{2000}', "the grammar expands to more than 500,000 elements"),
    ('root ::= ("a" ("b"){0,50}){0,50}', "would make 2,600 copies of rules; llama.cpp allows 2,000"),
    ('x ::= "a" root{0}', "the grammar has no 'root' rule"),  # llama.cpp: SIGSEGV, it indexes past its rules
    ("x" * (GRAMMAR_MAX_CHARS + 1), "the grammar is 262,145 characters long; the limit is 262,144"),
    ('root ::= "a"\x00', "the grammar contains a NUL character"),
    ('root ::= "\ud800"', "the grammar contains a lone surrogate"),
    # What llama.cpp refuses too (only later, in the worker)
    ("root ::= foo", "the rule 'foo' is used but never defined (used at line 1, column 10)"),
    ('root ::= "a" | x{0}\ny ::= "b"', "the rule 'x' is used but never defined"),  # a hole in llama.cpp's rules
    ('x ::= "a"', "the grammar has no 'root' rule"),
    ("", "the grammar is empty"),
    ("root ::= (", "expecting ')' to close the group opened at line 1, column 10"),
    ('root ::= "abc', "unexpected end of the grammar inside a string literal"),
    ('root ::= "\\q"', "unknown escape \\q"),
    ('root ::= "\\x4"', "expecting 2 hex digits after \\x"),
    ("root ::= *", "nothing before this */+/?/{…} to repeat"),
    ("root ::= []*", "nothing before this"),
    ('root ::= "a"{x}', "expecting a number after '{'"),
    ("root ::= <[4294967296]>", "the token id 4294967296 is too large"),
    ('root ::= "a" )', "expecting a newline or the end after the rule (line 1, column 14"),
    ('root := "a"', "expecting ::= after the rule name 'root'"),
]


@pytest.mark.parametrize(("grammar", "words"), REFUSED, ids=[w[:40] for _, w in REFUSED])
def test_refused_with_a_message_that_names_the_problem(grammar: str, words: str) -> None:
    with pytest.raises(GrammarRejected) as info:
        check_gbnf(grammar)
    assert words in info.value.message


@pytest.mark.parametrize("grammar", [nested(100_000), alternatives(20_000), doubling(40), left_chain(20_000)],
                         ids=["nesting", "alternatives", "doubling", "left-chain"])
def test_hostile_grammars_are_refused_fast_and_without_recursion(grammar: str) -> None:
    started = time.perf_counter()
    with pytest.raises(GrammarRejected):
        check_gbnf(grammar)
    assert time.perf_counter() - started < 1.0


LLAMA_CPP_GRAMMARS = sorted(GRAMMARS.glob("*.gbnf"))
HAND_WRITTEN = [
    'root ::= " yes" | " no"',
    'root ::= item+\nitem ::= "- " [^\\n]+ "\\n"',
    "root ::= [a-]",  # the "-" before "]" is a character, as in llama.cpp
    "root ::= []",  # matches nothing: an empty alternative
    'root ::= (" "?)* "x"',  # begins with itself only in tail position: llama.cpp runs it
    'root ::= "a" | x{0}',  # x is never used: llama.cpp accepts it
    'root ::= [\\x00-\\x1F] | [^"\\\\\\x7F\\x00-\\x1F]',
    "root ::= <[5]> !<[99999999]> <|im_end|>",  # tokens are checked in the worker, with the vocabulary
    'root ::= "a"{2000}',
    'root ::= [0-9]{0,2000}',
    'root ::= "x"{1,}',
    nested(2_000),
    left_chain(GRAMMAR_MAX_LEFT_DEPTH - 2),
    alternatives(1_024),
    "# a comment\r\nroot ::= \"a\" | # another\r\n  \"b\"\r\n",
    'root ::= "é" [ぁ-ゟ] "\\U0001F600"',
]


@pytest.mark.parametrize("path", LLAMA_CPP_GRAMMARS, ids=[p.stem for p in LLAMA_CPP_GRAMMARS])
def test_llama_cpp_example_grammars_pass(path: Path) -> None:
    check_gbnf(path.read_text())


@pytest.mark.parametrize("grammar", HAND_WRITTEN, ids=range(len(HAND_WRITTEN)))
def test_hand_written_grammars_pass(grammar: str) -> None:
    check_gbnf(grammar)


TYPICAL_SCHEMAS = {
    "any object": {"type": "object"},
    "person": {"type": "object", "required": ["name", "age"],
               "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0},
                              "email": {"type": "string", "format": "email"},
                              "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 10}}},
    "enum": {"type": "string", "enum": ["red", "green", "blue"]},
    "union": {"type": "array", "items": {"anyOf": [{"type": "number"}, {"type": "null"}, {"type": "boolean"}]}},
    "tree": {"type": "object", "properties": {"tree": {"$ref": "#/$defs/node"}},
             "$defs": {"node": {"type": "object", "properties": {
                 "value": {"type": "integer"}, "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}}},
    "pattern": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3,5}$"},
    "long string": {"type": "string", "minLength": 3, "maxLength": 1003},
    "long list": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 1002},
    "formats": {"type": "object", "properties": {"d": {"type": "string", "format": "date"},
                                                 "t": {"type": "string", "format": "date-time"},
                                                 "u": {"type": "string", "format": "uuid"}}},
    "100 optional properties": {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(100)}},
    "512-value enum": {"enum": [f"value-{i}" for i in range(512)]},
    "tuple": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}]},
    "map": {"type": "object", "additionalProperties": {"type": "number"}},
    "allOf": {"allOf": [{"properties": {"a": {"type": "string"}}}, {"properties": {"b": {"type": "integer"}}}]},
}


@pytest.mark.parametrize("name", list(TYPICAL_SCHEMAS))
def test_grammars_made_from_typical_schemas_pass(name: str) -> None:
    grammar_module = pytest.importorskip("llama_cpp.llama_grammar")
    schema = TYPICAL_SCHEMAS[name]
    check_request(Constraints(json_schema=schema))  # the supervisor's check of the schema
    check_gbnf(grammar_module.json_schema_to_gbnf(json.dumps(schema)))  # the worker's, of what it becomes


class FakeVocabulary:
    """Tokens 0-9: 0 and 1 end generation, 2 has no text, "<|x|>" is token 3."""

    n_vocab = 10

    def is_eog(self, token: int) -> bool:
        return token in (0, 1)

    def piece(self, token: int) -> bytes:
        return b"" if token == 2 else f"t{token}".encode()

    def single_token(self, text: str) -> int | None:
        return {"<|x|>": 3, "<|end|>": 1}.get(text)


@pytest.mark.parametrize(("grammar", "words"), [
    ("root ::= <[10]>", "the token <[10]> is outside this model's vocabulary [0, 10)"),
    ("root ::= <[1]>", "the token <[1]> ends generation"),
    ("root ::= <|end|>", "the token <|end|> ends generation"),
    ("root ::= <[2]>", "the token <[2]> has no text"),
    ("root ::= <|nope|>", "the token <|nope|> is not a single token of this model"),
    ("root ::= !<|nope|>", "the token <|nope|> is not a single token"),
])
def test_tokens_are_checked_against_the_vocabulary(grammar: str, words: str) -> None:
    check_gbnf(grammar)  # without a vocabulary (the supervisor) nothing is known about tokens
    with pytest.raises(GrammarRejected, match=re.escape(words)):
        check_gbnf(grammar, FakeVocabulary())


def test_tokens_the_model_can_sample_pass() -> None:
    check_gbnf("root ::= <[3]> <|x|> !<[99]> !<[1]>", FakeVocabulary())


def test_check_request_names_the_field() -> None:
    with pytest.raises(GrammarRejected) as info:
        check_request(Constraints(grammar="root ::= [z-a]", grammar_param="grammar"))
    assert info.value.message.startswith("grammar: the character range [z-a] is empty")
    assert info.value.details["param"] == "grammar" and info.value.code == "invalid_grammar"
    with pytest.raises(GrammarRejected) as info:
        check_request(Constraints(json_schema={"enum": list(range(20_000))}, schema_param="format"))
    assert info.value.message == "format: the JSON schema at / has an enum of 20,000 values; the limit is 512"
    assert info.value.details["param"] == "format"
    check_request(Constraints())  # nothing to check


async def test_vet_request_checks_in_a_thread_and_only_when_there_is_something_to_check(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A 256 KB grammar takes ~0.3 s to check: that must not stall the event loop (heartbeats, streams)."""
    import threading

    import warren.grammar

    threads: list[threading.Thread] = []
    monkeypatch.setattr(warren.grammar, "check_request", lambda c: threads.append(threading.current_thread()))
    await warren.grammar.vet_request(Constraints(grammar='root ::= "a"'))
    await warren.grammar.vet_request(Constraints())
    assert len(threads) == 1 and threads[0] is not threading.main_thread()
