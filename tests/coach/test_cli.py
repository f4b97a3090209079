"""`python -m coach`: configuration errors are named, not shown as tracebacks."""

from __future__ import annotations

import pytest

from coach.cli import main
from coach.settings import Settings


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("COACH_PORT", "abc", "COACH_PORT (port)"),
        ("COACH_LOG_LEVEL", "verbose", "COACH_LOG_LEVEL (log_level)"),
    ],
)
def test_a_bad_setting_is_named_with_its_variable(
    variable: str,
    value: str,
    named: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An audit's `COACH_LOG_LEVEL=verbose` ended `coach serve` in a traceback
    ("ValueError: Unknown level"), `COACH_PORT=abc` in a pydantic one."""
    monkeypatch.setenv(variable, value)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: setting {named}: ") and repr(value) in err
    assert "Traceback" not in err


def test_log_levels_are_read_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COACH_LOG_LEVEL", " Warning ")
    assert Settings().log_level == "warning"
