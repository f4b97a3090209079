"""Structured logging: one JSON object per line, tagged with the call being processed.

Every record carries `ts` (UTC, ISO 8601 with milliseconds), `level`, `logger` and `message`;
`call_id` is added when `call_id_var` is set in the current context (an asyncio task inherits
the value of the task that created it, so setting it once per call's tasks is enough).
Exceptions go into `exc_info` (the formatted traceback) and `exc_type`; fields passed with
`extra={...}` are kept when they are JSON-serializable (else their `repr`).

    setup_logging("info", json_format=True)
    token = call_id_var.set("c-42")
    try:
        log.info("call accepted")  # {"ts": ..., "level": "INFO", ..., "call_id": "c-42"}
    finally:
        call_id_var.reset(token)

Only the standard library is used.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import quote, quote_plus, unquote, unquote_plus

from coach.redaction import luhn_valid, redact_text

__all__ = [
    "CallIdFilter",
    "DeniedUpgradeFilter",
    "FrameFilter",
    "JsonFormatter",
    "SecretFilter",
    "call_fields",
    "call_id_var",
    "setup_logging",
    "upgrade_denied_var",
]

call_id_var: ContextVar[str | None] = ContextVar("call_id", default=None)
upgrade_denied_var: ContextVar[bool] = ContextVar("upgrade_denied", default=False)
"""Set by a WebSocket route that refused the upgrade with an HTTP response (AudioHook's 401)."""

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(call_suffix)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RESERVED = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()
    | {"message", "asctime", "call_id", "call_suffix", "taskName"}
)


def call_fields(call_id: object) -> dict[str, Any]:
    """`extra=` for a line that names a call: its `call_id` field then says which call even
    where no call context is set (the bus, the store, an API request about the call), so a log
    search by call finds every line about it. Where a context is set, the two agree."""
    return {"call_id": call_id}


class CallIdFilter(logging.Filter):
    """Adds `call_id` (from `call_id_var`, unless the record already has one) to each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        call_id = getattr(record, "call_id", None)
        if call_id is None:
            call_id = call_id_var.get()
        record.call_id = call_id
        record.call_suffix = f" [{call_id}]" if call_id else ""
        return True


# Credentials that ride in query strings (browsers' WebSockets cannot set headers, so panels
# send `?token=`; raw PCM clients may send `?api_key=`): uvicorn logs every request path.
_SECRET_PARAM = re.compile(
    r"(?i)\b(token|api_key|apikey|access_token|key|signature|password)=([^&\s\"']+)"
)


# Any other query value: a history search (`?q=`) may be a card number or an email typed by
# a supervisor looking for a call, and the request line would keep it in the log.
# Only free-text parameters: dates and ids in other values would read as numbers.
_QUERY_VALUE = re.compile(r"(?i)([?&](?:q|query|search|text|customer_id)=)([^&\s\"']+)")
# A customer's history is addressed by the id the telephony gave, which may be the caller's
# phone number or email (found by an outside PII audit).
_CUSTOMER_PATH = re.compile(r"(/api/customers/)([^/?\s\"']+)")


# A parameter name written with percent escapes (`?api%5Fkey=`, `?%74oken=`): Starlette decodes
# names before it reads them, so the request works and the log must read the name the same
# way (an outside security audit saw a key, a token and a card number through).
_ENCODED_NAME = re.compile(r"([?&])([^=&\s\"']*%[0-9A-Fa-f]{2}[^=&\s\"']*)=")


def _decode_name(m: re.Match[str]) -> str:
    # A control character stays escaped: decoded, `?q%0Afake=1` wrote a line of its own,
    # a forged entry (an outside check of this very change).
    name = "".join(c if c.isprintable() else quote(c) for c in unquote_plus(m.group(2)))
    return m.group(1) + name + "="


def _redact_query_value(m: re.Match[str]) -> str:
    value = unquote_plus(m.group(2))
    clean = redact_text(value)
    return m.group(1) + (m.group(2) if clean == value else quote_plus(clean, safe="[]"))


# Every other part of a URL (a path segment, a value of a parameter the server does not
# read, a name encoded twice): only shapes that cannot be an id, a date or a time stamp are
# hidden there. A card number (Luhn-valid, 13-19 digits, an issuer's first digit 2-6, so
# millisecond time stamps stay), an SSN with dashes or spaces, an email, a phone number
# written with its "+" or in the NANP shape (an outside security audit found a card number in
# `?x=` and in a call id in a path).
_URL_PART = re.compile(r"(?<=[/?&=;])[^/?&=;#\s\"']+")
# Between a card's groups: a space, "+", ".", "_" or any dash (a second check got
# `4532.0151.1283.0366`, `4532_0151_…` and non-breaking hyphens through).
_CARD_IN_PART = re.compile(r"(?<!\d)[2-6]\d(?:[\s+._\-\u2010-\u2015]?\d){11,17}(?!\d)")
_SSN_IN_PART = re.compile(r"(?<![\d.])\d{3}([-\s])\d{2}\1\d{4}(?![\d.])")
# A domain ends in letters, and a host with a port is no address: "user@127.0.0.1:5432" and
# "user@db.example.com:5432" are a database URL's user and host (the store's start-up line
# read "postgresql+asyncpg://[EMAIL]:5432/...": an outside scaling audit).
_EMAIL_IN_PART = re.compile(
    r"[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-]|:\d)"
)
_PHONE_IN_PART = re.compile(
    r"(?<![\w+])\+\d(?:[\s.-]?\d){9,14}(?!\d)"
    # A NANP number written as one ("415-555-0123", "(415) 555-0123"): no date or id has
    # that shape (area code and exchange start 2-9).
    r"|(?<![\w.-])\(?[2-9]\d{2}\)?[\s.-]?[2-9]\d{2}[.-]\d{4}(?![\w.-])"
)


def _card_tag(m: re.Match[str]) -> str:
    return "[CARD]" if luhn_valid(re.sub(r"\D", "", m.group(0))) else m.group(0)


def _hide_shapes(value: str) -> str:
    value = _CARD_IN_PART.sub(_card_tag, value)
    value = _SSN_IN_PART.sub("[SSN]", value)
    value = _EMAIL_IN_PART.sub("[EMAIL]", value)
    return _PHONE_IN_PART.sub("[PHONE]", value)


def _scrub_url_part(m: re.Match[str]) -> str:
    raw = m.group(0)
    value = raw
    # Not `unquote_plus`: a "+" must stay to be read as a phone number's; a card number's
    # groups may be joined by it. `%2534` is `%34` is `4`: a part encoded twice.
    for _ in range(3):
        decoded = unquote(value)
        if decoded == value:
            break
        value = decoded
    clean = _hide_shapes(value)
    return raw if clean == value else quote(clean, safe="[]+:,~")


_MAYBE_SHAPE = re.compile(r"\d{4}|@|%")


def scrub(text: str) -> str:
    """`text` with the values of credential query parameters replaced by `***`, personal
    data in free-text query values redacted (coach/redaction.py), and card numbers, SSNs,
    emails and "+" phone numbers hidden in every other part of a URL."""
    if "%" in text:
        text = _ENCODED_NAME.sub(_decode_name, text)
    text = _SECRET_PARAM.sub(r"\1=***", text)
    if "/api/customers/" in text:
        text = _CUSTOMER_PATH.sub(_redact_query_value, text)
    if "=" in text:
        text = _QUERY_VALUE.sub(_redact_query_value, text)
    if _MAYBE_SHAPE.search(text):
        text = _URL_PART.sub(_scrub_url_part, text)
    return text


def client_text(text: object, limit: int = 120) -> str:
    """Free text a client sent (a Twilio mark's name, an AudioHook error message or update),
    as a log line may quote it: cut to `limit` characters, personal data redacted, quoted with
    control characters escaped (a newline in it would forge a line of its own). It was logged
    as sent, card numbers and emails included (an outside ingest audit)."""
    return repr(redact_text(str(text)[:limit]))


PROBE_PATHS = frozenset({"/health/live", "/health/ready", "/metrics"})


class ProbeFilter(logging.Filter):
    """Drops uvicorn's access line for a probe or a scrape that succeeded: Kubernetes and
    Prometheus ask every few seconds, and a newcomer's `make run` log was mostly those lines.
    A probe that fails (503 loading, draining, at capacity) is still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if record.name != "uvicorn.access" or not isinstance(args, tuple) or len(args) < 5:
            return True
        method, path, status = args[1], str(args[2]).split("?", 1)[0], args[4]
        return not (method == "GET" and path in PROBE_PATHS and status == 200)


class SecretFilter(logging.Filter):
    """Hides credentials in query strings from every log line (uvicorn's request lines,
    any library's URLs): the message is formatted once and scrubbed."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True  # a broken record: let logging report it as it would
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


_NO_HANDSHAKE = "ASGI callable returned without completing handshake"


class DeniedUpgradeFilter(logging.Filter):
    """uvicorn logs an ERROR when a WebSocket route returns without a handshake, also when it
    refused the upgrade on purpose with an HTTP response (its sans-I/O implementation does not
    count that as one): a probe or a client with a wrong key would set off error alerts
    (found by a protocol audit). Such a line, in the context of a route that set
    `upgrade_denied_var`, is logged at INFO instead; any other stays an ERROR."""

    def filter(self, record: logging.LogRecord) -> bool:
        if upgrade_denied_var.get() and record.levelno >= logging.ERROR:
            try:
                message = record.getMessage()
            except Exception:
                return True
            if message.startswith(_NO_HANDSHAKE):
                record.levelno, record.levelname = logging.INFO, "INFO"
                record.msg, record.args = "websocket upgrade refused with an HTTP response", ()
        return True


_FRAME_MESSAGES = frozenset({"< %s", "> %s", "< %s: %s", "> %s: %s"})
"""How the `websockets` protocol (under uvicorn, logger "uvicorn.error") logs each frame it
sends or receives, and each header of the upgrade request and response."""


class FrameFilter(logging.Filter):
    """Drops the frame and header dumps the `websockets` protocol writes at DEBUG level.

    With COACH_LOG_LEVEL=debug uvicorn's WebSocket protocol logged every frame it sent or
    received: a Twilio `dtmf` message with its digit (a card number or PIN, which the README
    promises is never logged) and the unredacted transcripts sent to agent panels; and every
    upgrade header: `x-api-key`, `authorization: Bearer ...`, `x-twilio-signature` in clear
    (found by a protocol audit). The request line (its query scrubbed by SecretFilter) and
    connection state lines (`= connection is OPEN`) are kept.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno <= logging.DEBUG and record.msg in _FRAME_MESSAGES)


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (no embedded newlines, non-ASCII kept)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        call_id = getattr(record, "call_id", None)
        if call_id is None:
            call_id = call_id_var.get()
        if call_id is not None:
            out["call_id"] = call_id
        for key, value in record.__dict__.items():
            if key not in _RESERVED and key not in out:
                out[key] = _jsonable(value)
        if record.exc_info and record.exc_info[0] is not None:
            out["exc_type"] = record.exc_info[0].__name__
            out["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc_info"] = record.exc_text
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=repr)


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


DATA_ECHOING_LOGGERS = (
    "aiosqlite",
    "asyncpg",
    "sqlalchemy",
    "httpcore",
    "httpx",
    "hpack",
    "aioice",
    "aiortc",
    "redis",
)
"""Libraries kept at WARNING or above whatever COACH_LOG_LEVEL says (see `setup_logging`)."""


def setup_logging(level: str, *, json_format: bool, stream: TextIO | None = None) -> None:
    """Configure the root logger: one handler on `stream` (stderr by default).

    Replaces handlers installed earlier (so calling it twice does not duplicate lines).
    `level` is a name such as "info" or "DEBUG".
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(ProbeFilter())  # before SecretFilter, which may fold the args in
    handler.addFilter(CallIdFilter())
    handler.addFilter(SecretFilter())
    handler.addFilter(DeniedUpgradeFilter())
    handler.addFilter(FrameFilter())
    if json_format:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
    # These libraries log what passes through them at DEBUG: every SQL statement with its
    # parameters (a history search for a phone number, a customer's number as typed), HTTP
    # and ICE traffic. COACH_LOG_LEVEL=debug is for this server's own lines; an outside PII
    # audit found those values in the log. (WebSocket frames: `FrameFilter`.)
    # WARNING, not INFO: SQLAlchemy logs each statement with its parameters (transcripts)
    # at INFO, and an outside test saw every write in the log at the default level when
    # INFO was the floor here.
    quiet = max(logging.WARNING, root.level)
    for name in DATA_ECHOING_LOGGERS:
        logging.getLogger(name).setLevel(quiet)
