"""Stop strings across token boundaries and UTF-8 split across tokens."""

from __future__ import annotations

import pytest

from helixflow.engine.text import StopMatcher, Utf8Stream


def run(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    out = "".join(matcher.push(p) for p in pieces)
    if not matcher.stopped:
        out += matcher.flush()
    return out, matcher.stopped


def test_no_stops_passes_text_through() -> None:
    assert run([], ["a", "b"]) == ("ab", False)


def test_stop_within_one_piece() -> None:
    assert run(["END"], ["hello END world"]) == ("hello ", True)


def test_stop_across_pieces_is_never_emitted() -> None:
    matcher = StopMatcher(["</answer>"])
    emitted = [matcher.push(p) for p in ["42 </", "ans", "wer> more"]]
    assert emitted == ["42 ", "", ""]
    assert matcher.stopped


def test_partial_match_is_released_when_it_diverges() -> None:
    matcher = StopMatcher(["STOP"])
    assert matcher.push("ST") == ""
    assert matcher.push("AR") == "STAR"
    assert not matcher.stopped


def test_held_back_text_is_flushed_at_the_end() -> None:
    assert run(["STOP"], ["abc", "ST"]) == ("abcST", False)


@pytest.mark.parametrize(
    ("stops", "text", "expected"),
    [
        (["b", "ab"], "xab", "x"),  # the earliest match wins
        (["cd", "bcd"], "abcde", "a"),
        (["\n\n"], "line\n\nnext", "line"),
    ],
)
def test_earliest_stop_wins(stops: list[str], text: str, expected: str) -> None:
    pieces = list(text)  # one character per "token"
    assert run(stops, pieces) == (expected, True)


def test_utf8_split_across_tokens() -> None:
    stream = Utf8Stream()
    data = "é🙂".encode()
    out = [stream.push(data[i : i + 1]) for i in range(len(data))]
    assert "".join(out) + stream.flush() == "é🙂"
    assert out[0] == ""  # half a character is not emitted


def test_invalid_utf8_is_replaced_not_raised() -> None:
    stream = Utf8Stream()
    assert stream.push(b"\xff") + stream.flush() == "\ufffd"
