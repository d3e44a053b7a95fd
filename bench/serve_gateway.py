"""Start tollgate for the benchmark: fresh SQLite store, one seeded account, one run token.

    .venv/bin/python bench/serve_gateway.py --port P --data-dir bench/.work/gw \
        --upstream http://127.0.0.1:NGINX/v1 [--stream-upstream http://127.0.0.1:NGINX/stream/v1]
        [--anthropic-upstream http://127.0.0.1:NGINX/anthropic]

`--upstream` becomes the `openai` provider's base URL. `--stream-upstream`, when given, becomes
the `groq` provider's base URL (another OpenAI-wire row, so a streaming request takes exactly the
same code path while nginx can answer it on its own path). `--anthropic-upstream`, when given,
becomes the `anthropic` provider's base URL (the gateway posts to `{base}/v1/messages`). All use
the managed key `sk-bench`, so requests with the tollgate token in `Authorization` go through
Unified Billing (the gateway injects the key); a request that sends its own provider key
(`Authorization: Bearer sk-bench`) with the token in `cf-aig-authorization` is BYOK and is not
billed (bench/dataplane.py's `byok` arm).

Before serving, the account id and token are written to `<data-dir>/credentials.json`
(`{"account_id": ..., "token": ...}`) for the runner. Settings come only from the variables built
here, never from the caller's environment or a stray `tollgate.toml`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path

import uvicorn

from tollgate import operator
from tollgate.app import create_app
from tollgate.settings import Settings, load_settings
from tollgate.store import Store
from tollgate.store.accounts import create_account
from tollgate.store.migrate import migrate

ADMIN_TOKEN = "bench-admin-token"  # a throwaway token for a loopback benchmark
UPSTREAM_KEY = "sk-bench"
CREDIT_CENTS = 100_000_000  # $1M: the benchmark must never run out of credit


def gateway_env(
    data_dir: Path, upstream: str, stream_upstream: str | None, anthropic_upstream: str | None
) -> dict[str, str]:
    """The TOLLGATE_* variables the benchmark's gateway runs with (also the environment of
    bench/scaling.py's `tollgate serve --workers N`)."""
    env = {
        "TOLLGATE_DATABASE_URL": f"sqlite:///{data_dir / 'gw.db'}",
        "TOLLGATE_DATA_DIR": str(data_dir),
        "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
        "TOLLGATE_LOG_LEVEL": "warning",
        "TOLLGATE_PROVIDERS__OPENAI__BASE_URL": upstream,
        "TOLLGATE_PROVIDERS__OPENAI__API_KEY": UPSTREAM_KEY,
    }
    if stream_upstream:
        env["TOLLGATE_PROVIDERS__GROQ__BASE_URL"] = stream_upstream
        env["TOLLGATE_PROVIDERS__GROQ__API_KEY"] = UPSTREAM_KEY
    if anthropic_upstream:
        env["TOLLGATE_PROVIDERS__ANTHROPIC__BASE_URL"] = anthropic_upstream
        env["TOLLGATE_PROVIDERS__ANTHROPIC__API_KEY"] = UPSTREAM_KEY
    return env


def build_settings(
    data_dir: Path, upstream: str, stream_upstream: str | None, anthropic_upstream: str | None
) -> Settings:
    return load_settings(env=gateway_env(data_dir, upstream, stream_upstream, anthropic_upstream))


async def seed_accounts(settings: Settings, count: int) -> list[dict[str, str]]:
    """Create the schema and `count` accounts, each with credit and a `run` token; return
    their ids and tokens (`{"account_id": ..., "token": ...}`), in creation order."""
    store = Store(settings.database.url)
    seeded = []
    try:
        await migrate(store)
        for number in range(count):
            account = await create_account(store, f"bench-{number}" if number else "bench")
            _, token = await operator.issue_token(
                store, account.id, name="bench", permissions=frozenset({"run"})
            )
            await operator.grant_credits(
                store, account.id, amount_cents=CREDIT_CENTS, note="benchmark credit"
            )
            seeded.append({"account_id": account.id, "token": token})
    finally:
        await store.close()
    return seeded


async def seed(settings: Settings) -> dict[str, str]:
    """Create the schema, an account with credit and a `run` token; return them."""
    return (await seed_accounts(settings, 1))[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--upstream", required=True, help="OpenAI base URL, e.g. http://h:p/v1")
    parser.add_argument("--stream-upstream", help="base URL for the streaming row (groq slug)")
    parser.add_argument(
        "--anthropic-upstream", help="Anthropic base URL, e.g. http://h:p/anthropic"
    )
    args = parser.parse_args()

    data_dir: Path = args.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    # load_settings reads ./tollgate.toml when present: run where there is none.
    os.chdir(data_dir)
    settings = build_settings(
        data_dir, args.upstream, args.stream_upstream, args.anthropic_upstream
    )
    credentials = asyncio.run(seed(settings))
    (data_dir / "credentials.json").write_text(json.dumps(credentials))

    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
