"""Stop strings across token boundaries, with KoboldCpp's hold-back and trim_stop."""

from __future__ import annotations

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
