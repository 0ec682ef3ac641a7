"""`batchscribe run`: the whole pipeline on one machine (private Redis, local consumers, cleanup)."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import click

from batchscribe.cli.base import build_options, guarded, settings_for, transcription_options
from batchscribe.cli.batches import submit_batch
from batchscribe.common.config import EndpointSet, default_local_endpoints, load_endpoints


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--config", "config_path", type=click.Path(), default=None,
              help="Endpoint YAML (default: one local endpoint sized to this machine).")
@click.option("--broker", default=None, metavar="URL",
              help="Use this Redis instead of starting a private one.")
@transcription_options
@guarded
def run(inputs: tuple[str, ...], out: str, config_path: str | None, broker: str | None, txt: bool,
        **kw: Any) -> None:
    """Transcribe INPUTS on this machine: private Redis, local workers, progress, then clean up."""
    from batchscribe.private_redis import PrivateRedis
    from batchscribe.worker.supervisor import Supervisor

    opts = build_options(kw)
    endpoints: EndpointSet = load_endpoints(config_path) if config_path else default_local_endpoints()
    private = None if broker else PrivateRedis().start()
    settings = settings_for(broker or private.url)  # type: ignore[union-attr]
    log_path = Path(tempfile.gettempdir()) / f"batchscribe-run-{os.getpid()}.log"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: stop workers, stop Redis
    with open(log_path, "wb") as log_file:
        supervisor = Supervisor(settings, endpoints, config_path=config_path, log_file=log_file, grace=10,
                                follow_registry=False)
        thread = threading.Thread(target=supervisor.run, name="supervisor", daemon=True)
        thread.start()
        try:
            click.echo(f"{len(endpoints)} endpoint(s): "
                       f"{', '.join(f'{e.name} ({e.engine}, {e.concurrency} at once)' for e in endpoints)}; "
                       f"worker log: {log_path}", err=True)
            code = submit_batch(settings, inputs, out, opts, txt, None, wait=True)
        finally:
            supervisor.request_stop()
            thread.join(timeout=30)
            if private is not None:
                private.close()
    sys.exit(code)
