"""The event log: one stream entry per attempt outcome (`batchscribe log`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from batchscribe.common.state.client import StoreBase, boundary, fields, stream_entries

if TYPE_CHECKING:
    from redis.typing import StreamRangeResponse

EVENTS_KEPT = 200_000  # roughly: the stream is trimmed approximately


@boundary
class Events(StoreBase):
    def log_event(self, **values: Any) -> None:
        entry = {k: str(v) for k, v in values.items()}
        self.redis.xadd(self.keys.events(), fields(entry), maxlen=EVENTS_KEPT, approximate=True)

    def events(self, last_id: str = "0-0", count: int = 1000, block_ms: int | None = None
               ) -> list[tuple[str, dict[str, str]]]:
        resp = self.redis.xread({self.keys.events(): last_id}, count=count, block=block_ms)
        # Our client speaks RESP2: a [stream name, entries] pair per stream read (a dict is RESP3).
        streams = cast("list[tuple[bytes, StreamRangeResponse]]", resp or [])
        return [event for _stream, entries in streams for event in stream_entries(entries)]

    def recent_events(self, count: int) -> list[tuple[str, dict[str, str]]]:
        """The last `count` events, oldest first."""
        entries = self.redis.xrevrange(self.keys.events(), count=count) or []
        return stream_entries(entries[::-1])
