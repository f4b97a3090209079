"""Hot reload through the running app: file edits apply, bad edits are refused and reported."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from coach.api.app import create_app
from coach.auth import issue_token
from coach.cues.library import PlaybookLibrary
from coach.cues.playbook import DEFAULT_PLAYBOOK
from coach.runtime import Runtime
from coach.settings import Settings

SECRET = "unit-test-secret-of-at-least-32-bytes!"


def bearer(user: str, role: str) -> dict[str, str]:
    token = issue_token(user=user, role=role, secret=SECRET, ttl_s=600)  # type: ignore[arg-type]
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def setup(tmp_path: Path, runtime: Runtime) -> Iterator[tuple[TestClient, Path]]:
    path = tmp_path / "playbook.yaml"
    path.write_text(DEFAULT_PLAYBOOK.read_text())
    library = PlaybookLibrary(path, embed=runtime.emotion.embed_examples)
    own = dataclasses.replace(runtime, playbook=library)
    settings = Settings(
        data_dir=tmp_path,
        auth_secret=SECRET,
        store_enabled=False,
        playbook_file=path,
        playbook_reload_s=0.2,
    )
    with TestClient(create_app(settings, own)) as client:
        yield client, path


def _wait_for(client: TestClient, predicate, timeout: float = 15.0) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        body = client.get("/api/playbook", headers=bearer("sam", "supervisor")).json()
        if predicate(body) or time.monotonic() > deadline:
            return body
        time.sleep(0.2)


def test_edit_is_picked_up_and_a_bad_edit_is_refused(setup: tuple[TestClient, Path]) -> None:
    client, path = setup
    first = client.get("/api/playbook", headers=bearer("sam", "supervisor")).json()
    assert {c["cue"] for c in first["cues"]} >= {"frustration", "crisis", "dead_air"}

    path.write_text(path.read_text().replace("cooldown_s: 45", "cooldown_s: 47", 1))
    body = _wait_for(client, lambda b: b["version"] != first["version"])
    assert body["version"] != first["version"] and body["reloads"] == 1
    frustration = next(c for c in body["cues"] if c["cue"] == "frustration")
    assert frustration["cooldown_s"] == 47

    good = body["version"]
    path.write_text(path.read_text().replace("priority: 2", "priority: 9", 1))
    body = _wait_for(client, lambda b: b["last_error"] is not None)
    assert body["version"] == good  # live calls keep the last good playbook
    assert "less than or equal to 5" in body["last_error"] and "(line " in body["last_error"]

    refused = client.post("/api/playbook/reload", headers=bearer("ada", "admin"))
    assert refused.status_code == 422 and "priority" in refused.json()["detail"]


def test_roles(setup: tuple[TestClient, Path]) -> None:
    client, _ = setup
    assert client.get("/api/playbook").status_code == 401
    assert client.get("/api/playbook", headers=bearer("ann", "agent")).status_code == 403
    assert (
        client.post("/api/playbook/reload", headers=bearer("sam", "supervisor")).status_code == 403
    )
    ok = client.post("/api/playbook/reload", headers=bearer("ada", "admin"))
    assert ok.status_code == 200 and ok.json()["last_error"] is None


def test_a_fixed_edit_clears_the_refusal(setup: tuple[TestClient, Path]) -> None:
    # The operator undoes the bad edit: the page must stop showing the refusal, although the
    # version in force never changed.
    client, path = setup
    good = path.read_text()
    first = client.get("/api/playbook", headers=bearer("sam", "supervisor")).json()
    path.write_text(good.replace("priority: 2", "priority: 9", 1))
    assert _wait_for(client, lambda b: b["last_error"] is not None)["last_error"]

    path.write_text(good)
    body = _wait_for(client, lambda b: b["last_error"] is None)
    assert body["last_error"] is None and body["version"] == first["version"]
    ok = client.post("/api/playbook/reload", headers=bearer("ada", "admin"))
    assert ok.status_code == 200 and ok.json()["last_error"] is None


def test_reload_of_a_missing_file_is_refused(setup: tuple[TestClient, Path]) -> None:
    client, path = setup
    version = client.get("/api/playbook", headers=bearer("sam", "supervisor")).json()["version"]
    path.unlink()
    refused = client.post("/api/playbook/reload", headers=bearer("ada", "admin"))
    assert refused.status_code == 422 and "cannot read" in refused.json()["detail"]
    body = client.get("/api/playbook", headers=bearer("sam", "supervisor")).json()
    assert body["version"] == version and "cannot read" in body["last_error"]


def _metric(client: TestClient, line_start: str) -> float:
    """The value of the one /metrics sample whose line starts with `line_start`."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    return 0.0


def test_reloads_show_in_metrics_and_the_new_advice_in_the_api(
    setup: tuple[TestClient, Path],
) -> None:
    """An operator checks an edit where they look: the advice in force in GET /api/playbook,
    reloads and a refused file on /metrics (an alert; the log line scrolls away)."""
    client, path = setup
    good = path.read_text()
    loaded = _metric(client, 'coach_playbook_reloads_total{result="loaded"}')
    refused = _metric(client, 'coach_playbook_reloads_total{result="refused"}')
    old = "advice: Acknowledge the budget concern before quoting any price; offer options."
    assert old in good
    path.write_text(good.replace(old, "advice: Ask which payment date suits them.", 1))
    body = _wait_for(client, lambda b: b["reloads"] == 1)
    cost = next(c for c in body["cues"] if c["cue"] == "cost_anxiety")
    assert cost["advice"] == "Ask which payment date suits them."
    assert _metric(client, 'coach_playbook_reloads_total{result="loaded"}') == loaded + 1
    assert _metric(client, "coach_playbook_refused") == 0

    path.write_text(good.replace("priority: 2", "priority: 9", 1))
    _wait_for(client, lambda b: b["last_error"] is not None)
    assert _metric(client, 'coach_playbook_reloads_total{result="refused"}') == refused + 1
    assert _metric(client, "coach_playbook_refused") == 1

    path.write_text(good)
    _wait_for(client, lambda b: b["last_error"] is None)
    assert _metric(client, "coach_playbook_refused") == 0


def test_both_reload_results_are_exported_from_the_start() -> None:
    """A series that first appears at 1 has no increase() in Prometheus: an alert on
    refused reloads would miss the first refusal of a fresh process."""
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import coach.metrics, prometheus_client; "
            "print(prometheus_client.generate_latest().decode())",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],  # the repository: `coach` imports from here
    ).stdout
    assert 'coach_playbook_reloads_total{result="loaded"} 0.0' in out
    assert 'coach_playbook_reloads_total{result="refused"} 0.0' in out
    assert "coach_playbook_refused 0.0" in out


def test_an_example_inside_ordinary_talk_is_reported(setup: tuple[TestClient, Path]) -> None:
    """An outside audit's new cue never fired: its example sat next to a background phrase,
    which a line must beat. The playbook loads, and says so (log and API)."""
    client, path = setup
    first = client.get("/api/playbook", headers=bearer("sam", "supervisor")).json()
    assert first["warnings"] == []  # the bundled playbook has no such example
    path.write_text(
        path.read_text().replace(
            "background:\n", "background:\n  - Honestly I'm so fed up with this.\n", 1
        )
    )
    body = _wait_for(client, lambda b: b["version"] != first["version"])
    assert body["last_error"] is None
    crowded = [w for w in body["warnings"] if "I'm so fed up with this." in w]
    assert crowded and crowded[0].startswith("cue frustration:")
