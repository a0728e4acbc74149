"""Grammars and JSON schemas are checked here before llama.cpp is given them.

A grammar llama.cpp should not run does not fail politely: ``root ::= [z-a]`` aborts the worker
(SIGABRT, "Unexpected empty grammar stack"), 20,000 nested groups overflow its stack (SIGSEGV),
``"a"{5,2}`` allocates without end, a 20,000-way alternative stalls the model for everyone. So every
grammar is checked twice: in the supervisor, before the pool is asked for a model (a hostile request
never loads or evicts one), and in the worker right before ``llama_sampler_init_grammar`` — there with
the vocabulary, and on the grammar the JSON-schema converter made.

- ``gbnf.py``: the parser (llama.cpp's language and rules, iterative, bounded);
- ``checks.py``: what must be true of the parsed rules (``check_gbnf``);
- ``schema.py``: bounds on a JSON schema before it is converted (``check_schema``);
- here: ``Constraints`` (what a request asks to constrain its output with) and ``check_request``,
  the one entry point of the API. Its work is CPU-bound (up to ~0.3 s for a 256 KB grammar), so the
  API awaits ``vet_request``, which runs it off the event loop.

The bounds and their reasons are in ``warren/bounds.py``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from warren.errors import GrammarRejected
from warren.grammar.checks import GrammarFacts, Vocabulary, check_gbnf
from warren.grammar.schema import check_schema

__all__ = ["Constraints", "GrammarFacts", "Vocabulary", "check_gbnf", "check_request", "check_schema",
           "vet_request"]


@dataclass(frozen=True, slots=True)
class Constraints:
    """The output constraints of one request, read from its body before any model is chosen.

    ``json_schema`` is the parsed schema as the client sent it (a dict), or None. The ``*_param``
    fields name the request fields they came from, so the 400 points at them (``grammar``,
    ``response_format``, ``format``)."""

    grammar: str = ""
    json_schema: Any = None
    grammar_param: str = "grammar"
    schema_param: str = "response_format"

    def __bool__(self) -> bool:
        return bool(self.grammar) or self.json_schema is not None


def check_request(constraints: Constraints) -> None:
    """Raise ``GrammarRejected`` (400, naming the field and the problem) unless llama.cpp may be given
    this request's grammar and schema."""
    if constraints.grammar:
        try:
            check_gbnf(constraints.grammar)
        except GrammarRejected as exc:
            raise _naming(exc, constraints.grammar_param) from None
    if constraints.json_schema is not None:
        try:
            check_schema(constraints.json_schema)
        except GrammarRejected as exc:
            raise _naming(exc, constraints.schema_param) from None


async def vet_request(constraints: Constraints) -> None:
    """``check_request`` in a worker thread (nothing to do for a request without constraints)."""
    if constraints:
        await asyncio.to_thread(check_request, constraints)


def _naming(exc: GrammarRejected, param: str) -> GrammarRejected:
    return GrammarRejected(f"{param}: {exc.message}", hint=exc.hint, param=param)
