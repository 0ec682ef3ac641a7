"""`batchscribe emulator`: run the speech-container emulator in the foreground.

Wired here, above the layers: its `local` mode transcribes with the worker's local engine, which
the emulator package itself does not import (`local_recognizer`).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import click

from batchscribe.emulator.faults import FaultMode
from batchscribe.emulator.transcribers import DEFAULT_TEXT, TRANSCRIBE_MODES, Recognize


def local_recognizer() -> Recognize:
    """The emulator's `local` transcriber: the worker's local engine, loaded on first use."""
    from batchscribe.common.config import Endpoint
    from batchscribe.common.models import TranscriptionOptions
    from batchscribe.worker.engines.base import PreparedAudio
    from batchscribe.worker.engines.local import LocalEngine

    engine = LocalEngine(Endpoint(name="emulator", engine="local"))

    def recognize(wav: Path, seconds: float, language: str, nbest: int) -> list[dict[str, Any]]:
        options = TranscriptionOptions(language=language, nbest=nbest, word_timestamps=True)
        return list(engine.transcribe(PreparedAudio(path=wav, duration=seconds), options).phrases)

    return recognize


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
@click.option("--text", default=DEFAULT_TEXT, show_default=True,
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
    from batchscribe.emulator.server import EmulatorConfig, serve_forever  # needs the azure extra

    config = EmulatorConfig(host=host, rtf=rtf, capacity=capacity, transcribe=transcribe, text=text,
                            seed=seed, fault=FaultMode(fault), fault_rate=fault_rate,
                            recognize=local_recognizer() if transcribe == "local" else None)
    try:
        asyncio.run(serve_forever(list(ports), config))
    except KeyboardInterrupt:
        pass
