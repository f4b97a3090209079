"""Typed messages between ingest and the call pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

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


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """Control message: this party's audio is over (hang-up, disconnect, end of file)."""

    reason: str = "end"
