"""`batchscribe serve`: the HTTP API (FastAPI on uvicorn), with bearer-token auth on by default.

It refuses to start without a token (BATCHSCRIBE_API_TOKENS or --token-file) unless --no-auth,
which serves on localhost only; it binds 127.0.0.1 unless --host says otherwise. The socket is
bound here, before uvicorn starts, so `--port 0` works and the line printed names the real port.

Against a cluster's Redis (--broker / BATCHSCRIBE_REDIS_URL), or with --local on this machine
alone, as `watch` without a broker runs (`cli.run.local_workers`): a private Redis and local
workers (--config) for the life of the server, in a state folder kept across restarts — one per
--batchkit-out, so batch-kit's numbered batches keep counting instead of overwriting batch_1/.
SIGINT and SIGTERM (which uvicorn catches while it serves, then hands on) and SIGHUP stop the
server, then the workers, then Redis; queued files stay queued for the next `serve --local`.
"""

from __future__ import annotations

import os
import signal
import socket
from typing import TYPE_CHECKING

import click

from batchscribe.cli.base import broker_option, guarded, settings_for
from batchscribe.cli.run import StopSignals, held_alone, local_workers, state_folder
from batchscribe.common.config import EndpointSet, default_local_endpoints, load_endpoints
from batchscribe.common.errors import ConfigError
from batchscribe.common.names import printable
from batchscribe.common.settings import Settings, redact
from batchscribe.common.state import StateStore

if TYPE_CHECKING:
    import uvicorn

    from batchscribe.api import ApiConfig


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
@click.option("--local", is_flag=True,
              help="This machine alone, instead of a cluster's Redis: a private Redis and local workers "
              "(--config) for the life of the server, kept across restarts (like `watch` without --broker).")
@click.option("--config", "config_path", type=click.Path(), default=None,
              help="Endpoint YAML of the --local workers (default: one local endpoint sized to this "
              "machine).")
@broker_option
@guarded
def serve(host: str, port: int, allow_roots: tuple[str, ...], token_file: str | None, no_auth: bool,
          batchkit_out: str | None, batchkit_open_localhost: bool, local: bool, config_path: str | None,
          broker: str | None) -> None:
    """Serve the HTTP API: submit batches, follow them, fetch results, cancel (docs at /docs)."""
    from batchscribe.api import ApiConfig, TokenSet

    tokens = _tokens(host, token_file, no_auth)
    config = ApiConfig.build(allow_roots, None if no_auth else TokenSet(tokens), batchkit_out,
                             batchkit_open_localhost)
    endpoints = _local_endpoints(local, config_path, broker)
    sock = listen(host, port)  # before anything starts: a taken port is said at once
    auth = "off (localhost only)" if no_auth else f"{len(tokens)} token(s)"
    if endpoints is None:
        _server(config, settings_for(broker), sock, auth).run(sockets=[sock])
        return
    folder = state_folder("serve", str(config.batchkit_out))
    refusal = (f"another `batchscribe serve --local` on this machine has --batchkit-out "
               f"{config.batchkit_out}; stop it first")
    stop = ServerStop()
    with held_alone(folder, refusal), StopSignals(stop) as signals:
        with local_workers(folder, signals, endpoints, config_path, None, append_log=True) as settings:
            stop.run(_server(config, settings, sock, auth), sock)
    click.echo(f"stopped: server, workers, then Redis; queued files stay queued in {printable(str(folder))} "
               "for the next `serve --local` with this --batchkit-out", err=True)


def _tokens(host: str, token_file: str | None, no_auth: bool) -> list[str]:
    """The API tokens; refuses a server without any (unless --no-auth) and --no-auth off loopback."""
    from batchscribe.api.config import is_loopback, load_tokens, token_file_warning

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
    return tokens


def _local_endpoints(local: bool, config_path: str | None, broker: str | None) -> EndpointSet | None:
    """The endpoints of --local's workers (None: a cluster's Redis, whose workers have their own)."""
    if not local:
        if config_path:
            raise ConfigError("--config is for the workers of `serve --local`; a cluster's workers have "
                              "their own (`batchscribe worker --config`)")
        return None
    if broker:
        raise ConfigError("--local starts a private Redis on this machine and --broker (or "
                          "BATCHSCRIBE_REDIS_URL) names a cluster's: choose one")
    return load_endpoints(config_path) if config_path else default_local_endpoints()


def _server(config: ApiConfig, settings: Settings, sock: socket.socket, auth: str) -> uvicorn.Server:
    """The app on `settings`' Redis, in uvicorn, ready to run on `sock`; says where it listens."""
    import uvicorn

    from batchscribe.api import create_app
    from batchscribe.cli.batches import submitter_for

    store = StateStore.connect(settings)
    app = create_app(config, store, submitter_for(settings, store))
    bound = sock.getsockname()
    where = f"[{bound[0]}]" if sock.family == socket.AF_INET6 else bound[0]
    click.echo(f"batchscribe serve: http://{where}:{bound[1]} (docs /docs) · auth {auth} · allowed roots "
               f"{', '.join(str(r) for r in config.roots)} · broker {redact(settings.redis_url)}", err=True)
    return uvicorn.Server(uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=5,
                                         server_header=False))


class ServerStop:
    """What a stop signal does to `serve --local` (`StopSignals`' callback): uvicorn exits. It
    catches SIGINT and SIGTERM itself while it serves and hands them on once it has stopped (then
    this only says so); SIGHUP, or a signal while the workers start, reaches here first."""

    def __init__(self) -> None:
        self.server: uvicorn.Server | None = None
        self.requested = False

    def __call__(self, signum: int) -> None:
        click.echo(f"\n{signal.Signals(signum).name}: stopping serve", err=True)
        self.requested = True
        if self.server is not None:
            self.server.should_exit = True

    def run(self, server: uvicorn.Server, sock: socket.socket) -> None:
        """Serve on `sock` until stopped (not at all if a stop came first)."""
        self.server = server
        if not self.requested:
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
