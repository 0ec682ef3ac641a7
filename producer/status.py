"""What a batch looks like now: its status, counts, audio, speed, ETA, failures grouped by error
class; as text (`status`) and as a JSON document (`status --json`, the HTTP API)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from rich.console import Group, RenderableType
from rich.padding import Padding
from rich.text import Text

from batchscribe.common.conversion import ConversionOptions
from batchscribe.common.errors import InputError
from batchscribe.common.models import FileRecord, FileState, JobOptions, options_from_dict
from batchscribe.common.names import printable
from batchscribe.common.output import Outputs
from batchscribe.common.queues import queue_for
from batchscribe.common.state import FILE_PAGE, StateStore, failed_counts, file_pages, served_queues
from batchscribe.producer.display import cells, fmt_duration, fmt_hours, table, texts

SHOW_FAILURES = 20  # failed files kept (and shown) per error class; all are counted
SHOW_LINKS = 5  # symlinked folders named on one line

# What a batch is, as `status --json` and the HTTP API say: waiting, under way, or finished
# (every file done; some failed; cancelled before the end).
BATCH_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


@dataclass
class BatchView:
    batch_id: str
    header: dict[str, str]
    counts: dict[str, int]
    total: int
    audio_total: float
    audio_done: float
    failures: dict[str, list[FileRecord]] = field(default_factory=dict)  # the first SHOW_FAILURES per class
    failed_by_class: dict[str, int] = field(default_factory=dict)
    unserved: str = ""  # why nothing will take the batch's files now ("" = a live worker serves it)

    @property
    def converting(self) -> bool:
        """A conversion batch (`batchscribe convert`), not a transcription."""
        return isinstance(self.options, ConversionOptions)

    @property
    def options(self) -> JobOptions:
        return options_from_dict(json.loads(self.header.get("options") or "{}"))

    @property
    def settled(self) -> int:
        return sum(self.counts.get(s.value, 0) for s in FileState if s.terminal)

    @property
    def status(self) -> str:
        """One of BATCH_STATUSES."""
        if self.header.get("cancelled_at"):
            return "cancelled"
        if self.complete:
            return "failed" if self.counts.get("failed") else "succeeded"
        started = any(self.counts.get(s) for s in ("running", "retrying", "done", "failed"))
        return "running" if started else "queued"

    @property
    def complete(self) -> bool:
        return self.settled >= self.total

    @property
    def elapsed(self) -> float:
        created = float(self.header.get("created_at") or time.time())
        finished = float(self.header.get("finished_at") or 0)
        return max(1e-6, (finished if finished and self.complete else time.time()) - created)

    @property
    def eta(self) -> float | None:
        """Seconds left: by audio when durations are known (long files dominate), else by file
        count; None until something has finished, or when the batch has."""
        if self.complete:
            return None
        if self.audio_done > 0 and self.audio_total > 0:
            return (self.audio_total - self.audio_done) / (self.audio_done / self.elapsed)
        if self.settled:
            return (self.total - self.settled) * self.elapsed / self.settled
        return None


class NoSuchBatch(InputError):
    """The batch id is not in this Redis."""


def load_view(store: StateStore, batch_id: str, with_failures: bool = True,
              check_workers: bool = False) -> BatchView:
    """The batch now, from its header's counters (files by state, failed files by class) whatever
    its size; `with_failures`: also the first SHOW_FAILURES failed files of each class (a few
    records); `check_workers`: also whether a live worker serves its queue (while unfinished)."""
    header = store.batch(batch_id)
    if not header:
        raise NoSuchBatch(f"no batch {batch_id!r} in this Redis (see `batchscribe status` for recent ones)")
    counts = {k[2:]: int(v) for k, v in header.items() if k.startswith("n_")}
    view = BatchView(batch_id, header, counts, int(header.get("total", 0)),
                     float(header.get("audio_total") or 0), float(header.get("audio_done") or 0))
    view.failed_by_class = failed_counts(header)
    if with_failures and counts.get("failed"):
        for cls, indexes in store.failure_samples(batch_id, SHOW_FAILURES).items():
            view.failures[cls] = store.files(batch_id, indexes)
    if check_workers and not view.complete:
        view.unserved = unserved(store, view.options)
    return view


def unserved(store: StateStore, options: JobOptions) -> str:
    """"" when some live consumer (by its heartbeat) takes files with these options, else a one-line
    explanation: such a batch waits until a worker that serves it starts."""
    queue = queue_for(options)
    if queue in served_queues(store.consumer_beats()):
        return ""
    if isinstance(options, ConversionOptions):
        return (f"no live worker converts media (queue {queue}): its files wait until a `batchscribe worker` "
                "with --convert-concurrency of 1 or more starts")
    engine = f" with engine {options.engine}" if options.engine else ""
    return (f"no live worker serves language {options.language}{engine} (queue {queue}): its files wait "
            "until a worker whose endpoints serve it starts (endpoint `languages`, `engine`)")


def iter_records(store: StateStore, batch_id: str, indexes: range | list[int],
                 page: int = FILE_PAGE) -> Iterator[FileRecord]:
    """The batch's records at `indexes`, read `page` at a time: a batch of any size in bounded memory."""
    for records in file_pages(store, batch_id, indexes, page):
        yield from records


def iso_time(stamp: str | float | None) -> str | None:
    """A Redis time stamp as ISO 8601 UTC (what the Azure APIs write), or None when unset."""
    seconds = float(stamp or 0)
    if not seconds:
        return None
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def camel(name: str) -> str:
    """``word_timestamps`` → ``wordTimestamps``: the JSON spelling of our field names."""
    return re.sub(r"_([a-z])", lambda m: m.group(1).upper(), name)


def options_document(header: dict[str, str]) -> dict[str, Any]:
    """The batch's options as the API takes them (camelCase), its outputs among them (`txt`, `srt`,
    `vtt`, `combinedJson`, `logFolder`)."""
    options = options_from_dict(json.loads(header.get("options") or "{}")).to_dict()
    return {camel(k): v for k, v in {**options, **asdict(Outputs.of_batch(header))}.items()}


def batch_document(view: BatchView) -> dict[str, Any]:
    """The batch as JSON: `status --json` prints it; the HTTP API adds its links."""
    h = view.header
    eta = view.eta
    return {
        "id": view.batch_id,
        "displayName": h.get("display_name") or None,
        "status": view.status,
        "createdDateTime": iso_time(h.get("created_at")),
        "finishedDateTime": iso_time(h.get("finished_at")) if view.complete else None,
        "cancelledDateTime": iso_time(h.get("cancelled_at")),
        "input": h.get("input", ""),
        "output": h.get("out", ""),
        "options": options_document(h),
        "counts": {"total": view.total, **{s.value: view.counts.get(s.value, 0) for s in FileState}},
        "failures": dict(sorted(view.failed_by_class.items())),
        "audioSeconds": {"total": round(view.audio_total, 3), "done": round(view.audio_done, 3)},
        "speedTimesRealTime": round(view.audio_done / view.elapsed, 3),
        "etaSeconds": None if eta is None else round(eta, 1),
        "skipped": {"notMedia": int(h.get("skipped", 0) or 0),
                    "symlinkedFolders": int(h.get("links", 0) or 0)},
    }


def render_status(view: BatchView) -> RenderableType:
    """`status BATCH`: the batch, a table of its files by state, its audio, notes and failures."""
    c = view.counts
    speed = view.audio_done / view.elapsed
    head = [
        f"batch    {view.batch_id}   ({'complete' if view.complete else 'in progress'}: {view.status})",
        f"input    {printable(view.header.get('input', ''))}",
        f"output   {printable(view.header.get('out', ''))}",
    ]
    files = table("files", "total", "queued", "running", "retrying", "done", "failed", "cancelled",
                  right=("total", "queued", "running", "retrying", "done", "failed", "cancelled"))
    files.add_row(*cells("", view.total, c.get("queued", 0), c.get("running", 0), c.get("retrying", 0),
                         c.get("done", 0), c.get("failed", 0), c.get("cancelled", 0)))
    audio = f"{fmt_hours(view.audio_done, view.audio_total)} of {fmt_hours(view.audio_total)}"
    done = "converted" if view.converting else "transcribed"
    lines = [f"audio    {audio} {done}; {speed:.1f}× real time over {fmt_duration(view.elapsed)}"]
    if view.header.get("cancelled_at"):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(view.header["cancelled_at"])))
        lines.append(f"cancelled at {when}: {c.get('cancelled', 0)} file(s) had not finished")
    if view.unserved:
        lines.append(f"waiting  {view.unserved}")
    skipped = int(view.header.get("skipped", 0) or 0)
    if skipped:
        lines.append(f"skipped  {skipped} file(s) that are not audio or video")
    links = int(view.header.get("links", 0) or 0)
    if links:
        listed = json.loads(view.header.get("link_list") or "[]")
        lines.append(f"skipped  {links_note(listed, links)}")
    failures = render_failures(view)
    return Group(*texts(head), Text(""), files, *texts(lines),
                 *texts(failures, style="red" if failures else None))


def links_note(listed: list[str], total: int) -> str:
    """``2 symlinked folder(s) not followed: a, b`` (the first few named, printable)."""
    names = ", ".join(printable(p) for p in listed[:SHOW_LINKS])
    more = f" and {total - SHOW_LINKS} more" if total > SHOW_LINKS else ""
    return f"{total} symlinked folder(s) not followed: {names}{more}"


def render_failures(view: BatchView) -> list[str]:
    if not view.failures:
        return []
    lines = ["", f"failed files ({view.counts.get('failed', 0)}), by error class:"]
    for cls, records in sorted(view.failures.items()):
        count = view.failed_by_class.get(cls, len(records))
        lines.append(f"  {cls} ({count}):")
        for record in records[:SHOW_FAILURES]:
            lines.append(f"    {printable(record.path)}: {printable(record.reason)}")
        if count > len(records):
            lines.append(f"    … and {count - len(records)} more (see run_summary.json)")
    return lines


def render_recent(store: StateStore, limit: int = 10) -> RenderableType:
    """The `limit` newest batches, one row each."""
    ids = store.batch_ids(limit)
    if not ids:
        return Text("no batches yet")
    rows = table("batch", "status", "files", "done", "failed", "input", right=("files", "done", "failed"))
    for batch_id in ids:
        view = load_view(store, batch_id, with_failures=False)
        rows.add_row(*cells(batch_id, view.status, view.total, view.counts.get("done", 0),
                            view.counts.get("failed", 0), view.header.get("input", "")))
    return rows


def render_endpoints(store: StateStore) -> RenderableType:
    """The published endpoint set with each endpoint's owner, health and counters."""
    from batchscribe.common.config import parse_without_secrets
    from batchscribe.common.errors import ConfigError
    from batchscribe.common.registry import EndpointRegistry

    current = EndpointRegistry(store).current()
    if current is None:
        return Text("endpoints: none published (workers use their --config file or the built-in local "
                    "endpoint)")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(current.applied_at))
    title = Text(printable(f"endpoint set v{current.version} from {current.source}, applied {when}"))
    try:
        names = [e.name for e in parse_without_secrets(current.yaml, current.source)[0]]
    except ConfigError as exc:
        return Group(title, Text(printable(f"  (cannot be parsed here: {exc})")))
    health = store.health(names)
    owners = store.owners(names)
    rows = table("endpoint", "owner", "health", "in flight", "done", "note", right=("in flight", "done"))
    for name in names:
        h = health.get(name, {})
        state = "up" if h.get("usable") else ("tripped" if h.get("up") else "down") if h else "?"
        stats = store.endpoint_stats(name)
        rows.add_row(*cells(name, owners[name] or "-", state, stats["in_flight"], stats.get("done", "0"),
                            h.get("reason", "")))
    return Group(title, Padding(rows, (0, 0, 0, 2)))
