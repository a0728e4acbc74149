"""Banned phrases of several tokens (KoboldCpp's "anti-slop" ``banned_strings``): the text side.

Why: a phrase such as "shivers down her spine" is many tokens, so a logit bias cannot ban it; KoboldCpp lets the
model write it, then backs up to where it began and samples again with the phrase's first token banned at that
position. The engine does the backing up (KV cache, sampler state, ``warren/worker/engine.py``); this class
watches the text. Matching is case-insensitive, as KoboldCpp's.

Streaming clients must never see a banned phrase, so text that might be the start of one is held back (like the
stop strings of ``warren/worker/stops.py``), and whole tokens at that: the token where a phrase starts can begin
before the phrase does, and a token already shown can never be taken back. A token is released once no banned
phrase can start in it.
"""

from __future__ import annotations

import bisect
from typing import Any

MAX_REWINDS = 256  # back-ups per request: past it the model keeps returning to a phrase, and the request ends before it

def _lower(text: str) -> str:
    """Lower case with the same length, so offsets stay those of the text (a few characters lower to two)."""
    low = text.lower()
    return low if len(low) == len(text) else "".join(c if len(c.lower()) != 1 else c.lower() for c in text)


class PhraseGuard:
    __slots__ = ("phrases", "prefixes", "longest", "text", "low", "starts", "states", "released")

    def __init__(self, phrases: tuple[str, ...] | list[str]) -> None:
        self.phrases = tuple(dict.fromkeys(_lower(p) for p in phrases if p))
        self.prefixes = {p[:i] for p in self.phrases for i in range(1, len(p))}
        self.longest = max((len(p) for p in self.phrases), default=0)
        self.text = ""  # the text of every token so far
        self.low = ""
        self.starts: list[int] = []  # where each token's text begins in ``text``
        self.states: list[Any] = []  # the UTF-8 decoder's state before each token (to rewind it)
        self.released = 0  # characters of ``text`` given out

    def __bool__(self) -> bool:
        return bool(self.phrases)

    def push(self, piece: str, decoder_state: Any) -> tuple[str, int | None]:
        """A token's text. Returns the text now safe to show, and None; or "" and the index of the token where a
        banned phrase that this token completes begins (the engine backs up to it and calls ``rewind``)."""
        base = len(self.text)
        self.starts.append(base)
        self.states.append(decoder_state)
        self.text += piece
        self.low += _lower(piece)
        low = self.low
        hit = -1
        for phrase in self.phrases:
            at = low.find(phrase, max(0, base - len(phrase) + 1))
            if at >= 0 and (hit < 0 or at < hit):
                hit = at
        if hit >= 0:
            return "", bisect.bisect_right(self.starts, hit) - 1
        held = len(low)
        for k in range(min(self.longest - 1, len(low)), 0, -1):
            if low[-k:] in self.prefixes:
                held = len(low) - k
                break
        upto = self.starts[bisect.bisect_right(self.starts, held) - 1] if held < len(low) else len(low)
        return self._release(upto), None

    def rewind(self, index: int) -> Any:
        """Forget the tokens from ``index`` on; returns the decoder state to restore."""
        state = self.states[index]
        cut = self.starts[index]
        del self.starts[index:], self.states[index:]
        self.text, self.low = self.text[:cut], self.low[:cut]
        return state

    def flush(self, tail: str = "") -> str:
        """At the end: the rest of the text (an unfinished phrase is not a banned one)."""
        self.text += tail
        return self._release(len(self.text))

    def _release(self, upto: int) -> str:
        if upto <= self.released:
            return ""
        out = self.text[self.released : upto]
        self.released = upto
        return out
