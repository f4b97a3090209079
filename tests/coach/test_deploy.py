"""deploy/: Prometheus rules pass promtool (syntax and unit tests), Kubernetes manifests pass
the API schemas, and they agree with the app (probe paths, ports) and the Dockerfile (uid)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from coach.api.app import create_app
from coach.cues.playbook import load_playbook
from coach.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
K8S = ROOT / "deploy" / "k8s"
MANIFESTS = ["configmap.yaml", "secret.yaml", "deployment.yaml", "service.yaml", "hpa.yaml"]
# Oldest supported cluster and the newest schemas kubernetes-validate ships.
K8S_VERSIONS = ["1.30.0", "latest"]
# COACH_* keys the manifests set ahead of the settings that will read them (ARCHITECTURE.md).
PENDING_SETTINGS: set[str] = set()

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (Debian package `prometheus`; `make system-deps` installs it)",
)


def _docs(name: str) -> list[dict[str, Any]]:
    with (K8S / name).open() as f:
        return [d for d in yaml.safe_load_all(f) if d]


def _one(name: str, kind: str) -> dict[str, Any]:
    (doc,) = [d for d in _docs(name) if d["kind"] == kind]
    return doc


def _container() -> dict[str, Any]:
    (container,) = _one("deployment.yaml", "Deployment")["spec"]["template"]["spec"]["containers"]
    return container  # type: ignore[no-any-return]


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=PROM, capture_output=True, text=True, timeout=120, check=False
    )


@needs_promtool
def test_promtool_check_rules() -> None:
    result = _promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_test_rules() -> None:
    result = _promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_use_defined_metrics_and_are_labelled() -> None:
    from coach import metrics

    defined = {
        m._name  # prometheus_client strips _total from counters' names
        for m in vars(metrics).values()
        if hasattr(m, "_name") and hasattr(m, "_type")
    }
    rules = [
        r for g in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"] for r in g["rules"]
    ]
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        for used in re.findall(r"\bcoach_[a-z_]+", rule["expr"]):
            base = re.sub(r"(_total|_bucket|_count|_sum)$", "", used)
            base = re.sub(r"_total$", "", base)
            assert base in defined, f"{rule['alert']}: {used} is not in coach/metrics.py"
    expr = {r["alert"]: r["expr"] for r in rules}
    assert "coach_cue_latency_seconds_bucket" in expr["CoachCueLatencyHigh"]
    assert "coach_dropped_frames_total" in expr["CoachDroppedFrames"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_valid(name: str, version: str) -> None:
    import kubernetes_validate

    if version == "latest":
        version = kubernetes_validate.latest_version()
    docs = _docs(name)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    (kust,) = _docs("kustomization.yaml")
    assert kust["kind"] == "Kustomization"
    assert sorted(kust["resources"]) == sorted(MANIFESTS)
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert on_disk == set(MANIFESTS)


def test_probe_paths_exist_in_app(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path, auth_disabled=True))
    paths = {getattr(r, "path", None) for r in app.routes}
    c = _container()
    probes = {
        k: c[k]["httpGet"]["path"] for k in ("livenessProbe", "readinessProbe", "startupProbe")
    }
    assert probes["livenessProbe"] == "/health/live"
    assert probes["readinessProbe"] == "/health/ready"
    for probe, path in probes.items():
        assert path in paths, f"{probe} path {path} is not a route of the app"
    annotations = _one("deployment.yaml", "Deployment")["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert annotations["prometheus.io/path"] in paths


def test_run_as_user_matches_dockerfile() -> None:
    text = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users, "Dockerfile has no USER"
    user = users[-1]
    if not user.isdigit():  # a name: find its uid in `useradd --uid N name`
        m = re.search(rf"useradd\b[^\n]*--uid\s+(\d+)[^\n]*\b{re.escape(user)}\b", text)
        assert m, f"uid of user {user} not found in Dockerfile"
        user = m.group(1)
    spec = _one("deployment.yaml", "Deployment")["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == int(user)
    assert _container()["securityContext"]["runAsUser"] == int(user)


def test_deployment_shape() -> None:
    deployment = _one("deployment.yaml", "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    c = _container()
    assert c["image"] == "voice-coach:latest"
    assert "preStop" in c["lifecycle"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    config = _one("configmap.yaml", "ConfigMap")["data"]
    # The kubelet kills the pod at the grace period: it must outlast the preStop sleep, the
    # drain and the minute that ending and writing the remaining calls may take.
    pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    drain = float(config["COACH_DRAIN_TIMEOUT_S"])
    assert drain > 0
    assert spec["terminationGracePeriodSeconds"] >= pre_stop + drain + 45
    assert ports == {
        "http": int(config["COACH_PORT"]),
        "audiosocket": int(config["COACH_AUDIOSOCKET_PORT"]),
    }
    assert c["resources"]["limits"]["cpu"] == "2"
    refs = {next(iter(e.values()))["name"] for e in c["envFrom"]}
    assert refs == {
        _one("configmap.yaml", "ConfigMap")["metadata"]["name"],
        _one("secret.yaml", "Secret")["metadata"]["name"],
    }
    (playbook,) = [v for v in spec["volumes"] if v["name"] == "playbook"]
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    (generated,) = kustomization["configMapGenerator"]
    assert playbook["configMap"]["name"] == generated["name"]
    assert [Path(f).name for f in generated["files"]] == [playbook["configMap"]["items"][0]["key"]]
    mount = next(m for m in c["volumeMounts"] if m["name"] == "playbook")["mountPath"]
    assert config["COACH_PLAYBOOK_FILE"] == f"{mount}/playbook.yaml"
    # The deployed playbook is the bundled one (edit both, or only the deploy copy on purpose),
    # and it is valid: a bad playbook would stop every pod at start.
    deployed = (K8S / generated["files"][0]).read_text()
    assert deployed == (ROOT / "coach" / "playbook.yaml").read_text()
    load_playbook(K8S / generated["files"][0])
    selector = deployment["spec"]["selector"]["matchLabels"]
    for service in _docs("service.yaml"):
        assert service["spec"]["selector"] == selector
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports
    http = next(s for s in _docs("service.yaml") if s["spec"]["ports"][0]["name"] == "http")
    assert http["spec"]["sessionAffinity"] == "ClientIP"


def test_hpa_targets_deployment_on_cpu_and_active_calls() -> None:
    hpa = _one("hpa.yaml", "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert (
        hpa["spec"]["scaleTargetRef"]["name"]
        == _one("deployment.yaml", "Deployment")["metadata"]["name"]
    )
    kinds = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert kinds["Resource"]["resource"]["name"] == "cpu"
    assert kinds["Pods"]["pods"]["metric"]["name"] == "coach_active_calls"


def test_env_keys_are_settings() -> None:
    fields = set(Settings.model_fields)
    keys = set(_one("configmap.yaml", "ConfigMap")["data"]) | set(
        _one("secret.yaml", "Secret")["stringData"]
    )
    keys |= {e["name"] for e in _container().get("env", [])}
    env = {k.removeprefix("COACH_").lower() for k in keys if k.startswith("COACH_")}
    unknown = env - fields - PENDING_SETTINGS
    assert not unknown, f"not settings in coach/settings.py: {sorted(unknown)}"
    secret = set(_one("secret.yaml", "Secret")["stringData"])
    assert secret == {
        "COACH_AUTH_SECRET",
        "COACH_CUSTOMER_ID_KEY",
        "COACH_INGEST_API_KEY",
        "COACH_TWILIO_AUTH_TOKEN",
        "COACH_AUDIOHOOK_CLIENT_SECRET",
        "COACH_DATABASE_URL",
    }


def test_the_instance_id_is_the_pods_name() -> None:
    """A container restarted in its pod comes back under the same instance id and releases
    the owner keys its crashed predecessor left (coach/redis_bus.py); a random id per process
    would leave them to expire, the calls looking live meanwhile."""
    env = {e["name"]: e for e in _container()["env"]}
    assert env["COACH_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_the_build_context_leaves_out_local_state_and_keeps_what_the_image_copies() -> None:
    """An outside operator audit: with no .dockerignore, `docker build .` from a working copy
    sent the virtualenv (2 GB), the locally built models and .coach/ (call history, the
    signing secret) as build context."""
    import fnmatch

    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for must in (".venv", ".coach", "models/artifacts", ".git"):
        assert must in ignored, must
    copied = re.findall(
        r"^COPY (?!--from)(?:--\S+ )*(.+) \S+$", (ROOT / "Dockerfile").read_text(), re.M
    )
    sources = [src for line in copied for src in line.split()]
    assert "coach" in sources and "models" in sources
    for src in sources:
        assert not any(fnmatch.fnmatch(src, pattern) for pattern in ignored), src
