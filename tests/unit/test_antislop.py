"""The banned-phrase watcher (``warren/worker/antislop.py``): what it holds back, where it sends the engine back."""

from __future__ import annotations

from warren.worker.antislop import PhraseGuard


def feed(guard: PhraseGuard, pieces: list[str]) -> tuple[str, int | None]:
    shown = ""
    for piece in pieces:
        out, hit = guard.push(piece, None)
        if hit is not None:
            return shown, hit
        shown += out
    return shown, None


def test_guard_finds_a_phrase_across_tokens_and_names_the_token_where_it_began() -> None:
    guard = PhraseGuard(["shivers down"])
    shown, hit = feed(guard, [" A", " cold shi", "vers", " down", " her"])
    assert hit == 1  # " cold shi" holds the phrase's start
    assert shown == " A"  # the token where it starts was never shown, though " cold" was harmless


def test_guard_is_case_insensitive() -> None:
    assert feed(PhraseGuard(["united states"]), [" The", " United", " States"])[1] == 1


def test_guard_holds_back_a_possible_start_and_releases_it_when_it_is_not_one() -> None:
    guard = PhraseGuard(["shivers down"])
    assert guard.push(" cold", None) == (" cold", None)
    assert guard.push(" shivers", None) == ("", None)  # may become the phrase
    assert guard.push(" up", None) == (" shivers up", None)


def test_rewind_forgets_the_tokens_and_the_search_goes_on() -> None:
    guard = PhraseGuard(["ab"])
    assert feed(guard, ["x", "a", "b"]) == ("x", 1)
    assert guard.rewind(1) is None  # the decoder state given with that token
    assert guard.text == "x"
    assert feed(guard, ["c", "a", "c"]) == ("cac", None)
    assert guard.flush() == ""


def test_flush_releases_an_unfinished_phrase() -> None:
    guard = PhraseGuard(["shivers down"])
    assert feed(guard, [" shivers"]) == ("", None)
    assert guard.flush("!") == " shivers!"


def test_no_phrases_is_falsy_so_the_engine_skips_the_watcher() -> None:
    assert not PhraseGuard([]) and not PhraseGuard([""])
