"""Sandbox mode: first-run set-up so a newcomer can call a model a minute after `make run`.

With no provider keys configured, the simulator answers for every provider. The first start
creates an operator token (unless one is configured), a demo account, a run/read/edit token for
it, and $10 of sandbox credits. Tokens are stored only as hashes, so the plaintext is kept for
later starts in `<data_dir>/sandbox-credentials.json` (mode 0600). That file exists only in
sandbox mode; delete it (and the database) to start over.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from tollgate.api.auth import OPERATOR_PREFIX, mint_token
from tollgate.operator import grant_credits, issue_token
from tollgate.services import Services
from tollgate.store import accounts as account_repo
from tollgate.store import tokens as token_repo

CREDENTIALS_FILE = "sandbox-credentials.json"


@dataclass(frozen=True)
class SandboxCredentials:
    admin_token: str | None  # None when the operator configured their own
    account_id: str
    token: str


def credentials_path(services: Services) -> Path:
    return services.settings.data_dir / CREDENTIALS_FILE


async def bootstrap_sandbox(services: Services) -> SandboxCredentials:
    """Create (once) and return the sandbox operator token, demo account and its token."""
    path = credentials_path(services)
    if path.is_file():
        saved = SandboxCredentials(**orjson.loads(path.read_bytes()))
        if await account_repo.get_account(services.store, saved.account_id) is not None:
            return saved
    admin_token = None
    if services.settings.operator.admin_token is None:
        minted = mint_token(OPERATOR_PREFIX)
        await token_repo.insert_operator_token(services.store, minted.token_id, minted.token_hash)
        admin_token = minted.token
    account = await account_repo.create_account(services.store, "Sandbox demo")
    _, token = await issue_token(
        services.store,
        account.id,
        name="sandbox demo token",
        permissions=frozenset({"run", "read", "edit"}),
    )
    await grant_credits(
        services.store,
        account.id,
        amount_cents=services.settings.sandbox.demo_credits_cents,
        note="sandbox credits (simulated, not real money)",
        reference="sandbox-initial-grant",
    )
    saved = SandboxCredentials(admin_token, account.id, token)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(orjson.dumps(asdict(saved), option=orjson.OPT_INDENT_2))
    return saved
