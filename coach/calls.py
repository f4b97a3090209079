"""The registry of live calls in this process, shared by every ingest protocol and replay."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from coach.bus import InProcessBus, agent_topic, call_topic
from coach.messages import Speaker
from coach.runtime import Runtime
from coach.session import CallSession, CallState
from coach.settings import Settings

log = logging.getLogger(__name__)


class CallRejected(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class CallManager:
    def __init__(self, *, runtime: Runtime, settings: Settings, bus: InProcessBus) -> None:
        self.runtime = runtime
        self.settings = settings
        self.bus = bus
        self._calls: dict[str, CallSession] = {}
        self._ending: set[asyncio.Task[None]] = set()

    def get(self, call_id: str) -> CallSession | None:
        return self._calls.get(call_id)

    def live(self) -> list[CallSession]:
        return [c for c in self._calls.values() if c.state is CallState.LIVE]

    async def open(
        self,
        *,
        call_id: str,
        source: str,
        speakers: tuple[Speaker, ...],
        inline: bool = False,
        meta: dict[str, Any] | None = None,
    ) -> CallSession:
        existing = self._calls.get(call_id)
        if existing is not None and existing.state in (CallState.LIVE, CallState.ENDING):
            raise CallRejected("duplicate_call", f"call {call_id} is already live")
        if existing is not None:
            self.bus.forget(call_topic(call_id))
            self.bus.forget(agent_topic(call_id))
        session = CallSession(
            call_id=call_id,
            source=source,
            speakers=speakers,
            runtime=self.runtime,
            settings=self.settings,
            bus=self.bus,
            inline=inline,
            meta=meta,
        )
        self._calls[call_id] = session
        await session.start()
        log.info("call %s started (%s, %s)", call_id, source, ",".join(speakers))
        return session

    async def finish(self, session: CallSession, reason: str) -> None:
        """End a call; the ending survives cancellation of the caller (e.g. a dropped socket).

        Finalizing (last transcript, call_end) must happen even when the connection handler
        that noticed the hang-up is itself cancelled, so it runs as a task the manager owns.
        """
        task = asyncio.create_task(session.end(reason), name=f"end-{session.call_id}")
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)
        await asyncio.shield(task)
        log.info("call %s ended (%s)", session.call_id, reason)

    async def shutdown(self) -> None:
        for session in list(self._calls.values()):
            if session.state is CallState.LIVE:
                await self.finish(session, "shutdown")
        if self._ending:
            await asyncio.gather(*self._ending, return_exceptions=True)
