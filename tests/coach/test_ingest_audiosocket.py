"""Asterisk AudioSocket ingest: the frame codec, then a real TCP server with a real pipeline.

The golden frames in `golden/audiosocket/` were written byte by byte from the protocol text
(docs.asterisk.org "Channel-Drivers/AudioSocket"): `frames.json` says what each one is. The
UUID is the example of that page's dialplan; the error code 0x01 is Asterisk's "hangup of
calling party".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from coach.bus import InProcessBus, call_topic
from coach.calls import CallManager
from coach.ingest.audiosocket import (
    AUDIO_RATES,
    Audio,
    AudioSocketService,
    Dtmf,
    ErrorFrame,
    Frame,
    FrameDecoder,
    Hangup,
    ProtocolError,
    ProtocolReason,
    Route,
    ServerError,
    UuidFrame,
    close_audiosocket_server,
    encode,
    encode_raw,
    parse_mapping,
    read_mapping_file,
    route_for,
    start_audiosocket_server,
)
from coach.runtime import Runtime
from coach.settings import Settings

GOLDEN = Path(__file__).parent / "golden" / "audiosocket"
GOLDEN_INDEX: dict[str, dict[str, Any]] = json.loads((GOLDEN / "frames.json").read_text())
FRAME_BYTES = 320  # 20 ms of 8 kHz SLIN: what AudioSocket() sends per frame
EXAMPLE = uuid.UUID("40325ec2-5efd-4bd3-805f-53576e581d13")


# -- the codec ----------------------------------------------------------------------------------


def tone(rate: int, n: int, hz: float, amplitude: int) -> bytes:
    ints = [round(amplitude * math.sin(2 * math.pi * hz * i / rate)) for i in range(n)]
    return np.array(ints, dtype="<i2").tobytes()


def golden_frame(spec: dict[str, Any]) -> Frame:
    match spec["type"]:
        case "hangup":
            return Hangup()
        case "uuid":
            return UuidFrame(uuid.UUID(spec["uuid"]))
        case "dtmf":
            return Dtmf(spec["digit"])
        case "audio":
            pcm = tone(spec["sample_rate"], spec["samples"], spec["tone_hz"], spec["amplitude"])
            return Audio(pcm, spec["sample_rate"])
        case "error":
            return ErrorFrame(b"" if spec["code"] is None else bytes([spec["code"]]))
    raise AssertionError(spec)


@pytest.mark.parametrize("name", sorted(GOLDEN_INDEX))
def test_golden_frames_round_trip_byte_for_byte(name: str) -> None:
    wire = (GOLDEN / f"{name}.bin").read_bytes()
    expected = golden_frame(GOLDEN_INDEX[name])
    assert FrameDecoder().feed(wire) == [expected]
    assert encode(expected) == wire


def test_golden_header_layout() -> None:
    """Type byte, then the payload length as a big-endian unsigned 16-bit integer."""
    assert (GOLDEN / "hangup.bin").read_bytes() == b"\x00\x00\x00"
    uuid_frame = (GOLDEN / "uuid.bin").read_bytes()
    assert uuid_frame[:3] == b"\x01\x00\x10" and uuid_frame[3:] == EXAMPLE.bytes
    audio = (GOLDEN / "audio_slin8k_20ms.bin").read_bytes()
    assert audio[:3] == b"\x10\x01\x40" and len(audio) == 3 + FRAME_BYTES
    first_samples = np.frombuffer(audio[3:9], dtype="<i2")  # little-endian PCM
    assert list(first_samples) == [0, 2775, 5222]


def test_golden_session_in_one_read() -> None:
    order = ["uuid", "audio_slin8k_20ms", "dtmf", "audio_slin8k_20ms", "hangup"]
    wire = b"".join((GOLDEN / f"{n}.bin").read_bytes() for n in order)
    assert FrameDecoder().feed(wire) == [golden_frame(GOLDEN_INDEX[n]) for n in order]


even_bytes = st.binary(max_size=700).map(lambda b: b[: len(b) // 2 * 2])
frames_strategy: st.SearchStrategy[Frame] = st.one_of(
    st.just(Hangup()),
    st.uuids().map(UuidFrame),
    st.sampled_from("0123456789*#ABCD").map(Dtmf),
    st.builds(Audio, pcm=even_bytes, sample_rate=st.sampled_from(sorted(AUDIO_RATES.values()))),
    st.binary(max_size=6).map(ErrorFrame),
)


def split(blob: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(max(c, 0), len(blob)) for c in cuts} | {0, len(blob)})
    return [blob[a:b] for a, b in zip(points, points[1:], strict=False)]


@given(st.lists(frames_strategy, max_size=25), st.lists(st.integers(0, 20_000), max_size=30))
def test_frames_split_anywhere_decode_to_the_same_frames(
    frames: list[Frame], cuts: list[int]
) -> None:
    wire = b"".join(encode(f) for f in frames)
    decoder = FrameDecoder()
    got: list[Frame] = []
    for piece in split(wire, cuts):
        got += decoder.feed(piece)
    decoder.eof()
    assert got == frames and decoder.buffered == 0


@given(st.lists(frames_strategy, min_size=1, max_size=10))
def test_one_byte_at_a_time(frames: list[Frame]) -> None:
    wire = b"".join(encode(f) for f in frames)
    decoder = FrameDecoder()
    got = [f for i in range(len(wire)) for f in decoder.feed(wire[i : i + 1])]
    assert got == frames


@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=8))
def test_garbage_raises_only_protocol_errors(blob: bytes, cuts: list[int]) -> None:
    decoder = FrameDecoder(max_payload=200)
    try:
        for piece in split(blob, cuts):
            decoder.feed(piece)
        decoder.eof()
    except ProtocolError as exc:
        assert exc.reason in get_args(ProtocolReason) and str(exc)


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (b"\x02\x00\x00", "unknown_type"),  # the Go library's "silence": not in Asterisk's enum
        (b"\x20\x00\x02ab", "unknown_type"),
        (encode_raw(0x01, bytes(15)), "bad_length"),
        (encode_raw(0x01, bytes(17)), "bad_length"),
        (encode_raw(0x03, b"12"), "bad_length"),
        (encode_raw(0x00, b"x"), "bad_length"),
        (encode_raw(0x10, bytes(321)), "odd_audio"),
        (encode_raw(0x03, b"\x80"), "bad_payload"),
        (b"\x10\xfd\xe9", "oversized"),  # 65001 bytes announced: refused before they arrive
    ],
)
def test_bad_frames_are_named(wire: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as info:
        FrameDecoder(max_payload=64_000).feed(wire)
    assert info.value.reason == reason


def test_frames_before_a_fault_are_kept_and_the_decoder_stops() -> None:
    good: list[Frame] = [UuidFrame(EXAMPLE), Audio(bytes(FRAME_BYTES))]
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError) as info:
        decoder.feed(b"".join(encode(f) for f in good) + b"\x20\x00\x00")
    assert info.value.frames == good
    with pytest.raises(ProtocolError, match="already failed"):
        decoder.feed(encode(Hangup()))


@pytest.mark.parametrize("tail", [b"\x10", b"\x10\x01", b"\x10\x01\x40" + bytes(100)])
def test_eof_inside_a_frame_is_truncated(tail: bytes) -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode(Hangup()) + tail) == [Hangup()]
    with pytest.raises(ProtocolError) as info:
        decoder.eof()
    assert info.value.reason == "truncated"


def test_encoder_refuses_what_the_wire_cannot_carry() -> None:
    with pytest.raises(ValueError, match="not whole 16-bit"):
        encode(Audio(b"\x00"))
    with pytest.raises(ValueError, match="11025"):
        encode(Audio(b"", 11025))
    with pytest.raises(ValueError, match="exceeds"):
        encode(Audio(bytes(70_000)))
    with pytest.raises(ValueError, match="DTMF"):
        encode(Dtmf("12"))
    assert encode(Audio(bytes(640), 16000))[:3] == b"\x12\x02\x80"


# -- routing ------------------------------------------------------------------------------------

BASE = "9b2c4a1e-0d3f-0e5a-8b6c-7d8e9f0a1b2"  # version digit 0: a paired tap, party digit next


def test_unmapped_paired_taps_pair_by_their_last_digit() -> None:
    customer = route_for(uuid.UUID(BASE + "0"), {})
    agent = route_for(uuid.UUID(BASE + "1"), {})
    assert customer == Route(BASE + "0", "customer", ("customer", "agent"))
    assert agent == Route(BASE + "0", "agent", ("customer", "agent"))
    assert route_for(uuid.UUID(BASE + "7"), {}) == Route(BASE + "7", "customer", ("customer",))


@given(st.uuids(version=4))
def test_a_random_uuid_is_always_a_one_party_call(stream: uuid.UUID) -> None:
    """What `AudioSocket(${UUID()},...)` sends: never mistaken for half of a pair."""
    assert route_for(stream, {}) == Route(str(stream), "customer", ("customer",))


def test_mapping_names_calls_and_parties() -> None:
    mapping = parse_mapping(
        {
            str(EXAMPLE).upper(): "sales:7:agent",  # keys are any UUID spelling
            BASE + "5": "sales:7:customer",
            BASE + "6": "solo:agent",
        }
    )
    assert route_for(EXAMPLE, mapping) == Route("sales:7", "agent", ("customer", "agent"))
    assert route_for(uuid.UUID(BASE + "6"), mapping) == Route("solo", "agent", ("agent",))


def test_mapping_file(tmp_path: Path) -> None:
    path = tmp_path / "audiosocket-map.json"
    path.write_text(json.dumps({BASE + "5": "c-9:customer", BASE + "6": "c-9:agent"}))
    mapping = read_mapping_file(path)
    assert route_for(uuid.UUID(BASE + "6"), mapping) == Route("c-9", "agent", ("customer", "agent"))
    path.write_text("[]")
    with pytest.raises(ValueError, match="JSON object"):
        read_mapping_file(path)


@pytest.mark.parametrize(
    ("entries", "needle"),
    [
        ({"not-a-uuid": "c:customer"}, "not a UUID"),
        ({BASE + "0": "c-1"}, "call_id:party"),
        ({BASE + "0": "c-1:boss"}, "customer or agent"),
        ({BASE + "0": "../x:agent"}, "bad call id"),
        ({BASE + "0": "c:agent", BASE + "1": "c:agent"}, "mapped twice"),
    ],
)
def test_bad_mappings_are_rejected(entries: dict[str, str], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        parse_mapping(entries)


def test_allow_list(runtime: Runtime, settings: Settings) -> None:
    manager = CallManager(runtime=runtime, settings=settings, bus=InProcessBus())
    service = AudioSocketService(
        manager=manager, settings=settings, allow=["10.1.0.0/16", "2001:db8::/32"]
    )
    assert service.allowed(("10.1.2.3", 5000))
    assert service.allowed(("::ffff:10.1.2.3", 5000, 0, 0))  # IPv4 on a dual-stack socket
    assert service.allowed(("2001:db8::7%eth0", 5000, 0, 1))
    assert not service.allowed(("10.2.0.1", 5000))
    assert not service.allowed(("127.0.0.1", 5000))
    assert not service.allowed(None)
    default = AudioSocketService(manager=manager, settings=settings)
    assert default.allowed(("127.0.0.1", 1)) and default.allowed(("::1", 1, 0, 0))
    with pytest.raises(ValueError, match="allow-list"):
        AudioSocketService(manager=manager, settings=settings, allow=["10.0.0.0/33"])


# -- over TCP -----------------------------------------------------------------------------------


def errors(reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "coach_ingest_errors_total", {"protocol": "audiosocket", "reason": reason}
    )
    return value or 0.0


@pytest.fixture
def manager(runtime: Runtime, settings: Settings) -> CallManager:
    return CallManager(runtime=runtime, settings=settings, bus=InProcessBus())


@contextlib.asynccontextmanager
async def serving(manager: CallManager, **options: Any) -> AsyncIterator[int]:
    server = await start_audiosocket_server(
        manager=manager, settings=manager.settings, host="127.0.0.1", port=0, **options
    )
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        await close_audiosocket_server(server)


class Client:
    """What Asterisk's AudioSocket() does: connect, send the UUID, stream 20 ms frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, stream: uuid.UUID | None = None) -> Client:
        client = cls(*await asyncio.open_connection("127.0.0.1", port))
        if stream is not None:
            await client.send(UuidFrame(stream))
        return client

    async def send(self, *frames: Frame | bytes) -> None:
        for f in frames:
            self.writer.write(f if isinstance(f, bytes) else encode(f))
        await self.writer.drain()

    async def stream(self, pcm: bytes, *, pace_s: float = 0.0) -> None:
        for i in range(0, len(pcm), FRAME_BYTES):
            self.writer.write(encode(Audio(pcm[i : i + FRAME_BYTES])))
            if i % (50 * FRAME_BYTES) == 0:
                await self.writer.drain()
                await asyncio.sleep(pace_s)
        await self.writer.drain()

    async def received(self, timeout_s: float = 30.0) -> list[Frame]:
        """Everything the server sends until it closes."""
        decoder, out = FrameDecoder(), []
        async with asyncio.timeout(timeout_s):
            while data := await self.reader.read(65536):
                out += decoder.feed(data)
        self.writer.close()
        return out

    async def hang_up(self) -> list[Frame]:
        await self.send(Hangup())
        return await self.received()


def collect(manager: CallManager, call_id: str) -> asyncio.Task[list[dict[str, Any]]]:
    sub = manager.bus.subscribe(call_topic(call_id))

    async def run() -> list[dict[str, Any]]:
        return [ev async for ev in sub]

    return asyncio.create_task(run())


async def events_of(task: asyncio.Task[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return await asyncio.wait_for(task, timeout=120)


def channel_pcm(wav: Path, channel: int, start_s: float = 0.0, end_s: float = 1e9) -> bytes:
    data, rate = sf.read(wav, dtype="int16", always_2d=True)
    assert rate == 8000
    piece = data[int(start_s * rate) : int(end_s * rate), channel]
    return np.ascontiguousarray(piece).astype("<i2").tobytes()


def transcripts(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "transcript"]


def single(n: int) -> uuid.UUID:
    """A one-party (customer) call by convention: a UUID not ending in 0 or 1."""
    return uuid.UUID(f"{n:08x}-0000-4000-8000-00000000000f")


async def test_allow_list_refuses_other_sources(manager: CallManager) -> None:
    before = errors("forbidden")
    async with serving(manager, allow=["10.0.0.0/8"]) as port:
        client = await Client.connect(port, single(1))
        got = await client.received()
    assert got == [ErrorFrame(bytes([ServerError.FORBIDDEN]))]
    assert errors("forbidden") == before + 1
    assert manager.get(str(single(1))) is None


@pytest.mark.parametrize(
    ("first", "reason"),
    [
        (encode(Audio(bytes(FRAME_BYTES))), "no_uuid"),
        (encode(Dtmf("1")), "no_uuid"),
        (encode_raw(0x01, bytes(15)), "bad_length"),
        (b"\x77\x00\x00", "unknown_type"),
        # Every client sending it would join one call (an outside ingest audit).
        (encode(UuidFrame(uuid.UUID(int=0))), "nil_uuid"),
    ],
)
async def test_the_first_frame_must_be_the_uuid(
    manager: CallManager, first: bytes, reason: str
) -> None:
    before = errors(reason)
    async with serving(manager) as port:
        client = await Client.connect(port)
        await client.send(first)
        got = await client.received()
    assert got == [ErrorFrame(bytes([ServerError.PROTOCOL]))]
    assert errors(reason) == before + 1
    assert manager.live() == []


async def test_silent_connection_times_out(manager: CallManager) -> None:
    before = errors("uuid_timeout")
    async with serving(manager, uuid_timeout_s=0.2) as port:
        client = await Client.connect(port)
        got = await client.received()
    assert got == [ErrorFrame(bytes([ServerError.TIMEOUT]))]
    assert errors("uuid_timeout") == before + 1


async def test_a_uuid_sent_a_byte_at_a_time_still_times_out(manager: CallManager) -> None:
    """The wait was per read: a UUID frame trickled a byte every 4 s held the connection for
    good, before any call could time it out (an outside ingest audit)."""
    before = errors("uuid_timeout")
    frame = encode(UuidFrame(single(11)))
    async with serving(manager, uuid_timeout_s=0.4) as port:
        client = await Client.connect(port)

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                for byte in frame[:15]:  # 2.25 s of it, never the whole frame
                    await client.send(bytes([byte]))
                    await asyncio.sleep(0.15)

        sender = asyncio.create_task(trickle())
        got = await asyncio.wait_for(client.received(), 1.8)  # refused while it trickles
        sender.cancel()
    assert got == [ErrorFrame(bytes([ServerError.TIMEOUT]))]
    assert errors("uuid_timeout") == before + 1


async def test_a_stalled_connection_times_out(manager: CallManager) -> None:
    before = errors("idle_timeout")
    events = collect(manager, str(single(9)))
    async with serving(manager, idle_timeout_s=0.3) as port:
        client = await Client.connect(port, single(9))
        await client.stream(bytes(FRAME_BYTES * 5))
        assert await client.received() == [ErrorFrame(bytes([ServerError.TIMEOUT]))]
        evs = await events_of(events)
    assert evs[-1]["reason"] == "error:idle_timeout"
    assert errors("idle_timeout") == before + 1


async def test_a_tap_s_idle_timeout_follows_the_setting(
    runtime: Runtime, settings: Settings
) -> None:
    """COACH_IDLE_TIMEOUT_S is the tap's timeout too (it was a fixed 60 s for AudioSocket),
    and 0 turns it off: a stalled tap is then waited for, not cut off."""
    # The call manager's watchdog (which would end the call with a hangup) is off here, so
    # what answers is the tap's own timeout, read from the setting.
    manager = CallManager(
        runtime=runtime,
        settings=settings.model_copy(update={"idle_timeout_s": 0.0}),
        bus=InProcessBus(),
    )
    quick = settings.model_copy(update={"idle_timeout_s": 0.3})
    server = await start_audiosocket_server(
        manager=manager, settings=quick, host="127.0.0.1", port=0
    )
    try:
        client = await Client.connect(int(server.sockets[0].getsockname()[1]), single(11))
        await client.stream(bytes(FRAME_BYTES * 5))
        assert await client.received(5.0) == [ErrorFrame(bytes([ServerError.TIMEOUT]))]
    finally:
        await close_audiosocket_server(server)
    await manager.shutdown()

    off = settings.model_copy(update={"idle_timeout_s": 0.0})
    manager = CallManager(runtime=runtime, settings=off, bus=InProcessBus())
    async with serving(manager) as port:
        client = await Client.connect(port, single(12))
        await client.stream(bytes(FRAME_BYTES * 5))
        with pytest.raises(TimeoutError):  # nothing sent back: the tap is waited for
            await asyncio.wait_for(client.reader.read(1), 1.0)
        await client.stream(bytes(FRAME_BYTES * 5))  # and it goes on
        session = manager.get(str(single(12)))
        assert session is not None and session.state.value == "live"
    await manager.shutdown()


async def test_a_silent_peer_is_hung_up_when_the_server_ends_the_call(
    runtime: Runtime, settings: Settings
) -> None:
    """The call manager's idle timeout (shorter than AudioSocket's own) ends a call whose two
    taps went quiet: both are sent a hangup and closed, instead of holding a socket open for a
    call that is gone until their own idle timeout answers with an error."""
    quick = settings.model_copy(update={"idle_timeout_s": 0.5})
    manager = CallManager(runtime=runtime, settings=quick, bus=InProcessBus())
    call_id = "00000000-0000-0000-0000-0000000000a0"
    events = collect(manager, call_id)
    async with serving(manager, idle_timeout_s=60.0) as port:
        customer = await Client.connect(port, uuid.UUID(call_id))
        agent = await Client.connect(port, uuid.UUID(call_id[:-1] + "1"))
        await customer.stream(bytes(FRAME_BYTES * 5))
        await agent.stream(bytes(FRAME_BYTES * 5))
        got = await asyncio.gather(customer.received(10.0), agent.received(10.0))
        evs = await events_of(events)
    assert got == [[Hangup()], [Hangup()]]
    assert evs[-1]["type"] == "call_end" and evs[-1]["reason"] == "idle_timeout"


# Each bad input after some speech: the connection is closed (with an error frame where the
# peer can still read one) and what was said before is transcribed and the call ended.
BAD_INPUT = [
    ("unknown_type", b"\x42\x00\x01x", True),
    ("odd_audio", encode_raw(0x10, bytes(319)), True),
    ("oversized", b"\x10\xff\xff", True),
    ("duplicate_uuid", encode(UuidFrame(EXAMPLE)), True),
    ("rate_change", encode(Audio(bytes(640), 16000)), True),
    ("truncated", b"\x10\x01\x40" + bytes(100), False),
]


@pytest.mark.parametrize(("reason", "bad", "told"), BAD_INPUT)
async def test_bad_input_closes_the_connection_and_finalizes_the_call(
    manager: CallManager, billing_call: Any, reason: str, bad: bytes, told: bool
) -> None:
    speech = channel_pcm(billing_call[0], 1, 0.0, 6.0)  # "Thank you for calling ..."
    stream = single(2)
    before = errors(reason)
    events = collect(manager, str(stream))
    async with serving(manager) as port:
        client = await Client.connect(port, stream)
        await client.stream(speech)
        await client.send(bad)
        if not told:
            client.writer.write_eof()  # the peer vanishes mid-frame
        got = await client.received()
        evs = await events_of(events)
    assert got == ([ErrorFrame(bytes([ServerError.PROTOCOL]))] if told else [])
    assert errors(reason) == before + 1
    assert evs[0]["type"] == "call_start" and evs[0]["source"] == "audiosocket"
    assert evs[-1]["type"] == "call_end" and evs[-1]["reason"] == f"error:{reason}"
    said = " ".join(e["text"] for e in transcripts(evs)).lower()
    assert "thank you for calling" in said


async def test_peer_error_frames(manager: CallManager) -> None:
    async with serving(manager) as port:
        hung_up = collect(manager, str(single(3)))
        client = await Client.connect(port, single(3))
        await client.send(Audio(bytes(FRAME_BYTES)), ErrorFrame(b"\x01"))
        assert await client.received() == []
        assert (await events_of(hung_up))[-1]["reason"] == "hangup"

        failed = collect(manager, str(single(4)))
        before = errors("peer_error")
        client = await Client.connect(port, single(4))
        await client.send(Audio(bytes(FRAME_BYTES)), ErrorFrame(b"\x04"))
        assert await client.received() == []
        assert (await events_of(failed))[-1]["reason"] == "error:peer_error"
        assert errors("peer_error") == before + 1


async def test_a_broken_connection_leaves_other_calls_alone(
    manager: CallManager, billing_call: Any
) -> None:
    speech = channel_pcm(billing_call[0], 1, 0.0, 6.0)
    good, bad = single(5), single(6)
    good_events, bad_events = collect(manager, str(good)), collect(manager, str(bad))
    async with serving(manager) as port:
        a, b = await Client.connect(port, good), await Client.connect(port, bad)
        await a.stream(speech[: len(speech) // 2])
        await b.stream(speech[:3200])
        await b.send(b"\xee\x00\x00")
        assert await b.received() == [ErrorFrame(bytes([ServerError.PROTOCOL]))]
        await a.stream(speech[len(speech) // 2 :])
        assert await a.hang_up() == []
        good_evs, bad_evs = await events_of(good_events), await events_of(bad_events)
    assert bad_evs[-1]["reason"] == "error:unknown_type"
    assert good_evs[-1]["type"] == "call_end" and good_evs[-1]["reason"] == "hangup"
    assert good_evs[-1]["duration_s"] == pytest.approx(6.0, abs=0.05)
    assert "thank you for calling" in " ".join(e["text"] for e in transcripts(good_evs)).lower()


async def test_two_connections_make_one_call_that_ends_with_the_last(
    manager: CallManager, billing_call: Any
) -> None:
    call_id = BASE + "0"
    events = collect(manager, call_id)
    agent_speech = channel_pcm(billing_call[0], 1, 0.0, 6.0)
    async with serving(manager) as port:
        customer = await Client.connect(port, uuid.UUID(BASE + "0"))
        agent = await Client.connect(port, uuid.UUID(BASE + "1"))
        await customer.stream(bytes(8000))  # half a second of silence
        assert await customer.hang_up() == []
        await agent.stream(agent_speech)  # still accepted: the call is live
        await agent.send(Dtmf("5"))
        assert await agent.hang_up() == []
        evs = await events_of(events)
    starts = [e for e in evs if e["type"] == "call_start"]
    assert len(starts) == 1 and starts[0]["channels"] == ["customer", "agent"]
    assert [e["type"] for e in evs].count("call_end") == 1 and evs[-1]["reason"] == "hangup"
    finals = transcripts(evs)
    assert finals and {e["speaker"] for e in finals} == {"agent"}
    assert "thank you for calling" in " ".join(e["text"] for e in finals).lower()


async def test_a_later_party_is_placed_by_when_it_connected(manager: CallManager) -> None:
    call_id = BASE + "0"
    events = collect(manager, call_id)
    async with serving(manager) as port:
        customer = await Client.connect(port, uuid.UUID(BASE + "0"))
        await customer.stream(bytes(16000))  # 1 s
        await asyncio.sleep(0.5)
        agent = await Client.connect(port, uuid.UUID(BASE + "1"))
        await agent.stream(bytes(16000))  # 1 s, from ~0.5 s of call time
        await agent.hang_up()
        await customer.hang_up()
        await events_of(events)
    session = manager.get(call_id)
    assert session is not None
    agent_party = session.parties["agent"]
    # The agent's audio starts where the wall clock says it connected: silence before it.
    assert 0.5 <= agent_party.gap_filled_s <= 1.0
    assert agent_party.audio_s == pytest.approx(agent_party.gap_filled_s + 1.0, abs=0.03)
    assert session.parties["customer"].audio_s == pytest.approx(1.0, abs=0.03)


async def test_a_party_connected_twice_is_refused(manager: CallManager) -> None:
    before = errors("duplicate_party")
    events = collect(manager, BASE + "0")
    async with serving(manager) as port:
        first = await Client.connect(port, uuid.UUID(BASE + "0"))
        await first.stream(bytes(3200))
        second = await Client.connect(port, uuid.UUID(BASE + "0"))
        assert await second.received() == [ErrorFrame(bytes([ServerError.REJECTED]))]
        await first.stream(bytes(3200))
        assert await first.hang_up() == []
        evs = await events_of(events)
    assert errors("duplicate_party") == before + 1
    assert evs[-1]["reason"] == "hangup" and evs[-1]["duration_s"] == pytest.approx(0.4, abs=0.01)


async def test_closing_the_server_hangs_up_and_finalizes(manager: CallManager) -> None:
    events = collect(manager, str(single(7)))
    async with serving(manager) as port:
        client = await Client.connect(port, single(7))
        await client.stream(bytes(16000))
        await asyncio.sleep(0.2)  # let the server take the audio in
    assert await client.received() == [Hangup()]
    evs = await events_of(events)
    assert evs[-1]["type"] == "call_end" and evs[-1]["reason"] == "shutdown"


@pytest.mark.slow
async def test_two_party_call_matches_replay_fast_beside_a_broken_neighbour(
    manager: CallManager, billing_call: Any, billing_replay: list[dict[str, Any]]
) -> None:
    wav = billing_call[0]
    ids = {"customer": uuid.uuid4(), "agent": uuid.uuid4()}
    mapping = {str(u): ("billing-as", party) for party, u in ids.items()}
    events = collect(manager, "billing-as")
    async with serving(manager, mapping=mapping) as port:
        parties = {p: await Client.connect(port, u) for p, u in ids.items()}
        neighbour = await Client.connect(port, single(8))

        async def party(name: str, channel: int) -> None:
            await parties[name].stream(channel_pcm(wav, channel))
            assert await parties[name].hang_up() == []

        async def broken() -> None:
            await neighbour.stream(bytes(FRAME_BYTES * 100))
            await neighbour.send(encode_raw(0x10, bytes(7)))
            assert await neighbour.received() == [ErrorFrame(bytes([ServerError.PROTOCOL]))]

        await asyncio.gather(party("customer", 0), party("agent", 1), broken())
        live = await events_of(events)
    fast = billing_replay

    def finals(evs: list[dict[str, Any]]) -> list[tuple[str, float, float, str]]:
        return sorted((e["speaker"], e["t_start"], e["t_end"], e["text"]) for e in transcripts(evs))

    got, want = finals(live), finals(fast)
    assert len(got) == len(want) > 10
    for g, w in zip(got, want, strict=True):
        assert g[0] == w[0] and g[3] == w[3], (g, w)
        assert abs(g[1] - w[1]) <= 0.1 and abs(g[2] - w[2]) <= 0.1, (g, w)
    assert live[0]["channels"] == ["customer", "agent"]
    assert live[-1]["type"] == "call_end" and live[-1]["reason"] == "hangup"
    assert live[-1]["duration_s"] == pytest.approx(fast[-1]["duration_s"], abs=0.1)


async def test_dtmf_digits_are_never_logged(
    manager: CallManager, caplog: pytest.LogCaptureFixture
) -> None:
    """Digits keyed during a call may be a card number or a PIN: the AudioSocket handler
    logged each one at debug level (a protocol audit), unlike Twilio's, which never does."""
    events = collect(manager, str(single(77)))
    caplog.set_level("DEBUG", logger="coach.ingest.audiosocket")
    async with serving(manager) as port:
        client = await Client.connect(port, single(77))
        await client.stream(bytes(3200))
        await client.send(*(Dtmf(d) for d in "4#9*"))
        assert await client.hang_up() == []
        await events_of(events)
    logged = [r.getMessage() for r in caplog.records if r.name == "coach.ingest.audiosocket"]
    assert any("DTMF" in m for m in logged)
    assert not any(d in m for m in logged for d in "#*"), logged
