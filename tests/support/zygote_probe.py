"""A Celery app module for tests/integration/test_zygote.py: loaded by `celery -A` inside a consumer
forked by the zygote, it writes down what that process sees (environment, session, title, stdin)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from celery import Celery

app = Celery("zygote-probe", broker="memory://")

_report = os.environ.get("ZYGOTE_PROBE_OUT")
if _report:
    Path(_report).write_text(json.dumps({
        "env": dict(os.environ), "pid": os.getpid(), "sid": os.getsid(0), "argv": sys.argv,
        "title": Path("/proc/self/cmdline").read_bytes().decode(errors="replace").replace("\0", " ").strip(),
        "stdin": os.readlink("/proc/self/fd/0")}))
print("probe loaded", flush=True)
