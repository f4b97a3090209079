"""Typed messages between ingest and the call pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

import numpy as np

from audio.types import Samples

Speaker: TypeAlias = Literal["customer", "agent"]
SPEAKERS: tuple[Speaker, ...] = ("customer", "agent")


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """Decoded mono audio of one party, placed on the call's clock."""

    call_id: str
    speaker: Speaker
    pcm: Samples
    sample_rate: int
    t0: float
    """Call-audio time of the first sample, in seconds."""

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / self.sample_rate

    @property
    def t1(self) -> float:
        return self.t0 + self.duration_s


def follows(prev: AudioChunk, nxt: AudioChunk) -> bool:
    """`nxt` starts where `prev` ends (within one sample), at the same rate."""
    return (
        nxt.sample_rate == prev.sample_rate
        and nxt.speaker == prev.speaker
        and abs(nxt.t0 - prev.t1) * prev.sample_rate < 1.0
    )


def join_chunks(chunks: list[AudioChunk]) -> AudioChunk:
    """One chunk holding the audio of back-to-back chunks (see `follows`), placed at the first."""
    if len(chunks) == 1:
        return chunks[0]
    first = chunks[0]
    pcm = np.concatenate([c.pcm for c in chunks]).astype(np.float32, copy=False)
    return AudioChunk(first.call_id, first.speaker, pcm, first.sample_rate, first.t0)


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """Control message: this party's audio is over (hang-up, disconnect, end of file)."""

    reason: str = "end"
