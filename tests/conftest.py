"""Shared fixtures: one real model runtime per test session, and rendered synthetic calls."""

from __future__ import annotations

import asyncio
import copy
import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jiwer
import pytest

from coach.runtime import Runtime
from coach.settings import Settings


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    # The final beam and model stay fixed (under load in production the beam narrows and
    # finals go to the small model): ingest tests stream faster than real time and compare
    # what they hear with a replay of the same WAV. tests/models/test_models_runtime.py covers
    # both adaptations.
    return Settings(
        data_dir=tmp_path_factory.mktemp("coach-data"),
        auth_disabled=True,
        asr_min_beam_size=5,
        asr_final_fallback=False,
    )


@pytest.fixture(scope="session")
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt = Runtime.load(settings)
    yield rt
    rt.close()


@pytest.fixture(scope="session")
def calls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("calls")


@pytest.fixture(scope="session")
def billing_call(calls_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The demo call as telephony sends it: 8 kHz mu-law stereo (customer left, agent right)."""
    from scripts.make_test_calls import BUILTIN_CALLS, render_call

    wav, truth = render_call(
        BUILTIN_CALLS["billing_dispute"], calls_dir, sample_rate=8000, encoding="mulaw"
    )
    return wav, json.loads(truth.read_text())


@pytest.fixture(scope="session")
def _billing_replay_once(
    billing_call: tuple[Path, dict[str, Any]], runtime: Runtime, settings: Settings
) -> list[dict[str, Any]]:
    from tests.coach.test_replay import replay_file

    return asyncio.run(replay_file(billing_call[0], runtime, settings))


@pytest.fixture
def billing_replay(_billing_replay_once: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The demo call's events from `replay --fast`, replayed once per test session and copied
    for each test: a replay is deterministic (test_replay checks that), and every ingest's
    whole-call test compares what it heard with it, so each replay of its own would cost a
    whole call's ASR again (most of a minute on an AVX2-only CPU)."""
    return copy.deepcopy(_billing_replay_once)


_NUM = {"1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "49": "forty nine"}


def normalize(text: str) -> str:
    text = text.lower().replace("-", " ")
    text = re.sub(r"\d+", lambda m: _NUM.get(m.group(), m.group()), text)
    text = re.sub(r"[^a-z' ]+", " ", text)
    return " ".join(text.split())


def wer(reference: str, hypothesis: str) -> float:
    return float(jiwer.wer(normalize(reference), normalize(hypothesis)))


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """A buffer for tests that set up logging into it; the root logger's handlers and level
    are put back afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    buf = io.StringIO()
    try:
        yield buf
    finally:
        for h in root.handlers[:]:
            root.removeHandler(h)
        for h in saved_handlers:
            root.addHandler(h)
        root.setLevel(saved_level)


@pytest.fixture(scope="session", autouse=True)
def _capture_manager_for_watchdogs(request: pytest.FixtureRequest) -> None:
    from tests.support import PYTEST_CAPTURE

    PYTEST_CAPTURE["capman"] = request.config.pluginmanager.getplugin("capturemanager")
