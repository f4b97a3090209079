"""scripts/soak.py: growth per call is a least-squares slope after the warm-up calls."""

from __future__ import annotations

import pytest

from scripts import soak


def point(n: int, rss: float, fds: int = 20, threads: int = 18) -> dict[str, float]:
    return {"calls_done": n, "rss_mib": rss, "fds": fds, "threads": threads}


def test_flat_memory_is_no_leak() -> None:
    # Warm-up calls grow RSS (arenas, caches); afterwards it only wobbles.
    pts = [point(1, 500), point(2, 560), point(3, 600)] + [
        point(n, 600 + (3 if n % 2 else -3)) for n in range(4, 30)
    ]
    s = soak.summarize(pts, warmup=3, leak_mib_per_call=1.0)
    assert s["calls_measured"] == 26
    assert abs(s["rss_growth_mib_per_call"]) < 0.5
    assert s["fd_growth_per_call"] == 0 and not s["leak_suspected"]


def test_steady_growth_is_a_leak() -> None:
    pts = [point(n, 600 + 2.5 * n) for n in range(1, 20)]
    s = soak.summarize(pts, warmup=2, leak_mib_per_call=1.0)
    assert s["rss_growth_mib_per_call"] == pytest.approx(2.5)
    assert s["leak_suspected"]


def test_growing_fds_are_a_leak() -> None:
    pts = [point(n, 600, fds=20 + n) for n in range(1, 12)]
    s = soak.summarize(pts, warmup=1, leak_mib_per_call=1.0)
    assert s["fd_growth_per_call"] == pytest.approx(1.0) and s["leak_suspected"]


def test_too_few_points_give_no_slope() -> None:
    s = soak.summarize([point(1, 600), point(2, 610)], warmup=0, leak_mib_per_call=1.0)
    assert s["rss_growth_mib_per_call"] is None and not s["leak_suspected"]
