"""Tests for models.runtime.InferenceScheduler with a pure-python `run_batch`.

`run_batch` is the scheduler's seam: here it upper-cases strings and records every batch it
sees. A request named "hold" blocks the worker on a threading.Event, so every test decides
exactly what is queued while the worker is busy; nothing depends on sleeps.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models import runtime
from models.runtime import BatchStats, InferenceScheduler, Shed

WAIT_S = 5.0  # generous upper bound for things that happen at once; never a timing assumption


class FakeModel:
    """run_batch: one result per request, in order; "hold" blocks, "boom*" raises."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, requests: Sequence[str]) -> list[str]:
        with self._lock:
            self.batches.append(list(requests))
        if "hold" in requests:
            self.started.set()
            assert self.release.wait(WAIT_S), "test never released the worker"
        if any(r.startswith("boom") for r in requests):
            raise RuntimeError("model exploded")
        return [r.upper() for r in requests]

    @property
    def seen(self) -> list[str]:
        return [r for batch in self.batches for r in batch]


class Harness:
    def __init__(self, *, workers: int = 1, max_batch: int = 1, max_queue: int = 256) -> None:
        self.model = FakeModel()
        self.stats: list[BatchStats] = []
        self.sched: InferenceScheduler[str, str] = InferenceScheduler(
            name="fake",
            run_batch=self.model,
            workers=workers,
            max_batch=max_batch,
            max_queue=max_queue,
            on_batch=self.stats.append,
        )

    def hold(self) -> Future[str]:
        """Occupy the (single) worker until `release()`."""
        fut = self.sched.submit("hold", priority=0)
        assert self.model.started.wait(WAIT_S)
        return fut

    def release(self) -> None:
        self.model.release.set()

    def close(self) -> None:
        self.model.release.set()
        self.sched.close(timeout_s=WAIT_S)

    def close_while_held(self, *pending: Future[str]) -> None:
        """Close while the worker is still busy, so nothing queued can slip into a batch."""
        closer = threading.Thread(target=self.sched.close, kwargs={"timeout_s": WAIT_S})
        closer.start()
        for fut in pending:
            assert shed(fut)  # shed by close() before it waits for the worker
        self.release()
        closer.join(WAIT_S)
        assert not closer.is_alive()


@pytest.fixture
def make() -> Iterator[type[Harness]]:
    made: list[Harness] = []

    class _H(Harness):
        def __init__(self, **kwargs: int) -> None:
            super().__init__(**kwargs)
            made.append(self)

    yield _H
    for h in made:
        h.close()


def shed(fut: Future[str]) -> bool:
    return isinstance(fut.exception(timeout=WAIT_S), Shed)


# -- ordering --------------------------------------------------------------------------------


def test_serves_a_request(make: type[Harness]) -> None:
    h = make()
    assert h.sched.submit("hello").result(timeout=WAIT_S) == "HELLO"
    assert h.model.batches == [["hello"]]


def test_finals_overtake_queued_partials(make: type[Harness]) -> None:
    h = make(max_batch=1)
    h.hold()
    partials = [h.sched.submit(f"partial{i}", priority=2) for i in range(3)]
    final = h.sched.submit("final", priority=0)
    middle = h.sched.submit("agent-final", priority=1)
    assert h.sched.depth == 5
    h.release()
    for fut in [*partials, final, middle]:
        fut.result(timeout=WAIT_S)
    # Lower number first; first come, first served within one priority.
    assert h.model.seen == ["hold", "final", "agent-final", "partial0", "partial1", "partial2"]


# -- coalescing ------------------------------------------------------------------------------


def test_newer_request_with_same_key_replaces_queued_one(make: type[Harness]) -> None:
    h = make()
    h.hold()
    old = h.sched.submit("old", priority=2, coalesce_key="call1:customer")
    other = h.sched.submit("other", priority=2, coalesce_key="call2:customer")
    new = h.sched.submit("new", priority=2, coalesce_key="call1:customer")
    # Shed at once, without waiting for the worker.
    assert old.done() and isinstance(old.exception(timeout=0), Shed)
    assert h.sched.shed_count == 1 and h.sched.depth == 2
    h.release()
    assert new.result(timeout=WAIT_S) == "NEW"
    assert other.result(timeout=WAIT_S) == "OTHER"
    assert "old" not in h.model.seen


def test_coalescing_never_touches_a_running_request(make: type[Harness]) -> None:
    h = make()
    running = h.sched.submit("hold", coalesce_key="k")
    assert h.model.started.wait(WAIT_S)
    queued = h.sched.submit("next", coalesce_key="k")
    h.release()
    assert running.result(timeout=WAIT_S) == "HOLD"
    assert queued.result(timeout=WAIT_S) == "NEXT"
    assert h.sched.shed_count == 0


def test_key_is_free_again_after_its_request_ran(make: type[Harness]) -> None:
    h = make()
    assert h.sched.submit("a", coalesce_key="k").result(timeout=WAIT_S) == "A"
    h.hold()
    b = h.sched.submit("b", coalesce_key="k")
    h.release()
    assert b.result(timeout=WAIT_S) == "B"
    assert h.sched.shed_count == 0


# -- staleness -------------------------------------------------------------------------------


class VirtualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_max_wait_expiry_sheds_stale_requests(
    make: type[Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = VirtualClock()
    monkeypatch.setattr(
        runtime, "time", SimpleNamespace(monotonic=clock.monotonic, perf_counter=time.perf_counter)
    )
    h = make()
    h.hold()
    stale = h.sched.submit("stale", priority=2, max_wait_s=0.5)
    clock.now += 1.0
    fresh = h.sched.submit("fresh", priority=2, max_wait_s=0.5)
    patient = h.sched.submit("patient", priority=2)
    at_limit = h.sched.submit("at-limit", priority=2, max_wait_s=0.0)
    h.release()
    assert shed(stale)
    assert fresh.result(timeout=WAIT_S) == "FRESH"
    assert patient.result(timeout=WAIT_S) == "PATIENT"
    assert at_limit.result(timeout=WAIT_S) == "AT-LIMIT"  # not past its deadline yet
    assert "stale" not in h.model.seen
    assert h.sched.shed_count == 1


# -- batching --------------------------------------------------------------------------------


def test_max_batch_groups_requests_from_several_callers(make: type[Harness]) -> None:
    h = make(max_batch=4)
    h.hold()
    futures: dict[str, Future[str]] = {}
    lock = threading.Lock()

    def caller(name: str) -> None:
        fut = h.sched.submit(name, priority=1)
        with lock:
            futures[name] = fut

    threads = [threading.Thread(target=caller, args=(f"call{i}",)) for i in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(WAIT_S)
    assert h.sched.depth == 6
    h.release()
    for name, fut in futures.items():
        assert fut.result(timeout=WAIT_S) == name.upper()  # each caller gets its own answer
    assert h.model.batches[0] == ["hold"]
    assert [len(b) for b in h.model.batches[1:]] == [4, 2]
    assert sorted(h.model.seen[1:]) == sorted(futures)
    assert [(s.size, s.queue_depth) for s in h.stats] == [(1, 6), (4, 2), (2, 0)]
    assert all(s.seconds >= 0 for s in h.stats)


def test_batch_takes_the_most_important_first_and_never_mixes_priorities(
    make: type[Harness],
) -> None:
    h = make(max_batch=3)
    h.hold()
    futs = [h.sched.submit("p-a", priority=2), h.sched.submit("p-b", priority=2)]
    futs.append(h.sched.submit("final", priority=0))
    futs.append(h.sched.submit("final-2", priority=0))
    futs.append(h.sched.submit("agent-final", priority=1))
    h.release()
    for f in futs:
        f.result(timeout=WAIT_S)
    # A final's result would wait for every decode in its batch: finals batch with finals.
    assert h.model.batches[1:] == [["final", "final-2"], ["agent-final"], ["p-a", "p-b"]]


def test_a_batch_group_joins_priorities_but_never_finals_with_partials(
    make: type[Harness],
) -> None:
    """Both parties' finals (priorities 0 and 1) may share a batch, as may both parties'
    partials (2 and 3); a final still never waits for a partial's decode."""
    h = make(max_batch=4)
    h.hold()
    futs = [
        h.sched.submit("agent-partial", priority=3, batch_group="partial"),
        h.sched.submit("customer-partial", priority=2, batch_group="partial"),
        h.sched.submit("agent-final", priority=1, batch_group="final"),
        h.sched.submit("customer-final", priority=0, batch_group="final"),
        h.sched.submit("other", priority=1),  # no group: batches by priority only
    ]
    h.release()
    for f in futs:
        f.result(timeout=WAIT_S)
    assert h.model.batches[1:] == [
        ["customer-final", "agent-final"],
        ["other"],
        ["customer-partial", "agent-partial"],
    ]


def test_a_dead_head_does_not_split_a_batch(make: type[Harness]) -> None:
    h = make(max_batch=3)
    h.hold()
    a = h.sched.submit("a", priority=2, coalesce_key="k")
    h.sched.submit("x", priority=2)
    h.sched.submit("a2", priority=2, coalesce_key="k")  # kills the queued "a"
    assert shed(a)
    h.release()
    deadline = time.monotonic() + WAIT_S
    while len(h.model.batches) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert h.model.batches[1:] == [["x", "a2"]]


# -- failures --------------------------------------------------------------------------------


def test_exception_fails_the_batch_and_worker_survives(
    make: type[Harness], caplog: pytest.LogCaptureFixture
) -> None:
    h = make(max_batch=2)
    h.hold()
    boom = h.sched.submit("boom")
    mate = h.sched.submit("mate")
    with caplog.at_level(logging.ERROR, logger="models.runtime"):
        h.release()
        for fut in (boom, mate):
            exc = fut.exception(timeout=WAIT_S)
            assert isinstance(exc, RuntimeError) and "exploded" in str(exc)
    assert "failed on a batch of 2" in caplog.text
    assert h.sched.submit("after").result(timeout=WAIT_S) == "AFTER"


def test_wrong_number_of_results_fails_the_batch_and_worker_survives(make: type[Harness]) -> None:
    def bad_model(requests: Sequence[str]) -> list[str]:
        return [] if "short" in requests else [r.upper() for r in requests]

    sched: InferenceScheduler[str, str] = InferenceScheduler(name="bad", run_batch=bad_model)
    try:
        fut = sched.submit("short")
        assert fut.exception(timeout=WAIT_S) is not None
        assert sched.submit("fine").result(timeout=WAIT_S) == "FINE"
    finally:
        sched.close(timeout_s=WAIT_S)


def test_failing_on_batch_callback_does_not_kill_the_worker() -> None:
    def on_batch(stats: BatchStats) -> None:
        raise ValueError("metrics backend down")

    sched: InferenceScheduler[str, str] = InferenceScheduler(
        name="cb", run_batch=lambda rs: [r.upper() for r in rs], on_batch=on_batch
    )
    try:
        assert sched.submit("a").result(timeout=WAIT_S) == "A"
        assert sched.submit("b").result(timeout=WAIT_S) == "B"
    finally:
        sched.close(timeout_s=WAIT_S)


# -- overload --------------------------------------------------------------------------------


def test_max_queue_overflow_sheds_the_least_important(make: type[Harness]) -> None:
    h = make(max_queue=2)
    h.hold()
    a = h.sched.submit("a", priority=0)
    b = h.sched.submit("b", priority=2)
    c = h.sched.submit("c", priority=2)  # same importance as b but newer: shed
    assert shed(c) and not b.done()
    d = h.sched.submit("d", priority=1)  # beats b
    assert shed(b)
    e = h.sched.submit("e", priority=0)  # beats d
    assert shed(d)
    assert h.sched.depth == 2 and h.sched.shed_count == 3
    h.release()
    assert a.result(timeout=WAIT_S) == "A" and e.result(timeout=WAIT_S) == "E"
    assert h.model.seen == ["hold", "a", "e"]


class Req(str):
    """A request that can be weakly referenced, to see whether the scheduler still holds it."""


def overflow_shed_keyed_request(h: Harness) -> tuple[weakref.ref[Req], Future[str]]:
    """With max_queue=1 and the worker held: a keyed partial is shed by a final."""
    dropped = Req("partial")
    ref = weakref.ref(dropped)
    fut = h.sched.submit(dropped, priority=2, coalesce_key="call9:customer")
    del dropped
    keep = h.sched.submit("final", priority=0)
    assert shed(fut)
    return ref, keep


def test_shed_requests_are_released_once_the_worker_is_idle(make: type[Harness]) -> None:
    """A dropped request (audio, in the real pipeline) must not stay referenced by its key."""
    h = make(max_queue=1)
    h.hold()
    ref, keep = overflow_shed_keyed_request(h)
    h.release()
    assert keep.result(timeout=WAIT_S) == "FINAL"
    # The worker drops what is left once it finds only dead items; that happens just after
    # the result above, so wait for it (bounded) rather than assume it already did.
    deadline = time.monotonic() + WAIT_S
    while ref() is not None and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.005)
    assert ref() is None
    assert h.sched.depth == 0


def test_shed_requests_are_released_on_close(make: type[Harness]) -> None:
    h = make(max_queue=1)
    h.hold()
    ref, keep = overflow_shed_keyed_request(h)
    h.close_while_held(keep)
    gc.collect()
    assert ref() is None


def test_cancelled_request_is_not_run(make: type[Harness]) -> None:
    h = make()
    h.hold()
    gone = h.sched.submit("gone")
    assert gone.cancel()
    kept = h.sched.submit("kept")
    h.release()
    assert kept.result(timeout=WAIT_S) == "KEPT"
    assert "gone" not in h.model.seen


# -- shutdown --------------------------------------------------------------------------------


def test_close_sheds_pending_and_stops_workers(
    make: type[Harness], caplog: pytest.LogCaptureFixture
) -> None:
    h = make(workers=1)
    running = h.hold()
    pending = [h.sched.submit(f"p{i}", priority=i % 3) for i in range(4)]
    with caplog.at_level(logging.WARNING, logger="models.runtime"):
        h.close_while_held(*pending)  # pending work is shed while the worker is still busy
    assert "did not stop" not in caplog.text
    assert running.result(timeout=0) == "HOLD"  # the batch in flight still completes
    assert h.model.seen == ["hold"]
    assert h.sched.shed_count == 4
    with pytest.raises(RuntimeError, match="closed"):
        h.sched.submit("late")


def test_shed_count_counts_each_request_once(make: type[Harness]) -> None:
    h = make()
    h.hold()
    first = h.sched.submit("v1", priority=2, coalesce_key="k")
    second = h.sched.submit("v2", priority=2, coalesce_key="k")
    assert shed(first) and h.sched.shed_count == 1
    h.close_while_held(second)
    assert h.sched.shed_count == 2


def test_several_workers_run_in_parallel(make: type[Harness]) -> None:
    h = make(workers=2)
    h.hold()  # one worker blocked
    assert h.sched.submit("free").result(timeout=WAIT_S) == "FREE"  # the other still serves
    assert h.sched.busy >= 1
    h.release()


# -- asyncio bridge --------------------------------------------------------------------------


async def test_run_bridges_to_asyncio(make: type[Harness]) -> None:
    h = make()
    assert await h.sched.run("async") == "ASYNC"
    results = await asyncio.gather(*(h.sched.run(f"r{i}", priority=i % 3) for i in range(5)))
    assert results == [f"R{i}" for i in range(5)]
    with pytest.raises(RuntimeError, match="exploded"):
        await h.sched.run("boom")


async def test_run_raises_shed_when_replaced(make: type[Harness]) -> None:
    h = make()
    h.sched.submit("hold")
    assert await asyncio.to_thread(h.model.started.wait, WAIT_S)
    old = asyncio.create_task(h.sched.run("old", priority=2, coalesce_key="k"))
    await asyncio.sleep(0)  # let it submit
    new = asyncio.create_task(h.sched.run("new", priority=2, coalesce_key="k"))
    await asyncio.sleep(0)
    with pytest.raises(Shed):
        await asyncio.wait_for(old, WAIT_S)
    h.release()
    assert await asyncio.wait_for(new, WAIT_S) == "NEW"
    assert "old" not in h.model.seen


async def test_cancelling_the_awaiting_task_skips_the_request(make: type[Harness]) -> None:
    h = make()
    h.sched.submit("hold")
    assert await asyncio.to_thread(h.model.started.wait, WAIT_S)
    task = asyncio.create_task(h.sched.run("abandoned"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    h.release()
    assert await h.sched.run("after") == "AFTER"
    assert "abandoned" not in h.model.seen


def test_truncate_repeats_cuts_a_looping_decode() -> None:
    from models.asr import truncate_repeats

    assert truncate_repeats([7, 7, 7, 7, 7, 7]) == [7, 7]
    assert truncate_repeats([1, 2, 3, 4, 5, 4, 5, 4, 5, 4, 5]) == [1, 2, 3, 4, 5, 4, 5]
    assert truncate_repeats([1, 2, 1, 2, 3]) == [1, 2, 1, 2, 3]  # two copies are speech ("no, no")
    assert truncate_repeats([]) == []


def test_a_sentence_said_again_at_the_end_is_kept_once() -> None:
    """A browser test's microphone call came back "I was charged twice for my internet bill
    this month. I was charged twice for my internet bill this month." on an AVX2 CPU: a
    loop too long for `truncate_repeats`. Whisper's own tokenizer makes the tokens."""
    from pathlib import Path

    import tokenizers
    from faster_whisper.tokenizer import Tokenizer

    from models.asr import PARTIAL_REPEATED_TAIL_MIN_TOKENS, drop_repeated_tail, resolve_model_path

    folder = resolve_model_path("tiny.en", Path("."))
    tok = Tokenizer(tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json")), False)
    said = " I was charged twice for my internet bill this month."
    once = tok.encode(said)
    assert len(once) >= 8
    assert drop_repeated_tail(once + tok.encode(said), tok.decode) == once
    # The repeat after other words, and with its first word without the leading space.
    lead = tok.encode(" Hello, this is Sam.")
    twice = lead + once + tok.encode(said.strip())
    assert tok.decode(drop_repeated_tail(twice, tok.decode)) == tok.decode(lead + once)
    # Short repeats are speech ("no, no" and a short sentence said twice): left alone.
    short = tok.encode(" I want a refund. I want a refund.")
    assert drop_repeated_tail(short, tok.decode) == short
    assert drop_repeated_tail(once, tok.decode) == once
    # A partial drops it: it shows for half a second, and the final keeps what was said.
    partial = tok.encode(" I complete this. I complete this.")
    assert tok.decode(
        drop_repeated_tail(partial, tok.decode, min_tokens=PARTIAL_REPEATED_TAIL_MIN_TOKENS)
    ) == (" I complete this.")
    no_no = tok.encode(" No, no.")
    assert drop_repeated_tail(no_no, tok.decode, min_tokens=PARTIAL_REPEATED_TAIL_MIN_TOKENS) == (
        no_no
    )
    assert drop_repeated_tail([], tok.decode) == []


# -- load signal and adaptive cadence -------------------------------------------------------


def test_load_reports_depth_and_the_oldest_wait(
    make: type[Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = VirtualClock()
    monkeypatch.setattr(
        runtime, "time", SimpleNamespace(monotonic=clock.monotonic, perf_counter=time.perf_counter)
    )
    h = make()
    assert h.sched.load() == runtime.SchedulerLoad(depth=0, wait_s=0.0, busy=0)
    h.hold()
    h.sched.submit("a", priority=2)
    clock.now += 0.3
    h.sched.submit("b", priority=2)
    load = h.sched.load()
    assert load.depth == 2 and load.busy == 1
    assert load.wait_s == pytest.approx(0.3)  # a stuck queue shows before anything is taken
    h.release()


def test_batch_stats_carry_the_queue_wait_and_the_wait_fades_when_idle(
    make: type[Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = VirtualClock()
    monkeypatch.setattr(
        runtime, "time", SimpleNamespace(monotonic=clock.monotonic, perf_counter=time.perf_counter)
    )
    h = make(max_batch=4)
    h.hold()
    futs = [h.sched.submit(f"r{i}") for i in range(3)]
    clock.now += 1.0
    h.release()
    for f in futs:
        f.result(timeout=WAIT_S)
    assert h.stats[-1].size == 3 and h.stats[-1].wait_s == pytest.approx(1.0)
    remembered = h.sched.load().wait_s
    assert 0.2 < remembered <= 1.0  # a decaying average of recent waits
    clock.now += 10 * runtime.WAIT_DECAY_S
    assert h.sched.load().wait_s < 0.01


@pytest.mark.parametrize(
    ("depth", "wait_s", "expected"),
    [
        (0, 0.0, 0.5),  # idle: the base cadence
        (1, 0.0, 1.0),  # one waiting request doubles it
        (0, 0.1, 1.0),  # so does 100 ms of queueing delay
        (2, 0.1, 2.0),
        (10, 0.0, 2.0),  # never beyond the cap
        (0, 5.0, 2.0),
    ],
)
def test_backoff_interval_grows_with_load_up_to_the_cap(
    depth: int, wait_s: float, expected: float
) -> None:
    load = runtime.SchedulerLoad(depth=depth, wait_s=wait_s)
    assert runtime.backoff_interval(0.5, 2.0, load) == pytest.approx(expected)


def test_a_cap_at_the_base_is_a_fixed_cadence() -> None:
    for load in (runtime.IDLE, runtime.SchedulerLoad(depth=7, wait_s=3.0)):
        assert runtime.backoff_interval(0.5, 0.5, load) == 0.5
        assert runtime.backoff_interval(0.5, 0.1, load) == 0.5


def pipeline_under_load(settings: Any) -> tuple[Any, dict[str, runtime.SchedulerLoad]]:
    """A live PartyPipeline with only what its load-adaptive choices read (settings and the
    ASR scheduler's load signal), and the signal to set: a fake load, the real decisions."""
    from coach.pipeline import PartyPipeline

    signal = {"load": runtime.IDLE}
    sched = SimpleNamespace(load=lambda now=None: signal["load"])
    pipe = PartyPipeline.__new__(PartyPipeline)
    pipe._rt = SimpleNamespace(asr_scheduler=sched, asr=None)  # type: ignore[assignment]
    pipe._settings = settings
    pipe._inline = False
    return pipe, signal


def test_partials_slow_down_when_the_asr_scheduler_is_loaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pipeline's cadence follows the scheduler's load signal (a fake one here)."""
    from coach.settings import Settings

    pipe, signal = pipeline_under_load(Settings(partial_interval_s=0.5, partial_max_interval_s=2.0))
    assert pipe._partial_interval() == 0.5
    signal["load"] = runtime.SchedulerLoad(depth=1, wait_s=0.05)
    assert pipe._partial_interval() == pytest.approx(1.25)
    signal["load"] = runtime.SchedulerLoad(depth=30, wait_s=4.0)
    assert pipe._partial_interval() == 2.0  # capped: partials still come, less often
    pipe._inline = True  # replay --fast is deterministic: never adapts
    assert pipe._partial_interval() == 0.5


@pytest.mark.parametrize(
    ("depth", "wait_s", "expected"),
    [
        (0, 0.0, 5),  # idle: the configured beam
        (1, 0.1, 5),  # one waiting and 100 ms of delay is normal traffic
        (2, 0.0, 2),  # one more waiting request: 5 / 2 rounds to 2
        (1, 0.15, 3),  # 50 ms more delay: half a step, 5 / 1.5
        (3, 0.3, 1),
        (40, 3.0, 1),  # never below the floor
    ],
)
def test_final_beam_narrows_with_load_down_to_the_floor(
    depth: int, wait_s: float, expected: int
) -> None:
    load = runtime.SchedulerLoad(depth=depth, wait_s=wait_s)
    assert runtime.adaptive_beam(5, 1, load) == expected
    assert runtime.adaptive_beam(5, 5, load) == 5  # floor = base: a fixed beam


def test_final_beam_follows_the_asr_scheduler_load() -> None:
    import numpy as np

    from coach.settings import Settings

    pipe, signal = pipeline_under_load(Settings(asr_beam_size=5, asr_min_beam_size=2))
    audio = np.zeros(1600, np.float32)

    def final() -> tuple[int | None, bool]:
        request = pipe._final_request(audio)
        assert request.words and request.audio is audio
        return request.beam_size, request.use_final_model

    signal["load"] = runtime.SchedulerLoad(depth=0, wait_s=0.0, busy=1, workers=2)
    assert final() == (5, True)  # a worker is free: the full beam on the final model
    signal["load"] = runtime.SchedulerLoad(depth=0, wait_s=0.0, busy=2, workers=2)
    assert final() == (5, False)  # both busy: the small model, the beam still full
    signal["load"] = runtime.SchedulerLoad(depth=6, wait_s=0.5, busy=2, workers=2)
    assert final() == (2, False)  # a queue: the small model and a narrower beam
    pipe._settings = Settings(asr_beam_size=5, asr_min_beam_size=2, asr_final_fallback=False)
    assert final() == (2, True)  # told never to fall back: the final model all the same
    pipe._inline = True  # replay --fast is deterministic: never adapts
    assert final() == (5, True)


def test_a_final_goes_to_the_small_model_when_this_machine_is_too_slow_for_the_final_one() -> None:
    import numpy as np

    from coach.settings import Settings
    from models.asr import DecodeTimes, TwoPassAsr

    pipe, signal = pipeline_under_load(
        Settings(asr_beam_size=5, asr_min_beam_size=2, asr_final_budget_s=0.45)
    )
    now = [0.0]
    asr = TwoPassAsr.__new__(TwoPassAsr)  # only its decode times are read here
    asr.final_times = DecodeTimes(clock=lambda: now[0])
    pipe._rt.asr = asr
    signal["load"] = runtime.SchedulerLoad(depth=0, wait_s=0.0, busy=0, workers=2)

    def on_final_model(seconds: float) -> bool:
        return bool(pipe._final_request(np.zeros(int(seconds * 16000), np.float32)).use_final_model)

    assert on_final_model(6.0)  # its speed is not known yet: try it
    asr.final_times.observe(3.0, 0.50)  # a slow machine: 0.32 s + 0.06 s per audio second
    asr.final_times.observe(8.0, 0.80)
    assert not on_final_model(6.0)  # 0.68 s expected: over the budget
    assert on_final_model(2.0)  # 0.44 s: a short turn still fits
    pipe._settings = Settings(asr_final_budget_s=0.0)
    assert on_final_model(6.0)  # no budget
    pipe._settings = Settings(asr_final_budget_s=0.45, asr_final_fallback=False)
    assert on_final_model(6.0)  # told never to fall back
    pipe._settings = Settings(asr_final_budget_s=0.45)
    now[0] = 121.0  # two minutes without a decode on it: forgotten, so tried again
    assert on_final_model(6.0)


@pytest.mark.parametrize(
    ("samples", "a", "b"),
    [
        ([], 0.0, 0.0),
        ([(5.0, 0.4)], 0.4, 0.0),
        ([(2.0, 0.3), (2.2, 0.5)], 0.4, 0.0),  # no spread in length: the mean
        ([(2.0, 0.3), (6.0, 0.5), (10.0, 0.7)], 0.2, 0.05),
        ([(2.0, 0.5), (8.0, 0.2)], 0.35, 0.0),  # never faster with more audio
        ([(2.0, 0.1), (3.0, 0.4)], 0.0, 0.1),  # a line through the mean, not below zero
    ],
)
def test_fit_decode_time(samples: list[tuple[float, float]], a: float, b: float) -> None:
    from models.asr import fit_decode_time

    got = fit_decode_time(samples)
    assert got == pytest.approx((a, b), abs=1e-9)


@given(
    st.lists(st.tuples(st.floats(0.1, 30.0), st.floats(0.01, 5.0)), min_size=1, max_size=40),
    st.floats(0.0, 60.0),
)
def test_a_fitted_decode_time_is_never_negative(
    samples: list[tuple[float, float]], audio_s: float
) -> None:
    from models.asr import fit_decode_time

    a, b = fit_decode_time(samples)
    assert a >= 0.0 and b >= 0.0
    assert a + b * audio_s >= 0.0


@pytest.mark.parametrize(
    ("depth", "wait_s", "busy", "expected"),
    [
        (0, 0.0, 0, True),
        (0, 0.1, 1, True),  # one of two workers busy, no queue to speak of
        (0, 0.0, 2, False),  # none free
        (1, 0.0, 0, False),  # something waits
        (0, 0.15, 0, False),  # requests waited lately
    ],
)
def test_the_final_model_needs_a_spare_worker(
    depth: int, wait_s: float, busy: int, expected: bool
) -> None:
    load = runtime.SchedulerLoad(depth=depth, wait_s=wait_s, busy=busy, workers=2)
    assert runtime.has_spare_worker(load) is expected


# -- device selection ------------------------------------------------------------------------


def test_cpu_plan_uses_the_configured_compute_type() -> None:
    plan = runtime.plan_device("cpu", compute_type="int8", compute_type_explicit=False)
    assert plan == runtime.DevicePlan("cpu", "int8", ("CPUExecutionProvider",))


def test_cuda_requested_without_a_gpu_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "cuda_device_count", lambda: 0)
    monkeypatch.setattr(runtime, "onnx_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(runtime.DeviceUnavailable) as err:
        runtime.plan_device("cuda", compute_type="int8", compute_type_explicit=False)
    text = str(err.value)
    assert "COACH_DEVICE=cuda" in text and "COACH_DEVICE=cpu" in text
    assert "CTranslate2 sees no CUDA device" in text
    assert "onnxruntime-gpu" in text


def test_cuda_plan_is_float16_and_the_cuda_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "cuda_device_count", lambda: 1)
    monkeypatch.setattr(
        runtime,
        "onnx_available_providers",
        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    plan = runtime.plan_device("cuda", compute_type="int8", compute_type_explicit=False)
    assert plan.device == "cuda" and plan.asr_compute_type == "float16"
    assert plan.onnx_providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    explicit = runtime.plan_device("cuda", compute_type="int8_float16", compute_type_explicit=True)
    assert explicit.asr_compute_type == "int8_float16"


def test_settings_decide_whether_the_compute_type_was_set(monkeypatch: pytest.MonkeyPatch) -> None:
    from coach.runtime import device_plan
    from coach.settings import Settings

    monkeypatch.setattr(runtime, "cuda_device_count", lambda: 1)
    monkeypatch.setattr(runtime, "onnx_available_providers", lambda: ["CUDAExecutionProvider"])
    assert device_plan(Settings(device="cuda")).asr_compute_type == "float16"
    monkeypatch.setenv("COACH_ASR_COMPUTE_TYPE", "int8_float16")
    assert device_plan(Settings(device="cuda")).asr_compute_type == "int8_float16"
    assert device_plan(Settings(device="cpu")).asr_compute_type == "int8_float16"


def test_asr_batches_are_larger_on_cuda_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    from coach.runtime import GPU_ASR_MAX_BATCH, asr_max_batch
    from coach.settings import Settings

    cpu = runtime.DevicePlan("cpu", "int8", ("CPUExecutionProvider",))
    cuda = runtime.DevicePlan("cuda", "float16", ("CUDAExecutionProvider",))
    assert asr_max_batch(Settings(), cpu) == Settings().asr_max_batch
    assert asr_max_batch(Settings(), cuda) == GPU_ASR_MAX_BATCH
    monkeypatch.setenv("COACH_ASR_MAX_BATCH", "8")
    assert asr_max_batch(Settings(), cuda) == 8  # an operator's choice wins
    assert asr_max_batch(Settings(), cpu) == 8


@pytest.mark.skipif(runtime.cuda_device_count() > 0, reason="this machine has a GPU")
def test_runtime_load_on_cuda_without_a_gpu_fails_before_loading_models(tmp_path: Any) -> None:
    from coach.runtime import Runtime
    from coach.settings import Settings

    t0 = time.perf_counter()
    with pytest.raises(runtime.DeviceUnavailable, match="COACH_DEVICE=cpu"):
        Runtime.load(Settings(device="cuda", data_dir=tmp_path))
    assert time.perf_counter() - t0 < 5.0  # no model was loaded first


def _tiny(runtime: Any) -> Any:
    """The runtime's small model (tiny.en: every partial, and finals when no final model is
    set), a WhisperAsr: what the decoding tests below exercise."""
    from models.asr import TwoPassAsr

    asr = runtime.asr
    return asr.partial if isinstance(asr, TwoPassAsr) else asr


# -- batching does not change results (real model) ------------------------------------------


def test_asr_results_are_the_same_batched_and_alone(
    runtime_fixture_call: tuple[Any, list[Any]],
) -> None:
    """Utterances from several calls decoded in one batch give what each gives alone."""
    from models.asr import AsrRequest

    asr, clips = runtime_fixture_call
    requests = [AsrRequest(audio=c, words=True) for c in clips] + [
        AsrRequest(audio=clips[0][: len(clips[0]) // 2], words=False, beam_size=1)
    ]
    alone = [asr.decode_batch([r])[0] for r in requests]
    together = asr.decode_batch(requests)
    assert [r.text for r in together] == [r.text for r in alone]
    for a, b in zip(alone, together, strict=True):
        assert a.avg_logprob == pytest.approx(b.avg_logprob, abs=1e-3)
        assert [w.w for w in a.words] == [w.w for w in b.words]
        for wa, wb in zip(a.words, b.words, strict=True):
            assert wa.t0 == pytest.approx(wb.t0, abs=0.021) and wa.t1 == pytest.approx(
                wb.t1, abs=0.021
            )


def test_asr_batch_runs_the_model_once_per_kind_of_request(
    runtime_fixture_call: tuple[Any, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of finals from several calls is one encode, one generate and one alignment;
    partials (greedy, no word timings) in the same batch make a second group."""
    from models.asr import AsrRequest

    asr, clips = runtime_fixture_call
    model = asr._fw.model
    calls: list[tuple[str, int]] = []

    class CountingModel:
        """The real CTranslate2 model, with each call's name and batch size noted."""

        def __getattr__(self, name: str) -> Any:
            real = getattr(model, name)
            if name not in ("encode", "generate", "align"):
                return real

            def counted(features: Any, *args: Any, **kwargs: Any) -> Any:
                calls.append((name, int(features.shape[0])))
                return real(features, *args, **kwargs)

            return counted

    monkeypatch.setattr(asr._fw, "model", CountingModel())
    finals = [AsrRequest(audio=c, words=True) for c in clips[:3]]
    partial = AsrRequest(audio=clips[0][: len(clips[0]) // 2], words=False, beam_size=1)
    results = asr.decode_batch([*finals, partial])
    assert all(r.text for r in results)
    # The three finals share a window only if their lengths round to the same one.
    windows = {asr._window(asr._features(r.audio).shape[1]) for r in finals}
    encodes = [n for name, n in calls if name == "encode"]
    generates = [n for name, n in calls if name == "generate"]
    aligns = [n for name, n in calls if name == "align"]
    assert sum(encodes) == 4 and len(encodes) == len(windows) + 1
    assert generates == encodes  # one generate per encoded group, over the whole group
    assert sum(aligns) == 3 and len(aligns) == len(windows)  # the partial needs no words


@pytest.fixture
def runtime_fixture_call(
    runtime: Any, billing_call: tuple[Any, dict[str, Any]]
) -> tuple[Any, list[Any]]:
    """The shared ASR model and four turns of the demo call at 16 kHz (two per party)."""
    import numpy as np
    import soundfile as sf

    from audio.resample import StreamResampler

    wav, truth = billing_call
    data, rate = sf.read(wav, dtype="float32", always_2d=True)
    clips = []
    for speaker in ("customer", "agent"):
        turns = [t for t in truth["turns"] if t["speaker"] == speaker][:2]
        for t in turns:
            piece = data[int((t["t_start"] - 0.15) * rate) : int((t["t_end"] + 0.15) * rate)]
            mono = np.ascontiguousarray(piece[:, t["channel"]])
            clips.append(StreamResampler(in_rate=rate, out_rate=16000).push(mono, last=True))
    return _tiny(runtime), clips


# -- agitated speech: the token budget and the loop fallback (real model, espeak-ng) --------


def _phone_line(text: str, voice: str, speed: int, pitch: int, amplitude: int) -> Any:
    """One sentence as it reaches the ASR from a phone call, with 0.2 s of line silence either
    side (the endpointer's margins)."""
    import tempfile
    from pathlib import Path

    from scripts.make_test_calls import CallScript, Turn, render_phone_line

    turn = Turn("customer", text, voice=voice, speed_wpm=speed, pitch=pitch, amplitude=amplitude)
    with tempfile.TemporaryDirectory() as tmp:
        return render_phone_line(
            CallScript("asr-test", (turn,)), turn, Path(tmp), pad_s=0.2, out_rate=16000
        )


# Shouted, fast sentences on which tiny.en falls into a loop ("No, no, no, no, ...").
AGITATED = [
    (
        "Oh no. She's on the floor, there's blood on her forehead, she's breathing but "
        "she's not answering me.",
        "en-us-nyc+m4",
        208,
        78,
        165,
    ),
    (
        "Within the hour. Fine. Because if you won't tell me whose kid it is, I'll find the "
        "father at pickup myself, and I'll put him on the ground in front of everyone.",
        "en-gb-scotland+m1",
        215,
        80,
        182,
    ),
]


@pytest.mark.parametrize("sentence", AGITATED, ids=["fall", "threat"])
def test_a_looping_decode_is_done_again_without_repeats(
    runtime: Any, sentence: tuple[str, str, int, int, int]
) -> None:
    """The fallback must recover what the loop lost: more of the sentence, with fewer word
    errors against the script."""
    from dataclasses import replace

    from models.asr import WhisperAsr
    from scripts.eval_cues import _words, word_errors

    audio = _phone_line(*sentence)
    reference = _words(sentence[0])
    tiny = _tiny(runtime)
    with_fallback = tiny.transcribe(audio, words=True)
    without = WhisperAsr(replace(tiny.options, loop_fallback=False)).transcribe(audio)
    # The precondition: without the fallback this audio loops, and the cut loop keeps little.
    assert len(_words(without.text)) < 0.6 * len(reference), without.text
    # How much it recovers depends on the CPU's int8 kernels (over 70% of the words on the
    # Intel Xeon VM this was written on, 10 of 18 of "fall" on an AMD EPYC one): more than the
    # loop kept, with fewer errors.
    assert len(_words(with_fallback.text)) > len(_words(without.text)), with_fallback.text
    errors = [word_errors(reference, _words(r.text)) for r in (with_fallback, without)]
    assert errors[0] < errors[1], (with_fallback.text, without.text)


def test_the_token_budget_fits_a_fast_talker(runtime: Any) -> None:
    """At 4-5 words/s the transcript must reach the end of the sentence (a budget of 6 tokens
    per second of audio cut it off)."""
    from models.asr import AsrRequest
    from scripts.eval_cues import _words

    text = (
        "I've tried the card, I've tried the app, I've tried every one of these chargers, "
        "twenty minutes out here with two tired kids and nothing works."
    )
    audio = _phone_line(text, "en-us+m6", 210, 60, 120)
    seconds = len(audio) / 16000
    assert len(text.split()) / seconds > 3.5  # really fast speech
    result = _tiny(runtime).decode_batch([AsrRequest(audio=audio, words=False)])[0]
    assert "nothing" in _words(result.text), result.text


# -- recorded human speech (tests/data/recorded_speech) -------------------------------------


def test_recorded_speech_keeps_its_words_over_a_phone_line(runtime: Any) -> None:
    """Real voices, not espeak-ng: tiny.en must transcribe them well at 16 kHz, and an 8 kHz
    mu-law phone line must cost them next to nothing (synthetic voices lose about half their
    words there: BENCHMARKS, "A bigger model for finals, and where the words are lost")."""
    import json
    from pathlib import Path

    import soundfile as sf

    from audio import codecs
    from audio.resample import resample
    from scripts.eval_cues import _words, word_errors

    folder = Path(__file__).resolve().parents[1] / "data" / "recorded_speech"
    refs = json.loads((folder / "transcripts.json").read_text(encoding="utf-8"))
    errors = {"wideband": 0, "phone line": 0}
    n_words = 0
    for name, text in refs.items():
        audio, rate = sf.read(folder / name, dtype="float32")
        assert rate == 16000
        narrow = codecs.decode_mulaw(codecs.encode_mulaw(resample(audio, 16000, 8000)))
        line = resample(narrow, 8000, 16000)
        reference = _words(text)
        n_words += len(reference)
        for kind, clip in (("wideband", audio), ("phone line", line)):
            heard = _tiny(runtime).transcribe(clip, words=False).text
            errors[kind] += word_errors(reference, _words(heard))
    assert n_words > 90
    assert errors["wideband"] <= 0.2 * n_words, errors
    assert errors["phone line"] <= errors["wideband"] + 2, errors


# -- two models: partials from the small one, finals from the big one ----------------------


def test_two_pass_asr_gives_finals_to_the_final_model_and_keeps_order(runtime: Any) -> None:
    """Each request goes to the model its kind asks for; results come back in request order,
    the same as each model gives alone."""
    from dataclasses import replace

    from models.asr import AsrRequest, TwoPassAsr, WhisperAsr

    small = _tiny(runtime)
    # A second real model for finals, told apart by its options (beam 5 against beam 1).
    big = WhisperAsr(replace(small.options, beam_size=5))
    seen: dict[str, list[bool]] = {"small": [], "big": []}
    for name, model in (("small", small), ("big", big)):
        original = model.decode_batch

        def record(requests: Any, _orig: Any = original, _name: str = name) -> Any:
            seen[_name].extend(r.use_final_model for r in requests)
            return _orig(requests)

        setattr(model, "decode_batch", record)  # noqa: B010 - a spy around the real decode
    try:
        two = TwoPassAsr(partial=small, final=big)
        clips = [_phone_line(*s) for s in AGITATED[:1]] * 2 + [
            _phone_line("Can you read me the last four digits?", "en-us+f3", 160, 50, 100)
        ]
        kinds = [True, False, True]
        requests = [
            AsrRequest(audio=c, use_final_model=k) for c, k in zip(clips, kinds, strict=True)
        ]
        results = two.decode_batch(requests)
        assert seen == {"small": [False], "big": [True, True]}
        alone = [
            (big if k else small).decode_batch([r])[0].text
            for r, k in zip(requests, kinds, strict=True)
        ]
        assert [r.text for r in results] == alone
    finally:
        for model in (small, big):
            model.__dict__.pop("decode_batch", None)
    assert two.transcribe(clips[2]).text == big.transcribe(clips[2]).text


def test_finals_come_from_base_by_default_and_one_model_when_told(runtime: Any) -> None:
    from coach.runtime import Runtime
    from coach.settings import Settings
    from models.asr import TwoPassAsr, WhisperAsr

    assert isinstance(runtime.asr, TwoPassAsr)  # the default: tiny.en partials, base finals
    assert runtime.asr.partial.options.model == "tiny.en"
    assert runtime.asr.final.options.model == "base"
    assert runtime.asr.final.model_path.name == "whisper-base"
    rt = Runtime.load(Settings(asr_final_model=""))  # empty: COACH_ASR_MODEL does both
    try:
        assert isinstance(rt.asr, WhisperAsr) and rt.asr.options.model == "tiny.en"
    finally:
        rt.close()


def test_the_final_model_can_have_its_own_compute_type(runtime: Any) -> None:
    """COACH_ASR_FINAL_COMPUTE_TYPE changes the final model's arithmetic and not the partials'
    (int8 weights lose words that float32 ones hear: BENCHMARKS, "GPU")."""
    from coach.runtime import Runtime
    from coach.settings import Settings
    from models.asr import TwoPassAsr

    assert runtime.asr.final.options.compute_type == runtime.asr.partial.options.compute_type
    rt = Runtime.load(Settings(asr_final_compute_type="float32"))
    try:
        assert isinstance(rt.asr, TwoPassAsr)
        assert rt.asr.final.options.compute_type == "float32"
        assert rt.asr.final._fw.model.compute_type == "float32"
        assert rt.asr.partial.options.compute_type == Settings().asr_compute_type
    finally:
        rt.close()
