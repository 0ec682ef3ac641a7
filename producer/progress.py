"""A live progress bar for `submit --wait` and `run`: files, audio hours, speed, ETA, failures."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from batchscribe.common.errors import RedisUnavailableError
from batchscribe.common.state import StateStore
from batchscribe.producer.status import BatchView, fmt_duration, fmt_hours, load_view

WIDTH = 28


def progress_line(view: BatchView) -> str:
    frac = view.settled / view.total if view.total else 1.0
    bar = "#" * int(frac * WIDTH) + "." * (WIDTH - int(frac * WIDTH))
    speed = view.audio_done / view.elapsed
    line = (f"[{bar}] {view.settled}/{view.total} files · {fmt_hours(view.audio_done)}/"
            f"{fmt_hours(view.audio_total)} audio · {speed:.1f}× real time")
    if not view.complete:
        eta = view.eta
        line += f" · ETA {fmt_duration(eta)}" if eta is not None else " · ETA …"
    if view.counts.get("cancelled"):
        line += f" · cancelled {view.counts['cancelled']}"
    failed = view.counts.get("failed", 0)
    if failed:
        classes = ", ".join(f"{cls} {n}" for cls, n in sorted(view.failed_by_class.items()))
        line += f" · failed {failed}" + (f" ({classes})" if classes else "")
    if view.unserved:
        line += f" · waiting: {view.unserved.split(':', 1)[0]}"
    return line


class StoppedWaiting(RedisUnavailableError):
    """Redis did not answer for the whole patience: the waiting command gives up, the batch goes on."""

    def __init__(self, batch_id: str, seconds: float, last: RedisUnavailableError) -> None:
        super().__init__(f"Redis has not answered for {seconds:.0f} s ({last}); stopped waiting for batch "
                         f"{batch_id}. The batch goes on without this command wherever workers still run "
                         f"it: follow it with `batchscribe status {batch_id}`, or run the same command "
                         "again (BATCHSCRIBE_WAIT_REDIS_TIMEOUT sets how long to wait)")
        self.batch_id = batch_id


WORKERS_EVERY = 10.0  # seconds between checks that a live worker serves the batch


def wait_for_batch(store: StateStore, batch_id: str, stream: TextIO = sys.stderr,
                   interval: float = 0.5, timeout: float | None = None,
                   redis_patience: float = 300.0) -> BatchView:
    """Poll until every file is done or failed; redraw in place on a terminal, else a line every 10 s.

    A Redis restart is waited out; an outage longer than `redis_patience` seconds raises
    `StoppedWaiting`. Every WORKERS_EVERY seconds the line also says when no live worker serves the
    batch (it would wait for ever otherwise).
    """
    tty = stream.isatty()
    last_print = 0.0
    deadline = None if timeout is None else time.monotonic() + timeout
    outage: float | None = None
    unserved, workers_checked = "", time.monotonic()  # submit has just checked (run: workers start)
    while True:
        check = time.monotonic() - workers_checked >= WORKERS_EVERY
        try:
            view = load_view(store, batch_id, check_workers=check)
        except RedisUnavailableError as exc:  # a Redis restart: wait it out, up to the patience
            outage = outage if outage is not None else time.monotonic()
            if time.monotonic() - outage > redis_patience:
                raise StoppedWaiting(batch_id, time.monotonic() - outage, exc) from exc
            stream.write(f"\nRedis unavailable ({exc}); retrying…\n")
            time.sleep(max(interval, 1.0))
            continue
        outage = None
        if check:
            unserved, workers_checked = view.unserved, time.monotonic()
        view.unserved = unserved
        now = time.monotonic()
        if tty:
            stream.write("\r\x1b[2K" + progress_line(view))
            stream.flush()
        elif view.complete or now - last_print >= 10:
            stream.write(progress_line(view) + "\n")
            stream.flush()
            last_print = now
        if view.complete or (deadline is not None and now > deadline):
            if tty:
                stream.write("\n")
            return view
        time.sleep(interval)
