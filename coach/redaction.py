"""PII redaction for transcripts: card numbers, SSNs, emails and phone numbers, written or spoken.

Runs before anything leaves the live agent's view (supervisors, the store, files), so it errs
on the side of hiding: any run of 7 or more digits is hidden even when it is not a valid card
number. ASR writes numbers both as digits ("4111 1111") and as words ("four one one one"),
and addresses as "john dot smith at example dot com", so both forms are recognised.
Pure functions over strings; the word-level variant keeps word timings intact.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_DIGIT_WORDS = {
    "zero": "0", "oh": "0", "o": "0", "one": "1", "two": "2", "to": "2", "too": "2",
    "three": "3", "four": "4", "for": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9",
}  # fmt: skip
_STRICT_DIGIT_WORDS = {k for k in _DIGIT_WORDS if k not in ("oh", "o", "to", "too", "for")}

EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
SPOKEN_EMAIL = re.compile(
    r"\b[a-z0-9]+(?:\s+(?:dot|underscore|dash)\s+[a-z0-9]+)*\s+at\s+[a-z0-9-]+"
    r"(?:\s+dot\s+[a-z]{2,})+\b",
    re.IGNORECASE,
)
SSN = re.compile(r"\b\d{3}[-\s]\d{2}[-\s]\d{4}\b")
# Digit runs with the separators people and ASR use inside numbers.
DIGIT_RUN = re.compile(r"(?<![\w])\+?\(?\d[\d\s().-]{5,}\d(?![\w])")

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


def _spoken_digit_spans(text: str) -> list[Span]:
    """Runs of spoken digits ("four one one one ...", "double five") of 7 or more digits."""
    spans: list[Span] = []
    tokens = [(m.start(), m.end(), m.group().lower()) for m in re.finditer(r"[A-Za-z]+|\d+", text)]
    i = 0
    while i < len(tokens):
        j, digits, strict = i, "", 0
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
            elif tok in _DIGIT_WORDS:
                digits += _DIGIT_WORDS[tok]
                strict += tok in _STRICT_DIGIT_WORDS
                j += 1
            elif tok.isdigit():
                digits += tok
                strict += 1
                j += 1
            else:
                break
        # Most tokens must be unambiguous digit words, so "for two to four" is left alone.
        if len(digits) >= 7 and strict >= 0.7 * (j - i):
            raw = text[tokens[i][0] : tokens[j - 1][1]]
            kind = classify_digits(digits, raw) or "number"
            spans.append(Span(tokens[i][0], tokens[j - 1][1], kind))
            i = j
        else:
            i += 1
    return spans


def find_pii(text: str) -> list[Span]:
    spans = [Span(m.start(), m.end(), "email") for m in EMAIL.finditer(text)]
    spans += [Span(m.start(), m.end(), "email") for m in SPOKEN_EMAIL.finditer(text)]
    spans += [Span(m.start(), m.end(), "ssn") for m in SSN.finditer(text)]
    for m in DIGIT_RUN.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        kind = classify_digits(digits, m.group())
        if kind:
            spans.append(Span(m.start(), m.end(), kind))
    spans += _spoken_digit_spans(text)
    return _merge(spans)


def _merge(spans: list[Span]) -> list[Span]:
    out: list[Span] = []
    for s in sorted(spans, key=lambda s: (s.start, -s.end)):
        if out and s.start < out[-1].end:
            last = out[-1]
            out[-1] = Span(last.start, max(last.end, s.end), last.kind)
        else:
            out.append(s)
    return out


def redact_text(text: str) -> str:
    out, pos = [], 0
    for span in find_pii(text):
        out += [text[pos : span.start], TAGS[span.kind]]
        pos = span.end
    out.append(text[pos:])
    return "".join(out)


def redact_words(words: Sequence[str]) -> list[str]:
    """Word-level redaction: every word touching a PII span becomes its tag (timings kept)."""
    joined, offsets, pos = [], [], 0
    for w in words:
        offsets.append((pos, pos + len(w)))
        joined.append(w)
        pos += len(w) + 1
    spans = find_pii(" ".join(joined))
    out = list(words)
    for i, (a, b) in enumerate(offsets):
        for s in spans:
            if a < s.end and s.start < b:
                out[i] = TAGS[s.kind]
    return out


def redact_event(event: dict[str, object]) -> dict[str, object]:
    """The view of an event for anyone but the call's live agent (supervisors, store, files)."""
    if event.get("type") in ("cue", "escalation"):
        # Evidence quotes the customer's words: the same PII rules as the transcript.
        return {k: _redact_strings(v) if k not in _KEEP else v for k, v in event.items()}
    if event.get("type") not in ("partial", "transcript"):
        return event
    out = dict(event)
    text = event.get("text")
    if isinstance(text, str):
        out["text"] = redact_text(text)
    words = event.get("words")
    if isinstance(words, list) and words:
        tagged = redact_words([str(w["w"]) for w in words])
        out["words"] = [{**w, "w": t} for w, t in zip(words, tagged, strict=True)]
    return out


# Fields that are identifiers or enums, never free text.
_KEEP = frozenset({"type", "call_id", "cue", "reason", "urgency", "severity", "speaker", "label"})


def _redact_strings(value: object) -> object:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, list):
        return [_redact_strings(v) for v in value]
    if isinstance(value, dict):
        return {k: _redact_strings(v) for k, v in value.items()}
    return value
