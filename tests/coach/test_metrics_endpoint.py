"""`/metrics` parses as Prometheus text and shows a call that went through the server."""

from __future__ import annotations

import json
from typing import Any

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from coach.api.app import create_app
from coach.runtime import Runtime
from coach.settings import Settings

REQUIRED = {
    "coach_active_calls",
    "coach_audio_seconds",
    "coach_asr_latency_seconds",
    "coach_cue_latency_seconds",
    "coach_cues",
    "coach_cue_feedback",
    "coach_escalations",
    "coach_customer_valence",
    "coach_queue_depth",
    "coach_dropped_frames",
    "coach_ingest_errors",
    "coach_model_inference_seconds",
    "coach_text_scores",
}


def samples(text: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        out[family.name] = list(family.samples)
    return out


def value(fams: dict[str, list[Any]], name: str, **labels: str) -> float:
    return sum(
        s.value
        for fam in fams.values()
        for s in fam
        if s.name == name and labels.items() <= s.labels.items()
    )


def test_metrics_parse_and_move_after_a_call(
    runtime: Runtime, settings: Settings, billing_call: Any
) -> None:
    import soundfile as sf

    data, rate = sf.read(billing_call[0], dtype="int16")
    pcm = data[: 14 * rate].tobytes()
    with TestClient(create_app(settings, runtime)) as client:
        before = samples(client.get("/metrics").text)
        assert REQUIRED <= set(before), REQUIRED - set(before)
        with client.websocket_connect("/ingest/pcm") as ws:
            ws.send_text(
                json.dumps(
                    {"call_id": "m1", "sample_rate": rate, "encoding": "pcm16", "channels": 2}
                )
            )
            ws.receive_text()
            for i in range(0, len(pcm), 3200):
                ws.send_bytes(pcm[i : i + 3200])
            ws.send_text(json.dumps({"type": "end"}))
            while True:
                try:
                    ws.receive_text()
                except Exception:
                    break
        after = samples(client.get("/metrics").text)
    audio = value(after, "coach_audio_seconds_total", speaker="customer") - value(
        before, "coach_audio_seconds_total", speaker="customer"
    )
    assert 13.5 <= audio <= 14.5
    assert value(after, "coach_asr_latency_seconds_count") > value(
        before, "coach_asr_latency_seconds_count"
    )
    assert value(after, "coach_customer_valence_count") > value(
        before, "coach_customer_valence_count"
    )
    assert value(after, "coach_model_inference_seconds_count", model="asr") > value(
        before, "coach_model_inference_seconds_count", model="asr"
    )
    assert value(after, "coach_model_inference_seconds_count", model="emotion") > value(
        before, "coach_model_inference_seconds_count", model="emotion"
    )
    # Every final's text is scored, and a one-clause customer turn's clause is that same
    # text again: the cue engine reuses its score instead of a second model pass.
    assert value(after, "coach_text_scores_total", result="scored") > value(
        before, "coach_text_scores_total", result="scored"
    )
    assert value(after, "coach_text_scores_total", result="reused") > value(
        before, "coach_text_scores_total", result="reused"
    )
    assert value(after, "coach_active_calls") == value(before, "coach_active_calls")
    latency_sum = value(after, "coach_asr_latency_seconds_sum") - value(
        before, "coach_asr_latency_seconds_sum"
    )
    assert latency_sum >= 0


def _gauge(text: str, name: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} not in /metrics")


def test_an_instance_that_cannot_reach_redis_says_so_in_its_metrics(
    runtime: Runtime, tmp_path: Any
) -> None:
    """An outside scale-out audit: only /health/ready's JSON told that Redis was lost, while it
    still answered 200; nothing for Prometheus to alert on."""
    from tests.support import free_port

    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    settings = Settings(data_dir=tmp_path, auth_disabled=True, store_enabled=False, redis_url=dead)
    with TestClient(create_app(settings, runtime)) as client:
        assert _gauge(client.get("/metrics").text, "coach_redis_degraded") == 1.0
    # The stopped bus no longer speaks for the process.
    with TestClient(create_app(Settings(data_dir=tmp_path, auth_disabled=True), runtime)) as c:
        assert _gauge(c.get("/metrics").text, "coach_redis_degraded") == 0.0


def test_alerted_counters_are_exported_at_zero_before_anything_happens(
    runtime: Runtime, tmp_path: Any
) -> None:
    """An outside operator audit: a counter series that first appears at 1 is no increase
    to Prometheus, so the alert on a failed escalation webhook missed the first failure."""
    settings = Settings(data_dir=tmp_path, auth_disabled=True, store_enabled=False)
    with TestClient(create_app(settings, runtime)) as client:
        text = client.get("/metrics").text
    for series in (
        'coach_webhook_deliveries_total{result="failed"}',
        'coach_webhook_deliveries_total{result="dropped"}',
        'coach_calls_rejected_total{reason="over_capacity"}',
        'coach_playbook_reloads_total{result="refused"}',
    ):
        assert series in text, series
