"""Settings derived from the machine: how many ASR decodes run side by side."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from coach import settings as settings_module
from coach.settings import Settings


@pytest.mark.parametrize(
    ("cpus", "threads", "device", "expected"),
    [
        (2, 1, "cpu", 2),  # the 2-core target machine: two one-thread decodes
        (2, 2, "cpu", 1),  # every core on one decode
        (1, 1, "cpu", 1),
        (16, 1, "cpu", 8),  # capped: more replicas than that only add memory
        (16, 4, "cpu", 4),
        (16, 1, "cuda", 2),  # two batches in flight: one on the GPU, one on the host
    ],
)
def test_auto_workers_follow_usable_cores(
    monkeypatch: pytest.MonkeyPatch, cpus: int, threads: int, device: str, expected: int
) -> None:
    monkeypatch.setattr(settings_module, "usable_cpus", lambda: cpus)
    s = Settings(asr_workers=0, asr_threads=threads, device=device)
    assert s.asr_worker_count() == expected
    assert s.asr_options().workers == expected


def test_explicit_workers_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings_module, "usable_cpus", lambda: 16)
    assert Settings(asr_workers=3).asr_worker_count() == 3


def test_usable_cpus_is_the_affinity_mask() -> None:
    import os

    assert settings_module.usable_cpus() == len(os.sched_getaffinity(0)) >= 1


def test_a_phone_region_libphonenumber_does_not_know_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="GB, not UK"):
        Settings(data_dir=tmp_path, phone_region="UK")
    assert Settings(data_dir=tmp_path, phone_region="GB").phone_region == "GB"


def test_a_generated_signing_secret_is_owner_only_from_the_start(tmp_path: Path) -> None:
    """Written and then chmod-ed, the file was world-readable for a moment (an outside
    security audit); it is created owner-only, kept across restarts, and a second process
    that finds it made reads it."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        first = Settings(data_dir=tmp_path, auth_secret="").signing_secret
    finally:
        os.umask(old)
    path = tmp_path / "auth_secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Settings(data_dir=tmp_path, auth_secret="").signing_secret == first
    assert len(first) >= 40


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        # An outside operator audit: each of these started (port 70000 bound 4464), or failed
        # later with a traceback, or silently meant something else (-5 calls: no limit).
        ("COACH_PORT", "70000", "less than or equal to 65535"),
        ("COACH_REDIS_URL", "bogus", "redis://"),
        ("COACH_DATABASE_URL", "mysql://x@y/z", "postgresql://"),
        ("COACH_MAX_CALLS", "-5", "greater than or equal to 0"),
        ("COACH_RETENTION_DAYS", "-1", "greater than or equal to 0"),
        ("COACH_TOKEN_TTL_S", "-1", "greater than 0"),
        ("COACH_PLAYBOOK_RELOAD_S", "-1", "greater than or equal to 0"),
        ("COACH_AUDIOSOCKET_MAP_FILE", "/nonexistent.json", "not a readable file"),
    ],
)
def test_a_setting_out_of_range_is_refused_when_it_loads(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str
) -> None:
    from pydantic import ValidationError

    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=says):
        Settings()


def test_the_deploy_templates_placeholder_secrets_are_refused() -> None:
    """An outside operator audit: `kubectl apply -k` deploys deploy/k8s/secret.yaml, whose
    CHANGE-ME auth secret anyone can read and sign admin tokens with."""
    import yaml
    from pydantic import ValidationError

    template = Path(__file__).parents[2] / "deploy" / "k8s" / "secret.yaml"
    values = yaml.safe_load(template.read_text())["stringData"]
    for name, value in values.items():
        field = name.removeprefix("COACH_").lower()
        with pytest.raises(ValidationError, match="CHANGE-ME placeholder"):
            Settings(**{field: value})
