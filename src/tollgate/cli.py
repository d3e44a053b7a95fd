"""The `tollgate` command: serve the gateway, migrate, run the simulator, and operator work.

Thin over the same pieces the server uses: `load_settings` for configuration, `create_app` for
the server, `tollgate.operator` and the store for accounts, tokens and credits. Sub-commands live
in `cli_*.py` modules and are registered here. Exit codes and error output are described in
`tollgate.cli_common`: 0 success, 1 operational failure, 2 usage error.
"""

from __future__ import annotations

import logging
import logging.config
import signal
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
import uvicorn

from tollgate.cli_billing import credits_topup
from tollgate.cli_common import (
    EXIT_FAILURE,
    ConfigOption,
    JsonOption,
    StepProgress,
    console,
    environment_with,
    fail,
    open_database,
    print_json,
    run_with_store,
    settings_with,
)
from tollgate.cli_config import config_app
from tollgate.cli_gateways import gateways_app
from tollgate.cli_limits import limits_app
from tollgate.cli_logs import logs_app
from tollgate.cli_models import models
from tollgate.cli_operator import accounts_app, credits_app, tokens_app
from tollgate.log_output import log_config
from tollgate.sandbox import CREDENTIALS_FILE, SandboxCredentials
from tollgate.services import Services
from tollgate.settings import Settings
from tollgate.store import Store
from tollgate.store.migrate import current_revision
from tollgate.store.migrate_steps import migrate_in_steps

if TYPE_CHECKING:
    from tollgate.app import TollgateApp

app = typer.Typer(
    name="tollgate",
    help="tollgate: a self-hosted AI gateway with Unified Billing.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
app.add_typer(accounts_app, name="accounts")
app.add_typer(tokens_app, name="tokens")
app.add_typer(credits_app, name="credits")
credits_app.command("top-up")(credits_topup)
app.add_typer(limits_app, name="limits")
app.add_typer(gateways_app, name="gateways")
app.command("models")(models)
app.add_typer(logs_app, name="logs")
app.add_typer(config_app, name="config")

HostOption = Annotated[
    str | None, typer.Option("--host", help="Interface to listen on.", show_default=False)
]
PortOption = Annotated[
    int | None,
    typer.Option("--port", min=0, max=65535, help="Port to listen on.", show_default=False),
]


WorkersOption = Annotated[
    int | None,
    typer.Option(
        "--workers",
        min=1,
        max=64,
        help="Gateway processes sharing the port (default: server.workers, 1).",
        show_default=False,
    ),
]
# Set by the supervisor of `--workers N` on each worker it starts (serve_workers.py).
WorkerOption = Annotated[bool, typer.Option("--worker", hidden=True)]


def main() -> None:
    """The console-script entry point."""
    app()


# --- serve ----------------------------------------------------------------------------------------


def public_url(settings: Settings, port: int) -> str:
    """The address to print: `server.public_url` if set, else a loopback URL for a wildcard."""
    if settings.server.public_url:
        return settings.server.public_url.rstrip("/")
    host = settings.server.host
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "[::1]"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


_HELLO = '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello!"}]}'


def sandbox_banner(url: str, creds: SandboxCredentials) -> str:
    """What `tollgate serve` prints in sandbox mode: who you are and how to make a first call."""
    base = f"{url}/v1/{creds.account_id}/default/openai"
    operator = creds.admin_token or "the one you configured (TOLLGATE_ADMIN_TOKEN)"
    rule = "=" * 78
    return "\n".join(
        [
            rule,
            "SANDBOX MODE: answers are simulated, no real money.",
            "No provider key is configured, so the built-in simulator answers for every",
            "provider, and the credits below are play money. Add a provider api_key to go live.",
            rule,
            f"  gateway         {url}",
            f"  operator token  {operator}",
            f"  demo account    {creds.account_id}",
            f"  demo token      {creds.token}",
            f"  (saved in {CREDENTIALS_FILE} in the data directory)",
            "",
            "Try it with curl:",
            "",
            f"  curl {base}/chat/completions \\",
            f'    -H "Authorization: Bearer {creds.token}" \\',
            '    -H "Content-Type: application/json" \\',
            f"    -d '{_HELLO}'",
            "",
            "Or with the openai Python package (paste into python):",
            "",
            "from openai import OpenAI",
            f'client = OpenAI(base_url="{base}", api_key="{creds.token}")',
            "reply = client.chat.completions.create(",
            '    model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello!"}]',
            ")",
            "print(reply.choices[0].message.content)",
            "",
            rule,
        ]
    )


@app.command()
def serve(
    config: ConfigOption = None,
    host: HostOption = None,
    port: PortOption = None,
    workers: WorkersOption = None,
    worker: WorkerOption = False,
) -> None:
    """Run the gateway (uvicorn with uvloop and httptools; one process per worker)."""
    from tollgate.app import create_app
    from tollgate.http_protocol import http_options

    overrides: dict[str, object | None] = {
        "TOLLGATE_SERVER__HOST": host,
        "TOLLGATE_SERVER__PORT": port,
        "TOLLGATE_SERVER__WORKERS": workers,
    }
    settings = settings_with(config, **overrides)
    logging.captureWarnings(True)  # Python's warnings go through the log, in its format
    if not worker and settings.server.workers > 1:
        _supervise_workers(settings, config, overrides)
        return
    application = create_app(settings)
    server_config = uvicorn.Config(
        application,
        host=settings.server.host,
        port=settings.server.port,
        loop="uvloop",
        # httptools, with deadlines and caps against slow or oversized requests, and the
        # keep-alive timeout (http_protocol.py)
        **http_options(settings.server),
        lifespan="on",
        workers=1,
        timeout_graceful_shutdown=settings.server.shutdown_grace_seconds,
        log_level=settings.log_level,
        # text or one JSON object per line, each tagged with its request's id (log_output.py)
        log_config=log_config(settings.log_level, settings.log_format),
    )
    try:
        if worker:  # one of `--workers N`: its own socket on the supervisor's port
            from tollgate.serve_workers import bind_shared

            application.shares_database = True
            # Not listening yet: uvicorn listens once start-up is over, so no connection waits
            # in this worker's queue while it starts (or is lost if start-up fails).
            port = settings.server.port
            _run_uvicorn(server_config, [bind_shared(settings.server.host, port)])
        else:
            _run_server(application, server_config, settings)
    except SystemExit as exc:  # uvicorn exits 3 when it cannot bind; ours is 1 for any failure
        if exc.code not in (0, None):
            fail("the gateway did not start; the log above says why", EXIT_FAILURE)
        raise


def _run_server(
    application: TollgateApp, server_config: uvicorn.Config, settings: Settings
) -> None:
    # With port 0 the kernel picks the port: bind first, so the banner can print the real one.
    sockets = [server_config.bind_socket()] if settings.server.port == 0 else None
    bound_port = sockets[0].getsockname()[1] if sockets else settings.server.port
    url = public_url(settings, bound_port)

    def announce(_services: Services, creds: SandboxCredentials | None) -> None:
        if creds is not None:
            print(sandbox_banner(url, creds), flush=True)

    application.announce = announce
    _run_uvicorn(server_config, sockets)


def _run_uvicorn(server_config: uvicorn.Config, sockets: list[socket.socket] | None) -> None:
    server = uvicorn.Server(server_config)
    # uvicorn re-raises the SIGTERM it drained on once it is done, so the process would die of
    # it (status 143); a drained gateway exits 0.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run(sockets=sockets)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not server.started:  # the lifespan failed (e.g. the database is unreachable)
        fail("the gateway did not start; the log above says why", EXIT_FAILURE)


def _supervise_workers(
    settings: Settings, config: Path | None, overrides: dict[str, object | None]
) -> None:
    """`--workers N`: bind, do the once-only start-up work, then run and watch N workers."""
    from tollgate.serve_workers import (
        Supervisor,
        claim_port,
        prepare,
        worker_command,
    )

    logging.config.dictConfig(log_config(settings.log_level, settings.log_format))
    host = settings.server.host
    try:  # kept (not listening) while the supervisor runs, so the port stays ours
        claim = claim_port(host, settings.server.port)
    except OSError as exc:
        fail(f"cannot listen on {host}:{settings.server.port}: {exc.strerror}", EXIT_FAILURE)
    port = claim.getsockname()[1]
    try:
        creds = prepare(settings)
    except Exception as exc:
        logging.getLogger("tollgate.workers").error("start-up failed: %r", exc)
        fail("the gateway did not start; the log above says why", EXIT_FAILURE)
    url = public_url(settings, port)
    if creds is not None:
        print(sandbox_banner(url, creds), flush=True)
    print(f"tollgate: {settings.server.workers} workers serving {url}", flush=True)
    supervisor = Supervisor(
        settings.server.workers,
        worker_command(port, str(config) if config else None),
        # the same settings as the supervisor's, command-line overrides included
        environment_with(overrides),
    )
    if supervisor.run() != 0:
        fail("the gateway workers kept failing; the log above says why", EXIT_FAILURE)


# --- migrate --------------------------------------------------------------------------------------


@app.command()
def migrate(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Bring the database schema up to date (the server also does this when it starts).

    Applies each pending migration in turn; on a terminal a progress bar on stderr shows them.
    """
    settings = settings_with(config)

    with StepProgress("migrating", "applied") as progress:

        async def act(store: Store) -> tuple[list[str], str | None]:
            applied = await open_database(
                store,
                lambda s: migrate_in_steps(s, on_pending=progress.start, on_applied=progress.step),
            )
            return applied, await current_revision(store)

        applied, current = run_with_store(settings, act, migrate_first=False)
    if as_json:
        print_json({"applied": applied, "current": current})
    elif applied:
        console().print(f"applied: {', '.join(applied)} (now at {current})")
    else:
        console().print(f"already up to date (at {current})")


# --- sim ------------------------------------------------------------------------------------------


@app.command()
def sim(host: HostOption = None, port: PortOption = None) -> None:
    """Run the upstream simulator alone (OpenAI, Anthropic and Gemini wire formats)."""
    from tollgate.sim import cli as sim_cli  # imported here: only this command needs it

    argv: list[str] = []
    if host is not None:
        argv += ["--host", host]
    if port is not None:
        argv += ["--port", str(port)]
    code = sim_cli.main(argv)
    if code:
        raise typer.Exit(code)


@app.command()
def demo(
    serve_after: Annotated[
        bool,
        typer.Option(
            "--serve",
            help="Keep the demo's gateway up afterwards (Ctrl+C stops it) to open its dashboard.",
        ),
    ] = False,
) -> None:
    """A scripted tour in under a minute: account, top-up, models on every path, ZDR, a limit
    hit, auto top-up. Simulated providers and sandbox payments; exits 1 if a step misbehaves."""
    from tollgate.demo import run_demo  # imported here: only this command needs it

    code = run_demo(print, keep_serving=serve_after)
    if code:
        raise typer.Exit(code)
