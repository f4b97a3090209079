"""Clause splitting and the framing of a clause: negated, hypothetical, reported, a question.

Why: sentence embeddings measure topic and tone, not logic. "I'm not upset at all" sits
close to "I'm really upset", "if the price ever went up I'd leave" close to "I'm leaving",
and "my neighbour told me she cancelled" close to "I'm cancelling". The matcher therefore
scores each clause separately (a long turn mixes topics) and compares the framing of the
clause with the framing of the example it matched: a negated clause that matches an
affirmative example is a different statement. A clause that joins several statements with
"and"/"so" is also scored as each statement (`pieces`), since ASR often runs sentences
together and one statement's negation must not hide another's meaning; an ultimatum ("if
it isn't fixed today, I'm leaving") is a threat, not a hypothetical. These are pure
functions over text so they are cheap, deterministic and easy to test; they only need to be
right about the framing, the meaning comes from the embeddings.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

# Sentence ends and the discourse markers that start a new thought inside one sentence.
_SENTENCE = re.compile(r"(?<=[.!?;])\s+")
_TURN = re.compile(r",?\s+\b(but|however|although|though|except|so anyway)\b\s+", re.IGNORECASE)
MIN_CLAUSE_WORDS = 2

_NEGATORS = frozenset(
    "not no never nothing nobody none neither nor without hardly n't cannot".split()
)
# ", not you ...": a contrastive "not" before what the caller rejects (see `pieces`).
_CONTRAST_NOT_HEAD = (
    r",\s*(?:and\s+)?not\s+(?=(?:you|a|an|the|another|some|someone|somebody|just|me|my|your|this|that|"
    r"more|one)\b)"
)
# Litotes: a negated un- word asserts the word without its un- ("not unhappy" = content).
_LITOTES_WORDS = (
    "happy|reasonable|usual|fair|helpful|pleasant|satisfied|likely|kind|aware|willing|common|"
    "important|grateful|sympathetic|friendly|impressed|pleased"
)
_LITOTES = rf"\b(?:not|never|\w+n't)\s+un(?:{_LITOTES_WORDS})"
_LITOTES_PARTS = re.compile(
    rf"\b(?:(?:not|never)\s+|(\w+)n't\s+)un({_LITOTES_WORDS})\b", re.IGNORECASE
)
# Negation that does not negate the feeling: "I can't believe", "no way", "no idea why".
_NEGATION_IDIOMS = re.compile(
    r"\b(can(no|')?t believe|no way|no idea|not again|not even|not once|not only|"
    r"no one (has|ever)|never (got|gets|received|heard|called|fixed|works?|worked)|"
    r"nothing(('s| has) (changed|worked|been done|been fixed|happened)| works| worked)|"
    # "Nobody's ever explained it", "nobody answers": nobody helping is the complaint.
    r"no ?(one|body)('s| has| had| is| was)? (ever |even )?(told|called|helped|explained|"
    r"answer(s|ed|ing)?|came|come|showed|rang|ringing|listen(s|ed|ing)?|bothered|"
    r"returned|picked up|picking up|turned up|fixed|got back)|"
    # Not knowing is the statement itself ("I don't know what a modem is" = "what is a modem?").
    r"(don'?t|do not|didn'?t|did not) (know|understand|get|see) (what|where|how|which|why|whether|if)"
    # Litotes asserts the opposite of the un- word: "I'm not unhappy" says "I'm content".
    rf"|{_LITOTES}"
    # "A, not B" asserts A: "I want the manager on the phone, not you reading me notes".
    rf"|{_CONTRAST_NOT_HEAD}\b.*"
    r")\b",
    re.IGNORECASE,
)
_HYPOTHETICAL = re.compile(
    r"^(\w+,?\s+)?(if|even if|in case|suppose|supposing|imagine|what if|unless|"
    r"should (it|the|they|you)|were (it|the|they))\b"
    r"|\b(would|might|could|i'd|we'd|you'd|he'd|she'd|they'd) (probably |maybe |ever )?"
    r"(have to |need to )?"
    r"(be|feel|get|look|switch|leave|cancel|think)\b.*\bif\b"
    r"|\bif\b.*\b(would|'d|might)\b",
    re.IGNORECASE,
)
# "If this isn't fixed today, I'm leaving" is an ultimatum, not a hypothetical: a condition
# followed by a firm commitment, without the hedges of a real hypothetical ("if the price
# ever went up I might look elsewhere").
# At the clause's start, or after a comma or "and/but/so" inside it: ASR runs sentences
# together ("..., and if this happens one more time, we're done with you").
_CONDITION = re.compile(
    r"(?:^(?:\w+,?\s+)?|,\s*(?:(?:and|but|so)\s+)?|\b(?:and|but|so)\s+)(?:if|unless)\b",
    re.IGNORECASE,
)
_FIRM = re.compile(
    r"\b(i'm|i am|we're|we are)\s+(leaving|off|gone|going|done|cancell?ing|switching|finished|"
    r"out|taking|moving|closing)\b|\b(i'll|i will|we'll|we will)\s+(leave|cancel|switch|go|"
    r"take|move|close|be gone|be off|be leaving|find)\b"
    # A demand for someone above the agent: "if it's that ridiculous, I want your manager".
    r"|\b(i want|i need|i demand|i insist on|put me through to|get me|give me|"
    r"let me (speak|talk) to)\b[^.?!]*\b(manager|supervisor|boss|superior|"
    r"(someone|somebody) (else|senior|in charge|higher up))\b",
    re.IGNORECASE,
)
# The words of the condition itself: "if I want to speak to a manager, who do I call?" asks
# how, and its "I want" is inside the condition, not a commitment after it.
_MIN_CONDITION_WORDS = 2
_HEDGE = re.compile(r"\b(would|might|could|may|\w+'d|ever|perhaps|maybe|probably)\b", re.IGNORECASE)


def _ultimatum(text: str) -> str | None:
    """The commitment of an ultimatum ("I'm off" in "if you can't match it, I'm off")."""
    condition = _CONDITION.search(text)
    if condition is None:
        return None
    firm = _FIRM.search(text, condition.end())
    if firm is None or _HEDGE.search(text, condition.start()):
        return None
    if len(words(text[condition.end() : firm.start()])) < _MIN_CONDITION_WORDS:
        return None
    return text[firm.start() :]


# Reported speech: someone else's words, feelings or actions, which are not the caller's own
# state ("my neighbour said she was furious", "my sister cancelled her plan"). It needs a
# clear third party. A bare "they said" / "he said" / "they told me" is how callers quote the
# company ("they said it would be fixed by Friday and it still isn't"): that is the caller's
# own complaint, so a bare pronoun only counts with a feeling or a leaving of their own
# ("she was livid", "he switched his plan").
_RELATIVE = (
    r"wife|husband|partner|boyfriend|girlfriend|son|daughter|mother|father|mom|mum|dad|"
    r"parents?|grandmother|grandfather|grandma|grandpa|nan|aunt|uncle|cousin|friend|"
    r"neighbou?r|colleague|boss|brother|sister|sister-in-law|brother-in-law|coworker|co-worker|"
    r"roommate|flatmate|housemate|kids?|family|customer|client"
)
_REPORT_VERB = (
    r"said|says|told|tells|thinks?|thought|reckons?|mentioned|complained|heard|warned|"
    r"wants?|wanted|cancell?ed|switched|left|moved|is (leaving|switching|cancell?ing)"
)
_FEELING = (
    r"(so |really |very |absolutely |quite |pretty |a bit |completely |totally |just )?"
    r"(furious|angry|upset|annoyed|livid|mad|frustrated|fed up|confused|worried|stressed|"
    r"scared|devastated|thrilled|happy|disappointed|unhappy|outraged|fuming|"
    # "My roommate was totally freaking out last year because he owed" (a calm tax call in
    # `dev`) paged a critical crisis for the caller's own state.
    r"freaking out|panicking|panicked|losing (his|her|their) mind)"
)
_REPORTED = re.compile(
    rf"\b(my|our|his|her|their|a|the)\s+(\w+\s+)?({_RELATIVE})\b(\s+[\w',]+){{0,3}}?\s+"
    rf"(({_REPORT_VERB})\b|(was|is|got|gets|were|are|has been|had been)\s+{_FEELING}\b)"
    rf"|\b(he|she)(\s+(was|is|got|gets|has been)|'s)\s+{_FEELING}\b"
    r"|\b(he|she)\s+(cancell?ed|switched|left|moved)\s+(his|her)\b",
    re.IGNORECASE,
)
# Someone else's account closed or cancelled for them: "my mother passed away and I need to
# close her account", "cancel my late husband's line". The caller is not leaving: a retention
# offer there is the worst thing an agent could say (an audit probe fired churn risk on it).
_PROXY_ACCOUNT = re.compile(
    r"\b(close|closing|closed|cancel|cancell?ing|cancell?ed|shut|shutting|end|ending|"
    r"terminate|terminating|stop|stopping)\b(\s+[\w']+){0,2}?\s+"
    rf"(his|her|their|(my|our)\s+(late\s+)?(\w+\s+)?({_RELATIVE})'s)\s+"
    r"([\w-]+\s+)?(account|plan|line|policy|subscription|contract|service|membership|card|"
    r"number|phone|broadband|package)s?\b",
    re.IGNORECASE,
)
_FIRST_PERSON = re.compile(r"\b(i|i'm|i've|i'd|i'll|me|my|myself|we|we're|our|us)\b", re.I)
_QUESTION = re.compile(
    r"\?\s*$|^(how|what|when|where|which|who|why|is|are|do|does|did|can|could|will|would)\b",
    re.IGNORECASE,
)
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?|n't", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Framing:
    negated: bool
    hypothetical: bool
    reported: bool
    question: bool

    def describe(self) -> str:
        parts = [
            name
            for name, on in (
                ("negated", self.negated),
                ("hypothetical", self.hypothetical),
                ("about someone else", self.reported),
                ("a question", self.question),
            )
            if on
        ]
        return ", ".join(parts) or "plain statement"


def words(text: str) -> list[str]:
    """Lower-case words with contractions split so "isn't" yields "is", "n't"."""
    out: list[str] = []
    for token in _WORD.findall(text.lower()):
        if token.endswith("n't") and token != "n't":
            stem = token[:-3]
            out.extend([{"ca": "can", "wo": "will", "sha": "shall"}.get(stem, stem), "n't"])
        else:
            out.append(token)
    return out


# A leading "No," / "Oh no." answers the agent or exclaims; it does not negate what follows
# ("No. I want someone with real authority this time").
_LEADING_NO = re.compile(r"^\W*((oh|no)[\s,.!]+)*no\s*[,.!]+\s*(?=\w)", re.IGNORECASE)


def is_negated(text: str) -> bool:
    """A negator outside the idioms where negation intensifies the complaint."""
    stripped = _NEGATION_IDIOMS.sub(" ", _LEADING_NO.sub("", text))
    # "Nobody's hurt", "nothing's wrong": the contracted "is"/"has" must not hide the negator.
    return any(w.removesuffix("'s") in _NEGATORS for w in words(stripped))


def plain_meaning(text: str) -> str:
    """`text` with its litotes said plainly, for the models that read its meaning: "I'm not
    unhappy with anything" -> "I'm happy with anything", "it isn't unusual" -> "it is usual".

    The sentence embedding and the emotion model read "not unhappy" as "unhappy" with a
    "not" attached (an outside audit's probe fired frustration on it, "sad" at 57%); the
    caller's own words are still what a cue quotes.
    """

    def plain(m: re.Match[str]) -> str:
        verb = m.group(1)
        stem = {"ca": "can", "wo": "will", "sha": "shall"}.get(verb.lower(), verb) if verb else ""
        return f"{stem} {m.group(2)}" if stem else m.group(2)

    return _LITOTES_PARTS.sub(plain, text)


def as_sentence(text: str) -> str:
    """`text` ended as a written sentence is: the playbook's examples end in a full stop or a
    question mark, and the sentence encoders read the mark. A clause cut from the middle of an
    utterance, or an utterance the VAD ended before Whisper wrote its stop, scored up to 0.02
    lower against the same example without one ("I don't know what I'm still here for
    without her": 0.448 against crisis's 0.46 threshold, 0.463 with the stop)."""
    t = text.rstrip(" ,;:-")
    if t.endswith(("...", "\u2026")):  # trailing off: Whisper's ellipsis reads as doubt
        t = t.rstrip(".\u2026 ,")
    return t if not t or t[-1] in ".?!\"'" else f"{t}."


def framing(text: str) -> Framing:
    t = text.strip()
    reported = bool(_REPORTED.search(t))
    if reported and re.search(r"\b(i|i'm|i've|i'll)\b", t, re.IGNORECASE):
        # "My wife says I should cancel, and I agree" is the customer speaking for themself.
        reported = not bool(
            re.search(r"\b(i (agree|think|want|will|am|'m)|and i|so i|i'll)\b", t, re.I)
        )
    reported = reported or bool(_PROXY_ACCOUNT.search(t))
    ultimatum = _ultimatum(t)
    return Framing(
        # The condition's negation ("if you can't fix it") does not negate the threat.
        negated=is_negated(ultimatum if ultimatum is not None else t),
        hypothetical=ultimatum is None and bool(_HYPOTHETICAL.search(t)),
        reported=reported,
        question=bool(_QUESTION.search(t)),
    )


# ASR often drops the comma of "A, not B": "I want to speak to the person who makes the
# decision not someone reading me a letter" (the retired split's h07) read as negated, and the
# caller's demand was missed. A "not" after a content word, before someone, another, a, the...
# starts the contrast as the comma would; after a verb of being or doing it is plain negation
# ("it's not a problem", "there is not a single person").
_BARE_CONTRAST = re.compile(
    r"(?<=\w)\s+(?=not\s+(?:someone|somebody|some|another|just|a|an|the)\b)", re.IGNORECASE
)
_NEGATED_AFTER = frozenset(
    "is am are was were be been being do does did will would can could should shall may might "
    "must have has had i we you they he she it this that there what why how or and but if "
    "whether to of for just really certainly definitely absolutely simply still also maybe "
    "probably perhaps surely sure honestly actually rather better".split()
)


def _restore_contrast_commas(sentence: str) -> str:
    def comma(match: re.Match[str]) -> str:
        before = words(sentence[: match.start()])
        prev = before[-1] if before else ""
        if not prev or prev in _NEGATED_AFTER or "'" in prev:
            return match.group(0)
        return ", "

    return _BARE_CONTRAST.sub(comma, sentence)


def clauses(text: str) -> list[str]:
    """Sentences, further cut at contrast markers ("..., but ..."); tiny fragments merge back."""
    pieces: list[str] = []
    for sentence in _SENTENCE.split(text.strip()):
        if not sentence:
            continue
        parts = _TURN.split(_restore_contrast_commas(sentence))
        # re.split keeps the captured marker; glue it onto the clause it introduces.
        current = parts[0]
        chunks = [current]
        for i in range(1, len(parts), 2):
            chunks.append(f"{parts[i]} {parts[i + 1]}" if i + 1 < len(parts) else parts[i])
        pieces.extend(c.strip(" ,") for c in chunks if c.strip(" ,"))
    merged: list[str] = []
    for piece in pieces:
        if merged and len(words(piece)) < MIN_CLAUSE_WORDS:
            merged[-1] = f"{merged[-1]} {piece}"
        else:
            merged.append(piece)
    if len(merged) > 1 and len(words(merged[0])) < MIN_CLAUSE_WORDS:
        merged[1] = f"{merged[0]} {merged[1]}"
        merged.pop(0)
    return merged


# "..., and I'm scared of what he'll do": a coordinator that starts a new statement (a new
# subject follows). ASR often runs several sentences into one with "and" and no full stop.
_COORDINATED = re.compile(
    r",?\s+\b(?:and|so|because|cause|cos|and then|and now)\s+(?=(?:i|i'm|i've|i'll|i'd|we|we're|"
    r"we've|my|our|he|he's|she|she's|they|they're|it|it's|there|there's|this|that|nobody|"
    # "..., and every person tells me something different" (tune's t32): a new statement too.
    r"no one|you|you've|you're|everyone|everybody|every (?:person|time|one|single)|"
    r"each time)\b)",
    re.IGNORECASE,
)
# "I want the manager on the phone, not you reading me notes": the part before a contrastive
# ", not ..." is what the caller asserts; the tail only dilutes its meaning.
_CONTRAST_NOT = re.compile(_CONTRAST_NOT_HEAD, re.IGNORECASE)
MIN_PIECE_WORDS = 3
SHORT_CLAUSE_WORDS = 4


# "I'm sick and tired of sending you photos of the meter and ..." (tune's t31) sat nearer a
# meter-reading repeat contact than any frustration example: the object's topic outweighs the
# feeling that carries the cue. The feeling with a plain "this" for its object is scored too.
_FEELING_HEAD = re.compile(
    r"^(?:\w+,\s+)?(?:i'm|i am|we're|we are)\s+(?:so |really |absolutely |just |completely )?"
    # Not "tired of", "upset about" or "sick with": weariness, grief and illness are not this.
    r"(?:sick and tired|sick to death|fed up|frustrated|annoyed|furious|fuming|livid|angry|"
    r"exasperated|disgusted)\s+(of|with|about|by|that)\b",
    re.IGNORECASE,
)
_FEELING_OBJECT_WORDS = 3
"""Words the object needs for the head to be scored alone: "I'm fed up with you" is short."""


def _feeling_head(clause: str) -> str | None:
    head = _FEELING_HEAD.match(clause)
    if head is None or len(words(clause[head.end() :])) < _FEELING_OBJECT_WORDS:
        return None
    prep = head.group(1).lower()
    return f"{clause[: head.start(1)]}{'about' if prep == 'that' else prep} this"


LEAD_REST_WORDS = 5
"""Words the rest after a lead-in needs to be a piece: a garbled "Sorry, I won't finish." left
"I won't finish", near "I can't keep going" (crisis, tune's t04, a false critical page)."""
_LEAD_IN_CLAUSE = re.compile(
    # Not a condition ("If so, I'll cancel"), nor thanks or relief ("Thank you, he is
    # breathing again now" is no emergency, and alone it reads as one).
    r"^(?!.*\b(?:if|unless|when|whenever|suppose|supposing|imagine|even)\b[^,]*,)"
    r"(?!\W*(?:thank|thanks|great|good|okay|ok|phew|brilliant|lovely|perfect)\b)"
    r"(?:[\w']+\s+){0,2}[\w']+,\s+(?=\S)",
    re.IGNORECASE,
)


def pieces(text: str) -> list[str]:
    """The clauses of `text`, then the statements coordinated inside a clause, each on its own.

    A clause like "this is the third time I've rung and I still haven't heard anything" says
    two things; scored whole, the negation of the second hides the first. The whole clause is
    kept too (some meanings need both halves: "I smell gas and my kids are here"), so this
    only adds candidates. Parts shorter than MIN_PIECE_WORDS words are not added.
    """
    out: list[str] = []
    whole = clauses(text)
    for i, clause in enumerate(whole):
        out.append(clause)
        parts = [p.strip(" ,") for p in _COORDINATED.split(clause)]
        parts = [p for p in parts if p]
        contrast = _CONTRAST_NOT.search(clause)
        if contrast is not None:
            parts.append(clause[: contrast.start()].strip(" ,"))
        if len(parts) > 1:
            out.extend(p for p in parts if len(words(p)) >= MIN_PIECE_WORDS and p not in out)
        # What follows a short lead-in and a comma, on its own: "Please hurry, my daughter
        # isn't breathing properly" was read whole as urgency by the meaning probe (crisis
        # 0.04; the rest alone, 0.97). A condition ("If so, I'll cancel") is no lead-in.
        lead = _LEAD_IN_CLAUSE.match(clause)
        if lead is not None:
            rest = clause[lead.end() :].strip(" ,")
            if len(words(rest)) >= LEAD_REST_WORDS and rest not in out:
                out.append(rest)
        # An ultimatum's commitment on its own: "If this isn't sorted by Friday, I'm
        # cancelling my contract" read whole sat as near a deadline's wording as a leaving's,
        # and no cue fired; its commitment is plain churn.
        threat = _ultimatum(clause)
        if threat is not None:
            threat = threat.strip(" ,.!?")
            # Its firm verb makes even two words a statement: "..., I'm cancelling."
            if len(words(threat)) >= 2 and threat not in out:
                out.append(threat)
        feeling = _feeling_head(clause)
        if feeling is not None and feeling not in out:
            out.append(feeling)
        # Clipped sentences ("I'm sick. I'm tired.") say together what neither says alone.
        if i + 1 < len(whole) and len(words(clause)) < SHORT_CLAUSE_WORDS:
            joined = f"{clause} {whole[i + 1]}"
            if joined not in out:
                out.append(joined)
    return out


def windows(text: str, size: int) -> list[str]:
    """Overlapping runs of `size` words of `text` (stride half a window; the last one ends
    where the text ends), or none when the text is no longer than one window.

    Words are split on whitespace so each window keeps the text's own spelling and
    punctuation, which the framing checks read.
    """
    tokens = text.split()
    if size < 1 or len(tokens) <= size:
        return []
    stride = max(1, size // 2)
    starts = list(range(0, len(tokens) - size + 1, stride))
    if starts[-1] != len(tokens) - size:
        starts.append(len(tokens) - size)
    return [" ".join(tokens[i : i + size]).strip(" ,") for i in starts]


def bare(token: str) -> str:
    """A token as a word list holds it: lower case, punctuation gone, apostrophes kept."""
    return re.sub(r"[^\w']", "", token.lower())


def without_each_word(text: str, *, max_words: int = 30) -> list[tuple[str, str]]:
    """`text` once without each of its content words, as (word left out, the rest); none
    for a text over `max_words`.

    ASR often mishears one word of an otherwise clear sentence ("I called Doom about the
    exact same thing", for Tuesday), and one odd word pulls the whole sentence's vector away
    from what it says. Only content words are left out: pronouns and auxiliaries
    (`STOPWORDS`) and negators (`_KEPT_WORDS`) say who, when and whether, and leaving one out
    could change the meaning. A
    word's trailing punctuation stays with the word before it, which the framing checks read.
    """
    tokens = text.split()
    if len(tokens) < 3 or len(tokens) > max_words:
        return []
    out: list[tuple[str, str]] = []
    for i, token in enumerate(tokens):
        word = bare(token)
        if len(word) < 3 or word in STOPWORDS or word.endswith("n't") or word in _KEPT_WORDS:
            continue
        kept = tokens[:i] + tokens[i + 1 :]
        tail = token[len(token.rstrip(",.;:!?")) :]
        if tail and i > 0:
            kept[i - 1] = kept[i - 1].rstrip(",.;:!?") + tail
        variant = " ".join(kept).strip(" ,")
        if variant and all(variant != v for _, v in out):
            out.append((token.strip(",.;:!?"), variant))
    return out


_KEPT_WORDS = _NEGATORS | {"without", "cannot", "hardly", "barely"}
"""Words a second reading never leaves out, beside `STOPWORDS`: they decide whether."""


def agreed_prefix(before: Sequence[str], now: Sequence[str]) -> int:
    """How many leading whitespace tokens of `now` the earlier hypothesis `before` agrees on.

    Two successive partial transcripts of one turn are decoded from the same audio, the
    second from more of it; where they agree, the words are unlikely to change (the "local
    agreement" policy of streaming Whisper). Tokens are compared by their words, so case and
    punctuation ("house," then "house.") do not break agreement.
    """
    n = 0
    for a, b in zip(before, now, strict=False):
        if words(a) != words(b):
            break
        n += 1
    return n


_SENTENCE_END = re.compile(r"[.!?][\"')]*$")


def settled_prefix(before: Sequence[str], now: Sequence[str]) -> int:
    """How many leading tokens of `now` are whole sentences that are settled: both partials
    agree on them (`agreed_prefix`) and the speaker has gone on past their end.

    A partial transcript ends where the audio did, often mid-sentence, and Whisper puts a
    full stop there anyway: "I don't want to go." may be the start of "I don't want to go
    back there alone". A sentence end with more words after it is a real one.
    """
    agreed = agreed_prefix(before, now)
    for k in range(min(agreed, len(now) - 1), 0, -1):
        if _SENTENCE_END.search(now[k - 1]):
            return k
    return 0


def find_phrase(text: str, needle_words: set[str], *, max_words: int = 8) -> str:
    """The shortest span of `text` that covers the content words shared with an example.

    Used to highlight the trigger phrase in the live transcript; falls back to the clause.
    """
    tokens = list(re.finditer(r"\S+", text))
    hits = [i for i, m in enumerate(tokens) if bare(m.group()) in needle_words]
    if not hits:
        return text.strip()
    lo, hi = hits[0], hits[-1]
    if hi - lo + 1 > max_words:
        hi = lo + max_words - 1
    return text[tokens[lo].start() : tokens[hi].end()].strip(" ,.;")


STOPWORDS = frozenset(
    """a an the and or but so to of in on at for with from by is are was were be been am i
    me my we our you your it its this that these those there here have has had do does did
    just very really please okay ok yes yeah well um uh oh
    them they their he him his she her us who what which when where how if as all any not
    can will would could should shall may might must get got
    i'm i've i'll i'd you're you've you'll you'd it's that's there's they're they've we're
    we've he's she's what's""".split()
)
"""Words that never make a trigger phrase on their own: pronouns (and their contractions),
auxiliaries and modals say who and when, not what the customer means. A match that shares
only these with its example highlights the whole clause instead (`find_phrase`)."""


def content_words(text: str) -> set[str]:
    return {w for w in words(text) if w not in STOPWORDS and w != "n't" and len(w) > 2}


_THANKS = re.compile(
    r"^\W*((ok(ay)?|oh|right|great|lovely|perfect|brilliant|wonderful|good|yes|yeah)\W+)*"
    r"(thank(s| you)|cheers|many thanks|much appreciated)\b",
    re.IGNORECASE,
)


def is_thanks(text: str, *, max_words: int = 6) -> bool:
    """A short utterance that thanks ("Thank you, Rachel.", "Okay, thanks so much")."""
    return bool(_THANKS.search(text)) and len(words(text)) <= max_words


def first_person(text: str) -> bool:
    return bool(_FIRST_PERSON.search(text))
