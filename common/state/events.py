"""The attempt log: one stream entry per attempt outcome (`batchscribe log`, each batch's run.log).

An entry is kept small, because the log is part of what Redis holds for every finished file: its
time is the stream ID (Redis's millisecond clock); the file is named by its batch and index, not
by its path and job key (both are in its record: readers look them up); field names are one
letter (`_SHORT`); a reason keeps its first EVENT_REASON_KEPT characters (the record keeps more).
Readers get the long names back, with ``ts`` (seconds) derived from the ID, and ``file``/``job``
from the record. An entry without a record (no batch and index) names its file and job itself.

The log is capped at EVENTS_KEPT entries (docs/benchmarks.md §11: ~80 bytes each, ~1.6 MB), enough
for `log --last` and for live followers, which read EVENTS_PER_READ entries per command and catch up
every half second; a follower that could not read for longer than the log lasts (EVENTS_KEPT
attempts: about a minute at 350 attempts/s) learns how many entries it missed (`EventPage.missed`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from redis import exceptions as rex

from batchscribe.common.state.batches import Batches, target_id
from batchscribe.common.state.client import as_text, boundary, fields, stream_entries

if TYPE_CHECKING:
    from redis.typing import StreamRangeResponse

EVENTS_KEPT = 20_000  # roughly: the stream is trimmed a node (~60 entries) at a time
EVENTS_PER_READ = 1000
EVENT_REASON_KEPT = 300  # characters: the entry's size stays bounded (records keep 800)

# What an entry holds, by the name readers use -> the field name it is stored under.
_SHORT = {"outcome": "o", "endpoint": "e", "batch": "b", "index": "i", "file": "f", "job": "j",
          "attempt": "a", "seconds": "s", "error_class": "c", "reason": "r"}
_LONG = {short: name for name, short in _SHORT.items()}

Event = tuple[str, dict[str, str]]  # (stream ID, fields by their long names)


@dataclass(frozen=True)
class EventCursor:
    """Where a follower of the log is: the last entry it read, and how many entries the log had
    taken in up to it (Redis's ``entries-added``), so that entries trimmed unread can be counted."""

    last_id: str = "0-0"
    seen: int = 0


@dataclass(frozen=True)
class EventPage:
    """What one read of the log returned: the entries (of the batch asked for), where to read on
    from, how many entries were read, and how many were trimmed away before they could be read."""

    events: list[Event]
    cursor: EventCursor
    read: int
    missed: int


def _stored(values: Mapping[str, Any]) -> dict[str, str]:
    """An entry as it is stored: short names, no empty values, floats to the millisecond."""
    entry: dict[str, str] = {}
    for name, value in values.items():
        text = f"{value:.3f}" if isinstance(value, float) else str(value)
        if text:
            entry[_SHORT[name]] = text[:EVENT_REASON_KEPT] if name == "reason" else text
    return entry


def _read(event_id: str, stored: Mapping[str, str]) -> dict[str, str]:
    """A stored entry by the long names, with ``ts`` from its ID (an unknown field is kept as it is)."""
    entry = {_LONG.get(k, k): v for k, v in stored.items()}
    entry["ts"] = f"{int(event_id.partition('-')[0]) / 1000:.3f}"
    return entry


@boundary
class Events(Batches):
    def log_event(self, **values: Any) -> None:
        """One attempt outcome: `outcome`, `endpoint`, the file as `batch` and `index` (else `file`
        and `job`), and any of `attempt`, `seconds`, `error_class`, `reason`."""
        self.redis.xadd(self.keys.events(), fields(_stored(values)), maxlen=EVENTS_KEPT, approximate=True)

    def events(self, last_id: str = "0-0", count: int = EVENTS_PER_READ, block_ms: int | None = None
               ) -> list[Event]:
        """The entries after `last_id`, oldest first, with their files named."""
        resp = self.redis.xread({self.keys.events(): last_id}, count=count, block=block_ms)
        return self._named(_entries(resp))

    def recent_events(self, count: int, newest: str = "+") -> list[Event]:
        """The last `count` events up to `newest` (an entry ID; default: the end), oldest first."""
        entries = self.redis.xrevrange(self.keys.events(), max=newest, count=count) or []
        return self._named(stream_entries(entries[::-1]))

    def event_cursor(self) -> EventCursor:
        """Where the log ends now: follow it from here."""
        info = self._stream_info()
        return EventCursor(as_text(info.get("last-generated-id")) or "0-0", int(info.get("entries-added", 0)))

    def follow_events(self, cursor: EventCursor, batch: str | None = None,
                      count: int = EVENTS_PER_READ) -> EventPage:
        """The next `count` entries after `cursor` (only `batch`'s are returned and named), and how
        many entries were trimmed after the cursor before they could be read."""
        pipe = self.redis.pipeline(transaction=True)  # the log's counters and the read, as of one moment
        pipe.xinfo_stream(self.keys.events())
        pipe.xread({self.keys.events(): cursor.last_id}, count=count)
        info, resp = pipe.execute(raise_on_error=False)
        if isinstance(info, rex.ResponseError):  # no log yet
            return EventPage([], cursor, 0, 0)
        if isinstance(resp, Exception):
            raise resp
        trimmed = int(info["entries-added"]) - int(info["length"])
        missed = max(0, trimmed - cursor.seen)
        entries = _entries(resp)
        mine = [(eid, e) for eid, e in entries if batch is None or e.get(_SHORT["batch"]) == batch]
        last = entries[-1][0] if entries else cursor.last_id
        return EventPage(self._named(mine), EventCursor(last, cursor.seen + missed + len(entries)),
                         len(entries), missed)

    def wait_for_events(self, cursor: EventCursor, block_ms: int) -> None:
        """Return as soon as an entry after `cursor` exists, or after `block_ms` (a follower's idle wait;
        `follow_events` then reads it)."""
        self.redis.xread({self.keys.events(): cursor.last_id}, count=1, block=block_ms)

    def _stream_info(self) -> dict[str, Any]:
        try:
            return self.redis.xinfo_stream(self.keys.events())
        except rex.ResponseError:  # no log yet
            return {}

    def _named(self, entries: list[tuple[str, dict[str, str]]]) -> list[Event]:
        """Entries by their long names, each file's path and job read from its record (one round
        trip); a file whose record is gone is named "batch:index"."""
        events = [(eid, _read(eid, stored)) for eid, stored in entries]
        targets = list(dict.fromkeys(target_id(e["batch"], int(e["index"]))
                                     for _, e in events if e.get("index", "").isdigit()))
        known = {target_id(r.batch_id, r.index): r for r in self.records(targets)} if targets else {}
        for _, event in events:
            if event.get("index", "").isdigit():
                target = target_id(event["batch"], int(event["index"]))
                record = known.get(target)
                event.setdefault("file", record.path if record else target)
                event.setdefault("job", record.job if record else "")
        return events


def _entries(resp: Any) -> list[tuple[str, dict[str, str]]]:
    # Our client speaks RESP2: a [stream name, entries] pair per stream read (a dict is RESP3).
    streams = cast("list[tuple[bytes, StreamRangeResponse]]", resp or [])
    return [event for _stream, entries in streams for event in stream_entries(entries)]

