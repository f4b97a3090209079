"""Prometheus metrics: every name of ARCHITECTURE.md is defined here, in one place."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)

ACTIVE_CALLS = Gauge("coach_active_calls", "Calls with audio flowing")
AUDIO_SECONDS = Counter("coach_audio_seconds_total", "Call audio processed", ["speaker"])
ASR_LATENCY = Histogram(
    "coach_asr_latency_seconds",
    "End of speech to final transcript (wall clock)",
    buckets=LATENCY_BUCKETS,
)
CUE_LATENCY = Histogram(
    "coach_cue_latency_seconds",
    "End of triggering speech to cue delivered",
    buckets=LATENCY_BUCKETS,
)
CUES = Counter("coach_cues_total", "Cues emitted", ["cue"])
CUE_FEEDBACK = Counter(
    "coach_cue_feedback_total",
    "Cue verdicts given (a person's repeat of their current verdict is not counted again)",
    ["cue", "verdict"],
)
MISSED_CUE_REPORTS = Counter(
    "coach_missed_cue_reports_total", "Reports that an utterance should have shown a cue", ["cue"]
)
REVIEW_WITHDRAWALS = Counter(
    "coach_review_withdrawals_total",
    "Cue ratings and missed-cue reports taken back by their authors",
    ["kind"],
)
ESCALATIONS = Counter("coach_escalations_total", "Escalations", ["reason", "urgency"])
PLAYBOOK_RELOADS = Counter(
    "coach_playbook_reloads_total",
    "Playbook reloads: loaded (a new version in force) or refused (the last good one kept)",
    ["result"],
)
for _result in ("loaded", "refused"):  # at 0 from the start: increase() sees the first one
    PLAYBOOK_RELOADS.labels(result=_result)
PLAYBOOK_REFUSED = Gauge(
    "coach_playbook_refused",
    "1 while the playbook file on disk is refused and live calls use the last good version",
)
CUSTOMER_VALENCE = Histogram(
    "coach_customer_valence",
    "Customer valence per utterance",
    buckets=(-1.0, -0.6, -0.3, -0.1, 0.1, 0.3, 0.6, 1.0),
)
DRAINING = Gauge(
    "coach_draining",
    "1 while this instance is stopping: it takes no new calls and waits for its live ones "
    "(COACH_DRAIN_TIMEOUT_S)",
)
QUEUE_DEPTH = Gauge("coach_queue_depth", "Items waiting per stage", ["stage"])
REDIS_DEGRADED = Gauge(
    "coach_redis_degraded",
    "1 while this instance cannot reach Redis: its calls go on, other instances' walls and "
    "panels lag behind (0 without Redis)",
)
DROPPED_FRAMES = Counter("coach_dropped_frames_total", "Audio frames dropped", ["reason"])
INGEST_ERRORS = Counter(
    "coach_ingest_errors_total", "Rejected ingest input", ["protocol", "reason"]
)
MODEL_INFERENCE = Histogram(
    "coach_model_inference_seconds",
    "Model inference time per batch",
    ["model"],
    buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0),
)
PARTIALS_SHED = Counter("coach_partials_shed_total", "Partial decodes dropped under load")
CALLS_REJECTED = Counter(
    "coach_calls_rejected_total",
    "New calls refused (over_capacity: COACH_MAX_CALLS reached; draining; duplicate_call...)",
    ["reason"],
)
MODEL_BATCH_SIZE = Histogram(
    "coach_model_batch_size",
    "Requests served together in one model batch",
    ["model"],
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32),
)
MODEL_QUEUE_WAIT = Histogram(
    "coach_model_queue_wait_seconds",
    "Longest wait in the scheduler queue among the requests of a batch",
    ["model"],
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0, 2.0, 5.0),
)
ASR_FINAL_BEAM = Histogram(
    "coach_asr_final_beam_size",
    "Beam size of final decodes (narrower than COACH_ASR_BEAM_SIZE: the ASR queue was loaded)",
    buckets=(1, 2, 3, 4, 5, 8),
)
TEXT_SCORES = Counter(
    "coach_text_scores",
    "Texts the emotion model was asked to score: 'reused' a recent score of the same text "
    "(a final's whole text again as its only clause), or 'scored' by a model pass",
    ["result"],
)
ASR_FINALS = Counter(
    "coach_asr_finals",
    "Final decodes by model: 'final' (COACH_ASR_FINAL_MODEL) when an ASR worker was free, "
    "'small' (COACH_ASR_MODEL) under load or when no final model is set",
    ["model"],
)
MEMORY_RELEASE_SECONDS = Histogram(
    "coach_memory_release_seconds",
    "Periodic memory release (COACH_MEMORY_RELEASE_INTERVAL_S): full gc, then malloc_trim",
    ["step"],
    buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5),
)
MEMORY_TRIMMED_BYTES = Counter(
    "coach_memory_trimmed_bytes_total", "Resident memory given back to the OS by malloc_trim"
)
WEBHOOK_DELIVERIES = Counter(
    "coach_webhook_deliveries_total",
    "Escalations sent to COACH_ESCALATION_WEBHOOK_URL: delivered, failed after retries, or "
    "dropped with the queue full",
    ["result"],
)
# At 0 from the start, like the playbook reloads: an alert on increase() misses the first
# failed delivery of a series that first appears at 1 (an outside operator audit).
for _result in ("delivered", "failed", "dropped"):
    WEBHOOK_DELIVERIES.labels(result=_result)
