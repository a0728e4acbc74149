"""What must be true of a parsed grammar before llama.cpp may run it, each check with its reason.

On the rules ``gbnf.py`` builds (the same rules llama.cpp builds):

- **Undefined rules** and a missing ``root`` (llama.cpp refuses these too, but only in the worker).
- **Left recursion through nullable rules.** A rule that can begin with itself makes llama.cpp's
  ``advance_stack`` push ever-longer stacks until ``std::bad_alloc`` (SIGABRT). llama.cpp's own check
  only knows rules with a *directly* empty alternative, so ``root ::= a root "x" | "y"``,
  ``a ::= b``, ``b ::= ""`` gets through it. Here "nullable" is the full fixpoint.
- **Left-reference depth**: llama.cpp's left-recursion check recurses along leftmost references.
- **Width**: how many ways a rule can begin (terminals reachable at its first position, counted with
  multiplicity). Every way is one grammar stack, and each token is checked against the whole
  vocabulary once per stack; llama.cpp also de-duplicates stacks in quadratic time (65,000 stacks:
  17 s before the first token).
- **Left paths**: llama.cpp's left-recursion check walks every leftmost path with no memory, which is
  exponential in a grammar of doubling nullable rules.
- **Tokens** (only in the worker, where the vocabulary is known): a ``<[id]>`` or ``<text>`` token
  the model cannot sample — outside the vocabulary, end-of-generation, or with an empty piece — can
  never match, so the grammar would stop every candidate.

Everything is iterative: no check recurses, so no grammar can exhaust Python's stack either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from warren.bounds import GRAMMAR_MAX_LEFT_DEPTH, GRAMMAR_MAX_LEFT_PATHS, GRAMMAR_MAX_WIDTH
from warren.errors import GrammarRejected
from warren.grammar.gbnf import REF, TOKEN, TOKEN_NOT, Grammar, parse

CAP = 10**12  # counts are capped here: they only need to be compared with the bounds


class Vocabulary(Protocol):
    """What the worker knows about its model's tokens (``warren/worker/engine.py`` implements it)."""

    n_vocab: int

    def is_eog(self, token: int) -> bool: ...

    def piece(self, token: int) -> bytes: ...

    def single_token(self, text: str) -> int | None:
        """The one token ``text`` (``<|im_end|>``) is, with special tokens parsed; None if not exactly one."""
        ...


@dataclass(frozen=True, slots=True)
class GrammarFacts:
    rules: int
    elements: int
    width: int  # the most ways any rule (or rest of an alternative) can begin
    left_depth: int
    left_paths: int


def check_gbnf(text: str, vocab: Vocabulary | None = None) -> GrammarFacts:
    """Parse and check a grammar; raise ``GrammarRejected`` naming the first problem found."""
    g = parse(text)
    _check_defined(g)
    nullable = _nullable(g)
    direct = [any(not alt for alt in alts) for alts in _rules(g)]
    _check_direct_left_recursion(g, _left_edges(g, direct))
    left = _left_edges(g, nullable)
    comps, comp_of = _components(left)
    _check_growing_cycles(g, left, comps, comp_of)
    width, depth, paths = _measure(g, nullable, left, comps, comp_of)
    if vocab is not None:
        _check_tokens(g, vocab)
    return GrammarFacts(rules=len(g.rules), elements=g.elements, width=width, left_depth=depth, left_paths=paths)


def _check_defined(g: Grammar) -> None:
    """As llama.cpp: a name without a rule is an error if a rule still refers to it, or if a rule with a
    higher id exists (its rule vector has a hole there); ``x{0}`` drops the reference to ``x``. A
    ``root`` that is named but not defined is refused too: llama.cpp would index past its rules
    (``x ::= "a" root{0}`` is a SIGSEGV)."""
    root = g.symbols.get("root")
    if root is None or g.rules[root] is None:
        raise GrammarRejected("the grammar has no 'root' rule: generation starts from 'root ::= …'")
    last = max(i for i, alts in enumerate(g.rules) if alts is not None)
    referenced = {value for alts in _rules(g) for alt in alts for kind, value, _ in alt if kind == REF}
    for rule_id, alts in enumerate(g.rules):
        if alts is None and (rule_id <= last or rule_id in referenced):
            used = g.first_use.get(rule_id)
            at = f" (used at {g.where(used)})" if used is not None else ""
            raise GrammarRejected(f"the rule {g.names[rule_id]!r} is used but never defined{at}")


def _rules(g: Grammar) -> list[list[list[tuple[int, int, int]]]]:
    return [alts or [] for alts in g.rules]


def _nullable(g: Grammar) -> list[bool]:
    """Which rules can match the empty string: the least fixpoint, by counting down, in linear time."""
    rules = _rules(g)
    nullable = [False] * len(rules)
    remaining: list[int] = []  # per candidate alternative: references not yet known to be nullable
    owner: list[int] = []
    users: list[list[int]] = [[] for _ in rules]  # rule -> candidate alternatives that reference it
    todo: list[int] = []
    for rule_id, alts in enumerate(rules):
        for alt in alts:
            if any(kind != REF for kind, _, _ in alt):
                continue  # a terminal always consumes something
            index = len(remaining)
            remaining.append(len(alt))
            owner.append(rule_id)
            for _, ref, _ in alt:
                users[ref].append(index)
            if not alt and not nullable[rule_id]:
                nullable[rule_id] = True
                todo.append(rule_id)
    while todo:
        rule_id = todo.pop()
        for index in users[rule_id]:
            remaining[index] -= 1
            if remaining[index] == 0 and not nullable[owner[index]]:
                nullable[owner[index]] = True
                todo.append(owner[index])
    return nullable


def _left_edges(g: Grammar, nullable: list[bool]) -> list[list[tuple[int, bool]]]:
    """rule -> (rule it can begin with, whether that reference ends its alternative): the leftmost
    references, and those after references to nullable rules."""
    edges: list[list[tuple[int, bool]]] = []
    for alts in _rules(g):
        out: list[tuple[int, bool]] = []
        for alt in alts:
            for i, (kind, value, _) in enumerate(alt):
                if kind != REF:
                    break
                out.append((value, i == len(alt) - 1))
                if not nullable[value]:
                    break
        edges.append(out)
    return edges


def _check_direct_left_recursion(g: Grammar, left: list[list[tuple[int, bool]]]) -> None:
    """llama.cpp's own check, with its notion of "may be empty" (a rule with an empty alternative):
    a cycle it would refuse anyway is refused here, with the rules named."""
    state = [0] * len(left)  # 0 new, 1 on the path, 2 done
    for start in range(len(left)):
        if state[start]:
            continue
        state[start] = 1
        stack = [(start, 0)]
        while stack:
            rule_id, i = stack[-1]
            if i < len(left[rule_id]):
                stack[-1] = (rule_id, i + 1)
                nxt = left[rule_id][i][0]
                if state[nxt] == 1:
                    path = [r for r, _ in stack]
                    raise _left_recursive(g, path[path.index(nxt):] + [nxt], "")
                if state[nxt] == 0:
                    state[nxt] = 1
                    stack.append((nxt, 0))
            else:
                state[rule_id] = 2
                stack.pop()


def _left_recursive(g: Grammar, cycle: list[int], how: str) -> GrammarRejected:
    shown = " -> ".join(g.display(r) for r in cycle)
    return GrammarRejected(f"the rule {g.display(cycle[0])!r} is left-recursive ({shown}): it can begin with "
                           f"itself{how}, which llama.cpp cannot run; rewrite it to consume something first "
                           "(x ::= y x | y instead of x ::= x y | y)")


def _components(left: list[list[tuple[int, bool]]]) -> tuple[list[list[int]], list[int]]:
    """Strongly connected components (Tarjan, iterative), each after every component it reaches."""
    n = len(left)
    index, low, on_stack, comp_of = [-1] * n, [0] * n, [False] * n, [-1] * n
    stack: list[int] = []
    comps: list[list[int]] = []
    counter = 0
    for start in range(n):
        if index[start] != -1:
            continue
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack[start] = True
        work = [(start, 0)]
        while work:
            v, i = work[-1]
            if i < len(left[v]):
                work[-1] = (v, i + 1)
                w = left[v][i][0]
                if index[w] == -1:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack[w] = True
                    work.append((w, 0))
                elif on_stack[w]:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp: list[int] = []
                while True:
                    w = stack.pop()
                    on_stack[w] = False
                    comp_of[w] = len(comps)
                    comp.append(w)
                    if w == v:
                        break
                comps.append(comp)
    return comps, comp_of


def _check_growing_cycles(g: Grammar, left: list[list[tuple[int, bool]]], comps: list[list[int]],
                          comp_of: list[int]) -> None:
    """A rule that can begin with itself through rules that match nothing (which llama.cpp's check
    misses) is harmless when every reference on the way ends its alternative: ``advance_stack`` meets the
    same stack again and stops. If one does not, each turn pushes what follows it, and the stacks grow
    until ``std::bad_alloc`` (SIGABRT)."""
    for c, comp in enumerate(comps):
        for u in comp:
            for v, tail in left[u]:
                if comp_of[v] == c and not tail:
                    raise _left_recursive(g, [u, *_path(left, v, u, comp_of, c)],
                                          " through rules that can match nothing")


def _path(left: list[list[tuple[int, bool]]], src: int, dst: int, comp_of: list[int], c: int) -> list[int]:
    """Rules from ``src`` to ``dst`` inside one component (breadth first)."""
    came: dict[int, int] = {src: src}
    queue = [src]
    for v in queue:
        if v == dst:
            break
        for w, _ in left[v]:
            if comp_of[w] == c and w not in came:
                came[w] = v
                queue.append(w)
    path = [dst]
    while path[-1] != src:
        path.append(came[path[-1]])
    return path[::-1]


def _measure(g: Grammar, nullable: list[bool], left: list[list[tuple[int, bool]]], comps: list[list[int]],
             comp_of: list[int]) -> tuple[int, int, int]:
    """Width (ways to begin, in terminals), left depth and left paths, per component of the left-reference
    graph (a component is one rule unless rules begin with each other through tail references); refused
    above their bounds."""
    rules = _rules(g)
    width = [0] * len(comps)
    depth = [0] * len(comps)
    paths = [0] * len(comps)
    for c, comp in enumerate(comps):  # every component comes after the components it can begin with
        total, deepest, walks = 0, 0, len(comp)
        for rule_id in comp:
            for alt in rules[rule_id]:
                for kind, value, _ in alt:
                    if kind != REF:
                        total += 1
                        break
                    if comp_of[value] != c:
                        total += width[comp_of[value]]
                    if not nullable[value]:
                        break
            for target, _ in left[rule_id]:
                if comp_of[target] != c:
                    deepest = max(deepest, depth[comp_of[target]])
                    walks += paths[comp_of[target]]
        width[c], depth[c], paths[c] = min(CAP, total), len(comp) + deepest, min(CAP, walks)
    worst, where = max(width, default=0), -1
    if worst:
        where = comps[width.index(worst)][0]
    for rule_id, alts in enumerate(rules):
        for alt in alts:  # what is left after each element: the stacks after a token is accepted
            suffix = 0
            for kind, value, _ in reversed(alt):
                suffix = min(CAP, width[comp_of[value]] + (suffix if nullable[value] else 0)) if kind == REF else 1
                if suffix > worst:
                    worst, where = suffix, rule_id
    if worst > GRAMMAR_MAX_WIDTH:
        raise GrammarRejected(f"the rule {g.display(where)!r} can begin in {_count(worst)} different ways; the "
                              f"limit is {GRAMMAR_MAX_WIDTH:,} (llama.cpp checks every way against the whole "
                              "vocabulary for each token)")
    deep = max(range(len(comps)), key=depth.__getitem__)
    if depth[deep] > GRAMMAR_MAX_LEFT_DEPTH:
        raise GrammarRejected(f"the rule {g.display(comps[deep][0])!r} begins with a chain of {depth[deep]:,} "
                              f"rule references; the limit is {GRAMMAR_MAX_LEFT_DEPTH:,} (llama.cpp follows it "
                              "recursively)")
    many = max(range(len(comps)), key=paths.__getitem__)
    if paths[many] > GRAMMAR_MAX_LEFT_PATHS:
        raise GrammarRejected(f"the rule {g.display(comps[many][0])!r} can begin through {_count(paths[many])} "
                              f"paths of rule references; the limit is {GRAMMAR_MAX_LEFT_PATHS:,} (llama.cpp "
                              "walks every one)")
    return worst, depth[deep], paths[many]


def _count(n: int) -> str:
    return f"more than {CAP:,}" if n >= CAP else f"{n:,}"


def _check_tokens(g: Grammar, vocab: Vocabulary) -> None:
    for alts in _rules(g):
        for alt in alts:
            for kind, value, _ in alt:
                if kind not in (TOKEN, TOKEN_NOT):
                    continue
                shown = f"<[{value}]>"
                if value < 0:
                    shown = g.token_texts[-1 - value]
                    resolved = vocab.single_token(shown)
                    if resolved is None:
                        raise GrammarRejected(f"the token {shown} is not a single token of this model")
                    value = resolved
                if kind == TOKEN_NOT:
                    continue  # "any token but this one" matches whatever the id
                if not 0 <= value < vocab.n_vocab:
                    raise GrammarRejected(f"the token {shown} is outside this model's vocabulary "
                                          f"[0, {vocab.n_vocab})")
                if vocab.is_eog(value):
                    raise GrammarRejected(f"the token {shown} ends generation, so a grammar cannot require it")
                piece = vocab.piece(value)
                if not piece or piece[0] == 0:
                    raise GrammarRejected(f"the token {shown} has no text, so llama.cpp never lets a grammar "
                                          "match it")
