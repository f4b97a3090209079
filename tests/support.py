"""Small helpers shared by tests that need real sockets: free ports and a threaded server."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve_in_thread(app: Any, **options: Any) -> Iterator[int]:
    """Run uvicorn in a thread with its own event loop on 127.0.0.1; yield its port.

    For clients that the in-process test client cannot stand in for (WebRTC, browsers).
    `options` go to uvicorn's Config (e.g. `coach.api.server.uvicorn_limits`).
    """
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", **options
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=30)


PYTEST_CAPTURE: dict[str, Any] = {}
"""pytest's capture manager (tests/conftest.py puts it here), for output that must get out."""


@contextlib.contextmanager
def client_with_watchdog(app: Any, *, teardown_s: float = 120.0) -> Iterator[Any]:
    """A TestClient whose shutdown, if it hangs, prints the asyncio tasks still pending.

    Once (session 26, under load) an AudioHook test passed and its TestClient then never
    finished shutting down; pytest-timeout's dump after 600 s shows threads, and every thread
    was idle: what was missing was the coroutine the event loop waited for. This prints it.
    """
    import asyncio
    import sys

    from fastapi.testclient import TestClient

    with contextlib.ExitStack() as stack:
        client = stack.enter_context(TestClient(app))
        loop = client.portal.call(asyncio.get_running_loop) if client.portal else None

        def dump() -> None:
            lines = [f"\n--- TestClient shutdown > {teardown_s:g} s; pending tasks:"]
            for task in list(asyncio.all_tasks(loop)) if loop else []:
                lines += [f"{task.get_name()} ({task!r}):", *awaiting(task.get_coro())]
            # Past pytest's capture: a hung teardown ends in pytest-timeout killing the run,
            # and whatever was captured dies with it.
            capman = PYTEST_CAPTURE.get("capman")
            with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
                print("\n  ".join(lines), file=sys.stderr, flush=True)

        try:
            yield client
        finally:
            watchdog = threading.Timer(teardown_s, dump)
            watchdog.daemon = True
            watchdog.start()
            try:
                stack.close()
            finally:
                watchdog.cancel()


def awaiting(coro: Any) -> list[str]:
    """Where a coroutine waits, outermost first: the whole chain of awaits, which
    `Task.print_stack` does not walk (it shows the task's own frame only)."""
    where = []
    while coro is not None:
        frame = next(
            (f for a in ("cr_frame", "gi_frame", "ag_frame") if (f := getattr(coro, a, None))),
            None,
        )
        if frame is not None:
            where.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
        coro = next(
            (c for a in ("cr_await", "gi_yieldfrom", "ag_await") if (c := getattr(coro, a, None))),
            None,
        )
    return where
