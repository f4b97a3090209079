"""The process-wide model runtime: loaded once, shared by every call.

Holds the VAD session, the ASR model behind its scheduler, and a small executor for DSP so
no model or DSP call runs on the event loop. Tests build one per test session and reuse it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from audio.resample import resample
from audio.types import PIPELINE_RATE, Samples
from audio.vad import SileroVad
from coach import metrics
from coach.cues.library import PlaybookLibrary
from coach.settings import Settings
from models.asr import AsrRequest, AsrResult, SpeechRecognizer, TwoPassAsr, WhisperAsr
from models.emotion import (
    ARTIFACT_DIR,
    EmotionModel,
    EmotionOptions,
    EmotionScore,
    RecentScores,
)
from models.runtime import BatchStats, DevicePlan, InferenceScheduler, plan_device

log = logging.getLogger(__name__)

PRIORITY_FINAL = {"customer": 0, "agent": 1}
PRIORITY_PARTIAL = {"customer": 2, "agent": 3}


def device_plan(settings: Settings) -> DevicePlan:
    """COACH_DEVICE checked against the machine (raises DeviceUnavailable if CUDA is not usable).

    On CUDA the ASR compute type is float16 unless COACH_ASR_COMPUTE_TYPE was set.
    """
    return plan_device(
        settings.device,
        compute_type=settings.asr_compute_type,
        compute_type_explicit="asr_compute_type" in settings.model_fields_set,
    )


GPU_ASR_MAX_BATCH = 32
"""Utterances per ASR batch on CUDA unless COACH_ASR_MAX_BATCH is set. On an H200 with Whisper
base in float16, batches of 32 finals decoded 110 utterances/s against 28 one at a time,
each batch in 0.34 s at p95 (BENCHMARKS, "GPU"); on 2 CPU cores a batch costs nearly its
sum."""


def asr_max_batch(settings: Settings, plan: DevicePlan) -> int:
    """COACH_ASR_MAX_BATCH when it was set; otherwise its default on CPU, larger on CUDA."""
    if plan.device == "cuda" and "asr_max_batch" not in settings.model_fields_set:
        return GPU_ASR_MAX_BATCH
    return settings.asr_max_batch


def _observe_batch(model: str, stats: BatchStats) -> None:
    metrics.QUEUE_DEPTH.labels(stage=model).set(stats.queue_depth)
    metrics.MODEL_BATCH_SIZE.labels(model=model).observe(stats.size)
    metrics.MODEL_QUEUE_WAIT.labels(model=model).observe(stats.wait_s)


def limit_blas_threads() -> None:
    """One BLAS thread per calling thread, for the whole process.

    numpy's matrix products here are small (Whisper's mel filterbank, prosody, pooling) and
    run from several threads at once next to CTranslate2's and ONNX Runtime's own pools.
    OpenBLAS's default (a thread per core) made the mel filterbank of one utterance take
    16 ms instead of 1.4 ms on 2 busy cores, on the ASR worker that every call waits for.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


CALIBRATION_CALL = Path("web") / "demo" / "demo-call.wav"
"""Real speech to time the final model on at start-up: the bundled demo call (next to the
source tree in a checkout, under ./web in the container)."""


def calibration_speech(path: Path | None = None) -> Samples | None:
    """The demo call's customer channel at the pipeline rate, from its first speech on; None
    when the file is not there (the budget is then learned from the first live finals)."""
    if path is None:
        beside = Path(__file__).resolve().parents[1] / CALIBRATION_CALL
        path = beside if beside.is_file() else Path.cwd() / CALIBRATION_CALL
    if not path.is_file():
        return None
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (OSError, RuntimeError) as exc:
        log.warning("calibration speech %s unreadable: %s", path, exc)
        return None
    speech = resample(np.ascontiguousarray(data[:, 0]), int(rate), PIPELINE_RATE)
    frame = PIPELINE_RATE // 50
    n = len(speech) // frame
    if n == 0:
        return None
    rms = np.sqrt(np.mean(speech[: n * frame].reshape(n, frame) ** 2, axis=1))
    loud = np.flatnonzero(rms > 0.02)
    return speech[int(loud[0]) * frame :] if loud.size else None


@dataclass
class Runtime:
    vad: SileroVad
    asr: SpeechRecognizer
    asr_scheduler: InferenceScheduler[AsrRequest, AsrResult]
    emotion: EmotionModel
    emotion_scheduler: InferenceScheduler[str, EmotionScore]
    dsp_executor: ThreadPoolExecutor
    load_s: float
    playbook: PlaybookLibrary | None = None
    """The coaching playbook with its embedded examples (hot-reloadable), shared by all calls."""

    @classmethod
    def load(cls, settings: Settings) -> Runtime:
        t0 = time.perf_counter()
        plan = device_plan(settings)  # fails fast, before any model is loaded
        limit_blas_threads()
        log.info(
            "inference on %s (ASR %s, ONNX %s)",
            plan.device,
            plan.asr_compute_type,
            ",".join(plan.onnx_providers),
        )
        vad = SileroVad(threads=1, providers=list(plan.onnx_providers))
        asr_options = dataclasses.replace(
            settings.asr_options(), device=plan.device, compute_type=plan.asr_compute_type
        )
        small = WhisperAsr(asr_options)
        asr: SpeechRecognizer = small
        final_model = settings.asr_final_model
        if final_model and final_model != settings.asr_model:
            final = WhisperAsr(
                dataclasses.replace(
                    asr_options,
                    model=final_model,
                    compute_type=settings.asr_final_compute_type or asr_options.compute_type,
                )
            )
            asr = TwoPassAsr(partial=small, final=final)
            if settings.asr_final_budget_s > 0 and settings.asr_final_fallback:
                speech = calibration_speech()
                if speech is not None:
                    t_cal = time.perf_counter()
                    asr.calibrate(speech)
                    log.info(
                        "final model %s: %.2f s expected for a 6 s turn (budget %.2f s; "
                        "calibrated in %.1fs)",
                        final_model,
                        asr.final_times.predict(6.0) or 0.0,
                        settings.asr_final_budget_s,
                        time.perf_counter() - t_cal,
                    )

        def run_batch(reqs: Sequence[AsrRequest]) -> list[AsrResult]:
            with metrics.MODEL_INFERENCE.labels(model="asr").time():
                return asr.decode_batch(reqs)

        def on_batch(stats: BatchStats) -> None:
            _observe_batch("asr", stats)

        scheduler: InferenceScheduler[AsrRequest, AsrResult] = InferenceScheduler(
            name="asr",
            run_batch=run_batch,
            workers=settings.asr_worker_count(),
            max_batch=asr_max_batch(settings, plan),
            on_batch=on_batch,
        )
        emotion = emotion_model(settings)

        # Only the emotion scheduler's one worker calls it, so it needs no lock.
        recent = RecentScores(emotion.score)

        def score_batch(texts: Sequence[str]) -> list[EmotionScore]:
            hits, misses = recent.hits, recent.misses
            with metrics.MODEL_INFERENCE.labels(model="emotion").time():
                out = recent(texts)
            metrics.TEXT_SCORES.labels(result="reused").inc(recent.hits - hits)
            metrics.TEXT_SCORES.labels(result="scored").inc(recent.misses - misses)
            return out

        def on_emotion_batch(stats: BatchStats) -> None:
            _observe_batch("emotion", stats)

        # One scheduler for every call's utterances: texts that arrive together share a batch.
        emotion_scheduler: InferenceScheduler[str, EmotionScore] = InferenceScheduler(
            name="emotion",
            run_batch=score_batch,
            workers=1,
            max_batch=settings.emotion_max_batch,
            on_batch=on_emotion_batch,
        )
        dsp = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dsp")
        # The playbook's example phrases share the emotion model's embedding space.
        playbook = PlaybookLibrary(settings.playbook_file, embed=emotion.embed_examples)
        load_s = time.perf_counter() - t0
        log.info("models loaded in %.2fs", load_s)
        return cls(vad, asr, scheduler, emotion, emotion_scheduler, dsp, load_s, playbook)

    def close(self) -> None:
        self.asr_scheduler.close()
        self.emotion_scheduler.close()
        self.dsp_executor.shutdown(wait=True, cancel_futures=True)


def emotion_model(settings: Settings) -> EmotionModel:
    """The emotion model and sentence encoders the settings name."""
    return EmotionModel(
        EmotionOptions(
            artifact_dir=settings.emotion_model_dir or ARTIFACT_DIR,
            device=settings.device,
            intra_op_threads=settings.emotion_threads,
            batch_size=settings.emotion_max_batch,
            match_model=settings.match_model,
        )
    )


def warm_playbook_vectors(settings: Settings) -> int:
    """Embed the playbook's example phrases into the vector cache, as a first start would.

    For container images: done at build time, no pod spends its first two minutes on it, and
    a read-only root filesystem (which cannot keep the cache) does not make every start a
    first start. Returns the number of phrases."""
    library = PlaybookLibrary(settings.playbook_file, embed=emotion_model(settings).embed_examples)
    pb = library.current.playbook
    examples = sum(len(c.positives) + len(c.negatives) for c in pb.cues.values())
    return examples + len(pb.background) + sum(len(m) for m in pb.agent_moves.values())
