"""The delayed set: jobs that must run later (retry backoff, a bounce, a deferred duplicate), with
the task to publish for each; promoters claim due entries for a short time while they publish them
(`worker.scheduler`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from batchscribe.common.state.client import StoreBase, as_text, boundary, stamp


@boundary
class Delays(StoreBase):
    def _delay_keys(self) -> list[str]:
        return [self.keys.delayed(), self.keys.delayed_claims(), self.keys.delayed_specs()]

    def claim_due(self, claim_ttl: float, limit: int) -> tuple[str, list[tuple[str, str]]]:
        """Claim up to `limit` due delayed jobs until now + claim_ttl.

        Returns the claim deadline (to release with) and (job_key, spec) pairs.
        """
        now = self.clock()
        deadline = stamp(now + claim_ttl)
        r = [as_text(x) for x in self._run("claim_due", self._delay_keys(), [stamp(now), deadline, limit])]
        return deadline, list(zip(r[0::2], r[1::2]))

    def release_claims(self, deadline: str, job_keys: Sequence[str]) -> None:
        if job_keys:
            self._run("release", self._delay_keys(), [deadline, *job_keys])

    def delayed(self) -> list[tuple[str, float]]:
        """(job_key, due time) of every delayed job, soonest first (status and tests)."""
        entries = cast("list[tuple[bytes, float]]",
                       self.redis.zrange(self.keys.delayed(), 0, -1, withscores=True))
        return [(as_text(m), float(t)) for m, t in entries]
