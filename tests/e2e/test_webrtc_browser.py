"""The agent page's "Try with your microphone" in real Chromium, with a WAV as the microphone.

Chromium's fake capture device plays the WAV (`--use-file-for-fake-audio-capture`), the page
streams it over WebRTC to a uvicorn server on 127.0.0.1 (`COACH_WEBRTC_LOOPBACK=1`, and
`--allow-loopback-in-peer-connection` on the browser side), and the transcript list must show
the spoken sentence. Needs Debian's chromium and the `playwright` Python package (no browser
download: `playwright install` is never run).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from coach.api.app import create_app
from coach.ingest import webrtc
from coach.runtime import Runtime
from coach.settings import Settings
from tests.conftest import wer
from tests.support import serve_in_thread

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SENTENCE = "I was charged twice for my internet bill this month."
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="module")
def mic_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from scripts.make_test_calls import CallScript, Turn, render_call

    script = CallScript(call_id="mic", turns=(Turn("customer", SENTENCE),))
    # The fake device starts playing at getUserMedia, before WebRTC is connected: the leading
    # silence covers the connection set-up so no speech is lost.
    wav, _ = render_call(
        script,
        tmp_path_factory.mktemp("fake-mic"),
        sample_rate=48000,
        encoding="pcm16",
        channels=1,
        mono_party="customer",
        lead_silence_s=1.5,
        tail_silence_s=2.0,
    )
    return wav


def test_microphone_button_streams_and_shows_the_transcript(
    runtime: Runtime, settings: Settings, mic_wav: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip(f"Chromium not installed at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    assert settings.auth_disabled
    monkeypatch.setenv(webrtc.LOOPBACK_ENV, "1")
    ARTIFACTS.mkdir(exist_ok=True)

    with serve_in_thread(create_app(settings, runtime)) as port, sync_api.sync_playwright() as p:
        base = f"http://127.0.0.1:{port}"
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={mic_wav}%noloop",
                "--allow-loopback-in-peer-connection",
            ],
        )
        try:
            page = browser.new_page()
            logs: list[str] = []
            page.on("console", lambda m: logs.append(f"{m.type}: {m.text}"))
            page.goto(f"{base}/agent/")
            page.get_by_role("button", name="Try with your microphone").click()
            page.wait_for_function(
                "document.getElementById('status').textContent.startsWith('Watching')",
                timeout=20_000,
            )
            text, deadline = "", time.monotonic() + 60
            while time.monotonic() < deadline:
                text = " ".join(page.locator("#transcript li.transcript").all_inner_texts())
                # each line starts with the speaker label ("customer")
                text = text.replace("customer", " ").replace("CUSTOMER", " ")
                if text.strip() and wer(SENTENCE, text) < 0.5:
                    break
                time.sleep(0.5)
            page.screenshot(path=str(ARTIFACTS / "agent-mic.png"), full_page=True)
            status = page.locator("#status").inner_text()
            assert text.strip() and wer(SENTENCE, text) < 0.5, (text, status, logs)
            page.get_by_role("button", name="Stop microphone").click()
        finally:
            browser.close()
