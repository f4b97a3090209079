"""The registry of live calls in this process, shared by every ingest protocol and replay."""

from __future__ import annotations

import logging
from typing import Any

from coach.bus import InProcessBus
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
            self.bus.forget(f"call:{call_id}")
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

    async def close(self, call_id: str, reason: str) -> None:
        session = self._calls.get(call_id)
        if session is not None:
            await session.end(reason)
            log.info("call %s ended (%s)", call_id, reason)

    async def shutdown(self) -> None:
        for session in list(self._calls.values()):
            if session.state is CallState.LIVE:
                await session.end("shutdown")
