"""The call-history store on SQLite and PostgreSQL: migrations, recording calls, outages.

Synthetic CONTRACT events go through an InProcessBus with the writer attached, exactly as a
live call publishes them; no ASR model is involved.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from test_store_support import (
    AGENT_ONLY,
    BACKENDS,
    CARD,
    EMAIL,
    Backend,
    call_events,
    eventually,
    fresh_pg_database,
    pg_outage,
    pg_url,
    publish,
)

from coach.bus import InProcessBus, agent_topic, call_topic
from coach.settings import Settings
from coach.store import (
    NotFound,
    Refused,
    RetentionTask,
    Spool,
    Store,
    StoreConfig,
    StoreService,
    StoreUnavailable,
    StoreWriter,
    downgrade,
    migrate,
)
from coach.store.db import create_engine
from coach.store.models import (
    CueFeedback,
    CueRow,
    Escalation,
    MissedCue,
    Summary,
    Utterance,
    table_of,
)
from coach.store.writes import Received

STORE_TABLES = {
    "calls",
    "utterances",
    "cues",
    "cue_feedback",
    "missed_cues",
    "escalations",
    "summaries",
}


async def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def _dump(store: Store) -> str:
    """Every row of every table as text, to prove what is never stored."""
    out = []
    async with store.engine.connect() as conn:
        for name in sorted(STORE_TABLES):
            rows = await conn.execute(sa.text(f"SELECT * FROM {name}"))
            out += [json.dumps(list(r), default=str) for r in rows]
    return "\n".join(out)


async def _count(store: Store, table: str) -> int:
    async with store.engine.connect() as conn:
        return int(await conn.scalar(sa.text(f"SELECT count(*) FROM {table}")) or 0)


def _writer(store: Store, spool_dir: Path, **kw: Any) -> StoreWriter:
    kw = {"flush_interval_s": 0.02, "retry_initial_s": 0.02, "retry_max_s": 0.1, **kw}
    return StoreWriter(store=store, spool=Spool(directory=spool_dir), **kw)


@pytest.fixture
def db_url(backend: Backend) -> str:
    return backend.url


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    s = Store(url=db_url)
    await s.ensure_schema()
    yield s
    await s.aclose()


async def _record(store: Store, tmp_path: Path, *calls: list[dict[str, Any]]) -> StoreWriter:
    bus = InProcessBus()
    writer = _writer(store, tmp_path / "spool")
    bus.add_listener(writer)
    for events in calls:
        publish(bus, events)
    await writer.flush()
    return writer


# -- schema ---------------------------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
        return
    for name in fresh_pg_database():
        yield pg_url(name)


async def test_migrations_up_and_down(empty_db_url: str) -> None:
    db_url = empty_db_url
    assert not STORE_TABLES & await _tables(db_url)
    await migrate(db_url)
    assert STORE_TABLES | {"alembic_version"} <= await _tables(db_url)
    await migrate(db_url)  # at head already: a no-op, as on every restart
    await downgrade(db_url)
    assert not STORE_TABLES & await _tables(db_url)
    await migrate(db_url)
    assert STORE_TABLES <= await _tables(db_url)


async def test_outcomes_stored_before_redaction_are_redacted_by_the_migration(
    empty_db_url: str,
) -> None:
    """Outcomes were stored as typed, card and phone numbers included; the store redacts
    them on write now, and migration 0004 redacts those already stored."""
    await migrate(empty_db_url, revision="0003_call_last_activity")
    engine = create_engine(empty_db_url)
    typed = {"c-card": f"paid with {CARD}", "c-plain": "resolved", "c-none": None}
    try:
        async with engine.begin() as conn:
            for call_id, outcome in typed.items():
                await conn.execute(
                    sa.text(
                        "INSERT INTO calls (call_id, source, channels, started_at, outcome) "
                        "VALUES (:c, 'pcm', '[]', :t, :o)"
                    ),
                    {"c": call_id, "t": datetime(2026, 12, 1, tzinfo=UTC), "o": outcome},
                )
        await migrate(empty_db_url)
        async with engine.connect() as conn:
            rows = dict((await conn.execute(sa.text("SELECT call_id, outcome FROM calls"))).all())
    finally:
        await engine.dispose()
    assert rows == {"c-card": "paid with [CARD]", "c-plain": "resolved", "c-none": None}


async def test_migrations_build_exactly_the_models(empty_db_url: str) -> None:
    """A model change without its migration (or the reverse) shows up as a schema diff."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from coach.store.models import Base

    await migrate(empty_db_url)
    engine = create_engine(empty_db_url)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata)
            )
    finally:
        await engine.dispose()
    assert diff == []


# -- recording a call -----------------------------------------------------------------------


async def test_a_full_call_is_stored_redacted_and_read_back(store: Store, tmp_path: Path) -> None:
    events = call_events("c-full")
    await _record(store, tmp_path, events)

    detail = await store.get_call("c-full")
    assert detail is not None
    call = detail.call
    assert (call.source, call.agent_id, call.customer_id) == ("pcm", "alice", "cust-1")
    assert call.channels == ["customer", "agent"]
    assert call.started_at.tzinfo is not None and call.ended_at is not None
    assert call.started_at <= call.ended_at <= datetime.now(UTC)
    assert (call.duration_s, call.end_reason, call.outcome) == (10.0, "hangup", None)

    sent = [e for e in events if e["type"] == "transcript"]
    assert [u.seq for u in detail.transcript] == [e["seq"] for e in sent]
    first = detail.transcript[0]
    assert first.speaker == "customer" and (first.t_start, first.t_end) == (1.0, 4.0)
    assert "[CARD]" in first.text and "[EMAIL]" in first.text
    assert [w["t0"] for w in first.words] == [w["t0"] for w in sent[0]["words"]]
    assert "[CARD]" in [w["w"] for w in first.words]
    assert first.sentiment == sent[0]["sentiment"] and first.prosody == sent[0]["prosody"]

    (cue,) = detail.cues
    assert (cue.cue, cue.priority, cue.title) == ("acknowledge_frustration", 2, "Acknowledge")
    assert cue.evidence is not None and "[CARD]" in cue.evidence["text"]
    assert "[CARD]" in cue.why and cue.feedback == []
    (esc,) = detail.escalations
    assert (esc.reason, esc.urgency, esc.acknowledged_by) == ("user_request", "high", None)
    assert "[EMAIL]" in esc.summary and esc.context == {"trend": "worsening"}
    # A call_end without the whole-call verdict gets it from its arc (one point: none).
    assert detail.summary == {
        "arc": [[1.0, -0.4]],
        "cues": {"acknowledge_frustration": 1},
        "change": None,
    }
    assert detail.metrics is not None and detail.metrics["final"] is True  # only the last

    everything = await _dump(store)
    for secret in (CARD, "4111 1111", EMAIL, "jane.doe", AGENT_ONLY):
        assert secret not in everything
    assert await _count(store, "utterances") == 2  # no partials


async def test_the_stored_transcript_is_in_the_order_it_was_said(
    store: Store, tmp_path: Path
) -> None:
    """A call streamed faster than real time (or a final decode that lags) emits a line
    after the next party's: stored by `seq`, the post-call summary read "CUSTOMER 0:06,
    AGENT 0:01" (an outside audit). The transcript reads in the order it was said."""
    events = call_events("c-order", lines=3)
    said = [e for e in events if e["type"] == "transcript"]
    said[0]["t_start"], said[0]["t_end"] = 9.5, 11.0  # decoded last, emitted first
    await _record(store, tmp_path, events)
    detail = await store.get_call("c-order")
    assert detail is not None
    assert [u.t_start for u in detail.transcript] == [5.0, 9.0, 9.5]
    assert [u.seq for u in detail.transcript] == [said[1]["seq"], said[2]["seq"], said[0]["seq"]]


async def test_only_the_redacted_call_topic_is_recorded(store: Store, tmp_path: Path) -> None:
    bus = InProcessBus()
    writer = _writer(store, tmp_path / "spool")
    bus.add_listener(writer)
    events = call_events("c-topics", cue=False, escalation=False)
    for ev in events:  # agent topic, supervisor wall, all-calls stream: none is recorded
        bus.publish(agent_topic("c-topics"), ev)
        bus.publish("supervisor", ev)
        bus.publish("calls", ev)
        bus.publish(call_topic("other"), ev)  # a call_id that does not match its topic
    assert writer.buffered == 0
    await writer.flush()
    assert await store.get_call("c-topics") is None

    # Defence in depth: unredacted text on the call topic is still stored redacted.
    for ev in events:
        bus.publish(call_topic("c-topics"), ev)
    await writer.flush()
    detail = await store.get_call("c-topics")
    assert detail is not None and CARD not in await _dump(store)
    assert "[CARD]" in detail.transcript[0].text


async def test_replayed_events_are_written_once(store: Store, tmp_path: Path) -> None:
    events = call_events("c-twice")
    writer = await _record(store, tmp_path, events)
    items = [Received(event=e, at=1.7e9) for e in events]
    await store.write_events(items)  # the same events again, as a replay would
    await store.write_events(items[3:7])
    counts = {t: await _count(store, t) for t in ("calls", "utterances", "cues", "escalations")}
    assert counts == {"calls": 1, "utterances": 2, "cues": 1, "escalations": 1}
    assert writer.written > 0


async def test_a_malformed_event_is_skipped_not_blocking(store: Store, tmp_path: Path) -> None:
    events = call_events("c-bad", cue=False, escalation=False)
    bad = {**events[2], "seq": 99, "t_start": "soon"}  # not a number
    no_seq = {**events[2], "seq": None}
    huge = {**events[2], "seq": 2**40}
    no_call = {**events[2], "call_id": None}
    await store.write_events(
        [Received(event=e, at=1.7e9) for e in [*events, bad, no_seq, huge, no_call]]
    )
    assert store.skipped == 4
    assert await _count(store, "utterances") == 2


async def test_an_event_the_database_refuses_is_skipped_alone(
    store: Store, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Let an out-of-range seq past validation, as a future bug might: PostgreSQL refuses it
    # (INTEGER is 32-bit there) while still answering, so only that event is skipped.
    monkeypatch.setattr("coach.store.writes._int", lambda v: v)
    events = call_events("c-poison", cue=False, escalation=False)
    huge = {**events[2], "seq": 2**40}
    await store.write_events([Received(event=e, at=1.7e9) for e in [*events, huge]])
    assert store.skipped == (1 if backend.kind == "postgresql" else 0)
    detail = await store.get_call("c-poison")
    assert detail is not None and detail.call.end_reason == "hangup"
    assert sorted(u.seq for u in detail.transcript)[:2] == [3, 5]


async def test_a_spill_during_a_write_loses_and_repeats_nothing(tmp_path: Path) -> None:
    """The buffer overflows into the spool while a batch is being written: that batch is
    spilled too and rewritten by the replay, which the idempotent upserts absorb."""
    store = Store(url=f"sqlite+aiosqlite:///{tmp_path / 'coach.db'}")
    gate, entered = asyncio.Event(), asyncio.Event()
    real_write = store.write_events

    async def slow_first_write(items: Any) -> None:
        if not entered.is_set():
            entered.set()
            await gate.wait()
        await real_write(items)

    store.write_events = slow_first_write
    writer = _writer(store, tmp_path / "spool", batch_size=5, max_buffer=5)
    writer.start()
    bus = InProcessBus()
    bus.add_listener(writer)
    events = call_events("c-spill", lines=20)
    publish(bus, events[:8])
    await asyncio.wait_for(entered.wait(), 5)
    publish(bus, events[8:])  # overflows the buffer of 5 while the first batch waits
    assert writer.spool.pending
    gate.set()
    await eventually(lambda: not writer.spool.pending and writer.buffered == 0, what="drain")
    await writer.aclose()
    detail = await store.get_call("c-spill")
    assert detail is not None and [u.seq for u in detail.transcript] == [
        e["seq"] for e in events if e["type"] == "transcript"
    ]
    assert detail.call.end_reason == "hangup" and await _count(store, "utterances") == 20
    await store.aclose()


async def test_events_without_call_start_still_land(store: Store) -> None:
    events = call_events("c-late", cue=False, escalation=False)
    await store.write_events([Received(event=e, at=1.7e9) for e in events[2:]])
    detail = await store.get_call("c-late")
    assert detail is not None and detail.call.source == "unknown"
    assert len(detail.transcript) == 2 and detail.call.end_reason == "hangup"


# -- outage: spool and replay ---------------------------------------------------------------


class Outage:
    """A real outage of the test's own database, nothing else: PostgreSQL stops accepting
    connections to it; SQLite is held under an exclusive lock by another connection."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._lock: sqlite3.Connection | None = None

    async def begin(self) -> None:
        if self.backend.kind == "postgresql":
            await pg_outage(self.backend.name, down=True)
        else:
            self._lock = sqlite3.connect(self.backend.name, isolation_level=None)
            self._lock.execute("BEGIN EXCLUSIVE")

    async def end(self) -> None:
        if self.backend.kind == "postgresql":
            await pg_outage(self.backend.name, down=False)
        elif self._lock is not None:
            self._lock.execute("COMMIT")
            self._lock.close()


async def test_outage_spools_and_replays_everything_once_in_order(
    backend: Backend, tmp_path: Path
) -> None:
    store = Store(url=backend.url, engine=create_engine(backend.url, sqlite_busy_timeout_ms=50))
    await store.ensure_schema()
    writes: list[tuple[str, int]] = []
    real_write = store.write_events

    async def spy(items: Any) -> None:
        await real_write(items)
        writes.extend((i.event["call_id"], i.event["seq"]) for i in items)

    store.write_events = spy
    writer = _writer(store, tmp_path / "spool", batch_size=4)
    writer.start()
    bus = InProcessBus()
    bus.add_listener(writer)
    a, b = call_events("c-a", lines=6), call_events("c-b", lines=3, agent_id="bob")
    publish(bus, a[:5])
    await writer.flush()
    outage = Outage(backend)
    await outage.begin()
    try:
        publish(bus, a[5:])
        publish(bus, b)
        await eventually(lambda: not writer.healthy and writer.buffered == 0, what="spooling")
        assert writer.spool.pending and writes == [("c-a", 1), ("c-a", 3), ("c-a", 5)]
        with pytest.raises(StoreUnavailable):
            await writer.flush()
    finally:
        await outage.end()
    await eventually(lambda: writer.healthy and not writer.spool.pending, what="replay")
    await writer.flush()

    stored = [e for e in [*a, *b] if e["type"] not in ("partial", "metrics")]
    expected = {(e["call_id"], e["seq"]) for e in stored}
    expected |= {(c[-2]["call_id"], c[-2]["seq"]) for c in (a, b)}  # the last metrics of each
    assert set(writes) == expected and len(writes) == len(expected)  # nothing lost, no repeat
    for call in ("c-a", "c-b"):
        seqs = [s for c, s in writes if c == call]
        assert seqs == sorted(seqs)
    assert await _count(store, "utterances") == 9
    detail = await store.get_call("c-b")
    assert detail is not None and detail.call.agent_id == "bob" and detail.call.ended_at
    await writer.aclose()
    await store.aclose()


async def test_spooled_events_survive_a_restart(backend: Backend, tmp_path: Path) -> None:
    if backend.kind == "postgresql":
        down_url = pg_url(backend.name, port=1)  # nothing listens there: connection refused
    else:
        down_url = f"sqlite+aiosqlite:///{tmp_path / 'not-a-dir'}/coach.db"
        (tmp_path / "not-a-dir").write_text("a file where the directory should be")
    down = Store(url=down_url)
    writer = _writer(down, tmp_path / "spool")
    bus = InProcessBus()
    bus.add_listener(writer)
    events = call_events("c-restart")
    publish(bus, events)
    await writer.aclose()  # the database never answered: all of it is on disk
    await down.aclose()
    assert Spool(directory=tmp_path / "spool").pending

    store = Store(url=backend.url)
    writer = _writer(store, tmp_path / "spool")
    writer.start()
    await eventually(lambda: not writer.spool.pending, what="replay after restart")
    detail = await store.get_call("c-restart")
    assert detail is not None and len(detail.transcript) == 2 and detail.metrics is not None
    await writer.aclose()
    await store.aclose()


def _item(seq: int) -> Received:
    return Received(event={"type": "cue", "call_id": "c", "seq": seq, "pad": "x" * 200}, at=1.0)


def test_spool_caps_its_size_dropping_the_oldest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(directory=tmp_path, max_bytes=20_000, segment_bytes=4_000)
    with caplog.at_level(logging.WARNING):
        for seq in range(1, 301):
            spool.append([_item(seq)])
    assert spool.size_bytes <= 20_000 + 4_000 and spool.dropped > 0
    assert any("dropped" in r.message for r in caplog.records)
    seqs = []
    while spool.pending:
        items, cursor = spool.read(50)
        seqs += [i.event["seq"] for i in items]
        spool.commit(cursor)
    assert seqs == list(range(spool.dropped + 1, 301))  # the newest, in order, none twice
    assert not list(tmp_path.glob("seg-*"))


def test_spool_resumes_where_it_stopped_and_skips_torn_lines(tmp_path: Path) -> None:
    spool = Spool(directory=tmp_path)
    spool.append([_item(s) for s in range(1, 6)])
    items, cursor = spool.read(2)
    spool.commit(cursor)
    (segment,) = tmp_path.glob("seg-*")
    with segment.open("ab") as f:
        f.write(b'{"at": 1.0, "event": {"type"')  # a crash in the middle of a line
    again = Spool(directory=tmp_path)
    again.append([_item(6)])
    seqs = []
    while again.pending:
        items, cursor = again.read(10)
        seqs += [i.event["seq"] for i in items]
        again.commit(cursor)
    assert seqs == [3, 4, 5, 6] and again.corrupt == 1


# -- reading history ------------------------------------------------------------------------


async def _seed_history(store: Store) -> None:
    now = datetime.now(UTC).timestamp()
    calls = [
        ("h1", "alice", "cust-1", now - 3 * 86400, True),
        ("h2", "bob", "cust-1", now - 2 * 86400, False),
        ("h3", "alice", "cust-2", now - 1 * 86400, False),
        ("h4", "alice", "cust-1", now - 3600, True),
    ]
    for call_id, agent, customer, at, cue in calls:
        # h3 had no escalation; h4's was critical (the others high).
        events = call_events(
            call_id, agent_id=agent, customer_id=customer, cue=cue, escalation=call_id != "h3"
        )
        if call_id == "h3":
            events[2]["text"] = "I want to cancel 100% of it"
        if call_id == "h4":
            next(e for e in events if e["type"] == "escalation")["urgency"] = "critical"
        await store.write_events([Received(event=e, at=at) for e in events])


async def test_list_calls_filters_and_pages(store: Store) -> None:
    await _seed_history(store)
    ids = lambda calls: [c.call_id for c in calls]  # noqa: E731
    assert ids(await store.list_calls()) == ["h4", "h3", "h2", "h1"]
    assert ids(await store.list_calls(agent_id="alice")) == ["h4", "h3", "h1"]
    assert ids(await store.list_calls(customer_id="cust-1", agent_id="bob")) == ["h2"]
    day = datetime.now(UTC) - timedelta(days=1, hours=1)
    assert ids(await store.list_calls(since=day)) == ["h4", "h3"]
    assert ids(await store.list_calls(until=day)) == ["h2", "h1"]
    assert ids(await store.list_calls(query="CANCEL")) == ["h3"]
    assert ids(await store.list_calls(query="100%")) == ["h3"]
    assert ids(await store.list_calls(query="%")) == ["h3"]  # a literal percent sign
    assert ids(await store.list_calls(query="[card]")) == ["h4", "h2", "h1"]
    assert ids(await store.list_calls(limit=2, offset=1)) == ["h3", "h2"]
    # Review by what happened: the cue shown, the escalation raised (at or above an urgency).
    assert ids(await store.list_calls(cue="acknowledge_frustration")) == ["h4", "h1"]
    assert ids(await store.list_calls(cue="acknowledge_frustration", agent_id="bob")) == []
    assert ids(await store.list_calls(cue="crisis")) == []
    assert ids(await store.list_calls(min_urgency="low")) == ["h4", "h2", "h1"]
    assert ids(await store.list_calls(min_urgency="high")) == ["h4", "h2", "h1"]
    assert ids(await store.list_calls(min_urgency="critical")) == ["h4"]
    assert ids(await store.list_calls(min_urgency="critical", agent_id="bob")) == []
    both = await store.list_calls(min_urgency="critical", cue="acknowledge_frustration")
    assert ids(both) == ["h4"]


async def test_erasure_takes_every_row_of_the_ended_calls_only(store: Store) -> None:
    await _seed_history(store)  # h1, h2, h4 of cust-1 (h1 and h4 with a cue), h3 of cust-2
    now = datetime.now(UTC).timestamp()
    running = [e for e in call_events("h5", customer_id="cust-1") if e["type"] != "call_end"]
    await store.write_events([Received(event=e, at=now) for e in running])
    await store.add_feedback(call_id="h4", cue_seq=_cue_seq("h4"), verdict="helpful", user="sue")
    with pytest.raises(ValueError):
        await store.erase_calls()
    assert await store.erase_calls(call_id="h3") == (["h3"], [])
    assert await store.erase_calls(call_id="h3") == ([], [])
    assert await store.erase_calls(customer_id="cust-1") == (["h1", "h2", "h4"], ["h5"])
    assert [c.call_id for c in await store.list_calls()] == ["h5"]
    async with store._connect() as conn:
        for model in (CueFeedback, MissedCue, CueRow, Utterance, Escalation, Summary):
            tbl = table_of(model)
            left = await conn.execute(sa.select(tbl.c.call_id).distinct())
            assert {r[0] for r in left} <= {"h5"}, model.__name__


def _cue_seq(call_id: str) -> int:
    return next(int(e["seq"]) for e in call_events(call_id) if e["type"] == "cue")


async def test_customer_history(store: Store) -> None:
    await _seed_history(store)
    await store.set_outcome(call_id="h2", outcome="resolved", user="bob")
    history = await store.customer_history("cust-1")
    assert [h.call_id for h in history] == ["h4", "h2", "h1"]
    assert history[1].outcome == "resolved" and history[1].agent_id == "bob"
    assert history[0].cue_counts == {"acknowledge_frustration": 1} and history[1].cue_counts == {}
    assert all(h.escalations == 1 and h.end_reason == "hangup" for h in history)
    assert history[0].started_at > history[1].started_at > history[2].started_at
    assert [h.call_id for h in await store.customer_history("cust-1", limit=1)] == ["h4"]
    assert [h.call_id for h in await store.customer_history("cust-1", exclude_call_id="h4")] == [
        "h2",
        "h1",
    ]
    assert await store.customer_history("nobody") == []


async def test_ended_legs_of_a_call_id(store: Store) -> None:
    """What a restarted server (or another instance) asks before it opens a reused id."""
    at = datetime.now(UTC).timestamp()
    for call_id in ("tx", "tx~2", "tx~x", "tx~2~2", "TX~3", "tx_y~4", "a%b~2"):
        events = call_events(call_id)
        await store.write_events([Received(event=e, at=at) for e in events])
    unended = [e for e in call_events("tx~3") if e["type"] != "call_end"]
    await store.write_events([Received(event=e, at=at) for e in unended])
    assert await store.ended_legs("tx") == {"tx", "tx~2"}
    assert await store.ended_legs("tx~2") == {"tx~2", "tx~2~2"}
    assert await store.ended_legs("tx_y") == {"tx_y~4"}
    assert await store.ended_legs("t_") == set()  # "_" is literal, not a wildcard
    assert await store.ended_legs("a%b") == {"a%b~2"}
    assert await store.ended_legs("nobody") == set()


async def test_feedback_acknowledgement_and_outcome(store: Store) -> None:
    await _seed_history(store)
    cue_seq = (await store.get_call("h1")).cues[0].seq
    first, changed = await store.add_feedback(
        call_id="h1", cue_seq=cue_seq, verdict="helpful", user="alice"
    )
    assert changed and (first.verdict, first.user, first.cue_seq) == ("helpful", "alice", cue_seq)
    # The same verdict again (a retried POST) changes nothing, its time included.
    again, changed = await store.add_feedback(
        call_id="h1", cue_seq=cue_seq, verdict="helpful", user="alice"
    )
    assert not changed and again == first
    replaced, changed = await store.add_feedback(
        call_id="h1", cue_seq=cue_seq, verdict="dismissed", user="alice"
    )
    assert changed and replaced.verdict == "dismissed"
    await store.add_feedback(call_id="h1", cue_seq=cue_seq, verdict="not_helpful", user="sue")
    (cue,) = (await store.get_call("h1")).cues
    assert {(f.user, f.verdict) for f in cue.feedback} == {
        ("alice", "dismissed"),
        ("sue", "not_helpful"),
    }
    assert await store.latest_cue_seq("h1", "acknowledge_frustration") == cue_seq
    with pytest.raises(NotFound):
        await store.add_feedback(call_id="h1", cue_seq=999, verdict="helpful", user="alice")
    with pytest.raises(ValueError, match="verdict"):
        await store.add_feedback(call_id="h1", cue_seq=cue_seq, verdict="meh", user="alice")

    (rated,) = await store.rated_cues()
    assert (rated.call_id, rated.cue_seq, rated.cue) == ("h1", cue_seq, "acknowledge_frustration")
    assert rated.verdicts == {"alice": "dismissed", "sue": "not_helpful"}
    assert "[CARD]" in rated.text  # the evidence the cue answered, redacted
    assert await store.rated_cues(since=datetime.now(UTC) + timedelta(minutes=1)) == []

    # Taking a rating back removes that person's verdict only.
    await store.withdraw_feedback(call_id="h1", cue_seq=cue_seq, user="sue")
    with pytest.raises(NotFound):
        await store.withdraw_feedback(call_id="h1", cue_seq=cue_seq, user="sue")
    with pytest.raises(NotFound):
        await store.withdraw_feedback(call_id="h1", cue_seq=999, user="alice")
    (rated,) = await store.rated_cues()
    assert rated.verdicts == {"alice": "dismissed"}

    esc_seq = (await store.get_call("h1")).escalations[0].seq
    first = await store.acknowledge_escalation(call_id="h1", seq=esc_seq, user="sue")
    second = await store.acknowledge_escalation(call_id="h1", seq=esc_seq, user="tom")
    assert first.acknowledged_by == second.acknowledged_by == "sue"
    assert second.acknowledged_at == first.acknowledged_at
    with pytest.raises(NotFound):
        await store.acknowledge_escalation(call_id="h1", seq=999, user="sue")

    call = await store.set_outcome(call_id="h1", outcome="refund issued", user="alice")
    assert (call.outcome, call.outcome_by) == ("refund issued", "alice")
    with pytest.raises(NotFound):
        await store.set_outcome(call_id="nope", outcome="x", user="alice")


async def test_missed_cue_reports(store: Store) -> None:
    await _seed_history(store)
    transcript = (await store.get_call("h3")).transcript
    customer = next(u for u in transcript if u.speaker == "customer")
    agent = next(u for u in transcript if u.speaker == "agent")
    first, new = await store.add_missed_cue(
        call_id="h3", utterance_seq=customer.seq, cue="churn_risk", user="sue"
    )
    assert new and (first.cue, first.user, first.utterance_seq) == (
        "churn_risk",
        "sue",
        customer.seq,
    )
    assert first.text == customer.text == "I want to cancel 100% of it"
    # Reporting again changes nothing; another person or another cue is another report.
    again, new = await store.add_missed_cue(
        call_id="h3", utterance_seq=customer.seq, cue="churn_risk", user="sue"
    )
    assert not new and again == first
    await store.add_missed_cue(
        call_id="h3", utterance_seq=customer.seq, cue="churn_risk", user="alice"
    )
    await store.add_missed_cue(
        call_id="h3", utterance_seq=customer.seq, cue="cost_anxiety", user="sue"
    )
    detail = await store.get_call("h3")
    assert [(m.cue, m.user) for m in detail.missed_cues] == [
        ("churn_risk", "sue"),
        ("churn_risk", "alice"),
        ("cost_anxiety", "sue"),
    ]
    assert (await store.get_call("h4")).missed_cues == []
    with pytest.raises(Refused, match="customer"):
        await store.add_missed_cue(
            call_id="h3", utterance_seq=agent.seq, cue="churn_risk", user="sue"
        )
    with pytest.raises(NotFound):
        await store.add_missed_cue(call_id="h3", utterance_seq=999, cue="churn_risk", user="sue")
    with pytest.raises(NotFound):
        await store.add_missed_cue(call_id="nope", utterance_seq=1, cue="churn_risk", user="sue")

    reports = await store.missed_cues()
    assert [(m.call_id, m.cue, m.text) for m in reports][0] == ("h3", "churn_risk", customer.text)
    assert len(reports) == 3
    assert await store.missed_cues(since=datetime.now(UTC) + timedelta(minutes=1)) == []

    # A report is taken back by its author only; the others stay.
    await store.withdraw_missed_cue(
        call_id="h3", utterance_seq=customer.seq, cue="churn_risk", user="sue"
    )
    with pytest.raises(NotFound):
        await store.withdraw_missed_cue(
            call_id="h3", utterance_seq=customer.seq, cue="churn_risk", user="sue"
        )
    with pytest.raises(NotFound):
        await store.withdraw_missed_cue(
            call_id="h3", utterance_seq=customer.seq, cue="urgency", user="alice"
        )
    assert [(m.cue, m.user) for m in await store.missed_cues()] == [
        ("churn_risk", "alice"),
        ("cost_anxiety", "sue"),
    ]


async def test_retention_deletes_old_calls_only(store: Store) -> None:
    await _seed_history(store)
    cue_seq = (await store.get_call("h1")).cues[0].seq
    await store.add_feedback(call_id="h1", cue_seq=cue_seq, verdict="helpful", user="alice")
    customer_seq = next(
        u.seq for u in (await store.get_call("h1")).transcript if u.speaker == "customer"
    )
    await store.add_missed_cue(call_id="h1", utterance_seq=customer_seq, cue="urgency", user="sue")
    assert await store.delete_older_than(2.5) == 1  # h1 is three days old
    assert [c.call_id for c in await store.list_calls()] == ["h4", "h3", "h2"]
    assert await store.get_call("h1") is None
    dump = await _dump(store)
    assert '"h1"' not in dump
    assert await _count(store, "cue_feedback") == 0 and await _count(store, "utterances") == 6
    assert await _count(store, "missed_cues") == 0 and await store.missed_cues() == []
    assert await store.delete_older_than(30) == 0


async def test_retention_task_runs_at_start_and_stops(store: Store) -> None:
    await _seed_history(store)
    task = RetentionTask(store=store, days=1.5, interval_s=3600)
    task.start()
    await eventually(lambda: task.deleted == 2, what="first retention pass")  # h1 and h2
    await asyncio.wait_for(task.aclose(), 5)  # does not wait out the hour
    assert [c.call_id for c in await store.list_calls()] == ["h4", "h3"]
    with pytest.raises(ValueError):
        RetentionTask(store=store, days=0)


# -- the service as the application runs it ------------------------------------------------


async def test_service_records_until_shutdown(db_url: str, tmp_path: Path) -> None:
    bus = InProcessBus()
    config = StoreConfig(url=db_url, spool_dir=tmp_path / "spool", flush_interval_s=10.0)
    service = await StoreService.start(config, bus=bus)
    assert await service.ready()
    publish(bus, call_events("c-svc"))
    await service.aclose()  # the flush interval never elapsed: shutdown writes it all
    store = Store(url=db_url)
    detail = await store.get_call("c-svc")
    assert detail is not None and len(detail.transcript) == 2 and detail.summary is not None
    await store.aclose()


async def test_service_starts_while_the_database_is_down(tmp_path: Path) -> None:
    bus = InProcessBus()  # nothing listens on port 1: every connection is refused
    url = "postgresql+asyncpg://postgres@127.0.0.1:1/absent"
    config = StoreConfig(url=url, spool_dir=tmp_path / "spool")
    service = await StoreService.start(config, bus=bus)
    assert not await service.ready()
    publish(bus, call_events("c-down"))
    await asyncio.wait_for(service.aclose(), 30)
    assert Spool(directory=tmp_path / "spool").pending


def test_config_from_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COACH_DATABASE_URL", raising=False)
    cfg = StoreConfig.from_settings(Settings(data_dir=tmp_path))
    assert cfg.url == f"sqlite+aiosqlite:///{(tmp_path / 'coach.db').resolve()}"
    assert cfg.spool_dir == tmp_path / "spool" and cfg.retention_days > 0
    monkeypatch.setenv("COACH_DATABASE_URL", "postgresql://u:p@db:5432/coach")
    cfg = StoreConfig.from_settings(Settings(data_dir=tmp_path))
    assert cfg.url == "postgresql+asyncpg://u:p@db:5432/coach"


async def test_the_sqlite_file_is_private(tmp_path: Path) -> None:
    """It holds transcripts and customer ids: an audit found it world-readable (0644)."""
    from coach.store.db import sqlite_url

    store = Store(url=sqlite_url(tmp_path / "data"))
    await store.ensure_schema()
    await store.write_events([Received(event=e, at=0.0) for e in call_events("p1")])
    await store.aclose()
    for name in ("coach.db", "coach.db-wal", "coach.db-shm"):
        path = tmp_path / "data" / name
        if path.exists():
            assert path.stat().st_mode & 0o077 == 0, (name, oct(path.stat().st_mode))
    assert (tmp_path / "data" / "coach.db").exists()


async def test_telephony_ids_are_stored_verbatim_and_meta_as_the_call_ended(
    store: Store, tmp_path: Path
) -> None:
    """Found by a protocol audit: the stored meta went through the transcript redactor, so
    a Twilio CallSid with seven digits in a row came back as "CA74772d66756c6c2d[NUMBER]", and
    it was written from call_start only, so the marks and DTMF digits counted during the call
    were stored as 0."""
    sid = "CA74772d66756c6c2d3100000000000000"
    evs = call_events("tw-1")
    start = evs[0]
    start["meta"] = {
        **start["meta"],
        "twilio": {"call_sid": sid, "streamSid": "MZ1234567890", "marks": 0, "dtmf": 0},
        "note": f"call me on 212 555 0199, re {sid}",
    }
    end = evs[-1]
    assert end["type"] == "call_end"
    end["meta"] = {**start["meta"], "twilio": {**start["meta"]["twilio"], "marks": 2, "dtmf": 1}}
    await _record(store, tmp_path, evs)
    detail = await store.get_call("tw-1")
    assert detail is not None
    meta = detail.call.meta or {}
    assert meta["twilio"] == {"call_sid": sid, "streamSid": "MZ1234567890", "marks": 2, "dtmf": 1}
    assert "0199" not in meta["note"]  # free text is still redacted
    assert detail.call.agent_id == "alice"  # a call_end's meta does not move the columns


async def test_the_same_verdict_or_report_at_once_is_new_once(store: Store) -> None:
    """Simultaneous retries (a double click, a client's retry racing the first try) are one
    change: the write tells, not a read before it, which both retries would pass."""
    await _seed_history(store)
    cue_seq = (await store.get_call("h1")).cues[0].seq
    verdicts = await asyncio.gather(
        *(
            store.add_feedback(call_id="h1", cue_seq=cue_seq, verdict="helpful", user="alice")
            for _ in range(6)
        )
    )
    assert sum(changed for _, changed in verdicts) == 1
    assert len({record for record, _ in verdicts}) == 1
    customer = next(u for u in (await store.get_call("h3")).transcript if u.speaker == "customer")
    reports = await asyncio.gather(
        *(
            store.add_missed_cue(
                call_id="h3", utterance_seq=customer.seq, cue="churn_risk", user="sue"
            )
            for _ in range(6)
        )
    )
    assert sum(new for _, new in reports) == 1
