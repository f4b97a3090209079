"""scripts/bench_load.py: its Twilio client speaks the protocol the server parses, and its
statistics (search, latencies, /metrics deltas, /proc sampling) are right. Not timed."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import numpy as np
import pytest

from coach.api.app import create_app
from coach.ingest import twilio as tw
from coach.runtime import Runtime
from coach.settings import Settings
from scripts import bench_load as bl
from tests.support import serve_in_thread


def test_client_messages_follow_the_twilio_protocol() -> None:
    stream = bl.TwilioStream("load-1")
    proto = tw.StreamProtocol(max_message_bytes=64_000)
    proto.receive(stream.connected())
    start = proto.receive(stream.start())
    assert isinstance(start, tw.Start) and proto.in_order(start)
    assert proto.setup is not None
    assert proto.setup.call_id == "load-1" and proto.setup.speakers == ("customer", "agent")
    for i in range(3):
        for track in ("inbound", "outbound"):
            msg = proto.receive(stream.media(track, bytes([i]) * bl.FRAME_BYTES, i * 20))
            assert isinstance(msg, tw.Media) and proto.in_order(msg)
            chunk = proto.chunk(msg)
            assert chunk.t0 == pytest.approx(i * 0.02) and len(chunk.pcm) == bl.FRAME_BYTES
    stop = proto.receive(stream.stop())
    assert isinstance(stop, tw.Stop) and proto.in_order(stop)
    assert proto.out_of_order == 0


def search(passes_up_to: int, max_n: int) -> tuple[list[int], int]:
    gen = bl.doubling_then_bisect(max_n)
    tried = [next(gen)]
    try:
        while True:
            tried.append(gen.send(tried[-1] <= passes_up_to))
    except StopIteration as stop:
        return tried, int(stop.value)


@pytest.mark.parametrize(
    ("passes_up_to", "max_n", "tried", "best"),
    [
        (5, 16, [1, 2, 4, 8, 6, 5], 5),
        (4, 16, [1, 2, 4, 8, 6, 5], 4),
        (0, 16, [1], 0),
        (1, 16, [1, 2], 1),
        (100, 8, [1, 2, 4, 8], 8),
        (100, 24, [1, 2, 4, 8, 16, 24], 24),
        (20, 24, [1, 2, 4, 8, 16, 24, 20, 22, 21], 20),
        (17, 12, [1, 2, 4, 8, 12], 12),
    ],
)
def test_search_doubles_then_bisects(
    passes_up_to: int, max_n: int, tried: list[int], best: int
) -> None:
    assert search(passes_up_to, max_n) == (tried, best)


def test_latencies_are_measured_from_the_audio_time_sent() -> None:
    call = bl.CallAudio("c", b"", b"", {"turns": []})
    run = bl.CallRun(call, "c-1", t0=100.0)
    run.events = [
        (102.5, {"type": "transcript", "t_end": 2.0, "t_emit": 2.4, "speaker": "customer"}),
        (105.0, {"type": "cue", "evidence": {"t_end": 4.5}}),
        (101.0, {"type": "partial", "speaker": "agent", "utterance_id": 1}),
        (101.6, {"type": "partial", "speaker": "agent", "utterance_id": 1}),
        (103.0, {"type": "partial", "speaker": "agent", "utterance_id": 2}),
    ]
    lat = bl.call_latencies(run)
    assert lat["finals_wall"] == pytest.approx([0.5])
    assert lat["finals_emit"] == pytest.approx([0.4])
    assert lat["cues_wall"] == pytest.approx([0.5])
    assert lat["cadence"] == pytest.approx([0.6])
    assert lat["partials"] == 3 and lat["utterances_with_partials"] == 2


def test_metric_delta_sums_matching_samples() -> None:
    before: bl.MetricSamples = {("coach_dropped_frames_total", (("reason", "queue_full"),)): 2.0}
    after: bl.MetricSamples = {
        ("coach_dropped_frames_total", (("reason", "queue_full"),)): 5.0,
        ("coach_dropped_frames_total", (("reason", "duplicate"),)): 1.0,
    }
    assert bl.metric_delta(before, after, "coach_dropped_frames_total") == 4.0
    assert bl.metric_delta(before, after, "coach_dropped_frames_total", reason="queue_full") == 3
    assert bl.metric_delta(before, after, "missing") == 0.0


def test_proc_sample_reads_this_process() -> None:
    cpu_s, rss_mib, fds, threads = bl.proc_sample(os.getpid())
    assert cpu_s > 0 and rss_mib > 10 and fds > 2 and threads >= 1


def test_percentiles() -> None:
    d = bl.dist([0.1, 0.2, 0.3, 0.4, 1.0])
    assert d["n"] == 5 and d["p50"] == 0.3 and d["max"] == 1.0
    assert bl.dist([])["p95"] is None


def test_one_short_load_against_a_real_server(runtime: Runtime, settings: Settings) -> None:
    """Two 4 s calls through the real server (fast, 4x real time): every part of a row."""
    from audio.codecs import encode_mulaw

    tone = encode_mulaw(
        (np.sin(np.arange(32000) * 2 * np.pi * 220 / 8000) * 0.3).astype(np.float32)
    )
    call = bl.CallAudio("tone", tone, bl.silence_mulaw(len(tone)), {"turns": []})
    app = create_app(settings.model_copy(update={"max_calls": 0}), runtime)
    with serve_in_thread(app) as port:
        url = f"ws://127.0.0.1:{port}"
        target = bl.Target("test", url, f"http://127.0.0.1:{port}", pid=os.getpid())

        async def go() -> dict[str, Any]:
            runs = [bl.CallRun(call, f"bench-test-{i}") for i in range(2)]
            done = await asyncio.gather(*(bl.stream_call(url, r, speed=4.0) for r in runs))
            assert all(r.error is None for r in done), [r.error for r in done]
            assert all(r.close_code == 1000 for r in done)
            types = [[e["type"] for _, e in r.events] for r in done]
            assert all(t[0] == "call_start" and t[-1] == "call_end" for t in types), types
            return await bl.run_load(
                target, 1, [call], stagger_s=0.0, target_p95_s=1.0, tag="bench-row"
            )

        row = asyncio.run(go())
    assert row["n"] == 1 and row["errors"] == []
    assert row["server_rss_peak_mib"] is not None and row["asr_batches"] >= 0
    json.dumps(row)  # the report is JSON


def test_variants_and_baseline_are_parsed() -> None:
    args = bl.parse_args(["--baseline", "--variant", "w2:COACH_ASR_WORKERS=2,COACH_ASR_THREADS=1"])
    assert args.variants == {"w2": {"COACH_ASR_WORKERS": "2", "COACH_ASR_THREADS": "1"}}
    with pytest.raises(ValueError):
        bl.parse_variant("nokeys")
    with pytest.raises(ValueError):
        bl.parse_variant("x:PATH=/tmp")  # only COACH_* settings


@pytest.mark.parametrize(
    ("errors", "final_p95", "cue_p95", "dropped", "passed_cue", "passed_both"),
    [
        ([], 0.8, 0.9, 0, True, True),
        ([], 0.8, None, 0, True, True),  # no cue in the load: judged on finals
        ([], 1.2, None, 0, False, False),
        ([], 0.8, 1.2, 0, False, False),  # cues too late fail the load even with fast finals
        ([], 1.2, 0.9, 0, True, False),  # slow finals fail only the stricter criterion
        ([], 1.0, 0.5, 0, True, False),  # the limit itself is not under it
        ([], 0.8, 0.5, 3, False, False),  # lost audio fails any load
        ([], None, None, 0, False, False),  # nothing transcribed
        (["c1: closed early"], 0.5, 0.5, 0, False, False),
    ],
)
def test_a_load_passes_on_cue_latency_or_on_both(
    errors: list[str],
    final_p95: float | None,
    cue_p95: float | None,
    dropped: int,
    passed_cue: bool,
    passed_both: bool,
) -> None:
    def judged(criterion: bl.Criterion) -> bool:
        return bl.load_passed(
            errors, final_p95, cue_p95, 1.0, dropped_frames=dropped, criterion=criterion
        )

    assert judged("cue") is passed_cue
    assert judged("both") is passed_both


def test_latency_plot_is_a_png(tmp_path: Any) -> None:
    def row(config: str, n: int, p95: float | None) -> dict[str, Any]:
        return {
            "config": config,
            "n": n,
            "final_latency_wall_s": {"p50": None if p95 is None else p95 / 2, "p95": p95},
            "cue_latency_wall_s": {"p95": None if p95 is None else p95 * 0.8},
        }

    rows = [row("tuned", 1, 0.6), row("tuned", 2, 0.8), row("baseline", 1, 0.7)]
    rows.append(row("baseline", 2, None))  # a load without any transcript is left out
    out = tmp_path / "latency.png"
    bl.plot_latency(rows, 1.0, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
