"""`python -m coach`: configuration errors are named, not shown as tracebacks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("bad.json", '{"log_level": "debug"', "not valid json: Expecting ','"),
        ("bad.yaml", "log_level: [unclosed\n", "not valid yaml: while parsing a flow sequence"),
        ("bad.toml", "log_level = \n", "not valid toml: Invalid value"),
        ("coach.ini", "log_level=debug\n", "unsupported format '.ini' (use .yaml, .json or .toml)"),
        ("list.yaml", "- log_level\n", "expected a mapping at the top level"),
        ("typo.yaml", "metrics_intervl_s: 2\n", "unknown setting(s) metrics_intervl_s"),
        ("latin1.yaml", b"log_level: d\xe9bug\n", "not UTF-8 text"),
        ("folder.yaml", None, "Is a directory"),
    ],
)
def test_a_bad_config_file_is_one_line_not_a_traceback(
    name: str,
    content: str | bytes | None,
    says: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An outside audit's `--config` files that were not settings ended every command in a
    traceback (JSONDecodeError, YAML's ScannerError, IsADirectoryError...), and a misspelt
    setting was dropped in silence."""
    path = tmp_path / name
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    assert main(["token", "--user", "x", "--role", "agent", "--config", str(path)]) == 2
    out = capsys.readouterr()
    assert out.err.startswith(f"error: config file {path}: {says}")
    assert out.err.count("\n") == 1 and not out.out


def test_a_config_file_sets_what_it_names(tmp_path: Path) -> None:
    for name, text in [
        ("c.yaml", "COACH_METRICS_INTERVAL_S: 2.5\n"),
        ("c.json", '{"metrics_interval_s": 2.5}'),
        ("c.toml", "metrics_interval_s = 2.5\n"),
    ]:
        (tmp_path / name).write_text(text)
        assert Settings.load(tmp_path / name).metrics_interval_s == 2.5


def refused_at_start(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Any:
    """Run `coach serve` or `coach replay`, which must exit 2 before starting anything (a
    server or a replay would be the bug); what it printed."""
    monkeypatch.setattr("coach.api.server.serve", lambda settings: pytest.fail("served"))
    monkeypatch.setattr("coach.replay.run_replay_cli", lambda *a, **k: pytest.fail("replayed"))
    argv = [command] if command == "serve" else ["replay", "x.wav", "--events", "x.jsonl"]
    assert main(argv) == 2
    return capsys.readouterr()


@pytest.mark.parametrize("command", ["serve", "replay"])
def test_cuda_without_a_gpu_refuses_to_start(
    command: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """README (Models): without usable CUDA "the server refuses to start with a message saying
    what is missing". An audit found `COACH_DEVICE=cuda coach serve` on a CPU-only machine
    serving on, live but never ready, with a traceback in the log; a replay ended in one."""
    from models import runtime

    monkeypatch.setattr(runtime, "cuda_device_count", lambda: 0)
    monkeypatch.setattr(runtime, "onnx_available_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setenv("COACH_DEVICE", "cuda")
    monkeypatch.setenv("COACH_DATA_DIR", str(tmp_path))
    out = refused_at_start(command, monkeypatch, capsys)
    assert out.err.startswith("error: COACH_DEVICE=cuda but CUDA is not usable here: ")
    assert "COACH_DEVICE=cpu" in out.err and "Traceback" not in out.err
    assert out.err.count("\n") == 1 and not out.out


@pytest.mark.parametrize("variable", ["COACH_ASR_MODEL", "COACH_ASR_FINAL_MODEL"])
@pytest.mark.parametrize("command", ["serve", "replay"])
def test_an_asr_model_that_names_no_model_refuses_to_start(
    command: str,
    variable: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An audit's `COACH_ASR_MODEL=nosuch coach serve`: live, never ready, a traceback in the
    log. A name or folder that holds no model is refused before anything starts."""
    monkeypatch.setenv(variable, str(tmp_path / "nosuch"))
    monkeypatch.setenv("COACH_DATA_DIR", str(tmp_path))
    out = refused_at_start(command, monkeypatch, capsys)
    assert out.err.startswith("error: ASR model ") and "nosuch" in out.err
    assert "never downloaded" in out.err and out.err.count("\n") == 1 and not out.out


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("COACH_AUDIOSOCKET_ALLOW", "10.0.0.0/8"),
        ("COACH_AUDIOSOCKET_MAP", "abc:call-1:customer"),
        ("COACH_USERS", "ann:agent"),
    ],
)
def test_a_list_or_mapping_setting_that_is_not_json_is_named(
    variable: str,
    value: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An audit's `COACH_AUDIOSOCKET_ALLOW=10.0.0.0/8` (a CIDR, not a JSON list) ended every
    command, `coach token` included, in a pydantic-settings traceback that named neither the
    variable nor the JSON it wants."""
    monkeypatch.setenv(variable, value)
    assert main(["token", "--user", "x", "--role", "agent"]) == 2
    out = capsys.readouterr()
    name = variable.removeprefix("COACH_").lower()
    assert out.err.startswith(f"error: setting {variable} ({name}): must be a JSON")
    assert "Traceback" not in out.err and out.err.count("\n") == 1 and not out.out


def test_a_refused_secret_is_named_not_shown(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The error line goes to a pod's log: the setting is named, its value is not."""
    monkeypatch.setenv("COACH_INGEST_API_KEY", "CHANGE-ME-but-also-a-real-looking-key")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: setting COACH_INGEST_API_KEY (ingest_api_key): ")
    assert "real-looking" not in err and "(value hidden)" in err


@pytest.mark.parametrize("ttl", ["-5", "0", "soon"])
def test_a_token_lifetime_that_is_no_lifetime_is_refused(
    ttl: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An outside operator audit: `--ttl -5` printed an expired token with exit status 0."""
    with pytest.raises(SystemExit) as exited:
        main(["token", "--user", "ann", "--role", "agent", "--ttl", ttl])
    assert exited.value.code == 2
    out = capsys.readouterr()
    assert out.out == "" and "--ttl" in out.err
