"""scripts/stream_wav.py, the reference PCM client: a call through a real server, and one-line
errors (exit 1 or 2, no traceback) for what users get wrong."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from coach.api.app import create_app
from coach.runtime import Runtime
from coach.settings import Settings
from scripts.stream_wav import websocket_base
from tests.support import free_port, serve_in_thread

ROOT = Path(__file__).resolve().parents[2]


def run_client(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "stream_wav.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


@pytest.mark.parametrize(
    ("server", "base"),
    [
        ("ws://127.0.0.1:8000", "ws://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/", "ws://127.0.0.1:8000"),
        ("HTTPS://coach.example.com", "wss://coach.example.com"),
        ("wss://coach.example.com/", "wss://coach.example.com"),
    ],
)
def test_the_server_address_may_be_given_as_a_browser_shows_it(server: str, base: str) -> None:
    assert websocket_base(server) == base


def test_an_address_that_is_not_a_web_one_is_an_error() -> None:
    with pytest.raises(ValueError, match="ws://host:port"):
        websocket_base("127.0.0.1:8000")


def short_call(tmp_path: Path) -> Path:
    t = np.arange(8000 * 2) / 8000
    tone = (np.sin(2 * np.pi * 220 * t) * 3000).astype(np.int16)
    path = tmp_path / "tone.wav"
    sf.write(path, np.stack([tone, np.zeros_like(tone)], axis=1), 8000, subtype="PCM_16")
    return path


def test_a_call_streams_through_a_server_given_as_http(
    runtime: Runtime, settings: Settings, tmp_path: Path
) -> None:
    app = create_app(settings.model_copy(update={"max_calls": 0}), runtime)
    with serve_in_thread(app) as port:
        done = run_client(
            str(short_call(tmp_path)), "--server", f"http://127.0.0.1:{port}", "--fast"
        )
    assert done.returncode == 0, done.stderr
    accepted = json.loads(done.stderr.splitlines()[0])
    assert accepted["type"] == "accepted" and accepted["call_id"].startswith("tone-")
    types = [json.loads(line)["type"] for line in done.stdout.splitlines()]
    assert types[0] == "call_start" and types[-1] == "call_end", types


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["missing.wav"], 2, "missing.wav: no such file"),
        (["{wav}", "--server", "ftp://127.0.0.1:1"], 2, "give ws://host:port"),
        (["{wav}", "--server", "ws://127.0.0.1:{port}"], 1, "ws://127.0.0.1:"),
    ],
)
def test_what_users_get_wrong_is_one_line_not_a_traceback(
    tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    wav, port = short_call(tmp_path), free_port()  # nothing listens on `port`
    done = run_client(*(a.format(wav=wav, port=port) for a in args))
    assert done.returncode == code
    assert done.stderr.startswith("error: ") and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1
