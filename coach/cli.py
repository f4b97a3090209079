"""Command line: `python -m coach replay|serve|token` (see CONTRACT.md)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import get_origin

from pydantic import ValidationError
from pydantic_settings import SettingsError

from coach.logs import setup_logging
from coach.settings import SECRET_SETTINGS, ConfigFileError, Settings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m coach", description="Voice agent-assist coach")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("replay", help="run a WAV file through the live pipeline")
    r.add_argument("wav", type=Path)
    r.add_argument("--events", type=Path, required=True, help="output JSONL file")
    mode = r.add_mutually_exclusive_group()
    mode.add_argument("--realtime", action="store_true", help="pace frames at real time")
    mode.add_argument("--fast", action="store_true", help="deterministic, frame by frame (default)")
    r.add_argument("--channels", help="party of each channel, e.g. customer,agent")
    r.add_argument("--config", type=Path)
    r.add_argument("--call-id")

    s = sub.add_parser("serve", help="run the HTTP/WebSocket server")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--config", type=Path)

    t = sub.add_parser("token", help="print a signed token for scripts and tests")
    t.add_argument("--user", required=True)
    t.add_argument("--role", choices=["agent", "supervisor", "admin"], required=True)
    t.add_argument("--ttl", type=_positive_int, help="seconds (default: COACH_TOKEN_TTL_S)")
    t.add_argument("--config", type=Path)
    return p


def _positive_int(text: str) -> int:
    """A token lifetime: `--ttl -5` printed a token born expired, `--ttl 0` one of the default
    lifetime, both with exit status 0 (an outside operator audit)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds (got {value})")
    return value


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    """Command-line flags that override settings (`serve --host/--port`)."""
    return {k: getattr(args, k, None) for k in ("host", "port")}


def load_settings(config: Path | None, **overrides: object) -> Settings | None:
    """The settings, or None after one line on stderr per problem: a bad setting is named
    with its variable, not shown as a traceback (`coach` and the scripts that read the
    server's settings, such as scripts/tune_playbook.py)."""
    try:
        return Settings.load(config, **overrides)
    except ConfigFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    except ValidationError as exc:
        for err in exc.errors():
            name = str(err["loc"][0]) if err["loc"] else ""
            # A secret is named, never shown: the error line goes to a pod's log.
            got = "value hidden" if name in SECRET_SETTINGS else f"got {err.get('input')!r}"
            print(
                f"error: setting COACH_{name.upper()} ({name}): {err['msg']} ({got})",
                file=sys.stderr,
            )
        return None
    except SettingsError as exc:
        # A list or mapping setting (COACH_USERS, COACH_AUDIOSOCKET_ALLOW...) is JSON in the
        # environment; pydantic-settings says only "error parsing value for field". The value
        # is not echoed: COACH_USERS carries password hashes.
        found = re.search(r'field "(\w+)"', str(exc))
        name = found.group(1) if found else ""
        field = Settings.model_fields.get(name)
        origin = get_origin(field.annotation) if field else None
        kind = "a JSON list" if origin is list else "a JSON object" if origin is dict else "JSON"
        print(
            f"error: setting COACH_{name.upper()} ({name}): must be {kind}"
            f" (README, Configuration): {exc.__cause__ or exc}",
            file=sys.stderr,
        )
        return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = getattr(args, "config", None)
    if config is not None and not config.exists():
        print(f"error: config file {config} not found", file=sys.stderr)
        return 2
    settings = load_settings(config, **_overrides(args))
    if settings is None:
        return 2
    if args.command in ("replay", "serve"):
        from coach.cues.playbook import PlaybookError, load_playbook

        try:  # a bad playbook is a configuration error: say so before loading any model
            load_playbook(settings.playbook_file)
        except PlaybookError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        from coach.runtime import device_plan
        from models.runtime import DeviceUnavailable

        # COACH_DEVICE=cuda without a usable GPU is a configuration error too: refused here,
        # the server would otherwise come up live but never ready (the models load in the
        # background) and a replay would end in a traceback.
        try:
            device_plan(settings)
        except DeviceUnavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        from models.asr import ModelNotFound, resolve_model_path

        # So is an ASR model name that names no model: the server came up live, never ready.
        cache_dir = settings.asr_options().cache_dir
        for name in dict.fromkeys([settings.asr_model, settings.asr_final_model or ""]):
            try:
                if name:
                    resolve_model_path(name, cache_dir)
            except ModelNotFound as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
    match args.command:
        case "replay":
            setup_logging(settings.log_level, json_format=settings.log_format == "json")
            from coach.replay import run_replay_cli

            return run_replay_cli(
                args.wav,
                args.events,
                realtime=bool(args.realtime),
                channels=args.channels,
                settings=settings,
                call_id=args.call_id,
            )
        case "serve":
            setup_logging(settings.log_level, json_format=settings.log_format == "json")
            from coach.api.server import serve

            return serve(settings)
        case "token":
            from coach.auth import issue_token

            print(
                issue_token(
                    user=args.user,
                    role=args.role,
                    secret=settings.signing_secret,
                    ttl_s=args.ttl or settings.token_ttl_s,
                )
            )
            return 0
    return 2
