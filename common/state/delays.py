"""The delayed set: jobs that must run later (retry backoff, a bounce, a deferred duplicate), with
the task to publish for each; promoters take due entries for a short time while they publish them
(`worker.scheduler`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from batchscribe.common.state.client import StoreBase, as_text, boundary, stamp


@boundary
class Delays(StoreBase):
    def _delay_keys(self) -> list[str]:
        return [self.keys.delayed(), self.keys.delayed_promoting(), self.keys.delayed_specs()]

    def take_due(self, hold: float, limit: int) -> tuple[str, list[tuple[str, str]]]:
        """Take up to `limit` due delayed jobs to publish them, for `hold` seconds at most.

        Returns the promotion deadline (to end it with) and (job_key, spec) pairs.
        """
        now = self.clock()
        deadline = stamp(now + hold)
        r = [as_text(x) for x in self._run("take_due", self._delay_keys(), [stamp(now), deadline, limit])]
        return deadline, list(zip(r[0::2], r[1::2]))

    def end_promotion(self, deadline: str, job_keys: Sequence[str]) -> None:
        if job_keys:
            self._run("end_promotion", self._delay_keys(), [deadline, *job_keys])

    def delayed(self) -> list[tuple[str, float]]:
        """(job_key, due time) of every delayed job, soonest first (status and tests)."""
        entries = cast("list[tuple[bytes, float]]",
                       self.redis.zrange(self.keys.delayed(), 0, -1, withscores=True))
        return [(as_text(m), float(t)) for m, t in entries]
