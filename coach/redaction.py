"""PII redaction for transcripts: card numbers, SSNs, emails and phone numbers, written or spoken.

Runs before anything leaves the live agent's view (supervisors, the store, files), so it errs
on the side of hiding: any run of 7 or more digits is hidden even when it is not a valid card
number. ASR writes numbers both as digits ("4111 1111") and as words ("four one one one"),
and addresses as "john dot smith at example dot com", so both forms are recognised.
Pure functions over strings; the word-level variant keeps word timings intact.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import phonenumbers

_DIGIT_WORDS = {
    "zero": "0", "oh": "0", "o": "0", "one": "1", "two": "2", "to": "2", "too": "2",
    "three": "3", "four": "4", "for": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9",
}  # fmt: skip
_STRICT_DIGIT_WORDS = {k for k in _DIGIT_WORDS if k not in ("oh", "o", "to", "too", "for")}
# Numbers read in groups ("two twelve, five fifty-five", which ASR may write as "two hundred
# twelve five hundred fifty five"): each group stands for its digits in the run.
_TEENS = {
    w: str(10 + i)
    for i, w in enumerate(
        "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
    )
}
_TENS = {
    w: str(2 + i)
    for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())
}

EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
# An "@" in a transcript is an address even when the ASR lost its top-level domain
# ("john.smith@gmail", found by an outside audit).
EMAIL_NO_TLD = re.compile(r"\b[\w.+-]+@[A-Za-z0-9][\w-]*")
SPOKEN_EMAIL = re.compile(
    r"\b[a-z0-9]+(?:\s+(?:dot|underscore|dash)\s+[a-z0-9]+)*\s+at\s+[a-z0-9-]+"
    r"(?:\s+dot\s+[a-z]{2,})+\b",
    re.IGNORECASE,
)
# Between the groups of a number read out, "dash" or "hyphen" said as a word stands for "-"
# ("one two three dash four five", an outside audit's "4532 hyphen 0151 hyphen ...").
_SPOKEN_DASH = r"\s+(?:dash|hyphen)\s+"
SSN = re.compile(
    rf"\b\d{{3}}(?:[-\s]|{_SPOKEN_DASH})\d{{2}}(?:[-\s]|{_SPOKEN_DASH})\d{{4}}\b", re.I
)

# Digit runs with the separators people and ASR use inside numbers.
DIGIT_RUN = re.compile(rf"(?<![\w])\+?\(?\d(?:[\d\s().-]|{_SPOKEN_DASH}){{5,}}\d(?![\w])", re.I)

TAGS = {
    "card": "[CARD]",
    "ssn": "[SSN]",
    "email": "[EMAIL]",
    "phone": "[PHONE]",
    "number": "[NUMBER]",
}


@dataclass(frozen=True, slots=True)
class Span:
    start: int
    end: int
    kind: str


def luhn_valid(digits: str) -> bool:
    if not digits.isdigit() or not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def classify_digits(digits: str, raw: str) -> str | None:
    """What a run of digits is, or None if it is too short to be personal data."""
    if luhn_valid(digits):
        return "card"
    if len(digits) == 9 and re.fullmatch(r"\d{3}[-\s]\d{2}[-\s]\d{4}", raw.strip()):
        return "ssn"
    if len(digits) in (10, 11) or (raw.lstrip().startswith(("+", "(")) and len(digits) >= 7):
        return "phone"
    if len(digits) == 9:
        return "ssn"
    if len(digits) >= 7:
        return "number"
    return None


def _below_hundred(tokens: Sequence[tuple[int, int, str]], j: int) -> tuple[str, int] | None:
    """ "twelve" -> "12", "fifty five" -> "55", "fifty" -> "50" at token j, or None."""
    tok = tokens[j][2]
    if tok in _TEENS:
        return _TEENS[tok], j + 1
    if tok in _TENS:
        if j + 1 < len(tokens) and tokens[j + 1][2] in _STRICT_DIGIT_WORDS:
            unit = _DIGIT_WORDS[tokens[j + 1][2]]
            if unit != "0":
                return _TENS[tok] + unit, j + 2
        return _TENS[tok] + "0", j + 1
    return None


def _number_group(tokens: Sequence[tuple[int, int, str]], j: int) -> tuple[str, int] | None:
    """A number said as a group ("two hundred twelve", "fifty five", "twelve") at token j:
    its digits and the token after it; None for a lone digit word (the caller's case)."""
    tok = tokens[j][2]
    if tok in _STRICT_DIGIT_WORDS and j + 1 < len(tokens) and tokens[j + 1][2] == "hundred":
        k = j + 2
        if k < len(tokens) and tokens[k][2] == "and":
            k += 1
        if k < len(tokens):
            rest = _below_hundred(tokens, k)
            if rest is not None:
                return _DIGIT_WORDS[tok] + rest[0].rjust(2, "0"), rest[1]
            if tokens[k][2] in _STRICT_DIGIT_WORDS:
                return _DIGIT_WORDS[tok] + "0" + _DIGIT_WORDS[tokens[k][2]], k + 1
        return _DIGIT_WORDS[tok] + "00", j + 2
    return _below_hundred(tokens, j)


def _spoken_digit_spans(text: str) -> list[Span]:
    """Runs of spoken digits ("four one one one ...", "double five") of 7 or more digits."""
    spans: list[Span] = []
    tokens = [(m.start(), m.end(), m.group().lower()) for m in re.finditer(r"[A-Za-z]+|\d+", text)]
    i = 0
    while i < len(tokens):
        j, digits, strict = i, "", 0
        after_group = False
        while j < len(tokens):
            tok = tokens[j][2]
            if (
                tok in ("double", "triple")
                and j + 1 < len(tokens)
                and tokens[j + 1][2] in _DIGIT_WORDS
            ):
                digits += _DIGIT_WORDS[tokens[j + 1][2]] * (2 if tok == "double" else 3)
                strict += 1
                j += 2
            elif (group := _number_group(tokens, j)) is not None:
                digits += group[0]
                strict += group[1] - j  # every word of a group is a number word
                j = group[1]
                after_group = True
                continue
            elif tok in ("to", "too", "for") and after_group:
                break  # "from nineteen ninety to twenty twenty" is a range, not one number
            elif tok in _DIGIT_WORDS:
                digits += _DIGIT_WORDS[tok]
                strict += tok in _STRICT_DIGIT_WORDS
                j += 1
            elif tok.isdigit():
                digits += tok
                strict += 1
                j += 1
                # "from 49.99 to 59.99" is a range too (it read as an SSN, found by an outside
                # audit): after a written number of 2 digits or more, "to" is not a two.
                after_group = len(tok) >= 2
                continue
            else:
                break
            after_group = False
        # Most tokens must be unambiguous digit words, so "for two to four" is left alone.
        raw = text[tokens[i][0] : tokens[j - 1][1]] if j > i else ""
        if len(digits) >= 7 and strict >= 0.7 * (j - i) and not _plain_figures(raw):
            kind = classify_digits(digits, raw) or "number"
            spans.append(Span(tokens[i][0], tokens[j - 1][1], kind))
            i = j
        else:
            i += 1
    return spans


# Addresses as Whisper writes what it hears: "John.Smith at gmail.com", "mary.jones at
# nampl.org", "johnsmith at gmail". Neither pattern above sees them: one needs "@", the other
# "dot" spelled out. Found by an ASR audit (espeak-ng speech through Whisper).
_TLDS = frozenset(
    "com org net edu gov mil int io co uk us ca au de fr nl ie nz in es jp br mx info biz me "
    "ai app dev tv xyz online email mail".split()
)
# Providers people name without a TLD ("johnsmith at gmail"); a word like "home" after "at"
# is ordinary talk, these are not.
_PROVIDERS = frozenset(
    "gmail googlemail yahoo hotmail outlook aol icloud proton protonmail".split()
)
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
_LABEL_SEP = re.compile(r"\.|\s+dot\s+", re.IGNORECASE)
_LOCAL = re.compile(r"[A-Za-z0-9](?:[\w.+-]*[A-Za-z0-9])?")
_JOINERS = frozenset({"dot", "underscore", "dash", "hyphen", "period"})
# Words that come before "at" in ordinary talk ("I'm at home", "look at it", "she works at
# Yahoo"): never the local part of an address, so "at" after them starts no address.
_NOT_LOCAL = frozenset(
    """
    a about account address all also am an and any are as at be been being best both but by
    can could did do does dot e-mail email either even everyone folks for friend from get
    got guy guys had has have he her here him his home how i i'm in is it it's its just live
    lived lives living look looked looking looks mail me meet met mine my name no not now of
    on one or our out over people right see seen send sent she should so someone somebody
    still stay stayed staying that that's the their them then there they this to too try us
    use was we were what when where which who why will with work worked working works would
    write you your
    """.split()
)


def _domain_end(text: str, pos: int, *, has_local: bool) -> int | None:
    """End of the mail domain that starts at `pos` ("gmail.com", "gmail dot com", "gmail"),
    or None. A dotted domain must end in a common TLD, or, after a local part, in a short
    word of letters; a bare provider name counts only after a local part."""
    labels: list[re.Match[str]] = []
    m = _LABEL.match(text, pos)
    while m is not None:
        labels.append(m)
        sep = _LABEL_SEP.match(text, m.end())
        m = _LABEL.match(text, sep.end()) if sep else None
    if not labels:
        return None
    for lab in reversed(labels[1:]):
        tld = lab.group().lower()
        if tld in _TLDS or (has_local and tld.isalpha() and 2 <= len(tld) <= 6):
            return lab.end()
    if has_local and labels[0].group().lower() in _PROVIDERS:
        return labels[0].end()
    return None


def _local_start(tokens: Sequence[re.Match[str]], at: int) -> int | None:
    """Index of the first token of the local part that ends just before token `at` ("at"),
    or None when the word before "at" cannot be one. A local part is one token
    ("john.smith", "johnsmith"), tokens joined by spoken "dot"/"underscore"/..., or two
    name-like words ("John Smith at Gmail.com": hiding "Smith" alone leaves the name)."""

    def local(k: int) -> bool:
        # Whisper writes the pause before "at" as a comma ("John Smith, at Gmail.com").
        word = tokens[k].group().rstrip(",") if k == at - 1 else tokens[k].group()
        return bool(_LOCAL.fullmatch(word)) and word.lower() not in _NOT_LOCAL

    k = at - 1
    if k < 0 or not local(k):
        return None
    first = k
    while first >= 2 and tokens[first - 1].group().lower() in _JOINERS and local(first - 2):
        first -= 2
    single = first == k and not re.search(r"[._]", tokens[k].group())
    if single and k >= 1 and tokens[k - 1].group().isalpha() and local(k - 1):
        first = k - 1
    return first


_AT_WORDS = frozenset({"at", "(at)", "[at]"})
_AT_MISHEARD = frozenset({"that", "add", "hat"})


def _asr_email_spans(text: str) -> list[Span]:
    """Addresses written with a spoken " at " instead of "@" (see `_TLDS`)."""
    tokens = list(re.finditer(r"\S+", text))
    spans: list[Span] = []
    for i, tok in enumerate(tokens[:-1]):
        if tok.group().lower() not in _AT_WORDS:
            continue
        # "at the rate (of)" (Indian English for "@") and "at sign" are one "at".
        k = i + 1
        said = [t.group().lower() for t in tokens[k : k + 3]]
        if tok.group().lower() == "at" and said[:2] == ["the", "rate"]:
            k += 3 if said[2:] == ["of"] else 2
        elif tok.group().lower() == "at" and said[:1] == ["sign"]:
            k += 1
        if k >= len(tokens):
            continue
        first = _local_start(tokens, i)
        end = _domain_end(text, tokens[k].start(), has_local=first is not None)
        if end is None and first is not None and k + 1 < len(tokens):
            # A company's name in two words ("jsmith at acme corp dot com"): the dotted
            # rest must end in a common TLD.
            rest = _domain_end(text, tokens[k + 1].start(), has_local=False)
            end = rest if rest is not None and tokens[k].group().isalpha() else None
        if end is not None:
            # With no local part ("I'm at work.com") only the domain is hidden.
            start = tokens[first].start() if first is not None else tokens[k].start()
            spans.append(Span(start, end, "email"))
    return spans


# "My email is john dot smith" / "at gmail dot com": a pause before "at" ends the utterance
# there, and the domain, alone in the next one, is all the rules above see. An address
# announced as such and cut off at the end of an utterance is hidden when what is left
# looks like a local part (joined by dot/underscore/dash, or with . _ + or digits in it):
# "my email is broken" or "... is not working" are talk, not an address.
_ANNOUNCED_LOCAL = re.compile(
    r"\be-?mail(?:\s+address)?(?:\s+is|'s)?[\s:,]+"
    r"(?P<local>[A-Za-z0-9][\w.+-]*(?:\s+(?:dot|underscore|dash|hyphen)\s+[A-Za-z0-9][\w+-]*)*"
    # or spelled letter by letter ("my email is j o h n", "J, O, H, N")
    r"|[A-Za-z0-9](?:[\s,\-]+[A-Za-z0-9](?![\w']))+)"
    r"(?:\s+at)?[\s.,!?;:]*$",
    re.IGNORECASE,
)


# An announced local part joined by a dot, an underscore or digits, mid-line: "my email is
# j.smith. Thanks" (an outside security audit's partials); a joined word is no talk.
_ANNOUNCED_JOINED_LOCAL = re.compile(
    r"\be-?mail(?:\s+address)?(?:\s+is|'s)?[\s:,]+"
    r"(?P<local>[A-Za-z][A-Za-z0-9]*(?:[._+][A-Za-z0-9]+)+|[A-Za-z]+\d+[A-Za-z0-9]*)(?![\w@])",
    re.IGNORECASE,
)


# The same announced local part followed by its domain, with the "at" between them lost to
# the ASR or heard as part of the domain: "my email is john dot smith email dot com" (an
# outside audit's "john dot smith at gmail dot com" through Whisper), "john.smith gmail.com".
_ANNOUNCED_ADDRESS = re.compile(
    r"\be-?mail(?:\s+address)?(?:\s+is|'s)?[\s:,]+"
    r"(?P<local>[A-Za-z0-9][\w.+-]*(?:\s+(?:dot|underscore|dash|hyphen)\s+[A-Za-z0-9][\w+-]*)*)"
    r"\s+(?:at\s+)?(?P<domain>\S)",
    re.IGNORECASE,
)


# Written to fool a scraper: "john.smith(at)gmail(dot)com", "jsmith [at] acme [dot] com".
BRACKETED_EMAIL = re.compile(
    r"[\w.+-]+\s*[(\[]\s*at\s*[)\]]\s*[\w-]+"
    r"(?:\s*(?:[(\[]\s*dot\s*[)\]]|\.)\s*[\w-]+)+",
    re.IGNORECASE,
)
# A mail provider's domain with the "at" before it lost to the ASR: "john smith gmail dot
# com" (an outside PII audit). The words before it are the local part unless they are talk
# ("I use gmail dot com").
_PROVIDER_DOMAIN = re.compile(
    rf"\b(?:{'|'.join(sorted(_PROVIDERS))})(?:\.|\s+dot\s+)(?:{'|'.join(sorted(_TLDS))})\b",
    re.IGNORECASE,
)


def _provider_email_spans(text: str) -> list[Span]:
    spans: list[Span] = []
    tokens = list(re.finditer(r"\S+", text))
    for m in _PROVIDER_DOMAIN.finditer(text):
        at = next((i for i, t in enumerate(tokens) if t.start() == m.start()), None)
        if at is None or (at > 0 and tokens[at - 1].group().lower() in _AT_WORDS):
            continue  # after "at": `_asr_email_spans` has it
        if at >= 2 and tokens[at - 1].group().lower() in _AT_MISHEARD:
            # "jon.mit that gmail.com": ASR's "that" for "at" (an outside PII audit), taken
            # as "at" only after a joined local part, which ordinary talk does not end in.
            first = _local_start(tokens, at - 1)
            if first is not None and (
                first < at - 2 or re.search(r"[A-Za-z][._][A-Za-z0-9]", tokens[at - 2].group())
            ):
                spans.append(Span(tokens[first].start(), m.end(), "email"))
                continue
        first = _local_start(tokens, at)
        # Where an address is said: at the start, or after "to", "is", "email"... ("I
        # prefer gmail.com" names no address).
        lead = tokens[first - 1].group().lower().strip(",:") if first else ""
        if first is not None and (first == 0 or lead in _ADDRESS_LEAD):
            spans.append(Span(tokens[first].start(), m.end(), "email"))
    return spans


_ADDRESS_LEAD = frozenset(
    "to is it's its email e-mail mail address me on at as was send sent use under".split()
)


def _announced_email_spans(text: str) -> list[Span]:
    spans: list[Span] = []
    m = _ANNOUNCED_LOCAL.search(text)
    local = m.group("local").rstrip(".-") if m is not None else ""
    if m is not None and _looks_local(local):
        spans.append(Span(m.start("local"), m.start("local") + len(local), "email"))
    for m in _ANNOUNCED_JOINED_LOCAL.finditer(text):
        spans.append(Span(m.start("local"), m.end("local"), "email"))
    for m in _ANNOUNCED_ADDRESS.finditer(text):
        if not _looks_local(m.group("local")) or text[m.start("domain") :].lower().startswith(
            tuple(f"{j} " for j in _JOINERS)
        ):
            continue
        end = _domain_end(text, m.start("domain"), has_local=True)
        if end is not None and _LABEL_SEP.search(text, m.start("domain"), end):
            spans.append(Span(m.start("local"), end, "email"))
    return spans


def _looks_local(local: str) -> bool:
    """An announced address's local part, not talk ("my email is broken"): joined by
    dot/underscore/dash, spelled, or with . _ + or digits in it."""
    joined = len(local.split()) > 1 or re.search(r"[._+\d,-]", local) is not None
    return joined and re.search(r"[A-Za-z]", local) is not None and local.lower() not in _NOT_LOCAL


_TOKEN = re.compile(r"[A-Za-z]+|\d+")
_IN_RUN = re.compile(r"[\s,.\-]*")  # what may separate the digits of one dictated number
_EDGE = re.compile(r"[\s,.!?;:\-]*")  # what may come before or after it at an utterance's edge
# What may come before a number that opens an utterance: ASR keeps some fillers and joins
# ("And 0151.", "Uh, 555."), which do not make the digits any less the rest of a number.
_LEAD_IN = re.compile(r"(?:[\s,.!?;:\-]|\b(?:uh|um|er|erm|hmm|and|then|so|ok|okay)\b)*", re.I)
DICTATED_AT_END = 3
"""Digits read out one by one at the end of an utterance that are hidden even though fewer
than 7: callers dictate long numbers in pieces, with pauses that end the utterance."""
GROUPS_ANYWHERE = 5
"""Numeral groups read one after another ("212 555", "123, 45, 6789") are hidden wherever
they stand from this many digits in all; fewer are more often small amounts ("20, 30
minutes") than a number read out."""
# Words that announce a number being read out: a numeral group that ends an utterance after
# one is the first piece of it ("My card number is 4532", "area code 21").
_NUMBER_CUES = frozenset(
    "card number social security ssn phone cell mobile account routing pin code digits".split()
)


@dataclass(frozen=True, slots=True)
class Run:
    """Digits read out as one number, one by one ("four one one", "5, 5, 2") or in numeral
    groups ("4532 0151", "212. 555.")."""

    start: int
    end: int
    digits: str
    groups: int
    """How many of its pieces are numerals of 2 or more digits."""
    pieces: int


def _is_group(text: str, start: int, end: int) -> bool:
    """Whether the numeral text[start:end] can be one group of a number read out: 2 to 6
    digits standing alone, not part of an amount, time, decimal, ordinal or code ("$20",
    "1,500", "9:30", "2.5", "3rd", "50%", "A12")."""
    if not 2 <= end - start <= 6:
        return False
    before, after = text[max(0, start - 2) : start], text[end : end + 2]
    return not (
        re.search(r"[$£€¥#A-Za-z]$|\d[.,:/]$", before) or re.match(r"[%\w]|[.,:/]\d", after)
    )


def _number_runs(text: str) -> list[Run]:
    """Each run of digits read out as one number: digits one per token ("four one one",
    "5, 5, 2", "double five") or numeral groups ("4532 0151"), only spaces, commas, dots or
    dashes between, mostly unambiguous digit words. "1,500", "9:30" and "2.5" are not
    dictation; a lone "2024" is a run of one group, which `_number_spans` judges by where it
    stands. Groups and ambiguous digit words ("to", "for", "oh") never share a run, so "from
    10 to 25" is two numbers and not one."""
    tokens = [(m.start(), m.end(), m.group().lower()) for m in _TOKEN.finditer(text)]
    runs: list[Run] = []
    i = 0
    while i < len(tokens):
        j, digits, strict, groups, vague, pieces = i, "", 0, 0, 0, 0
        while j < len(tokens):
            if j > i and not _IN_RUN.fullmatch(text[tokens[j - 1][1] : tokens[j][0]]):
                break
            s, e, tok = tokens[j]
            if (
                tok in ("double", "triple")
                and j + 1 < len(tokens)
                and tokens[j + 1][2] in _DIGIT_WORDS
            ):
                digits += _DIGIT_WORDS[tokens[j + 1][2]] * (2 if tok == "double" else 3)
                strict, j = strict + 2, j + 2
            elif tok in _DIGIT_WORDS or (tok.isdigit() and len(tok) == 1):
                ambiguous = tok in _DIGIT_WORDS and tok not in _STRICT_DIGIT_WORDS
                if ambiguous and groups:
                    break
                digits += _DIGIT_WORDS.get(tok, tok)
                strict, vague, j = strict + (not ambiguous), vague + ambiguous, j + 1
            elif tok.isdigit() and _is_group(text, s, e) and not vague:
                digits += tok
                strict, groups, j = strict + 1, groups + 1, j + 1
            else:
                break
            pieces += 1
        if digits and strict >= 0.7 * (j - i):
            runs.append(Run(tokens[i][0], tokens[j - 1][1], digits, groups, pieces))
            i = j
        else:
            i += 1
    return runs


def dictation_at_edges(text: str) -> tuple[Run | None, Run | None]:
    """The run of digits read out that opens `text` (after fillers such as "and", "uh") and
    the one that closes it, if any."""
    return _edges(text, _number_runs(text))


def _edges(text: str, runs: list[Run]) -> tuple[Run | None, Run | None]:
    first = runs[0] if runs and _LEAD_IN.fullmatch(text[: runs[0].start]) else None
    last = runs[-1] if runs and _EDGE.fullmatch(text[runs[-1].end :]) else None
    return first, last


def _closes_a_number(text: str, run: Run, *, opens: bool, continues: bool) -> bool:
    """Whether `run`, which ends the utterance, is a piece of a number being read out."""
    if continues:  # the speaker was reading a number out: "and then 0151"
        return len(run.digits) >= 2
    if not run.groups:
        return len(run.digits) >= DICTATED_AT_END
    if run.digits[0] == "0" and len(run.digits) >= DICTATED_AT_END:
        # No amount, year or time is written with a leading zero: "Next is 0151." is the
        # middle of a card read in pieces (found by an outside PII audit).
        return True
    # A numeral group alone is as often a year or an amount ("in 2019", "it's 250"): it is a
    # piece of a number when it is all the utterance says, or a number was announced.
    if opens:
        return len(run.digits) >= DICTATED_AT_END
    before = {w.lower() for w in re.findall(r"[A-Za-z]+", text[: run.start])}
    return len(run.digits) >= 2 and not before.isdisjoint(_NUMBER_CUES)


# What a speaker may say between the groups of one number they read out: fillers and joins
# ("4532, then 0151, then 2830", "415, uh, 555, um, 0122", "415 and then 555"). An outside PII
# audit saw such cards and phone numbers reach supervisors with all but the last group shown.
_JOIN = re.compile(
    r"(?:[\s,.\-]|\b(?:uh|um|er|erm|hmm|ah|and|then|next|so|okay|ok|yeah|sorry)\b)*", re.I
)
JOINED_MIN_DIGITS = 7
"""Digits in all for runs joined by such words to be one number: "45 and 120" stays."""
DICTATED_ANYWHERE = 5
"""Digits read out one by one that are hidden wherever they stand ("2, 2, 3, 4, 8, I know")."""
_YEAR = re.compile(r"(?:19|20)\d\d")


def _plain_figures(text: str) -> bool:
    """Whether every numeral in `text` is a year or a round figure ("2019, 2020 and 2021",
    "between 1000 and 2000"): talk about dates and amounts, not a number read out."""
    numerals = re.findall(r"\d+", text)
    return len(numerals) >= 2 and all(
        _YEAR.fullmatch(n) or (len(n) >= 3 and n.endswith("00")) for n in numerals
    )


# The groups of a number as it is read out, by their lengths, with what its first digits may
# be: a NANP phone number (area code and exchange start with 2-9), an SSN (no 000, 666 or
# 9xx area), a card in fours (Visa, Mastercard, Amex, Discover start with 2-6) and an Amex
# card. Groups of such a shape joined by a bare "and" are one number: "415 and 555 and 0122"
# kept its area code visible (the second outside PII audit), while "45 and 120 and 300 and
# 1500" is a list of amounts.
_READ_OUT_SHAPES: dict[tuple[int, ...], re.Pattern[str]] = {
    (3, 3, 4): re.compile(r"[2-9]\d\d[2-9]"),
    (3, 2, 4): re.compile(r"(?!000|666|9)\d{3}"),
    (4, 4, 4, 4): re.compile(r"[2-6]"),
    (4, 6, 5): re.compile(r"3[47]"),
}


def _has_number_shape(runs: list[Run]) -> bool:
    start = _READ_OUT_SHAPES.get(tuple(len(r.digits) for r in runs))
    return start is not None and start.match("".join(r.digits for r in runs)) is not None


def _joined(text: str, runs: list[Run]) -> list[Run]:
    """Runs read out one after another with fillers or joins between them, as one run. A
    bare "and" joins only digits read one by one, a group with a leading zero, or groups
    whose lengths are the shape of a phone, SSN or card number: "I paid 45 and 120 and 300"
    is a list of amounts."""
    # How each run links to the next: True (joined), "and" (joined only inside a stretch of
    # runs with a number's shape) or False.
    links: list[bool | str] = []
    for prev, run in zip(runs, runs[1:], strict=False):
        gap = text[prev.end : run.start]
        if not _JOIN.fullmatch(gap):
            links.append(False)
        elif {w.lower() for w in re.findall(r"[A-Za-z]+", gap)} != {"and"}:
            links.append(True)
        else:
            links.append(not (prev.groups or run.groups) or run.digits[0] == "0" or "and")
    for size in {len(shape) for shape in _READ_OUT_SHAPES}:
        for i in range(len(runs) - size + 1):
            window = range(i, i + size - 1)
            if all(links[k] for k in window) and _has_number_shape(runs[i : i + size]):
                for k in window:
                    links[k] = True
    out: list[Run] = []
    for i, run in enumerate(runs):
        if i and links[i - 1] is True:
            prev = out[-1]
            out[-1] = Run(
                prev.start,
                run.end,
                prev.digits + run.digits,
                prev.groups + run.groups,
                prev.pieces + run.pieces,
            )
        else:
            out.append(run)
    return out


def _number_spans(text: str, *, continues: bool) -> list[Span]:
    """Numbers read out in pieces (see `Run`) that are hidden although under 7 digits, and
    those read with fillers between their pieces."""
    runs = _number_runs(text)
    first, last = _edges(text, runs)
    spans: list[Span] = []
    for run in runs:
        grouped = run.groups and run.pieces >= 2 and len(run.digits) >= GROUPS_ANYWHERE
        dictated = not run.groups and len(run.digits) >= DICTATED_ANYWHERE
        closes = run == last and _closes_a_number(
            text, run, opens=run == first, continues=continues
        )
        raw = text[run.start : run.end]
        if (
            (grouped and not _plain_figures(raw))
            or dictated
            or closes
            or (continues and run == first)
        ):
            spans.append(Span(run.start, run.end, classify_digits(run.digits, raw) or "number"))
    for run in _joined(text, runs):
        raw = text[run.start : run.end]
        if len(run.digits) >= JOINED_MIN_DIGITS and run.pieces >= 2 and not _plain_figures(raw):
            spans.append(Span(run.start, run.end, classify_digits(run.digits, raw) or "number"))
    return spans


_NUMERALS = re.compile(r"\d+(?:[\s,.:/\-]+\d+)*")
_REPEATS = frozenset({"double", "triple"})  # "double five": two digits


_WORD = r"[A-Za-z0-9][\w+-]*(?:\.[A-Za-z0-9][\w+-]*)*"  # "john", "john.smith", not "john."
# A partial that has just heard "my email is john": the start of an address, too short yet to
# look like one ("john" is any word), reached supervisors (an outside security audit). In a
# partial, the words after the announcement are hidden unless they plainly are talk.
_INTERIM_ADDRESS = re.compile(
    r"\be-?mail(?:\s+address)?[\s,]*(?:is|'s|:)[\s,:]*"
    r"(?P<local>(?!(?:the|a|an|not|no|on|in|still|wrong|broken|same|correct|right|fine|and|it"
    r"|that|this|my|your|changed|different|old|new|up|down|now|at|also|just|probably|actually"
    r"|uh|um|please|for|from|to|with|what|where|how|why|when)\b)"
    rf"{_WORD}(?:[\s,]+(?!(?:and|but|so|please|if|because)\b){_WORD}){{0,2}})",
    re.IGNORECASE,
)


def _interim_spans(text: str) -> list[Span]:
    """What a partial hides besides personal data: every run of 2 or more digits, as numerals
    ("212 550", "21") or as 2 or more digit words in a row ("two one"), and the words after
    "my email is". A partial holds the number or address still being spoken, too short yet
    to look like one; the final transcript, under the usual rules, replaces it."""
    spans = [
        Span(m.start("local"), m.end("local"), "email") for m in _INTERIM_ADDRESS.finditer(text)
    ]
    for m in _NUMERALS.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if len(digits) >= 2:
            spans.append(Span(m.start(), m.end(), classify_digits(digits, m.group()) or "number"))
    tokens = [(m.start(), m.end(), m.group().lower()) for m in _TOKEN.finditer(text)]
    i = 0
    while i < len(tokens):
        j, strict = i, 0
        while j < len(tokens) and (
            tokens[j][2] in _DIGIT_WORDS or tokens[j][2] in _REPEATS or tokens[j][2].isdigit()
        ):
            if j > i and not _IN_RUN.fullmatch(text[tokens[j - 1][1] : tokens[j][0]]):
                break
            strict += tokens[j][2] not in _DIGIT_WORDS or tokens[j][2] in _STRICT_DIGIT_WORDS
            j += 1
        if j - i >= 2 and strict:  # "for to" alone is not a number
            spans.append(Span(tokens[i][0], tokens[j - 1][1], "number"))
        i = max(j, i + 1)
    return spans


# A secret number announced by name: what follows is that number whatever shape the ASR gave
# its digits. Spoken in groups ("four thousand five hundred thirty two"), they come out as
# amounts ("My card number is 4,532 near 1,11283", an outside audit's A-law replay), which
# the rules for numbers read out leave visible on purpose ("it went up to 1,500").
_SECRET_NAMED = re.compile(
    r"\b(?:(?P<card>(?:credit\s+|debit\s+)?card)\s+(?:number|no\.?|ending(?:\s+in)?|ends\s+in)"
    r"|(?P<ssn>social(?:\s+security)?\s+number|social\s+security|ssn"
    r"|last\s+(?:four|4)(?:\s+digits)?\s+of\s+(?:my|the|your|his|her)\s+social)"
    r"|(?P<phone>(?:(?:tele)?phone|cell(?:\s+phone)?|mobile|contact|callback|call\s+back)\s+number)"
    r"|(?:account|routing|member(?:ship)?|policy)\s+number|pin"
    r"|(?P<code>cvv|cvc|cv2|security\s+code|code\s+on\s+the\s+back"
    r"|(?:three|3|four|4)\s+digits\s+on\s+the\s+back"
    r"|expiry(?:\s+date)?|expiration(?:\s+date)?|expires(?:\s+on)?))\b"
    r"(?:\s+(?:is|are|was|it's|that's|of))?(?:\s*:)?",
    re.IGNORECASE,
)
# Said of a number the business already holds ("my card number is on file already"): no
# number is being read out, and the caller's next figures are prices and dates.
_NOT_READ_OUT = re.compile(r"\bon\s+file\b|\byou\s+(?:already\s+)?have\s+(?:it|that)\b", re.I)
_NUMERAL_TOKEN = re.compile(r"(?<![$£€¥\w])\d[\d,.\-/]*")
SECRET_WINDOW_WORDS = 3
"""Words other than numerals that may stand between the pieces of an announced number (ASR
fills the pauses between groups with "near", "and", "uh") before it is taken to be over."""
SECRET_LEAD_WORDS = 3
"""Words that may stand between the announcement and the number's first numeral ("is uh",
"I have is": an agent reading it back, found by an outside PII audit)."""
CODE_MIN_DIGITS = 3
"""The same for a card's security code ("my CVV is 737", found by an outside audit)."""
PHONE_PIECE_MIN_DIGITS = 2
"""The same for the first piece of a phone number ("my phone number is 41", an area code:
the outside audit's "41." after "my phone number is" mid-utterance stayed visible)."""
SECRET_MIN_DIGITS = 4
"""Digits in all for the numerals after an announcement to be the number: "my card number
is 2 digits short" is not one."""


def _named_kind(m: re.Match[str]) -> str:
    """What a `_SECRET_NAMED` match names, as a tag kind."""
    for kind in ("card", "ssn", "phone"):
        if m.group(kind):
            return kind
    return "number"


_ASKED = re.compile(r"[^.?!]*\?")  # the sentence that names the number is a question
# Figures that are plainly amounts or measures, not a number read out: "the bill was 1,500",
# "45.99", "$20", "2 hours", "50 %". Digits read out are bare, dashed or grouped.
_AN_AMOUNT = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+\.\d+")
_A_UNIT = re.compile(
    r"\s*(?:%|percent|dollars?|bucks|pounds?|quid|euros?|cents?|pence|p\b|seconds?|minutes?"
    r"|hours?|days?|weeks?|months?|years?(?:\s+old)?|calls?\b|call\(s\)|digits?|am\b|pm\b|a\.m\.|p\.m\.|o'clock)",
    re.IGNORECASE,
)
_CURRENCY = frozenset("$£€¥")


def _read_out_after_name(text: str) -> list[Span]:
    """Every figure after a secret number is named in a statement ("My card number is 4.
    I'm 3-2-0-1. I'm 1-1-2-8."), tagged as what was named (`_figures_read_out`).

    The speaker is reading it out: the rest of the utterance gets what `CallRedactor` gives
    their next 30 s. ASR breaks a card read slowly into sentences at its pauses and hears
    "five" as "I'm", so the number's pieces after the first full stop were left to the rules
    for numbers read out, and a 4-digit group or a lone first digit stayed visible (an
    outside ingest audit, on every μ-law ingest). A question names no number being read
    ("can I take your card number?"), nor does one the business holds ("it's on file")."""
    if _NOT_READ_OUT.search(text):
        return []
    m = next((m for m in _SECRET_NAMED.finditer(text) if not _ASKED.match(text, m.end())), None)
    if m is None:
        return []
    return _figures_read_out(text, m.end(), _named_kind(m), bare_amounts=True)


def _figures_read_out(text: str, at: int, kind: str, *, bare_amounts: bool) -> list[Span]:
    """From `at` on, every numeral however short and every run of digit words, as `kind`:
    the figures of someone reading out a secret number. Amounts and measures stay ("$45",
    "45 dollars", "2 hours"), as do ordinals ("the 3rd") and addresses ("12 Main Street"):
    hiding them too took the meaning of the sentence after the number (an outside check).
    With `bare_amounts`, so do figures written as amounts with nothing to say so ("1,500",
    "45.99"): in the utterance that names the number, whose first figures the announcement
    itself covers. In a later one ASR may write a group read out that way ("4,532")."""
    rest = text[at:]
    spans = [
        Span(at + n.start(), at + n.end(), kind)
        for n in _NUMERALS.finditer(rest)
        if not (bare_amounts and _AN_AMOUNT.fullmatch(n.group()))
        and not _A_UNIT.match(rest, n.end())
        and not rest[n.end() : n.end() + 1].isalpha()  # "3rd", "4th"
        and not rest[max(0, n.start() - 1) : n.start()].isalnum()  # "A12", "x2"
        and rest[max(0, n.start() - 1) : n.start()] not in _CURRENCY
        and not _an_address_follows(rest, n.end())  # "my contact number is 12 Main Street"
    ]
    spans += [  # digit words ("four one one"): the numerals are above
        Span(at + s.start, at + s.end, kind)
        for s in _interim_spans(rest)
        if s.kind != "email" and not any(ch.isdigit() for ch in rest[s.start : s.end])
    ]
    return spans


def _announced_secret_spans(text: str) -> list[Span]:
    """Numerals after "card number is", "social security number", "PIN"...: hidden whatever
    their form (see `_SECRET_NAMED`)."""
    spans: list[Span] = []
    for m in _SECRET_NAMED.finditer(text):
        kind = _named_kind(m)
        first = last = None
        digits, pos, gap = 0, m.end(), 0
        for word in re.finditer(r"\S+", text[pos:]):
            a, b = pos + word.start(), pos + word.end()
            numeral = _NUMERAL_TOKEN.match(text, a)
            if (
                numeral is not None
                and first is not None
                and gap
                and _A_UNIT.match(text, a + len(numeral.group().rstrip(",.-/")))
            ):
                break  # "...0366 and I paid 45 dollars": an amount after the number
            if numeral is not None and numeral.end() >= b - 1:  # the word is a numeral
                first = a if first is None else first
                last = a + len(numeral.group().rstrip(",.-/"))
                digits += sum(ch.isdigit() for ch in numeral.group())
                gap = 0
                continue
            spoken = text[a:b].rstrip(",.-/?!")
            if spoken.lower() in _STRICT_DIGIT_WORDS or (
                # "oh", "to", "for" count only right after a digit ("four oh one").
                first is not None and gap == 0 and spoken.lower() in _DIGIT_WORDS
            ):
                # A digit said as a word ("my phone number is four one. Wait..."): a review
                # found the first piece visible where its numerals would have been hidden.
                first = a if first is None else first
                last = a + len(spoken)
                digits += 1
                gap = 0
                continue
            if first is not None and text[a - 2 : a - 1] in ".?!" and text[a:b][:1].isupper():
                break  # a new sentence
            if first is not None and ('"' in text[a - 2 : a] or ";" in text[a - 2 : a]):
                break  # a quotation or a clause closed: "...6789"; history: 1 call(s)
            gap += 1
            # The number follows its name at once ("is uh 4532"); then pauses may be filled.
            if gap > (SECRET_WINDOW_WORDS if first is not None else SECRET_LEAD_WORDS):
                break
        # A card's security code has 3 digits (4 on Amex); a phone number is read in pieces
        # ("my phone number is 41. Wait, let me check"), whose first may have two.
        least = (
            CODE_MIN_DIGITS
            if m.group("code")
            else PHONE_PIECE_MIN_DIGITS
            if m.group("phone")
            else SECRET_MIN_DIGITS
        )
        if first is None or last is None or digits < least:
            continue
        if kind == "phone" and digits < SECRET_MIN_DIGITS and _an_address_follows(text, last):
            # "my contact number is 12 Main Street" goes on into an address, not a number.
            # Only then: Whisper leaves most pauses unpunctuated ("is 415 hold on").
            continue
        spans.append(Span(first, last, kind))
    return spans


_STREET_WORDS = frozenset(
    "street st road rd avenue ave lane ln drive dr way close court ct place pl crescent "
    "boulevard blvd terrace highway hwy".split()
)
ADDRESS_LOOKAHEAD_WORDS = 3
"""Words after a short number that may hold the street word of an address ("12 Main
Street", "12 North Oak Avenue")."""


def _an_address_follows(text: str, end: int) -> bool:
    """Whether the words after `end` (up to the end of the sentence) name a street."""
    rest = re.split(r"[.?!;]", text[end:], maxsplit=1)[0]
    words = [w.strip(",") for w in rest.split()[:ADDRESS_LOOKAHEAD_WORDS]]
    # After a name: "12 Main Street", not "41 by the way".
    return any(
        w.lower() in _STREET_WORDS and words[i - 1][:1].isupper() for i, w in enumerate(words) if i
    )


_MIXED_TOKEN = re.compile(r"\b(?=[A-Za-z]*\d)(?=\d*[A-Za-z])[A-Za-z0-9]+\b")


# A local part alone, cut off from its "at ..." by a pause: "John.Smith." / "at gmail.com." (an
# outside PII audit saw the first line reach supervisors, the store and the history search).
# Written joined by a dot ("john.smith", "j.smith") it is a handle wherever it stands; with a
# domain's last label ("example.com") it is a site, not a person. Not joined by "_" alone:
# the server's own texts name cues and reasons so ("Raised by: escalation_request cue"),
# which this hid from supervisors. Said with a spoken joiner ("John dot Smith") only at the
# end of an utterance, and only after "underscore" or when the address was asked for
# (`email_asked`): "the polka dot dress" is talk.
_WRITTEN_LOCAL = re.compile(r"(?<![\w.@+-])[A-Za-z][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)+(?![\w@]|\.\w)")
_SPOKEN_LOCAL = re.compile(
    r"(?<![\w'])[A-Za-z][A-Za-z0-9]*(?:\s+(?:dot|underscore|period)\s+[A-Za-z0-9]+)+(?=[\s.,!?]*$)",
    re.IGNORECASE,
)
_ABBREVIATION = frozenset("am pm eg ie us uk usa etc vs mr mrs ms dr st jr sr phd".split())


def _joined_local_spans(text: str, *, email_asked: bool) -> list[Span]:
    spans: list[Span] = []
    for m in _WRITTEN_LOCAL.finditer(text):
        labels = m.group().split(".")
        letters = "".join(labels)
        if (
            labels[-1].lower() in _TLDS
            or letters.lower() in _ABBREVIATION
            or max(len(label) for label in labels) < 3
            or not any(ch.isalpha() for ch in labels[-1])
        ):
            continue
        spans.append(Span(m.start(), m.end(), "email"))
    for m in _SPOKEN_LOCAL.finditer(text):
        parts = re.split(r"\s+(?:dot|underscore|period)\s+", m.group(), flags=re.IGNORECASE)
        if any(p.lower() in _NOT_LOCAL for p in parts) or parts[-1].lower() in _TLDS:
            continue
        if email_asked or re.search(r"\bunderscore\b", m.group(), re.IGNORECASE):
            spans.append(Span(m.start(), m.end(), "email"))
    return spans


def find_pii(
    text: str,
    *,
    continues_digits: bool = False,
    interim: bool = False,
    continues_spelling: bool = False,
    reading: bool = False,
    email_asked: bool = False,
) -> list[Span]:
    """Spans of personal data in `text`. `continues_digits`: the speaker's previous utterance
    ended in digits read out (see `CallRedactor`), so digits that open or close this one are
    the rest of that number and are hidden too. `interim`: `text` is a partial transcript,
    whose numbers are hidden whatever their length (`_interim_spans`). `reading`: the speaker
    is reading out a secret number they named, so every figure but amounts and measures is
    hidden, however short (`_figures_read_out`). `continues_spelling`:
    the previous one ended in an address being spelled, so letters spelled one by one at
    the start of this one are the rest of it. `email_asked`: someone on the call asked for an
    email address just now, so a name said with a spoken "dot" that ends the utterance is
    the start of one (`_joined_local_spans`)."""
    spans = [Span(m.start(), m.end(), "email") for m in EMAIL.finditer(text)]
    lead = _SPELLED_LEAD.match(text) if continues_spelling else None
    if lead is not None and len(_SPELLED_CHAR.findall(lead.group())) >= SPELLED_MIN:
        spans.append(Span(lead.start("run"), lead.end("run"), "email"))
    spans += [Span(m.start(), m.end(), "email") for m in EMAIL_NO_TLD.finditer(text)]
    spans += [Span(m.start(), m.end(), "email") for m in SPOKEN_EMAIL.finditer(text)]
    spans += _asr_email_spans(text)
    spans += _announced_email_spans(text)
    spans += [Span(m.start(), m.end(), "email") for m in BRACKETED_EMAIL.finditer(text)]
    spans += _provider_email_spans(text)
    spans += _joined_local_spans(text, email_asked=email_asked)
    spans = [_with_announced_lead(text, _with_spelled_start(text, s)) for s in spans]
    spans += [Span(m.start(), m.end(), "ssn") for m in SSN.finditer(text)]
    for m in DIGIT_RUN.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        kind = classify_digits(digits, m.group())
        if kind and not _plain_figures(m.group()):  # "the 100 200 300 plans"
            spans.append(Span(m.start(), m.end(), kind))
    spans += _spoken_digit_spans(text)
    spans += _number_spans(text, continues=continues_digits)
    for m in _MIXED_TOKEN.finditer(text):
        # A letter the ASR glued into a number ("77712443i8888" showed "i8888"; an outside
        # PII audit), or a reference made of both: the whole word goes.
        if sum(ch.isdigit() for ch in m.group()) >= 7:
            spans.append(Span(m.start(), m.end(), "number"))
    announced = _announced_secret_spans(text) + _read_out_after_name(text)
    spans += announced
    if interim:
        spans += _interim_spans(text)
    if reading:
        spans += _figures_read_out(text, 0, "number", bare_amounts=False)
    return _named_as_announced(_merge(spans), announced)


# Letters and digits spelled out one by one, with the words said between them ("j o h n dot
# s m i t h", "S, M, I, T, H", "J-O-H-N"), up to where an address was found.
_SPELLED_RUN = re.compile(
    r"(?:(?<![\w'])(?:[a-z0-9]|dot|underscore|dash|hyphen)(?![\w'])[\s,.\-]*)+$", re.I
)
SPELLED_MIN = 2
"""Characters spelled one by one before an address for them to be its local part."""
_SPELLED_LEAD = re.compile(
    r"[\s,.\-]*(?P<run>(?:(?<![\w'])(?:[a-z0-9]|dot|underscore|dash|hyphen)(?![\w'])[\s,.\-]*)*"
    r"(?<![\w'])(?:[a-z0-9]|dot|underscore|dash|hyphen)(?![\w']))",
    re.I,
)
"""Letters spelled one by one that open an utterance ("s m i t h", "S, M, I, T, H")."""
_SPELLED_CHAR = re.compile(r"(?<![\w'])[a-z0-9](?![\w'])", re.I)


# What ASR writes between "my email is" and the address it found: "My email is John. Smith at
# gmail.com" (a full stop after the first name) showed "John." to supervisors and in the
# store; an outside scaling audit saw it twice in eight readings.
_EMAIL_LEAD = re.compile(
    r"\be-?mail(?:\s+address)?(?:\s+is|'s)?[\s:,]+"
    r"(?P<lead>(?:(?!is\b)[A-Za-z0-9][\w+-]{0,23}\.?\s+){0,2}[A-Za-z0-9][\w+-]{0,23}\.\s+)$",
    re.IGNORECASE,
)


def _with_announced_lead(text: str, span: Span) -> Span:
    """An address announced as one ("my email is ...") starts where the announcement ends,
    not where the patterns found it: up to three short words before it, the last ended by a
    full stop ASR put in the address, are its local part."""
    if span.kind != "email":
        return span
    m = _EMAIL_LEAD.search(text, max(0, span.start - 120), span.start)
    return Span(m.start("lead"), span.end, "email") if m is not None else span


def _with_spelled_start(text: str, span: Span) -> Span:
    """An address whose local part was spelled letter by letter: the patterns find it from the
    last letter or two ("j o h n dot s m i t h at gmail dot com" showed "j o h n dot s m i"
    to supervisors; an outside PII audit). The span takes in the spelled run before it."""
    if span.kind != "email":
        return span
    m = _SPELLED_RUN.search(text, 0, span.start)
    if m is None:
        return span
    single = re.findall(r"(?<![\w'])[a-z0-9](?![\w'])", m.group(), re.I)
    return Span(m.start(), span.end, "email") if len(single) >= SPELLED_MIN else span


def _named_as_announced(spans: list[Span], announced: list[Span]) -> list[Span]:
    """A number the caller named ("my social security number is ...") is tagged as what they
    named it, whatever its digits look like: ASR adds or drops a digit, and ten digits read as
    a phone number would tell the reader an SSN was a phone number."""
    out = []
    for s in spans:
        named = next(
            (
                a.kind
                for a in announced
                if a.kind != "number" and a.start < s.end and s.start < a.end
            ),
            None,
        )
        out.append(Span(s.start, s.end, named) if named and named != s.kind else s)
    return out


def _merge(spans: list[Span]) -> list[Span]:
    out: list[Span] = []
    for s in sorted(spans, key=lambda s: (s.start, -s.end)):
        if out and s.start < out[-1].end:
            last = out[-1]
            out[-1] = Span(last.start, max(last.end, s.end), last.kind)
        else:
            out.append(s)
    return out


def redact_text(
    text: str,
    *,
    continues_digits: bool = False,
    interim: bool = False,
    continues_spelling: bool = False,
    reading: bool = False,
    email_asked: bool = False,
) -> str:
    out, pos = [], 0
    found = find_pii(
        text,
        continues_digits=continues_digits,
        interim=interim,
        continues_spelling=continues_spelling,
        reading=reading,
        email_asked=email_asked,
    )
    for span in found:
        out += [text[pos : span.start], TAGS[span.kind]]
        pos = span.end
    out.append(text[pos:])
    return "".join(out)


def redact_words(
    words: Sequence[str],
    *,
    text: str | None = None,
    continues_digits: bool = False,
    interim: bool = False,
    continues_spelling: bool = False,
    reading: bool = False,
    email_asked: bool = False,
) -> list[str]:
    """Word-level redaction: every word touching a PII span becomes its tag (timings kept).

    The words are read joined by spaces and, given the transcript `text` they came from, as
    they stand in it: ASR splits "John.smith@gmail.com" into "John", ".smith@gmail", ".com",
    which joined by spaces no longer look like an email (an audit found the words of a
    transcript whose text said [EMAIL] carrying the address, in the store and to supervisors).
    """
    opts = {
        "continues_digits": continues_digits,
        "interim": interim,
        "continues_spelling": continues_spelling,
        "reading": reading,
        "email_asked": email_asked,
    }
    joined, offsets, pos = [], [], 0
    for w in words:
        offsets.append((pos, pos + len(w)))
        joined.append(w)
        pos += len(w) + 1
    out = _tag_words(list(words), offsets, find_pii(" ".join(joined), **opts))
    in_text = _offsets_in(text, words) if text is not None else None
    if text is not None and in_text is not None:
        out = _tag_words(out, in_text, find_pii(text, **opts))
    return out


def _offsets_in(text: str, words: Sequence[str]) -> list[tuple[int, int]] | None:
    """Where each word stands in `text`, in order; None when one is not found there."""
    offsets, pos = [], 0
    for w in words:
        at = text.find(w, pos)
        if at < 0:
            return None
        offsets.append((at, at + len(w)))
        pos = at + len(w)
    return offsets


def _tag_words(out: list[str], offsets: list[tuple[int, int]], spans: list[Span]) -> list[str]:
    for i, (a, b) in enumerate(offsets):
        for s in spans:
            if a < s.end and s.start < b:
                out[i] = TAGS[s.kind]
    return out


def redact_event(
    event: dict[str, object],
    *,
    continues_digits: bool = False,
    reading: bool = False,
    continues_spelling: bool = False,
    email_asked: bool = False,
) -> dict[str, object]:
    """The view of an event for anyone but the call's live agent (supervisors, store, files).

    `continues_digits`, `continues_spelling`, `email_asked` (transcripts and partials): see
    `find_pii`;
    `reading`: the speaker is reading out a secret number they named (`CallRedactor`), so
    every figure in the transcript is hidden, however short, but amounts and measures
    (`find_pii`). `CallRedactor` knows all three."""
    if event.get("type") in ("cue", "escalation"):
        # Evidence quotes the customer's words: the same PII rules as the transcript, each
        # quoted line read alone first, as its transcript was.
        return {
            k: _redact_strings(_map_strings(v, _quoted_alone)) if k not in _KEEP else v
            for k, v in event.items()
        }
    if event.get("type") not in ("partial", "transcript"):
        return event
    out = dict(event)
    # A partial's digits are a number still being spoken: hidden whatever their length.
    opts = {
        "continues_digits": continues_digits,
        "interim": event.get("type") == "partial",
        "reading": reading,
        "continues_spelling": continues_spelling,
        "email_asked": email_asked,
    }
    text = event.get("text")
    if isinstance(text, str):
        out["text"] = redact_text(text, **opts)
    words = event.get("words")
    if isinstance(words, list) and words:
        tagged = redact_words(
            [str(w["w"]) for w in words], text=text if isinstance(text, str) else None, **opts
        )
        out["words"] = [{**w, "w": t} for w, t in zip(words, tagged, strict=True)]
    return out


# Fields that are identifiers or enums, never free text.
_KEEP = frozenset({"type", "call_id", "cue", "reason", "urgency", "severity", "speaker", "label"})


def _map_strings(value: object, fn: Callable[[str], str]) -> object:
    """`value` with `fn` applied to every string in it, through lists and dicts."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    return value


def _redact_strings(value: object) -> object:
    return _map_strings(value, redact_text)


def _quoted_alone(text: str) -> str:
    """`text` with each line it quotes (a cue's `why`, a handoff's "They said: "...";
    "..."." ) redacted on its own: the rules for a number's edges ("my card number is 4532",
    a lone "4532.") must see the end of the line, not the quote and the text after it."""
    if '"' not in text:
        return text
    return _QUOTED.sub(lambda m: '"' + redact_text(m.group(0)[1:-1]) + '"', text)


def _hide_quotes(text: str, quotes: Sequence[str], tag: str) -> str:
    """`text` with every whole-word quote replaced by `tag` (a "5" quoted from the line, not
    the 5 of a score such as "(0.5)")."""
    for quote in quotes:
        text = re.sub(rf"(?<!\w)(?<!\d\.){re.escape(quote)}(?!\w|\.\d)", tag, text)
    return text


CONTINUATION_GAP_S = 5.0
"""A speaker's utterance that starts within this long after one that ended in digits read out
may carry the rest of the number."""
READING_WINDOW_S = 30.0
"""After a speaker names a secret number ("my card number is", "the security code"), or reads
a piece of one within this window, every run of digits they say within this long is hidden:
a caller fetching the card or reading it slowly pauses longer than CONTINUATION_GAP_S, and a
group said mid-sentence ("then 1283 I think") looks like any number (an outside PII audit)."""


class CallRedactor:
    """`redact_event` with a memory of each speaker's last transcript, for one call.

    Callers read numbers out in pieces ("my social is one two three" / "four five" / "six
    seven eight nine", or "4532" / "0151" / "2830" / "0366"), each utterance too short to look
    like personal data on its own. A piece that ends an utterance is hidden from 3 digits read
    one by one, a numeral group when it is all the utterance says or a number was announced
    (`find_pii`); digits that open or close the speaker's next utterance, soon after one that
    ended in digits, are hidden whatever their number. Only the redacted view changes: the
    live agent sees every word.
    """

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, bool]] = {}
        """speaker -> (end of their last transcript, whether it ended in dictated digits)."""
        self._went_on: dict[str, tuple[float, list[str]]] = {}
        """speaker -> (start of their last transcript, the digits in it that went on with the
        number), where they went on with one."""
        self._hidden: list[str] = []
        """Every piece of a number hidden so far only because it went on with one (the
        newest HIDDEN_KEPT): an escalation's handoff quotes lines of the whole call."""
        self._reading_until: dict[str, float] = {}
        """speaker -> until when (call time) they are reading out a secret number."""
        self._spelling_until: dict[str, float] = {}
        """speaker -> until when (call time) letters they spell go on with an address whose
        local part their last utterance ended in ("my email is j o h n" / "s m i t h")."""
        self._email_asked: tuple[str, float] | None = None
        """(who, until when) someone named an email address ("what email should the receipt
        go to?"): what the others say until then may be one (`find_pii`'s `email_asked`)."""

    def view(self, event: dict[str, object]) -> dict[str, object]:
        kind = event.get("type")
        speaker = event.get("speaker")
        start, end = _float(event.get("t_start")), _float(event.get("t_end"))
        if kind == "cue" and isinstance(speaker, str):
            out = redact_event(event)
            went_on = self._went_on.get(speaker)
            if went_on is None or went_on[0] != start:
                return out
            # A cue on that utterance quotes it (evidence text, phrases, why): hidden alike.
            quotes = went_on[1]

            def hide(text: str) -> str:
                return _hide_quotes(text, quotes, TAGS["number"])

            return {k: _map_strings(v, hide) if k not in _KEEP else v for k, v in out.items()}
        if kind == "escalation" and self._hidden:
            # The handoff quotes trigger phrases and the agent's words from any earlier turn,
            # which `redact_event` alone reads without the turn before them.
            return _hide_in_quotes(redact_event(event), self._hidden)
        if kind not in ("transcript", "partial") or not isinstance(speaker, str):
            return redact_event(event)
        last = self._last.get(speaker)
        continues = (
            last is not None
            and last[1]
            and start is not None
            and start - last[0] <= CONTINUATION_GAP_S
        )
        reading = start is not None and start <= self._reading_until.get(speaker, -1.0)
        spelling = start is not None and start <= self._spelling_until.get(speaker, -1.0)
        asked = self._email_asked
        email_asked = (
            asked is not None and asked[0] != speaker and start is not None and start <= asked[1]
        )
        out = redact_event(
            event,
            continues_digits=continues,
            reading=reading,
            continues_spelling=spelling,
            email_asked=email_asked,
        )
        text = event.get("text")
        if kind == "transcript" and end is not None and isinstance(text, str):
            if _NAMES_EMAIL.search(text):
                self._email_asked = (speaker, end + EMAIL_ASKED_S)
            # Read again only when the redacted view already ends in a tag (not on every
            # transcript of the call).
            shown = str(out.get("text", "")).rstrip(" .,!?;:-")
            if shown.endswith(tuple(TAGS.values())) and _ends_in_a_local_part(
                text, continues_spelling=spelling
            ):
                self._spelling_until[speaker] = end + CONTINUATION_GAP_S
            else:
                self._spelling_until.pop(speaker, None)
            opening, closing = dictation_at_edges(text)
            # Ending in two or more digits read out ("four two", "4532"), or being digits
            # alone that went on with the number ("Seven."), lets the speaker's next
            # utterance go on with it.
            ends = closing is not None and len(closing.digits) >= 2
            whole_piece = continues and opening is not None and opening == closing
            self._last[speaker] = (end, ends or whole_piece)
            pieces = _went_on_with(text, opening, closing) if continues else []
            if reading:
                figures = _figures_read_out(text, 0, "number", bare_amounts=False)
                read = [text[r.start : r.end] for r in figures]
                pieces += [piece for piece in read if piece not in pieces]
            # Named in a statement: "can I take your card number?" asks, it reads nothing.
            named = (
                _SECRET_NAMED.search(text) is not None
                and not text.rstrip().endswith("?")
                and _NOT_READ_OUT.search(text) is None
            )
            if named or (reading and pieces):
                self._reading_until[speaker] = end + READING_WINDOW_S
            if pieces and start is not None:
                self._went_on[speaker] = (start, pieces)
                self._hidden = [*(q for q in self._hidden if q not in pieces), *pieces]
                del self._hidden[:-HIDDEN_KEPT]
            else:
                self._went_on.pop(speaker, None)
        return out


_NAMES_EMAIL = re.compile(r"\be-?mail\b", re.IGNORECASE)
EMAIL_ASKED_S = 20.0
"""How long after a line that names an email address the others' words may dictate one."""

HIDDEN_KEPT = 64
"""Number pieces a call's redactor remembers for its escalations (a handoff quotes a few
recent turns; a call dictating more numbers than this is not a conversation to coach)."""
_QUOTED = re.compile(r'"[^"]*"')


def _hide_in_quotes(event: dict[str, object], quotes: Sequence[str]) -> dict[str, object]:
    """An escalation with `quotes` hidden where it quotes someone: inside double quotes in
    its text, or anywhere in a bare phrase (`trigger_phrases`), so that its own figures
    ("at 12 s", "valence -0.40") stay as they are."""

    def hide(text: str) -> str:
        if '"' not in text:
            return _hide_quotes(text, quotes, TAGS["number"])
        return _QUOTED.sub(lambda m: _hide_quotes(m.group(0), quotes, TAGS["number"]), text)

    return {k: _map_strings(v, hide) if k not in _KEEP else v for k, v in event.items()}


_HAS_DOMAIN = re.compile(
    rf"@|\b(?:at|\(at\)|\[at\])\s|(?:\.|\bdot\s+)(?:{'|'.join(sorted(_TLDS))})\b", re.I
)


def _ends_in_a_local_part(text: str, *, continues_spelling: bool) -> bool:
    """Whether `text` ends in the first part of an address with no domain yet: it is being
    spelled or dictated, and the speaker's next utterance may carry on with it."""
    spans = find_pii(text, continues_spelling=continues_spelling)
    last = next((sp for sp in reversed(spans) if sp.kind == "email"), None)
    return (
        last is not None
        and _EDGE.fullmatch(text[last.end :]) is not None
        and _HAS_DOMAIN.search(text[last.start : last.end]) is None
    )


def _went_on_with(text: str, opening: Run | None, closing: Run | None) -> list[str]:
    """The digits of an utterance that went on with a number, which `find_pii` hid because
    it did: the run that opens it and one of 2 or more digits that closes it."""
    runs = [opening] if opening is not None else []
    if closing is not None and closing != opening and len(closing.digits) >= 2:
        runs.append(closing)
    return [text[r.start : r.end] for r in runs]


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


# -- customer ids -----------------------------------------------------------------------------

CUSTOMER_ALIAS = re.compile(r"^(?:card|ssn|email|phone|number)-[a-p]{16}$")
"""What a customer id that is personal data becomes (`customer_alias`)."""
_HEX_AS_LETTERS = str.maketrans("0123456789abcdef", "abcdefghijklmnop")
"""The alias's hash in letters only: hex digits could run to seven in a row, which the
transcript's rules would take for a number."""


def customer_alias(customer_id: str, key: bytes, region: str = "US") -> str:
    """The id the server keeps, stores and shows for a customer: the id itself, unless it is
    personal data by the transcript's rules (a caller's phone number or email, as telephony
    often gives them, or a long account number), which becomes `<kind>-<16 letters>`, a keyed hash
    of it: the same caller gets the same alias on every call and every instance (the history
    and the repeat-contact cue keep working), and nobody reading the wall, the history or the
    database learns the number. An alias is returned unchanged.

    Why: the id travelled verbatim into the live meta, the wall, the history and the store
    (found by an outside PII audit). Formats of one number ("+1 (415) 555-0100",
    "14155550100", and "4155550100" without its country code, taken as `region`'s) give
    one alias; an email is compared case-blind.
    """
    kind = _personal_kind(customer_id)
    return customer_id if kind is None else _alias_as(kind, customer_id, key, region)


def _alias_as(kind: str, customer_id: str, key: bytes, region: str) -> str:
    canonical = customer_id.strip().lower()
    if kind == "phone":
        canonical = _phone_digits(customer_id, region) or canonical
    elif kind != "email":
        canonical = re.sub(r"\D", "", customer_id) or canonical
    return _keyed_alias(kind, canonical, key)


def _keyed_alias(kind: str, canonical: str, key: bytes) -> str:
    digest = hmac.new(key, f"{kind}:{canonical}".encode(), hashlib.sha256).hexdigest()
    return f"{kind}-{digest[:16].translate(_HEX_AS_LETTERS)}"


def customer_aliases(customer_id: str, key: bytes, region: str = "US") -> tuple[str, ...]:
    """Every alias calls of this customer may be stored under, `customer_alias`'s first: a
    phone number given without its country code was hashed from its bare digits before
    aliases read numbers by region (a review: erasing or looking up such a caller by number
    missed their earlier calls)."""
    alias = customer_alias(customer_id, key, region)
    if _UUID.fullmatch(customer_id.strip()) and (spans := find_pii(customer_id)):
        # Before UUIDs were kept as given, many were stored under the alias of what their
        # digits looked like (an SSN, a phone number).
        return (alias, _alias_as(spans[0].kind, customer_id, key, region))
    kind = _personal_kind(customer_id)
    if kind != "phone":
        return (alias,)
    earlier = _keyed_alias(kind, re.sub(r"\D", "", customer_id), key)
    return (alias,) if earlier == alias else (alias, earlier)


def _phone_digits(number: str, region: str) -> str:
    """A phone number's international digits (E.164 without its "+"), a number without its
    country code being `region`'s (libphonenumber's rules: "4155550100" in US is
    "14155550100", "020 7946 0958" in GB is "442079460958"); just its digits where
    libphonenumber cannot read it as a possible number. The digits, not "+...", so that the
    aliases made before (of the bare digits) stay the same for numbers given in full."""
    digits = re.sub(r"\D", "", number)
    try:
        parsed = phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException:
        return digits
    if not phonenumbers.is_possible_number(parsed):
        return digits
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164).lstrip("+")


_UUID = re.compile(r"\{?[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}\}?", re.I)


def _personal_kind(customer_id: str) -> str | None:
    """What personal data a customer id is (`phone`, `email`...), or None: not any, or an
    alias already."""
    if CUSTOMER_ALIAS.match(customer_id) or _UUID.fullmatch(customer_id.strip()):
        # A UUID (Genesys gives each participant one) is an id, whatever its hex groups
        # look like: nearly half of random ones read as an SSN or a phone number (found by
        # an outside ingest audit).
        return None
    spans = find_pii(customer_id)
    return spans[0].kind if spans else None


def with_customer_alias(
    meta: Mapping[str, Any] | None, key: Callable[[], bytes], region: str = "US"
) -> dict[str, Any] | None:
    """A call's meta with its `customer_id` as `customer_alias` makes it. `key` is asked only
    for an id that needs an alias (the default key is made from the token secret, which a
    replay has no reason to create)."""
    if meta is None:
        return None
    out = dict(meta)
    customer = out.get("customer_id")
    if isinstance(customer, str) and _personal_kind(customer) is not None:
        out["customer_id"] = customer_alias(customer, key(), region)
    return out
