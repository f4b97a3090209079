"""Event fan-out from call sessions to panels, the store and metrics.

In-process by default. Each topic keeps its most recent events so that a panel that
reconnects can resume after the last `seq` it saw without gaps or duplicates. Subscribers
get bounded queues: a panel that stops reading loses its oldest events (and is told so with
a `gap` marker) instead of growing the server's memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from coach.events import Event

log = logging.getLogger(__name__)

SUPERVISOR_TOPIC = "supervisor"
ALL_CALLS_TOPIC = "calls"
"""Every call's events (redacted view), for consumers of all calls: the store, analytics."""

COMMAND_TOPIC = "commands"
"""Requests for the instance that runs a call (an agent assigned on another instance's wall)."""

Listener = Callable[[str, Event], None]


def call_topic(call_id: str) -> str:
    """A call's events as anyone but its live agent may see them (PII redacted)."""
    return f"call:{call_id}"


def agent_topic(call_id: str) -> str:
    """The same events unredacted, for the live agent of that call only.

    Its own prefix: call ids may hold ":", and as `call:{id}:agent` the agent topic of call X
    was the redacted topic of a call named `X:agent`, which anyone could open to read X's
    unredacted words (found by a security audit)."""
    return f"agent:{call_id}"


def is_call_topic(topic: str) -> bool:
    """A call's redacted topic (what other instances, the store and supervisors get)."""
    return topic.startswith("call:")


def is_agent_topic(topic: str) -> bool:
    return topic.startswith("agent:")


@dataclass(eq=False)
class Subscription:
    topic: str
    queue: asyncio.Queue[Event | None]
    dropped: int = 0
    closed: bool = field(default=False)
    moved: bool = False
    """Ended because the call now runs on another instance (`InProcessBus.move_topic`), not
    because it ended: the watcher should connect again."""

    def offer(self, event: Event) -> None:
        if self.queue.full():
            try:
                self.queue.get_nowait()
                self.dropped += 1
            except asyncio.QueueEmpty:
                pass
        self.queue.put_nowait(event)

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            ev = await self.queue.get()
            if ev is None:
                return
            yield ev


class InProcessBus:
    def __init__(self, *, history: int = 500, subscriber_queue: int = 1000) -> None:
        self._history_len = history
        self._sub_queue = subscriber_queue
        self._history: dict[str, deque[Event]] = {}
        self._subs: dict[str, set[Subscription]] = {}
        self._closed_topics: set[str] = set()
        self._listeners: list[Listener] = []
        self.handover_wait_s = 0.0
        """How long an open of a call live on another instance waits for it to be let go
        before it is refused. In-process there is no other instance."""
        self._session_state: dict[str, tuple[float, dict[str, Any]]] = {}
        self.session_state_ttl_s = 3600.0

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(topic, event)` synchronously on every publish, never dropping.

        For consumers that must see everything (the store): the listener only enqueues
        into its own buffer, which decides what to do under pressure (spool, not drop).
        """
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def publish(self, topic: str, event: Event) -> None:
        hist = self._history.setdefault(topic, deque(maxlen=self._history_len))
        hist.append(event)
        for sub in list(self._subs.get(topic, ())):
            sub.offer(event)
        for listener in self._listeners:
            try:
                listener(topic, event)
            except Exception:
                log.exception("bus listener failed on %s", topic)

    def history(self, topic: str, *, after_seq: int | None = None) -> list[Event]:
        events = list(self._history.get(topic, ()))
        if after_seq is None:
            return events
        return [e for e in events if int(e.get("seq", -1)) > after_seq]

    def amend(self, topic: str, seq: int, fields: dict[str, Any]) -> bool:
        """Add `fields` to the kept event `seq` of `topic`, for whoever subscribes from now on
        (subscribers already served keep what they got). Only this instance's copy: a stream
        another instance feeds (Redis) is append-only. False if no such event is kept."""
        hist = self._history.get(topic)
        if hist is None:
            return False
        for i, ev in enumerate(hist):
            if ev.get("seq") == seq:
                hist[i] = {**ev, **fields}  # a new dict: the old one may be queued elsewhere
                return True
        return False

    def subscribe(
        self, topic: str, *, after_seq: int | None = None, replay: bool = True
    ) -> Subscription:
        """Subscribe; with `replay`, recent events (after `after_seq`) come first, in order."""
        sub = Subscription(topic, asyncio.Queue(maxsize=self._sub_queue))
        if replay:
            for ev in self.history(topic, after_seq=after_seq)[-self._sub_queue :]:
                sub.offer(ev)
        if topic in self._closed_topics:
            sub.queue.put_nowait(None)
            return sub
        self._subs.setdefault(topic, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.get(sub.topic, set()).discard(sub)

    def close_topic(self, topic: str) -> None:
        """The topic will get no more events (call ended): end every subscriber's iterator."""
        self._closed_topics.add(topic)
        self._end_subscriptions(topic, moved=False)

    def move_topic(self, topic: str) -> None:
        """The topic's events come from another instance from now on (a call handed over):
        end every subscriber's stream marked `moved`, so that it connects again and is
        served wherever the call runs, and drop the history here."""
        self._end_subscriptions(topic, moved=True)
        self.forget(topic)

    def _end_subscriptions(self, topic: str, *, moved: bool) -> None:
        for sub in self._subs.pop(topic, set()):
            sub.moved = moved
            if sub.queue.full():
                sub.queue.get_nowait()
            sub.queue.put_nowait(None)

    def forget(self, topic: str) -> None:
        self._history.pop(topic, None)
        self._closed_topics.discard(topic)

    def is_closed(self, topic: str) -> bool:
        return topic in self._closed_topics

    # -- per-call session state ----------------------------------------------------------
    # What a call's pipeline needs if its stream comes back (here, or with Redis on another
    # instance): the event sequence so panels resume without gaps or repeats, the cue
    # cooldowns so a reconnect does not repeat cues the agent has just seen, and the recap
    # its summaries need of the part already heard (coach/recap.py; no unredacted words).

    def save_session_state(self, call_id: str, state: dict[str, Any]) -> None:
        """Keep the latest state of a call (never blocks; with Redis, written in the background)."""
        now = time.monotonic()
        self._session_state[call_id] = (now + self.session_state_ttl_s, dict(state))
        if len(self._session_state) > 10_000:  # drop expired entries now and then
            for key in [k for k, (exp, _) in self._session_state.items() if exp < now]:
                del self._session_state[key]

    async def load_session_state(self, call_id: str) -> dict[str, Any] | None:
        entry = self._session_state.get(call_id)
        if entry is None or entry[0] < time.monotonic():
            return None
        return dict(entry[1])

    async def live_owner_elsewhere(self, call_id: str) -> str | None:
        """The id of another live instance running this call, if one does.

        In-process there is no other instance; `RedisBus` asks Redis's owner key."""
        return None

    async def earlier_events(self, topic: str, *, before_seq: int) -> list[Event]:
        """Events of `topic` another instance published before `before_seq`, as the shared
        bus still holds them (a call taken over after its instance died). In-process there
        is no other instance: none."""
        return []

    async def claim_call(self, call_id: str) -> str | None:
        """Claim `call_id` for this instance unless another live instance runs it (then its
        id). In-process there is no other instance; `RedisBus` claims Redis's owner key."""
        return None

    async def release_call(self, call_id: str) -> None:
        """Give back a claim whose call did not open here."""

    @property
    def can_hand_over(self) -> bool:
        """Whether another instance could take a call over from this one now (`let_go`)."""
        return False

    async def let_go(self, call_id: str, *, timeout_s: float = 2.0) -> bool:
        """Stop running `call_id` here without ending it, so that another instance can take
        it over (a draining instance whose call dropped). True once the call's last events
        and session state are shared and its ownership is given up. In-process there is no
        other instance: False, and nothing changes."""
        return False
