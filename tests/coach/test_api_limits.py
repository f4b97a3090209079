"""Request bodies over COACH_MAX_BODY_BYTES get 413 and are not buffered (found by an audit:
a 50 MB feedback body was read whole and answered 200)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from coach.api.app import create_app
from coach.runtime import Runtime
from coach.settings import Settings

LIMIT = 10_000
URL = "/api/calls/c-1/cues/frustration/feedback"


@pytest.fixture
def client(tmp_path: Path, runtime: Runtime) -> Iterator[TestClient]:
    settings = Settings(
        data_dir=tmp_path, auth_disabled=True, store_enabled=False, max_body_bytes=LIMIT
    )
    with TestClient(create_app(settings, runtime)) as c:
        yield c


def test_a_declared_oversized_body_is_refused_before_it_is_read(client: TestClient) -> None:
    big = b'{"verdict": "helpful", "pad": "' + b"x" * (LIMIT * 5) + b'"}'
    r = client.post(URL, content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert "COACH_MAX_BODY_BYTES" in r.json()["detail"]


def test_a_chunked_body_is_cut_off_at_the_limit(client: TestClient) -> None:
    """No Content-Length: the body is counted as it arrives."""

    def chunks() -> Iterator[bytes]:
        yield b'{"verdict": "helpful", "pad": "'
        for _ in range(50):
            yield b"x" * 1000
        yield b'"}'

    r = client.post(URL, content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert "COACH_MAX_BODY_BYTES" in r.json()["detail"]


def test_a_body_under_the_limit_reaches_its_handler(client: TestClient) -> None:
    r = client.post(URL, json={"verdict": "helpful"})
    assert r.status_code == 503  # the handler answered: this app runs without a store


def test_zero_turns_the_limit_off(tmp_path: Path, runtime: Runtime) -> None:
    settings = Settings(
        data_dir=tmp_path, auth_disabled=True, store_enabled=False, max_body_bytes=0
    )
    with TestClient(create_app(settings, runtime)) as c:
        r = c.post(URL, content=b'{"verdict": "helpful", "pad": "' + b"x" * 50_000 + b'"}')
    assert r.status_code != 413
