"""What the operator does to accounts, shared by the admin API, the CLI and sandbox set-up."""

from __future__ import annotations

from datetime import datetime

from tollgate import money
from tollgate.api.auth import PERMISSIONS, mint_token
from tollgate.errors import Conflict, InvalidRequest, NotFound
from tollgate.ids import ACCOUNT_ID
from tollgate.store import Account, ApiToken, LedgerEntry, Store
from tollgate.store import accounts as account_repo
from tollgate.store import ledger as ledger_repo
from tollgate.store import tokens as token_repo


async def require_account(store: Store, account_id: str) -> Account:
    if not ACCOUNT_ID.fullmatch(account_id):
        raise NotFound(
            f"'{account_id}' is not an account id: ids are 32 lowercase hex characters.",
            code="account_not_found",
        )
    account = await account_repo.get_account(store, account_id)
    if account is None:
        raise NotFound(f"Account {account_id} does not exist.", code="account_not_found")
    return account


async def issue_token(
    store: Store,
    account_id: str,
    *,
    name: str,
    permissions: frozenset[str],
    expires_at: datetime | None = None,
) -> tuple[ApiToken, str]:
    """Create an API token; returns the stored record and the secret, which is shown once."""
    unknown = permissions - PERMISSIONS
    if unknown or not permissions:
        raise InvalidRequest(
            "permissions must be a non-empty subset of run, read, edit "
            f"(got {sorted(permissions)})",
            param="permissions",
        )
    await require_account(store, account_id)
    minted = mint_token()
    record = await token_repo.insert_token(
        store,
        token_id=minted.token_id,
        account_id=account_id,
        name=name,
        token_hash=minted.token_hash,
        permissions=permissions,
        expires_at=expires_at,
    )
    return record, minted.token


async def grant_credits(
    store: Store, account_id: str, *, amount_cents: int, note: str, reference: str | None = None
) -> tuple[LedgerEntry, bool]:
    """Grant credits (a ledger `grant`); with a reference, granted at most once."""
    if amount_cents <= 0:
        raise InvalidRequest("amount_cents must be a positive integer", param="amount_cents")
    await require_account(store, account_id)
    amount_nanos = money.from_cents(amount_cents)
    entry, created = await ledger_repo.append_entry(
        store, account_id, kind="grant", amount_nanos=amount_nanos, note=note, reference=reference
    )
    if not created and (entry.kind, entry.amount_nanos) != ("grant", amount_nanos):
        # Like Stripe's idempotency keys: a reused reference must describe the same operation.
        raise Conflict(
            f"Reference '{reference}' was already used for a different ledger entry "
            f"({entry.kind} of {money.format_dollars(entry.amount_nanos)}). "
            "Use a new reference for a new grant.",
            code="reference_reused",
            param="reference",
        )
    return entry, created


async def set_account_status(store: Store, account_id: str, status: str) -> Account:
    """Enable (`active`) or disable (`disabled`) an account; setting the same status is a no-op."""
    if status not in ("active", "disabled"):
        raise InvalidRequest("status must be 'active' or 'disabled'", param="status")
    await require_account(store, account_id)
    account = await account_repo.set_account_status(store, account_id, status)
    if account is None:
        raise NotFound(f"Account {account_id} does not exist.", code="account_not_found")
    return account


async def revoke_token(store: Store, account_id: str, token_id: str) -> ApiToken:
    """Revoke one of this account's tokens; a token of another account is never touched (404)."""
    await require_account(store, account_id)
    token = await token_repo.revoke_token(store, account_id, token_id)
    if token is None:
        raise NotFound(
            f"Token {token_id} does not exist in account {account_id}. "
            "List the account's tokens to find its id.",
            code="token_not_found",
        )
    return token
