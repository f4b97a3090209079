"""REST over the call-history store: search, one call, customer history, feedback, missed-cue
reports, edits.

Mounted by the application (`app.include_router(router)`) with the store in
`app.state.store`. Every route needs a token. Agents see and act on their own calls only
(the `agent_id` the call started with); supervisors and admins on every call. A database
outage answers 503, so panels can tell "try again" from "not there".
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
)

from coach import metrics
from coach.api.security import may_view_call, require_principal
from coach.auth import Principal
from coach.bus import SUPERVISOR_TOPIC
from coach.cues.playbook import Playbook, load_playbook
from coach.events import Urgency
from coach.logs import call_fields
from coach.redaction import customer_aliases
from coach.settings import Settings
from coach.store.records import (
    CallDetail,
    CallRecord,
    CustomerCall,
    EscalationRecord,
    FeedbackRecord,
    MissedCueRecord,
    NotFound,
    Refused,
    StoreUnavailable,
    Verdict,
)
from coach.store.store import MAX_PAGE, Store


def refuse_nul(request: Request) -> None:
    """A NUL in a path or query parameter names nothing: 422 on both stores.

    PostgreSQL text cannot hold one (the driver's refusal came back as a 409 quoting it)
    and SQLite cuts the string there (`?q=%00` searched for "" and listed every call)."""
    params = [*request.path_params.items(), *request.query_params.multi_items()]
    bad = next((name for name, value in params if "\x00" in str(value)), None)
    if bad is not None:
        raise HTTPException(422, f"{bad}: NUL characters are not allowed")


def _in_utc(value: datetime | None) -> datetime | None:
    """A date the store can compare with (UTC); one that has none (year 9999 at -23:59)
    is the client's mistake, not an outage (it was a 503)."""
    if value is None or value.tzinfo is None:
        return value  # naive: already taken as UTC (models.UTCDateTime)
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("date out of range in UTC") from exc


DateQuery = Annotated[datetime | None, AfterValidator(_in_utc)]
"""`since` / `until` of the history search and the coaching analytics."""

log = logging.getLogger(__name__)
router = APIRouter(tags=["history"], dependencies=[Depends(refuse_nul)])
CurrentPrincipal = Annotated[Principal, Depends(require_principal)]

MAX_SEQ = 2**31 - 1
"""The largest event `seq` the store can hold (its seq columns are 32-bit integers on
PostgreSQL): a larger one names nothing, and a driver would fail on it, so it is a 422."""
MAX_OFFSET = 2**62
"""Far beyond any table, yet within the 64-bit integers both databases take for OFFSET."""
Seq = Annotated[int, Path(ge=0, le=MAX_SEQ, description="the event's `seq` in the call")]
CueId = Annotated[str, Path(min_length=1, max_length=64)]
_SEQ = TypeAdapter(Annotated[int, Field(ge=0, le=MAX_SEQ)])


def reportable_cues(request: Request) -> dict[str, str]:
    """The cues a missed-cue report may name, with their titles: the customer's language cues
    of the playbook in force (the bundled one while the models load)."""
    runtime = getattr(getattr(request.app.state, "coach", None), "runtime", None)
    library = getattr(runtime, "playbook", None)
    playbook = library.current.playbook if library is not None else _bundled_playbook()
    return {
        cue_id: spec.title
        for cue_id, spec in playbook.cues.items()
        if spec.kind == "language" and spec.party == "customer"
    }


@functools.cache
def _bundled_playbook() -> Playbook:
    return load_playbook(None)


def get_store(request: Request) -> Store:
    store: Store | None = getattr(request.app.state, "store", None)
    if store is None:
        raise HTTPException(503, "call history is not configured")
    return store


CurrentStore = Annotated[Store, Depends(get_store)]


def customer_ids(request: Request, customer_id: str) -> tuple[str, ...]:
    """A customer id as a person types it (a caller's phone number, say): the alias calls are
    stored under (`coach.redaction.customer_alias`), and the id itself, under which calls
    stored before aliases existed are found."""
    settings: Settings = request.app.state.settings
    aliases = customer_aliases(customer_id, settings.customer_alias_key, settings.phone_region)
    return aliases if aliases[0] == customer_id else (*aliases, customer_id)


@contextlib.contextmanager
def _answers() -> Iterator[None]:
    """Store errors as HTTP answers: missing rows 404, refused data 409, no database 503."""
    try:
        yield
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except Refused as exc:  # e.g. the call was deleted by retention meanwhile
        raise HTTPException(409, str(exc)) from exc
    except StoreUnavailable as exc:
        raise HTTPException(503, "call history is temporarily unavailable") from exc


class CallPage(BaseModel):
    calls: list[CallRecord]
    limit: int
    offset: int


class CustomerHistory(BaseModel):
    customer_id: str
    calls: list[CustomerCall]


class FeedbackBody(BaseModel):
    # The CONTRACT body: other fields are ignored, not refused, because telephony and CRM
    # clients wrap it in their own envelopes; the verdict itself is required and checked.
    verdict: Verdict


class MissedCueBody(BaseModel):
    # Our own body (not the CONTRACT's): a misspelt field is a 422 naming it.
    model_config = ConfigDict(extra="forbid")

    cue: str = Field(..., max_length=64, description="a customer language cue of the playbook")


class OutcomeBody(BaseModel):
    # Required, even to clear: `{}` or a misspelt field used to wipe a stored outcome. An
    # explicit null clears it; a blank string is no outcome either.
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    outcome: str | None = Field(
        ..., min_length=1, max_length=200, description="e.g. resolved, callback; null clears it"
    )


def _team_filter(principal: Principal) -> frozenset[str] | None:
    """For a supervisor with a team, the agents whose calls they see (with the unassigned
    ones, as may_view_call); None for everyone else (agents are filtered by agent_id)."""
    if principal.role == "supervisor" and principal.team is not None:
        return principal.team_agents or frozenset()
    return None


async def _visible_call(store: Store, call_id: str, principal: Principal) -> CallRecord:
    with _answers():
        call = await store.get_call_record(call_id)
    if call is None:
        raise HTTPException(404, f"call {call_id} not found")
    if not may_view_call(principal, call.access_meta):
        raise HTTPException(403, "not your call")
    return call


@router.get("/api/history/calls")
async def search_calls(
    principal: CurrentPrincipal,
    store: CurrentStore,
    agent_id: str | None = None,
    customer_id: str | None = None,
    since: DateQuery = None,
    until: DateQuery = None,
    q: Annotated[str | None, Query(max_length=200, description="words said in the call")] = None,
    cue: Annotated[
        str | None, Query(max_length=64, description="calls where this cue id was shown")
    ] = None,
    escalation: Annotated[
        Urgency | None,
        Query(description="calls with an escalation at this urgency or above (low: any)"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    *,
    request: Request,
) -> CallPage:
    """Stored calls, newest first. Agents get their own calls only."""
    if not principal.is_supervisor:
        if agent_id not in (None, principal.user):
            raise HTTPException(403, "agents may only search their own calls")
        agent_id = principal.user
    with _answers():
        calls = await store.list_calls(
            agent_id=agent_id,
            customer_id=None if customer_id is None else customer_ids(request, customer_id),
            since=since,
            until=until,
            query=q,
            cue=cue,
            min_urgency=escalation,
            team_agents=_team_filter(principal),
            limit=limit,
            offset=offset,
        )
    # The store applied the team filter; this only guards against the two rules drifting.
    calls = [c for c in calls if may_view_call(principal, c.access_meta)]
    return CallPage(calls=calls, limit=limit, offset=offset)


@router.get("/api/history/calls/{call_id}")
async def get_stored_call(
    call_id: str, principal: CurrentPrincipal, store: CurrentStore, request: Request
) -> CallDetail:
    """One stored call: redacted transcript, cues with their feedback, escalations, summary.

    A call the wall has seen end is read once the store has written its end, within
    WRITE_WAIT_S: asked the moment a call ended (a post-call summary opened from the wall, an
    integration fetching the record on hang-up) it answered 404, or a call without its end,
    for about half a second (an outside ingest audit)."""
    wall = getattr(request.app.state, "wall", None)
    ending = wall is not None and wall.has_ended(call_id)

    async def read() -> CallDetail:
        await _visible_call(store, call_id, principal)
        with _answers():
            detail = await store.get_call(call_id)
        if detail is None:
            raise HTTPException(404, f"call {call_id} not found")
        return detail

    return await _until_written(
        _write_deadline(ending), read, done=lambda d: d.call.ended_at is not None
    )


@router.get("/api/customers/{customer_id}/history")
async def customer_history(
    customer_id: str,
    principal: CurrentPrincipal,
    store: CurrentStore,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> CustomerHistory:
    """A customer's previous calls (supervisors and admins), by their id or its alias."""
    if not principal.is_supervisor:
        raise HTTPException(403, "supervisors only")
    ids = customer_ids(request, customer_id)
    with _answers():
        calls = await store.customer_history(ids, limit=limit, team_agents=_team_filter(principal))
    calls = [c for c in calls if may_view_call(principal, {"agent_id": c.agent_id})]
    # Named by its alias: the answer may be logged or shown further than the question.
    return CustomerHistory(customer_id=ids[0], calls=calls)


class Erasure(BaseModel):
    erased: list[str]
    """The calls deleted, with their transcripts, cues, feedback, escalations and summaries."""
    live: list[str]
    """Calls not ended yet, left alone: erase them again once they have ended."""


@router.delete("/api/history/calls/{call_id}", status_code=204)
async def erase_call(
    call_id: str, principal: CurrentPrincipal, store: CurrentStore, request: Request
) -> None:
    """Delete one stored call and everything stored with it (admins): a caller's request to
    have their data erased. 409 while the call has not ended."""
    _admins_only(principal)
    with _answers():
        erased, live = await store.erase_calls(call_id=call_id)
        erased, live = await _erase_just_ended(request, store, erased, live)
    await _forget_elsewhere(request, erased)
    if live:
        raise HTTPException(409, f"call {call_id} has not ended: erase it once it has")
    if not erased:
        raise HTTPException(404, f"call {call_id} not found")
    log.warning(
        "erasure: %s deleted stored call %s", principal.user, call_id, extra=call_fields(call_id)
    )


@router.delete("/api/customers/{customer_id}/history")
async def erase_customer(
    customer_id: str, principal: CurrentPrincipal, store: CurrentStore, request: Request
) -> Erasure:
    """Delete every stored call of a customer (admins), by their id or its alias; calls still
    running are listed in `live` and kept."""
    _admins_only(principal)
    ids = customer_ids(request, customer_id)
    with _answers():
        erased, live = await store.erase_calls(customer_id=ids)
        erased, live = await _erase_just_ended(request, store, erased, live)
    await _forget_elsewhere(request, erased)
    log.warning(
        "erasure: %s deleted %d stored call(s) of customer %s%s",
        principal.user,
        len(erased),
        ids[0],
        f" ({len(live)} not ended, kept)" if live else "",
    )
    return Erasure(erased=erased, live=live)


async def _erase_just_ended(
    request: Request, store: Store, erased: list[str], live: list[str]
) -> tuple[list[str], list[str]]:
    """Calls the store still holds as running but whose end the wall has seen are erased
    once the store has written that end, within WRITE_WAIT_S: an erasure asked right after
    a call ended answered "live" (409) for a second (an outside review audit)."""
    wall = getattr(request.app.state, "wall", None)
    ending = [c for c in live if wall is not None and wall.has_ended(c)]
    if not ending:
        return erased, live
    erased, live = list(erased), [c for c in live if c not in ending]
    deadline = _write_deadline(True)
    for call_id in ending:
        done, still = await _until_written(
            deadline,
            functools.partial(store.erase_calls, call_id=call_id),
            done=lambda r: bool(r[0]) or not r[1],  # erased now, or gone meanwhile
        )
        erased += done
        live += still
    return erased, live


async def _forget_elsewhere(request: Request, erased: list[str]) -> None:
    """The copies outside the store (events kept for late panels, in memory and in Redis)
    go too: the application's hook, when it set one."""
    hook = getattr(request.app.state, "on_erased", None)
    if hook is not None and erased:
        await hook(erased)


def _admins_only(principal: Principal) -> None:
    if not principal.is_admin:
        raise HTTPException(403, "admins only")


T = TypeVar("T")

WRITE_WAIT_S = 3.0
"""How long a rating waits for a cue the store has not written yet, on a call the server
knows (the store writes every COACH_STORE_FLUSH_INTERVAL_S): a client rating a cue the moment
it arrives got 404 "has no cue" (an outside audit with two servers)."""


@router.post("/api/calls/{call_id}/cues/{cue}/feedback")
async def cue_feedback(
    call_id: str,
    cue: CueId,
    body: FeedbackBody,
    principal: CurrentPrincipal,
    store: CurrentStore,
    request: Request,
) -> FeedbackRecord:
    """Rate a cue: `cue` is the cue's `seq` in the call, or its cue id (latest occurrence)."""
    seq = _as_seq(cue)
    record, changed = await _once_written(
        request, call_id, seq, lambda: _rate(store, call_id, cue, seq, body, principal)
    )
    # A retried or double-clicked POST replaces a verdict with itself: counted once.
    if changed:
        metrics.CUE_FEEDBACK.labels(cue=record.cue, verdict=record.verdict).inc()
    return record


async def _once_written(
    request: Request, call_id: str, seq: int | None, act: Callable[[], Awaitable[T]]
) -> T:
    """`act()`, a write about one event of a call, waiting up to WRITE_WAIT_S for the store to
    have written that event when the wall has passed it on (a call that is live, or just
    ended): a 404 then only means "not yet". A cue the wall never saw, or an unknown call,
    is answered at once: a flood of such ratings held each request for the whole wait (an
    outside security audit)."""
    wall = getattr(request.app.state, "wall", None)
    known = (
        wall is not None
        and wall.meta(call_id) is not None
        and (seq is None or wall.saw(call_id, seq))
    )
    return await _until_written(_write_deadline(known), act)


def _write_deadline(wait: bool) -> float:
    """Until when a request about a call the wall has seen waits for the store to catch up."""
    return time.monotonic() + (WRITE_WAIT_S if wait else 0.0)


async def _until_written(
    deadline: float,
    act: Callable[[], Awaitable[T]],
    *,
    done: Callable[[T], bool] = lambda _: True,
) -> T:
    """`act()` again every 0.1 s until it neither raises a 404 nor gives a result `done`
    refuses, or `deadline` (time.monotonic) passes: then its last answer, or its 404. The
    store writes a call's events a flush or two after the wall passes them on."""
    while True:
        try:
            result = await act()
            if done(result) or time.monotonic() >= deadline:
                return result
        except HTTPException as exc:
            if exc.status_code != 404 or time.monotonic() >= deadline:
                raise
        await asyncio.sleep(0.1)


async def _rate(
    store: Store,
    call_id: str,
    cue: str,
    seq: int | None,
    body: FeedbackBody,
    principal: Principal,
) -> tuple[FeedbackRecord, bool]:
    await _visible_call(store, call_id, principal)
    with _answers():
        if seq is None:
            seq = await store.latest_cue_seq(call_id, cue)
        if seq is None:
            raise NotFound(f"call {call_id} has no cue {cue}")
        return await store.add_feedback(
            call_id=call_id, cue_seq=seq, verdict=body.verdict, user=principal.user
        )


def _as_seq(cue: str) -> int | None:
    """A cue named by its `seq` (ASCII digits; 422 beyond MAX_SEQ), or None for a cue id.

    `str.isdigit` is not the test: it accepts digits such as "²" that int() refuses."""
    if not (cue.isascii() and cue.isdigit()):
        return None
    try:
        return _SEQ.validate_python(cue)
    except ValidationError as exc:
        # The same 422 body FastAPI gives for its own parameters.
        raise RequestValidationError(
            [{**e, "loc": ("path", "cue")} for e in exc.errors(include_url=False)]
        ) from exc


@router.delete("/api/calls/{call_id}/cues/{cue_seq}/feedback", status_code=204)
async def withdraw_cue_feedback(
    call_id: str, cue_seq: Seq, principal: CurrentPrincipal, store: CurrentStore
) -> None:
    """Take back your own rating of a cue (404 if you gave none)."""
    await _visible_call(store, call_id, principal)
    with _answers():
        await store.withdraw_feedback(call_id=call_id, cue_seq=cue_seq, user=principal.user)
    metrics.REVIEW_WITHDRAWALS.labels(kind="feedback").inc()


@router.get("/api/missed-cues/cues")
async def missed_cue_choices(request: Request, principal: CurrentPrincipal) -> list[dict[str, str]]:
    """The cues a missed-cue report may name (`cue`, `title`), for a review page's menu."""
    return [{"cue": c, "title": t} for c, t in reportable_cues(request).items()]


@router.post("/api/calls/{call_id}/utterances/{seq}/missed-cue")
async def report_missed_cue(
    call_id: str,
    seq: Seq,
    body: MissedCueBody,
    request: Request,
    principal: CurrentPrincipal,
    store: CurrentStore,
) -> MissedCueRecord:
    """Say that this customer utterance (its transcript `seq`) should have shown `cue`.

    The reports teach the playbook real callers' wording: `scripts/tune_playbook.py --missed`
    proposes each reported utterance's redacted text as an example of its cue."""
    allowed = reportable_cues(request)
    if body.cue not in allowed:
        raise HTTPException(
            422, f"cue must be one of the customer's language cues: {', '.join(allowed)}"
        )
    await _visible_call(store, call_id, principal)
    with _answers():
        record, new = await store.add_missed_cue(
            call_id=call_id, utterance_seq=seq, cue=body.cue, user=principal.user
        )
    if new:  # the same report posted again is one report
        metrics.MISSED_CUE_REPORTS.labels(cue=record.cue).inc()
    return record


@router.delete("/api/calls/{call_id}/utterances/{seq}/missed-cue/{cue}", status_code=204)
async def withdraw_missed_cue(
    call_id: str, seq: Seq, cue: CueId, principal: CurrentPrincipal, store: CurrentStore
) -> None:
    """Take back your own missed-cue report (404 if you made none): a wrong report then no
    longer reaches `scripts/tune_playbook.py --missed`."""
    await _visible_call(store, call_id, principal)
    with _answers():
        await store.withdraw_missed_cue(
            call_id=call_id, utterance_seq=seq, cue=cue, user=principal.user
        )
    metrics.REVIEW_WITHDRAWALS.labels(kind="missed_cue").inc()


@router.post("/api/calls/{call_id}/escalations/{seq}/ack")
async def acknowledge_escalation(
    call_id: str, seq: Seq, request: Request, principal: CurrentPrincipal, store: CurrentStore
) -> EscalationRecord:
    """A supervisor takes an escalation; the first acknowledgement stands."""
    if not principal.is_supervisor:
        raise HTTPException(403, "supervisors only")

    async def acknowledge() -> EscalationRecord:
        await _visible_call(store, call_id, principal)
        with _answers():
            return await store.acknowledge_escalation(call_id=call_id, seq=seq, user=principal.user)

    # Taken the moment it shows on the wall, before the store has written it: 404 "no
    # escalation" (an outside check); it waits for the write, as a rating does.
    record = await _once_written(request, call_id, seq, acknowledge)
    # Every open wall clears the alert, not only the one that acknowledged it.
    bus = getattr(getattr(request.app.state, "coach", None), "bus", None)
    if bus is not None:
        bus.publish(
            SUPERVISOR_TOPIC,
            {
                "type": "escalation_ack",
                "call_id": call_id,
                "seq": seq,
                "by": record.acknowledged_by,
                "at": record.acknowledged_at.isoformat() if record.acknowledged_at else None,
            },
        )
    return record


@router.put("/api/calls/{call_id}/outcome")
async def set_outcome(
    call_id: str, body: OutcomeBody, principal: CurrentPrincipal, store: CurrentStore
) -> CallRecord:
    """Record how the call ended for the customer: `{"outcome": "resolved"}` (1-200
    characters), or `{"outcome": null}` to clear it. Anyone who may view the call (its agent,
    a supervisor of its team, an admin). The call's record; 422 for a body without
    `outcome`, 403 not your call, 404 no such call."""
    await _visible_call(store, call_id, principal)
    with _answers():
        return await store.set_outcome(call_id=call_id, outcome=body.outcome, user=principal.user)
