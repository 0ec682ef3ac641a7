"""Submit a batch: discover → fingerprint → claim jobs in Redis → publish one task per unique file.

Dedupe is correct under concurrency because claiming is one Lua script per chunk: for each job it
answers *claimed* (we publish), *attached* (another producer or an earlier batch will deliver our
input too) or *done* (a cached result: we write the output, no engine call). A producer killed
between claim and publish leaves a claim that expires after `claim_ttl`; every producer that
attached to it waits that long at most and then claims and publishes it itself.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from batchscribe.common.errors import InputError, OutputConflictError, PathNotAllowedError, ProcessingError
from batchscribe.common.locations import is_blob, parse_blob, shown
from batchscribe.common.models import (
    FileRecord,
    FileState,
    JobOptions,
    TranscriptionOptions,
    job_key,
    options_from_dict,
)
from batchscribe.common.names import printable
from batchscribe.common.outcomes import deliver_cached, deliver_failure
from batchscribe.common.output import MEDIA_FORMAT, output_for
from batchscribe.common.publish import Publisher, TaskSpec
from batchscribe.common.queues import queue_for, task_for
from batchscribe.common.state import StateStore, target_id
from batchscribe.common.summary import complete_batch
from batchscribe.producer.discover import Discovered, discover, outside_roots
from batchscribe.producer.fingerprint import fingerprint_files

log = logging.getLogger(__name__)
KEEP_LINKS = 20  # symlinked folders listed in the batch header (all are counted)


@dataclass
class SubmitReport:
    batch_id: str
    files: int = 0
    published: int = 0  # new engine work (one task per unique content)
    duplicates: int = 0  # same content as an earlier input of this batch: that one's job serves it too
    attached: int = 0  # same content already queued or running for another batch or producer
    cached: int = 0  # already transcribed: output written from the cache, no engine call
    failed_now: int = 0  # unusable inputs, failed at submit with a reason
    skipped: list[str] = field(default_factory=list)  # not media
    links: list[str] = field(default_factory=list)  # symlinked folders, not followed
    seconds: float = 0.0


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
               confine: Sequence[Path] = (), log_folder: str = "") -> SubmitReport:
        """`confine` (`batchscribe serve`'s allowed roots): refuse the batch, before anything is
        written, if an input, a file found under one (a symlink inside a folder) or the output
        folder is outside them. `log_folder`: where workers write each file's engine log (absolute)."""
        began = time.monotonic()
        if confine and any(is_blob(str(p)) for p in [*inputs, out_dir]):
            raise PathNotAllowedError("this server reads and writes only its allowed folders, "
                                      "not blob storage")
        out = resolve_out(out_dir)
        if confine:
            confined(confine, [*inputs, out])
        found = discover(inputs, exclude=[out, *([Path(log_folder)] if log_folder else [])])
        if confine:
            confined(confine, [path for path, _ in found.files])
        report = self.submit_found(found, inputs, out, options, formats, batch_id, display_name, log_folder)
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
        if not isinstance(options, TranscriptionOptions):
            formats = (MEDIA_FORMAT,)
        report = SubmitReport(batch_id=batch_id or new_batch_id(), skipped=found.skipped, links=found.links)
        outputs = unique_outputs(out, found.files, options)
        prints = fingerprint_files([p for p, _ in found.files], self.store, blobs=found.blobs)
        records = [FileRecord(batch_id=report.batch_id, index=i, path=path, rel=rel, output=output,
                              sha256=fp.sha256, size=fp.size, duration=fp.duration, queued_at=time.time(),
                              job=job_key(fp.sha256, options) if not fp.error else "")
                   for i, ((path, rel), output, fp) in enumerate(zip(found.files, outputs, prints))]
        report.files = len(records)
        header = {"input": " ".join(shown(p) for p in inputs), "out": out, "options": options.to_dict(),
                  "formats": ",".join(formats), "skipped": str(len(found.skipped)), "owner": self.owner,
                  "links": str(len(found.links)), "link_list": found.links[:KEEP_LINKS],
                  "display_name": display_name, "log_folder": log_folder}
        self.store.create_batch(report.batch_id, header, records)
        clashes = self.store.reserve_outputs(report.batch_id, [(r.output, r.path) for r in records])
        if clashes:  # refused before anything was written or queued: leave no trace
            self.store.drop_batch(report.batch_id, len(records))
            raise output_clash(clashes)

        bad = [(r, fp.error) for r, fp in zip(records, prints) if fp.error]
        for record, reason in bad:
            deliver_failure(self.store, "", [record], "permanent", reason)
        report.failed_now = len(bad)

        good = [r for r, fp in zip(records, prints) if not fp.error]
        self._claim_and_publish(good, options, report)
        if not records:  # nothing to settle, so nothing would complete it: it is complete now
            complete_batch(self.store, report.batch_id)
        report.seconds = time.monotonic() - began
        return report

    def retry_failed(self, batch_id: str, error_class: str | None = None) -> SubmitReport:
        """Queue a batch's failed inputs again, re-checking them first (they may have been fixed)."""
        header = self.store.batch(batch_id)
        if not header:
            raise InputError(f"no batch {batch_id!r} in this Redis")
        if header.get("cancelled_at"):
            raise InputError(f"batch {batch_id} was cancelled: submit its inputs again as a new batch "
                             "(what was transcribed comes from the cache)")
        options = options_from_dict(json.loads(header.get("options") or "{}"))
        records = [r for r in self.store.files(batch_id, self.store.failed_indexes(batch_id))
                   if error_class is None or r.error_class == error_class]
        report = SubmitReport(batch_id=batch_id, files=len(records))
        clashes = self.store.reserve_outputs(batch_id, [(r.output, r.path) for r in records])
        if clashes:
            raise output_clash(clashes)
        self.store.set_live(batch_id, True)  # open again: its summary is kept fresh until it completes
        prints = fingerprint_files([r.path for r in records], self.store)
        good: list[FileRecord] = []
        for record, fp in zip(records, prints):
            record.sha256, record.size, record.duration = fp.sha256, fp.size, fp.duration
            record.job = job_key(fp.sha256, options) if not fp.error else ""
            self.store.settle_file(target_id(batch_id, record.index), FileState.QUEUED, "",
                                   sha256=record.sha256, duration=record.duration, job=record.job,
                                   attempts=0, error_class="", reason="", finished_at="")
            if fp.error:
                deliver_failure(self.store, "", [record], "permanent", fp.error)
                report.failed_now += 1
            else:
                good.append(record)
        self._claim_and_publish(good, options, report)
        return report

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
        opts = options.to_dict()
        ordered = sorted(records, key=lambda r: r.duration, reverse=True)
        self.publisher.publish([TaskSpec(r.job, opts, r.path, r.duration, queue, r.batch_id, task)
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
