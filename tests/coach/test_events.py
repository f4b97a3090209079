"""Reading the wall-clock times events carry (`started_at`, `ended_at`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from coach.api.wall import _epoch
from coach.events import wall_time
from coach.store.writes import _event_time


@given(
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
    st.integers(min_value=-12 * 60, max_value=14 * 60),
)
def test_a_zoned_time_reads_as_the_same_instant(naive: datetime, offset_min: int) -> None:
    when = naive.replace(tzinfo=timezone(timedelta(minutes=offset_min)))
    assert wall_time(when.isoformat()) == when


def test_a_time_without_a_zone_is_utc_for_the_wall_and_the_store_alike() -> None:
    # Before, the wall refused such a time and the store took it as UTC: one call, two starts.
    value = "2026-12-05T09:30:00.250000"
    expected = datetime(2026, 12, 5, 9, 30, 0, 250000, tzinfo=UTC)
    assert wall_time(value) == expected
    assert _event_time({"started_at": value}, "started_at") == expected
    assert _epoch(value) == expected.timestamp()


@given(st.one_of(st.none(), st.integers(), st.text(max_size=40), st.lists(st.integers())))
def test_anything_else_is_no_time_and_never_raises(value: object) -> None:
    try:
        expected = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        expected = None
    got = wall_time(value)
    if expected is None:
        assert got is None
    else:
        assert got is not None and got.tzinfo is not None
