"""Replay a WAV file through the live call path (CONTRACT.md, `python -m coach replay`).

The file is cut into 20 ms frames per channel and pushed into a CallSession exactly as an
ingest connection would. `--fast` processes each frame fully before the next (deterministic);
`--realtime` paces frames at real time and lets the pipeline run concurrently, as on a live call.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import soundfile as sf

from audio.framing import FRAME_MS, samples_per_frame
from audio.resample import resample
from coach.bus import InProcessBus, call_topic
from coach.calls import CallManager
from coach.events import Event, dumps
from coach.messages import SPEAKERS, AudioChunk, Speaker
from coach.runtime import Runtime
from coach.settings import Settings

log = logging.getLogger(__name__)

FRAME_RATE_FALLBACK = 16000
"""Rate a WAV is taken to when its own gives no whole 20 ms frames (11025, 22050 Hz)."""
SUPPORTED_SUBTYPES = {"PCM_16", "PCM_U8", "PCM_24", "PCM_32", "FLOAT", "DOUBLE", "ULAW", "ALAW"}


class ReplayInputError(ValueError):
    pass


class EventsFileError(Exception):
    """The events file could not be written (a full disk...): the replay stops there."""


@dataclass(frozen=True, slots=True)
class CallAudio:
    sample_rate: int
    channels: dict[Speaker, np.ndarray[Any, np.dtype[np.float32]]]
    subtype: str


def parse_channels(spec: str | None, n_channels: int) -> list[Speaker]:
    """`customer,agent` names channel 0 and 1; default per CONTRACT (mono = customer)."""
    if spec is None:
        return list(SPEAKERS[:n_channels]) if n_channels <= 2 else list(SPEAKERS)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:  # `--channels ""` left no channel to replay (it was a traceback)
        raise ReplayInputError("--channels: name at least one party (customer, agent)")
    for name in names:
        if name not in SPEAKERS:
            raise ReplayInputError(f"--channels: unknown party {name!r} (use customer, agent)")
    if len(set(names)) != len(names):
        raise ReplayInputError("--channels: a party is named twice")
    if len(names) > n_channels:
        raise ReplayInputError(
            f"--channels names {len(names)} parties but the file has {n_channels} channel(s)"
        )
    return names  # type: ignore[return-value]


def read_call(path: Path, channels_spec: str | None = None) -> CallAudio:
    # libsndfile says "System error" for a missing file and "Format not recognised" for a folder.
    if not path.exists():
        raise ReplayInputError(f"{path}: no such file")
    if path.is_dir():
        raise ReplayInputError(f"{path}: is a directory, not a WAV file")
    try:
        info = sf.info(str(path))
    except Exception as exc:
        raise ReplayInputError(f"{path}: not a readable audio file ({exc})") from exc
    # WAVEX is the same file with the extensible header (what many tools write for stereo).
    if info.format not in ("WAV", "WAVEX"):
        raise ReplayInputError(f"{path}: expected a WAV file, got {info.format}")
    if info.subtype not in SUPPORTED_SUBTYPES:
        raise ReplayInputError(
            f"{path}: unsupported WAV codec {info.subtype} (use PCM16, mu-law or A-law)"
        )
    if info.channels > 2:
        raise ReplayInputError(f"{path}: {info.channels} channels; expected mono or stereo")
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    short = _missing_data_bytes(path)
    if short:
        # Replayed as far as it goes (what a recorder cut off by a crash leaves), but said.
        log.warning(
            "%s: truncated: %d bytes of its audio data are missing; replaying the %.1f s there",
            path,
            short,
            len(data) / rate,
        )
    names = parse_channels(channels_spec, info.channels)
    if len(names) < info.channels:
        log.warning(
            "%s: --channels names %d of its %d channels; the rest is not replayed",
            path,
            len(names),
            info.channels,
        )
    rate = int(rate)
    chans = {name: np.ascontiguousarray(data[:, i]) for i, name in enumerate(names)}
    if rate * FRAME_MS % 1000:
        # 11025 or 22050 Hz: no whole 20 ms frames to feed, as every ingest does. Taken to
        # 16 kHz first (the pipeline resamples to its own rate anyway).
        chans = {name: resample(x, rate, FRAME_RATE_FALLBACK) for name, x in chans.items()}
        rate = FRAME_RATE_FALLBACK
    return CallAudio(sample_rate=rate, channels=chans, subtype=info.subtype)


def _missing_data_bytes(path: Path) -> int:
    """How many bytes of audio data the WAV header declares beyond the end of the file (0
    when none, or when the writer did not know the length: 0 or 0xFFFFFFFF, as a recorder
    writing to a pipe leaves it). libsndfile reads a truncated file without a word."""
    size = path.stat().st_size
    with path.open("rb") as f:
        order = {b"RIFF": "little", b"RIFX": "big"}.get(f.read(4))
        if order is None:
            return 0
        f.seek(12)
        while True:
            header = f.read(8)
            if len(header) < 8:
                return 0
            chunk, length = header[:4], int.from_bytes(header[4:], order)  # type: ignore[arg-type]
            if chunk == b"data":
                if length in (0, 0xFFFFFFFF):
                    return 0
                return max(0, f.tell() + length - size)
            f.seek(length + (length & 1), 1)  # chunks are padded to an even length


async def replay(
    audio: CallAudio,
    *,
    manager: CallManager,
    call_id: str,
    realtime: bool,
    sink: list[Event] | None = None,
    out_path: Path | None = None,
) -> list[Event]:
    """Run one call through the pipeline; returns the events (and writes JSONL if asked)."""
    bus = manager.bus
    sub = bus.subscribe(call_topic(call_id), replay=False)
    collected: list[Event] = sink if sink is not None else []
    out = out_path.open("w", encoding="utf-8") if out_path else None

    async def collect() -> None:
        async for ev in sub:
            collected.append(ev)
            if out is not None:
                try:
                    out.write(dumps(ev) + "\n")
                except OSError as exc:
                    raise EventsFileError(exc.strerror or str(exc)) from exc

    collector = asyncio.create_task(collect())
    speakers = tuple(audio.channels)
    session = await manager.open(
        call_id=call_id, source="replay", speakers=speakers, inline=not realtime
    )
    step = samples_per_frame(audio.sample_rate)
    n = max(len(x) for x in audio.channels.values())
    t_wall0 = time.monotonic()
    try:
        for start in range(0, n, step):
            if collector.done():  # it failed to write: no use replaying the rest
                break
            t0 = start / audio.sample_rate
            if realtime:
                # A live source can send a frame only once all of it has been spoken.
                delay = t_wall0 + (start + step) / audio.sample_rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            for speaker, samples in audio.channels.items():
                frame = samples[start : start + step]
                if frame.size == 0:
                    continue
                chunk = AudioChunk(call_id, speaker, frame, audio.sample_rate, t0)
                if realtime:
                    session.push(chunk)
                else:
                    await session.process_inline(chunk)
        await session.end("end_of_file")
    finally:
        if session.state.value != "ended":
            await session.end("error")
        try:
            await collector
        finally:
            bus.unsubscribe(sub)
            if out is not None:
                _close_events(out)
    return collected


def _close_events(out: IO[str]) -> None:
    try:  # the last buffered lines are written here (a full disk says so only now)
        out.close()
    except OSError as exc:
        raise EventsFileError(exc.strerror or str(exc)) from exc


def run_replay_cli(
    wav: Path,
    events_path: Path,
    *,
    realtime: bool,
    channels: str | None,
    settings: Settings,
    call_id: str | None = None,
) -> int:
    try:
        audio = read_call(wav, channels)
    except ReplayInputError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    if events_path.exists() and events_path.resolve() == wav.resolve():
        # Opening it for the events would wipe the recording before a word is replayed.
        print(f"error: --events {events_path} is the input WAV itself", file=sys.stderr)
        return 2
    try:  # a folder that does not exist: say so now, not after the models load
        events_path.open("w", encoding="utf-8").close()
    except OSError as exc:
        print(f"error: --events {events_path}: {exc.strerror}", file=sys.stderr, flush=True)
        return 2
    # --fast always decodes finals with the final model, so it has no use for the budget's
    # start-up timing of that model (about 1.7 s per replay on a slow VM).
    runtime = Runtime.load(
        settings if realtime else settings.model_copy(update={"asr_final_budget_s": 0.0})
    )
    try:
        bus = InProcessBus(history=settings.event_replay)
        manager = CallManager(runtime=runtime, settings=settings, bus=bus)
        events = asyncio.run(
            replay(
                audio,
                manager=manager,
                call_id=call_id or wav.stem,
                realtime=realtime,
                out_path=events_path,
            )
        )
    except EventsFileError as exc:
        print(f"error: --events {events_path}: {exc} (the file is incomplete)", file=sys.stderr)
        return 1
    finally:
        runtime.close()
    counts: dict[str, int] = {}
    for ev in events:
        counts[ev["type"]] = counts.get(ev["type"], 0) + 1
    print(json.dumps({"events": str(events_path), "counts": counts}), flush=True)
    return 0
