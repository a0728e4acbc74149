"""Stop strings across token boundaries, with KoboldCpp's hold-back and trim_stop."""

from __future__ import annotations

import hypothesis
from hypothesis import strategies as st

from warren.worker.stops import StopMatcher


def feed_all(m: StopMatcher, pieces: list[str]) -> str:
    shown = "".join(m.feed(p) for p in pieces)
    return shown + m.flush()


def test_no_stops_passes_everything_through() -> None:
    m = StopMatcher([])
    assert [m.feed("a"), m.feed("b")] == ["a", "b"]
    assert m.text == "ab" and not m.stopped


def test_stop_split_over_pieces_is_held_back_and_trimmed() -> None:
    m = StopMatcher(["</s>"])
    assert m.feed("Hello <") == "Hello "  # "<" might start the stop string
    assert m.feed("/s") == ""
    assert m.feed(">tail") == ""
    assert m.stopped and m.text == "Hello "


def test_trim_stop_false_keeps_the_stop_string() -> None:
    m = StopMatcher(["END"], trim=False)
    assert feed_all(m, ["one E", "ND two"]) == "one END"
    assert m.text == "one END"


def test_held_text_is_released_when_it_turns_out_not_to_be_a_stop() -> None:
    m = StopMatcher(["\n\nUser:"])
    assert m.feed("a\n") == "a"
    assert m.feed("\nX") == "\n\nX"
    assert not m.stopped


def test_earliest_stop_wins() -> None:
    m = StopMatcher(["c", "ab"])
    m.feed("xabc")
    assert m.text == "x"


class ReferenceMatcher:
    """The obvious implementation (the one warren had before the automaton): every stop string searched
    for in the window each piece, and the held-back suffix found by trying every length."""

    def __init__(self, stops: list[str], trim: bool = True) -> None:
        self.stops = [s for s in stops if s]
        self.trim, self.out, self.shown, self.stopped = trim, "", 0, False
        self.longest = max((len(s) for s in self.stops), default=0)

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        start = max(0, len(self.out) - self.longest + 1)
        self.out += piece
        hits = [(i + start, s) for s in self.stops if (i := self.out[start:].find(s)) >= 0]
        if hits:
            cut, stop = min(hits)
            self.out = self.out[:cut] if self.trim else self.out[: cut + len(stop)]
            self.stopped = True
            return self._release(len(self.out))
        held = next((n for n in range(min(len(self.out), self.longest - 1), 0, -1)
                     if any(s.startswith(self.out[-n:]) for s in self.stops)), 0)
        return self._release(len(self.out) - held)

    def _release(self, upto: int) -> str:
        text = self.out[self.shown:upto] if upto > self.shown else ""
        self.shown = max(self.shown, upto)
        return text


@hypothesis.settings(max_examples=400, deadline=None, derandomize=True)
@hypothesis.given(stops=st.lists(st.text("abc<>/", min_size=1, max_size=6), max_size=5),
                  pieces=st.lists(st.text("abc<>/ ", max_size=5), max_size=20), trim=st.booleans())
def test_the_automaton_releases_and_stops_as_the_reference_does(stops: list[str], pieces: list[str],
                                                               trim: bool) -> None:
    fast, slow = StopMatcher(stops, trim), ReferenceMatcher(stops, trim)
    for piece in pieces:
        assert fast.feed(piece) == slow.feed(piece)
        assert fast.stopped == slow.stopped
    assert fast.text == slow.out


def test_many_long_stop_strings_with_a_shared_prefix() -> None:
    """256 stop strings of 64 characters sharing a 63-character prefix with the output: the run of "a" is held
    back while it may still become one of them, released when it cannot, and the right one stops it."""
    stops = ["a" * 63 + chr(0x4E00 + i) for i in range(256)]
    m = StopMatcher(stops)
    assert "".join(m.feed("aaaa") for _ in range(100)) == "a" * (400 - 63)
    assert m.feed("b") == "a" * 63 + "b"
    assert m.feed("a" * 63) == "" and m.feed(chr(0x4E00 + 7) + "tail") == "" and m.stopped
    assert m.text == "a" * 400 + "b"
