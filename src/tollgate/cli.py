"""The `tollgate` command: serve the gateway, migrate, run the simulator, and operator work.

Thin over the same pieces the server uses: `load_settings` for configuration, `create_app` for
the server, `tollgate.operator` and the store for accounts, tokens and credits. Sub-commands live
in `cli_*.py` modules and are registered here. Exit codes and error output are described in
`tollgate.cli_common`: 0 success, 1 operational failure, 2 usage error.
"""

from __future__ import annotations

import logging
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
def serve(config: ConfigOption = None, host: HostOption = None, port: PortOption = None) -> None:
    """Run the gateway (uvicorn with uvloop and httptools, one worker)."""
    from tollgate.app import create_app
    from tollgate.http_protocol import http_options

    settings = settings_with(config, TOLLGATE_SERVER__HOST=host, TOLLGATE_SERVER__PORT=port)
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
        log_level=settings.log_level,
        # text or one JSON object per line, each tagged with its request's id (log_output.py)
        log_config=log_config(settings.log_level, settings.log_format),
    )
    logging.captureWarnings(True)  # Python's warnings go through the log, in its format
    try:
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
    server = uvicorn.Server(server_config)
    server.run(sockets=sockets)
    if not server.started:  # the lifespan failed (e.g. the database is unreachable)
        fail("the gateway did not start; the log above says why", EXIT_FAILURE)


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
