"""coach.logs: JSON lines with the call id from the context, exceptions serialized."""

from __future__ import annotations

import ast
import asyncio
import io
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from coach.logs import JsonFormatter, call_fields, call_id_var, scrub, setup_logging


@pytest.fixture
def stream(log_stream: io.StringIO) -> io.StringIO:
    return log_stream  # tests/conftest.py


def _lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_json_lines_parse_with_required_fields(stream: io.StringIO) -> None:
    setup_logging("info", json_format=True, stream=stream)
    log = logging.getLogger("coach.test")
    log.info("hello %s", "world")
    log.debug("hidden at info level")
    log.warning('multi\nline "quoted" é')
    first, second = _lines(stream)
    assert set(first) == {"ts", "level", "logger", "message"}
    assert first["level"] == "INFO"
    assert first["logger"] == "coach.test"
    assert first["message"] == "hello world"
    assert first["ts"].endswith("+00:00")
    assert second["level"] == "WARNING"
    assert second["message"] == 'multi\nline "quoted" é'
    assert len(stream.getvalue().splitlines()) == 2  # one line per record


def test_call_id_from_context_var(stream: io.StringIO) -> None:
    setup_logging("debug", json_format=True, stream=stream)
    log = logging.getLogger("coach.test")
    token = call_id_var.set("c-42")
    try:
        log.info("in call")
    finally:
        call_id_var.reset(token)
    log.info("outside")
    inside, outside = _lines(stream)
    assert inside["call_id"] == "c-42"
    assert "call_id" not in outside


async def test_call_id_follows_asyncio_tasks(stream: io.StringIO) -> None:
    setup_logging("info", json_format=True, stream=stream)
    log = logging.getLogger("coach.test")

    async def call(call_id: str) -> None:
        call_id_var.set(call_id)
        await asyncio.sleep(0)
        log.info("frame")

    await asyncio.gather(call("a"), call("b"))
    assert sorted(r["call_id"] for r in _lines(stream)) == ["a", "b"]
    assert call_id_var.get() is None


def test_exception_serialized(stream: io.StringIO) -> None:
    setup_logging("info", json_format=True, stream=stream)
    log = logging.getLogger("coach.test")
    try:
        raise ValueError("bad frame")
    except ValueError:
        log.exception("decode failed")
    (record,) = _lines(stream)
    assert record["level"] == "ERROR"
    assert record["message"] == "decode failed"
    assert record["exc_type"] == "ValueError"
    assert "Traceback" in record["exc_info"]
    assert "ValueError: bad frame" in record["exc_info"]


def test_extra_fields_kept_and_unserializable_repr(stream: io.StringIO) -> None:
    setup_logging("info", json_format=True, stream=stream)
    logging.getLogger("coach.test").info(
        "x", extra={"call_id": "explicit", "frames": 3, "obj": object()}
    )
    (record,) = _lines(stream)
    assert record["call_id"] == "explicit"
    assert record["frames"] == 3
    assert record["obj"].startswith("<object object")


def test_text_format_and_no_duplicate_handlers(stream: io.StringIO) -> None:
    setup_logging("info", json_format=True, stream=io.StringIO())
    setup_logging("warning", json_format=False, stream=stream)
    assert len(logging.getLogger().handlers) == 1
    log = logging.getLogger("coach.test")
    log.info("dropped")
    token = call_id_var.set("c-7")
    try:
        log.warning("plain")
    finally:
        call_id_var.reset(token)
    (line,) = stream.getvalue().splitlines()
    assert line.endswith("WARNING coach.test [c-7]: plain")


def test_formatter_without_filter_reads_context() -> None:
    record = logging.LogRecord("coach.x", logging.INFO, __file__, 1, "m", None, None)
    token = call_id_var.set("c-9")
    try:
        out = json.loads(JsonFormatter().format(record))
    finally:
        call_id_var.reset(token)
    assert out["call_id"] == "c-9"


def test_credentials_in_request_paths_never_reach_the_log(stream: io.StringIO) -> None:
    """A real uvicorn server logging through our handler (as `coach serve` does): the panels'
    `?token=` and raw PCM's `?api_key=` are hidden, personal data in a search is redacted,
    the rest of the path is kept."""
    import threading
    import time

    import httpx
    import uvicorn
    from fastapi import FastAPI

    from tests.support import free_port

    setup_logging("info", json_format=False, stream=stream)
    # Other tests in the run may have quietened uvicorn's loggers: as `coach serve` sets them.
    saved = {}
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        saved[name] = (logger.level, logger.disabled, logger.propagate, logger.handlers[:])
        logger.setLevel(logging.INFO)
        logger.disabled, logger.propagate, logger.handlers = False, True, []
    app = FastAPI()

    @app.get("/x")
    async def x() -> dict[str, str]:
        logging.getLogger("coach.test").info("asked with api_key=%s", "k-secret-2")
        return {}

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_config=None, access_log=True))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/x?after_seq=3&token=eyJ.secret.sig&api_key=k-secret-1"
        assert httpx.get(url).status_code == 200
        # A history search for a card number or an email (typed by a supervisor looking for
        # a call) is personal data in the request line; a date or a plain word is not.
        for query in ("q=4111 1111 1111 1111&limit=5", "q=ann.lee@example.com", "q=refund"):
            assert httpx.get(f"http://127.0.0.1:{port}/x?since=2026-12-01&{query}").is_success
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        for name, (level, disabled, propagate, handlers) in saved.items():
            logger = logging.getLogger(name)
            logger.setLevel(level)
            logger.disabled, logger.propagate, logger.handlers = disabled, propagate, handlers
    out = stream.getvalue()
    assert "GET /x?after_seq=3&token=***&api_key=***" in out, out
    for secret in ("eyJ.secret.sig", "k-secret-1", "k-secret-2", "4111", "ann.lee", "example"):
        assert secret not in out
    assert "GET /x?since=2026-12-01&q=[CARD]&limit=5" in out, out
    assert "GET /x?since=2026-12-01&q=[EMAIL]" in out, out
    assert "GET /x?since=2026-12-01&q=refund" in out, out


def test_a_refused_upgrade_is_not_an_error_line(stream: io.StringIO) -> None:
    """uvicorn logs an ERROR after a WebSocket route refused the upgrade with an HTTP 401 (an
    AudioHook client with a wrong key): a protocol audit saw one per refused probe. In the
    context of a route that refused on purpose it is INFO; anywhere else it stays an ERROR."""
    import contextvars

    from coach.logs import upgrade_denied_var

    setup_logging("info", json_format=True, stream=stream)
    # Not the "uvicorn.error" logger itself: a live server started by another test in this
    # process gives "uvicorn" a handler of its own and stops propagation; `coach serve` runs
    # uvicorn with `log_config=None`, so there its lines reach the root handler like this one.
    uvicorn = logging.getLogger("coach.test.uvicorn_error")

    def refused_route_returns() -> None:
        upgrade_denied_var.set(True)
        uvicorn.error("ASGI callable returned without completing handshake.")

    contextvars.copy_context().run(refused_route_returns)
    uvicorn.error("ASGI callable returned without completing handshake.")
    refused, forgotten = _lines(stream)
    assert refused["level"] == "INFO" and "refused" in refused["message"]
    assert forgotten["level"] == "ERROR"


def test_websocket_frames_never_reach_a_debug_log(stream: io.StringIO) -> None:
    """At COACH_LOG_LEVEL=debug the `websockets` protocol under uvicorn logged each frame (a
    Twilio `dtmf` message kept its digit in the log, panel frames their unredacted
    transcripts) and each upgrade header (API keys, bearer tokens), a protocol audit found.
    Frame and header dumps are dropped; other debug lines stay."""
    from websockets.frames import Frame, Opcode

    setup_logging("debug", json_format=True, stream=stream)
    # websockets logs through a LoggerAdapter on uvicorn's logger; the name is another one
    # for the reason given in test_a_refused_upgrade_is_not_an_error_line.
    ws_log = logging.LoggerAdapter(logging.getLogger("coach.test.uvicorn_ws"), {"websocket": 1})
    dtmf = json.dumps({"event": "dtmf", "streamSid": "MZ1", "dtmf": {"digit": "8"}})
    ws_log.debug("< %s", Frame(Opcode.TEXT, dtmf.encode()))
    ws_log.debug("> %s", Frame(Opcode.TEXT, b'{"type": "transcript", "text": "my card is"}'))
    ws_log.debug("< GET %s HTTP/1.1", "/ingest/pcm?api_key=k3y")
    ws_log.debug("< %s: %s", "x-api-key", "k3y")
    ws_log.debug("< %s: %s", "authorization", "Bearer t0ken")
    ws_log.debug("= connection is %s", "OPEN")
    request, state = _lines(stream)
    assert request["message"] == "< GET /ingest/pcm?api_key=*** HTTP/1.1"
    assert state["message"] == "= connection is OPEN"
    for secret in ("digit", "my card", "k3y", "t0ken"):
        assert secret not in stream.getvalue()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            '"GET /api/customers/john.smith@gmail.com/history HTTP/1.1" 200',
            '"GET /api/customers/[EMAIL]/history HTTP/1.1" 200',
        ),
        (
            '"GET /api/history/calls?customer_id=john.smith%40gmail.com HTTP/1.1"',
            '"GET /api/history/calls?customer_id=[EMAIL] HTTP/1.1"',
        ),
        (
            '"GET /api/customers/cust-7/history HTTP/1.1" 200',
            '"GET /api/customers/cust-7/history HTTP/1.1" 200',
        ),
    ],
)
def test_a_customer_id_that_is_an_email_or_a_phone_is_not_logged(line: str, expected: str) -> None:
    """Found by an outside PII audit: telephony may give the caller's number or email as the
    customer id, and a history lookup put it in the request line."""
    assert scrub(line) == expected


@pytest.mark.parametrize("level", ["info", "debug"])
async def test_the_log_does_not_echo_sql_parameters(
    stream: io.StringIO, tmp_path: Any, level: str
) -> None:
    """At COACH_LOG_LEVEL=debug aiosqlite logged every statement with its parameters: a
    history search for "4155550122", a customer's phone number (an outside PII audit). The
    first fix set such libraries to INFO, which turned SQLAlchemy's statement log on at the
    default level: every transcript written went to the log (an outside drain test)."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    setup_logging(level, json_format=True, stream=stream)
    logging.getLogger("coach.test").info("own line")
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 't.db'}")
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE c (said TEXT)"))
        await conn.execute(text("INSERT INTO c VALUES (:said)"), {"said": "it's John Miller"})
        await conn.execute(text("SELECT * FROM c WHERE said LIKE :q"), {"q": "%4155550122%"})
    await engine.dispose()
    assert "own line" in stream.getvalue()
    for value in ("4155550122", "John Miller", "INSERT INTO"):
        assert value not in stream.getvalue()


def test_a_probe_that_succeeds_is_not_logged_one_that_fails_is(stream: io.StringIO) -> None:
    """Probes and scrapes every few seconds filled the log (a newcomer's `make run`)."""
    setup_logging("info", json_format=True, stream=stream)
    # Straight to the handler setup_logging installed: uvicorn's own config, applied by an
    # earlier test's server, may keep "uvicorn.access" from propagating to it.
    (handler,) = logging.getLogger().handlers
    line = '%s - "%s %s HTTP/%s" %d'
    for path, status in (("/health/ready", 200), ("/metrics", 200), ("/health/ready", 503)) + (
        ("/api/calls", 200),
    ):
        args = ("10.0.0.1:5", "GET", path, "1.1", status)
        record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, line, args, None)
        handler.handle(record)
    said = [r["message"] for r in _lines(stream)]
    assert said == [
        '10.0.0.1:5 - "GET /health/ready HTTP/1.1" 503',
        '10.0.0.1:5 - "GET /api/calls HTTP/1.1" 200',
    ]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('"WebSocket /ingest/pcm?api%5Fkey=ingest-key-XYZ" [accepted]', "api_key=***"),
        ('"WebSocket /ws/calls/c1/events?%74oken=eyJhbGciOi.x.y" [accepted]', "token=***"),
        ('"GET /api/history/calls?%71=4532015112830366 HTTP/1.1"', "q=[CARD]"),
        ('"GET /api/history/calls?customer%5Fid=john.smith%40gmail.com HTTP/1.1"', "=[EMAIL]"),
    ],
)
def test_a_parameter_name_in_percent_escapes_is_scrubbed_too(line: str, expected: str) -> None:
    """An outside security audit: Starlette decodes parameter names, so `?api%5Fkey=` is
    the ingest key and `?%71=` a history search, and both reached the log in clear."""
    scrubbed = scrub(line)
    assert expected in scrubbed
    assert not any(s in scrubbed for s in ("XYZ", "eyJ", "4532", "smith"))


def test_a_control_character_in_a_parameter_name_stays_escaped() -> None:
    """Decoding names let `?q%0Afake=1` write a line of its own: a forged log entry."""
    for raw in ('"GET /api/history/calls?q%0Afake=1 HTTP/1.1" 200', '"GET /x?q%00=1 HTTP/1.1"'):
        scrubbed = scrub(raw)
        assert scrubbed.isprintable(), scrubbed
    assert "%0A" in scrub('"GET /api/history/calls?q%0Afake=1 HTTP/1.1" 200').upper()


@pytest.mark.parametrize(
    ("line", "hidden", "expected"),
    [
        (
            '"GET /api/calls/4532015112830366/summary HTTP/1.1" 200',
            "4532",
            '"GET /api/calls/[CARD]/summary HTTP/1.1" 200',
        ),
        ('"GET /x?x=4532-0151-1283-0366 HTTP/1.1"', "4532", '"GET /x?x=[CARD] HTTP/1.1"'),
        ('"GET /x?%2571=%2534532015112830366 HTTP/1.1"', "532015", "=[CARD] HTTP"),
        ('"GET /api/calls/call-123-45-6789/x HTTP/1.1"', "6789", "/call-[SSN]/x"),
        ('"GET /api/calls/x?from=%2B14155550122 HTTP/1.1"', "5550122", "?from=[PHONE] HTTP"),
        ('"GET /api/calls/ann.lee@example.com HTTP/1.1"', "ann.lee", "/api/calls/[EMAIL] HTTP"),
        # A second check: other separators, and SSNs and phone numbers in their usual shapes.
        ('"GET /api/calls/4532.0151.1283.0366 HTTP/1.1"', "4532", "/api/calls/[CARD] HTTP"),
        ('"GET /x?c=4532_0151_1283_0366 HTTP/1.1"', "4532", "?c=[CARD] HTTP"),
        ('"GET /x?c=4532%E2%80%910151%E2%80%911283%E2%80%910366"', "4532", "?c=[CARD]"),
        ('"GET /x?s=123%2045%206789 HTTP/1.1"', "6789", "?s=[SSN] HTTP"),
        ('"GET /x?ph=415-555-0123 HTTP/1.1"', "0123", "?ph=[PHONE] HTTP"),
        ('"GET /x?ph=(415)%20555-0123 HTTP/1.1"', "0123", "?ph=[PHONE] HTTP"),
    ],
)
def test_personal_data_anywhere_in_a_url_is_not_logged(
    line: str, hidden: str, expected: str
) -> None:
    """An outside security audit: a card number in a parameter the server does not read
    (`?x=`), in a name encoded twice, or in a call id in a path was logged as sent."""
    scrubbed = scrub(line)
    assert hidden not in scrubbed
    assert expected in scrubbed, scrubbed


def test_ids_dates_and_time_stamps_in_a_url_are_kept() -> None:
    """Only shapes that cannot be an id are hidden: a millisecond time stamp (13 digits, often
    Luhn-valid), a Twilio call SID, a date, a cursor."""
    for line in (
        '"GET /api/history/calls?since=1733490000000&until=1733490000009 HTTP/1.1" 200',
        '"GET /api/calls/CA1234567890abcdef1234567890abcdef/events?after_seq=4111 HTTP/1.1"',
        '"GET /api/history/calls?from=2026-12-01&to=2026-12-06T10:00:00Z HTTP/1.1" 200',
        '"GET /api/calls/9f1c2e7a-3b4d-4c5e-8f90-123456789012/summary HTTP/1.1" 200',
        '"GET /metrics?v=1.2.3&ip=10.0.0.1 HTTP/1.1" 200',
        # A database URL's user and host (an outside scaling audit saw "[EMAIL]:5432").
        "store ready: postgresql+asyncpg://audit@127.0.0.1:5432/audit_scale",
        "store ready: postgresql://app:***@db.example.com:5432/coach",
    ):
        assert scrub(line) == line


_NAMES_A_CALL = re.compile(r"\bcalls? %[sr]\b")
_LEVELS = frozenset({"debug", "info", "warning", "error", "exception", "critical"})


def _lines_naming_a_call_without_its_field() -> list[str]:
    root = Path(__file__).resolve().parents[2] / "coach"
    missing = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in _LEVELS
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "log"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                continue
            if _NAMES_A_CALL.search(node.args[0].value) and not any(
                k.arg == "extra" for k in node.keywords
            ):
                missing.append(f"{path.relative_to(root.parent)}:{node.lineno}")
    return missing


def test_every_line_that_names_a_call_has_its_call_id_field() -> None:
    """A log search by call must find every line about it. Lines written outside the call's
    own tasks (the bus, the store, the orphan sweep, an API request about the call) had the
    id only in their text (left open since session 35)."""
    assert _lines_naming_a_call_without_its_field() == []


def test_a_line_about_a_call_outside_its_context_names_it(stream: io.StringIO) -> None:
    setup_logging("info", json_format=True, stream=stream)
    logging.getLogger("t").warning("call %s: cut off", "c-8", extra=call_fields("c-8"))
    logging.getLogger("t").warning("store reconnected")
    assert [line.get("call_id") for line in _lines(stream)] == ["c-8", None]
