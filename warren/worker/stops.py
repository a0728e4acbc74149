"""Stop strings over a stream of text pieces, with the hold-back KoboldCpp clients rely on.

A stop string can arrive split over several tokens ("</s" + ">"), so text that *might* be the start
of a stop string is held back until the next piece decides. ``feed`` returns the text that is now
safe to show; ``stopped`` says a stop string completed, and ``text`` is the final completion (with the
stop string cut when ``trim`` is set, KoboldCpp's ``trim_stop``).

How: one Aho–Corasick automaton over all the stop strings, fed character by character. Its state is the
longest suffix of the output that is a prefix of some stop string — exactly the text to hold back — and
a stop string completes when the state (or one of its suffix links) ends one. Work per piece is a few
dictionary steps per character, whatever the number and length of the stop strings; building the
automaton is linear in their total length, which ``GenerationParams.check`` bounds.
Where several stop strings complete within one piece, the one that starts first wins (KoboldCpp cuts at
the earliest match in the text).
"""

from __future__ import annotations


class _Automaton:
    """Aho–Corasick over ``stops``: ``goto`` per state, ``fail`` links, ``depth`` (the prefix length a state
    stands for) and ``ends``: the stop strings that end at a state, its own or through suffix links."""

    __slots__ = ("goto", "fail", "depth", "ends")

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.goto: list[dict[str, int]] = [{}]
        self.depth = [0]
        own: list[list[str]] = [[]]
        for stop in stops:
            state = 0
            for ch in stop:
                nxt = self.goto[state].get(ch)
                if nxt is None:
                    nxt = len(self.goto)
                    self.goto[state][ch] = nxt
                    self.goto.append({})
                    self.depth.append(self.depth[state] + 1)
                    own.append([])
                state = nxt
            own[state].append(stop)
        self.fail = [0] * len(self.goto)
        self.ends: list[tuple[str, ...]] = [()] * len(self.goto)
        queue = list(self.goto[0].values())
        for state in queue:  # breadth first: a state's fail link is shallower, so already done
            self.ends[state] = tuple(own[state]) + self.ends[self.fail[state]]
            for ch, nxt in self.goto[state].items():
                self.fail[nxt] = self.step(self.fail[state], ch)
                queue.append(nxt)

    def step(self, state: int, ch: str) -> int:
        goto, fail = self.goto, self.fail
        while state and ch not in goto[state]:
            state = fail[state]
        return goto[state].get(ch, 0)


class StopMatcher:
    __slots__ = ("stops", "trim", "out", "shown", "stopped", "_auto", "_state")

    def __init__(self, stops: tuple[str, ...] | list[str], trim: bool = True) -> None:
        self.stops = tuple(dict.fromkeys(s for s in stops if s))
        self.trim = trim
        self.out = ""  # everything generated so far (cut at the stop string once stopped)
        self.shown = 0  # how much of ``out`` has been released by ``feed``
        self.stopped = False
        self._auto = _Automaton(self.stops) if self.stops else None
        self._state = 0

    def feed(self, piece: str) -> str:
        """Add a piece; return the newly releasable text ("" while held back or after a stop)."""
        if self.stopped:
            return ""
        base = len(self.out)
        self.out += piece
        auto = self._auto
        if auto is None:
            return self._release(len(self.out))
        state, best = self._state, None
        for offset, ch in enumerate(piece):
            state = auto.step(state, ch)
            for stop in auto.ends[state]:
                start = base + offset + 1 - len(stop)
                if best is None or (start, stop) < best:
                    best = (start, stop)
        self._state = state
        if best is not None:
            cut, stop = best
            self.out = self.out[:cut] if self.trim else self.out[: cut + len(stop)]
            self.stopped = True
            return self._release(len(self.out))
        return self._release(len(self.out) - auto.depth[state])  # hold back what may begin a stop string

    def _release(self, upto: int) -> str:
        if upto <= self.shown:
            return ""
        text = self.out[self.shown : upto]
        self.shown = upto
        return text

    def flush(self) -> str:
        """At the end of generation: release whatever was held back."""
        return self._release(len(self.out))

    @property
    def text(self) -> str:
        return self.out
