"""One typed settings object: defaults < config file (YAML/JSON/TOML) < COACH_* env < CLI flags."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tomllib
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from audio.endpoint import EndpointConfig
from models.asr import AsrOptions

GPU_ASR_WORKERS = 2
"""ASR decodes side by side on CUDA unless COACH_ASR_WORKERS is set (see asr_worker_count)."""


PLACEHOLDER_CHECKED = (
    "auth_secret",
    "customer_id_key",
    "ingest_api_key",
    "twilio_auth_token",
    "audiohook_client_secret",
    "escalation_webhook_secret",
    "database_url",
)
"""Settings deploy/k8s/secret.yaml ships as CHANGE-ME placeholders."""
SECRET_SETTINGS = frozenset({*PLACEHOLDER_CHECKED, "redis_url", "users"})
"""Settings an error message names but never shows (they hold keys and passwords)."""


def _optional_url(v: str | None, schemes: tuple[str, ...], what: str) -> str | None:
    """A URL setting: blank is unset (None), else it must start with one of `schemes`."""
    if not v or not v.strip():
        return None
    if not v.strip().lower().startswith(schemes):
        raise ValueError(f"must be {what}")
    return v.strip()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COACH_", extra="ignore")

    host: str = Field("127.0.0.1", description="Interface the HTTP server binds to.")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port.")
    data_dir: Path = Field(Path(".coach"), description="Local state: SQLite store, signing secret.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="debug, info, warning or error."
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="text, or json (one object per line)."
    )

    asr_model: str = Field("tiny.en", description="Packaged model name (tiny.en, base) or path.")
    asr_final_model: str | None = Field(
        "base",
        description="Model for final transcripts, the words cues are matched on (tiny.en, base "
        "or a path); empty: COACH_ASR_MODEL. Partials use COACH_ASR_MODEL.",
    )
    asr_final_fallback: bool = Field(
        True,
        description="Decode a final with COACH_ASR_MODEL when no ASR worker is free (keeps "
        "capacity); false: always COACH_ASR_FINAL_MODEL.",
    )
    asr_final_budget_s: float = Field(
        0.8,
        description="A final goes to COACH_ASR_FINAL_MODEL only if this machine is expected to "
        "decode it within this many seconds (learned from its own decodes); else to "
        "COACH_ASR_MODEL. 0: no limit.",
    )
    asr_compute_type: str = Field("int8", description="CTranslate2 compute type.")
    asr_final_compute_type: str | None = Field(
        None,
        description="Compute type of COACH_ASR_FINAL_MODEL only (e.g. float32: fewer lost words, "
        "slower); empty: COACH_ASR_COMPUTE_TYPE (float16 on cuda).",
    )
    asr_threads: int = Field(1, description="CTranslate2 intra-op threads per worker.")
    asr_workers: int = Field(
        0,
        description="Parallel ASR decodes sharing one model; 0: one per CPU core (at most 8) "
        "divided by the threads per worker on cpu, 2 on cuda.",
    )
    asr_beam_size: int = Field(5, description="Beam size for final transcripts.")
    asr_partial_beam_size: int = Field(1, description="Beam size for partial hypotheses.")
    asr_min_beam_size: int = Field(
        1,
        description="Smallest final beam when the ASR queue is loaded (= beam size: fixed).",
    )
    asr_max_batch: int = Field(
        4, description="Utterances decoded together in one batch (32 on cuda unless set)."
    )
    asr_min_window_s: float = Field(10.0, description="Shortest Whisper encoder window.")
    asr_partial_min_window_s: float = Field(
        5.0, description="Shortest encoder window for partial hypotheses (cheaper, rougher)."
    )
    asr_initial_prompt: str | None = Field(None, description="Domain words to bias ASR.")
    emotion_model_dir: Path | None = Field(
        None, description="Folder of the built emotion model (default: models/artifacts)."
    )
    emotion_threads: int = Field(1, description="ONNX Runtime threads for the emotion model.")
    emotion_max_batch: int = Field(16, description="Utterances scored together in one batch.")
    match_model: str = Field(
        "all-mpnet-base-v2",
        description="Second encoder averaged with MiniLM for cue matching: all-mpnet-base-v2 "
        "(built from packaged weights), a folder with model.onnx + tokenizer.json, or none.",
    )
    playbook_file: Path | None = Field(
        None, description="Coaching playbook YAML (default: the bundled coach/playbook.yaml)."
    )
    playbook_reload_s: float = Field(
        2.0,
        ge=0.0,
        description="How often the playbook file is checked for changes; 0 turns it off.",
    )
    device: Literal["cpu", "cuda"] = Field("cpu", description="Inference device for all models.")

    vad_threshold: float = Field(0.5, description="Silero speech probability threshold.")
    endpoint_hangover_ms: int = Field(300, description="Silence that ends an utterance.")
    max_utterance_s: float = Field(15.0, description="Longest utterance before a forced cut.")
    partial_interval_s: float = Field(0.5, description="Fastest cadence of partial transcripts.")
    partial_max_wait_s: float = Field(0.6, description="Drop a queued partial older than this.")
    partial_max_interval_s: float = Field(
        2.0,
        description="Slowest partial cadence when the ASR queue is loaded (= interval: fixed).",
    )
    max_calls: int = Field(
        8,
        ge=0,
        description="Concurrent calls admitted; more are refused (try again later); 0 = no limit.",
    )

    audio_queue_frames: int = Field(250, description="Per-party audio queue (20 ms frames).")
    backpressure_s: float = Field(1.0, description="Wait for queue room before dropping audio.")
    metrics_interval_s: float = Field(5.0, description="Call-audio seconds between metrics events.")
    max_frame_bytes: int = Field(64_000, description="Largest binary frame accepted on ingest.")
    max_body_bytes: int = Field(
        1_000_000, description="Largest HTTP request body (larger: 413); 0 = no limit."
    )
    event_replay: int = Field(500, description="Recent events kept per call for reconnects.")
    max_streams_per_user: int = Field(
        30,
        ge=0,
        description="Event streams (call panels, walls) one user may hold open on one instance; 0 = no limit.",
    )

    webrtc_loopback: bool = Field(
        False, description="WebRTC offers only 127.0.0.1 candidates (tests, same-host demos)."
    )
    max_call_s: float = Field(
        14400.0,
        description="Longest call (seconds of call audio), then it ends as max_length; 0 = none.",
    )
    idle_timeout_s: float = Field(
        60.0, description="End a call that received no audio for this long (wall clock); 0 = off."
    )
    reconnect_grace_s: float = Field(
        0.0, description="Keep a dropped call open this long for a reconnect with the same call_id."
    )
    drain_timeout_s: float = Field(
        0.0,
        ge=0.0,
        description="On SIGTERM, refuse new calls and let live ones go on this long before "
        "ending them as shutdown; 0 = end them at once. A second signal stops the wait.",
    )
    audiosocket_port: int = Field(
        0, ge=0, le=65535, description="TCP port for Asterisk AudioSocket ingest; 0 = off."
    )
    audiosocket_host: str = Field(
        "127.0.0.1", description="Interface the AudioSocket listener binds."
    )
    audiosocket_allow: list[str] = Field(
        default_factory=lambda: ["127.0.0.1/32", "::1/128"],
        description="Source networks (CIDR) allowed to connect to AudioSocket.",
    )
    audiosocket_map: dict[str, str] = Field(
        default_factory=dict, description='AudioSocket UUID -> "call_id:party" (JSON).'
    )
    audiosocket_map_file: Path | None = Field(None, description="JSON file with that mapping.")

    redis_url: str | None = Field(
        None,
        description="Redis URL for multi-instance fan-out (Redis Streams); in-process if unset.",
    )
    redis_stream_maxlen: int = Field(2000, description="Approximate entries kept per event stream.")
    redis_session_ttl_s: float = Field(30.0, description="TTL of per-call ownership keys in Redis.")
    instance_id: str | None = Field(None, description="This instance's id in Redis (pod name).")

    store_enabled: bool = Field(True, description="Record calls in the history store.")
    database_url: str | None = Field(
        None, description="PostgreSQL URL for call history; SQLite in data_dir when unset."
    )
    retention_days: float = Field(
        90.0, ge=0.0, description="Delete stored calls older than this; 0 keeps."
    )
    store_batch_size: int = Field(200, description="Events written per store transaction.")
    store_flush_interval_s: float = Field(0.5, description="Longest wait before events are stored.")
    store_buffer_events: int = Field(10_000, description="Events held in memory before spooling.")
    store_spool_max_mb: int = Field(256, description="Disk cap of the outage spool, in MiB.")

    memory_release_interval_s: float = Field(
        60.0,
        description="Free ended calls' memory this often (full gc, glibc malloc_trim); 0 = off.",
    )

    escalation_webhook_url: str | None = Field(
        None,
        description="POST each escalation (redacted JSON, with agent and team) to this http(s) "
        "URL: chat, paging, CRM (README, Escalation webhook); empty: off.",
    )
    escalation_webhook_secret: str | None = Field(
        None,
        description="Signs each webhook POST: X-Coach-Signature = sha256=HMAC-SHA256 of "
        "'<X-Coach-Timestamp>.<body>'.",
    )
    escalation_webhook_min_urgency: Literal["low", "medium", "high", "critical"] = Field(
        "high", description="Only escalations at this urgency or above go to the webhook."
    )

    auth_disabled: bool = Field(False, description="Turn off all auth (local development only).")
    auth_secret: str | None = Field(
        None,
        description="HMAC key for tokens, 32 bytes or more (PyJWT warns on a shorter one); "
        "generated if unset.",
    )
    customer_id_key: str | None = Field(
        None,
        description="Key of the aliases that replace customer ids which are personal data (a "
        "phone number, an email); the same on every instance. Unset: derived from the token "
        "secret, so set it before rotating that secret, or customers' earlier calls unlink.",
    )
    phone_region: str = Field(
        "US",
        pattern=r"^[A-Z]{2}$",
        description="Country (ISO 3166 code) of phone numbers given without their country code, "
        "so that a caller's '+14155550100' and '4155550100' make one customer alias.",
    )
    ingest_api_key: str | None = Field(None, description="API key telephony ingest must present.")
    twilio_auth_token: str | None = Field(
        None, description="Twilio auth token: when set, /ingest/twilio requires X-Twilio-Signature."
    )
    audiohook_client_secret: str | None = Field(
        None,
        description="Genesys AudioHook client secret (base64): when set, signatures are required.",
    )
    token_ttl_s: int = Field(12 * 3600, gt=0, description="Default lifetime of issued tokens.")
    users: list[dict[str, str]] = Field(
        default_factory=list,
        description="Sign-in users: JSON list of {name, role, team, password_hash} (README, Sign-in).",
    )
    demo_users: bool | None = Field(
        None, description="Built-in demo logins (README); unset = on while COACH_USERS is empty."
    )
    demo_call_enabled: bool = Field(
        True, description='Offer the agent page\'s "Play demo call" (POST /api/demo/calls).'
    )

    @field_validator("phone_region")
    @classmethod
    def _a_region_libphonenumber_knows(cls, v: str) -> str:
        import phonenumbers

        if v not in phonenumbers.SUPPORTED_REGIONS:
            # "UK" looks right and reads no number (the code is GB): refused, not ignored.
            raise ValueError(f"{v!r} is not a country code libphonenumber knows (GB, not UK)")
        return v

    @field_validator("escalation_webhook_url")
    @classmethod
    def _webhook_is_a_web_url(cls, v: str | None) -> str | None:
        return _optional_url(v, ("http://", "https://"), "an http:// or https:// URL")

    @field_validator(*PLACEHOLDER_CHECKED)
    @classmethod
    def _not_the_templates_placeholder(cls, v: str | None) -> str | None:
        # deploy/k8s/secret.yaml ships "CHANGE-ME" values, and `kubectl apply -k` deploys it:
        # an auth secret anyone can read signs admin tokens (an outside operator audit).
        if v and "CHANGE-ME" in v.upper():
            raise ValueError("is still the template's CHANGE-ME placeholder: set a real value")
        return v

    @field_validator("audiosocket_allow")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        import ipaddress

        for entry in v:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError as exc:
                # It failed only when the listener started, in a background task, and the
                # instance reported ready with nothing listening (an outside operator audit).
                raise ValueError(f"{entry!r} is not a network (CIDR, e.g. 10.0.0.0/8)") from exc
        return v

    @field_validator("audiosocket_map_file")
    @classmethod
    def _readable_file(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"{v} is not a readable file")
        return v

    @field_validator("redis_url")
    @classmethod
    def _a_redis_url(cls, v: str | None) -> str | None:
        return _optional_url(
            v, ("redis://", "rediss://", "unix://"), "a redis://, rediss:// or unix:// URL"
        )

    @field_validator("database_url")
    @classmethod
    def _a_database_url(cls, v: str | None) -> str | None:
        return _optional_url(
            v, ("postgresql", "postgres://", "sqlite"), "a postgresql:// (or sqlite://) URL"
        )

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_any_case(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> Settings:
        file_values: dict[str, Any] = _read_config(config_file) if config_file else {}
        env = cls()
        merged = {**file_values, **env.model_dump(exclude_unset=True)}
        merged.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(merged)

    @cached_property
    def signing_secret(self) -> str:
        """Tokens must verify across restarts and between `coach token` and the server."""
        if self.auth_secret:
            return self.auth_secret
        path = self.data_dir / "auth_secret"
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        value = secrets.token_urlsafe(32)
        # Created owner-only: written first and chmod-ed after, it was readable by anyone on
        # the machine for a moment under the usual umask (an outside security audit).
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            return path.read_text().strip()
        with os.fdopen(fd, "w") as out:
            out.write(value)
        return value

    @cached_property
    def customer_alias_key(self) -> bytes:
        """The key of `coach.redaction.customer_alias`."""
        if self.customer_id_key:
            return self.customer_id_key.encode()
        derived = hmac.new(self.signing_secret.encode(), b"customer-id alias", hashlib.sha256)
        return derived.digest()

    def asr_worker_count(self) -> int:
        """Decodes run in parallel. On CPU, several one-thread decodes beat one decode on every
        core: tiny.en's matrices are too small to split well, and a final need not wait for
        the decode in progress (BENCHMARKS.md "Throughput": 2 workers x 1 thread held 8 calls
        where 1 x 2 failed at 7). On a GPU two workers overlap one batch's host-side work
        (features, beam search, alignment) with the other's GPU work: 124 finals/s against 84
        with one (BENCHMARKS.md "GPU"); a third added little."""
        if self.asr_workers > 0:
            return self.asr_workers
        if self.device == "cuda":
            return GPU_ASR_WORKERS
        return max(1, min(8, usable_cpus() // max(1, self.asr_threads)))

    def asr_options(self) -> AsrOptions:
        return AsrOptions(
            model=self.asr_model,
            device=self.device,
            compute_type=self.asr_compute_type,
            threads=self.asr_threads,
            workers=self.asr_worker_count(),
            beam_size=self.asr_beam_size,
            initial_prompt=self.asr_initial_prompt,
            min_window_s=self.asr_min_window_s,
        )

    def endpoint_config(self) -> EndpointConfig:
        return EndpointConfig(
            threshold=self.vad_threshold,
            neg_threshold=max(0.05, self.vad_threshold - 0.15),
            hangover_ms=self.endpoint_hangover_ms,
            max_utterance_s=self.max_utterance_s,
        )


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask, not the host's core count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class ConfigFileError(ValueError):
    """A `--config` file that cannot be read as settings (the CLI says why in one line)."""


def _read_config(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:  # a folder, no permission
        raise ConfigFileError(f"config file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigFileError(f"config file {path}: not UTF-8 text ({exc.reason})") from exc
    data = _parse_config(path, text)
    if not isinstance(data, dict):
        raise ConfigFileError(f"config file {path}: expected a mapping at the top level")
    values = {str(k).lower().removeprefix("coach_"): v for k, v in data.items()}
    # A misspelt name would otherwise be dropped in silence and its default used.
    unknown = sorted(set(values) - set(Settings.model_fields))
    if unknown:
        raise ConfigFileError(f"config file {path}: unknown setting(s) {', '.join(unknown)}")
    return values


def _parse_config(path: Path, text: str) -> Any:
    import yaml

    try:
        match path.suffix.lower():
            case ".json":
                return json.loads(text)
            case ".toml":
                return tomllib.loads(text)
            case ".yaml" | ".yml":
                return yaml.safe_load(text) or {}
            case other:
                raise ConfigFileError(
                    f"config file {path}: unsupported format {other!r} (use .yaml, .json or .toml)"
                )
    except (ValueError, yaml.YAMLError) as exc:  # JSON and TOML errors are ValueErrors
        if isinstance(exc, ConfigFileError):
            raise
        detail = " ".join(str(exc).split())  # YAML's are several lines
        raise ConfigFileError(f"config file {path}: not valid {path.suffix[1:]}: {detail}") from exc
