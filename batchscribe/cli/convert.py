"""`batchscribe convert`: media conversion with ffmpeg across the workers (the Azure Batch tutorial's
MP4 → MP3 job, on our queue).

One task per unique input on the `convert` queue; dedupe by content and target options; the same
progress, status, retries by error class and exit codes as transcription (0 all converted, 1 some
failed, 2 usage or input, 3 Redis). Without a cluster (`--broker`, BATCHSCRIBE_REDIS_URL) it runs
like `run`: a private Redis and local converters for the length of the command; that Redis is kept
between runs in a state folder per output folder (as `watch` keeps its own), so converting the
same files into the same folder again runs no ffmpeg at all.
"""

from __future__ import annotations

import sys

import click

from batchscribe.cli.base import broker_option, guarded, keep_typed_sas, settings_for
from batchscribe.cli.batches import submit_batch
from batchscribe.cli.run import held_alone, on_this_machine, state_folder
from batchscribe.common.config import EndpointSet, converter_endpoint
from batchscribe.common.conversion import TARGETS, ConversionOptions
from batchscribe.common.locations import shown
from batchscribe.common.output import Outputs
from batchscribe.producer.submit import resolve_out


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--to", "target", required=True, type=click.Choice(list(TARGETS)),
              help="Target format (audio only: video and subtitles are dropped).")
@click.option("--out", required=True, help="Output folder or blob prefix (az://CONTAINER/PREFIX).")
@click.option("--bitrate", default=None, metavar="RATE", help="Audio bit rate, e.g. 192k (lossy targets; "
              "default: the encoder's).")
@click.option("--sample-rate", type=int, default=None, metavar="HZ",
              help="Output sample rate, e.g. 16000 (default: the input's, or the nearest the target takes).")
@click.option("--channels", type=int, default=None, metavar="N", help="Output channels, e.g. 1 (default: "
              "the input's, at most what the target takes).")
@click.option("--wait", is_flag=True, help="With a cluster: show progress until the batch is finished.")
@click.option("--batch-id", default=None, help="Name the batch (default: time-based id).")
@click.option("--concurrency", type=click.IntRange(1, 1000), default=None, metavar="N",
              help="On this machine: conversions at once (default: its core count).")
@broker_option
@guarded
def convert(inputs: tuple[str, ...], target: str, out: str, bitrate: str | None, sample_rate: int | None,
            channels: int | None, wait: bool, batch_id: str | None, concurrency: int | None,
            broker: str | None) -> None:
    """Convert every media file under INPUTS (folders, files, blob prefixes) to --to, one task per file."""
    options = ConversionOptions(target, bitrate, sample_rate, channels)  # bad options: exit 2, nothing starts
    keep_typed_sas([*inputs, out], cluster=bool(broker))
    if broker:
        sys.exit(submit_batch(settings_for(broker), inputs, out, options, Outputs(), batch_id, wait))
    endpoints = EndpointSet((converter_endpoint(concurrency),), source="<built-in converter>")
    key = resolve_out(out)
    folder = state_folder("convert", key)
    with held_alone(folder, f"another `batchscribe convert` writes to {shown(key)} now; wait for it"):
        on_this_machine(endpoints, None, None, False, None,
                        lambda settings: submit_batch(settings, inputs, out, options, Outputs(), batch_id,
                                                      wait=True, check_workers=False), kept=folder)
