"""`batchscribe emulator`: run the speech-container emulator in the foreground."""

from __future__ import annotations

import asyncio
import logging

import click

from emulator.faults import FaultMode
from emulator.server import EmulatorConfig, serve_forever
from emulator.transcribers import TRANSCRIBE_MODES


@click.command("emulator")
@click.option("--port", "ports", type=click.IntRange(0, 65535), multiple=True, default=(5000,),
              show_default=True, help="Port to listen on; repeat for several independent endpoints "
              "(0 picks a free port, printed at start).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--rtf", type=click.FloatRange(min=0), default=3.0, show_default=True,
              help="Real-time factor: a file is answered audio seconds / RTF after its audio started "
              "(or when its upload ends, if later). 0 answers at the end of the upload.")
@click.option("--capacity", type=click.IntRange(min=0), default=0, show_default=True,
              help="Simultaneous sessions per port; more are refused with HTTP 429. 0: unlimited.")
@click.option("--transcribe", type=click.Choice(TRANSCRIBE_MODES), default="duration", show_default=True,
              help="duration: 'duration 3.20 seconds'; fixed: --text; local: the local engine.")
@click.option("--text", default=EmulatorConfig.text, show_default=True,
              help="The phrase of --transcribe fixed.")
@click.option("--fault", type=click.Choice([m.value for m in FaultMode]), default="none", show_default=True,
              help="Fault injected on every port from the start (change it at /control/fault).")
@click.option("--fault-rate", type=click.FloatRange(0, 1), default=1.0, show_default=True,
              help="Probability that a session gets the fault.")
@click.option("--seed", type=int, default=None, help="Seed of the fault draws (reproducible runs).")
@click.option("-v", "--verbose", is_flag=True, help="Log every connection.")
def emulator_command(ports: tuple[int, ...], host: str, rtf: float, capacity: int, transcribe: str,
                     text: str, fault: str, fault_rate: float, seed: int | None, verbose: bool) -> None:
    """Emulate Azure Speech containers for the real Speech SDK, with speed, capacity and faults."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        logging.getLogger("websockets").setLevel(logging.ERROR)
    config = EmulatorConfig(host=host, rtf=rtf, capacity=capacity, transcribe=transcribe, text=text,
                            seed=seed, fault=FaultMode(fault), fault_rate=fault_rate)
    try:
        asyncio.run(serve_forever(list(ports), config))
    except KeyboardInterrupt:
        pass
