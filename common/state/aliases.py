"""batch-processing-kit's integer batch ids: a cluster-wide counter and the map to our batch ids
(`batchscribe serve`'s batch-kit routes). Our ids are strings; batch-kit clients parse integers."""

from __future__ import annotations

from batchscribe.common.state.client import StoreBase, as_text, boundary


@boundary
class Aliases(StoreBase):
    def new_batchkit_id(self) -> int:
        """The next integer id (1, 2, …), unique across every server sharing this Redis."""
        return int(self.redis.incr(self.keys.batchkit_next()))

    def bind_batchkit_id(self, number: int, batch_id: str) -> None:
        self.redis.hset(self.keys.batchkit_ids(), str(number), batch_id)

    def batchkit_batch(self, number: int) -> str | None:
        """Our batch id behind a batch-kit id, or None."""
        return as_text(self.redis.hget(self.keys.batchkit_ids(), str(number))) or None

    def batchkit_ids(self) -> list[int]:
        return sorted(int(n) for n in self.redis.hkeys(self.keys.batchkit_ids()))
