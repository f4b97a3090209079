"""Call lifecycle shared by every protocol: maximum length, idle watchdog, reconnect grace."""

from __future__ import annotations

import asyncio
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from coach import metrics
from coach.bus import InProcessBus, call_topic
from coach.calls import CallEnded, CallManager, CallRejected
from coach.logs import setup_logging
from coach.messages import AudioChunk, Speaker
from coach.runtime import Runtime
from coach.session import CallSession, CallState
from coach.settings import Settings

RATE = 8000
FRAME = 160  # 20 ms at 8 kHz


class LifecycleSettings(Settings):
    """The lifecycle settings, declared here until coach/settings.py has them."""

    max_call_s: float = 4 * 3600.0
    idle_timeout_s: float = 60.0
    reconnect_grace_s: float = 0.0


def make_settings(base: Settings, **lifecycle: float) -> LifecycleSettings:
    return LifecycleSettings(**{**base.model_dump(), **lifecycle})


def quiet(n: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * 1e-4).astype(np.float32)


async def feed_frames(
    session: CallSession,
    channels: dict[Speaker, np.ndarray],
    *,
    t0: float = 0.0,
    pace_s: float = 0.0,
) -> None:
    """Feed each party 20 ms frames starting at call time t0 (as an ingest handler would)."""
    n = max(len(x) for x in channels.values())
    for start in range(0, n, FRAME):
        for speaker, samples in channels.items():
            frame = samples[start : start + FRAME]
            if frame.size:
                await session.feed(
                    AudioChunk(session.call_id, speaker, frame, RATE, t0 + start / RATE)
                )
        if pace_s:
            await asyncio.sleep(pace_s)


class Collector:
    """Every event of one call, from the bus, until its topic closes."""

    def __init__(self, bus: InProcessBus, call_id: str) -> None:
        self.sub = bus.subscribe(call_topic(call_id), replay=False)
        self.events: list[dict[str, Any]] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for ev in self.sub:
            self.events.append(ev)

    async def done(self, limit_s: float = 30.0) -> list[dict[str, Any]]:
        await asyncio.wait_for(self.task, limit_s)
        return self.events


def manager_for(runtime: Runtime, settings: Settings) -> CallManager:
    return CallManager(runtime=runtime, settings=settings, bus=InProcessBus())


def types(evs: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in evs]


def idle_errors(source: str) -> float:
    return float(metrics.INGEST_ERRORS.labels(protocol=source, reason="idle_timeout")._value.get())


def test_max_length_ends_and_finalizes_with_the_last_transcript(
    runtime: Runtime, settings: Settings, billing_call: tuple[Path, Any]
) -> None:
    data, rate = sf.read(billing_call[0], dtype="float32")
    assert rate == RATE
    cut = data[: int(3.4 * RATE)]  # the agent is mid-sentence at the 3 s limit

    async def run() -> tuple[list[dict[str, Any]], CallSession, BaseException | None]:
        manager = manager_for(runtime, make_settings(settings, max_call_s=3.0))
        col = Collector(manager.bus, "long")
        session = await manager.open(call_id="long", source="pcm", speakers=("customer", "agent"))
        raised: BaseException | None = None
        try:
            await feed_frames(session, {"customer": cut[:, 0], "agent": cut[:, 1]})
        except CallEnded as exc:
            raised = exc
        await asyncio.wait_for(session.wait_ended(), 30)
        # What a handler does on CallEnded: finish (idempotent; the first reason wins).
        await manager.finish(session, "disconnect")
        with pytest.raises(CallEnded):
            session.push(AudioChunk("long", "agent", quiet(FRAME), RATE, 0.0))
        await manager.shutdown()
        return await col.done(), session, raised

    evs, session, raised = asyncio.run(run())
    assert isinstance(raised, CallEnded) and raised.reason == "max_length"
    assert isinstance(raised, RuntimeError)  # handlers catching RuntimeError keep working
    assert session.state is CallState.ENDED and session.end_reason == "max_length"
    assert types(evs)[0] == "call_start" and types(evs).count("call_end") == 1
    end = evs[-1]
    assert end["type"] == "call_end" and end["reason"] == "max_length"
    assert end["duration_s"] == pytest.approx(3.0, abs=0.03)
    finals = [e for e in evs if e["type"] == "transcript" and e["speaker"] == "agent"]
    assert finals and finals[-1]["t_end"] <= 3.0 + 1e-6  # the open utterance was finalized


def test_a_worker_that_fell_behind_joins_queued_frames(
    runtime: Runtime, settings: Settings
) -> None:
    """Frames queued faster than the pipeline takes them go through in joined steps of at
    most MAX_JOINED_S, a gap still starts a step of its own, and no sample is lost."""
    from coach.session import MAX_JOINED_S

    async def run() -> None:
        manager = manager_for(runtime, settings)
        session = await manager.open(call_id="behind", source="twilio", speakers=("customer",))
        party = session.parties["customer"]
        steps: list[AudioChunk] = []
        real_push = party.push

        async def noting_push(chunk: AudioChunk) -> None:
            steps.append(chunk)
            await real_push(chunk)

        party.push = noting_push  # type: ignore[method-assign]
        # 2 s of 20 ms frames queued without yielding (feed only awaits a full queue), then
        # 1 s more after a 0.5 s hole in the sender's timestamps.
        await feed_frames(session, {"customer": quiet(2 * RATE)})
        await feed_frames(session, {"customer": quiet(RATE, seed=1)}, t0=2.5)
        await manager.finish(session, "stop")
        frames = 3 * RATE // FRAME
        # Without joining there would be one step per frame; how many frames each step takes
        # depends on how the feeder and the worker interleave (a busy machine: fewer).
        assert len(steps) < frames / 2
        assert max(c.duration_s for c in steps) <= MAX_JOINED_S + FRAME / RATE
        assert any(c.t0 == pytest.approx(2.5) for c in steps)  # the hole was not joined over
        assert sum(c.duration_s for c in steps) == pytest.approx(3.0)
        assert party.audio_s == pytest.approx(3.5, abs=0.02)  # the hole became silence
        await manager.shutdown()

    asyncio.run(run())


def test_feeding_an_ended_call_raises_call_ended(runtime: Runtime, settings: Settings) -> None:
    async def run() -> None:
        manager = manager_for(runtime, settings)
        session = await manager.open(call_id="gone", source="twilio", speakers=("customer",))
        await feed_frames(session, {"customer": quiet(RATE // 2)})
        await manager.finish(session, "stop")
        chunk = AudioChunk("gone", "customer", quiet(FRAME), RATE, 0.5)
        with pytest.raises(CallEnded, match="gone has ended") as info:
            await session.feed(chunk)
        assert info.value.reason == "stop"
        with pytest.raises(CallEnded):
            session.push(chunk)
        await manager.shutdown()

    asyncio.run(run())


def test_audio_waiting_for_room_when_its_connection_is_cancelled_is_still_heard(
    runtime: Runtime, settings: Settings
) -> None:
    """A server that cancels a handler as its client goes (Starlette's test client does) cut
    short the chunk waiting for queue room: the reconnected part of a call was placed 0.2 s
    early, over the end of the first (a loaded CI run). The chunk is queued, and counted."""

    async def run() -> None:
        manager = manager_for(runtime, make_settings(settings, backpressure_s=30.0))
        session = await manager.open(call_id="cut", source="audiohook", speakers=("customer",))
        # A full queue that nobody drains (the party's worker reads the one it was given).
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
        queue.put_nowait(AudioChunk("cut", "customer", quiet(FRAME), RATE, 0.0))
        drained, session._queues["customer"] = session._queues["customer"], queue
        last = AudioChunk("cut", "customer", quiet(FRAME), RATE, FRAME / RATE)
        waiting = asyncio.create_task(session.feed(last))
        await asyncio.sleep(0)  # it waits for room
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert session.fed_s == pytest.approx(last.t1)
        assert queue.get_nowait() is last  # queued in place of the oldest (a full queue)
        session._queues["customer"] = drained
        await manager.finish(session, "stop")
        await manager.shutdown()

    asyncio.run(run())


def test_idle_watchdog_ends_a_silent_call_but_not_a_busy_one(
    runtime: Runtime, settings: Settings
) -> None:
    before = idle_errors("audiohook")

    async def run() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        manager = manager_for(runtime, make_settings(settings, idle_timeout_s=0.3))
        cols = Collector(manager.bus, "idle"), Collector(manager.bus, "busy")
        idle = await manager.open(call_id="idle", source="audiohook", speakers=("customer",))
        busy = await manager.open(call_id="busy", source="audiohook", speakers=("customer",))
        await feed_frames(idle, {"customer": quiet(FRAME * 5)})
        # The busy call gets a frame every 20 ms of wall time for ~1 s: the idle one nothing.
        await feed_frames(busy, {"customer": quiet(RATE)}, pace_s=0.02)
        await asyncio.wait_for(idle.wait_ended(), 5)
        assert idle.end_reason == "idle_timeout"
        assert busy.state is CallState.LIVE
        with pytest.raises(CallEnded) as info:
            await idle.feed(AudioChunk("idle", "customer", quiet(FRAME), RATE, 0.1))
        assert info.value.reason == "idle_timeout"
        await manager.finish(busy, "end")
        await manager.shutdown()
        return await cols[0].done(), await cols[1].done()

    t = time.monotonic()
    idle_evs, busy_evs = asyncio.run(run())
    assert time.monotonic() - t < 10
    assert idle_evs[-1]["type"] == "call_end" and idle_evs[-1]["reason"] == "idle_timeout"
    assert busy_evs[-1]["reason"] == "end"
    assert idle_errors("audiohook") == before + 1


def test_reconnect_within_grace_keeps_one_call(runtime: Runtime, settings: Settings) -> None:
    """What /ingest/pcm does with the grace period: detach on disconnect, re-open, continue."""

    async def run() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        manager = manager_for(runtime, make_settings(settings, reconnect_grace_s=2.0))
        col, other_col = Collector(manager.bus, "rc"), Collector(manager.bus, "other")
        session = await manager.open(call_id="rc", source="pcm", speakers=("customer", "agent"))
        other = await manager.open(call_id="other", source="pcm", speakers=("customer",))
        await feed_frames(session, {"customer": quiet(RATE), "agent": quiet(RATE, 1)})
        await feed_frames(other, {"customer": quiet(RATE // 2)})
        first_seq = session.last_event["seq"] if session.last_event else 0
        await manager.detach(session, "disconnect")  # the first connection dropped
        assert manager.is_detached("rc") and session.state is CallState.LIVE
        with pytest.raises(CallRejected):  # a re-attach must match the call
            await manager.open(call_id="rc", source="pcm", speakers=("customer",))
        await asyncio.sleep(0.2)
        again = await manager.open(call_id="rc", source="pcm", speakers=("customer", "agent"))
        assert again is session and not manager.is_detached("rc")
        assert session.reconnects == 1
        # The new connection counts its own samples from 0: it places them after fed_s.
        offset = session.fed_s
        assert offset == pytest.approx(1.0)
        await feed_frames(session, {"customer": quiet(RATE, 2), "agent": quiet(RATE, 3)}, t0=offset)
        await asyncio.sleep(2.2)  # longer than the grace period: the re-attached call lives on
        assert session.state is CallState.LIVE
        await manager.finish(session, "end")
        assert other.state is CallState.LIVE
        await feed_frames(other, {"customer": quiet(RATE // 2)}, t0=other.fed_s)
        await manager.finish(other, "end")
        await manager.shutdown()
        assert session.parties["customer"].audio_s == pytest.approx(2.0)
        evs = await col.done()
        assert [e for e in evs if e["seq"] > first_seq], "events continue after the reconnect"
        return evs, await other_col.done()

    evs, other_evs = asyncio.run(run())
    assert types(evs).count("call_start") == 1 and types(evs).count("call_end") == 1
    seqs = [e["seq"] for e in evs]
    assert seqs == list(range(1, len(evs) + 1))  # one event stream, seq continues
    assert evs[-1]["reason"] == "end" and evs[-1]["duration_s"] == pytest.approx(2.0)
    t_emit = [e["t_emit"] for e in evs]
    assert t_emit == sorted(t_emit) and t_emit[-1] == pytest.approx(2.0)
    assert other_evs[-1]["reason"] == "end" and other_evs[-1]["duration_s"] == pytest.approx(1.0)


def test_grace_expiry_finalizes_with_disconnect(runtime: Runtime, settings: Settings) -> None:
    async def run() -> tuple[list[dict[str, Any]], CallSession, CallSession]:
        manager = manager_for(
            runtime, make_settings(settings, reconnect_grace_s=0.3, idle_timeout_s=0.2)
        )
        col = Collector(manager.bus, "lost")
        session = await manager.open(call_id="lost", source="pcm", speakers=("customer",))
        other = await manager.open(call_id="alive", source="pcm", speakers=("customer",))
        await feed_frames(session, {"customer": quiet(RATE // 2)})
        t = time.monotonic()
        await manager.detach(session, "disconnect")
        # Detached calls wait for their grace period, not the (shorter) idle timeout.
        waiter = asyncio.create_task(session.wait_ended())
        for i in range(30):  # the neighbour keeps streaming in real time meanwhile
            await other.feed(AudioChunk("alive", "customer", quiet(FRAME), RATE, i * 0.02))
            await asyncio.sleep(0.02)
        await asyncio.wait_for(waiter, 5)
        assert time.monotonic() - t >= 0.3
        assert not manager.is_detached("lost")
        # A later connection with that id starts a new call.
        fresh = await manager.open(call_id="lost", source="pcm", speakers=("customer",))
        assert fresh is not session
        await manager.shutdown()
        return await col.done(), session, other

    evs, session, other = asyncio.run(run())
    assert session.end_reason == "disconnect"
    assert types(evs).count("call_end") == 1 and evs[-1]["reason"] == "disconnect"
    assert other.end_reason == "shutdown"  # untouched until the server stopped


def test_an_ending_call_keeps_its_reason_whatever_the_watchdog_sees(
    runtime: Runtime, settings: Settings
) -> None:
    """Found by a fresh-clone CI run under load: a reconnect grace expired, and before the
    call's end task ran, the idle watchdog saw a silent call no longer detached and ended it
    as `idle_timeout` instead of `disconnect`. Here the watchdog's check lands exactly in that
    gap."""

    async def run() -> CallSession:
        manager = manager_for(runtime, make_settings(settings, idle_timeout_s=0.0))
        session = await manager.open(call_id="gap", source="pcm", speakers=("customer",))
        await feed_frames(session, {"customer": quiet(RATE // 2)})
        ending = asyncio.create_task(manager.finish(session, "disconnect"))
        await asyncio.sleep(0)  # finish() has spawned the end task, which has not run yet
        assert manager.check_idle(0.1, now=time.monotonic() + 60) == []
        await ending
        await manager.shutdown()
        return session

    assert asyncio.run(run()).end_reason == "disconnect"


def test_grace_off_detach_finishes_at_once(runtime: Runtime, settings: Settings) -> None:
    async def run() -> CallSession:
        manager = manager_for(runtime, settings)
        session = await manager.open(call_id="off", source="pcm", speakers=("customer",))
        await manager.detach(session, "disconnect")
        assert session.state is CallState.ENDED and not manager.is_detached("off")
        await manager.shutdown()
        return session

    assert asyncio.run(run()).end_reason == "disconnect"


def test_a_call_id_used_again_after_its_call_ended_opens_a_new_leg(
    runtime: Runtime, settings: Settings
) -> None:
    """A transfer that starts a new stream under the same CallSid (or a client that reuses
    ids) used to continue the ended call's record: its agent, start and timeline were
    overwritten by the second leg's. Each leg is now its own call; a reconnect within the
    grace period still re-attaches the latest leg under the telephony's id."""

    async def run() -> None:
        manager = manager_for(runtime, make_settings(settings, reconnect_grace_s=2.0))
        first = await manager.open(
            call_id="tx", source="pcm", speakers=("customer",), meta={"agent_id": "ann"}
        )
        await feed_frames(first, {"customer": quiet(RATE)})
        await manager.finish(first, "stop")
        second = await manager.open(
            call_id="tx", source="pcm", speakers=("customer",), meta={"agent_id": "cal"}
        )
        assert second is not first and second.call_id == "tx~2"
        assert second.meta == {"agent_id": "cal", "telephony_call_id": "tx"}
        assert manager.get("tx") is first and first.meta["agent_id"] == "ann"
        # The second leg's connection drops and comes back under the telephony's id.
        await manager.detach(second, "disconnect")
        again = await manager.open(call_id="tx", source="pcm", speakers=("customer",))
        assert again is second
        with pytest.raises(CallRejected):  # live: a second stream for it is a duplicate
            await manager.open(call_id="tx", source="pcm", speakers=("customer",))
        await manager.finish(second, "stop")
        third = await manager.open(call_id="tx", source="pcm", speakers=("customer",))
        assert third.call_id == "tx~3"
        await manager.finish(third, "stop")
        # Forgotten after its retention, an ended id still opens a new leg.
        manager.ended_retention_s = 0.0
        fresh = await manager.open(call_id="other", source="pcm", speakers=("customer",))
        await manager.finish(fresh, "stop")
        await asyncio.sleep(0.05)
        assert manager.get("other") is None
        assert (
            await manager.open(call_id="other", source="pcm", speakers=("customer",))
        ).call_id == "other~2"
        await manager.shutdown()

    asyncio.run(run())


def test_a_reused_id_opens_a_new_leg_after_the_store_says_it_ended(
    runtime: Runtime, settings: Settings
) -> None:
    """After a restart (or on another instance) only the store knows the id's earlier legs;
    a store that fails or is slow never holds up the call, which then keeps its id."""

    async def run() -> None:
        manager = manager_for(runtime, settings)
        asked: list[str] = []

        async def stored(call_id: str) -> set[str]:
            asked.append(call_id)
            return {"tx", "tx~2", "tx~4"} if call_id == "tx" else set()

        manager.ended_lookup = stored
        leg = await manager.open(call_id="tx", source="pcm", speakers=("customer",))
        assert leg.call_id == "tx~3" and leg.meta["telephony_call_id"] == "tx"
        assert (
            await manager.open(call_id="new", source="pcm", speakers=("customer",))
        ).call_id == "new"
        assert asked == ["tx", "new"]
        await manager.finish(leg, "stop")
        # Ended here as well: the next leg skips both what ran here and what is stored.
        assert (
            await manager.open(call_id="tx", source="pcm", speakers=("customer",))
        ).call_id == "tx~5"

        async def broken(call_id: str) -> set[str]:
            raise OSError("database is down")

        manager.ended_lookup = broken
        assert (
            await manager.open(call_id="b", source="pcm", speakers=("customer",))
        ).call_id == "b"

        async def slow(call_id: str) -> set[str]:
            await asyncio.sleep(30)
            return {call_id}

        manager.ended_lookup = slow
        started = time.monotonic()
        assert (
            await manager.open(call_id="s", source="pcm", speakers=("customer",))
        ).call_id == "s"
        assert time.monotonic() - started < 5

        # Two connections for one new id while the store is asked: one call, one refusal.
        async def pause(call_id: str) -> set[str]:
            await asyncio.sleep(0.05)
            return set()

        manager.ended_lookup = pause
        results = await asyncio.gather(
            manager.open(call_id="twice", source="pcm", speakers=("customer",)),
            manager.open(call_id="twice", source="pcm", speakers=("customer",)),
            return_exceptions=True,
        )
        assert sorted(type(r).__name__ for r in results) == ["CallRejected", "CallSession"]
        await manager.shutdown()

    asyncio.run(run())


def test_idle_endings_log_under_their_own_call_id(
    runtime: Runtime, settings: Settings, log_stream: io.StringIO
) -> None:
    """Found by a docs audit: the idle watchdog, started while the first call opened, logged
    every later call's idle timeout and ending under that first call's id."""
    setup_logging("info", json_format=True, stream=log_stream)

    async def run() -> None:
        manager = manager_for(runtime, make_settings(settings, idle_timeout_s=0.3))

        async def connection(call_id: str) -> CallSession:  # each ingest socket is its task
            return await manager.open(call_id=call_id, source="pcm", speakers=("customer",))

        calls = [await asyncio.create_task(connection(c)) for c in ("log-a", "log-b")]
        for _ in range(100):
            if all(c.state is CallState.ENDED for c in calls):
                break
            await asyncio.sleep(0.05)
        await manager.shutdown()

    asyncio.run(run())
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    about = [(r["message"], r.get("call_id")) for r in lines if "log-b" in r["message"]]
    assert any("no audio" in m for m, _ in about) and any("ended" in m for m, _ in about)
    assert all(cid == "log-b" for _, cid in about), about


def test_a_call_ended_twice_at_once_ends_once(
    runtime: Runtime, settings: Settings, log_stream: io.StringIO
) -> None:
    """A shutdown and the call's own connection closing ended it twice at once: an outside
    ingest audit saw every such call's "ended" line twice. The second end joins the first."""
    setup_logging("info", json_format=True, stream=log_stream)

    async def run() -> CallSession:
        manager = manager_for(runtime, settings)
        session = await manager.open(call_id="twice", source="pcm", speakers=("customer",))
        await asyncio.gather(manager.finish(session, "shutdown"), manager.finish(session, "end"))
        # And once more after that ending is over: the connection's handler saw its stream
        # close only then. Nothing is left to do, and nothing is logged again.
        await manager.finish(session, "disconnect")
        await manager.shutdown()
        return session

    assert asyncio.run(run()).end_reason == "shutdown"
    ended = [
        r for r in map(json.loads, log_stream.getvalue().splitlines()) if "ended (" in r["message"]
    ]
    assert [r["message"] for r in ended] == ["call twice ended (shutdown)"]


def test_a_call_whose_connection_goes_while_it_starts_is_ended(
    runtime: Runtime, settings: Settings
) -> None:
    """A server cancels a connection's handler when the peer goes; cancelled inside `open()`,
    the call used to stay half-open, fed by nobody, until the idle watchdog."""

    async def run() -> CallSession:
        manager = manager_for(runtime, settings)
        opening = asyncio.create_task(
            manager.open(call_id="gone", source="pcm", speakers=("customer",))
        )
        while manager.get("gone") is None:  # noqa: ASYNC110 (registered, still starting)
            await asyncio.sleep(0)
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening
        session = manager.get("gone")
        assert session is not None
        for _ in range(200):
            if session.state is CallState.ENDED:
                break
            await asyncio.sleep(0.01)
        await manager.shutdown()
        return session

    session = asyncio.run(run())
    assert session.state is CallState.ENDED and session.end_reason == "disconnect"


def test_a_drain_waits_for_an_ending_call_to_be_written(
    runtime: Runtime, settings: Settings, billing_call: tuple[Path, Any]
) -> None:
    """A call that is over but still finalizing (its last transcript, its `call_end`) holds
    a drain: the server must not shut down under it. Session 33 saw "drained" logged before
    the last call's "ended" line."""
    data, _ = sf.read(billing_call[0], dtype="float32")
    cut = data[: int(3.4 * RATE)]  # mid-sentence: ending it decodes the open utterance

    async def run() -> tuple[int, list[str]]:
        manager = manager_for(runtime, settings)
        col = Collector(manager.bus, "drained")
        session = await manager.open(
            call_id="drained", source="pcm", speakers=("customer", "agent")
        )
        await feed_frames(session, {"customer": cut[:, 0], "agent": cut[:, 1]})
        ending = asyncio.create_task(manager.finish(session, "end"))
        for _ in range(100):  # its finalizing begins: it no longer holds a slot
            if session.state is not CallState.LIVE:
                break
            await asyncio.sleep(0)
        assert session.state is CallState.ENDING and manager.holding() == 0
        live = await manager.drain(30.0, abandon=lambda: False)
        kept = manager.ended_kept()  # the ending is done once the call is retired
        await ending
        await manager.shutdown()
        return live + (1 - kept), types(await col.done())

    not_done, evs = asyncio.run(run())
    assert not_done == 0
    assert evs.count("call_end") == 1
