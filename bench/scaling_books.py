"""bench/scaling.py's books check, after a cell's gateway stopped: are the books exact?

Read from the store in this process (the gateway is stopped, so nothing moves), per account:

- `tollgate.billing.ledger.check_invariants`: the entries sum to the balance, each
  `balance_after` is the running sum, held and leased amounts match their rows, every charged
  hold or lease has exactly one usage entry;
- nothing is left held or leased (a clean stop settles every request and releases every lease);
- every usage entry is exactly minus the request's cost (every request is the same one);

and over all accounts: the number of usage entries (charges) against the requests the clients
saw answered. Each answered request must have been charged once (no fewer charges); more are
allowed only for requests cut off in flight at the end of a run (the gateway may still complete
and charge them), so `answered <= charges <= answered + cut_off`.

Also counted, not judged: the request logs the gateway wrote (the `default` gateway's, per account).
"""

from __future__ import annotations

from typing import Any

from tollgate.billing.ledger import InvariantViolation, check_invariants
from tollgate.store import Store
from tollgate.store.logs import count_gateway_logs


async def check(
    database_url: str, account_ids: list[str], *, cost_nanos: int, answered: int, cut_off: int
) -> dict[str, Any]:
    store = Store(database_url)
    violations: list[str] = []
    unsettled: list[str] = []
    wrong_amounts: list[str] = []
    charges: list[int] = []
    logs = 0
    try:
        for account_id in account_ids:
            try:
                books = await check_invariants(store, account_id)
            except InvariantViolation as exc:
                violations.append(str(exc))
                continue
            if books.held_nanos or books.leased_nanos or books.lease_rows_nanos:
                unsettled.append(
                    f"{account_id}: held {books.held_nanos}, leased {books.leased_nanos} "
                    f"(lease rows {books.lease_rows_nanos}) nano-dollars after the stop"
                )
            usage = [e.amount_nanos for e in books.entries if e.kind == "usage"]
            wrong = sorted({n for n in usage if n != -cost_nanos})
            if wrong:
                wrong_amounts.append(f"{account_id}: usage entries of {wrong[:5]} nano-dollars")
            charges.append(len(usage))
            logs += await count_gateway_logs(store, account_id, "default")
    finally:
        await store.close()
    charged = sum(charges)
    count_ok = answered <= charged <= answered + cut_off
    exact = not (violations or unsettled or wrong_amounts) and count_ok
    return {
        "exact": exact,
        "verdict": verdict(exact, violations, unsettled, wrong_amounts, charged, answered, cut_off),
        "accounts": len(account_ids),
        "accounts_checked": len(charges),
        "invariant_violations": violations[:10],
        "unsettled": unsettled[:10],
        "wrong_amounts": wrong_amounts[:10],
        "cost_nanos": cost_nanos,
        "charged": charged,
        "answered": answered,
        "cut_off_allowance": cut_off,
        "charges_per_account": [min(charges), max(charges)] if charges else None,
        "accounts_never_charged": sum(1 for n in charges if n == 0),
        "logs_written": logs,
    }


def verdict(
    exact: bool,
    violations: list[str],
    unsettled: list[str],
    wrong_amounts: list[str],
    charged: int,
    answered: int,
    cut_off: int,
) -> str:
    if exact:
        return (
            f"exact: invariants hold on every account, nothing held or leased, {charged:,} "
            f"charges of the same cost for {answered:,} answered requests "
            f"(+{charged - answered} cut off in flight)"
        )
    reasons = []
    if violations:
        reasons.append(f"{len(violations)} accounts break the ledger invariants")
    if unsettled:
        reasons.append(f"{len(unsettled)} accounts still hold or lease credit")
    if wrong_amounts:
        reasons.append(f"{len(wrong_amounts)} accounts have usage entries of another amount")
    if violations:  # their charges could not be counted: the totals below would mislead
        return "NOT exact: " + "; ".join(reasons)
    if charged < answered:
        reasons.append(f"{answered - charged:,} answered requests were not charged")
    if charged > answered + cut_off:
        reasons.append(
            f"{charged - answered - cut_off:,} more charges than requests answered or cut off"
        )
    return "NOT exact: " + "; ".join(reasons)
