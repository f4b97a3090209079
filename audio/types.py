"""Shared type aliases for the audio package."""

from __future__ import annotations

from typing import Literal, TypeAlias

import numpy as np
import numpy.typing as npt

Samples: TypeAlias = npt.NDArray[np.float32]
"""Mono float32 samples in [-1, 1]."""

Encoding: TypeAlias = Literal["pcm16", "mulaw", "alaw"]
ENCODINGS: tuple[Encoding, ...] = ("pcm16", "mulaw", "alaw")

PIPELINE_RATE = 16_000
"""Every pipeline stage after ingest works at 16 kHz, the rate Whisper and Silero expect."""
