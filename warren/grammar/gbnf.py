"""A GBNF parser that reads a grammar the way llama.cpp does, without recursion, and stops early.

Why a second parser: llama.cpp's own (``src/llama-grammar.cpp``, ``llama_grammar_parser``) runs inside
the worker, recurses once per nested group (20,000 levels overflow the stack: SIGSEGV), copies what a
repetition repeats without limit, and loops without end on ``{5,2}``. This one accepts the same
language, builds the same rules (groups and repetitions become generated rules named
``<rule>_<id>``, exactly as ``handle_repetitions`` writes them), and refuses with line and column the
inputs that would hurt llama.cpp — before any of them reaches it.

The rules it builds (``Grammar``) are what ``checks.py`` analyses. One deliberate difference: a string
literal or a character class is one element here, weighted by the number of llama.cpp elements it
stands for, so a long literal is not a long list; the counts (``Grammar.elements``) are llama.cpp's.

Character checks that belong to parsing are done here, where the position is known: an inverted range
(``[z-a]`` matches nothing), a code point no token can produce (NUL is the end of a decoded piece,
surrogates are not UTF-8, nothing lies above U+10FFFF), a class that matches no such code point.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from warren.bounds import GRAMMAR_MAX_CHARS, GRAMMAR_MAX_ELEMENTS, GRAMMAR_MAX_NESTING, GRAMMAR_MAX_REPEAT
from warren.errors import GrammarRejected

# Element kinds. A rule is a list of alternatives; an alternative is a list of (kind, value, weight).
REF = 0  # value: rule id
CHARS = 1  # a literal character, a literal string (weight: its length) or a character class
TOKEN = 2  # value: token id, or -1-k for the k-th ``<text>`` token (resolved with a vocabulary)
TOKEN_NOT = 3

Element = tuple[int, int, int]
Alternative = list[Element]

MAX_CODE_POINT = 0x10FFFF
SURROGATES = (0xD800, 0xDFFF)
# Code points a token's piece can decode to: llama.cpp ends a decoded piece at 0.
PRODUCIBLE = ((1, SURROGATES[0] - 1), (SURROGATES[1] + 1, MAX_CODE_POINT))

_WORD = re.compile(r"[a-zA-Z0-9-]+")
_INT = re.compile(r"[0-9]+")
_PLAIN = re.compile(r'[^"\\]+')  # the raw characters of a literal, up to its end or an escape
_SPACE = re.compile(r"(?:[ \t]|#[^\r\n]*)*")
_SPACE_NL = re.compile(r"(?:[ \t\r\n]|#[^\r\n]*)*")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPES = {"t": 9, "r": 13, "n": 10, "\\": 92, '"': 34, "[": 91, "]": 93, "-": 45}
_HEX_SIZES = {"x": 2, "u": 4, "U": 8}
UINT32_MAX = 0xFFFFFFFF


@dataclass(slots=True)
class Grammar:
    """Rules by id (``names[id]``); ``None`` for a name that was referenced but never defined."""

    names: list[str] = field(default_factory=list)
    rules: list[list[Alternative] | None] = field(default_factory=list)
    symbols: dict[str, int] = field(default_factory=dict)
    first_use: dict[int, int] = field(default_factory=dict)  # rule id -> offset of its first reference
    token_texts: list[str] = field(default_factory=list)  # ``<text>`` tokens, resolved in the worker
    elements: int = 0  # llama.cpp's element count (END and ALT included)
    text: str = ""

    def display(self, rule_id: int) -> str:
        """A rule's name for messages: generated names (``root_7``) say what they came from."""
        name = self.names[rule_id]
        base, sep, _ = name.rpartition("_")
        return f"{base}(…)" if sep else name

    def where(self, offset: int) -> str:
        return where(self.text, offset)


def where(text: str, offset: int) -> str:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return f"line {line}, column {column}"


def show(cp: int) -> str:
    """A code point as the grammar would write it."""
    if 0x20 < cp < 0x7F:
        return chr(cp)
    return f"\\x{cp:02X}" if cp < 0x100 else f"\\u{cp:04X}" if cp < 0x10000 else f"\\U{cp:08X}"


@dataclass(slots=True)
class _Frame:
    """One rule or group being parsed: the state llama.cpp keeps on its C stack."""

    name: str
    rule_id: int
    nested: bool
    open_at: int = 0  # offset of the group's "(" (for messages)
    n_before: int = 0  # symbols before the group's own id: llama.cpp's ``n_rules_before``
    alts: list[Alternative] = field(default_factory=list)
    cur: Alternative = field(default_factory=list)
    last_sym_start: int = 0
    n_prev_rules: int = 1


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.n = len(text)
        self.g = Grammar(text=text)

    # -- errors and space ------------------------------------------------------------------------------
    def fail(self, problem: str, offset: int) -> GrammarRejected:
        snippet = self.text[offset:offset + 24].split("\n", 1)[0]
        near = f" near {snippet!r}" if snippet else " at the end"
        return GrammarRejected(f"{problem} ({where(self.text, offset)}{near})")

    def skip(self, pos: int, newline_ok: bool) -> int:
        return (_SPACE_NL if newline_ok else _SPACE).match(self.text, pos).end()  # type: ignore[union-attr]

    # -- symbols ---------------------------------------------------------------------------------------
    def symbol(self, name: str, used_at: int | None = None) -> int:
        g = self.g
        rule_id = g.symbols.get(name)
        if rule_id is None:
            rule_id = g.symbols[name] = len(g.names)
            g.names.append(name)
            g.rules.append(None)
        if used_at is not None:
            g.first_use.setdefault(rule_id, used_at)
        return rule_id

    def generated(self, base: str) -> int:
        return self.symbol(f"{base}_{len(self.g.names)}")

    def count(self, n: int, offset: int) -> None:
        self.g.elements += n
        if self.g.elements > GRAMMAR_MAX_ELEMENTS:
            raise self.fail(f"the grammar expands to more than {GRAMMAR_MAX_ELEMENTS:,} elements "
                            "(repetitions copy what they repeat)", offset)

    # -- the grammar -----------------------------------------------------------------------------------
    def parse(self) -> Grammar:
        text = self.text
        if len(text) > GRAMMAR_MAX_CHARS:
            raise GrammarRejected(f"the grammar is {len(text):,} characters long; the limit is {GRAMMAR_MAX_CHARS:,}")
        if "\x00" in text:
            raise self.fail("the grammar contains a NUL character", text.index("\x00"))
        if m := _LONE_SURROGATE.search(text):
            raise self.fail("the grammar contains a lone surrogate, which is not UTF-8", m.start())
        pos = self.skip(0, True)
        if pos >= self.n:
            raise GrammarRejected("the grammar is empty: it needs at least a 'root ::= …' rule")
        while pos < self.n:
            pos = self.rule(pos)
        return self.g

    def rule(self, pos: int) -> int:
        m = _WORD.match(self.text, pos)
        if not m:
            raise self.fail("expecting a rule name", pos)
        name = m.group()
        pos = self.skip(m.end(), False)
        rule_id = self.symbol(name)
        if not self.text.startswith("::=", pos):
            raise self.fail(f"expecting ::= after the rule name {name!r}", pos)
        pos = self.alternates(self.skip(pos + 3, True), name, rule_id)
        if pos < self.n:
            c = self.text[pos]
            if c == "\r":
                pos += 2 if self.text.startswith("\n", pos + 1) else 1
            elif c == "\n":
                pos += 1
            else:
                raise self.fail("expecting a newline or the end after the rule", pos)
        return self.skip(pos, True)

    def alternates(self, pos: int, name: str, rule_id: int) -> int:
        """A rule's alternatives, groups included, with an explicit stack where llama.cpp recurses."""
        text, n = self.text, self.n
        frames = [_Frame(name, rule_id, nested=False)]
        while True:
            f = frames[-1]
            c = text[pos] if pos < n else ""
            if c == '"':
                pos = self.literal(pos + 1, f)
            elif c == "[":
                pos = self.char_class(pos + 1, f)
            elif c in ("<", "!"):
                pos = self.token(pos, f)
            elif c and (m := _WORD.match(text, pos)):
                ref = self.symbol(m.group(), used_at=pos)
                pos = self.skip(m.end(), f.nested)
                self.push(f, (REF, ref, 1), pos)
            elif c == "(":
                open_at = pos
                pos = self.skip(pos + 1, True)
                n_before = len(self.g.names)
                frames.append(_Frame(f.name, self.generated(f.name), nested=True, open_at=open_at,
                                     n_before=n_before))
                if len(frames) - 1 > GRAMMAR_MAX_NESTING:
                    raise self.fail(f"groups are nested more than {GRAMMAR_MAX_NESTING:,} deep", open_at)
            elif c == ".":
                pos = self.skip(pos + 1, f.nested)
                self.push(f, (CHARS, 0, 1), pos)
            elif c in ("*", "+", "?"):
                at = pos
                pos = self.skip(pos + 1, f.nested)
                self.repeat(f, *{"*": (0, None), "+": (1, None), "?": (0, 1)}[c], at)
            elif c == "{":
                pos = self.braces(pos, f)
            elif c == "|":
                f.alts.append(f.cur)
                f.cur, f.last_sym_start, f.n_prev_rules = [], 0, 1
                pos = self.skip(pos + 1, True)
            else:  # the end of this rule's (or group's) alternatives
                f.alts.append(f.cur)
                self.g.rules[f.rule_id] = f.alts
                self.count(len(f.alts), pos)  # one ALT between alternatives, one END
                frames.pop()
                if not frames:
                    return pos
                parent = frames[-1]
                if c != ")":
                    raise self.fail(f"expecting ')' to close the group opened at {where(text, f.open_at)}", pos)
                parent.last_sym_start = len(parent.cur)
                parent.cur.append((REF, f.rule_id, 1))
                self.count(1, pos)
                parent.n_prev_rules = max(1, len(self.g.names) - f.n_before)
                pos = self.skip(pos + 1, parent.nested)

    def push(self, f: _Frame, element: Element, pos: int) -> None:
        f.last_sym_start = len(f.cur)
        f.n_prev_rules = 1
        f.cur.append(element)
        self.count(element[2], pos)

    # -- terminals -------------------------------------------------------------------------------------
    def char(self, pos: int) -> tuple[int, int]:
        """One character, raw or escaped: (code point, next offset)."""
        text = self.text
        if pos >= self.n:
            raise self.fail("unexpected end of the grammar", pos)
        if text[pos] != "\\":
            return ord(text[pos]), pos + 1
        e = text[pos + 1] if pos + 1 < self.n else ""
        if e in _HEX_SIZES:
            size = _HEX_SIZES[e]
            digits = text[pos + 2:pos + 2 + size]
            if len(digits) != size or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise self.fail(f"expecting {size} hex digits after \\{e}", pos)
            cp = int(digits, 16)
            if cp > MAX_CODE_POINT:
                raise self.fail(f"\\{e}{digits} is not a Unicode code point (the largest is \\U0010FFFF)", pos)
            return cp, pos + 2 + size
        if e in _ESCAPES:
            return _ESCAPES[e], pos + 2
        raise self.fail(f"unknown escape \\{e}" if e else "a backslash at the end of the grammar", pos)

    def literal(self, pos: int, f: _Frame) -> int:
        text, n = self.text, self.n
        start = pos - 1
        length = 0
        while True:
            if pos >= n:
                raise self.fail("unexpected end of the grammar inside a string literal", start)
            c = text[pos]
            if c == '"':
                break
            if c == "\\":
                at = pos
                cp, pos = self.char(pos)
                if cp == 0 or SURROGATES[0] <= cp <= SURROGATES[1]:
                    raise self.fail(f"the literal character {show(cp)} can never be generated: "
                                    f"{'NUL ends every token piece' if cp == 0 else 'surrogates are not UTF-8'}", at)
                length += 1
            else:
                m = _PLAIN.match(text, pos)
                assert m is not None
                length += m.end() - pos
                pos = m.end()
        pos = self.skip(pos + 1, f.nested)
        f.last_sym_start = len(f.cur)
        f.n_prev_rules = 1
        if length:  # "" adds nothing, as in llama.cpp (so ""* has nothing to repeat)
            f.cur.append((CHARS, 0, length))
            self.count(length, pos)
        return pos

    def char_class(self, pos: int, f: _Frame) -> int:
        text, n = self.text, self.n
        start = pos - 1
        negated = text.startswith("^", pos)
        if negated:
            pos += 1
        ranges: list[tuple[int, int]] = []
        weight = 0
        while True:
            if pos >= n:
                raise self.fail("unexpected end of the grammar inside a character class", start)
            if text[pos] == "]":
                break
            at = pos
            lo, pos = self.char(pos)
            hi = lo
            weight += 1
            if text.startswith("-", pos) and not text.startswith("]", pos + 1):
                if pos + 1 >= n:
                    raise self.fail("unexpected end of the grammar inside a character class", start)
                hi, pos = self.char(pos + 1)
                weight += 1
                if lo > hi:
                    raise self.fail(f"the character range [{show(lo)}-{show(hi)}] is empty: its start comes "
                                    "after its end", at)
            ranges.append((lo, hi))
        end = pos + 1
        pos = self.skip(end, f.nested)
        f.last_sym_start = len(f.cur)
        f.n_prev_rules = 1
        if weight:  # [] and [^] add nothing, as in llama.cpp
            if not _matches_something(ranges, negated):
                raise self.fail(f"the character class {text[start:end]} matches no character a model can "
                                "produce", start)
            f.cur.append((CHARS, 0, weight))
            self.count(weight, pos)
        return pos

    def token(self, pos: int, f: _Frame) -> int:
        text = self.text
        kind = TOKEN
        if text[pos] == "!":
            kind = TOKEN_NOT
            pos += 1
        if not text.startswith("<", pos):
            raise self.fail("expecting '<' after '!'", pos)
        start = pos
        if text.startswith("[", pos + 1):
            m = _INT.match(text, pos + 2)
            if not m:
                raise self.fail("expecting a token id in <[…]>", pos + 2)
            value = int(m.group())
            if value > UINT32_MAX:
                raise self.fail(f"the token id {value} is too large", m.start())
            pos = m.end()
            if not text.startswith("]>", pos):
                raise self.fail("expecting ]> after the token id", pos)
            pos += 2
        else:
            end = text.find(">", pos + 1)
            if end < 0:
                raise self.fail("expecting '>' to end the token", start)
            value = -1 - len(self.g.token_texts)
            self.g.token_texts.append(text[start:end + 1])
            pos = end + 1
        pos = self.skip(pos, f.nested)
        self.push(f, (kind, value, 1), pos)
        return pos

    # -- repetitions -----------------------------------------------------------------------------------
    def braces(self, pos: int, f: _Frame) -> int:
        text = self.text
        at = pos
        pos = self.skip(pos + 1, f.nested)
        m = _INT.match(text, pos)
        if not m:
            raise self.fail("expecting a number after '{'", pos)
        low, high = int(m.group()), None
        pos = self.skip(m.end(), f.nested)
        if text.startswith("}", pos):
            high = low
            pos = self.skip(pos + 1, f.nested)
        elif text.startswith(",", pos):
            pos = self.skip(pos + 1, f.nested)
            if m := _INT.match(text, pos):
                high = int(m.group())
                pos = self.skip(m.end(), f.nested)
            if not text.startswith("}", pos):
                raise self.fail("expecting '}' to end the repetition", pos)
            pos = self.skip(pos + 1, f.nested)
        else:
            raise self.fail("expecting ',' or '}' in the repetition", pos)
        shown = text[at:pos].strip()
        if low > GRAMMAR_MAX_REPEAT or (high is not None and high > GRAMMAR_MAX_REPEAT):
            raise self.fail(f"the repetition {shown} is above {GRAMMAR_MAX_REPEAT:,} (llama.cpp refuses a larger "
                            "minimum and silently drops a larger maximum; write {m,} for no maximum)", at)
        if high is not None and high < low:
            raise self.fail(f"the repetition {shown} has its maximum below its minimum", at)
        self.repeat(f, low, high, at)
        return pos

    def repeat(self, f: _Frame, low: int, high: int | None, at: int) -> None:
        """``handle_repetitions``: S{m,n} -> S×m, then n-m nested optional rules (or one recursive one)."""
        if f.last_sym_start == len(f.cur):
            raise self.fail("nothing before this */+/?/{…} to repeat", at)
        prev = f.cur[f.last_sym_start:]
        total = high if high is not None and high > 0 else (low if low > 0 else 1)
        if f.n_prev_rules * total > GRAMMAR_MAX_REPEAT:
            raise self.fail(f"this repetition would make {f.n_prev_rules * total:,} copies of rules; llama.cpp "
                            f"allows {GRAMMAR_MAX_REPEAT:,}", at)
        weight = sum(e[2] for e in prev)
        n_opt = 1 if high is None else high - low
        # Net elements: the copies kept in this rule, each optional rule (S, a reference, ALT, END), the
        # reference to the first optional rule.
        self.count(weight * (low - 1 if low > 0 else -1) + n_opt * (weight + 3) + (1 if n_opt else 0), at)
        if low == 0:
            del f.cur[f.last_sym_start:]
        else:
            f.cur.extend(prev * (low - 1))
        last = 0
        for i in range(n_opt):
            rule_id = self.generated(f.name)
            first = list(prev)
            if i > 0 or high is None:
                first.append((REF, rule_id if high is None else last, 1))
            self.g.rules[rule_id] = [first, []]
            last = rule_id
        if n_opt:
            f.cur.append((REF, last, 1))
        f.n_prev_rules *= total


def _matches_something(ranges: list[tuple[int, int]], negated: bool) -> bool:
    """Whether a class (its ranges, maybe negated) contains a code point a token can produce."""
    if not negated:
        return any(lo <= b and a <= hi for lo, hi in ranges for a, b in PRODUCIBLE)
    covered = sorted(ranges)
    for a, b in PRODUCIBLE:  # is some point of [a, b] outside every range?
        nxt = a
        for lo, hi in covered:
            if lo > nxt:
                break
            nxt = max(nxt, hi + 1)
        if nxt <= b:
            return True
    return False


def parse(text: str) -> Grammar:
    """Parse GBNF as llama.cpp would; raises ``GrammarRejected`` naming the problem and its place."""
    return _Parser(text).parse()
