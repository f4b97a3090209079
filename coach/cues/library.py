"""The loaded playbook of this process, with hot reload.

`PlaybookLibrary.current` is what every call's cue engine reads at each utterance. A reload
(file changed, SIGHUP, or `reload()`) validates and embeds the new playbook off the event
loop, then swaps it in atomically; an invalid file is logged with its problems and the
previous playbook stays in force, so a typo never stops coaching.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
import threading
from pathlib import Path

from coach.cues.engine import LoadedPlaybook
from coach.cues.matcher import CueIndex, EmbedFn
from coach.cues.playbook import (
    DEFAULT_PLAYBOOK,
    MAX_PLAYBOOK_BYTES,
    PlaybookError,
    parse_playbook_bytes,
    read_playbook_file,
)
from coach.metrics import PLAYBOOK_REFUSED, PLAYBOOK_RELOADS

log = logging.getLogger(__name__)


def _version_of(raw: bytes) -> str:
    """A playbook version: the start of its bytes' SHA-256."""
    return hashlib.sha256(raw).hexdigest()[:12]


UNREADABLE = "unreadable"
"""The digest of a playbook file that cannot be read (gone, no permission)."""


class PlaybookLibrary:
    def __init__(self, path: Path | None, embed: EmbedFn) -> None:
        self.path = Path(path) if path else DEFAULT_PLAYBOOK
        self._embed = embed
        self._lock = threading.Lock()
        self.last_error: str | None = None
        self.reloads = 0
        self._refused: str | None = None
        # The first load must succeed: raise PlaybookError.
        self._current = self._load(read_playbook_file(self.path))

    @property
    def current(self) -> LoadedPlaybook:
        return self._current

    def _load(self, raw: bytes) -> LoadedPlaybook:
        playbook = parse_playbook_bytes(raw, source=self.path)
        index = CueIndex.build(playbook, self._embed)
        warnings = tuple(index.crowded_examples())
        for warning in warnings:
            log.warning("playbook %s: %s", self.path, warning)
        return LoadedPlaybook(playbook, index, _version_of(raw), warnings)

    def _digest(self) -> str:
        try:  # no further than a file that loads may go: an oversized one is refused once
            with self.path.open("rb") as f:
                return _version_of(f.read(MAX_PLAYBOOK_BYTES + 1))
        except OSError:
            # A version of its own: a file deleted or made unreadable is a change to refuse
            # (logged, coach_playbook_refused), not a poll to skip. An outside audit moved the
            # file away: nothing said so until the next start failed on it.
            return UNREADABLE

    def changed(self) -> bool:
        """The file is worth loading: not the refused version, and either a new one or, after
        a refusal, the version in force again (the edit was undone: the refusal is over)."""
        digest = self._digest()
        if digest == self._refused:
            return False
        return digest != self._current.version or self.last_error is not None

    def refused_now(self) -> bool:
        """The file on disk is what the last reload refused (live calls use the last good
        one): a version that did not validate, or no readable file at all."""
        return self.last_error is not None and self._digest() == self._refused

    def reload(self) -> bool:
        """Load the file again; True if a new version is now in force."""
        with self._lock:
            raw: bytes | None = None
            try:
                raw = read_playbook_file(self.path)
                if _version_of(raw) == self._current.version:
                    # The version in force (an edit undone, a file put back): nothing to
                    # build, and whatever was refused is no longer on disk.
                    self._clear_refusal()
                    return False
                loaded = self._load(raw)
            except Exception as exc:  # whatever fails, the last good playbook keeps running
                if not isinstance(exc, PlaybookError):  # a bug of ours, or the encoders'
                    log.exception("playbook %s could not be loaded", self.path)
                    exc = PlaybookError(self.path, [f"could not be loaded: {exc!r}"])
                # The metrics first: whoever sees `last_error` (GET /api/playbook) finds them
                # already counting this refusal.
                PLAYBOOK_RELOADS.labels(result="refused").inc()
                PLAYBOOK_REFUSED.set(1)  # what an alert watches: the log line scrolls away
                self.last_error = str(exc)
                # The bytes refused, not the file read again: an editor that finished its
                # write since then would have its good version taken for the refused one
                # (and never loaded); nor for a read that failed, which a file back by now
                # would make the good version's (a review). UNREADABLE: no readable file.
                if raw is not None:
                    self._refused = _version_of(raw)
                elif isinstance(exc.__cause__, OSError):
                    self._refused = UNREADABLE
                else:  # read, but past MAX_PLAYBOOK_BYTES: refused once, not every poll
                    self._refused = self._digest()
                log.error("playbook reload refused, keeping version %s: %s", self.version, exc)
                return False
            # The file loads (a version other than the one in force, checked above): whatever
            # was refused before is no longer on disk.
            self._clear_refusal()
            self._current = loaded
            self.reloads += 1
            PLAYBOOK_RELOADS.labels(result="loaded").inc()
            log.info("playbook %s reloaded: version %s", self.path, loaded.version)
            return True

    def _clear_refusal(self) -> None:
        PLAYBOOK_REFUSED.set(0)
        self.last_error, self._refused = None, None

    @property
    def version(self) -> str:
        return self._current.version

    async def watch(self, interval_s: float = 2.0) -> None:
        """Poll the file (cheap: one small read) and reload on change, until cancelled.

        Polling works on every filesystem, including ConfigMap volumes whose symlink swap
        inotify-based watchers miss.
        """
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval_s)
            try:  # one bad poll must not end hot reload for the life of the process
                if await loop.run_in_executor(None, self.changed):
                    await loop.run_in_executor(None, self.reload)
            except Exception:
                log.exception("playbook %s: checking for changes failed", self.path)


def start_watching(library: PlaybookLibrary, interval_s: float) -> asyncio.Task[None] | None:
    """Reload on file change (polled every `interval_s`; 0 = never) and on SIGHUP.

    SIGHUP can only be handled on the main thread's loop (a server started in a test
    thread has none), so it is best effort; polling always works.
    """
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError, AttributeError):
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.run_in_executor(None, library.reload))
    if interval_s <= 0:
        return None
    return asyncio.create_task(library.watch(interval_s), name="playbook-watch")
