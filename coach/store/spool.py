"""A bounded, append-only local spool of events the database could not take yet.

When the store is unreachable the writer appends its events here (JSON lines, oldest first)
and replays them, in order, once the database answers again; the spool survives a restart,
so a crash during an outage loses nothing either. It is split into segment files so that
keeping it under its size cap is cheap: the oldest whole segment is deleted (and the events
in it counted and logged), never rewritten. A read cursor (segment, byte offset) is stored
beside the segments; since every database write is idempotent, a cursor that lags behind the
rows already written only causes harmless rewrites after a crash.

All methods are synchronous and touch only local files in small pieces; they run on the
event loop thread, which keeps appends and replays strictly ordered without locks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from coach.store.writes import Received

log = logging.getLogger(__name__)

_CURSOR = "cursor.json"
_PREFIX, _SUFFIX = "seg-", ".jsonl"


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a read stopped; only valid while no segment was dropped (`epoch`)."""

    epoch: int
    segment: int
    offset: int


class Spool:
    def __init__(
        self, *, directory: Path, max_bytes: int = 256 << 20, segment_bytes: int | None = None
    ) -> None:
        self._dir = directory
        self._max_bytes = max_bytes
        self._segment_bytes = segment_bytes or max(64 << 10, max_bytes // 8)
        self._sizes: dict[int, int] = {}  # segment number -> bytes, in insertion (age) order
        self._segment, self._offset = 0, 0
        self._next = 1
        self._epoch = 0
        self.dropped = 0
        self.corrupt = 0
        self._load()

    @property
    def pending(self) -> bool:
        """Whether any spooled event has not been replayed yet."""
        if not self._sizes:
            return False
        return self._segment != max(self._sizes) or self._offset < self._sizes[self._segment]

    @property
    def size_bytes(self) -> int:
        return sum(self._sizes.values())

    def append(self, items: Sequence[Received]) -> None:
        if not items:
            return
        data = "".join(
            json.dumps(i.to_json(), ensure_ascii=False, separators=(",", ":"), default=str) + "\n"
            for i in items
        ).encode()
        seg = max(self._sizes) if self._sizes else None
        if seg is None or self._sizes[seg] >= self._segment_bytes:
            seg = self._new_segment()
        try:
            with self._path(seg).open("ab") as f:
                f.write(data)
        except OSError:
            # A disk that filled up mid-write may have left part of a line: end it, so the
            # next append starts on a line of its own, and keep the sizes true.
            path = self._path(seg)
            self._sizes[seg] = path.stat().st_size if path.exists() else 0
            with contextlib.suppress(OSError):
                self._seal(seg)
            raise
        self._sizes[seg] += len(data)
        self._enforce_cap()

    def read(self, limit: int) -> tuple[list[Received], Cursor]:
        """Up to `limit` events from the cursor on, within one segment; commit() moves past them."""
        seg, offset = self._segment, self._offset
        out: list[Received] = []
        if seg in self._sizes:
            with self._path(seg).open("rb") as f:
                f.seek(offset)
                while len(out) < limit and offset < self._sizes[seg]:
                    line = f.readline()
                    if not line:
                        break
                    offset += len(line)
                    self._parse(line, out)
        return out, Cursor(self._epoch, seg, offset)

    def commit(self, cursor: Cursor) -> None:
        """The events read up to `cursor` are in the database: move past them for good."""
        if cursor.epoch != self._epoch or cursor.segment != self._segment:
            return  # the segment was dropped meanwhile; nothing left to skip
        self._offset = max(self._offset, cursor.offset)
        while self._sizes and self._offset >= self._sizes[self._segment]:
            last = self._segment == max(self._sizes)
            self._path(self._segment).unlink(missing_ok=True)
            del self._sizes[self._segment]
            self._segment = min(self._sizes) if self._sizes else self._next
            self._offset = 0
            if last:
                break
        self._save_cursor()

    def _parse(self, line: bytes, out: list[Received]) -> None:
        try:
            out.append(Received.from_json(json.loads(line)))
        except (ValueError, KeyError, TypeError):
            self.corrupt += 1
            log.warning("store spool: skipped an unreadable line (%d so far)", self.corrupt)

    def _new_segment(self) -> int:
        seg = self._next
        self._next += 1
        self._sizes[seg] = 0
        if len(self._sizes) == 1:
            self._segment, self._offset = seg, 0
        return seg

    def _enforce_cap(self) -> None:
        # The newest segment is never dropped: it holds the events just appended.
        if self.size_bytes <= self._max_bytes:
            return
        while self.size_bytes > self._max_bytes and len(self._sizes) > 1:
            oldest = min(self._sizes)
            start = self._offset if oldest == self._segment else 0
            lost = self._count_lines(oldest, start)
            self._path(oldest).unlink(missing_ok=True)
            del self._sizes[oldest]
            if oldest == self._segment:
                self._segment, self._offset = min(self._sizes), 0
            self._epoch += 1
            self.dropped += lost
            log.warning(
                "store spool over %d bytes: dropped the %d oldest events (%d in total)",
                self._max_bytes,
                lost,
                self.dropped,
            )
        self._save_cursor()

    def _count_lines(self, seg: int, start: int) -> int:
        n = 0
        with self._path(seg).open("rb") as f:
            f.seek(start)
            while chunk := f.read(1 << 20):
                n += chunk.count(b"\n")
        return n

    def _path(self, seg: int) -> Path:
        return self._dir / f"{_PREFIX}{seg:012d}{_SUFFIX}"

    def _save_cursor(self) -> None:
        tmp = self._dir / (_CURSOR + ".tmp")
        tmp.write_text(json.dumps({"segment": self._segment, "offset": self._offset}))
        os.replace(tmp, self._dir / _CURSOR)

    def _load(self) -> None:
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # events wait here: private
        segments = sorted(
            int(p.name[len(_PREFIX) : -len(_SUFFIX)])
            for p in self._dir.glob(f"{_PREFIX}*{_SUFFIX}")
            if p.name[len(_PREFIX) : -len(_SUFFIX)].isdigit()
        )
        self._sizes = {s: self._path(s).stat().st_size for s in segments}
        self._next = (segments[-1] + 1) if segments else 1
        if segments:
            self._seal(segments[-1])
        self._segment, self._offset = (segments[0] if segments else self._next), 0
        try:
            saved = json.loads((self._dir / _CURSOR).read_text())
            seg, offset = int(saved["segment"]), int(saved["offset"])
        except (OSError, ValueError, KeyError, TypeError):
            seg, offset = self._segment, 0
        if seg in self._sizes and 0 <= offset <= self._sizes[seg]:
            for older in [s for s in segments if s < seg]:
                self._path(older).unlink(missing_ok=True)
                del self._sizes[older]
            self._segment, self._offset = seg, offset
        if self.pending:
            log.warning(
                "store spool: events from an earlier run to replay (%d bytes)", self.size_bytes
            )

    def _seal(self, seg: int) -> None:
        """End a line cut short by a crash, so the next append does not glue onto it."""
        path = self._path(seg)
        if self._sizes[seg] == 0:
            return
        with path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                return
        with path.open("ab") as f:
            f.write(b"\n")
        self._sizes[seg] += 1
