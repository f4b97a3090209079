"""Codecs at the edge of the pipeline: G.711 mu-law/A-law and little-endian PCM16.

G.711 tables come from the `g711` package (a C implementation of the ITU tables) rather
than `audioop`, which was removed in Python 3.13.
"""

from __future__ import annotations

import g711
import numpy as np

from audio.types import Encoding, Samples


class CodecError(ValueError):
    """The payload cannot be decoded with the declared encoding."""


def bytes_per_sample(encoding: Encoding) -> int:
    return 2 if encoding == "pcm16" else 1


def pcm16_to_float(payload: bytes) -> Samples:
    if len(payload) % 2:
        raise CodecError(f"PCM16 payload has odd length {len(payload)}")
    ints = np.frombuffer(payload, dtype="<i2")
    return (ints.astype(np.float32) / 32768.0).astype(np.float32)


def float_to_pcm16(samples: Samples) -> bytes:
    clipped = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 32767 / 32768)
    return (np.round(clipped * 32768.0)).astype("<i2").tobytes()


def decode_mulaw(payload: bytes) -> Samples:
    return np.asarray(g711.decode_ulaw(bytes(payload)), dtype=np.float32)


def encode_mulaw(samples: Samples) -> bytes:
    return bytes(g711.encode_ulaw(np.asarray(samples, dtype=np.float32)))


def decode_alaw(payload: bytes) -> Samples:
    return np.asarray(g711.decode_alaw(bytes(payload)), dtype=np.float32)


def encode_alaw(samples: Samples) -> bytes:
    return bytes(g711.encode_alaw(np.asarray(samples, dtype=np.float32)))


def decode(encoding: Encoding, payload: bytes) -> Samples:
    """Decode one payload of interleaved samples to float32."""
    match encoding:
        case "pcm16":
            return pcm16_to_float(payload)
        case "mulaw":
            return decode_mulaw(payload)
        case "alaw":
            return decode_alaw(payload)
    raise CodecError(f"unsupported encoding {encoding!r}")


def encode(encoding: Encoding, samples: Samples) -> bytes:
    match encoding:
        case "pcm16":
            return float_to_pcm16(samples)
        case "mulaw":
            return encode_mulaw(samples)
        case "alaw":
            return encode_alaw(samples)
    raise CodecError(f"unsupported encoding {encoding!r}")


def deinterleave(samples: Samples, channels: int) -> list[Samples]:
    """Split interleaved samples into one array per channel."""
    if channels < 1:
        raise CodecError(f"channels must be >= 1, got {channels}")
    if samples.size % channels:
        raise CodecError(f"{samples.size} samples do not divide into {channels} channels")
    if channels == 1:
        return [samples]
    frames = samples.reshape(-1, channels)
    return [np.ascontiguousarray(frames[:, c]) for c in range(channels)]
