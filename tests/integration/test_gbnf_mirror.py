"""warren's GBNF parser agrees with llama.cpp's: what one accepts the other accepts, what one refuses as
malformed the other refuses too. llama.cpp runs in a subprocess (it can crash), and is only given
grammars warren does not refuse as hazards (those are the point of refusing them)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

from warren.errors import GrammarRejected
from warren.grammar import check_gbnf

GRAMMARS = Path(__file__).resolve().parent.parent / "fixtures" / "grammars"

# Reads JSON-encoded grammars, one a line; answers 1 (llama.cpp built a grammar) or 0 (it returned NULL).
JUDGE = """
import ctypes, json, sys
import llama_cpp as L
quiet = L.llama_log_callback(lambda *a: None)
L.llama_log_set(quiet, ctypes.c_void_p(0))
for line in sys.stdin:
    s = L.llama_sampler_init_grammar(None, json.loads(line).encode(), b"root")
    print(1 if s else 0, flush=True)
    if s:
        L.llama_sampler_free(s)
"""

# Refusals that say the text is malformed (llama.cpp refuses it too), as opposed to hazards.
MALFORMED = ("expecting", "unexpected end", "unknown escape", "never defined", "no 'root' rule", "nothing before",
             "a backslash at the end", "hex digits", "the grammar is empty", "is too large", "it can begin with itself,")
PIECES = ['"a"', '"bc"', '""', "[a-z]", "[^a]", "[]", "[^]", "[a-]", "[-a]", "[\\]-]", '"\\x41"', '"é"', ".", "x",
          "y", "root", "<[5]>", "!<[7]>", "[\\x00-\\x1f]", "[^\\x01-\\x7f]", '"\\q"', "[", '"', "(", ")", "|", "*",
          "+", "?", "{2}", "{0,3}", "{1,}", "{0}", "{ 1 , 2 }", "{,}", "{1,", "# c\n", "\n", "\r\n", "\t", "::=", "-",
          "\\", "{", "}"]


def atoms(rnd: random.Random) -> str:
    """Random token soup: mostly malformed."""
    rules = [f"{name} ::= " + " ".join(rnd.choice(PIECES) for _ in range(rnd.randint(0, 8)))
             for name in rnd.sample(["root", "x", "y", "z-1"], rnd.randint(1, 3))]
    return rnd.choice(["\n", "\r\n", " "]).join(rules) + rnd.choice(["", "\n"])


def expression(rnd: random.Random, depth: int = 0) -> str:
    r = rnd.random()
    if depth > 3 or r < 0.4:
        return rnd.choice(PIECES[:20])
    if r < 0.6:
        return "(" + " | ".join(expression(rnd, depth + 1) for _ in range(rnd.randint(1, 3))) + ")"
    if r < 0.8:
        return expression(rnd, depth + 1) + rnd.choice(["*", "+", "?", "{2}", "{0,3}", "{1,}", "{0}", "{3,3}"])
    return " ".join(expression(rnd, depth + 1) for _ in range(rnd.randint(1, 3)))


def structured(rnd: random.Random) -> str:
    """Well-formed rule sets: mostly accepted, sometimes left-recursive or with undefined names."""
    names = ["root", *rnd.sample(["x", "y"], rnd.randint(0, 2))]
    return "\n".join(f"{n} ::= " + " | ".join(expression(rnd) for _ in range(rnd.randint(1, 3))) for n in names) + "\n"


def test_the_parser_agrees_with_llama_cpp() -> None:
    rnd = random.Random(11)
    corpus = [p.read_text() for p in sorted(GRAMMARS.glob("*.gbnf"))]
    corpus += [atoms(rnd) for _ in range(400)] + [structured(rnd) for _ in range(600)]
    ours: list[tuple[str, int, str]] = []
    for grammar in corpus:
        try:
            check_gbnf(grammar)
            ours.append((grammar, 1, ""))
        except GrammarRejected as exc:
            if any(word in exc.message for word in MALFORMED):
                ours.append((grammar, 0, exc.message))
    judge = subprocess.run([sys.executable, "-c", JUDGE], input="".join(json.dumps(g) + "\n" for g, _, _ in ours),
                           capture_output=True, text=True, timeout=120)
    theirs = [int(x) for x in judge.stdout.split()]
    assert len(theirs) == len(ours), f"llama.cpp died (status {judge.returncode}) on {ours[len(theirs)][0]!r}"
    mismatches = [(g, why) for (g, mine, why), other in zip(ours, theirs, strict=True) if mine != other]
    assert not mismatches, mismatches[:5]
    accepted = sum(mine for _, mine, _ in ours)
    assert accepted > 200 and len(ours) - accepted > 250  # both sides of the comparison are well covered
