"""Clause splitting and framing (pure text functions)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coach.cues import language


@pytest.mark.parametrize(
    ("text", "negated"),
    [
        ("I'm not upset at all.", True),
        ("It isn't a problem.", True),
        ("I never asked for this.", True),
        ("I can't believe this happened again.", False),  # intensifier, not negation
        ("Nothing works with you guys.", False),
        ("This is really frustrating.", False),
        ("No one told me anything about it.", False),
        # A negator contracted with "is"/"has" still negates (found on `dev`: "Nobody's hurt,
        # but I've got two kids in the back" paged a supervisor as a crisis)...
        ("Nobody's hurt.", True),
        ("Nothing's wrong, I'm just calling about my claim.", True),
        ("No one's upset.", True),
        # ... except where nobody helping is the complaint itself.
        ("Nobody's ever explained it to me.", False),
        ("Nobody's answering at the depot.", False),
        ("Nobody came, and nobody rang.", False),
        ("Nothing's changed since I last called.", False),
        # Litotes asserts the opposite of its un- word; other "un" words are plain negations.
        ("I'm not unhappy with the service.", False),
        ("It isn't unusual for the app to do that.", False),
        ("I'm not understanding any of this.", True),
        ("That's not until Friday.", True),
    ],
)
def test_negation(text: str, negated: bool) -> None:
    assert language.is_negated(text) is negated


@pytest.mark.parametrize(
    ("text", "plain"),
    [
        ("I'm not unhappy with anything, honestly.", "I'm happy with anything, honestly."),
        ("It isn't unusual for me to call twice.", "It is usual for me to call twice."),
        ("They weren't unhelpful, to be fair.", "They were helpful, to be fair."),
        ("You can't unsubscribe me?", "You can't unsubscribe me?"),  # not litotes
        ("I don't understand the bill.", "I don't understand the bill."),
        ("Not until Friday.", "Not until Friday."),
    ],
)
def test_plain_meaning_says_litotes_plainly(text: str, plain: str) -> None:
    assert language.plain_meaning(text) == plain


@pytest.mark.parametrize(
    "text",
    [
        "If the price ever went up I might look elsewhere.",
        "Even if it costs more, that's fine.",
        "What if the router breaks again?",
        "I would probably switch if they offered it cheaper.",
    ],
)
def test_hypothetical(text: str) -> None:
    assert language.framing(text).hypothetical


@pytest.mark.parametrize(
    ("text", "reported"),
    [
        # A clear third party: their words, feelings or leaving are not the caller's state.
        ("My neighbour told me she cancelled her plan.", True),
        ("My neighbour said she was furious with her provider.", True),
        ("My husband was really angry about the bill.", True),
        ("My sister was furious with her airline.", True),
        ("My friend told me you offer a discount for students.", True),
        ("She's absolutely livid about the bill.", True),
        ("He switched his account to another bank.", True),
        # Someone else's panic is not the caller's state (`dev`'s d08, a calm tax call).
        ("My roommate was totally freaking out last year because he owed money.", True),
        ("My husband was panicking about the bill.", True),
        ("My roommate is threatening me with a knife.", False),
        ("I am totally freaking out.", False),
        ("I'm going to cancel my plan.", False),
        ("My wife says I should cancel, and I agree.", False),
        # "They said" / "he said" quote the company: the caller's own complaint.
        ("They said it would be fixed by Friday and it still isn't.", False),
        ("He said the technician would come and nobody showed up.", False),
        ("They told me the refund had gone through, and it hasn't.", False),
        ("She said someone would ring me back and no one ever did.", False),
        ("They were supposed to call me back and they never did.", False),
        # A relative named in the caller's own situation is not reported speech.
        ("My daughter's surgery is tomorrow and the insurance isn't approved.", False),
        ("My son needs the internet for his exam this afternoon.", False),
    ],
)
def test_reported_speech(text: str, reported: bool) -> None:
    assert language.framing(text).reported is reported


def test_clauses_split_sentences_and_contrasts() -> None:
    text = "Thanks for checking. The refund is fine, but I'm worried about next month's bill."
    assert language.clauses(text) == [
        "Thanks for checking.",
        "The refund is fine",
        "but I'm worried about next month's bill.",
    ]


def test_tiny_fragments_merge_into_a_neighbour() -> None:
    assert language.clauses("Okay. I really need this fixed today.") == [
        "Okay. I really need this fixed today."
    ]


def test_find_phrase_covers_shared_words() -> None:
    phrase = language.find_phrase(
        "Well, honestly I can't afford this bill anymore, you know",
        language.content_words("I can't afford this."),
    )
    assert phrase == "afford"
    phrase = language.find_phrase(
        "so I spoke to someone yesterday about the same thing",
        language.content_words("I spoke to someone yesterday about the same problem."),
    )
    assert phrase == "spoke to someone yesterday about the same"


def test_find_phrase_never_highlights_only_pronouns_or_modals() -> None:
    """A match sharing nothing but "them", "would" or "I'm" with its example has no trigger
    phrase of its own: the clause is highlighted (and quoted in the handoff), not "them"."""
    clause = "I took my last one this morning, and I really can't go a day without them."
    example = "I've got the pills in front of me and I'm thinking about taking them all."
    assert language.find_phrase(clause, language.content_words(example)) == clause
    phrase = language.find_phrase(
        "Everyone would be better off if I just wasn't here anymore.",
        language.content_words("It would be easier for everyone if I wasn't here."),
    )
    assert phrase == "Everyone"
    assert language.content_words("I'm sure they would, I've tried them all") == {"sure", "tried"}


@given(st.text(max_size=300))
def test_clauses_never_lose_words(text: str) -> None:
    parts = language.clauses(text)
    assert language.words(" ".join(parts)) == language.words(text) or not parts
    language.framing(text)  # never raises


@pytest.mark.parametrize(
    ("text", "negated"),
    [
        ("No, I want someone with real authority this time.", False),  # "No," answers the agent
        ("No. I need it today.", False),
        ("No problem at all.", True),
        ("No, that is not right.", True),
        ("I don't know what a modem is.", False),  # not knowing is the statement itself
        ("I don't understand why there are two charges.", False),
        ("I don't understand.", True),
    ],
)
def test_negation_interjections_and_not_knowing(text: str, negated: bool) -> None:
    assert language.is_negated(text) is negated


def test_pieces_add_coordinated_statements_and_keep_the_whole() -> None:
    text = "This is the third time I've rung and I still haven't heard anything."
    assert language.pieces(text) == [
        text,
        "This is the third time I've rung",
        "I still haven't heard anything.",
    ]
    # No new subject after "and": one statement, nothing added.
    assert language.pieces("I want bread and butter.") == ["I want bread and butter."]


def test_a_contrastive_not_asserts_what_comes_before_it() -> None:
    """ "A, not B" says A: it is not a negated statement, and A is matched on its own."""
    text = "I want the care manager on the phone, not you reading me notes."
    assert not language.is_negated(text)
    assert language.pieces(text) == [text, "I want the care manager on the phone"]
    assert language.is_negated("I'm not upset, not at all.")  # a real negation stays one
    assert language.pieces("It's fine, not a problem.")[1:] == []  # too short to add


def test_pieces_join_clipped_sentences() -> None:
    assert "I'm sick. I'm tired of it." in language.pieces("I'm sick. I'm tired of it.")


@pytest.mark.parametrize(
    ("text", "thanks"),
    [
        ("Thank you, Rachel.", True),
        ("Okay, thanks so much.", True),
        ("Thanks. Honestly, lately I feel like nothing matters anymore.", False),
        ("Fine.", False),
        ("I guess that's fine.", False),
    ],
)
def test_is_thanks(text: str, thanks: bool) -> None:
    assert language.is_thanks(text) is thanks


def test_what_follows_a_short_lead_in_is_a_piece_of_its_own() -> None:
    text = "Please hurry, my daughter isn't breathing properly."
    assert language.pieces(text) == [text, "my daughter isn't breathing properly."]
    assert language.pieces("Sorry, I won't finish.") == ["Sorry, I won't finish."]  # too short
    assert language.pieces("If so, I will cancel my plan.") == ["If so, I will cancel my plan."]


def test_an_ultimatums_commitment_is_a_piece_of_its_own() -> None:
    text = "If this isn't sorted by Friday, I'm cancelling my contract."
    assert language.pieces(text) == [text, "I'm cancelling my contract"]
    short = "If nothing changes by Friday, I'm cancelling."
    assert language.pieces(short) == [short, "I'm cancelling"]
    # A condition inside the clause, where ASR ran the sentences together (session 39's
    # outside author): its commitment is read on its own too.
    run_on = "We pay you a lot for this, and if this happens one more time, we're done with you."
    assert language.pieces(run_on) == [run_on, "we're done with you"]
    assert language.pieces("If I'm leaving early, can I get a refund?") == [
        "If I'm leaving early, can I get a refund?"
    ]


def test_a_contrast_whose_comma_the_asr_dropped_is_read_as_one() -> None:
    text = "I want to speak to the person who makes the decision not someone reading me a letter."
    head = "I want to speak to the person who makes the decision"
    assert language.pieces(text)[1] == head
    assert not language.framing(language.clauses(text)[0]).negated
    # After a verb of being or doing, "not a" is plain negation.
    for plain in ("It's not a problem.", "There is not a single person who helped."):
        assert language.pieces(plain) == [plain]
        assert language.framing(plain).negated


def test_a_feeling_is_also_scored_without_its_object() -> None:
    text = "I'm sick and tired of sending you photos of the meter every month."
    assert "I'm sick and tired of this" in language.pieces(text)
    assert "I'm furious about this" in language.pieces("I'm furious that nobody told me a thing.")
    # A short object says little more than the feeling; weariness and grief are not this.
    for other in ("I'm fed up with you.", "I'm tired of fighting with everyone about it."):
        assert not any(p.endswith(" this") for p in language.pieces(other))


def test_and_every_person_starts_a_new_statement() -> None:
    text = "I've been on the phone since Monday and every person tells me something different."
    assert "I've been on the phone since Monday" in language.pieces(text)


@given(st.text(max_size=300))
def test_pieces_only_add_to_the_clauses(text: str) -> None:
    out = language.pieces(text)
    whole = language.clauses(text)
    # Every clause is there, in order; pieces only add candidates between them.
    positions = [out.index(c) for c in whole]
    assert positions == sorted(positions)


@pytest.mark.parametrize(
    ("text", "reported"),
    [
        ("I need to close her account.", True),
        ("I want to cancel my late husband's phone line.", True),
        ("Could you close my mum's account please?", True),
        ("I want to close my account.", False),
        ("Close our account, we're moving to another bank.", False),
        ("I need to stop his direct debit coming out of my account.", False),
    ],
)
def test_someone_elses_account_closed_for_them_is_about_someone_else(
    text: str, reported: bool
) -> None:
    assert language.framing(text).reported is reported


@pytest.mark.parametrize(
    ("text", "hypothetical", "negated"),
    [
        # Ultimatums: a condition, then a firm commitment. A threat, not a hypothetical.
        ("If this isn't fixed today I'm leaving.", False, False),
        ("If you can't match their price I'm off.", False, False),
        ("Unless you fix it by Friday, I'll cancel.", False, False),
        ("If it is ridiculous, I want to speak to your manager right now.", False, False),
        ("If you can't help me then put me through to your supervisor.", False, False),
        # The demand inside the condition asks how; a hedge keeps a real hypothetical.
        ("If I want to speak to a manager, who do I call?", True, False),
        ("If I'm leaving early, can I get a refund?", True, False),
        ("If it were me, I would want a manager.", True, False),
        ("I'd be furious if this happened to me.", True, False),
        # Real hypotheticals keep their hedge.
        ("If the price ever went up a lot I might look elsewhere.", True, False),
        ("What if the router breaks again?", True, False),
    ],
)
def test_ultimatum_is_not_a_hypothetical(text: str, hypothetical: bool, negated: bool) -> None:
    f = language.framing(text)
    assert (f.hypothetical, f.negated) == (hypothetical, negated)


def test_windows_of_a_run_on_clause() -> None:
    text = "the wind took the fence and then a strong smell of gas by the cooker"
    assert language.windows(text, 8) == [
        "the wind took the fence and then a",
        "fence and then a strong smell of gas",
        "a strong smell of gas by the cooker",
    ]
    assert language.windows("short clause, five words", 8) == []


@given(st.lists(st.sampled_from(["", ".", "'s", "?"]), max_size=40), st.integers(3, 12))
def test_windows_cover_every_word_in_order(suffixes: list[str], size: int) -> None:
    words = [f"w{i}{end}" for i, end in enumerate(suffixes)]  # distinct, so each is findable
    found = language.windows(" ".join(words), size)
    if len(words) <= size:
        assert found == []
        return
    # Every window is `size` consecutive words of the text; together they start at its first
    # word and end at its last, each starting at most half a window after the one before.
    starts = [words.index(w.split()[0]) for w in found]
    for at, w in zip(starts, found, strict=True):
        assert w.split() == words[at : at + size]
    assert starts[0] == 0 and starts[-1] == len(words) - size
    assert all(0 < b - a <= max(1, size // 2) for a, b in zip(starts, starts[1:], strict=False))


def test_a_clause_without_each_of_its_content_words() -> None:
    text = "I called Doom about the exact same thing, and I wasn't told."
    assert language.without_each_word(text) == [
        ("called", "I Doom about the exact same thing, and I wasn't told."),
        ("Doom", "I called about the exact same thing, and I wasn't told."),
        ("about", "I called Doom the exact same thing, and I wasn't told."),
        ("exact", "I called Doom about the same thing, and I wasn't told."),
        ("same", "I called Doom about the exact thing, and I wasn't told."),
        # The comma stays where the clause had it.
        ("thing", "I called Doom about the exact same, and I wasn't told."),
        ("told", "I called Doom about the exact same thing, and I wasn't."),
    ]
    # Negators, pronouns and modals are never left out: they decide what the clause says.
    assert language.without_each_word("I never would have rung, nobody cannot") == [
        ("rung", "I never would have, nobody cannot")
    ]
    assert language.without_each_word("Too short") == []
    assert language.without_each_word(" ".join(["word"] * 31)) == []


@given(
    st.lists(
        st.sampled_from(["not", "never", "no", "if", "I", "the", "bill", "rang,"]), max_size=20
    )
)
def test_a_reading_without_one_word_keeps_every_negator(tokens: list[str]) -> None:
    text = " ".join(tokens)

    def bare(t: str) -> str:
        return t.strip(",").lower()

    for word, rest in language.without_each_word(text):
        assert word.lower() not in {"not", "never", "no", "if", "i", "the"}
        # Exactly that one word is gone; every other word stays, in order. (Whether the rest
        # still reads as negated is the engine's check: "no rang, if" without "rang" is "no,
        # if", a leading "No," that answers rather than negates, and the engine drops a
        # reading whose framing changed.)
        words = [bare(t) for t in text.split()]
        left = [bare(t) for t in rest.split()]
        assert any(
            w == bare(word) and words[:i] + words[i + 1 :] == left for i, w in enumerate(words)
        )


def test_agreed_prefix_ignores_case_and_punctuation() -> None:
    before = "My husband collapsed in the kitchen".split()
    now = "my husband collapsed, in the kitchen and he".split()
    assert language.agreed_prefix(before, now) == 6
    assert language.agreed_prefix("My husband's here".split(), now) == 1
    assert language.agreed_prefix([], now) == 0


def test_settled_prefix_stops_at_a_sentence_the_speaker_went_past() -> None:
    before = "I called last week. Nobody came. The heating is".split()
    now = "I called last week. Nobody came. The heating is still off.".split()
    # Both agree up to "is"; the last sentence end inside that is after "came.".
    assert language.settled_prefix(before, now) == 6
    # A full stop at the very end of the newest partial is where the audio stopped.
    assert language.settled_prefix(now, now) == 6
    only = "Nobody came.".split()
    assert language.settled_prefix(only, only) == 0


_TOKENS = st.lists(st.sampled_from(["a", "B", "c.", "d?", "e,", "A"]), max_size=12)


@given(_TOKENS, _TOKENS)
def test_settled_words_are_agreed_and_end_a_sentence(before: list[str], now: list[str]) -> None:
    agreed = language.agreed_prefix(before, now)
    settled = language.settled_prefix(before, now)
    assert agreed == language.agreed_prefix(now, before)
    assert 0 <= settled <= agreed <= min(len(before), len(now))
    assert language.agreed_prefix(now, now) == len(now)
    if settled:
        assert settled < len(now) and now[settled - 1][-1] in ".?!"
        assert [language.words(t) for t in before[:settled]] == [
            language.words(t) for t in now[:settled]
        ]


@pytest.mark.parametrize(
    ("text", "sentence"),
    [
        (
            "I don't know what I'm still here for without her",
            "I don't know what I'm still here for without her.",
        ),
        ("I need it today.", "I need it today."),
        ("Can you do that?", "Can you do that?"),
        ("I'm done with this!", "I'm done with this!"),
        ("he said 'never again'", "he said 'never again'"),
        ("I've had enough,", "I've had enough."),
        # Whisper's trailing off: crisis's best match fell 0.463 -> 0.433 with "..." for ".".
        ("I don't know what I'm here for...", "I don't know what I'm here for."),
        ("I just\u2026", "I just."),
        ("", ""),
    ],
)
def test_as_sentence_ends_a_clause_as_the_examples_end(text: str, sentence: str) -> None:
    assert language.as_sentence(text) == sentence


@given(st.text(max_size=200))
def test_as_sentence_only_adds_a_stop(text: str) -> None:
    out = language.as_sentence(text)
    kept = text.rstrip(" ,;:-")
    assert out in (kept, f"{kept}.") or kept.endswith(("...", "\u2026"))
    assert kept.startswith(out.rstrip(".")) and language.as_sentence(out) == out
