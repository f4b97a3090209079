"""The FastAPI application: health, metrics, ingest, event streams and call REST.

Models load in a background thread at startup so `/health/live` answers at once and
`/health/ready` turns true only when the models are in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, WebSocket, WebSocketDisconnect
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from redis.exceptions import RedisError

from coach import __version__, memory, metrics
from coach.api import accounts, demo, playbook, supervisor
from coach.api.limits import BodyLimit, StreamQuota
from coach.api.security import (
    TOKEN_EXPIRED,
    ingest_authorized,
    may_view_call,
    principal_from,
    require_principal,
    seconds_left,
    stream_subprotocol,
)
from coach.api.streams import Stop, client_watch, next_item, refuse
from coach.api.users import UserDirectory
from coach.api.wall import Tile, WallTracker
from coach.api.wall_contact import ContactWatcher
from coach.api.wall_seed import WallSeeder
from coach.auth import AuthError, Principal
from coach.bus import COMMAND_TOPIC, SUPERVISOR_TOPIC, InProcessBus, agent_topic, call_topic
from coach.calls import CallManager
from coach.cues.library import start_watching
from coach.events import Event, dumps
from coach.ingest import audiohook as audiohook_ingest
from coach.ingest import closecodes as cc
from coach.ingest import pcm
from coach.ingest import twilio as twilio_ingest
from coach.ingest import webrtc as webrtc_ingest
from coach.ingest.audiosocket import (
    close_audiosocket_server,
    parse_mapping,
    read_mapping_file,
    start_audiosocket_server,
)
from coach.logs import call_fields
from coach.notify import EscalationWebhook, WebhookConfig
from coach.redis_bus import RedisBus
from coach.runtime import Runtime
from coach.session import CallSession, CallState
from coach.settings import Settings
from coach.store import StoreService, recovered
from coach.store.api import MAX_SEQ
from coach.store.api import router as history_router
from coach.store.records import CallDetail, CustomerCall, StoreUnavailable
from coach.store.store import Store

log = logging.getLogger(__name__)
CurrentPrincipal = Annotated[Principal, Depends(require_principal)]
_AFTER_SEQ = TypeAdapter(Annotated[int, Field(ge=0, le=MAX_SEQ)] | None)


def _web_dir() -> Path:
    """Static pages: next to the source tree in a checkout, or ./web in the container."""
    beside = Path(__file__).resolve().parents[2] / "web"
    return beside if beside.is_dir() else Path.cwd() / "web"


WEB_DIR = _web_dir()


@contextlib.contextmanager
def _current_task_in(tasks: set[asyncio.Task[Any]]) -> Iterator[None]:
    """The running task is in `tasks` while the block runs (what a shutdown waits for)."""
    task = asyncio.current_task()
    if task is not None:
        tasks.add(task)
    try:
        yield
    finally:
        if task is not None:
            tasks.discard(task)


class AppState:
    def __init__(self, settings: Settings, runtime: Runtime | None) -> None:
        self.settings = settings
        self.runtime = runtime
        # With Redis, events also travel between instances; without it, one process is the world.
        self.bus: InProcessBus = (
            RedisBus(
                settings.redis_url,
                instance_id=settings.instance_id,
                history=settings.event_replay,
                stream_maxlen=settings.redis_stream_maxlen,
                owner_ttl_s=settings.redis_session_ttl_s,
            )
            if settings.redis_url
            else InProcessBus(history=settings.event_replay)
        )
        self.manager: CallManager | None = None
        self.streams = StreamQuota(settings.max_streams_per_user)
        self.load_error: str | None = None
        self.owns_runtime = runtime is None
        self.audiosocket: asyncio.Server | None = None
        self.playbook_watch: asyncio.Task[None] | None = None
        self.history_store: Store | None = None
        self.ingest_tasks: set[asyncio.Task[Any]] = set()
        """The WebSocket ingest connections' tasks, so a shutdown can wait for each to close
        its connection as its protocol says (`end_calls`)."""
        self.local_feed_tasks: set[asyncio.Task[Any]] = set()
        """Panels' feeds of calls this instance runs, so a shutdown can let each send its
        call's `call_end` before uvicorn closes every socket with 1012 (`end_calls`)."""

    def ingesting(self) -> contextlib.AbstractContextManager[None]:
        """Around a WebSocket ingest handler: counted among `ingest_tasks` while it runs."""
        return _current_task_in(self.ingest_tasks)

    async def drain(self, *, abandon: Callable[[], bool]) -> None:
        """Stop taking calls (`/health/ready` answers 503 `draining`, new calls get their
        protocol's "try again later") and wait up to COACH_DRAIN_TIMEOUT_S for the live ones
        to end. `end_calls` ends whatever is still live after it."""
        if self.manager is not None and self.settings.drain_timeout_s > 0:
            await self.manager.drain(self.settings.drain_timeout_s, abandon=abandon)

    async def end_calls(self, *, close_timeout_s: float = 5.0) -> None:
        """End every live call as a shutdown, and let the ingest connections close.

        Runs before uvicorn closes the open connections (coach/api/server.py): uvicorn fails
        every WebSocket with 1012 at once, so each ingest saw a dropped connection, and the
        calls of an instance that was stopped (a rolling update) ended as `disconnect` with a
        1012, not as `shutdown` with the close README promises (found by an outside audit with
        two real servers). Ended here, each ingest finalizes its call and closes as its
        protocol says (raw PCM and Twilio: 1000 `shutdown`; AudioHook: `disconnect`).
        """
        if self.manager is not None:
            await self.manager.shutdown()
        others = self.ingest_tasks - {asyncio.current_task()}
        if others:
            await asyncio.wait(others, timeout=close_timeout_s)
        # ...and the panels of those calls get their call_end, then a normal close: they
        # were closed with 1012 first, the end unseen (an outside operator audit's drain).
        feeds = self.local_feed_tasks - {asyncio.current_task()}
        if feeds:
            await asyncio.wait(feeds, timeout=close_timeout_s)

    def runs_here(self, call_id: str) -> bool:
        """This instance runs the call (not ended yet)."""
        session = self.manager.get(call_id) if self.manager is not None else None
        return session is not None and session.state is not CallState.ENDED

    async def is_live(self, call_id: str) -> bool:
        """Whether some instance runs this call now (here, or by its Redis owner key)."""
        if self.manager is not None and self.manager.get(call_id) is not None:
            return True
        if isinstance(self.bus, RedisBus):
            if self.bus.degraded:
                return True  # cannot tell: never take a live call for an orphan
            try:
                return await self.bus.owner(call_id) is not None
            except Exception as exc:
                log.debug("owner lookup for %s failed: %s", call_id, exc)
                return True
        return False

    def wire_history(self) -> None:
        """Calls look up their customer's previous calls (repeat_contact) and their own id's
        earlier legs in the store."""
        store = self.history_store
        if self.manager is None or store is None:
            return

        async def lookup(customer_id: str) -> list[CustomerCall]:
            return await store.customer_history(customer_id, limit=5)

        self.manager.history_lookup = lookup
        self.manager.ended_lookup = store.ended_legs
        if isinstance(self.bus, RedisBus):
            # Twice the owner keys' lifetime: an instance writes a live call every flush, and
            # one that stopped writing that long ago is gone (the orphan sweep's measure).
            within = timedelta(seconds=2 * self.settings.redis_session_ttl_s)

            async def live(call_id: str) -> bool:
                return await store.heard_lately(call_id, since=datetime.now(UTC) - within)

            self.manager.live_lookup = live

    def attach(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.manager = CallManager(runtime=runtime, settings=self.settings, bus=self.bus)


def create_app(settings: Settings, runtime: Runtime | None = None) -> FastAPI:
    state = AppState(settings, runtime)
    if runtime is not None:
        state.attach(runtime)
    wall = WallTracker()  # the supervisor wall's live picture, fed by every bus event
    state.bus.add_listener(wall.listener)
    # A supervisor's acknowledgement reaches the call's agent (acked on any instance).
    state.bus.add_listener(
        lambda topic, ev: _tell_the_agent(state, ev) if topic == SUPERVISOR_TOPIC else None
    )
    demo_player = demo.DemoPlayer(WEB_DIR / "demo" / "demo-call.wav")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        seeder: WallSeeder | None = None
        contact: ContactWatcher | None = None
        if isinstance(state.bus, RedisBus):
            await state.bus.start()  # never blocks on Redis: reconnects in the background
            # Scraped as it is at that moment (an outside audit found no metric for it).
            redis_bus = state.bus
            metrics.REDIS_DEGRADED.set_function(lambda: float(redis_bus.degraded))
            # The wall shows every instance's calls, not only this one's (found by an audit).
            state.bus.watch_remote(SUPERVISOR_TOPIC, wall.remote)
            # ...including calls whose call_start has scrolled out of that stream.
            seeder = WallSeeder(wall, state.bus)
            seeder.start()
            # ...and which of them have lost their instance, until the sweep closes them.
            contact = ContactWatcher(wall, state.bus, runs_here=state.runs_here)
            contact.start()
            state.bus.watch_remote(
                COMMAND_TOPIC, lambda _t, ev, at: _run_command(state, wall, ev, at)
            )
            state.bus.watch_remote(SUPERVISOR_TOPIC, lambda _t, ev, _at: _tell_the_agent(state, ev))
        loader: asyncio.Task[None] | None = None
        if state.runtime is None:
            loader = asyncio.create_task(_load_models(state))
        elif await _tcp_ingest_started(state):
            _say_ready(settings)
        store: StoreService | None = None
        if settings.store_enabled:
            # Never fails startup: with the database down, events are spooled until it answers.
            store = await StoreService.start(settings, bus=state.bus)
            app.state.store = store.store
            state.history_store = store.store
            state.wire_history()
        webhook: EscalationWebhook | None = None
        if settings.escalation_webhook_url:
            webhook = EscalationWebhook(
                WebhookConfig(
                    url=settings.escalation_webhook_url,
                    secret=settings.escalation_webhook_secret,
                    min_urgency=settings.escalation_webhook_min_urgency,
                ),
                team_of=app.state.users.team_of,
            )
            state.bus.add_listener(webhook.listener)
            webhook.start()
        releaser = asyncio.create_task(
            memory.release_periodically(settings.memory_release_interval_s)
        )
        sweeper = (
            asyncio.create_task(
                _close_orphans(
                    state,
                    store.store,
                    wall,
                    started=datetime.now(UTC),
                    backfill=store.backfill_call,
                )
            )
            if store is not None
            else None
        )
        yield
        # Background tasks are cancelled and waited for (a little) before what they use is
        # closed: the orphan sweep cancelled in the middle of a query, its engine then
        # disposed under it, waited for an answer that never came, and the event loop's
        # shutdown hung on it for good (seen twice in the test suite's quick tests).
        background = [releaser, sweeper, state.playbook_watch]
        if loader is not None and not loader.done():
            background.append(loader)
        await _cancel_and_wait([t for t in background if t is not None])
        if state.audiosocket is not None:
            await close_audiosocket_server(state.audiosocket)
        await webrtc_ingest.close_all()
        await demo_player.stop()
        if state.manager is not None:
            await state.manager.shutdown()
        if webhook is not None:
            state.bus.remove_listener(webhook.listener)
            await webhook.stop()  # what the calls raised before they ended still goes out
        if store is not None:
            await store.aclose()  # after the calls ended, so their last events are written
        if seeder is not None:
            await seeder.stop()
        if contact is not None:
            await contact.stop()
        if isinstance(state.bus, RedisBus):
            await state.bus.stop()
            metrics.REDIS_DEGRADED.set_function(lambda: 0.0)  # not this stopped bus's any more
        if state.owns_runtime and state.runtime is not None:
            state.runtime.close()

    app = FastAPI(title="Voice coach", version=__version__, lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.state.settings = settings
    app.state.coach = state
    app.state.users = UserDirectory.from_settings(settings)
    # Called by the history API after an erasure (DELETE /api/history/calls/..., customers).
    app.state.on_erased = lambda call_ids: _forget_erased(state, wall, call_ids)
    app.state.wall = wall
    app.state.demo = demo_player
    app.include_router(history_router)
    app.include_router(accounts.router)
    app.include_router(supervisor.router)
    app.include_router(demo.router)
    app.include_router(playbook.router)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        # Browsers ask for it on every page: no icon, and no 404 in the console or the log.
        return Response(status_code=204)

    @app.get("/health/live", tags=["health"])
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/health/ready", tags=["health"])
    async def ready() -> JSONResponse:
        if state.manager is None or state.load_error is not None:
            body = {
                "status": "loading" if state.load_error is None else "error",
                "error": state.load_error,
            }
            return JSONResponse(body, status_code=503)
        if state.manager.draining:
            # Stopping: the load balancer sends new calls elsewhere while these finish.
            draining = {"status": "draining", "active_calls": len(state.manager.live())}
            return JSONResponse(draining, status_code=503)
        store = getattr(app.state, "store", None)
        if store is not None and not await store.ping():
            # CONTRACT.md: ready means the store is reachable too. Live calls go on (their
            # events are spooled); the load balancer just sends new ones elsewhere.
            return JSONResponse({"status": "store_unreachable"}, status_code=503)
        # Redis down keeps the instance ready: its own calls and panels work without it
        # (ARCHITECTURE.md, Scale-out); the flag tells dashboards it is degraded.
        degraded = isinstance(state.bus, RedisBus) and state.bus.degraded
        manager = state.manager
        info: dict[str, Any] = {
            "status": "ready",
            "active_calls": len(manager.live()),
            "max_calls": manager.max_calls,
            "redis_degraded": degraded,
        }
        # At the call limit, or with the shared ASR queue lagging: "send no more calls here".
        # Live calls go on; a new one would be refused (1013 / 503) or would slow the others.
        if manager.at_capacity():
            return JSONResponse({**info, "status": "at_capacity"}, status_code=503)
        if manager.overloaded():
            return JSONResponse({**info, "status": "overloaded"}, status_code=503)
        return JSONResponse(info)

    @app.get("/metrics", tags=["health"])
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/calls", tags=["calls"])
    async def list_calls(principal: CurrentPrincipal) -> dict[str, Any]:
        calls = state.manager.live() if state.manager else []
        listed = [_call_info(c) for c in calls if may_view_call(principal, c.meta)]
        # Calls this instance does not run but whose events it sees (another instance's).
        listed += [
            _tile_info(t)
            for t in wall.calls.values()
            if t.ended_at is None
            and (state.manager is None or state.manager.get(t.call_id) is None)
            and may_view_call(principal, t.meta)
        ]
        return {"calls": listed}

    @app.get("/api/calls/{call_id}", tags=["calls"])
    async def get_call(call_id: str, principal: CurrentPrincipal) -> dict[str, Any]:
        session = state.manager.get(call_id) if state.manager else None
        if session is None:
            elsewhere = wall.meta(call_id)
            if elsewhere is not None and may_view_call(principal, elsewhere):
                raise HTTPException(
                    404,
                    f"call {call_id} is not run by this instance: its record so far is at "
                    f"/api/history/calls/{call_id}",
                )
            raise HTTPException(404, f"call {call_id} not found")
        if not may_view_call(principal, session.meta):
            raise HTTPException(403, "not your call")
        history, complete = await recovered.with_stored_start(
            state.history_store, call_id, state.bus.history(call_topic(call_id))
        )
        end = next((e for e in reversed(history) if e["type"] == "call_end"), None)
        return {
            **_call_info(session),
            "complete": complete,
            "transcript": [e for e in history if e["type"] == "transcript"],
            "cues": [e for e in history if e["type"] == "cue"],
            "escalations": _with_takers(history),
            # CONTRACT: transcript, cues, summary; the summary exists once the call ended.
            "summary": end.get("summary") if end else None,
        }

    @app.put("/api/calls/{call_id}/agent", tags=["calls"], response_model=None)
    async def assign_agent(
        call_id: str, body: AgentAssignment, principal: CurrentPrincipal
    ) -> dict[str, Any] | JSONResponse:
        """Put an agent on a live call (when the telephony did not say who answered).

        Supervisors (their team's calls, and calls no agent is on yet, to an agent of their
        team) and admins. From then on the agent sees the call's live events unredacted, the
        wall shows them on the tile, and the stored call carries them.
        """
        if not principal.is_supervisor:
            raise HTTPException(403, "supervisors only")
        session = state.manager.get(call_id) if state.manager else None
        # A call another instance runs (on this wall through Redis) is assigned there.
        elsewhere = wall.calls.get(call_id) if session is None else None
        if session is not None:
            if not may_view_call(principal, session.meta):
                # Before saying whether it has ended: another team's supervisor learnt that
                # from the 409 (an outside UI audit); every other endpoint says 403.
                raise HTTPException(403, "not your team's call")
            if session.state is not CallState.LIVE:
                # An ended call stays here a while for its panels; moving it then would rewrite
                # the stored call's agent, and its own agent would lose its history.
                raise HTTPException(409, f"call {call_id} has ended")
            meta = session.meta
        elif (
            elsewhere is not None and elsewhere.ended_at is None and isinstance(state.bus, RedisBus)
        ):
            meta = elsewhere.meta
        else:
            raise HTTPException(404, f"call {call_id} not found")
        # An unassigned call is every supervisor's (may_view_call); once it has an agent, only
        # that agent's team's supervisors may move it.
        if not may_view_call(principal, meta):
            raise HTTPException(403, "not your team's call")
        users: UserDirectory = app.state.users
        if len(users):
            user = users.get(body.agent_id)
            if user is None or user.role != "agent":
                raise HTTPException(422, f"{body.agent_id} is not a known agent")
        if (
            principal.role == "supervisor"
            and principal.team is not None
            and body.agent_id not in (principal.team_agents or ())
        ):
            # Without a directory nobody is known to be on the team: refused, not waved
            # through, now that unassigned calls are open to every team's supervisors.
            raise HTTPException(403, f"{body.agent_id} is not on your team")
        if session is None:
            # Forwarded only to an instance that still runs it: one just killed leaves the
            # tile on this wall until the orphan sweep, and a 202 then was a promise nobody
            # would keep.
            try:
                owner = await state.bus.live_owner_elsewhere(call_id)
            except (RedisError, OSError) as exc:
                raise HTTPException(503, "cannot reach the instance running this call") from exc
            if owner is None:
                raise HTTPException(
                    409, f"call {call_id} is no longer running (its instance stopped)"
                )
            state.bus.publish(
                COMMAND_TOPIC,
                {
                    "type": "assign_agent",
                    "call_id": call_id,
                    "agent_id": body.agent_id,
                    "by": principal.user,
                },
            )
            # The wall's tile changes when the running instance announces agent_assigned.
            return JSONResponse(
                {"call_id": call_id, "agent_id": body.agent_id, "forwarded": True},
                status_code=202,
            )
        await _assign(session, body.agent_id)
        return _call_info(session)

    @app.websocket("/ingest/pcm")
    async def ingest_pcm(ws: WebSocket) -> None:
        await ws.accept()
        if not ingest_authorized(ws, settings):
            # Counted as the other ingests count theirs (an outside ingest audit).
            metrics.INGEST_ERRORS.labels(protocol=pcm.PROTOCOL, reason="unauthorized").inc()
            await refuse(
                ws, cc.POLICY_VIOLATION, "unauthorized", "missing or invalid API key or admin token"
            )
            return
        if state.manager is None:
            await refuse(ws, cc.TRY_AGAIN_LATER, "not_ready", "models are still loading")
            return
        with state.ingesting():
            await pcm.handle(ws, manager=state.manager, settings=settings)

    @app.websocket("/ingest/audiohook")
    async def ingest_audiohook(ws: WebSocket) -> None:
        # Authenticated on the upgrade request itself: HTTP 401 before accept, as the reference.
        with state.ingesting():
            await audiohook_ingest.serve(ws, manager=state.manager, settings=settings)

    @app.post("/webrtc/offer", tags=["ingest"])
    async def webrtc_offer(request: Request) -> dict[str, str]:
        # A browser or softphone posts its SDP offer; see coach/ingest/webrtc.py.
        # Telephony (API key, admin token), or a signed-in person trying the microphone
        # mode: their call is then assigned to them, whatever the body says.
        caller: Principal | None = None
        if not ingest_authorized(request, settings):
            try:
                caller = principal_from(request, settings)
            except AuthError as exc:
                raise webrtc_ingest.refused(
                    401, "unauthorized", "missing or invalid API key or token"
                ) from exc
        try:
            body = await request.json()
        except ValueError as exc:
            raise webrtc_ingest.refused(400, "bad_json", "body must be JSON") from exc
        if not isinstance(body, dict):
            raise webrtc_ingest.refused(400, "bad_json", "body must be a JSON object")
        if caller is not None:
            # Their own call, under an id of the server's: a person naming an existing call's
            # id must not be able to pose as (or continue the record of) that call.
            body["agent_id"] = caller.user
            body.pop("call_id", None)
        return await webrtc_ingest.answer(
            body, manager=state.manager, started_by=caller.user if caller else None
        )

    @app.websocket("/ingest/twilio")
    async def ingest_twilio(ws: WebSocket) -> None:
        await ws.accept()
        if not twilio_ingest.authorized(ws, settings):
            await twilio_ingest.refuse(
                ws, cc.POLICY_VIOLATION, "unauthorized", "missing or invalid Twilio credentials"
            )
            return
        if state.manager is None:
            await twilio_ingest.refuse(
                ws, cc.TRY_AGAIN_LATER, "not_ready", "models are still loading"
            )
            return
        with state.ingesting():
            await twilio_ingest.handle(ws, manager=state.manager, settings=settings)

    @app.websocket("/ws/calls/{call_id}/events")
    async def call_events(ws: WebSocket, call_id: str) -> None:
        await ws.accept(subprotocol=stream_subprotocol(ws))
        try:
            principal = principal_from(ws, settings)
        except AuthError as exc:
            await refuse(ws, cc.POLICY_VIOLATION, "unauthorized", str(exc))
            return
        if not state.streams.take(principal.user):
            refusal = state.streams.refusal(principal.user)
            await refuse(ws, cc.POLICY_VIOLATION, "too_many_streams", refusal)
            return
        try:
            await serve_call_events(ws, call_id, principal)
        finally:
            state.streams.give_back(principal.user)

    async def serve_call_events(ws: WebSocket, call_id: str, principal: Principal) -> None:
        session = state.manager.get(call_id) if state.manager else None
        meta = session.meta if session else wall.meta(call_id)
        try:
            after_seq = _AFTER_SEQ.validate_python(ws.query_params.get("after_seq"))
        except ValidationError as exc:
            # A malformed resume point (e.g. "²", which str.isdigit accepts and int() not,
            # or beyond any seq): say so, rather than drop the connection or replay all.
            await refuse(ws, cc.INVALID_PAYLOAD, "invalid_query", _first_error(exc, "after_seq"))
            return
        # Not running anywhere: a call that ended (perhaps cut off by a restart) or none. If
        # unknown and this user may watch any call, wait for it to start instead (telephony may
        # hand the call id to a panel before the audio arrives). The wall may still show a
        # call that ended minutes ago, after this process dropped its events: the store has
        # them (found by a docs audit: such a call streamed nothing and closed).
        if (
            session is None
            and (meta is None or wall.has_ended(call_id))
            and not await state.is_live(call_id)
            and await _stream_stored(
                ws, state, principal, call_id, after_seq, on_wall=meta is not None
            )
        ):
            return
        if not may_view_call(principal, meta):
            await refuse(ws, cc.POLICY_VIOLATION, "forbidden", "not your call")
            return
        if session is None and isinstance(state.bus, RedisBus) and state.bus.degraded:
            # The call is not here and Redis cannot bring its events: say so, the panel retries.
            await refuse(
                ws, cc.TRY_AGAIN_LATER, "degraded", "events of other instances need Redis; retry"
            )
            return
        # Only the call's own agent sees unredacted text, and only on the instance that runs
        # the call (unredacted text never goes to Redis); everyone else, and the agent on
        # another instance, gets the PII-safe view.
        # An agent, by role: an ingest that names a supervisor or an admin as the call's agent
        # (its `agent_id` is not checked against the directory) must not give them the
        # unredacted view (found by an outside PII audit).
        own = (
            session is not None
            and meta is not None
            and principal.role == "agent"
            and meta.get("agent_id") == principal.user
        )
        topic = agent_topic(call_id) if own else call_topic(call_id)
        still_allowed = None
        if meta is not None:
            live_meta = meta  # the call's own dict: a reassignment changes it in place

            def still_allowed(assigned: Event) -> bool:
                # The event's own agent, not only the meta: on an instance that does not run
                # the call the meta is the wall's copy, which the supervisors' stream may
                # update after this feed's event arrives (an outside scaling audit: the first
                # agent's feed there stayed open after the call was moved, crisis lines and all).
                now = {**live_meta, "agent_id": assigned.get("agent_id")}
                if own:
                    return now.get("agent_id") == principal.user
                return may_view_call(principal, now)

        local = session is not None  # a feed of a call this instance runs
        with _current_task_in(state.local_feed_tasks) if local else contextlib.nullcontext():
            await _stream_events(
                ws, state.bus, topic, after_seq, still_allowed=still_allowed, principal=principal
            )

    if WEB_DIR.is_dir():
        app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")

        @app.get("/", include_in_schema=False)
        async def root() -> RedirectResponse:
            return RedirectResponse("/agent/")

        @app.get("/agent/", include_in_schema=False)
        async def agent_page() -> Response:
            return _page("agent")

        @app.get("/supervisor/", include_in_schema=False)
        async def supervisor_page() -> Response:
            return _page("supervisor")

    return app


async def _load_models(state: AppState) -> None:
    try:
        runtime = await asyncio.to_thread(Runtime.load, state.settings)
    except Exception as exc:
        log.exception("model loading failed")
        state.load_error = str(exc)
        return
    state.attach(runtime)
    state.wire_history()
    memory.freeze_loaded_objects()
    if await _tcp_ingest_started(state):
        _say_ready(state.settings)


async def _tcp_ingest_started(state: AppState) -> bool:
    """Start AudioSocket; when it cannot (a port in use, a mapping file that cannot be read),
    say so in the log and keep the instance not ready (`/health/ready` 503 with the error).
    It failed in the model loader's background task with no word until shutdown, and the
    instance answered ready with nothing listening for Asterisk (an outside operator audit)."""
    try:
        await _start_tcp_ingest(state)
    except Exception as exc:
        log.exception("AudioSocket ingest could not start")
        state.load_error = f"AudioSocket ingest could not start: {exc}"
        return False
    return True


def _say_ready(settings: Settings) -> None:
    """Where to go once the models are up: a newcomer's `make run` ended on library lines."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    log.info(
        "models up: agents at http://%s:%d/agent/, supervisors at http://%s:%d/supervisor/",
        host,
        settings.port,
        host,
        settings.port,
    )


async def _start_tcp_ingest(state: AppState) -> None:
    """AudioSocket is plain TCP: it listens once the models (and the call manager) are up."""
    settings = state.settings
    if state.runtime is not None and state.runtime.playbook is not None:
        # Also from here on: the playbook reloads on change or SIGHUP, live calls included.
        state.playbook_watch = start_watching(state.runtime.playbook, settings.playbook_reload_s)
    if not settings.audiosocket_port or state.manager is None:
        return
    mapping = (
        read_mapping_file(settings.audiosocket_map_file) if settings.audiosocket_map_file else {}
    )
    mapping.update(parse_mapping(settings.audiosocket_map))
    state.audiosocket = await start_audiosocket_server(
        manager=state.manager,
        settings=settings,
        host=settings.audiosocket_host,
        port=settings.audiosocket_port,
        mapping=mapping,
        allow=settings.audiosocket_allow,
    )
    log.info("AudioSocket ingest on %s:%d", settings.audiosocket_host, settings.audiosocket_port)


def _page(name: str) -> Response:
    # Both pages sign in by themselves (web/common/auth.js); no caching of the shell.
    return Response(
        (WEB_DIR / name / "index.html").read_bytes(),
        media_type="text/html",
        headers={"Cache-Control": "no-store"},
    )


def _with_takers(history: list[Event]) -> list[Event]:
    """The call's escalations, each with who acknowledged it and when. One taken while the
    call ran is told by an `escalation_taken` event, not on the escalation itself (an outside
    scaling audit: this endpoint never said who took it, the walls and the store did)."""
    taken = {e.get("escalation_seq"): e for e in history if e.get("type") == "escalation_taken"}
    out = []
    for e in history:
        if e.get("type") != "escalation":
            continue
        took = taken.get(e.get("seq"))
        if took is not None and "acknowledged_by" not in e:
            e = {**e, "acknowledged_by": took.get("by"), "acknowledged_at": took.get("at")}
        out.append(e)
    return out


def _tile_info(tile: Tile) -> dict[str, Any]:
    return {
        "call_id": tile.call_id,
        "source": tile.source,
        "speakers": list(tile.speakers),
        "state": "live",
        "started_at": tile.started_at,
        "audio_s": round(tile.t, 3),
        "meta": tile.meta,
    }


COMMAND_MAX_AGE_S = 30.0
"""A command older than this when it arrives (a restarted instance replaying the stream) is
stale: someone may have assigned the call again since."""


async def _assign(session: CallSession, agent_id: str) -> None:
    session.meta["agent_id"] = agent_id
    await session.emit({"type": "agent_assigned", "agent_id": agent_id})


async def _assign_forwarded(session: CallSession, agent_id: str) -> None:
    try:
        await _assign(session, agent_id)
    except Exception:  # e.g. the call ended meanwhile: nobody awaits this task to see it
        log.exception(
            "call %s: forwarded assignment of %s failed",
            session.call_id,
            agent_id,
            extra=call_fields(session.call_id),
        )


async def _forget_erased(state: AppState, wall: WallTracker, call_ids: list[str]) -> None:
    """Stored calls were erased (coach/store/api.py): drop every other copy of their events,
    here (the call's kept events and its wall tile), in Redis, and on every other instance
    (`forget_call` commands)."""
    for call_id in call_ids:
        if state.manager is not None:
            state.manager.forget_erased(call_id)
        wall.forget(call_id)
        if isinstance(state.bus, RedisBus):
            try:
                await state.bus.erase_call(call_id)
            except Exception as exc:  # Redis down: its copy expires on its own
                log.warning(
                    "erasure: Redis copy of call %s not deleted (%r)",
                    call_id,
                    exc,
                    extra=call_fields(call_id),
                )
            state.bus.publish(COMMAND_TOPIC, {"type": "forget_call", "call_id": call_id})


def _run_command(state: AppState, wall: WallTracker, event: Event, written_at: float) -> None:
    """Another instance asks this one to act on a call it runs (access was checked there)."""
    if event.get("type") == "forget_call" and isinstance(event.get("call_id"), str):
        if state.manager is not None:  # an erasure, however late: drop what is kept here
            state.manager.forget_erased(event["call_id"])
        wall.forget(event["call_id"])
        return
    if event.get("type") != "assign_agent" or time.time() - written_at > COMMAND_MAX_AGE_S:
        return
    call_id, agent_id = event.get("call_id"), event.get("agent_id")
    session = state.manager.get(str(call_id)) if state.manager else None
    if session is None or session.state is not CallState.LIVE:
        return  # not ours (the instance that runs the call acts on it), or it has ended
    if not isinstance(agent_id, str) or not agent_id:
        return
    log.info(
        "call %s: agent %s assigned by %s on another instance",
        call_id,
        agent_id,
        event.get("by"),
        extra=call_fields(call_id),
    )
    task = asyncio.get_running_loop().create_task(_assign_forwarded(session, agent_id))
    _COMMANDS.add(task)
    task.add_done_callback(_COMMANDS.discard)


_COMMANDS: set[asyncio.Task[None]] = set()


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """A 422 names what was wrong and where, without echoing what was sent: FastAPI's own
    answer repeats each rejected value (`input`), and an outcome or a note typed with a card
    or phone number in it came back unredacted (an outside audit), into any proxy's log."""
    if not isinstance(exc, RequestValidationError):  # registered for that class alone
        raise exc
    errors = [
        {k: v for k, v in err.items() if k not in ("input", "ctx", "url")} for err in exc.errors()
    ]
    return JSONResponse(status_code=422, content={"detail": jsonable_encoder(errors)})


def _tell_the_agent(state: AppState, event: Event) -> None:
    """An escalation of a call this instance runs was acknowledged (here or on another
    instance): the call says so on its own stream, as `escalation_taken`, so the agent's panel
    shows that a supervisor has it. Before, only the walls learned it (an outside audit: the
    agent of a crisis call never knew whether anyone was coming)."""
    if event.get("type") != "escalation_ack":
        return
    call_id = str(event.get("call_id"))
    seq = event.get("seq")
    if not isinstance(seq, int):
        return
    session = state.manager.get(call_id) if state.manager else None
    taker = {"acknowledged_by": event.get("by"), "acknowledged_at": event.get("at")}
    if session is None:
        # Not run here (or gone from memory): a copy of its events this instance serves, now
        # or read from Redis for a panel opened later, says who took it. Before, only the
        # instance that ran the call amended its copy.
        state.bus.amend(call_topic(call_id), seq, taker)
        return
    if seq in session.escalations_taken:
        return  # a second acknowledgement changes nothing: the first stands
    session.escalations_taken.add(seq)
    if session.state is not CallState.LIVE:
        # Over, and its events still served from here for a couple of minutes: a panel
        # opened now reads the escalation with who took it, as it will from the store later
        # (it read no "has it" until the call left memory: an outside audit).
        for topic in (agent_topic(call_id), call_topic(call_id)):
            state.bus.amend(topic, seq, taker)
        return
    taken: Event = {
        "type": "escalation_taken",
        "escalation_seq": event.get("seq"),
        "by": event.get("by"),
        "at": event.get("at"),
    }
    task = asyncio.get_running_loop().create_task(_emit_quietly(session, taken))
    _COMMANDS.add(task)
    task.add_done_callback(_COMMANDS.discard)


async def _emit_quietly(session: CallSession, event: Event) -> None:
    try:
        await session.emit(event)
    except Exception:  # nobody awaits this task to see it
        log.exception(
            "call %s: could not emit %s",
            session.call_id,
            event.get("type"),
            extra=call_fields(session.call_id),
        )


class AgentAssignment(BaseModel):
    model_config = ConfigDict(extra="forbid")  # `{"agent": ...}` is a 422, not a blank agent

    agent_id: str = Field(min_length=1, max_length=200)


def _call_info(session: CallSession) -> dict[str, Any]:
    return {
        "call_id": session.call_id,
        "source": session.source,
        "speakers": list(session.speakers),
        "state": session.state.value,
        "started_at": session.started_wall,
        "audio_s": round(session.fed_s, 3),
        "meta": session.meta,
    }


def _first_error(exc: ValidationError, name: str) -> str:
    return f"{name}: {exc.errors(include_url=False)[0]['msg']}"


async def _stream_stored(
    ws: WebSocket,
    state: AppState,
    principal: Principal,
    call_id: str,
    after_seq: int | None,
    *,
    on_wall: bool = False,
) -> bool:
    """A call no instance runs: its stored events and its call_end, then a normal close.

    A panel that reconnects after a restart keeps the call and learns how it ended (reason
    `interrupted` when the process stopped before the call did); a call the store does not
    know either is refused with 4404, so the panel can say so instead of waiting for ever;
    except for a user who may watch any call (an admin), who waits for it to start: returns
    False then, having sent nothing; so does a call the store lacks but the wall knows.
    """
    store: Store | None = getattr(ws.app.state, "store", None)
    try:
        detail = await store.get_call(call_id) if store is not None else None
    except StoreUnavailable:
        await refuse(ws, cc.TRY_AGAIN_LATER, "store_unavailable", "the call store is down; retry")
        return True
    if detail is None:
        if on_wall or may_view_call(principal, None):
            return False  # the wall's record of it decides (no store, or not written yet)
        await refuse(ws, cc.UNKNOWN_CALL, "unknown_call", f"no call {call_id} is live or stored")
        return True
    if not may_view_call(principal, detail.call.access_meta):
        await refuse(ws, cc.POLICY_VIOLATION, "forbidden", "not your call")
        return True
    if detail.call.ended_at is None and isinstance(state.bus, RedisBus):
        # Not ended, and no live owner key: either another instance is starting it, or one
        # that lost Redis still runs it (its key expired, its events still reach the store).
        # Either way it was heard lately; only a call silent for twice the key's TTL is over,
        # as the orphan sweep decides (coach/store/recovered.py).
        heard = max(detail.call.started_at, detail.call.last_activity or detail.call.started_at)
        if datetime.now(UTC) - heard < timedelta(seconds=2 * state.settings.redis_session_ttl_s):
            return False
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
        if not after_seq:
            # The panel of a call replayed from the store opened without its call_start (an
            # outside scaling audit): what it came in on, its channels, its agent.
            await ws.send_text(dumps(recovered.start_event(detail)))
        for ev in recovered.stored_events(detail, after_seq=after_seq):
            await ws.send_text(dumps(ev))
        await ws.send_text(dumps(recovered.end_event(detail, after_seq=after_seq)))
        await ws.close(code=cc.NORMAL)
    return True


async def _cancel_and_wait(tasks: list[asyncio.Task[Any]], timeout_s: float = 5.0) -> None:
    """Cancel `tasks` and wait until they have stopped (at most `timeout_s`, then say which)."""
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    _, stuck = await asyncio.wait(tasks, timeout=timeout_s)
    for task in stuck:
        log.error("shutdown: task %s did not stop within %.0f s", task.get_name(), timeout_s)


async def _close_orphans(
    state: AppState,
    store: Store,
    wall: WallTracker,
    *,
    started: datetime,
    backfill: Callable[[str], Awaitable[None]] | None = None,
) -> None:
    """Close calls that a stopped process left unended (coach/store/recovered.py).

    Without Redis this process is the only one on its store: once, at start-up, every call
    that started before it is an orphan. With Redis it repeats, for calls whose owner key
    expired (twice the key's lifetime ago, so a call being set up is never taken), every
    third of that lifetime: a call becomes an orphan at any moment, and checking only every
    two lifetimes left a killed instance's call live on every wall, its panels waiting, for
    up to four lifetimes (two minutes by default; found by an outside audit with two real
    servers, 106 s after a kill -9). Two instances may close one orphan at the same moment:
    its `call_end`, made from the stored call, is the same from both, and stored once.

    The wall draws each orphan it has no tile for from the store first (a restarted process
    has none for the calls it was running), so the supervisor sees the call cut off, with any
    escalation still open, rather than have it vanish. It also draws, once, the calls a stop
    cut off that are no orphans (ended as `shutdown` by a SIGTERM, or closed by a restart
    shortly before) and ended within the wall's keep, and the calls of any end with an
    escalation nobody acknowledged (kept up to an hour): those vanished the same way. With
    Redis the event stream replays what it still holds, but a busy center's stream has
    scrolled past a call ended minutes ago (`COACH_REDIS_STREAM_MAXLEN`); a call that runs on
    another instance now (resumed there after the stop) is left to the stream, which brings
    it live.
    """

    def draw(detail: CallDetail) -> None:
        wall.seed(detail.call.call_id, recovered.wall_events(detail), cues=len(detail.cues))

    redis = isinstance(state.bus, RedisBus)
    ttl = state.settings.redis_session_ttl_s
    # With Redis a call is an orphan once found ownerless twice, longer apart than its
    # instance takes to write its keys again (every third of their lifetime, on the writer's
    # next wake: `OwnerlessTwice`, a flushed Redis loses live calls' keys for a moment); the
    # sweep looks that much earlier, so a killed instance's calls still close about two
    # lifetimes after they were last heard.
    confirm_s = ttl / 3 + (state.bus.heartbeat_s if isinstance(state.bus, RedisBus) else 0) + 0.5
    is_live: recovered.IsLive = (
        recovered.OwnerlessTwice(state.is_live, confirm_s=confirm_s) if redis else state.is_live
    )
    looks = math.ceil(confirm_s / (ttl / 3))  # the looks (every ttl/3) a confirmation takes
    idle_s = max(ttl, 2 * ttl - looks * ttl / 3)
    delay = 1.0
    drew_ended = False
    while True:
        before = datetime.now(UTC) - timedelta(seconds=idle_s) if redis else started
        try:
            closed = await recovered.close_orphans(
                store,
                state.bus,
                is_live=is_live,
                started_before=before,
                on_orphan=draw,
                backfill=backfill,
            )
            if not drew_ended:
                # Calls the stopped process ended itself (a SIGTERM's `shutdown`) or that an
                # earlier restart closed are no orphans now, but as recent on the wall.
                # So are calls of any end with an escalation nobody acknowledged, which the
                # wall keeps longer than other ended calls.
                now = datetime.now(UTC)
                found = await recovered.ended_for_the_wall(
                    store,
                    since=now - timedelta(seconds=wall.keep_ended_s),
                    open_since=now - timedelta(seconds=wall.keep_open_escalation_s),
                )
                for detail in found:
                    if not (redis and await state.is_live(detail.call.call_id)):
                        draw(detail)
                drew_ended = True
        except StoreUnavailable as exc:
            log.info("orphaned calls not checked yet (store unavailable: %s)", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60.0)
            continue
        except Exception:
            log.exception("closing orphaned calls failed")
            closed = []
        if closed:
            log.warning("closed %d call(s) cut off by a stopped instance", len(closed))
        if not redis:
            return
        delay = 1.0
        await asyncio.sleep(ttl / 3)


async def _stream_events(
    ws: WebSocket,
    bus: InProcessBus,
    topic: str,
    after_seq: int | None,
    *,
    still_allowed: Callable[[Event], bool] | None = None,
    principal: Principal | None = None,
) -> None:
    """Recent events after `after_seq` first (resume), then live ones, until the call ends.

    `still_allowed`: whether the watcher may still see the call. When a supervisor moves it
    to another agent, the feed of whoever lost it (the earlier agent, reading the customer's
    words unredacted; a supervisor of the earlier agent's team) ends with 1008 `reassigned`
    after the `agent_assigned` event. The feed also ends (1008 `unauthorized`) when the
    watcher's token expires: it used to stream on for the rest of the call.
    """
    sub = bus.subscribe(topic, after_seq=after_seq)
    try:
        async with client_watch(ws) as watcher:
            while True:
                timeout = seconds_left(principal) if principal is not None else None
                ev = await next_item(sub.queue, watcher, timeout)
                if ev is Stop.EXPIRED:  # the page signs in again and resumes
                    await refuse(ws, cc.POLICY_VIOLATION, "unauthorized", TOKEN_EXPIRED)
                    return
                if ev is Stop.GONE:
                    return
                if ev is None and sub.moved:
                    # Handed over by a draining instance: the agent's own feed here would
                    # stay silent for the rest of the call (an outside drain test).
                    # Connecting again resumes it from wherever the call runs now.
                    await refuse(
                        ws, cc.TRY_AGAIN_LATER, "moved", "the call moved to another instance"
                    )
                    return
                if ev is None:  # the call ended and every event was sent
                    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
                        await ws.close(code=cc.NORMAL)
                    return
                await ws.send_text(dumps(ev))
                if (
                    ev.get("type") == "agent_assigned"
                    and still_allowed is not None
                    and not still_allowed(ev)
                ):
                    await refuse(
                        ws, cc.POLICY_VIOLATION, "reassigned", "the call was moved to another agent"
                    )
                    return
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        bus.unsubscribe(sub)
