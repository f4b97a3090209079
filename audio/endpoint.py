"""Endpointing: turns per-window speech probabilities into utterance start and end events.

Pure state machine (no model, no clock): it sees (time, probability) pairs and decides. The
hangover (silence needed to close an utterance) is the main latency knob: every millisecond
of it is added to the time before a final transcript. Long turns are cut at a short pause so
that no single decode grows large (a decode's cost grows with the utterance).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal

EndReason = Literal["silence", "pause_cut", "max_length", "flush"]


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    threshold: float = 0.5
    """Probability at or above which a window is speech."""
    neg_threshold: float = 0.35
    """Probability below which a window counts as silence (hysteresis)."""
    min_speech_ms: int = 120
    """Shorter bursts (clicks, breaths) never become utterances."""
    hangover_ms: int = 300
    """Silence that ends an utterance."""
    soft_max_s: float = 7.0
    """Past this length an utterance is also cut at a shorter pause."""
    soft_pause_ms: int = 130
    max_utterance_s: float = 15.0
    """Hard cut, even without any pause."""


@dataclass(frozen=True, slots=True)
class SpeechStart:
    t_start_s: float


@dataclass(frozen=True, slots=True)
class SpeechEnd:
    t_start_s: float
    t_end_s: float
    reason: EndReason


Boundary = SpeechStart | SpeechEnd


class _State(Enum):
    SILENCE = "silence"
    CANDIDATE = "candidate"
    SPEECH = "speech"


class Endpointer:
    def __init__(self, config: EndpointConfig | None = None) -> None:
        self.config = config or EndpointConfig()
        self._state = _State.SILENCE
        self._t_start = 0.0
        self._last_speech_end = 0.0

    @property
    def in_speech(self) -> bool:
        return self._state is _State.SPEECH

    @property
    def utterance_start_s(self) -> float | None:
        return self._t_start if self._state is _State.SPEECH else None

    @property
    def last_speech_end_s(self) -> float | None:
        """End of the last speech window of the open utterance (None outside speech)."""
        return self._last_speech_end if self._state is _State.SPEECH else None

    def push(self, t_start_s: float, t_end_s: float, prob: float) -> list[Boundary]:
        cfg = self.config
        match self._state:
            case _State.SILENCE:
                if prob >= cfg.threshold:
                    self._state = _State.CANDIDATE
                    self._t_start = t_start_s
                    self._last_speech_end = t_end_s
                    return self._maybe_confirm(t_end_s)
                return []
            case _State.CANDIDATE:
                if prob >= cfg.neg_threshold:
                    self._last_speech_end = t_end_s
                    return self._maybe_confirm(t_end_s)
                self._state = _State.SILENCE
                return []
            case _State.SPEECH:
                return self._in_speech(t_end_s, prob)
        raise AssertionError(f"unreachable state {self._state}")

    def flush(self) -> list[Boundary]:
        """End of input: close an open utterance at its last speech."""
        if self._state is _State.SPEECH:
            self._state = _State.SILENCE
            return [SpeechEnd(self._t_start, self._last_speech_end, "flush")]
        self._state = _State.SILENCE
        return []

    def _maybe_confirm(self, now_s: float) -> list[Boundary]:
        if (now_s - self._t_start) * 1000 >= self.config.min_speech_ms:
            self._state = _State.SPEECH
            return [SpeechStart(self._t_start)]
        return []

    def _in_speech(self, now_s: float, prob: float) -> list[Boundary]:
        cfg = self.config
        if prob >= cfg.neg_threshold:
            self._last_speech_end = now_s
        silence_ms = (now_s - self._last_speech_end) * 1000
        length_s = self._last_speech_end - self._t_start
        reason: EndReason | None = None
        if silence_ms >= cfg.hangover_ms:
            reason = "silence"
        elif length_s >= cfg.soft_max_s and silence_ms >= cfg.soft_pause_ms:
            reason = "pause_cut"
        elif now_s - self._t_start >= cfg.max_utterance_s:
            reason = "max_length"
        if reason is None:
            return []
        end = SpeechEnd(self._t_start, self._last_speech_end, reason)
        if reason == "max_length" and prob >= cfg.neg_threshold:
            # Still speaking: the next utterance starts right where this one was cut. (A cut
            # inside a short pause just ends the turn; the next speech starts a new one.)
            self._t_start = now_s
            self._last_speech_end = now_s
            return [end, SpeechStart(now_s)]
        self._state = _State.SILENCE
        return [end]
