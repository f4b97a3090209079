"""Voice activity detection with Silero VAD v6 (the ONNX file faster-whisper ships), streamed.

The model consumes 512-sample windows at 16 kHz (32 ms) plus 64 samples of context from the
previous window and carries an LSTM state. One ONNX session is shared by every stream in the
process (ONNX Runtime sessions are safe to run from several threads); each `VadStream` owns
only its state, so thousands of streams cost kilobytes, not models.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from audio.framing import FrameAccumulator
from audio.types import PIPELINE_RATE, Samples

WINDOW_SAMPLES = 512
CONTEXT_SAMPLES = 64
WINDOW_S = WINDOW_SAMPLES / PIPELINE_RATE


def default_model_path() -> Path:
    import faster_whisper

    return Path(faster_whisper.__file__).parent / "assets" / "silero_vad_v6.onnx"


class SileroVad:
    """The shared ONNX session. Thin call on arrays: windows + state in, probabilities out."""

    def __init__(
        self,
        *,
        model_path: Path | None = None,
        threads: int = 1,
        providers: list[str] | None = None,
    ) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.enable_cpu_mem_arena = False
        opts.log_severity_level = 3
        self.session: Any = ort.InferenceSession(
            str(model_path or default_model_path()),
            sess_options=opts,
            providers=providers or ["CPUExecutionProvider"],
        )

    def run(self, windows: Samples, h: Samples, c: Samples) -> tuple[Samples, Samples, Samples]:
        """`windows` is (n, 576): context + window. Returns probabilities (n,) and new state."""
        probs, hn, cn = self.session.run(None, {"input": windows, "h": h, "c": c})
        return (
            np.asarray(probs, dtype=np.float32).reshape(-1),
            np.asarray(hn, dtype=np.float32),
            np.asarray(cn, dtype=np.float32),
        )


@dataclass(frozen=True, slots=True)
class VadFrame:
    t_start_s: float
    t_end_s: float
    prob: float


class VadStream:
    """Per-stream state: accepts any number of 16 kHz samples, yields one VadFrame per window."""

    def __init__(self, *, model: SileroVad, t0_s: float = 0.0) -> None:
        self._model = model
        self._acc = FrameAccumulator(block=WINDOW_SAMPLES)
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT_SAMPLES, dtype=np.float32)
        self._windows_done = 0
        self._t0_s = t0_s

    def push(self, samples: Samples, *, silence: bool = False) -> list[VadFrame]:
        """`silence`: these samples fill a gap in the sender's audio; frames say no speech."""
        blocks = self._acc.push(samples)
        if not blocks:
            return []
        rows = []
        context = self._context
        for block in blocks:
            rows.append(np.concatenate([context, block]))
            context = block[-CONTEXT_SAMPLES:]
        self._context = context
        if silence:
            # Audio the sender never sent (a gap the pipeline fills): no speech, no model run.
            probs = np.zeros(len(blocks), dtype=np.float32)
        else:
            probs, self._h, self._c = self._model.run(np.stack(rows), self._h, self._c)
        out = []
        for p in probs:
            t = self._t0_s + self._windows_done * WINDOW_S
            out.append(VadFrame(t_start_s=t, t_end_s=t + WINDOW_S, prob=float(p)))
            self._windows_done += 1
        return out
