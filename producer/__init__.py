"""The producer side: find media, fingerprint it, dedupe through Redis, publish tasks, report."""
