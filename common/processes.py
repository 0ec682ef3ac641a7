"""Child processes that never outlive the process (thread) that started them."""

from __future__ import annotations

import signal


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Linux `preexec_fn`: the child gets `sig` when the thread that started it dies, even by SIGKILL.

    A consumer (SIGKILL) so an endpoint's new owner never runs beside an orphan; `run`'s private
    Redis (SIGTERM) so a killed `run` leaves no redis-server behind. Elsewhere a no-op.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
