"""What a batch looks like now: counts, audio, speed, failures grouped by error class."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field

from batchscribe.common.errors import InputError
from batchscribe.common.models import FileRecord, TranscriptionOptions
from batchscribe.common.names import printable
from batchscribe.common.queues import pool_queue
from batchscribe.common.state import StateStore, served_queues

SHOW_FAILURES = 20
SHOW_LINKS = 5  # symlinked folders named on one line


@dataclass
class BatchView:
    batch_id: str
    header: dict[str, str]
    counts: dict[str, int]
    total: int
    audio_total: float
    audio_done: float
    failures: dict[str, list[FileRecord]] = field(default_factory=dict)
    unserved: str = ""  # why nothing will take the batch's files now ("" = a live worker serves it)

    @property
    def settled(self) -> int:
        return self.counts.get("done", 0) + self.counts.get("failed", 0)

    @property
    def complete(self) -> bool:
        return self.settled >= self.total

    @property
    def elapsed(self) -> float:
        created = float(self.header.get("created_at") or time.time())
        finished = float(self.header.get("finished_at") or 0)
        return max(1e-6, (finished if finished and self.complete else time.time()) - created)


def load_view(store: StateStore, batch_id: str, with_failures: bool = True,
              check_workers: bool = False) -> BatchView:
    """The batch now; `check_workers`: also whether a live worker serves its queue (while unfinished)."""
    header = store.batch(batch_id)
    if not header:
        raise InputError(f"no batch {batch_id!r} in this Redis (see `batchscribe status` for recent ones)")
    counts = {k[2:]: int(v) for k, v in header.items() if k.startswith("n_")}
    view = BatchView(batch_id, header, counts, int(header.get("total", 0)),
                     float(header.get("audio_total") or 0), float(header.get("audio_done") or 0))
    if with_failures and counts.get("failed"):
        grouped: dict[str, list[FileRecord]] = defaultdict(list)
        for record in store.files(batch_id, store.failed_indexes(batch_id)):
            grouped[record.error_class or "unknown"].append(record)
        view.failures = dict(grouped)
    if check_workers and not view.complete:
        options = TranscriptionOptions.from_dict(json.loads(header.get("options") or "{}"))
        view.unserved = unserved(store, options)
    return view


def unserved(store: StateStore, options: TranscriptionOptions) -> str:
    """"" when some live consumer (by its heartbeat) takes files with these options, else a one-line
    explanation: such a batch waits until a worker that serves it starts."""
    queue = pool_queue(options.language, options.engine)
    if queue in served_queues(store.consumer_beats()):
        return ""
    engine = f" with engine {options.engine}" if options.engine else ""
    return (f"no live worker serves language {options.language}{engine} (queue {queue}): its files wait "
            "until a worker whose endpoints serve it starts (endpoint `languages`, `engine`)")


def fmt_hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds / 60:.1f} min"


def fmt_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def render_status(view: BatchView) -> str:
    c = view.counts
    speed = view.audio_done / view.elapsed
    lines = [
        f"batch    {view.batch_id}   ({'complete' if view.complete else 'in progress'})",
        f"input    {printable(view.header.get('input', ''))}",
        f"output   {printable(view.header.get('out', ''))}",
        "",
        f"{'files':<10}{'total':>8}{'queued':>8}{'running':>9}{'retrying':>10}{'done':>8}{'failed':>8}",
        f"{'':<10}{view.total:>8}{c.get('queued', 0):>8}{c.get('running', 0):>9}"
        f"{c.get('retrying', 0):>10}{c.get('done', 0):>8}{c.get('failed', 0):>8}",
        "",
        f"audio    {fmt_hours(view.audio_done)} of {fmt_hours(view.audio_total)} transcribed; "
        f"{speed:.1f}× real time over {fmt_duration(view.elapsed)}",
    ]
    if view.unserved:
        lines.append(f"waiting  {view.unserved}")
    skipped = int(view.header.get("skipped", 0) or 0)
    if skipped:
        lines.append(f"skipped  {skipped} file(s) that are not audio or video")
    links = int(view.header.get("links", 0) or 0)
    if links:
        listed = json.loads(view.header.get("link_list") or "[]")
        lines.append(f"skipped  {links_note(listed, links)}")
    lines += render_failures(view)
    return "\n".join(lines)


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
        lines.append(f"  {cls} ({len(records)}):")
        for record in records[:SHOW_FAILURES]:
            lines.append(f"    {printable(record.path)}: {printable(record.reason)}")
        if len(records) > SHOW_FAILURES:
            lines.append(f"    … and {len(records) - SHOW_FAILURES} more (see run_summary.json)")
    return lines


def render_recent(store: StateStore, limit: int = 10) -> str:
    ids = store.batch_ids(limit)
    if not ids:
        return "no batches yet"
    rows = [f"{'batch':<26}{'files':>8}{'done':>8}{'failed':>8}  input"]
    for batch_id in ids:
        view = load_view(store, batch_id, with_failures=False)
        rows.append(f"{batch_id:<26}{view.total:>8}{view.counts.get('done', 0):>8}"
                    f"{view.counts.get('failed', 0):>8}  {printable(view.header.get('input', ''))}")
    return "\n".join(rows)


def render_endpoints(store: StateStore) -> str:
    """The published endpoint set with each endpoint's owner, health and counters."""
    from batchscribe.common.config import parse_endpoints
    from batchscribe.common.errors import ConfigError
    from batchscribe.common.registry import EndpointRegistry

    current = EndpointRegistry(store).current()
    if current is None:
        return "endpoints: none published (workers use their --config file or the built-in local endpoint)"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(current.applied_at))
    lines = [f"endpoint set v{current.version} from {current.source}, applied {when}"]
    try:
        names = [e.name for e in parse_endpoints(current.yaml, current.source, _AnyEnv())]
    except ConfigError as exc:
        return "\n".join([*lines, f"  (cannot be parsed here: {exc})"])
    health = store.health(names)
    owners = store.owners(names)
    lines.append(f"  {'endpoint':<16}{'owner':<16}{'health':<10}{'in flight':>10}{'done':>8}  note")
    for name in names:
        owner = owners[name] or "-"
        h = health.get(name, {})
        state = "up" if h.get("usable") else ("tripped" if h.get("up") else "down") if h else "?"
        stats = store.endpoint_stats(name)
        done, inflight = stats.get("done", "0"), stats["in_flight"]
        lines.append(f"  {name:<16}{owner:<16}{state:<10}{inflight:>10}{done:>8}  {h.get('reason', '')}")
    return "\n".join(lines)


class _AnyEnv(dict[str, str]):
    """Status only needs names: any $VAR reads as a placeholder."""

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: str) -> str:
        return "x"
