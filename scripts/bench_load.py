"""Load benchmark: N concurrent stereo calls, streamed in real time over Twilio Media Streams.

Why: the cost of agent assist is machines per concurrent call. This drives a real server
process over the real wire protocol, as a telephony platform would, and measures what a
live agent would see: how long after a party stops speaking its final transcript (and any
coaching cue) reaches the panel, with N calls sharing one instance.

What it does, per configuration and per N:

1. Starts `python -m coach serve` (or uses `--url`) with auth off, no call limit and a
   throw-away data dir. Two configurations, interleaved N by N so that a change in the
   machine's background load hits both alike:
   - `tuned`: the defaults (one single-threaded ASR worker per core, cross-call ASR
     batching up to COACH_ASR_MAX_BATCH, partial cadence adapting to the ASR queue up to
     COACH_PARTIAL_MAX_INTERVAL_S, final beam narrowing under load);
   - `baseline` (`--baseline`): one decode at a time on all cores, batching off
     (COACH_ASR_WORKERS=1, COACH_ASR_THREADS=2, COACH_ASR_MAX_BATCH=1), a fixed partial
     cadence and a fixed final beam.
2. Streams N calls, the built-in scripted calls of `scripts/make_test_calls.py` (espeak-ng,
   8 kHz mu-law stereo: inbound = customer, outbound = agent) cycled, call i starting
   i x `--stagger` seconds after the first. Each call is a Twilio Media Stream: `connected`,
   `start` (both tracks, customParameters call_id/agent_id), one `media` message per track per
   20 ms (160 bytes mu-law, base64, `timestamp` in ms), paced at real time, then `stop`.
3. Listens to each call's `/ws/calls/{id}/events` from before its stream starts, stamping
   every event with its arrival time on the monotonic clock.
4. Reports per N:
   - final transcript latency: arrival - (stream start + t_end), i.e. end of speech to
     transcript on the panel in call-audio time (audio second t is sent at start + t);
     p50 / p95 / max, plus the server's own view `t_emit - t_end`;
   - cue latency the same way from each cue's evidence `t_end`, when cue events appear;
   - partials: how many, and their cadence within an utterance (arrival to arrival);
   - dropped frames and shed partials (server /metrics deltas), mean ASR batch size and
     queueing delay (coach_model_batch_size, coach_model_queue_wait_seconds);
   - server CPU % (of one core, /proc/PID/stat, while all N calls overlap) and RSS (idle
     before, peak during, peak growth per call), and the client's own CPU.
   A load passes when every call completed, no frame was dropped and the cue p95 is under
   `--target` (1.0 s), the throughput issue's measure; `--criterion both` also holds the
   final transcripts to it (each row records `passed_both` either way).
5. `--search` doubles N from 1 until a load fails, then bisects, for each configuration,
   and reports the largest passing N. Writes JSON (`--json`) with every transcript's latency.

Run from the repository root (check `uptime` first; other work on the same cores moves the
figures):

    .venv/bin/python -m scripts.bench_load --n 1,2,4 --baseline --json bench-out/load.json
    .venv/bin/python -m scripts.bench_load --search --max-n 16 --baseline
    .venv/bin/python -m scripts.bench_load --url ws://127.0.0.1:8000 --server-pid PID --n 2
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # also runnable as `python scripts/bench_load.py`
    sys.path.insert(0, str(ROOT))

log = logging.getLogger("bench_load")

FRAME_MS = 20
FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law, what Twilio sends per media message
TARGET_P95_S = 1.0
Criterion = Literal["cue", "both"]  # what a load must keep under the target at p95
DEFAULT_STAGGER_S = 2.0
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE_KIB = 1024
ACCOUNT_SID = "AC" + "0" * 32
BASELINE_ENV = {"COACH_ASR_MAX_BATCH": "1", "COACH_ASR_WORKERS": "1", "COACH_ASR_THREADS": "2"}
"""One decode at a time on every core, unbatched; plus COACH_PARTIAL_MAX_INTERVAL_S =
COACH_PARTIAL_INTERVAL_S (a fixed partial cadence) and COACH_ASR_MIN_BEAM_SIZE =
COACH_ASR_BEAM_SIZE (a fixed final beam)."""


# --------------------------------------------------------------------------------------------
# Calls


@dataclass(frozen=True)
class CallAudio:
    name: str
    inbound: bytes
    """mu-law bytes of the customer (channel 0)."""
    outbound: bytes
    """mu-law bytes of the agent (channel 1)."""
    truth: dict[str, Any]

    @property
    def frames(self) -> int:
        return (max(len(self.inbound), len(self.outbound)) + FRAME_BYTES - 1) // FRAME_BYTES

    @property
    def duration_s(self) -> float:
        return self.frames * FRAME_MS / 1000


def render_calls(
    names: Sequence[str], workdir: Path, *, seconds: float | None = None
) -> list[CallAudio]:
    """The built-in scripted calls as Twilio would carry them (8 kHz mu-law per track)."""
    import soundfile as sf

    from audio.codecs import encode_mulaw
    from scripts.make_test_calls import BUILTIN_CALLS, render_call

    out = []
    for name in names:
        wav, truth_path = render_call(
            BUILTIN_CALLS[name], workdir, sample_rate=8000, encoding="mulaw", channels=2
        )
        data, rate = sf.read(wav, dtype="float32", always_2d=True)
        assert rate == 8000, rate
        if seconds is not None:
            data = data[: int(seconds * rate)]
        truth = json.loads(truth_path.read_text())
        out.append(
            CallAudio(
                name,
                encode_mulaw(np.ascontiguousarray(data[:, 0])),
                encode_mulaw(np.ascontiguousarray(data[:, 1])),
                truth,
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# A Twilio Media Streams client


class TwilioStream:
    """The messages Twilio sends for one stream with both tracks (see coach/ingest/twilio.py)."""

    def __init__(self, call_id: str, *, agent_id: str = "bench") -> None:
        self.call_id = call_id
        digits = f"{abs(hash(call_id)) % 10**32:032x}"
        self.stream_sid = "MZ" + digits
        self.call_sid = "CA" + digits
        self.agent_id = agent_id
        self.seq = 0
        self.chunks = {"inbound": 0, "outbound": 0}

    def _next(self) -> str:
        self.seq += 1
        return str(self.seq)

    @staticmethod
    def connected() -> str:
        return json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})

    def start(self) -> str:
        return json.dumps(
            {
                "event": "start",
                "sequenceNumber": self._next(),
                "start": {
                    "accountSid": ACCOUNT_SID,
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": ["inbound", "outbound"],
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                    "customParameters": {"call_id": self.call_id, "agent_id": self.agent_id},
                },
                "streamSid": self.stream_sid,
            }
        )

    def media(self, track: str, payload: bytes, timestamp_ms: int) -> str:
        self.chunks[track] += 1
        return json.dumps(
            {
                "event": "media",
                "sequenceNumber": self._next(),
                "media": {
                    "track": track,
                    "chunk": str(self.chunks[track]),
                    "timestamp": str(timestamp_ms),
                    "payload": base64.b64encode(payload).decode(),
                },
                "streamSid": self.stream_sid,
            }
        )

    def stop(self) -> str:
        return json.dumps(
            {
                "event": "stop",
                "sequenceNumber": self._next(),
                "stop": {"accountSid": ACCOUNT_SID, "callSid": self.call_sid},
                "streamSid": self.stream_sid,
            }
        )


def silence_mulaw(n: int) -> bytes:
    return b"\xff" * n  # mu-law zero


@dataclass
class CallRun:
    call: CallAudio
    call_id: str
    t0: float = 0.0
    """Monotonic time at which audio second 0 was sent: audio second t is sent at t0 + t."""
    ended_at: float = 0.0
    """When the last frame was sent."""
    closed_at: float = 0.0
    """When the server closed the ingest socket (every transcript of the call is out)."""
    close_code: int | None = None
    close_reason: str = ""
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    feeder_lag_max_s: float = 0.0
    error: str | None = None


async def stream_call(
    base_url: str,
    run: CallRun,
    *,
    token: str | None = None,
    api_key: str | None = None,
    speed: float = 1.0,
    end_timeout_s: float = 60.0,
) -> CallRun:
    """Stream one call over /ingest/twilio at `speed` x real time; collect its events."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    headers = {"X-API-Key": api_key} if api_key else {}
    query = f"?token={token}" if token else ""
    events_url = f"{base_url}/ws/calls/{run.call_id}/events{query}"
    listener_ready = asyncio.Event()

    async def listen() -> None:
        try:
            async with connect(events_url, open_timeout=30, max_size=None) as ev_ws:
                listener_ready.set()
                async for raw in ev_ws:
                    run.events.append((time.monotonic(), json.loads(raw)))
        except ConnectionClosed:
            pass
        finally:
            listener_ready.set()

    listener = asyncio.create_task(listen())
    try:
        await asyncio.wait_for(listener_ready.wait(), 30)
        async with connect(
            f"{base_url}/ingest/twilio",
            additional_headers=headers,
            open_timeout=30,
            max_size=None,
            compression=None,
        ) as ws:
            tw = TwilioStream(run.call_id)
            await ws.send(tw.connected())
            await ws.send(tw.start())
            call = run.call
            step = FRAME_MS / 1000 / speed
            run.t0 = time.monotonic()
            for i in range(call.frames):
                target = run.t0 + (i + 1) * step  # frame i is whole once its 20 ms have passed
                delay = target - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    run.feeder_lag_max_s = max(run.feeder_lag_max_s, -delay)
                ts = i * FRAME_MS
                for track, audio in (("inbound", call.inbound), ("outbound", call.outbound)):
                    payload = audio[i * FRAME_BYTES : (i + 1) * FRAME_BYTES]
                    if len(payload) < FRAME_BYTES:
                        payload += silence_mulaw(FRAME_BYTES - len(payload))
                    await ws.send(tw.media(track, payload, ts))
            run.ended_at = time.monotonic()
            await ws.send(tw.stop())
            # The server closes only once the call is finalized (last transcripts out).
            with contextlib.suppress(ConnectionClosed):
                async with asyncio.timeout(end_timeout_s):
                    async for _ in ws:
                        pass
            run.closed_at = time.monotonic()
            run.close_code = ws.close_code
            run.close_reason = ws.close_reason or ""
            if run.close_code not in (1000, None):
                run.error = f"ingest closed with {run.close_code}: {run.close_reason}"
    except Exception as exc:  # recorded in the report; the other calls go on
        run.error = run.error or f"{type(exc).__name__}: {exc}"
        log.error("call %s: %s", run.call_id, run.error)
    finally:
        try:
            await asyncio.wait_for(listener, timeout=end_timeout_s)
        except TimeoutError:
            listener.cancel()
    return run


# --------------------------------------------------------------------------------------------
# The server process and what it costs


def proc_sample(pid: int) -> tuple[float, float, int, int]:
    """(CPU seconds, RSS MiB, open fds, threads) of a process, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime
    threads = int(fields[17])
    rss_kib = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kib = int(line.split()[1])
            break
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = -1
    return cpu_s, rss_kib / 1024, fds, threads


class Sampler:
    """Samples a process every `period_s` in the background: (monotonic, cpu_s, rss, fds, thr)."""

    def __init__(self, pid: int | None, period_s: float = 0.5) -> None:
        self.pid = pid
        self.period_s = period_s
        self.samples: list[tuple[float, float, float, int, int]] = []
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> tuple[float, float, float, int, int] | None:
        if self.pid is None:
            return None
        try:
            s = (time.monotonic(), *proc_sample(self.pid))
        except (OSError, ValueError, IndexError):
            return None
        self.samples.append(s)
        return s

    async def _loop(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.period_s)

    def start(self) -> None:
        self.samples.clear()
        if self.pid is not None:
            self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sample()

    def cpu_percent(self, t_from: float, t_to: float) -> float | None:
        """Mean CPU % (of one core) between two times, from the samples nearest them."""
        inside = [s for s in self.samples if t_from <= s[0] <= t_to]
        if len(inside) < 2 or inside[-1][0] - inside[0][0] <= 0:
            return None
        return 100 * (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])

    def peak_rss(self) -> float | None:
        return max((s[2] for s in self.samples), default=None)


def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


class Server:
    """`python -m coach serve` in a subprocess, ready once /health/ready says 200."""

    def __init__(self, name: str, env: dict[str, str], *, port: int, workdir: Path) -> None:
        self.name = name
        self.port = port
        self.url = f"ws://127.0.0.1:{port}"
        self.http = f"http://127.0.0.1:{port}"
        data_dir = workdir / f"data-{name}"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "COACH_AUTH_DISABLED": "true",
            "COACH_MAX_CALLS": "0",  # the benchmark measures beyond any admission limit
            "COACH_IDLE_TIMEOUT_S": "120",
            "COACH_DATA_DIR": str(data_dir),
            "COACH_LOG_LEVEL": "warning",
            **env,
        }
        self.overrides = env
        self.log_path = workdir / f"server-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 180.0) -> None:
        log_file = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "coach", "serve", "--port", str(self.port)],
            cwd=ROOT,
            env=self.env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server {self.name} exited with {self.proc.returncode}: "
                    + self.log_path.read_text()[-2000:]
                )
            with contextlib.suppress(OSError):
                status, _ = http_get(f"{self.http}/health/ready", timeout_s=2)
                if status == 200:
                    return
            time.sleep(0.5)
        raise RuntimeError(f"server {self.name} not ready in {timeout_s:.0f} s")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------------------------
# /metrics


MetricSamples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
"""/metrics samples keyed by (name, sorted labels)."""


def scrape(http_base: str) -> MetricSamples:
    """Every sample of the server's /metrics, keyed by (name, sorted labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    status, text = http_get(f"{http_base}/metrics")
    if status != 200:
        return {}
    out: MetricSamples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def _share(part: float, whole: float) -> float | None:
    return round(part / whole, 3) if whole else None


def metric_delta(before: MetricSamples, after: MetricSamples, name: str, **labels: str) -> float:
    """Sum over samples named `name` whose labels include `labels`, after minus before."""

    def total(m: MetricSamples) -> float:
        return sum(
            v
            for (n, ls), v in m.items()
            if n == name and all((k, w) in ls for k, w in labels.items())
        )

    return total(after) - total(before)


# --------------------------------------------------------------------------------------------
# Statistics


def dist(values: Sequence[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None, "mean": None}
    a = np.asarray(values, dtype=np.float64)
    return {
        "n": len(values),
        "p50": round(float(np.percentile(a, 50)), 3),
        "p95": round(float(np.percentile(a, 95)), 3),
        "max": round(float(a.max()), 3),
        "mean": round(float(a.mean()), 3),
    }


def call_latencies(run: CallRun) -> dict[str, Any]:
    """Latencies of one call's events: wall (panel arrival) and the server's audio view."""
    finals_wall: list[float] = []
    finals_emit: list[float] = []
    cues_wall: list[float] = []
    cadence: list[float] = []
    records: list[dict[str, Any]] = []
    partials_by_utt: dict[tuple[str, int], list[float]] = {}
    n_partials = 0
    for arrival, ev in run.events:
        kind = ev.get("type")
        if kind == "transcript":
            t_end = float(ev["t_end"])
            lw = arrival - (run.t0 + t_end)
            le = float(ev["t_emit"]) - t_end
            finals_wall.append(lw)
            finals_emit.append(le)
            records.append(
                {
                    "call_id": run.call_id,
                    "speaker": ev.get("speaker"),
                    "t_end": t_end,
                    "latency_wall_s": round(lw, 3),
                    "latency_emit_s": round(le, 3),
                    "text": ev.get("text", ""),
                }
            )
        elif kind == "cue":
            evidence = ev.get("evidence") or {}
            cue_end = evidence.get("t_end", ev.get("t_end"))
            if cue_end is not None:
                cues_wall.append(arrival - (run.t0 + float(cue_end)))
        elif kind == "partial":
            n_partials += 1
            key = (str(ev.get("speaker")), int(ev.get("utterance_id", -1)))
            partials_by_utt.setdefault(key, []).append(arrival)
    for arrivals in partials_by_utt.values():
        arrivals.sort()
        cadence.extend(b - a for a, b in zip(arrivals, arrivals[1:], strict=False))
    return {
        "finals_wall": finals_wall,
        "finals_emit": finals_emit,
        "cues_wall": cues_wall,
        "cadence": cadence,
        "partials": n_partials,
        "utterances_with_partials": len(partials_by_utt),
        "records": records,
    }


# --------------------------------------------------------------------------------------------
# One load


@dataclass
class Target:
    """Where calls go and how to observe the server."""

    name: str
    url: str
    http: str
    pid: int | None
    token: str | None = None
    api_key: str | None = None
    overrides: dict[str, str] = field(default_factory=dict)


async def run_load(
    target: Target,
    n: int,
    calls: Sequence[CallAudio],
    *,
    stagger_s: float,
    target_p95_s: float,
    tag: str,
    criterion: Criterion = "cue",
) -> dict[str, Any]:
    """N calls against one server; returns the row of the report."""
    sampler = Sampler(target.pid)
    idle = sampler.sample()
    before = scrape(target.http)
    client_cpu0 = time.process_time()
    runs = [CallRun(calls[i % len(calls)], f"{tag}-n{n}-c{i}") for i in range(n)]

    async def staggered(i: int, run: CallRun) -> CallRun:
        await asyncio.sleep(i * stagger_s)
        return await stream_call(target.url, run, token=target.token, api_key=target.api_key)

    sampler.start()
    t_start = time.monotonic()
    await asyncio.gather(*(staggered(i, r) for i, r in enumerate(runs)))
    await sampler.stop()
    wall_s = time.monotonic() - t_start
    client_cpu = time.process_time() - client_cpu0
    after = scrape(target.http)

    finals_wall: list[float] = []
    finals_emit: list[float] = []
    cues_wall: list[float] = []
    cadence: list[float] = []
    records: list[dict[str, Any]] = []
    partials = utts_with_partials = 0
    for run in runs:
        lat = call_latencies(run)
        finals_wall += lat["finals_wall"]
        finals_emit += lat["finals_emit"]
        cues_wall += lat["cues_wall"]
        cadence += lat["cadence"]
        records += lat["records"]
        partials += lat["partials"]
        utts_with_partials += lat["utterances_with_partials"]
    errors = [f"{r.call_id}: {r.error}" for r in runs if r.error]
    # CPU while all N calls overlap (after the last start, before the first end).
    overlap_from = max(r.t0 for r in runs if r.t0) if any(r.t0 for r in runs) else t_start
    overlap_to = min((r.ended_at for r in runs if r.ended_at), default=time.monotonic())
    cpu_overlap = sampler.cpu_percent(overlap_from, overlap_to)
    cpu_all = sampler.cpu_percent(t_start, time.monotonic())
    idle_rss = idle[2] if idle else None
    peak_rss = sampler.peak_rss()
    p95 = dist(finals_wall)["p95"]
    cue_p95 = dist(cues_wall)["p95"]
    beams = metric_delta(before, after, "coach_asr_final_beam_size_count")
    beam_sum = metric_delta(before, after, "coach_asr_final_beam_size_sum")
    batches = metric_delta(before, after, "coach_model_batch_size_count", model="asr")
    batch_reqs = metric_delta(before, after, "coach_model_batch_size_sum", model="asr")
    wait_sum = metric_delta(before, after, "coach_model_queue_wait_seconds_sum", model="asr")
    audio_s = sum(r.call.duration_s for r in runs)
    dropped = int(metric_delta(before, after, "coach_dropped_frames_total"))
    row = {
        "config": target.name,
        "n": n,
        "final_latency_wall_s": dist(finals_wall),
        "final_latency_emit_s": dist(finals_emit),
        "cue_latency_wall_s": dist(cues_wall),
        "transcripts": len(finals_wall),
        "cues": len(cues_wall),
        "partials": partials,
        "utterances_with_partials": utts_with_partials,
        "partial_cadence_s": dist(cadence),
        "dropped_frames": dropped,
        "dropped_frames_queue_full": int(
            metric_delta(before, after, "coach_dropped_frames_total", reason="queue_full")
        ),
        "partials_shed": int(metric_delta(before, after, "coach_partials_shed_total")),
        "asr_batches": int(batches),
        "asr_mean_batch": round(batch_reqs / batches, 2) if batches else None,
        "asr_multi_request_batches": int(
            batches
            - metric_delta(before, after, "coach_model_batch_size_bucket", model="asr", le="1.0")
        ),
        "asr_mean_queue_wait_s": round(wait_sum / batches, 3) if batches else None,
        "asr_mean_final_beam": round(beam_sum / beams, 2) if beams else None,
        # Share of finals decoded by COACH_ASR_FINAL_MODEL (the rest fell back to the small
        # model under load, or there is no final model).
        "asr_finals_on_final_model": _share(
            metric_delta(before, after, "coach_asr_finals_total", model="final"),
            metric_delta(before, after, "coach_asr_finals_total"),
        ),
        "server_cpu_pct_overlap": round(cpu_overlap, 1) if cpu_overlap is not None else None,
        "server_cpu_pct_run": round(cpu_all, 1) if cpu_all is not None else None,
        "server_rss_idle_mib": round(idle_rss, 1) if idle_rss is not None else None,
        "server_rss_peak_mib": round(peak_rss, 1) if peak_rss is not None else None,
        "server_rss_per_call_mib": (
            round((peak_rss - idle_rss) / n, 1)
            if peak_rss is not None and idle_rss is not None
            else None
        ),
        "client_cpu_pct": round(100 * client_cpu / wall_s, 1) if wall_s > 0 else None,
        "feeder_lag_max_s": round(max((r.feeder_lag_max_s for r in runs), default=0.0), 3),
        "finalize_after_stop_s": dist([r.closed_at - r.ended_at for r in runs if r.closed_at]),
        "audio_s": round(audio_s, 1),
        "wall_s": round(wall_s, 1),
        "errors": errors,
        "passed": load_passed(
            errors, p95, cue_p95, target_p95_s, dropped_frames=dropped, criterion=criterion
        ),
        "passed_both": load_passed(
            errors, p95, cue_p95, target_p95_s, dropped_frames=dropped, criterion="both"
        ),
        "records": records,
    }
    return row


# --------------------------------------------------------------------------------------------
# Search


def doubling_then_bisect(max_n: int) -> Generator[int, bool, int]:
    """Yields N to try and receives whether it passed; returns the largest passing N (or 0)."""
    best, fail = 0, None
    n = 1
    while n <= max_n:
        if not (yield n):
            fail = n
            break
        best = n
        if n == max_n:
            break
        # Doubling past the cap still tries the cap itself (16 -> 24, not a stop at 16).
        n = min(n * 2, max_n)
    if fail is None:
        return best
    lo, hi = best, fail
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if (yield mid):
            lo = mid
        else:
            hi = mid
    return lo


# --------------------------------------------------------------------------------------------
# Report


def _f(x: Any, fmt: str = "{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    head = (
        f"{'config':9} {'N':>3} {'finals':>6} {'p50':>6} {'p95':>6} {'max':>6} {'cue p95':>7} "
        f"{'part/s':>6} {'cad':>5} {'drop':>5} {'shed':>5} {'batch':>5} {'wait':>6} "
        f"{'CPU%':>6} {'RSS':>6} {'MB/call':>7} {'ok':>3}"
    )
    print(head)
    print("-" * len(head))
    for r in sorted(rows, key=lambda r: (r["config"], r["n"])):
        fl, cue = r["final_latency_wall_s"], r["cue_latency_wall_s"]
        rate = r["partials"] / r["audio_s"] if r["audio_s"] else None
        print(
            f"{r['config']:9} {r['n']:>3} {r['transcripts']:>6} {_f(fl['p50']):>6} "
            f"{_f(fl['p95']):>6} {_f(fl['max']):>6} {_f(cue['p95']):>7} {_f(rate, '{:.2f}'):>6} "
            f"{_f(r['partial_cadence_s']['p50'], '{:.2f}'):>5} {r['dropped_frames']:>5} "
            f"{r['partials_shed']:>5} {_f(r['asr_mean_batch'], '{:.2f}'):>5} "
            f"{_f(r['asr_mean_queue_wait_s']):>6} {_f(r['server_cpu_pct_overlap'], '{:.0f}'):>6} "
            f"{_f(r['server_rss_peak_mib'], '{:.0f}'):>6} "
            f"{_f(r['server_rss_per_call_mib'], '{:.1f}'):>7} {'yes' if r['passed'] else 'NO':>3}"
        )
        for e in r["errors"][:3]:
            print(f"    error: {e}")


def load_passed(
    errors: Sequence[str],
    final_p95: float | None,
    cue_p95: float | None,
    target_s: float,
    *,
    dropped_frames: int = 0,
    criterion: Criterion = "cue",
) -> bool:
    """Did a load keep up? Every call completed, no audio frame was dropped, something was
    transcribed, and the cues reached the panel within `target_s` at p95 (the throughput
    issue's measure); with `criterion="both"` the final transcripts must too. A load without
    any cue is judged on its finals."""
    if errors or dropped_frames or final_p95 is None:
        return False
    final_ok = final_p95 < target_s
    if cue_p95 is None:
        return final_ok
    return cue_p95 < target_s and (final_ok or criterion == "cue")


def plot_latency(rows: Sequence[dict[str, Any]], target_s: float, path: Path) -> None:
    """PNG of latency against concurrent calls, one colour per configuration: final transcript
    p95 (solid) and p50 (dashed), cue p95 (dotted), and the target line."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for config in sorted({r["config"] for r in rows}):
        mine = sorted(
            (r for r in rows if r["config"] == config and r["final_latency_wall_s"]["p95"]),
            key=lambda r: r["n"],
        )
        ns = [r["n"] for r in mine]
        (line,) = ax.plot(
            ns, [r["final_latency_wall_s"]["p95"] for r in mine], "o-", label=f"{config} final p95"
        )
        colour = line.get_color()
        ax.plot(
            ns,
            [r["final_latency_wall_s"]["p50"] for r in mine],
            "--",
            color=colour,
            label=f"{config} final p50",
        )
        cue = [
            (r["n"], r["cue_latency_wall_s"]["p95"]) for r in mine if r["cue_latency_wall_s"]["p95"]
        ]
        if cue:
            ax.plot(*zip(*cue, strict=True), ":", color=colour, label=f"{config} cue p95")
    ax.axhline(target_s, color="grey", linewidth=1, linestyle=(0, (2, 3)))
    ax.text(
        ax.get_xlim()[1], target_s, f"target {target_s:g} s ", ha="right", va="bottom", color="grey"
    )
    ax.set_xlabel("concurrent stereo calls (N)")
    ax.set_ylabel("latency on the panel (s)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def environment(args: argparse.Namespace, targets: Sequence[Target]) -> dict[str, Any]:
    from scripts.bench_asr import git_commit, machine_info

    return {
        "machine": machine_info(),
        "commit": git_commit(),
        "load_average_at_start": load_average(),
        "calls": args.calls,
        "stagger_s": args.stagger,
        "seconds_per_call": args.seconds,
        "target_p95_s": args.target,
        "criterion": args.criterion,
        "configs": {t.name: t.overrides for t in targets},
    }


# --------------------------------------------------------------------------------------------
# Main


def parse_ns(text: str) -> list[int]:
    ns = sorted({int(x) for x in text.split(",") if x.strip()})
    if not ns or ns[0] < 1:
        raise argparse.ArgumentTypeError("N values must be positive integers")
    return ns


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--n", type=parse_ns, default=[1, 2, 4], help="concurrent calls, e.g. 1,2,4")
    p.add_argument("--search", action="store_true", help="find the largest N under --target")
    p.add_argument("--max-n", type=int, default=16, help="--search: largest N tried")
    p.add_argument("--baseline", action="store_true", help="also run batching off, fixed cadence")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:K=V,K=V",
        help="another configuration to compare, e.g. w2:COACH_ASR_WORKERS=2,COACH_ASR_THREADS=1",
    )
    p.add_argument("--target", type=float, default=TARGET_P95_S, help="p95 latency limit (s)")
    p.add_argument(
        "--criterion",
        choices=("cue", "both"),
        default="cue",
        help="what must stay under --target at p95: cues (the issue's measure) or finals too",
    )
    p.add_argument("--stagger", type=float, default=DEFAULT_STAGGER_S, help="s between starts")
    p.add_argument("--seconds", type=float, default=None, help="use only this much of each call")
    p.add_argument("--calls", default="all", help="built-in calls to cycle through, or 'all'")
    p.add_argument("--url", default=None, help="an already running server (ws://host:port)")
    p.add_argument("--server-pid", type=int, default=None, help="with --url: its PID, for CPU/RSS")
    p.add_argument("--token", default=None, help="with --url: a token for the event streams")
    p.add_argument("--api-key", default=None, help="with --url: the ingest API key")
    p.add_argument("--json", type=Path, default=Path("bench-out/bench_load.json"))
    p.add_argument("--plot", type=Path, default=None, help="write latency vs N as PNG here")
    p.add_argument(
        "--replot", type=Path, default=None, help="only redraw --plot from this earlier --json"
    )
    p.add_argument("--settle", type=float, default=3.0, help="s of quiet between loads")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.url and (args.baseline or args.variant):
        p.error("--baseline and --variant start their own servers; leave out --url")
    try:
        args.variants = dict(parse_variant(v) for v in args.variant)
    except ValueError as exc:
        p.error(str(exc))
    return args


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """ "name:COACH_X=1,COACH_Y=2" -> ("name", {"COACH_X": "1", "COACH_Y": "2"})."""
    name, _, pairs = text.partition(":")
    env = dict(pair.split("=", 1) for pair in pairs.split(",") if "=" in pair)
    if not name or not env or any(not k.startswith("COACH_") for k in env):
        raise ValueError(f"--variant {text!r}: expected NAME:COACH_KEY=VALUE[,COACH_KEY=VALUE]")
    return name, env


@contextlib.contextmanager
def targets_for(args: argparse.Namespace, workdir: Path) -> Iterator[list[Target]]:
    if args.url:
        url = args.url.rstrip("/")
        http = url.replace("ws://", "http://").replace("wss://", "https://")
        yield [Target("server", url, http, args.server_pid, args.token, args.api_key)]
        return
    from coach.settings import Settings

    base_interval = Settings().partial_interval_s
    configs: dict[str, dict[str, str]] = {"tuned": {}}
    if args.baseline:
        configs["baseline"] = {
            **BASELINE_ENV,
            "COACH_PARTIAL_MAX_INTERVAL_S": str(base_interval),
            "COACH_ASR_MIN_BEAM_SIZE": str(Settings().asr_beam_size),
        }
    configs.update(args.variants)
    servers = [
        Server(name, env, port=free_port(), workdir=workdir) for name, env in configs.items()
    ]
    try:
        for s in servers:
            log.info("starting server %s on %d", s.name, s.port)
            s.start()
        yield [Target(s.name, s.url, s.http, s.pid, overrides=s.overrides) for s in servers]
    finally:
        for s in servers:
            s.stop()


async def bench(args: argparse.Namespace, calls: list[CallAudio], workdir: Path) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    best: dict[str, int] = {}
    with targets_for(args, workdir) as targets:
        env = environment(args, targets)
        print(f"load average at start: {env['load_average_at_start']}")

        async def one(target: Target, n: int) -> bool:
            await asyncio.sleep(args.settle)
            print(f"[{target.name}] N={n} ...", flush=True)
            row = await run_load(
                target,
                n,
                calls,
                stagger_s=args.stagger,
                target_p95_s=args.target,
                tag=f"{target.name}-{int(time.time())}",
                criterion=args.criterion,
            )
            row["load_average_after"] = load_average()
            rows.append(row)
            fl = row["final_latency_wall_s"]
            print(
                f"[{target.name}] N={n}: final p50 {_f(fl['p50'])} p95 {_f(fl['p95'])} s, "
                f"cue p95 {_f(row['cue_latency_wall_s']['p95'])} s, "
                f"CPU {_f(row['server_cpu_pct_overlap'], '{:.0f}')}%, "
                f"batch {_f(row['asr_mean_batch'], '{:.2f}')}, "
                f"{'pass' if row['passed'] else 'FAIL'}",
                flush=True,
            )
            return bool(row["passed"])

        if args.search:
            # One search per configuration, stepped in turn so both see the same conditions.
            searches = {t.name: doubling_then_bisect(args.max_n) for t in targets}
            pending = {name: next(gen) for name, gen in searches.items()}
            by_name = {t.name: t for t in targets}
            while pending:
                for name in list(pending):
                    ok = await one(by_name[name], pending[name])
                    try:
                        pending[name] = searches[name].send(ok)
                    except StopIteration as stop:
                        best[name] = int(stop.value)
                        del pending[name]
        else:
            for n in args.n:
                for t in targets:
                    await one(t, n)
            for t in targets:
                passing = [r["n"] for r in rows if r["config"] == t.name and r["passed"]]
                best[t.name] = max(passing, default=0)
    return {**env, "largest_passing_n": best, "runs": rows}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.replot is not None:
        if args.plot is None:
            print("error: --replot needs --plot", file=sys.stderr)
            return 2
        earlier = json.loads(args.replot.read_text())
        plot_latency(earlier["runs"], earlier.get("target_p95_s", args.target), args.plot)
        print(f"plot: {args.plot}")
        return 0
    from scripts.make_test_calls import BUILTIN_CALLS

    names = list(BUILTIN_CALLS) if args.calls == "all" else args.calls.split(",")
    with tempfile.TemporaryDirectory(prefix="bench_load_") as tmp:
        workdir = Path(tmp)
        calls = render_calls(names, workdir, seconds=args.seconds)
        print(
            "calls: "
            + ", ".join(f"{c.name} {c.duration_s:.0f} s" for c in calls)
            + f"; stagger {args.stagger} s"
        )
        report = asyncio.run(bench(args, calls, workdir))
    print()
    print_table(report["runs"])
    print()
    measure = "cue p95" if args.criterion == "cue" else "final and cue p95"
    for name, n in report["largest_passing_n"].items():
        both = [r["n"] for r in report["runs"] if r["config"] == name and r.get("passed_both")]
        print(
            f"largest N with {measure} < {args.target} s ({name}): {n}"
            f" (final and cue p95 both under it, among the loads run: {max(both, default=0)})"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"JSON: {args.json}")
    if args.plot is not None:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot_latency(report["runs"], args.target, args.plot)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
