"""Redaction of what Whisper writes, as an ASR audit (espeak-ng speech through Whisper) found
it leaking: addresses with a spoken "at", numbers read out in numeral groups, partials."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coach.redaction import redact_text, redact_words

NAMES = ["john", "mary", "smith", "jones", "jane", "doe", "alex", "kim"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("John.Smith at gmail.com", "[EMAIL]"),
        ("my email is mary.jones at nampl.org.", "my email is [EMAIL]."),
        ("My email is John Smith at Gmail.com", "My email is [EMAIL]"),
        ("it is johnsmith at gmail", "it is [EMAIL]"),
        ("john.smith at gmail dot com", "[EMAIL]"),  # "john." leaked
        ("it's john dot smith at gmail dot com thanks", "it's [EMAIL] thanks"),
        ("Jane underscore Doe at Yahoo", "[EMAIL]"),
        ("send it to kim42 at hotmail, please", "send it to [EMAIL], please"),
        ("mary at outlook dot co dot uk", "[EMAIL]"),
        ("alex at protonmail", "[EMAIL]"),
        ("reach me at john.smith at example.io today", "reach me at [EMAIL] today"),
        # No local part: a domain after "at" is still hidden (a website, at worst).
        ("I'm at work.com", "I'm at [EMAIL]"),
    ],
)
def test_addresses_as_the_asr_writes_them_are_hidden(text: str, expected: str) -> None:
    assert redact_text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "I'm at home",
        "look at it",
        "I'll call you at 5 pm",
        "we met at the bank dot",
        "she works at Yahoo",
        "I looked at outlook yesterday",
        "meet me at noon at the office",
        "at least at the weekend",
        "he was at gmail for ten years",  # no local part before "at", no TLD
        "the meeting at 10.30 went fine",
    ],
)
def test_ordinary_talk_with_at_is_kept(text: str) -> None:
    assert redact_text(text) == text


def test_every_word_of_a_spoken_address_is_tagged() -> None:
    words = "My email is John Smith at Gmail.com okay".split()
    assert redact_words(words) == ["My", "email", "is"] + ["[EMAIL]"] * 4 + ["okay"]


@given(
    st.lists(st.sampled_from(NAMES), min_size=1, max_size=2),
    st.sampled_from([".", " dot ", " underscore ", ""]),
    st.sampled_from(["gmail", "yahoo", "example", "nampl"]),
    st.sampled_from([".com", " dot com", ".org", " dot net", ".co.uk"]),
    st.booleans(),
)
def test_no_part_of_an_asr_address_is_left(
    names: list[str], joiner: str, domain: str, tld: str, capital: bool
) -> None:
    local = joiner.join(n.capitalize() if capital else n for n in names)
    out = redact_text(f"my email is {local} at {domain}{tld} okay")
    assert out == "my email is [EMAIL] okay", out
