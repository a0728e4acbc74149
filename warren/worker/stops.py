"""Stop strings over a stream of text pieces, with the hold-back KoboldCpp clients rely on.

A stop string can arrive split over several tokens ("</s" + ">"), so text that *might* be the start
of a stop string is held back until the next piece decides. ``feed`` returns the text that is now
safe to show; ``stopped`` says a stop string completed, and ``text`` is the final completion (with the
stop string cut when ``trim`` is set, KoboldCpp's ``trim_stop``). Work per piece is bounded by the
longest stop string, not by the length of the completion.
"""

from __future__ import annotations


class StopMatcher:
    __slots__ = ("stops", "trim", "longest", "out", "shown", "stopped")

    def __init__(self, stops: tuple[str, ...] | list[str], trim: bool = True) -> None:
        self.stops = tuple(s for s in stops if s)
        self.trim = trim
        self.longest = max((len(s) for s in self.stops), default=0)
        self.out = ""  # everything generated so far (cut at the stop string once stopped)
        self.shown = 0  # how much of ``out`` has been released by ``feed``
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Add a piece; return the newly releasable text ("" while held back or after a stop)."""
        if self.stopped:
            return ""
        start = max(0, len(self.out) - self.longest + 1)
        self.out += piece
        if not self.stops:
            return self._release(len(self.out))
        window = self.out[start:]
        hits = [(i, s) for s in self.stops if (i := window.find(s)) >= 0]
        if hits:
            index, stop = min(hits)
            cut = start + index
            self.out = self.out[:cut] if self.trim else self.out[: cut + len(stop)]
            self.stopped = True
            return self._release(len(self.out))
        return self._release(len(self.out) - self._held_suffix())

    def _held_suffix(self) -> int:
        """Length of the longest suffix of ``out`` that is a proper prefix of some stop string."""
        tail = self.out[-self.longest:]
        for n in range(min(len(tail), self.longest - 1), 0, -1):
            suffix = tail[-n:]
            if any(s.startswith(suffix) for s in self.stops):
                return n
        return 0

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
