"""Escalations to outside systems by webhook: a chat channel, a paging service, a CRM.

Supervisors are not always looking at the wall, and a crisis cannot wait until someone does.
With `COACH_ESCALATION_WEBHOOK_URL` set, each escalation at `COACH_ESCALATION_WEBHOOK_MIN_URGENCY`
or above is POSTed there as JSON: the redacted view the wall gets (the handoff summary
included), with the call's agent and team. Only the instance that runs the call sends it (a
bus listener sees local publishes only), so N instances behind Redis page once, not N times.

Delivery never holds up a call: the listener only enqueues (a bounded queue; when it is full
the escalation is dropped, counted and logged), and one task posts, retrying network errors,
429 and 5xx answers with exponential backoff. A signing secret adds
`X-Coach-Signature: sha256=<hex>`, the HMAC-SHA256 of `<X-Coach-Timestamp>.<body>`, so the
receiver can check who sent it and refuse replays of old ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

from coach import __version__, metrics
from coach.bus import SUPERVISOR_TOPIC
from coach.events import URGENCY_RANK, Event
from coach.logs import call_fields

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Coach-Signature"
TIMESTAMP_HEADER = "X-Coach-Timestamp"


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    url: str
    secret: str | None = None
    min_urgency: str = "high"
    timeout_s: float = 5.0
    attempts: int = 4
    """Tries per escalation: the first and three retries (after 1, 2 and 4 s by default)."""
    backoff_s: float = 1.0
    queue_size: int = 1000


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The `X-Coach-Signature` value for a body sent at `timestamp` (Unix seconds, as sent)."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(
    secret: str, timestamp: str, body: bytes, header: str, *, max_age_s: float = 300
) -> bool:
    """What a receiver checks: the signature, and that the timestamp is recent."""
    try:
        fresh = abs(time.time() - float(timestamp)) <= max_age_s
    except ValueError:
        return False
    return fresh and hmac.compare_digest(signature(secret, timestamp, body), header)


class EscalationWebhook:
    """Bus listener plus one delivery task. `start` in the app's loop, `stop` at shutdown."""

    def __init__(
        self, config: WebhookConfig, *, team_of: Callable[[str], str | None] | None = None
    ) -> None:
        if config.min_urgency not in URGENCY_RANK:
            raise ValueError(f"unknown urgency {config.min_urgency!r}")
        self.config = config
        self._team_of = team_of
        """The agent's team in the user directory: a call's meta names a team only when the
        telephony passed one (an outside audit found `team` always null in the payloads)."""
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=config.queue_size)
        self._meta: dict[str, dict[str, Any]] = {}
        """Agent and team of each call this instance runs (from call_start, agent_assigned)."""
        self._task: asyncio.Task[None] | None = None

    def listener(self, topic: str, event: Event) -> None:
        """Every publish passes here: keep it cheap, never block, never raise."""
        if topic != SUPERVISOR_TOPIC:
            return
        call_id, kind = event.get("call_id"), event.get("type")
        if not isinstance(call_id, str):
            return
        if kind == "call_start":
            meta = event.get("meta")
            self._meta[call_id] = dict(meta) if isinstance(meta, dict) else {}
        elif kind == "agent_assigned":
            self._meta.setdefault(call_id, {})["agent_id"] = event.get("agent_id")
        elif kind == "call_end":
            self._meta.pop(call_id, None)
        elif kind == "escalation" and self._wanted(event):
            payload = self._payload(call_id, event)
            try:
                self._queue.put_nowait(payload)
            except asyncio.QueueFull:
                metrics.WEBHOOK_DELIVERIES.labels(result="dropped").inc()
                log.error(
                    "escalation webhook: queue full, %s escalation of call %s dropped",
                    event.get("urgency"),
                    call_id,
                    extra=call_fields(call_id),  # JSON logs: its own field, as a call's lines
                )

    def _wanted(self, event: Event) -> bool:
        rank = URGENCY_RANK.get(str(event.get("urgency")), -1)
        return rank >= URGENCY_RANK[self.config.min_urgency]

    def _payload(self, call_id: str, event: Event) -> dict[str, Any]:
        meta = self._meta.get(call_id, {})
        fields = ("seq", "reason", "urgency", "cue", "detail", "summary", "t_start", "t_end")
        agent = meta.get("agent_id")
        team = meta.get("team")
        if team is None and isinstance(agent, str) and self._team_of is not None:
            team = self._team_of(agent)
        return {
            "type": "escalation",
            "call_id": call_id,
            "agent_id": agent,
            "team": team,
            **{k: event[k] for k in fields if k in event},
            "sent_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._deliver_all(), name="escalation-webhook")

    async def stop(self, *, flush_timeout_s: float = 5.0) -> None:
        """Send what is queued (bounded wait), then stop."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(flush_timeout_s):
                await self._queue.join()
        self._task.cancel()
        await asyncio.wait({self._task}, timeout=2.0)
        self._task = None

    async def _deliver_all(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        headers = {"User-Agent": f"voice-coach/{__version__}"}
        async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
            while True:
                payload = await self._queue.get()
                try:
                    result = await self._deliver(session, payload)
                except Exception:  # a bug here must not end deliveries for good
                    log.exception(
                        "escalation webhook: delivery failed",
                        extra=call_fields(payload.get("call_id")),
                    )
                    result = "failed"
                finally:
                    self._queue.task_done()
                metrics.WEBHOOK_DELIVERIES.labels(result=result).inc()

    async def _deliver(self, session: aiohttp.ClientSession, payload: dict[str, Any]) -> str:
        body = json.dumps(payload, separators=(",", ":")).encode()
        what = f"{payload.get('urgency')} escalation of call {payload['call_id']}"
        problem = ""
        for attempt in range(self.config.attempts):
            if attempt:
                await asyncio.sleep(self.config.backoff_s * 2 ** (attempt - 1))
            headers = {"Content-Type": "application/json"}
            if self.config.secret:
                stamp = str(int(time.time()))
                headers[TIMESTAMP_HEADER] = stamp
                headers[SIGNATURE_HEADER] = signature(self.config.secret, stamp, body)
            try:
                async with session.post(self.config.url, data=body, headers=headers) as resp:
                    if 200 <= resp.status < 300:
                        return "delivered"
                    problem = f"HTTP {resp.status}"
                    if resp.status != 429 and resp.status < 500:
                        break  # the receiver refuses it: sending it again will not help
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        # The call's id in its own field too: the webhook's task belongs to no call, and an
        # outside operator audit found this line's call only in its text.
        log.error(
            "escalation webhook: %s not delivered (%s)",
            what,
            problem,
            extra=call_fields(payload["call_id"]),
        )
        return "failed"
