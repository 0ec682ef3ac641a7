"""Every Redis key batchscribe uses, spelled here and nowhere else."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "bs"

    def batch(self, batch_id: str) -> str:
        """Hash: batch header and its counters (queued/running/retrying/done/failed...)."""
        return f"{self.prefix}:batch:{batch_id}"

    def batches(self) -> str:
        """Sorted set of batch ids by creation time."""
        return f"{self.prefix}:batches"

    def file(self, batch_id: str, index: int | str) -> str:
        """Hash: one input file of a batch (FileRecord)."""
        return f"{self.prefix}:file:{batch_id}:{index}"

    def failed(self, batch_id: str) -> str:
        """Set of file indexes of a batch that failed."""
        return f"{self.prefix}:batch:{batch_id}:failed"

    def output_claims(self) -> str:
        """Hash: digest of an output path -> the batch writing it (released when that batch completes)."""
        return f"{self.prefix}:outputs"

    def job(self, job_key: str) -> str:
        """Hash: one unit of engine work = content hash + result-changing options (dedupe)."""
        return f"{self.prefix}:job:{job_key}"

    def targets(self, job_key: str) -> str:
        """List of "batch_id:index" inputs that want this job's result."""
        return f"{self.prefix}:job:{job_key}:targets"

    def result(self, job_key: str) -> str:
        """String: the job's transcript (zlib JSON), kept for dedupe hits."""
        return f"{self.prefix}:result:{job_key}"

    def probe_cache(self) -> str:
        """Hash: "path|size|mtime_ns" -> "sha256|duration", so re-submits skip hashing."""
        return f"{self.prefix}:probe"

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

    def health(self) -> str:
        """Hash: endpoint name -> JSON health as its owner last saw it."""
        return f"{self.prefix}:health"

    def delayed(self) -> str:
        """Sorted set: jobs waiting to be published again (member job key, score due time)."""
        return f"{self.prefix}:delayed"

    def delayed_claims(self) -> str:
        """Sorted set: delayed jobs a promoter is publishing now (score: when its claim expires)."""
        return f"{self.prefix}:delayed:claims"

    def delayed_specs(self) -> str:
        """Hash: job key -> JSON of the task to publish for a delayed job (queue, options, …)."""
        return f"{self.prefix}:delayed:specs"


# Kombu's Redis transport keeps unacked deliveries here (not under our prefix). `make_app` passes
# this name to kombu explicitly, so the lease keeper and kombu cannot disagree about it.
KOMBU_UNACKED_INDEX = "unacked_index"
