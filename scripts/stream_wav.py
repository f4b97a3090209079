"""Stream a WAV file to a running server over `/ingest/pcm` and print the call's events.

A reference client for the raw PCM protocol (see README, "Protocol endpoints"): it sends the
JSON header, then 20 ms binary frames paced at real time (or as fast as the server accepts
with --fast), and prints the call's events from `/ws/calls/{call_id}/events`, one JSON object
per line (partials and metrics only with --all).

    python scripts/stream_wav.py call.wav --token "$(python -m coach token --user me --role admin)"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import soundfile as sf
import websockets


def websocket_base(server: str) -> str:
    """The server's WebSocket address: `http://` and `https://` (what a browser shows) are
    taken as `ws://` and `wss://`; anything else but `ws(s)://` is an error."""
    base = server.rstrip("/")
    for web, ws in (("http://", "ws://"), ("https://", "wss://")):
        if base.lower().startswith(web):
            return ws + base[len(web) :]
    if not base.lower().startswith(("ws://", "wss://")):
        raise ValueError(f"--server {server!r}: give ws://host:port (or http://host:port)")
    return base


async def stream(args: argparse.Namespace) -> int:
    try:
        base = websocket_base(args.server)
        if not args.wav.is_file():
            raise ValueError(f"{args.wav}: no such file")
        data, rate = sf.read(str(args.wav), dtype="int16", always_2d=True)
    except (ValueError, OSError, sf.LibsndfileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    channels = data.shape[1]
    if channels > 2:
        print("error: mono or stereo WAV only", file=sys.stderr)
        return 2
    call_id = args.call_id or f"{args.wav.stem}-{uuid.uuid4().hex[:6]}"
    auth = (
        f"token={args.token}" if args.token else f"api_key={args.api_key}" if args.api_key else ""
    )
    header = {"call_id": call_id, "sample_rate": rate, "encoding": "pcm16", "channels": channels}
    if args.agent_id:
        header["agent_id"] = args.agent_id
    try:
        return await send_call(args, base, auth, header, data, rate)
    except (OSError, websockets.InvalidHandshake, websockets.ConnectionClosedError) as exc:
        # Refused, unreachable, or the server said no before the upgrade (401, 403, 404).
        print(f"error: {base}: {exc}", file=sys.stderr)
        return 1


async def send_call(
    args: argparse.Namespace,
    base: str,
    auth: str,
    header: dict[str, object],
    data: np.ndarray,
    rate: int,
) -> int:
    async with websockets.connect(f"{base}/ingest/pcm?{auth}") as ingest:
        await ingest.send(json.dumps(header))
        accepted = json.loads(await ingest.recv())
        print(json.dumps(accepted), file=sys.stderr)
        if accepted.get("type") != "accepted":
            return 1
        # The id the call runs under (`{id}~2` when the id was used before): its events, from
        # the start (nothing is sent before this socket is open).
        call_id = accepted["call_id"]
        events = await websockets.connect(f"{base}/ws/calls/{call_id}/events?{auth}")
        printer = asyncio.create_task(print_events(events, everything=args.all))
        try:
            step = rate // 50
            start = time.monotonic()
            for i in range(0, len(data), step):
                await ingest.send(np.ascontiguousarray(data[i : i + step]).tobytes())
                if not args.fast:
                    await asyncio.sleep(max(0.0, start + (i + step) / rate - time.monotonic()))
            await ingest.send(json.dumps({"type": "end"}))
            await ingest.wait_closed()
            await printer
        finally:
            await events.close()
    return 0


async def print_events(ws: websockets.ClientConnection, *, everything: bool) -> None:
    """One JSON object per line (pipe it to jq): every event but the frequent partials and
    metrics, which `--all` adds."""
    async for message in ws:
        ev = json.loads(message)
        if everything or ev["type"] not in ("partial", "metrics"):
            print(json.dumps(ev), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("wav", type=Path)
    p.add_argument("--server", default="ws://127.0.0.1:8000")
    p.add_argument("--token", help="a token from `python -m coach token --role admin`")
    p.add_argument("--api-key", help="COACH_INGEST_API_KEY (events then need --token too)")
    p.add_argument("--call-id")
    p.add_argument("--agent-id")
    p.add_argument("--fast", action="store_true", help="do not pace at real time")
    p.add_argument("--all", action="store_true", help="print partials and metrics too")
    return asyncio.run(stream(p.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
