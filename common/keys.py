"""Every Redis key batchscribe uses, spelled here and nowhere else (`common.lua`'s ``K`` helper
mirrors the names scripts derive), and what each key family should look like in a live Redis.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class KeyPattern:
    """A family of keys: its SCAN pattern, what it holds and how long its keys live.

    `ttl` None: the key never expires; a number: it always carries a TTL of at most that many
    seconds. `transient`: the key exists only while work is queued or running, so it is gone when
    the cluster is idle (anything else left over is a leak).
    """

    glob: str
    holds: str
    ttl: float | None = None
    transient: bool = False

    def matches(self, key: str) -> bool:
        return fnmatch.fnmatchcase(key, self.glob)


def pattern_of(key: str, patterns: Iterable[KeyPattern]) -> KeyPattern | None:
    """The first of `patterns` (most specific first) that `key` matches."""
    return next((p for p in patterns if p.matches(key)), None)


# Inputs per file-record hash (`Keys.file`): 64 records of ~100-200 bytes stay one listpack.
FILE_BUCKET = 64
# Hashes the dedupe, fingerprint and reservation indexes are spread over (by 12 bits of a digest):
# up to ~2 million entries each stay listpacks of <= 512 fields (hash-max-listpack-entries; the
# Redis batchscribe starts allows 1024, docs/deploy.md §Redis memory).
BUCKETS = 4096


_HEX_KEY = re.compile(r"(?:[0-9a-f]{2})+\.(?:[0-9a-f]{2})+")


def job_field(job_key: str) -> bytes:
    """A job's field in `Keys.waiting_jobs`: "HEX.HEX" keys (lower-case hex) as their bytes, others
    as they are (`common.lua`'s ``K.waiting`` spells the same)."""
    if _HEX_KEY.fullmatch(job_key):
        return bytes.fromhex(job_key.replace(".", ""))
    return job_key.encode("utf-8", "surrogateescape")


# The longest a summary clock or lock lives (`common.summary`: its period grows with the batch,
# capped here).
SUMMARY_CLOCK_TTL = 1800.0


@dataclass(frozen=True)
class Keys:
    prefix: str = "bs"

    def batch(self, batch_id: str) -> str:
        """Hash: batch header and its counters (queued/running/retrying/done/failed...)."""
        return f"{self.prefix}:batch:{batch_id}"

    def batches(self) -> str:
        """Sorted set of batch ids by creation time."""
        return f"{self.prefix}:batches"

    def live_batches(self) -> str:
        """Set of the ids of batches not finished yet (their `run_summary.json` is kept fresh)."""
        return f"{self.prefix}:batches:live"

    def summary_clock(self, batch_id: str) -> str:
        """String with TTL: when a batch's `run_summary.json` was last rewritten, what it counted
        and what the rewrite cost (`common.summary`: one rewrite at a time, cluster-wide)."""
        return f"{self.prefix}:summary:{batch_id}"

    def summary_lock(self, batch_id: str) -> str:
        """String with TTL: held for the instant a summary is renamed into place, so a mid-batch
        refresh never lands over the final summary."""
        return f"{self.prefix}:summary-lock:{batch_id}"

    def file(self, batch_id: str, index: int | str) -> str:
        """Hash: the records of FILE_BUCKET inputs of a batch (index // FILE_BUCKET): field ``SLOT``
        (index % FILE_BUCKET) is what the producer wrote, ``SLOTs`` what became of it since
        (`common.records`)."""
        return f"{self.prefix}:files:{batch_id}:{int(index) // FILE_BUCKET}"

    def failed(self, batch_id: str, error_class: str) -> str:
        """Sorted set: the indexes (score and member) of a batch's files that failed with this class."""
        return f"{self.prefix}:batch:{batch_id}:failed:{error_class}"

    def output_reservations(self, digest: bytes) -> str:
        """Hash: 16-byte digest of an output path -> the input and batch writing it (released when
        that batch completes); one of BUCKETS hashes, by the digest's first 12 bits."""
        return f"{self.prefix}:outputs:{digest.hex()[:3]}"

    def job(self, job_key: str) -> str:
        """Hash: one unit of engine work = content hash + result-changing options (dedupe), from its
        first start until its last input has its outcome (then only its result says it is done)."""
        return f"{self.prefix}:job:{job_key}"

    def waiting_jobs(self, job_key: str) -> str:
        """Hash: jobs claimed or queued that never started, one field each (`job_field`), in one of
        BUCKETS hashes by the key's first 3 characters: a job's own hash costs ~200 bytes more."""
        return f"{self.prefix}:jobs:{job_key[:3]}"

    def targets(self, job_key: str) -> str:
        """List of "batch_id:index" inputs that want this job's result."""
        return f"{self.prefix}:job:{job_key}:targets"

    def result(self, job_key: str) -> str:
        """String: where the done job's result is stored, its size and sha256 (zlib JSON, a few
        hundred bytes: `common.cache`; the transcript itself is on the output storage), kept for
        dedupe hits. (Before the result store, ``result:JOB`` held the transcript itself: a key of
        its own, so that no version takes the other's value for its own.)"""
        return f"{self.prefix}:cached:{job_key}"

    def fingerprints(self, digest: bytes) -> str:
        """Hash: 16-byte digest of "path|size|mtime_ns" -> sha256 (32 bytes) + duration, so
        re-submits skip hashing; one of BUCKETS hashes by the digest's first 12 bits."""
        return f"{self.prefix}:fp:{digest.hex()[:3]}"

    def events(self) -> str:
        """Stream: one entry per attempt outcome (the real-time log)."""
        return f"{self.prefix}:events"

    def inflight(self, endpoint: str) -> str:
        """Sorted set: deliveries running on an endpoint now (member job key, score start time)."""
        return f"{self.prefix}:inflight:{endpoint}"

    def endpoint_stats(self, endpoint: str) -> str:
        """Hash: per-endpoint counters (done, failed by class, audio seconds)."""
        return f"{self.prefix}:epstats:{endpoint}"

    def endpoint_set(self) -> str:
        """Hash: the cluster's published endpoint set (version, yaml, source, applied_at)."""
        return f"{self.prefix}:endpoints"

    def owner(self, endpoint: str) -> str:
        """String with TTL: which worker VM runs this endpoint's consumer (cluster-wide limit)."""
        return f"{self.prefix}:owner:{endpoint}"

    def vms(self) -> str:
        """Sorted set: worker VMs by last heartbeat time."""
        return f"{self.prefix}:vms"

    def health(self, endpoint: str) -> str:
        """String with TTL: JSON health of one endpoint (probe, circuit breaker) as its owner last
        assessed it; consumers read it to decide whether to call the engine."""
        return f"{self.prefix}:health:{endpoint}"

    def vm(self, hostname: str) -> str:
        """String with TTL: a worker VM's supervisor heartbeat (its pid and the consumers it runs)."""
        return f"{self.prefix}:vm:{hostname}"

    def consumer(self, node: str) -> str:
        """String with TTL: one consumer's heartbeat (node "ENDPOINT@HOST": pid, queues, deliveries)."""
        return f"{self.prefix}:consumer:{node}"

    def consumers(self) -> str:
        """Sorted set: consumer nodes by last heartbeat time (to find the live ones without SCAN)."""
        return f"{self.prefix}:consumers"

    def delayed(self) -> str:
        """Sorted set: jobs waiting to be published again (member job key, score due time)."""
        return f"{self.prefix}:delayed"

    def delayed_promoting(self) -> str:
        """Sorted set: delayed jobs a promoter is publishing now (score: its promotion deadline)."""
        return f"{self.prefix}:delayed:promoting"

    def delayed_specs(self) -> str:
        """Hash: job key -> JSON of the task to publish for a delayed job (queue, options, …)."""
        return f"{self.prefix}:delayed:specs"

    def batchkit_ids(self) -> str:
        """Hash: batch-processing-kit's integer batch id -> our batch id (`batchscribe serve`)."""
        return f"{self.prefix}:batchkit:ids"

    def batchkit_next(self) -> str:
        """String: the last integer batch id given out to a batch-processing-kit client."""
        return f"{self.prefix}:batchkit:next"

    def patterns(self, result_ttl: int, owner_ttl: float, lease_ttl: float = 30,
                 summary_ttl: float = SUMMARY_CLOCK_TTL) -> list[KeyPattern]:
        """Every key family above, most specific first, with the lifetime each must have.

        `result_ttl` is Settings.result_ttl (0: results are kept forever); `owner_ttl` is the
        ownership TTL the worker VMs run with (their heartbeats and endpoint health live as long);
        `lease_ttl` is Settings.lease_ttl (a consumer's heartbeat lives as long as its leases);
        `summary_ttl` bounds the summary clocks and locks.
        """
        p = self.prefix
        return [
            KeyPattern(f"{p}:batch:*:failed:*", "indexes of a batch's failed files of one class (zset)"),
            KeyPattern(f"{p}:batch:*", "a batch's header and counters (hash)"),
            KeyPattern(f"{p}:batches", "batch ids by creation time (zset)"),
            KeyPattern(f"{p}:batches:live", "ids of batches not finished yet (set)", transient=True),
            KeyPattern(f"{p}:summary:*", "when a batch's run summary was last rewritten (string)",
                       ttl=summary_ttl),
            KeyPattern(f"{p}:summary-lock:*", "a run summary being renamed into place (string)",
                       ttl=summary_ttl),
            KeyPattern(f"{p}:files:*", "64 inputs of a batch (hash)"),
            KeyPattern(f"{p}:outputs:*", "output paths running batches write (hash)", transient=True),
            KeyPattern(f"{p}:job:*:targets", "inputs waiting for a job's result (list)", transient=True),
            KeyPattern(f"{p}:job:*", "one unit of engine work under way (hash)"),
            KeyPattern(f"{p}:jobs:*", "jobs waiting for their first start (hash)"),
            KeyPattern(f"{p}:cached:*", "where a job's cached result is stored (string)",
                       ttl=result_ttl or None),
            KeyPattern(f"{p}:result:*", "a transcript cached in Redis by a version before the result "
                       "store; never read (string)", ttl=result_ttl or None),
            KeyPattern(f"{p}:fp:*", "fingerprint cache of input files (hash)"),
            KeyPattern(f"{p}:events", "the attempt log (capped stream)"),
            KeyPattern(f"{p}:inflight:*", "deliveries running on an endpoint (zset)", transient=True),
            KeyPattern(f"{p}:epstats:*", "an endpoint's counters (hash)"),
            KeyPattern(f"{p}:endpoints", "the published endpoint set (hash)"),
            KeyPattern(f"{p}:owner:*", "the VM that runs an endpoint's consumer (string)", ttl=owner_ttl),
            KeyPattern(f"{p}:vms", "worker VMs by last heartbeat (zset)"),
            KeyPattern(f"{p}:health:*", "an endpoint's health as its owner saw it (string)", ttl=owner_ttl),
            KeyPattern(f"{p}:vm:*", "a worker VM's supervisor heartbeat (string)", ttl=owner_ttl),
            KeyPattern(f"{p}:consumers", "consumer nodes by last heartbeat (zset)"),
            KeyPattern(f"{p}:consumer:*", "a consumer's heartbeat (string)", ttl=lease_ttl),
            KeyPattern(f"{p}:delayed:promoting", "delayed jobs being published (zset)", transient=True),
            KeyPattern(f"{p}:delayed:specs", "the task of each delayed job (hash)", transient=True),
            KeyPattern(f"{p}:delayed", "jobs waiting to run again (zset)", transient=True),
            KeyPattern(f"{p}:batchkit:ids", "batch-kit integer ids -> batch ids (hash)"),
            KeyPattern(f"{p}:batchkit:next", "the last batch-kit integer id given out (string)"),
        ]


# Kombu's Redis transport keeps unacked deliveries here (not under our prefix). `make_app` passes
# this name to kombu explicitly, so the lease keeper and kombu cannot disagree about it.
KOMBU_UNACKED_INDEX = "unacked_index"
KOMBU_UNACKED = "unacked"  # its hash of unacked messages by delivery tag (passed to kombu likewise)
KOMBU_UNACKED_MUTEX_EXPIRE = 15  # seconds: a consumer killed mid-sweep blocks sweeps this long

# The keys kombu's Redis transport writes for us (Celery's broker), outside our prefix. The queue
# lists are named by common.queues (endpoint_queue, pool_queue).
KOMBU_KEYS = (
    KeyPattern(KOMBU_UNACKED, "kombu: unacked deliveries (hash)"),
    KeyPattern(KOMBU_UNACKED_INDEX, "kombu: when each unacked delivery was last seen (zset)"),
    KeyPattern("unacked_mutex", "kombu: its restore sweep's lock (string)", ttl=KOMBU_UNACKED_MUTEX_EXPIRE),
    KeyPattern("_kombu.binding.*", "kombu: the queues bound to an exchange (set)"),
    KeyPattern("_kombu.binding_permanent.*", "kombu: the bindings of an exchange that never expire (set)"),
    KeyPattern("_kombu.binding_deadlines", "kombu: when each expiring binding lapses (zset)"),
    KeyPattern("ep.*", "kombu: an endpoint's queue (list)", transient=True),
    KeyPattern("pool.*", "kombu: a language pool's queue (list)", transient=True),
)

# Kombu's Redis transport keeps each queue in one list per priority step: the queue's own name for
# step 0, NAME + sep + step for the others (kombu.transport.redis: PRIORITY_STEPS, Channel.sep,
# Channel._q_for_pri). Messages are LPUSHed and BRPOPed, so a list's oldest message is its last.
KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)
KOMBU_SEP = "\x06\x16"


def kombu_queue_lists(queue: str) -> list[str]:
    """Every Redis list that holds `queue`'s ready messages, in the order kombu consumes them
    (`tests/integration/test_metrics.py` checks this against kombu's own channel)."""
    return [f"{queue}{KOMBU_SEP}{step}" if step else queue for step in KOMBU_PRIORITY_STEPS]
