"""Soak test: many calls back to back through one server; does its memory or fd count grow?

Why: a server that loses a few MB per call dies after a day of calls. This streams the
built-in scripted calls (`scripts/make_test_calls.py`) over Twilio Media Streams into a
server it starts (the same client as `scripts/bench_load.py`), `--concurrency` calls at a
time, one after another, for `--minutes`, and samples the server's RSS, open file
descriptors and threads from /proc every few seconds and after every finished call.

Reported: RSS and fds at the start (after `--warmup` calls, which fill allocator arenas and
caches), at the end, and the least-squares growth per finished call over the rest; the live
calls left at the end (`/api/calls`, should be none) and `coach_active_calls`. A steady leak
shows as a positive slope well above the noise (allocator arenas move RSS by a few MiB
either way); a flat line says calls release what they take.

    .venv/bin/python -m scripts.soak --minutes 12 --concurrency 2 --json bench-out/soak.json

`--speed 2` streams twice as fast as real time (more calls per minute; the pipeline must keep
up, so check `dropped frames`). `--url`/`--server-pid` use a running server instead.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts import bench_load as bl  # noqa: E402

log = logging.getLogger("soak")


def slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of ys over xs (None with fewer than 3 points)."""
    if len(xs) < 3 or len(set(xs)) < 2:
        return None
    return float(np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)[0])


def summarize(
    per_call: Sequence[dict[str, Any]], warmup: int, leak_mib_per_call: float
) -> dict[str, Any]:
    """Growth of RSS, fds and threads per finished call, after the warm-up calls."""
    steady = [p for p in per_call if p["calls_done"] > warmup]
    xs = [p["calls_done"] for p in steady]
    rss_slope = slope(xs, [p["rss_mib"] for p in steady])
    fd_slope = slope(xs, [p["fds"] for p in steady])
    thread_slope = slope(xs, [p["threads"] for p in steady])
    first, last = (steady[0], steady[-1]) if steady else (None, None)
    return {
        "calls_measured": len(steady),
        "rss_mib_after_warmup": first["rss_mib"] if first else None,
        "rss_mib_at_end": last["rss_mib"] if last else None,
        "rss_mib_max": max((p["rss_mib"] for p in steady), default=None),
        "rss_growth_mib_per_call": round(rss_slope, 3) if rss_slope is not None else None,
        "fds_after_warmup": first["fds"] if first else None,
        "fds_at_end": last["fds"] if last else None,
        "fd_growth_per_call": round(fd_slope, 3) if fd_slope is not None else None,
        "threads_at_end": last["threads"] if last else None,
        "thread_growth_per_call": round(thread_slope, 3) if thread_slope is not None else None,
        "leak_suspected": bool(
            (rss_slope is not None and rss_slope > leak_mib_per_call)
            or (fd_slope is not None and fd_slope > 0.1)
        ),
    }


async def soak(
    args: argparse.Namespace, target: bl.Target, calls: list[bl.CallAudio]
) -> dict[str, Any]:
    sampler = bl.Sampler(target.pid, period_s=args.sample_every)
    per_call: list[dict[str, Any]] = []
    errors: list[str] = []
    counter = itertools.count()
    before = bl.scrape(target.http)
    deadline = time.monotonic() + args.minutes * 60
    t_start = time.monotonic()
    done = 0

    async def worker(w: int) -> None:
        nonlocal done
        while time.monotonic() < deadline:
            i = next(counter)
            call = calls[i % len(calls)]
            run = bl.CallRun(call, f"soak-{int(t_start)}-{i}")
            await bl.stream_call(
                target.url, run, token=target.token, api_key=target.api_key, speed=args.speed
            )
            done += 1
            if run.error:
                errors.append(f"{run.call_id}: {run.error}")
            s = sampler.sample()
            if s is not None:
                per_call.append(
                    {
                        "calls_done": done,
                        "t_s": round(s[0] - t_start, 1),
                        "cpu_s": round(s[1], 1),
                        "rss_mib": round(s[2], 1),
                        "fds": s[3],
                        "threads": s[4],
                    }
                )
                print(
                    f"{s[0] - t_start:7.0f} s  calls {done:4d}  RSS {s[2]:7.1f} MiB  "
                    f"fds {s[3]:4d}  threads {s[4]:3d}",
                    flush=True,
                )

    sampler.start()
    await asyncio.gather(*(worker(w) for w in range(args.concurrency)))
    await sampler.stop()
    await asyncio.sleep(2.0)  # let the last call's ending settle
    end_sample = sampler.sample()
    after = bl.scrape(target.http)
    status, body = bl.http_get(f"{target.http}/api/calls")
    live_left = len(json.loads(body).get("calls", [])) if status == 200 else None
    active = sum(v for (name, _), v in after.items() if name == "coach_active_calls")
    return {
        "minutes": args.minutes,
        "concurrency": args.concurrency,
        "speed": args.speed,
        "calls_done": done,
        "audio_s": round(sum(c.duration_s for c in calls) * done / len(calls), 1),
        "errors": errors,
        "dropped_frames": int(bl.metric_delta(before, after, "coach_dropped_frames_total")),
        "live_calls_left": live_left,
        "coach_active_calls_at_end": active,
        "rss_mib_idle_at_end": round(end_sample[2], 1) if end_sample else None,
        "fds_idle_at_end": end_sample[3] if end_sample else None,
        "summary": summarize(per_call, args.warmup, args.leak_mib_per_call),
        "per_call": per_call,
        "samples": [
            {"t_s": round(t - t_start, 1), "rss_mib": round(r, 1), "fds": f, "threads": th}
            for t, _, r, f, th in sampler.samples
        ],
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--minutes", type=float, default=12.0)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--speed", type=float, default=1.0, help="x real time")
    p.add_argument("--warmup", type=int, default=4, help="calls left out of the growth fit")
    p.add_argument("--leak-mib-per-call", type=float, default=1.0)
    p.add_argument("--calls", default="all")
    p.add_argument("--sample-every", type=float, default=5.0, help="s between /proc samples")
    p.add_argument("--url", default=None)
    p.add_argument("--server-pid", type=int, default=None)
    p.add_argument("--token", default=None)
    p.add_argument("--api-key", default=None)
    p.add_argument("--json", type=Path, default=Path("bench-out/soak.json"))
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    from scripts.bench_asr import git_commit, machine_info
    from scripts.make_test_calls import BUILTIN_CALLS

    names = list(BUILTIN_CALLS) if args.calls == "all" else args.calls.split(",")
    with tempfile.TemporaryDirectory(prefix="soak_") as tmp:
        workdir = Path(tmp)
        calls = bl.render_calls(names, workdir)
        print(f"load average at start: {bl.load_average()}")
        server: bl.Server | None = None
        if args.url:
            url = args.url.rstrip("/")
            http = url.replace("ws://", "http://").replace("wss://", "https://")
            target = bl.Target("server", url, http, args.server_pid, args.token, args.api_key)
        else:
            server = bl.Server("soak", {}, port=bl.free_port(), workdir=workdir)
            server.start()
            target = bl.Target("soak", server.url, server.http, server.pid)
        try:
            result = asyncio.run(soak(args, target, calls))
        finally:
            if server is not None:
                server.stop()
    report = {
        "machine": machine_info(),
        "commit": git_commit(),
        "load_average_at_end": bl.load_average(),
        **result,
    }
    s = report["summary"]
    print()
    print(
        f"{report['calls_done']} calls ({report['audio_s'] / 60:.1f} min of audio) in "
        f"{args.minutes} min, {args.concurrency} at a time, {args.speed}x real time; "
        f"errors {len(report['errors'])}, dropped frames {report['dropped_frames']}"
    )
    print(
        f"RSS after {args.warmup} warm-up calls {s['rss_mib_after_warmup']} MiB, at the end "
        f"{s['rss_mib_at_end']} MiB (max {s['rss_mib_max']}); growth "
        f"{s['rss_growth_mib_per_call']} MiB/call"
    )
    print(
        f"fds {s['fds_after_warmup']} -> {s['fds_at_end']} ({s['fd_growth_per_call']}/call); "
        f"threads at end {s['threads_at_end']}; live calls left {report['live_calls_left']}; "
        f"leak suspected: {s['leak_suspected']}"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
