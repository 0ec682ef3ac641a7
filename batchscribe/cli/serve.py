"""`batchscribe serve`: the HTTP API (FastAPI on uvicorn), with bearer-token auth on by default.

It refuses to start without a token (BATCHSCRIBE_API_TOKENS or --token-file) unless --no-auth,
which serves on localhost only; it binds 127.0.0.1 unless --host says otherwise. The socket is
bound here, before uvicorn starts, so `--port 0` works and the line printed names the real port.
"""

from __future__ import annotations

import os
import socket

import click

from batchscribe.cli.base import broker_option, guarded, settings_for
from batchscribe.common.errors import ConfigError
from batchscribe.common.settings import redact
from batchscribe.common.state import StateStore


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface; put TLS in front of it).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port (0: a free one, printed at start).")
@click.option("--allow-root", "allow_roots", multiple=True, required=True,
              type=click.Path(file_okay=False), metavar="DIR",
              help="A folder requests may read inputs from and write outputs to; repeat for more. "
              "Anything outside (after symlinks and '..') is refused.")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="File with API tokens, one per line (besides BATCHSCRIBE_API_TOKENS, comma-separated).")
@click.option("--no-auth", is_flag=True, help="No tokens: serve on localhost only.")
@click.option("--batchkit-out", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Where batch-processing-kit submissions (POST /submit) write: DIR/batch_N/ "
              "(default: FIRST-ALLOW-ROOT/batchkit; must be inside an --allow-root).")
@click.option("--batchkit-open-localhost", is_flag=True,
              help="batch-processing-kit's routes answer clients on this host without a token "
              "(for batch-kit clients that cannot send one).")
@broker_option
@guarded
def serve(host: str, port: int, allow_roots: tuple[str, ...], token_file: str | None, no_auth: bool,
          batchkit_out: str | None, batchkit_open_localhost: bool, broker: str | None) -> None:
    """Serve the HTTP API: submit batches, follow them, fetch results, cancel (docs at /docs)."""
    import uvicorn

    from batchscribe.api import ApiConfig, TokenSet, create_app
    from batchscribe.api.config import is_loopback, load_tokens, token_file_warning
    from batchscribe.cli.batches import submitter_for

    tokens = load_tokens(os.environ, token_file)
    if no_auth and tokens:
        raise ConfigError("--no-auth and API tokens (BATCHSCRIBE_API_TOKENS / --token-file) together: "
                          "choose one")
    if not no_auth and not tokens:
        raise ConfigError("no API token: set BATCHSCRIBE_API_TOKENS (comma-separated) or --token-file FILE "
                          "(e.g. `openssl rand -hex 24`), or --no-auth to serve on localhost only")
    if no_auth and not is_loopback(host):
        raise ConfigError(f"--no-auth serves on localhost only, not on {host}: use a token to serve on "
                          "a network")
    warning = token_file_warning(token_file)
    if warning:
        click.echo(warning, err=True)
    config = ApiConfig.build(allow_roots, None if no_auth else TokenSet(tokens), batchkit_out,
                             batchkit_open_localhost)
    settings = settings_for(broker)
    store = StateStore.connect(settings)
    app = create_app(config, store, submitter_for(settings, store))
    sock = listen(host, port)
    bound = sock.getsockname()
    where = f"[{bound[0]}]" if sock.family == socket.AF_INET6 else bound[0]
    auth = "off (localhost only)" if no_auth else f"{len(tokens)} token(s)"
    click.echo(f"batchscribe serve: http://{where}:{bound[1]} (docs /docs) · auth {auth} · allowed roots "
               f"{', '.join(str(r) for r in config.roots)} · broker {redact(settings.redis_url)}", err=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=5,
                                           server_header=False))
    server.run(sockets=[sock])


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (IPv4 or IPv6, as `host` resolves)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock
