"""The registry of live calls in this process, shared by every ingest protocol and replay.

Lifecycle rules shared by every protocol (settings read with defaults until they are declared):

- `max_call_s` (4 h): audio placed at or after it ends the call with reason `max_length`;
  the session then raises `CallEnded` from `feed`/`push` (see coach/session.py).
- `idle_timeout_s` (60 s, 0 = off): a watchdog ends calls that received no audio for that
  long (wall clock) with reason `idle_timeout`, counted in
  `coach_ingest_errors_total{protocol=<source>,reason="idle_timeout"}`.
- `reconnect_grace_s` (0 = off): `detach(session, "disconnect")` keeps a call whose
  connection dropped open for that long; `open()` with the same call_id (same source and
  parties) re-attaches the SAME session, whose clock continues at `session.fed_s`.
  If nobody comes back, the call is finalized with the detach reason. While the instance
  drains, with a shared bus (Redis), a dropped call is handed over instead (`_spawn_hand_over`):
  stopped here without ending, for the instance its reconnect reaches to resume.
- `max_calls` (0 = no limit): admission control. `open()` of a NEW call while `max_calls`
  calls hold a slot (live, attached or waiting for a reconnect) raises
  `CallRejected("over_capacity")`, counted in `coach_calls_rejected_total{reason}`; each
  ingest turns it into its protocol's "try again later" (WebSocket close 1013, AudioHook
  `disconnect`, AudioSocket error frame, HTTP 503 with Retry-After). A reconnect of a call
  within its grace period re-attaches and is never refused. `/health/ready` answers 503
  while `at_capacity()` or `overloaded()`, so a load balancer sends new calls elsewhere.
- A call id used again after its call ended (a transfer that starts a new stream, a client
  that reuses ids) opens a new LEG, `{call_id}~2`, `~3`...: the ended call keeps its own
  history, agent and timeline. A reconnect within the grace period re-attaches the latest
  leg under the telephony's id. Where a store runs, `ended_lookup` also finds legs that
  ended before a restart or on another instance.
- With several instances on one Redis, `open()` of an id that another live instance runs
  (its owner key names it, and that instance's liveness key has not expired) is refused like
  a local duplicate, `CallRejected("duplicate_call")`, after waiting up to the bus's
  `handover_wait_s` for that instance to let it go; an id whose owner is gone (killed,
  key expired) opens here, and a reconnect continues the call from its saved session state.
  A reconnect sent the moment its instance was killed thus waits out the dead instance's
  liveness key (about 3 s) instead of being refused, and one sent while a draining
  instance hands its call over waits for that (HAND_OVER_WAIT_S more).
  Redis unreachable or slower than OWNER_LOOKUP_S: the call opens (logged).
- An ended call stays visible (`get()`, its events' replay for late panels) for
  ENDED_RETENTION_S, then the manager drops its session and its event history (the store
  keeps the call). Without this a long-running server kept every call it ever had: the soak
  test (`scripts/soak.py`) measured +5.6 MiB per call, mostly each party's audio ring.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from coach import metrics
from coach.bus import InProcessBus, agent_topic, call_topic
from coach.logs import call_fields, call_id_var
from coach.messages import Speaker
from coach.redaction import with_customer_alias
from coach.runtime import Runtime
from coach.session import (
    HANDED_OVER,
    HANDING_OVER,
    CallEnded,
    CallSession,
    CallState,
    HistoryLookup,
)
from coach.settings import Settings

log = logging.getLogger(__name__)


def _call_task(
    session: CallSession, coro: Coroutine[Any, Any, None], *, name: str
) -> asyncio.Task[None]:
    """A task working for one call, whoever starts it: its log lines carry that call's id."""
    context = contextvars.copy_context()
    context.run(call_id_var.set, session.call_id)
    return asyncio.create_task(coro, name=name, context=context)


EndedLookup = Callable[[str], Awaitable[set[str]]]
"""call id -> which of it and its legs (`id~2`...) have ended, by the store's record."""
LiveLookup = Callable[[str], Awaitable[bool]]
"""call id -> whether the store shows it running on some instance now (written lately)."""

__all__ = ["CallEnded", "CallManager", "CallRejected"]

DEFAULT_IDLE_TIMEOUT_S = 60.0
DEFAULT_RECONNECT_GRACE_S = 0.0
OVER_CAPACITY = "over_capacity"
DRAINING = "draining"
"""A new call refused because the instance is stopping (`CallManager.draining`)."""
TRANSIENT_REFUSALS = frozenset({OVER_CAPACITY, DRAINING})
"""Refusals a client should retry later or on another instance (1013, 503 Retry-After)."""
PERSONAL_LIMIT = "personal_limit"
RETRY_AFTER_S = 10
"""What refusals at capacity suggest as a retry delay (HTTP Retry-After, AudioHook info)."""
OVERLOAD_WAIT_S = 1.0
"""ASR queueing delay above which the instance reports itself overloaded (not ready)."""
STORE_LOOKUP_S = 0.5
"""How long opening a call waits for the store to say whether its id was used before."""
OWNER_LOOKUP_S = 0.5
"""How long opening a call waits for the bus (Redis) to say whether another instance runs it."""
HANDOVER_POLL_S = 0.25
"""How often an open of a call live elsewhere asks again whether its owner let it go."""
HAND_OVER_WAIT_S = 20.0
"""How much longer an open waits for a call whose draining instance says it is handing it
over (`HANDING_OVER` in its session state) once the usual wait is up."""
DUPLICATE_CALL = "duplicate_call"
for _reason in (OVER_CAPACITY, DRAINING, DUPLICATE_CALL):
    # At 0 from the start: an alert on increase() misses a series that first appears at 1.
    metrics.CALLS_REJECTED.labels(reason=_reason)
ENDED_RETENTION_S = 120.0
"""How long an ended call's session and event history stay in memory."""
DRAIN_POLL_S = 0.2
"""How often a drain looks whether the live calls have ended."""
MAX_ENDED_KEPT = 200
"""At most this many ended calls are kept; beyond it the oldest are dropped at once."""


class CallRejected(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    @property
    def try_again_later(self) -> bool:
        """A transient refusal (capacity, a stopping instance): the same call may succeed
        later or on another instance."""
        return self.reason in TRANSIENT_REFUSALS


class CallManager:
    def __init__(self, *, runtime: Runtime, settings: Settings, bus: InProcessBus) -> None:
        self.runtime = runtime
        self.settings = settings
        self.bus = bus
        self._calls: dict[str, CallSession] = {}
        self.history_lookup: HistoryLookup | None = None
        """Set when a history store runs: a customer's previous calls (repeat_contact)."""
        self._ending: set[asyncio.Task[None]] = set()
        self._end_tasks: dict[CallSession, asyncio.Task[None]] = {}
        """The ending of each call being ended, so that a second end of it joins the first."""
        self._ended: dict[str, tuple[CallSession, asyncio.TimerHandle]] = {}
        """Ended calls still kept (see ENDED_RETENTION_S), oldest first."""
        self.ended_retention_s = ENDED_RETENTION_S
        self._detached: dict[str, tuple[str, asyncio.Task[None]]] = {}
        """call_id -> (reason it was detached for, its grace timer)."""
        self._watchdog: asyncio.Task[None] | None = None
        self._latest_leg: dict[str, str] = {}
        """Telephony call id -> the id of its latest leg, where it was used again."""
        self.ended_lookup: EndedLookup | None = None
        """Set when a history store runs: which legs of a call id the store holds as ended."""
        self.live_lookup: LiveLookup | None = None
        """Set when a store runs beside Redis: asked only when Redis cannot say who runs a
        call (`_claim_or_refuse`)."""
        self._unclaimed: set[str] = set()
        """Call ids whose last claim Redis could not answer."""
        self.draining = False
        """The instance is stopping (`drain`): new calls are refused, live ones go on."""
        metrics.DRAINING.set(0)

    @property
    def idle_timeout_s(self) -> float:
        return float(self.settings.idle_timeout_s)

    @property
    def reconnect_grace_s(self) -> float:
        return float(self.settings.reconnect_grace_s)

    def get(self, call_id: str) -> CallSession | None:
        return self._calls.get(call_id)

    def live(self) -> list[CallSession]:
        return [c for c in self._calls.values() if c.state is CallState.LIVE]

    @property
    def max_calls(self) -> int:
        return int(self.settings.max_calls)

    def holding(self) -> int:
        """Calls that hold an admission slot: live, attached or waiting for a reconnect."""
        return sum(1 for c in self._calls.values() if c.state is CallState.LIVE)

    def at_capacity(self) -> bool:
        limit = self.max_calls
        return limit > 0 and self.holding() >= limit

    def overloaded(self) -> bool:
        """The shared ASR queue delays work by more than OVERLOAD_WAIT_S: take no new calls."""
        return self.runtime.asr_scheduler.load().wait_s > OVERLOAD_WAIT_S

    def _reject(self, reason: str, message: str) -> CallRejected:
        metrics.CALLS_REJECTED.labels(reason=reason).inc()
        log.warning("call refused (%s): %s", reason, message)
        return CallRejected(reason, message)

    def is_detached(self, call_id: str) -> bool:
        """True while the call waits, within its grace period, for its connection to return."""
        return call_id in self._detached

    async def open(
        self,
        *,
        call_id: str,
        source: str,
        speakers: tuple[Speaker, ...],
        inline: bool = False,
        meta: dict[str, Any] | None = None,
        started_by: str | None = None,
    ) -> CallSession:
        """`started_by`: the signed-in person who starts a call of their own (the demo call,
        their microphone over WebRTC), as opposed to telephony: see `_admit_personal`."""
        reattached = self._admit(call_id, source=source, speakers=speakers)
        if reattached is not None:
            return reattached
        stored_ended = await self._stored_ended_legs(call_id)
        # The id the call would run under may be live on another instance sharing the bus
        # (a connection routed to the wrong instance, a client that reuses ids): refused
        # like a local duplicate, or both instances would write one stored call. Claimed,
        # not just looked up, so two instances opening one id at once cannot both go on.
        claimed = self._new_leg(call_id, stored_ended)
        if await self._claim_or_refuse(claimed):
            # Its owner let it go while we waited: the call may have ended there.
            stored_ended = await self._stored_ended_legs(call_id)
        if claimed in self._unclaimed and await self._stored_live(claimed):
            # Redis cannot say who runs it, and the shared store shows another instance
            # writing it now: a new leg, not one record of two calls (an outside scaling
            # audit with Redis down: the same id on two instances, one record, lines lost).
            stored_ended.add(claimed)
        self._unclaimed.discard(claimed)
        # Ended on another instance (then this is a new leg), which the store may not have
        # written yet but Redis says; asked even when the claim came at once: the owner may
        # have let the call go a moment before it (found by an outside audit with two
        # servers: an id reused on B 0.2-0.5 s after its call ended on A continued the
        # ended call's record, which then mixed both calls, under the second one's agent).
        if await self._ended_elsewhere(claimed):
            stored_ended.add(claimed)
        try:
            # Checked again after the lookups: another connection may have opened the id.
            reattached = self._admit(call_id, source=source, speakers=speakers)
            if reattached is not None:
                return reattached
            if started_by is not None:
                self._admit_personal(started_by)
        except BaseException:
            if claimed not in self._calls:  # a local call of that id keeps its claim
                await self.bus.release_call(claimed)
            raise
        if started_by is not None:
            meta = {**(meta or {}), "started_by": started_by}
        telephony_id = call_id
        call_id = self._new_leg(call_id, stored_ended)
        if call_id != claimed:  # a local call of that id ended meanwhile: another leg
            await self.bus.release_call(claimed)
            await self._claim_or_refuse(call_id)
            self._unclaimed.discard(call_id)
        if call_id != telephony_id:
            self._latest_leg[telephony_id] = call_id
            meta = {**(meta or {}), "telephony_call_id": telephony_id}
            log.warning(
                "call id %s was used again after its call ended: this call is %s",
                telephony_id,
                call_id,
            )
        session = CallSession(
            call_id=call_id,
            source=source,
            speakers=speakers,
            runtime=self.runtime,
            settings=self.settings,
            bus=self.bus,
            inline=inline,
            # A customer id that is a phone number or an email goes no further than here.
            meta=with_customer_alias(
                meta, lambda: self.settings.customer_alias_key, self.settings.phone_region
            ),
        )
        session.on_end_request = self._end_requested
        session.history_lookup = self.history_lookup
        self._calls[call_id] = session
        call_id_var.set(call_id)  # the connection's own log lines name its call from here on
        starting = asyncio.ensure_future(session.start())
        try:
            await asyncio.shield(starting)
        except asyncio.CancelledError:
            # The connection went away while the call was being set up (a server cancels its
            # handler): finish starting, then end it, rather than leave a call nobody feeds.
            def end_once_started(task: asyncio.Future[None]) -> None:
                if not task.cancelled() and task.exception() is None:
                    self._spawn_end(session, "disconnect")

            starting.add_done_callback(end_once_started)
            raise
        self._ensure_watchdog()
        log.info(
            "call %s started (%s, %s)",
            call_id,
            source,
            ",".join(speakers),
            extra=call_fields(call_id),
        )
        return session

    def _admit(
        self, call_id: str, *, source: str, speakers: tuple[Speaker, ...]
    ) -> CallSession | None:
        """The detached call to re-attach, None for a new call, or CallRejected."""
        current = self._latest_leg.get(call_id, call_id)
        existing = self._calls.get(current)
        if (
            existing is not None
            and current in self._detached
            and existing.state is CallState.LIVE
            and existing.end_requested is None
        ):
            return self._reattach(existing, source=source, speakers=speakers)
        if (
            existing is not None
            and existing.state in (CallState.NEW, CallState.LIVE, CallState.ENDING)
            and existing.end_requested != HANDED_OVER  # going elsewhere: refused as draining
        ):
            raise self._reject(DUPLICATE_CALL, f"call {current} is already live")
        if self.draining:
            # After a reconnect's re-attach above: a call already here may come back.
            raise self._reject(
                DRAINING,
                f"this instance is stopping; open the call on another instance "
                f"(retry in {RETRY_AFTER_S} s)",
            )
        if self.at_capacity():
            raise self._reject(
                OVER_CAPACITY,
                f"at capacity ({self.holding()} calls, COACH_MAX_CALLS={self.max_calls}); "
                f"try again in {RETRY_AFTER_S} s or another instance",
            )
        return None

    def _admit_personal(self, person: str) -> None:
        """One call of their own per person, and such calls take at most half the slots.

        Found by a security audit: one agent posted eight WebRTC offers and filled the
        instance, so the telephony's next real call was refused."""
        personal = [c for c in self.live() if c.meta.get("started_by") is not None]
        mine = next((c for c in personal if c.meta.get("started_by") == person), None)
        if mine is not None:
            raise self._reject(
                PERSONAL_LIMIT, f"{person} already runs a call of their own ({mine.call_id})"
            )
        limit = self.max_calls
        if limit > 0 and len(personal) >= max(1, limit // 2):
            raise self._reject(
                OVER_CAPACITY,
                f"calls started by people use their share of COACH_MAX_CALLS={limit} "
                f"({len(personal)} running); the rest is kept for telephony",
            )

    async def _stored_ended_legs(self, call_id: str) -> set[str]:
        """Legs of `call_id` the store holds as ended: calls run before a restart or elsewhere.

        Best effort: a slow or failing store must not hold up a call, which then opens as if
        the id were new (and continues a stored record of that id, as before legs existed).
        """
        if self.ended_lookup is None:
            return set()
        try:
            async with asyncio.timeout(STORE_LOOKUP_S):
                return await self.ended_lookup(call_id)
        except Exception as exc:  # TimeoutError included
            log.warning(
                "call %s: stored calls under this id unknown (%r)",
                call_id,
                exc,
                extra=call_fields(call_id),
            )
            return set()

    async def _stored_live(self, call_id: str) -> bool:
        """The store's word on whether another instance runs `call_id` now (best effort)."""
        if self.live_lookup is None or call_id in self._calls:
            return False
        try:
            async with asyncio.timeout(STORE_LOOKUP_S):
                return await self.live_lookup(call_id)
        except Exception as exc:  # TimeoutError included
            log.warning(
                "call %s: whether the store has it live is unknown (%r)",
                call_id,
                exc,
                extra=call_fields(call_id),
            )
            return False

    async def _claim_or_refuse(self, call_id: str) -> bool:
        """Claim `call_id` on the shared bus, or CallRejected(duplicate_call) when another
        live instance runs it. True when the claim came only after waiting for its owner.

        A call whose owner is gone (owner key expired, or its instance stopped refreshing
        its liveness key: killed) is not live: a reconnect then opens it here. A reconnect
        sent within seconds of its instance's death finds that instance's liveness key
        still there; the open waits up to the bus's `handover_wait_s` (the key's lifetime)
        for the owner to die or let the call go, and is refused only if it never does.
        Best effort like the store lookup: Redis unreachable or slow must not hold up a call.
        """
        deadline = time.monotonic() + self.bus.handover_wait_s
        waited = extended = False
        while True:
            try:
                async with asyncio.timeout(OWNER_LOOKUP_S):
                    owner = await self.bus.claim_call(call_id)
            except Exception as exc:  # TimeoutError included
                log.warning(
                    "call %s: cannot tell whether another instance runs it (%r); opening it here",
                    call_id,
                    exc,
                    extra=call_fields(call_id),
                )
                self._unclaimed.add(call_id)
                return waited
            self._unclaimed.discard(call_id)
            if owner is None:
                if waited:
                    log.info(
                        "call %s: its instance let it go (ended, handed over or died); it "
                        "continues here",
                        call_id,
                        extra=call_fields(call_id),
                    )
                return waited
            if time.monotonic() >= deadline:
                if await self._being_handed_over(call_id) and not extended:
                    # Its draining instance is still transcribing the last words (slow under
                    # load): worth the wait, the call then goes on here as the same call.
                    deadline, extended = time.monotonic() + HAND_OVER_WAIT_S, True
                    continue
                raise self._reject(
                    DUPLICATE_CALL, f"call {call_id} is already live (on instance {owner})"
                )
            if not waited:
                log.info(
                    "call %s is live on instance %s: waiting up to %.1f s for it to let go",
                    call_id,
                    owner,
                    self.bus.handover_wait_s,
                    extra=call_fields(call_id),
                )
            waited = True
            await asyncio.sleep(min(HANDOVER_POLL_S, max(0.0, deadline - time.monotonic())))

    async def _being_handed_over(self, call_id: str) -> bool:
        """True when the call's shared session state says its instance is handing it over."""
        try:
            async with asyncio.timeout(OWNER_LOOKUP_S):
                state = await self.bus.load_session_state(call_id)
        except Exception:  # TimeoutError included: then it is refused as before
            return False
        return bool(state and state.get(HANDING_OVER))

    async def _ended_elsewhere(self, call_id: str) -> bool:
        """True when the call's shared session state says it ended (on another instance)."""
        try:
            async with asyncio.timeout(OWNER_LOOKUP_S):
                state = await self.bus.load_session_state(call_id)
        except Exception as exc:  # TimeoutError included
            log.warning(
                "call %s: cannot tell whether it ended elsewhere (%r)",
                call_id,
                exc,
                extra=call_fields(call_id),
            )
            return False
        return bool(state and state.get("ended"))

    def _ended_here(self, call_id: str) -> bool:
        session = self._calls.get(call_id)
        if session is not None:
            return session.state is CallState.ENDED
        return self.bus.is_closed(call_topic(call_id))  # ended, and already forgotten

    def _new_leg(self, call_id: str, stored_ended: set[str]) -> str:
        """`call_id`, or `call_id~n` when a call under that id already ended (here or stored)."""

        def taken(leg: str) -> bool:
            return leg in stored_ended or self._ended_here(leg) or leg in self._calls

        if not (call_id in stored_ended or self._ended_here(call_id)):
            return call_id
        n = 2
        while taken(f"{call_id}~{n}"):
            n += 1
        return f"{call_id}~{n}"

    def _reattach(
        self, session: CallSession, *, source: str, speakers: tuple[Speaker, ...]
    ) -> CallSession:
        if source != session.source or tuple(speakers) != tuple(session.speakers):
            raise self._reject(
                "reattach_mismatch",
                f"call {session.call_id} is waiting for its {session.source} connection with "
                f"parties {','.join(session.speakers)}",
            )
        _, timer = self._detached.pop(session.call_id)
        timer.cancel()
        session.reconnects += 1
        session.touch()
        log.info(
            "call %s re-attached at %.3f s of audio (reconnect %d)",
            session.call_id,
            session.fed_s,
            session.reconnects,
            extra=call_fields(session.call_id),
        )
        return session

    async def finish(self, session: CallSession, reason: str) -> None:
        """End a call; the ending survives cancellation of the caller (e.g. a dropped socket).

        Finalizing (last transcript, call_end) must happen even when the connection handler
        that noticed the hang-up is itself cancelled, so it runs as a task the manager owns.
        """
        await asyncio.shield(self._spawn_end(session, reason))

    async def stream_ended(self, session: CallSession, reason: str) -> None:
        """A connection's stream is over: a dropped one may come back, anything else ends it."""
        if reason == "disconnect":
            await self.detach(session, reason)
        else:
            await self.finish(session, reason)

    async def detach(self, session: CallSession, reason: str = "disconnect") -> None:
        """The call's connection dropped: wait `reconnect_grace_s` for it to come back.

        With no grace period (the default) this is `finish(session, reason)`. Otherwise it
        returns at once (it never suspends, so it is safe in a cancelled handler) and the
        call stays live; `open()` with the same call_id re-attaches it, and if nobody comes
        back in time it is finalized with `reason`. On a draining instance with a shared bus
        the call is handed over to whichever instance the reconnect reaches instead.
        """
        grace = self.reconnect_grace_s
        if (
            grace <= 0
            or session.inline
            or session.state is not CallState.LIVE
            or session.end_requested is not None
            or self._calls.get(session.call_id) is not session
        ):
            await self.finish(session, reason)
            return
        if self.draining and self.bus.can_hand_over:
            self._spawn_hand_over(session)
            return
        if session.call_id in self._detached:
            return
        timer = _call_task(
            session, self._grace(session, reason, grace), name=f"grace-{session.call_id}"
        )
        self._detached[session.call_id] = (reason, timer)
        log.info(
            "call %s detached (%s): waiting %.1f s for a reconnect",
            session.call_id,
            reason,
            grace,
            extra=call_fields(session.call_id),
        )

    async def _grace(self, session: CallSession, reason: str, grace: float) -> None:
        await asyncio.sleep(grace)
        entry = self._detached.get(session.call_id)
        if entry is None or entry[1] is not asyncio.current_task():
            return
        del self._detached[session.call_id]
        log.info(
            "call %s: no reconnect within %.1f s",
            session.call_id,
            grace,
            extra=call_fields(session.call_id),
        )
        await self.finish(session, reason)

    def _spawn_end(self, session: CallSession, reason: str) -> asyncio.Future[None]:
        running = self._end_tasks.get(session)
        if running is not None:
            # Ended twice at once (a shutdown and the call's own connection closing): one
            # ending, one "ended" line (an outside audit saw each call's twice).
            return running
        if session.state is CallState.ENDED:
            # Asked again after its ending finished (the shutdown just after the hang-up):
            # nothing is left to do, and a second ending would log and retire it again.
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        entry = self._detached.pop(session.call_id, None)
        if entry is not None and entry[1] is not asyncio.current_task():
            entry[1].cancel()
        session.claim_end(reason)  # before the task runs: see CallSession.claim_end
        task = _call_task(session, session.end(reason), name=f"end-{session.call_id}")
        self._end_tasks[session] = task
        task.add_done_callback(lambda _: self._end_tasks.pop(session, None))
        # Logged by the ending itself, before it leaves `_ending`: a drain waits for that set,
        # and its "drained" line came before the last call's "ended" one.

        def ended(_: object) -> None:
            log.info(
                "call %s ended (%s)",
                session.call_id,
                session.end_reason or reason,
                extra=call_fields(session.call_id),
            )

        task.add_done_callback(ended)
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)
        task.add_done_callback(lambda _: self._retire(session))
        return task

    def _spawn_hand_over(self, session: CallSession) -> None:
        """A stopping instance keeps no dropped call waiting for its reconnect: behind a load
        balancer that has taken it out, the reconnect reaches another instance, which used
        to refuse it as a duplicate until the grace ran out here and the call had ended (its
        reconnect then opened a second leg, with no cues or summary of the first part). The
        call is handed over instead: another instance resumes it, with its clock, event
        numbers, cue cooldowns and summary so far. If no reconnect comes, the orphan sweep
        closes it as it would a killed instance's call."""
        entry = self._detached.pop(session.call_id, None)
        if entry is not None and entry[1] is not asyncio.current_task():
            entry[1].cancel()
        task = _call_task(session, self._hand_over(session), name=f"hand-over-{session.call_id}")
        self._ending.add(task)  # a drain waits for it, as for an ending
        task.add_done_callback(self._ending.discard)

    async def _hand_over(self, session: CallSession) -> None:
        try:
            if not await session.hand_over():
                return  # it ended meanwhile
        except Exception:
            # Held here, the call could not go on anywhere until this instance stops.
            log.exception(
                "call %s: hand-over failed; letting it go as it is",
                session.call_id,
                extra=call_fields(session.call_id),
            )
        shared = await self.bus.let_go(session.call_id)
        # The agent's unredacted feed exists only where the call runs: its panel here must
        # connect again (to the call's new instance, or here for the shared, redacted feed).
        self.bus.move_topic(agent_topic(session.call_id))
        if self._calls.get(session.call_id) is session:
            del self._calls[session.call_id]
        self._forget_leg(session.call_id)
        await session.aclose()
        if shared:
            log.info(
                "call %s handed over at %.3f s of audio: its reconnect continues it on "
                "another instance",
                session.call_id,
                session.fed_s,
                extra=call_fields(session.call_id),
            )

    def _forget_leg(self, call_id: str) -> None:
        """Drop the pointers from telephony ids to `call_id`, a leg no longer run here."""
        for telephony_id in [k for k, v in self._latest_leg.items() if v == call_id]:
            del self._latest_leg[telephony_id]

    def _end_requested(self, session: CallSession, reason: str) -> None:
        """A session asked to end itself (max_length, idle_timeout): the manager owns it."""
        self._spawn_end(session, reason)

    # -- idle watchdog ---------------------------------------------------------------------

    def _ensure_watchdog(self) -> None:
        idle = self.idle_timeout_s
        if idle <= 0 or (self._watchdog is not None and not self._watchdog.done()):
            return
        # A context of its own: created while a call opens, it would otherwise log (and pass
        # on to the endings it starts) that call's id (found by a docs audit).
        self._watchdog = asyncio.create_task(
            self._watch(idle), name="calls-idle-watchdog", context=contextvars.Context()
        )

    async def _watch(self, idle: float) -> None:
        period = min(max(idle / 4, 0.05), 5.0)
        while True:
            await asyncio.sleep(period)
            try:
                self.check_idle(idle)
            except Exception:
                log.exception("idle watchdog: check failed")

    def check_idle(self, idle: float | None = None, *, now: float | None = None) -> list[str]:
        """End every attached live call that got no audio for `idle` s; returns their ids."""
        idle = self.idle_timeout_s if idle is None else idle
        now = time.monotonic() if now is None else now
        ended = []
        for session in list(self._calls.values()):
            if (
                session.state is not CallState.LIVE
                or session.inline
                or session.end_requested is not None
                or session.call_id in self._detached
                or now - session.last_audio_at <= idle
            ):
                continue
            metrics.INGEST_ERRORS.labels(protocol=session.source, reason="idle_timeout").inc()
            log.warning(
                "call %s (%s): no audio for %.1f s, ending it",
                session.call_id,
                session.source,
                now - session.last_audio_at,
                extra=call_fields(session.call_id),  # the watchdog serves every call
            )
            session.request_end("idle_timeout")
            ended.append(session.call_id)
        return ended

    def _retire(self, session: CallSession) -> None:
        """The call has ended: forget it after `ended_retention_s` (oldest first past a cap)."""
        if self._calls.get(session.call_id) is not session:
            return
        entry = self._ended.pop(session.call_id, None)
        if entry is not None:
            if entry[0] is session:
                self._ended[session.call_id] = entry
                return
            entry[1].cancel()  # an earlier call under the same id: already replaced
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self.ended_retention_s, self._forget, session)
        self._ended[session.call_id] = (session, timer)
        while len(self._ended) > MAX_ENDED_KEPT:
            oldest, (_, old_timer) = next(iter(self._ended.items()))
            old_timer.cancel()
            self._forget(self._ended[oldest][0])

    def _forget(self, session: CallSession) -> None:
        entry = self._ended.get(session.call_id)
        if entry is not None and entry[0] is session:
            del self._ended[session.call_id]
        if self._calls.get(session.call_id) is not session or session.state is not CallState.ENDED:
            return  # re-opened under the same id meanwhile: that call is not ours to drop
        del self._calls[session.call_id]
        # A leg's telephony id needs no pointer once the leg is gone: its closed topic (below)
        # still makes the next use of the id a new leg.
        self._forget_leg(session.call_id)
        for topic in (call_topic(session.call_id), agent_topic(session.call_id)):
            # Drop the history, keep the topic closed: a late panel is told the call is over.
            self.bus.forget(topic)
            self.bus.close_topic(topic)
        log.debug("call %s forgotten", session.call_id, extra=call_fields(session.call_id))

    def forget_erased(self, call_id: str) -> None:
        """The call was erased from the store: drop what this instance keeps of it for late
        panels (its unredacted agent view and redacted event history, kept for
        `ended_retention_s` after the end), not only when that time is up. Found by an
        outside audit: after an erasure answered 204, the call's instance still replayed the
        whole call, card number included, to its agent's panel. A live call is never erased."""
        entry = self._ended.get(call_id)
        if entry is not None:
            entry[1].cancel()
            self._forget(entry[0])
        elif call_id not in self._calls:
            for topic in (call_topic(call_id), agent_topic(call_id)):
                self.bus.forget(topic)  # another instance's call this one had heard of

    def ended_kept(self) -> int:
        """Ended calls still held in memory."""
        return len(self._ended)

    async def drain(self, timeout_s: float, *, abandon: Callable[[], bool]) -> int:
        """Take no new calls and wait until the live ones end, up to `timeout_s`, or until
        `abandon()` says to stop waiting (a second signal). Returns the calls still live.

        A rolling update or a scale-down would otherwise cut every call of the pod short:
        none of the telephony protocols can move a live stream to another instance (Twilio
        Media Streams and AudioHook do not reconnect), so the only way not to lose a call's
        coaching is to let it finish here while the load balancer sends new ones elsewhere.
        """
        self.draining = True
        metrics.DRAINING.set(1)
        if self.bus.can_hand_over:
            for call_id in list(self._detached):
                self._spawn_hand_over(self._calls[call_id])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout_s)
        live = self.holding()
        if live:
            log.info(
                "draining: %d live call(s), waiting up to %.0f s for them to end", live, timeout_s
            )
        # A call that is over but still finalizing (its last transcript, its call_end sent
        # to the bus for the store) counts as live until that is done.
        while (live or self._ending) and loop.time() < deadline and not abandon():
            await asyncio.sleep(DRAIN_POLL_S)
            live = self.holding()
        if live:
            log.warning("drain over with %d call(s) still live: they end as shutdown", live)
        elif self._ending:
            log.warning("drain over with %d call(s) still ending", len(self._ending))
        else:
            log.info("drained: no live calls")
        return live

    async def shutdown(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None
        detached = {cid: reason for cid, (reason, _) in self._detached.items()}
        for session in list(self._calls.values()):
            if session.state is CallState.LIVE:
                # A call still waiting for its connection ends as it would have: disconnected.
                await self.finish(session, detached.get(session.call_id, "shutdown"))
        if self._ending:
            await asyncio.gather(*self._ending, return_exceptions=True)
        for _, timer in self._ended.values():
            timer.cancel()
