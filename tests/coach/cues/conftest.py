"""A cue engine on the real emotion/embedding model, fed hand-written transcript events."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from coach.cues.engine import CueEngine, LoadedPlaybook
from coach.cues.library import PlaybookLibrary
from coach.signals.state import CustomerStateTracker
from models.emotion import EmotionModel, EmotionScore


@pytest.fixture(scope="session")
def emotion_model() -> EmotionModel:
    return EmotionModel()


@pytest.fixture(scope="session")
def library(emotion_model: EmotionModel) -> PlaybookLibrary:
    return PlaybookLibrary(None, embed=emotion_model.embed_examples)


class FixedHolder:
    def __init__(self, loaded: LoadedPlaybook) -> None:
        self.current = loaded


class Conversation:
    """Feeds turns to a CueEngine the way a CallSession does, with realistic timings."""

    def __init__(self, engine: CueEngine, model: EmotionModel) -> None:
        self.engine = engine
        self.model = model
        self.t = 0.0
        self.utterance_id = 0
        self.state = CustomerStateTracker()

    async def say(
        self,
        speaker: str,
        text: str,
        *,
        arousal: float = 0.5,
        voice_why: Sequence[str] = (),
        gap_s: float = 0.6,
        wps: float = 2.8,
        unsure: Mapping[str, float] | None = None,
    ) -> list[dict[str, Any]]:
        """`unsure`: words the ASR gave a probability under the usual 0.9, as word -> p."""
        score: EmotionScore = self.model.score([text])[0]
        duration = max(0.6, len(text.split()) / wps)
        t_start = self.t + gap_s
        t_end = t_start + duration
        self.t = t_end
        self.utterance_id += 1
        event: dict[str, Any] = {
            "type": "transcript",
            "speaker": speaker,
            "text": text,
            "t_start": t_start,
            "t_end": t_end,
            "utterance_id": self.utterance_id,
            "words": [
                {"w": w, "t0": t_start, "t1": t_end, "p": (unsure or {}).get(w.strip(",.?!"), 0.9)}
                for w in text.split()
            ],
            "sentiment": score.to_sentiment(),
            "prosody": {
                "f0_hz": 180.0,
                "arousal": arousal,
                "why": list(voice_why),
            },
        }
        if speaker == "customer":
            event["state"] = self.state.update(
                t_end=t_end,
                duration_s=duration,
                sentiment={**score.to_sentiment(), "confidence": score.confidence},
                prosody=event["prosody"],
            ).as_dict()
        return await self.engine.on_transcript(event)

    async def cues(self, *args: Any, **kwargs: Any) -> list[str]:
        return [e["cue"] for e in await self.say(*args, **kwargs) if e["type"] == "cue"]


@pytest.fixture
def conversation(library: PlaybookLibrary, emotion_model: EmotionModel) -> Conversation:
    async def analyze(texts: Sequence[str]) -> list[EmotionScore]:
        return emotion_model.score(texts)

    return Conversation(CueEngine(holder=library, analyze=analyze), emotion_model)
