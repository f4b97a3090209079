"""Synthesize scripted two-party phone calls with exact ground truth.

Why this exists: the coaching pipeline (channel-based speaker attribution, streaming ASR,
dead-air and overtalk detection) needs telephone-like audio whose turn timings are known to the
millisecond. Real call recordings are private and unlabelled, so we render scripted calls with
espeak-ng, which is offline, deterministic and available in CI. Ground-truth times come from the
trimmed sample positions actually written, not from the script, so tests can compare against
what is really audible.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import re
import shutil
import subprocess
import tempfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

Speaker = Literal["customer", "agent"]
Encoding = Literal["pcm16", "mulaw"]
MonoParty = Literal["customer", "mix"]
FloatArray = npt.NDArray[np.float32]

DEFAULT_GAP_S = 0.6
CHANNEL_OF: dict[str, int] = {"customer": 0, "agent": 1}
_SUBTYPE: dict[str, str] = {"pcm16": "PCM_16", "mulaw": "ULAW"}
# 10 ms frames at -40 dBFS RMS: above espeak's faint onset/offset tails, below any real phoneme.
_TRIM_FRAME_S = 0.01
_TRIM_THRESHOLD = 0.01
# The cue ids of CUES.md; labels in call scripts are checked against them.
CUE_IDS: tuple[str, ...] = (
    "frustration",
    "confusion",
    "cost_anxiety",
    "urgency",
    "dejection",
    "escalation_request",
    "churn_risk",
    "repeat_contact",
    "crisis",
    "dead_air",
    "overtalk",
    "agent_pace_fast",
)


@dataclass(frozen=True, slots=True)
class Turn:
    """One utterance. ``overlap_s > 0`` starts it that long before the previous turn ends."""

    speaker: Speaker
    text: str
    gap_before_s: float = DEFAULT_GAP_S
    voice: str | None = None
    speed_wpm: int | None = None
    pitch: int | None = None
    amplitude: int | None = None
    overlap_s: float = 0.0
    # Ground-truth cue labels: required (the engine must emit them for this turn) and
    # optional (a cue there is neither a hit nor a false alarm).
    labels: tuple[str, ...] = ()
    optional_labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.speaker not in CHANNEL_OF:
            raise ValueError(f"speaker must be 'customer' or 'agent', got {self.speaker!r}")
        if not self.text.strip():
            raise ValueError("turn text must not be empty")
        if self.gap_before_s < 0 or self.overlap_s < 0:
            raise ValueError("gap_before_s and overlap_s must be >= 0")
        for cue in (*self.labels, *self.optional_labels):
            if cue not in CUE_IDS:
                raise ValueError(f"unknown cue id {cue!r}; known: {', '.join(CUE_IDS)}")
        both = set(self.labels) & set(self.optional_labels)
        if both or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"cue labelled twice on one turn: {sorted(both) or self.labels}")


@dataclass(frozen=True, slots=True)
class CallScript:
    """A whole call; per-party defaults apply to turns that don't override them."""

    call_id: str
    turns: tuple[Turn, ...]
    customer_voice: str = "en-us"
    agent_voice: str = "en-gb+f3"
    customer_speed_wpm: int = 160
    agent_speed_wpm: int = 170
    customer_pitch: int = 40
    agent_pitch: int = 55
    amplitude: int = 100

    def __post_init__(self) -> None:
        if not self.turns:
            raise ValueError("a call needs at least one turn")
        if self.turns[0].overlap_s > 0:
            raise ValueError("the first turn has nothing to overlap")
        for prev, turn in itertools.pairwise(self.turns):
            # One channel per party, so a party cannot talk over itself.
            if turn.overlap_s > 0 and turn.speaker == prev.speaker:
                raise ValueError(f"overlapping turn {turn.text!r} has the same speaker")

    def espeak_params(self, turn: Turn) -> tuple[str, int, int, int]:
        is_customer = turn.speaker == "customer"
        voice = turn.voice or (self.customer_voice if is_customer else self.agent_voice)
        default_speed = self.customer_speed_wpm if is_customer else self.agent_speed_wpm
        default_pitch = self.customer_pitch if is_customer else self.agent_pitch
        return (
            voice,
            turn.speed_wpm if turn.speed_wpm is not None else default_speed,
            turn.pitch if turn.pitch is not None else default_pitch,
            turn.amplitude if turn.amplitude is not None else self.amplitude,
        )


@functools.cache
def _espeak_variants() -> frozenset[str]:
    out = subprocess.run(
        ["espeak-ng", "--voices=variant"], capture_output=True, text=True, check=True
    ).stdout
    return frozenset(m.group(1) for m in re.finditer(r"!v/(.*?)(?:\s{2,}|$)", out, re.M))


def _synthesize(
    text: str, params: tuple[str, int, int, int], workdir: Path
) -> tuple[FloatArray, int]:
    voice, speed, pitch, amplitude = params
    # espeak-ng silently falls back to the base voice for an unknown "+variant" (rc 0).
    variant = voice.partition("+")[2]
    if variant and variant not in _espeak_variants():
        raise ValueError(f"unknown espeak-ng voice variant {variant!r} in {voice!r}")
    wav = workdir / "turn.wav"
    wav.unlink(missing_ok=True)
    # "--" matters: text starting with "-" would otherwise be parsed as options, and espeak-ng
    # then prints its help, exits 0 and writes nothing.
    cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-a", str(amplitude)]
    proc = subprocess.run([*cmd, "-w", str(wav), "--", text], capture_output=True, text=True)
    if proc.returncode != 0 or not wav.exists():
        raise RuntimeError(f"espeak-ng failed for voice {voice!r}: {proc.stderr.strip()}")
    audio, rate = sf.read(wav, dtype="float32", always_2d=True)
    return cast(FloatArray, audio[:, 0]), int(rate)


def trim_silence(audio: FloatArray, sample_rate: int) -> FloatArray:
    """Cut leading/trailing frames below the energy threshold so onsets are real speech."""
    frame = max(1, round(_TRIM_FRAME_S * sample_rate))
    n_frames = -(-len(audio) // frame)
    padded = np.zeros(n_frames * frame, dtype=np.float32)
    padded[: len(audio)] = audio
    rms = np.sqrt(np.mean(padded.reshape(n_frames, frame) ** 2, axis=1))
    active = np.flatnonzero(rms > _TRIM_THRESHOLD)
    if active.size == 0:
        raise ValueError("rendered turn contains no audible speech")
    return audio[active[0] * frame : min(len(audio), (active[-1] + 1) * frame)]


def render_turn(script: CallScript, turn: Turn, sample_rate: int, workdir: Path) -> FloatArray:
    audio, espeak_rate = _synthesize(turn.text, script.espeak_params(turn), workdir)
    if espeak_rate != sample_rate:
        audio = cast(FloatArray, soxr.resample(audio, espeak_rate, sample_rate, quality="HQ"))
    # Trim after resampling so boundaries are exact sample positions at the output rate.
    return trim_silence(audio, sample_rate)


def render_phone_line(
    script: CallScript, turn: Turn, workdir: Path, *, pad_s: float, out_rate: int
) -> FloatArray:
    """One turn as a phone line delivers it: espeak-ng at 8 kHz, a mu-law round trip,
    `pad_s` of line silence either side (like an endpointer's cut), resampled to `out_rate`."""
    from audio import codecs
    from audio.resample import resample

    line = codecs.decode_mulaw(codecs.encode_mulaw(render_turn(script, turn, 8000, workdir)))
    pad = np.zeros(round(pad_s * 8000), np.float32)
    return cast(FloatArray, resample(np.concatenate([pad, line, pad]), 8000, out_rate))


def render_call(
    script: CallScript,
    out_dir: Path,
    *,
    sample_rate: int = 8000,
    encoding: Encoding = "mulaw",
    channels: int = 2,
    name: str | None = None,
    lead_silence_s: float = 0.5,
    tail_silence_s: float = 1.0,
    noise_dbfs: float | None = None,
    mono_party: MonoParty = "mix",
    meta: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Render ``script`` to ``<name>.wav`` plus ``<name>.json`` ground truth in ``out_dir``.

    Stereo puts the customer on channel 0 and the agent on channel 1. Mono either mixes both
    parties or keeps only the customer (then agent turns are left out of the ground truth,
    because they are not audible). ``meta`` (e.g. a call file's header) is copied into the
    ground truth as is.
    """
    if encoding not in _SUBTYPE:
        raise ValueError(f"encoding must be one of {sorted(_SUBTYPE)}, got {encoding!r}")
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, got {channels}")
    if mono_party not in ("customer", "mix"):
        raise ValueError(f"mono_party must be 'customer' or 'mix', got {mono_party!r}")
    if sample_rate <= 0:
        raise ValueError("sample_rate must be positive")

    with tempfile.TemporaryDirectory(prefix="make_test_calls_") as tmp:
        clips = [render_turn(script, t, sample_rate, Path(tmp)) for t in script.turns]

    placed: list[tuple[Turn, int, FloatArray]] = []
    latest_end = round(lead_silence_s * sample_rate)
    for i, (turn, clip) in enumerate(zip(script.turns, clips, strict=True)):
        if i == 0:
            start = latest_end
        elif turn.overlap_s > 0:
            _, prev_start, prev_clip = placed[-1]
            prev_end = prev_start + len(prev_clip)
            start = max(prev_start, prev_end - round(turn.overlap_s * sample_rate))
        else:
            # Gap from when the line last went quiet, so a short interjection that ends inside
            # someone else's turn doesn't pull the next turn into unintended overtalk.
            start = latest_end + round(turn.gap_before_s * sample_rate)
        placed.append((turn, start, clip))
        latest_end = max(latest_end, start + len(clip))

    total = latest_end + round(tail_silence_s * sample_rate)
    stereo = np.zeros((total, 2), dtype=np.float32)
    for turn, start, clip in placed:
        stereo[start : start + len(clip), CHANNEL_OF[turn.speaker]] += clip

    if channels == 2:
        audio = stereo
    elif mono_party == "customer":
        audio = stereo[:, 0].copy()
        placed = [p for p in placed if p[0].speaker == "customer"]
    else:
        audio = stereo.sum(axis=1)
    if noise_dbfs is not None:
        # crc32, not hash(): str hashes are salted per process and would break determinism.
        rng = np.random.default_rng(zlib.crc32(script.call_id.encode()))
        audio += rng.normal(0.0, 10 ** (noise_dbfs / 20), audio.shape).astype(np.float32)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak > 0.99:
        # Overtalk in a mono mix can exceed full scale; scale rather than clip.
        audio *= np.float32(0.99 / peak)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = name or script.call_id
    wav_path, json_path = out_dir / f"{stem}.wav", out_dir / f"{stem}.json"
    sf.write(wav_path, audio, sample_rate, subtype=_SUBTYPE[encoding], format="WAV")
    truth: dict[str, Any] = {
        "call_id": script.call_id,
        "sample_rate": sample_rate,
        "encoding": encoding,
        "channels": channels,
        "duration_s": round(total / sample_rate, 3),
        "turns": [
            _turn_truth(script, turn, start, len(clip), sample_rate, channels)
            for turn, start, clip in placed
        ],
    }
    if meta:
        truth["meta"] = dict(meta)
    json_path.write_text(json.dumps(truth, indent=2) + "\n", encoding="utf-8")
    return wav_path, json_path


def _turn_truth(
    script: CallScript, turn: Turn, start: int, length: int, sample_rate: int, channels: int
) -> dict[str, Any]:
    voice, speed, pitch, amplitude = script.espeak_params(turn)
    return {
        "speaker": turn.speaker,
        "text": turn.text,
        "t_start": round(start / sample_rate, 3),
        "t_end": round((start + length) / sample_rate, 3),
        "channel": CHANNEL_OF[turn.speaker] if channels == 2 else 0,
        "gap_before_s": turn.gap_before_s,
        "overlap_s": turn.overlap_s,
        "voice": voice,
        "speed_wpm": speed,
        "pitch": pitch,
        "amplitude": amplitude,
        "cues": list(turn.labels),
        "optional_cues": list(turn.optional_labels),
    }


# speaker, optional [attributes], optional {labels}, then ": text".
_LINE = re.compile(r"^(customer|agent)(?:\s*\[([^\]]*)\])?(?:\s*\{([^}]*)\})?\s*:\s+(\S.*)$")
_ATTR = re.compile(r"^(gap|overlap|speed|pitch|amp|voice)=(\S+)$")
_VOICE = re.compile(r"^[A-Za-z0-9_-]+(?:\+[A-Za-z0-9_-]+)?$")
# Inclusive ranges espeak-ng accepts meaningfully (speed in words per minute).
_INT_RANGES: dict[str, tuple[int, int]] = {"speed": (80, 500), "pitch": (0, 99), "amp": (0, 200)}


def _parse_attrs(body: str, raw: str) -> dict[str, Any]:
    """``gap=1.5, speed=220 voice=en-us+m3`` -> Turn keyword arguments."""
    kwargs: dict[str, Any] = {}
    seen: set[str] = set()
    for item in re.split(r"[,\s]+", body.strip()):
        if not item:
            continue
        m = _ATTR.match(item)
        if m is None:
            raise ValueError(f"bad attribute {item!r} in script line: {raw!r}")
        key, value = m.groups()
        if key in seen:
            raise ValueError(f"attribute {key!r} given twice in script line: {raw!r}")
        seen.add(key)
        try:
            if key in ("gap", "overlap"):
                seconds = float(value)
                if not 0 <= seconds < 60:
                    raise ValueError
                kwargs["gap_before_s" if key == "gap" else "overlap_s"] = seconds
            elif key == "voice":
                if _VOICE.match(value) is None:
                    raise ValueError
                kwargs["voice"] = value
            else:
                lo, hi = _INT_RANGES[key]
                number = int(value)
                if not lo <= number <= hi:
                    raise ValueError
                kwargs[{"speed": "speed_wpm", "pitch": "pitch", "amp": "amplitude"}[key]] = number
        except ValueError:
            raise ValueError(f"bad value for {key!r}: {value!r} in script line: {raw!r}") from None
    if "gap_before_s" in kwargs and "overlap_s" in kwargs:
        raise ValueError(f"a turn has either gap= or overlap=, not both: {raw!r}")
    return kwargs


def _parse_labels(body: str, raw: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``frustration, churn_risk?`` -> (required, optional)."""
    required: list[str] = []
    optional: list[str] = []
    for item in re.split(r"[,\s]+", body.strip()):
        if not item:
            continue
        cue, is_optional = (item[:-1], True) if item.endswith("?") else (item, False)
        if cue not in CUE_IDS:
            raise ValueError(
                f"unknown cue id {cue!r} in script line: {raw!r} (known: {', '.join(CUE_IDS)})"
            )
        if cue in required or cue in optional:
            raise ValueError(f"cue {cue!r} labelled twice in script line: {raw!r}")
        (optional if is_optional else required).append(cue)
    return tuple(required), tuple(optional)


def parse_turn_line(raw: str) -> Turn:
    """One turn line: ``customer [speed=220 pitch=75, amp=170] {frustration, churn_risk?}: text``.

    Attributes (comma or space separated): ``gap``/``overlap`` seconds, ``speed`` wpm,
    ``pitch`` 0-99, ``amp`` 0-200, ``voice`` (espeak-ng voice, e.g. ``en-us+m3``). Labels are
    cue ids of CUES.md; a trailing ``?`` makes one optional.
    """
    m = _LINE.match(raw)
    if m is None:
        raise ValueError(f"bad script line: {raw!r}")
    speaker, attrs, labels, line_text = m.groups()
    kwargs = _parse_attrs(attrs or "", raw)
    required, optional = _parse_labels(labels or "", raw)
    return Turn(
        cast(Speaker, speaker),
        line_text.strip(),
        labels=required,
        optional_labels=optional,
        **kwargs,
    )


def parse_turns(text: str) -> tuple[Turn, ...]:
    """Parse lines like ``agent [gap=9.0]: text``; indented lines continue the previous turn.

    Plain dialogue text keeps the scripts readable and diffable. Blank lines and lines starting
    with ``#`` are skipped. See ``parse_turn_line`` for the attributes and labels.
    """
    turns: list[Turn] = []
    for raw in text.strip().splitlines():
        if not raw.strip() or raw.startswith("#"):
            continue
        if raw[0].isspace():
            if not turns:
                raise ValueError(f"continuation line before any turn: {raw!r}")
            turns[-1] = replace(turns[-1], text=f"{turns[-1].text} {raw.strip()}")
            continue
        turns.append(parse_turn_line(raw))
    return tuple(turns)


SPLITS = ("tune", "heldout", "dev", "heldout2")
# Header keys of a call file (``# key: value``) and the CallScript field each one sets.
_HEADER_FIELDS: dict[str, str | None] = {
    "call_id": None,
    "split": None,
    "domain": None,
    "notes": None,
    "customer_voice": "customer_voice",
    "agent_voice": "agent_voice",
    "customer_speed": "customer_speed_wpm",
    "agent_speed": "agent_speed_wpm",
    "customer_pitch": "customer_pitch",
    "agent_pitch": "agent_pitch",
    "amplitude": "amplitude",
}
_HEADER = re.compile(r"^#\s*([a-z_]+)\s*:\s*(.*?)\s*$")


def parse_call(text: str, *, default_call_id: str) -> tuple[CallScript, dict[str, str]]:
    """A call file's text: ``# key: value`` header lines (see ``_HEADER_FIELDS``), then turns.

    The header is the block of ``#`` lines before the first turn; there an unknown key is an
    error (a typo would silently change the call). Other ``#`` lines are comments. Returns the
    script and the header as strings.
    """
    meta: dict[str, str] = {}
    for raw in text.splitlines():
        if raw.strip() and not raw.startswith("#"):
            break
        m = _HEADER.match(raw)
        if m is None:
            continue
        key, value = m.groups()
        if key not in _HEADER_FIELDS:
            raise ValueError(f"unknown header key {key!r} in line {raw!r}")
        if key in meta:
            raise ValueError(f"header {key!r} given twice")
        meta[key] = value
    if "split" in meta and meta["split"] not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {meta['split']!r}")
    fields: dict[str, Any] = {}
    for key, value in meta.items():
        field = _HEADER_FIELDS[key]
        if field is None:
            continue
        if field.endswith("_voice"):
            if _VOICE.match(value) is None:
                raise ValueError(f"bad voice {value!r} for header {key!r}")
            fields[field] = value
        else:
            try:
                fields[field] = int(value)
            except ValueError:
                raise ValueError(f"header {key!r} must be an integer, got {value!r}") from None
    call_id = meta.get("call_id") or default_call_id
    meta["call_id"] = call_id
    return CallScript(call_id, parse_turns(text), **fields), meta


def load_call_file(path: Path | str) -> tuple[CallScript, dict[str, str]]:
    """Read a ``.call`` file (see ``parse_call``); the call id defaults to the file's stem."""
    path = Path(path)
    try:
        return parse_call(path.read_text(encoding="utf-8"), default_call_id=path.stem)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


_BILLING_DISPUTE = """
agent: Thank you for calling customer support, my name is Sarah. How can I help you today?
customer: Hi. I just looked at my bill, and I was charged twice for the same order last month.
agent: I'm sorry to hear that. Can I have your full name please?
customer: Sure, it's John Miller.
agent: Thank you, John. Let me pull up your account, this will take a moment.
agent [gap=9.0]: Thank you for waiting. I can see two charges of forty nine dollars on the same day.
customer: Right, that is exactly what I'm talking about. This is really frustrating,
  it has happened before.
agent: I completely understand your frustration. The second charge was a mistake on our side,
  and I will refund it right away.
customer: Okay. How long will the refund take?
agent: You should see it back on your card within three to five business days.
customer: Alright, thank you for sorting that out.
agent: You're welcome. Is there anything else I can help you with today?
customer: No, that's all. Have a good day.
"""
_INTERNET_OUTAGE = """
agent: Good morning, thanks for calling technical support. What can I do for you?
customer: Hi, my internet has been down since last night. The light on the router keeps
  blinking orange, and nothing works.
agent: I'm sorry about that. Have you tried restarting the router?
customer: Yes, I have restarted it three times already. I unplugged it, waited a full minute,
  and plugged it back in. I work from home, so I really need this fixed today,
  because I have meetings all afternoon and
agent [overlap=1.0]: I understand, and I want to get you back online as quickly as possible.
agent [gap=1.5]: I'm running a line test now. I can see there is an outage in your area
  that started late last night.
customer: An outage? Nobody told me anything about that.
agent: I apologize for that. Our technicians are working on it, and service should be back
  by two this afternoon.
customer: Can I get some kind of credit for the lost time?
agent: Yes, I have added a credit for one day of service to your account.
  You will see it on your next bill.
customer: Okay, that helps. Thank you.
agent: You're welcome. I will also send you a text message as soon as the outage is fixed.
"""
_INSURANCE_CLAIM = """
agent: Thank you for calling, this is the claims department. How may I help you?
customer: Hello. Someone backed into my car in a parking lot yesterday,
  and I want to file a claim.
agent: I'm sorry that happened. Is everyone okay?
customer: Yes, nobody was hurt. The back bumper is badly dented, and one of the lights is broken.
agent: I'm glad you are okay. Did you get the other driver's information?
customer: Yes, I have their name, phone number, and insurance company.
  I also took pictures of both cars.
agent: That's very helpful. I have started the claim for you.
  You can upload the pictures through our mobile app.
customer: How long does it usually take to get the car repaired?
agent: An adjuster will call you within two business days.
  After that, most repairs take about a week.
customer: Will I get a rental car while mine is in the shop?
agent: Your policy includes a rental car for up to ten days, so you are covered.
customer: Great, that's a relief. Thank you so much for your help.
"""
_TRAVEL_REBOOKING = """
agent: Thank you for calling the travel help line. How can I help you today?
customer: Hi, my flight this evening was cancelled, and I need to get home by tomorrow morning.
agent: I'm sorry about the cancellation. Let me look at the other flights for you.
agent [gap=2.5]: I found a seat on a flight that leaves at six tomorrow morning.
  There is also one tonight at ten, but it has a connection and
customer [overlap=0.8]: Tonight please, the one tonight works much better for me.
agent: Of course. I have moved you to the flight tonight at ten.
  Your connection is one hour long.
customer: Will my checked bag be moved to the new flight too?
agent: Yes, your bag will be transferred automatically. You don't need to do anything.
customer: And do I have to pay anything for the change?
agent: No, there is no fee, because the airline cancelled your flight.
  I will email you the new boarding passes now.
customer: Perfect. Thanks for being so quick.
agent: My pleasure. Have a safe trip home.
"""

# Voices vary per call so downstream code isn't tuned to one synthetic timbre.
BUILTIN_CALLS: dict[str, CallScript] = {
    "billing_dispute": CallScript("billing_dispute", parse_turns(_BILLING_DISPUTE)),
    "internet_outage": CallScript(
        "internet_outage",
        parse_turns(_INTERNET_OUTAGE),
        customer_voice="en-us+m3",
        agent_voice="en-us+f2",
        agent_pitch=60,
    ),
    "insurance_claim": CallScript(
        "insurance_claim",
        parse_turns(_INSURANCE_CLAIM),
        customer_voice="en-us+f4",
        customer_pitch=60,
        agent_voice="en-gb",
        agent_pitch=45,
    ),
    "travel_rebooking": CallScript("travel_rebooking", parse_turns(_TRAVEL_REBOOKING)),
}
# Played by the UI's "play demo call" button: short, and shows dead air plus an apology/refund.
DEMO_CALL = "billing_dispute"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render scripted test calls with espeak-ng.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--calls", default="all", help="comma-separated names, or 'all'")
    parser.add_argument(
        "--file",
        type=Path,
        action="append",
        default=[],
        help="render this .call file instead of built-in calls (repeatable)",
    )
    parser.add_argument("--rate", type=int, default=8000)
    parser.add_argument("--encoding", choices=sorted(_SUBTYPE), default="mulaw")
    parser.add_argument("--channels", type=int, choices=(1, 2), default=2)
    parser.add_argument("--mono-party", choices=("mix", "customer"), default="mix")
    parser.add_argument("--noise-dbfs", type=float, default=None)
    args = parser.parse_args(argv)
    if shutil.which("espeak-ng") is None:
        # `make run` installs no Debian packages; say so before any work, not as a traceback.
        parser.error(
            "espeak-ng is not installed (Debian: apt-get install espeak-ng; `make test` "
            "installs it); to stream a call without it, use the bundled web/demo/demo-call.wav"
        )

    jobs: list[tuple[CallScript, dict[str, str] | None]]
    if args.file:
        jobs = [load_call_file(p) for p in args.file]
    else:
        calls = str(args.calls)
        names = list(BUILTIN_CALLS) if calls == "all" else [n for n in calls.split(",") if n]
        unknown = [n for n in names if n not in BUILTIN_CALLS]
        if unknown or not names:
            parser.error(f"unknown calls {unknown}; choose from {', '.join(BUILTIN_CALLS)} or all")
        jobs = [(BUILTIN_CALLS[n], None) for n in names]
    for script, meta in jobs:
        wav, truth = render_call(
            script,
            args.out_dir,
            sample_rate=args.rate,
            encoding=args.encoding,
            channels=args.channels,
            mono_party=args.mono_party,
            noise_dbfs=args.noise_dbfs,
            meta=meta,
        )
        print(f"{wav}\t{truth}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
