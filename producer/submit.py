"""Submit a batch: discover → fingerprint → claim jobs in Redis → publish one task per unique file.

Dedupe is correct under concurrency because claiming is one Lua script per chunk: for each job it
answers *claimed* (we publish), *attached* (another producer or an earlier batch will deliver our
input too) or *done* (a cached result: we write the output, no engine call). A producer killed
between claim and publish leaves a claim that expires after `claim_ttl`; every producer that
attached to it waits that long at most and then claims and publishes it itself.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import tempfile
import time
import uuid
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchscribe.common.errors import InputError, OutputConflictError, PathNotAllowedError, ProcessingError
from batchscribe.common.locations import is_blob, parse_blob, shown
from batchscribe.common.models import (
    FileRecord,
    JobOptions,
    TranscriptionOptions,
    compact_options,
    job_key,
    options_from_dict,
)
from batchscribe.common.names import printable
from batchscribe.common.outcomes import deliver_cached, deliver_failure
from batchscribe.common.output import MEDIA_FORMAT, output_for
from batchscribe.common.publish import Publisher, TaskSpec, input_ref
from batchscribe.common.queues import queue_for, task_for
from batchscribe.common.state import StateStore, common_base, target_id
from batchscribe.common.summary import complete_batch
from batchscribe.producer.discover import Discovered, Discovery, Found, outside_roots
from batchscribe.producer.fingerprint import fingerprint_files

log = logging.getLogger(__name__)
KEEP_LINKS = 20  # symlinked folders listed in the batch header (all are counted)


CHUNK = 2000  # files per step of a submit: its memory is what CHUNK files need, whatever the batch's size


@dataclass
class SubmitProgress:
    """How far a submit is, for a progress display: files found and fingerprinted (first pass),
    then queued (claimed and published, or answered from the cache)."""

    batch_id: str
    phase: str = "hashing"  # then "queueing"
    found: int = 0
    hashed: int = 0
    queued: int = 0


@dataclass
class SubmitReport:
    batch_id: str
    files: int = 0
    published: int = 0  # new engine work (one task per unique content)
    duplicates: int = 0  # same content as an earlier input of this batch: that one's job serves it too
    attached: int = 0  # same content already queued or running for another batch or producer
    cached: int = 0  # already transcribed: output written from the cache, no engine call
    failed_now: int = 0  # unusable inputs, failed at submit with a reason
    skipped: list[str] = field(default_factory=list)  # not media (the first KEEP_SKIPPED)
    links: list[str] = field(default_factory=list)  # symlinked folders, not followed
    seconds: float = 0.0
    skipped_count: int = 0  # not media, all of them


def unique_outputs(out: str, files: Sequence[tuple[str, str]], options: JobOptions) -> list[str]:
    """Each input's output location; two inputs that would share one refuse the batch, naming both,
    and so does an output that would overwrite an input.

    Discovery makes them distinct (`producer.discover`); this is the guarantee, before anything is
    written or queued.
    """
    outputs = [output_for(out, rel, options) for _, rel in files]
    owner: dict[str, str] = {}
    inputs = {path for path, _ in files}
    for (path, _), output in zip(files, outputs):
        other = owner.setdefault(output, path)
        if other != path:
            raise InputError(f"{printable(shown(other))} and {printable(shown(path))} would both be written "
                             f"to {printable(shown(output))}; submit them in separate batches or to separate "
                             "--out folders")
        if output in inputs:
            raise InputError(f"{printable(shown(output))} is an input and would be overwritten by its own "
                             "output; choose another --out folder")
    return outputs


def resolve_out(out_dir: str | Path) -> str:
    """The output folder as it is stored: an absolute path, or a blob prefix's canonical location
    (without a SAS). A blob container is created when missing."""
    text = str(out_dir)
    if not is_blob(text):
        return str(Path(text).expanduser().resolve())
    from batchscribe.common.storage import blob_store

    location = parse_blob(text)
    try:
        blob_store().ensure_container(location)
    except ProcessingError as exc:
        raise InputError(f"cannot write to {shown(location.canonical)}: {exc.reason}") from exc
    return location.canonical


def output_clash(clashes: Sequence[tuple[str, str]]) -> OutputConflictError:
    """The refusal when outputs are being written by another running batch (`StateStore.reserve_outputs`)."""
    output, other = clashes[0]
    more = f" (and {len(clashes) - 1} more of its outputs)" if len(clashes) > 1 else ""
    return OutputConflictError(f"{output} is being written by batch {other}, which is still running{more}; "
                      f"wait for it (batchscribe status {other}) or choose another --out")


def confined(roots: Sequence[Path], paths: Sequence[str | Path]) -> None:
    """Raise `PathNotAllowedError` naming the first of `paths` outside `roots` (and how many more)."""
    outside = outside_roots(paths, roots)
    if outside:
        more = f" (and {len(outside) - 1} more)" if len(outside) > 1 else ""
        raise PathNotAllowedError(f"{outside[0]}{more} is outside the folders this server may use "
                                  f"(--allow-root: {', '.join(str(r) for r in roots)})")


def new_batch_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


class Submitter:
    def __init__(self, store: StateStore, publisher: Publisher, claim_ttl: int) -> None:
        self.store = store
        self.publisher = publisher
        self.claim_ttl = claim_ttl
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"

    def submit(self, inputs: Sequence[str | Path], out_dir: str | Path, options: JobOptions,
               formats: Sequence[str] = ("json",), batch_id: str | None = None, display_name: str = "",
               confine: Sequence[Path] = (), log_folder: str = "",
               progress: Callable[[SubmitProgress], None] | None = None) -> SubmitReport:
        """`confine` (`batchscribe serve`'s allowed roots): refuse the batch, before anything is
        queued, if an input, a file found under one (a symlink inside a folder) or the output
        folder is outside them. `log_folder`: where workers write each file's engine log (absolute).
        `progress` is told how far discovery, hashing and queueing are, every CHUNK files."""
        began = time.monotonic()
        if confine and any(is_blob(str(p)) for p in [*inputs, out_dir]):
            raise PathNotAllowedError("this server reads and writes only its allowed folders, "
                                      "not blob storage")
        out = resolve_out(out_dir)
        if confine:
            confined(confine, [*inputs, out])
        found = Discovery(inputs, exclude=[out, *([Path(log_folder)] if log_folder else [])])
        report = self._submit(found, found.base, found, inputs, out, options, formats, batch_id, display_name,
                              log_folder, confine, progress)
        report.seconds = time.monotonic() - began
        return report

    def submit_found(self, found: Discovered, inputs: Sequence[str | Path], out_dir: str | Path,
                     options: JobOptions, formats: Sequence[str] = ("json",),
                     batch_id: str | None = None, display_name: str = "",
                     log_folder: str = "") -> SubmitReport:
        """Submit files already found, each with its relative output path; `inputs` names them in the
        batch header. `watch` gives the files that landed, with the paths `submit DIR…` would give.
        A conversion's batch writes media (`formats` is ``media``)."""
        began = time.monotonic()
        out = str(out_dir) if is_blob(str(out_dir)) else str(Path(out_dir).expanduser().resolve())
        files = [(path, rel, found.blobs.get(path)) for path, rel in found.files]
        walk = _Listed(found.skipped, found.links)
        report = self._submit(files, common_base(p for p, _ in found.files), walk, inputs, out, options,
                              formats, batch_id, display_name, log_folder, (), None)
        report.seconds = time.monotonic() - began
        return report

    def _submit(self, files: Iterable[Found], base: str, walk: _Listed | Discovery,
                inputs: Sequence[str | Path], out: str, options: JobOptions, formats: Sequence[str],
                batch_id: str | None, display_name: str, log_folder: str, confine: Sequence[Path],
                progress: Callable[[SubmitProgress], None] | None) -> SubmitReport:
        """Two passes over the files, CHUNK at a time, so that memory stays flat whatever their number:
        records, fingerprints and output reservations first (a refusal leaves no trace: nothing is
        queued yet), then claims and tasks, longest first across the whole batch. What the second
        pass needs of each file waits in a temp file (`_Spool`), not in memory."""
        if not isinstance(options, TranscriptionOptions):
            formats = (MEDIA_FORMAT,)
        report = SubmitReport(batch_id=batch_id or new_batch_id())
        bid = report.batch_id
        header = {"input": " ".join(shown(p) for p in inputs), "out": out, "options": options.to_dict(),
                  "formats": ",".join(formats), "skipped": "0", "owner": self.owner, "links": "0",
                  "link_list": [], "display_name": display_name, "log_folder": log_folder, "base": base}
        self.store.create_batch(bid, header, [])
        told = SubmitProgress(bid)
        with _Spool() as spool:
            try:
                under_out: set[str] = set()  # inputs inside the output folder (an output might overwrite one)
                for chunk in _chunks(iter(files), CHUNK):
                    if confine:
                        confined(confine, [path for path, _, _ in chunk])
                    self._first_pass(bid, chunk, out, options, spool, under_out)
                    told.found = told.hashed = len(spool)
                    if progress is not None:
                        progress(told)
                self.store.mark_batch(bid, skipped=str(walk.skipped_count), links=str(len(walk.links)),
                                      link_list=json.dumps(walk.links[:KEEP_LINKS]))
            except BaseException:
                self._leave_no_trace(bid, spool, options)
                raise
            report.files, report.skipped, report.links = len(spool), walk.skipped, walk.links
            report.skipped_count = walk.skipped_count
            told.phase = "queueing"
            self._second_pass(bid, spool, options, report, told, progress)
        if not report.files:  # nothing to settle, so nothing would complete it: it is complete now
            complete_batch(self.store, bid)
        return report

    def _first_pass(self, batch_id: str, chunk: list[Found], out: str, options: JobOptions, spool: _Spool,
                    under_out: set[str]) -> None:
        """Records, fingerprints and output reservations of one chunk (nothing is queued)."""
        outputs = unique_outputs(out, [(path, rel) for path, rel, _ in chunk], options)
        blobs = {path: item for path, _, item in chunk if item is not None}
        prints = fingerprint_files([path for path, _, _ in chunk], self.store, blobs=blobs)
        first = len(spool)
        records = [FileRecord(batch_id=batch_id, index=first + i, path=path, rel=rel, output=output,
                              sha256=fp.sha256, size=fp.size, duration=fp.duration,
                              job=job_key(fp.sha256, options) if not fp.error else "")
                   for i, ((path, rel, _), output, fp) in enumerate(zip(chunk, outputs, prints))]
        self.store.add_files(batch_id, records, derived_outputs=True)
        spool.add(records, [fp.error for fp in prints])
        inside = out.rstrip("/") + "/"
        for record in records:
            if record.output in under_out:
                raise InputError(f"{printable(shown(record.output))} is an input and would be overwritten by "
                                 "its own output; choose another --out folder")
            if record.path.startswith(inside):
                under_out.add(record.path)
        clashes = self.store.reserve_outputs(batch_id, [(r.output, r.path) for r in records])
        if clashes:
            output, other = clashes[0]
            if other != batch_id:
                raise output_clash(clashes)
            mine = next(r for r in records if r.output == output)
            earlier = next((r for r in spool.records(batch_id, options) if r.output == output
                            and r.path != mine.path), mine)
            raise InputError(f"{printable(shown(earlier.path))} and {printable(shown(mine.path))} would "
                             f"both be written to {printable(shown(output))}; submit them in separate "
                             "batches or to separate --out folders")
        for path in under_out:
            if self.store.output_holder(path) == batch_id:
                raise InputError(f"{printable(shown(path))} is an input and would be overwritten by its own "
                                 "output; choose another --out folder")

    def _leave_no_trace(self, batch_id: str, spool: _Spool, options: JobOptions) -> None:
        """A batch refused in its first pass: its reservations, records and header go again."""
        outputs: list[str] = []
        for record in spool.records(batch_id, options):
            outputs.append(record.output)
            if len(outputs) >= 5000:
                self.store.release_outputs(batch_id, outputs)
                outputs = []
        self.store.release_outputs(batch_id, outputs)
        self.store.drop_batch(batch_id, len(spool))

    def _second_pass(self, batch_id: str, spool: _Spool, options: JobOptions, report: SubmitReport,
                     told: SubmitProgress, progress: Callable[[SubmitProgress], None] | None) -> None:
        """Failures known now (unusable inputs), then claims and tasks, longest first."""
        for record, reason in spool.failures(batch_id, options):
            deliver_failure(self.store, "", [record], "permanent", reason)
            report.failed_now += 1
        if self.store.batch(batch_id).get("cancelled_at"):  # cancelled while it was being hashed
            self.store.cancel_batch(batch_id, len(spool))
            return
        order = spool.longest_first()
        for start in range(0, len(order), CHUNK):
            records = [spool.record(batch_id, i, options) for i in order[start:start + CHUNK]]
            self._claim_and_publish(records, options, report)
            told.queued = min(len(order), start + CHUNK)
            if progress is not None:
                progress(told)

    def retry_failed(self, batch_id: str, error_class: str | None = None) -> SubmitReport:
        """Queue a batch's failed inputs again, re-checking them first (they may have been fixed)."""
        header = self.store.batch(batch_id)
        if not header:
            raise InputError(f"no batch {batch_id!r} in this Redis")
        if header.get("cancelled_at"):
            raise InputError(f"batch {batch_id} was cancelled: submit its inputs again as a new batch "
                             "(what was transcribed comes from the cache)")
        options = options_from_dict(json.loads(header.get("options") or "{}"))
        report = SubmitReport(batch_id=batch_id)
        # First every output is reserved again, CHUNK failed files at a time (a clash queues nothing),
        # then they are fingerprinted, queued and published a CHUNK at a time: memory stays flat.
        for n, records in enumerate(self._failed_chunks(batch_id, error_class)):
            clashes = self.store.reserve_outputs(batch_id, [(r.output, r.path) for r in records])
            if clashes:  # what the chunks before reserved goes again
                for earlier in itertools.islice(self._failed_chunks(batch_id, error_class), n):
                    self.store.release_outputs(batch_id, [r.output for r in earlier])
                raise output_clash(clashes)
            report.files += len(records)
        self.store.set_live(batch_id, True)  # open again: its summary is kept fresh until it completes
        for records in self._failed_chunks(batch_id, error_class):
            prints = fingerprint_files([r.path for r in records], self.store)
            for record, fp in zip(records, prints):
                record.sha256, record.size, record.duration = fp.sha256, fp.size, fp.duration
                record.job = job_key(fp.sha256, options) if not fp.error else ""
            self.store.requeue_files(batch_id, records)
            good: list[FileRecord] = []
            for record, fp in zip(records, prints):
                if fp.error:
                    deliver_failure(self.store, "", [record], "permanent", fp.error)
                    report.failed_now += 1
                else:
                    good.append(record)
            self._claim_and_publish(good, options, report)
        return report

    def _failed_chunks(self, batch_id: str, error_class: str | None) -> Iterator[list[FileRecord]]:
        """The batch's failed files (of one class), CHUNK at a time in index order."""
        start = 0
        while True:
            indexes = self.store.failed_indexes(batch_id, error_class, start=start, count=CHUNK)
            if not indexes:
                return
            start = indexes[-1] + 1
            yield self.store.files(batch_id, indexes)

    def _claim_and_publish(self, records: list[FileRecord], options: JobOptions,
                           report: SubmitReport, redo: bool = True) -> None:
        """Claim each record's job; publish what we claimed, deliver what is cached, watch the rest.
        `redo`: cached results whose artefact is gone are forgotten and claimed again (once)."""
        verdicts = self.store.claim([(r.job, target_id(r.batch_id, r.index), r.duration) for r in records],
                                    self.owner, self.claim_ttl)
        claimed, attached, cached = [], [], []
        seen: set[str] = set()
        for record, verdict in zip(records, verdicts):
            if verdict == "claimed":
                claimed.append(record)
            elif verdict == "done":
                cached.append(record)
            elif record.job in seen:  # the job of an earlier input of this batch delivers it
                report.duplicates += 1
            else:
                attached.append(record)
            seen.add(record.job)
        self._publish(claimed, options)
        report.published += len(claimed)
        missed = self._deliver_cached(cached)
        report.cached += len(cached) - len(missed)
        report.attached += len(attached)
        if missed and redo:
            self._claim_and_publish(missed, options, report, redo=False)
        self._settle_attached(attached, options, report)

    def _publish(self, records: list[FileRecord], options: JobOptions) -> None:
        """Longest first: the long tail of a batch is its longest file started last."""
        if not records:
            return
        queue, task = queue_for(options), task_for(options)
        opts = compact_options(options)
        ordered = sorted(records, key=lambda r: r.duration, reverse=True)
        # Each message names its input (batch, index) rather than its job, and shows its relative
        # path in Flower: no path or job key stored twice (the worker reads them from the record).
        self.publisher.publish([TaskSpec(input_ref(r.index), opts, r.rel, r.duration, queue, r.batch_id, task)
                                for r in ordered])
        self.store.mark_published([r.job for r in ordered], self.owner)

    def _deliver_cached(self, records: list[FileRecord]) -> list[FileRecord]:
        """Write the outputs of dedupe hits from the cache; returns those it could not (the result
        expired between the claim and now, or what it points at is gone or changed: forgotten),
        which the caller claims again."""
        by_job: dict[str, list[FileRecord]] = {}
        for record in records:
            by_job.setdefault(record.job, []).append(record)
        entries = self.store.results(sorted(by_job))
        missed: list[FileRecord] = []
        for job, wanting in by_job.items():
            entry = entries.get(job)
            missed += wanting if entry is None else deliver_cached(self.store, job, wanting, entry,
                                                                   at_submit=True)
        return missed

    def _settle_attached(self, records: list[FileRecord], options: JobOptions,
                         report: SubmitReport) -> None:
        """Make sure every job we attached to gets published even if its claimer died."""
        pending = {r.job: r for r in records}
        deadline = time.monotonic() + self.claim_ttl + 10
        while pending and time.monotonic() < deadline:
            jobs = list(pending)
            states = self.store.job_states(jobs)
            now = time.time()
            for jk, (state, claim_deadline) in zip(jobs, states):
                if state != "claimed":
                    pending.pop(jk)
                elif claim_deadline < now:
                    self._take_over(pending.pop(jk), options, report, pending)
            if pending:
                time.sleep(0.5)

    def _take_over(self, record: FileRecord, options: JobOptions, report: SubmitReport,
                   pending: dict[str, FileRecord]) -> None:
        log.warning("claim on %s expired (its producer died?); taking it over", printable(record.path))
        verdict = self.store.claim([(record.job, target_id(record.batch_id, record.index), record.duration)],
                                   self.owner, self.claim_ttl)[0]
        if verdict == "claimed":
            self._publish([record], options)
            report.published, report.attached = report.published + 1, report.attached - 1
        elif verdict == "done":
            if self._deliver_cached([record]):  # its artefact is gone and its result forgotten: claim it
                self._take_over(record, options, report, pending)
                return
            report.cached, report.attached = report.cached + 1, report.attached - 1
        else:
            pending[record.job] = record


@dataclass
class _Listed:
    """What `submit_found`'s caller found besides the files (as a `Discovery` says it)."""

    skipped: list[str]
    links: list[str]

    @property
    def skipped_count(self) -> int:
        return len(self.skipped)


def _chunks(items: Iterator[Found], size: int) -> Iterator[list[Found]]:
    while True:
        chunk = list(itertools.islice(items, size))
        if not chunk:
            return
        yield chunk


class _Spool:
    """What a submit's second pass needs of each file, in a temp file (one JSON line per file, read
    back by offset) instead of memory: a few bytes per file in memory (offset, duration)."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile(prefix="batchscribe-submit-")
        self.offsets = array("Q")
        self.durations = array("d")  # -1: the file failed at submit

    def __enter__(self) -> _Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()

    def __len__(self) -> int:
        return len(self.offsets)

    def add(self, records: Sequence[FileRecord], errors: Sequence[str]) -> None:
        self.file.seek(0, os.SEEK_END)
        position = self.file.tell()
        lines = []
        for record, error in zip(records, errors):
            entry = [record.path, record.rel, record.sha256, record.duration, error, record.output]
            line = json.dumps(entry).encode() + b"\n"
            self.offsets.append(position)
            self.durations.append(-1.0 if error else record.duration)
            position += len(line)
            lines.append(line)
        self.file.write(b"".join(lines))

    def _entry(self, index: int) -> list[Any]:
        self.file.seek(self.offsets[index])
        entry: list[Any] = json.loads(self.file.readline())
        return entry

    def record(self, batch_id: str, index: int, options: JobOptions) -> FileRecord:
        path, rel, sha, duration, _, output = self._entry(index)
        return FileRecord(batch_id=batch_id, index=index, path=path, rel=rel, output=output, sha256=sha,
                          duration=duration, job=job_key(sha, options) if sha else "")

    def records(self, batch_id: str, options: JobOptions) -> Iterator[FileRecord]:
        for index in range(len(self)):
            yield self.record(batch_id, index, options)

    def failures(self, batch_id: str, options: JobOptions) -> Iterator[tuple[FileRecord, str]]:
        for index, duration in enumerate(self.durations):
            if duration < 0:
                yield self.record(batch_id, index, options), self._entry(index)[4]

    def longest_first(self) -> array[int]:
        """The indexes of the usable files, longest first (equal lengths in input order)."""
        durations = self.durations
        good = [i for i in range(len(durations)) if durations[i] >= 0]
        good.sort(key=lambda i: -durations[i])
        return array("I", good)
