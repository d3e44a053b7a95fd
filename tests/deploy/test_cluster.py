"""Many processes, one truth: three `tollgate serve` processes behind the shipped nginx.conf, one
PostgreSQL database, one Redis, and bursts of concurrent requests that race for the same money.

The cluster is built once for the module: the simulator (`tollgate sim`), three single-worker
gateways (`tollgate serve --port P`, configured by their environment; Redis under a key prefix of
the test's own, deleted afterwards), and Debian's nginx running a rendered copy of
deploy/nginx.conf (`tests.support.nginx`) with the soft limit on open files a container gets.
Each scenario is run `RUNS` times, each run with a fresh account and its own seed; the seed picks
the amounts, the prompts, which client sends each request (the official openai SDK for a tenth of
them, aiohttp for the rest) and when (a start delay, and a simulator latency that keeps the
answers in flight together).

Why the count is exact whatever the timing: the model's price is overridden to input 0 and a
fixed output price, every request sends `max_tokens=M` and asks the simulator for exactly M output
tokens. The hold (prompt estimate at the input price, 0, plus M at the output price: see
`tollgate.billing.meter`) then equals the charge, so a balance or a limit worth 100 holds admits
exactly 100 requests, in any order: settling one frees nothing for another. The test checks that
premise on every answer (its cost, its usage) and on the hold rows (each settled at its amount).

1. Balance: 1,000 concurrent requests against a balance worth exactly 100 requests (plus a
   remainder smaller than one): 100 answered, 900 refused with 402 `insufficient_credits` in
   OpenAI's error format; the books are exact (`check_invariants`), the balance is the remainder.
2. Spending limit: the same against a plentiful balance and a limit worth 100 requests (the
   account limit on even seeds, a gateway spend rule on odd ones): 100 answered, 900 refused with
   429 `spend_limit_exceeded` and a `Retry-After`.
3. Auto top-up: a burst that crosses the threshold once, its settles landing on all three
   processes: exactly one auto top-up (one `auto_topup` ledger entry, one payment record), checked
   again after the last run, when a late second charge would have landed.

The books are checked before the statuses: a run that fails on a status (an overloaded machine's
503) has already shown that the money is right.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest

from tests.support.cluster import Answer, Cluster, Recheck, Run, running_cluster
from tests.support.cluster import run_seeds as run_cluster_seeds
from tests.support.gateways import REQUIRED_GATEWAY_FIELDS
from tollgate.billing.ledger import usd
from tollgate.store import payments as payments_repo
from tollgate.store.snapshot import AccountSnapshot

# Seeds per scenario. The nightly bar is 20: `make test-cluster` (measured: 11.7 min on this
# 2-core machine with other work on it). A run costs about 8 s (balance), 14 s (spending limit:
# every refusal takes the account's row lock in turn) and 5 s (auto top-up), mostly the
# gateways' CPU, so CI runs 2 of each (about 80 s with the cluster's start).
RUNS = int(os.environ.get("CLUSTER_TEST_RUNS", "2"))

pytestmark = [
    pytest.mark.postgres,
    # One cluster per module, shared by the three scenarios: keep them on one xdist worker.
    pytest.mark.xdist_group("cluster"),
    pytest.mark.timeout(120 + 45 * RUNS),  # the first test also starts the cluster
]

GATEWAYS = 3
BURST = 1_000  # concurrent requests per run
SDK_PERCENT = 10  # of every burst, sent with the official openai SDK
ADMITTED = 100  # what the balance or the limit is worth, in requests
MODEL = "gpt-4o-mini"
OUTPUT_PRICE = 100  # USD per million output tokens (the override); input costs nothing
PER_TOKEN = OUTPUT_PRICE * 1_000  # nano-dollars per output token
PRICE_OVERRIDES = {f"openai/{MODEL}": {"input": "0", "cached_input": "0", "output": "100"}}
RECHECK_AFTER = 0.5  # seconds: a second top-up, were one coming, would have landed by then
VISA = {"card_number": "4242424242424242", "exp_month": 12, "exp_year": 2099, "cvc": "123"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    overrides = {"TOLLGATE_BILLING__PRICE_OVERRIDES": json.dumps(PRICE_OVERRIDES)}
    root = tmp_path_factory.mktemp("cluster")
    with running_cluster(root, gateways=GATEWAYS, settings=overrides) as running:
        yield running


async def burst(run: Run, count: int, max_tokens: int, gateway: str = "default") -> list[Answer]:
    return await run.burst(
        count, model=MODEL, max_tokens=max_tokens, sdk_percent=SDK_PERCENT, gateway=gateway
    )


def run_seeds(cluster: Cluster, scenario: Callable[[Run], Awaitable[Recheck | None]]) -> None:
    run_cluster_seeds(cluster, scenario, runs=RUNS, recheck_after=RECHECK_AFTER)


def answered_exactly(answers: list[Answer], max_tokens: int, hold: int) -> int:
    """How many were answered (200), each charged exactly its hold: M output tokens."""
    ok = [a for a in answers if a.status == 200]
    for answer in ok:
        assert answer.body["usage"]["completion_tokens"] == max_tokens, answer.body["usage"]
        assert answer.headers["cf-aig-cost"] == usd(hold).removeprefix("$")
    return len(ok)


def usage_is_exact(books: AccountSnapshot, admitted: int, hold: int) -> None:
    """`admitted` usage entries of exactly one hold each, every hold settled at its amount
    (so each hold was exactly its charge), nothing still held."""
    usage = [e for e in books.entries if e.kind == "usage"]
    assert [e.amount_nanos for e in usage] == [-hold] * admitted
    assert books.held_nanos == 0
    assert [(h.state, h.amount_nanos) for h in books.holds] == [("settled", hold)] * admitted
    assert all(books.resolutions[h.id].charged_nanos == hold for h in books.holds)


async def books_match(
    run: Run, answers: list[Answer], max_tokens: int, hold: int
) -> tuple[int, AccountSnapshot]:
    """The money first, whatever the statuses: every answered request charged exactly once,
    nothing else charged or held, the ledger summing to the balance (`check_invariants`), and
    never more admitted than the money allowed. Returns how many were answered, and the books."""
    admitted = answered_exactly(answers, max_tokens, hold)
    assert admitted <= ADMITTED, f"{admitted} admitted: the money allowed {ADMITTED}"
    books = await run.books()
    usage_is_exact(books, admitted, hold)
    return admitted, books


def statuses_are(run: Run, answers: list[Answer], expected: dict[int, int]) -> None:
    statuses = Counter(a.status for a in answers)
    others = [(a.status, a.body) for a in answers if a.status not in expected][:3]
    assert statuses == expected, (statuses, others, run.cluster.trouble())


async def every_process_served(run: Run, before: list[float]) -> None:
    after = await run.served()
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)


def openai_error(answer: Answer) -> dict[str, Any]:
    """OpenAI's error format: {"error": {"message", "type", "param", "code"}}."""
    error = answer.body["error"]
    assert set(error) >= {"message", "type", "param", "code"}, error
    return dict(error)


# --- 1. balance -------------------------------------------------------------------------------


async def balance_run(run: Run) -> None:
    max_tokens = run.rng.randint(16, 256)
    hold = max_tokens * PER_TOKEN
    remainder = 0 if run.rng.random() < 0.3 else run.rng.randrange(1, hold)
    await run.new_account(grant_nanos=ADMITTED * hold + remainder, name="worth exactly 100")
    before = await run.served()

    answers = await burst(run, BURST, max_tokens)

    admitted, books = await books_match(run, answers, max_tokens, hold)
    assert books.balance_nanos == ADMITTED * hold + remainder - admitted * hold
    statuses_are(run, answers, {200: ADMITTED, 402: BURST - ADMITTED})
    for refused in (a for a in answers if a.status == 402):
        error = openai_error(refused)
        assert error["code"] == "insufficient_credits", error
        assert f"needs up to {usd(hold)} " in error["message"], error["message"]
    assert books.balance_nanos == remainder
    assert [e.kind for e in books.entries] == ["grant"] + ["usage"] * ADMITTED
    await every_process_served(run, before)


def test_a_balance_worth_100_admits_exactly_100_of_1000_across_processes(
    cluster: Cluster,
) -> None:
    run_seeds(cluster, balance_run)


# --- 2. spending limit ------------------------------------------------------------------------


async def spending_limit_run(run: Run) -> None:
    max_tokens = run.rng.randint(100, 300)
    hold = max_tokens * PER_TOKEN
    start = 100 * 10**9  # $100: the limit binds
    await run.new_account(grant_nanos=start, name="limited")
    gateway = "default"
    if run.seed % 2 == 0:
        # The account limit, in whole cents (at least $1): M cents, plus whole cents that stay
        # below one more hold. 100 holds of M tokens at $100 per million cost M cents.
        spare = run.rng.randint(0, (max_tokens - 1) // 100)
        await run.api(
            "POST",
            "/ai-gateway/billing/spending-limit",
            {"amount": max_tokens + spare, "duration": "daily", "strategy": "sliding"},
        )
    else:
        # A gateway spend rule, in dollars to the nano-dollar.
        gateway = f"limited-{run.rng.randrange(10**6)}"
        limit = ADMITTED * hold + run.rng.randrange(hold)
        rule = {
            "id": "cluster",
            "limit": float(Decimal(limit) / 10**9),  # exact: at most 10 significant digits
            "limitType": "cost",
            "window": 86_400,
            "technique": "sliding",
        }
        await run.api(
            "POST",
            "/ai-gateway/gateways",
            {
                **REQUIRED_GATEWAY_FIELDS,
                "id": gateway,
                "spend_limits": {"enabled": True, "rules": [rule]},
            },
        )
    before = await run.served()

    answers = await burst(run, BURST, max_tokens, gateway)

    admitted, books = await books_match(run, answers, max_tokens, hold)
    assert books.balance_nanos == start - admitted * hold
    assert sum(books.buckets.values()) == admitted * hold  # what the limit counted
    statuses_are(run, answers, {200: ADMITTED, 429: BURST - ADMITTED})
    for refused in (a for a in answers if a.status == 429):
        error = openai_error(refused)
        assert error["code"] == "spend_limit_exceeded", error
        assert int(refused.headers["retry-after"]) > 0
        assert f"may cost up to {usd(hold)}" in error["message"], error["message"]
    assert [e.kind for e in books.entries] == ["grant"] + ["usage"] * ADMITTED
    await every_process_served(run, before)


def test_a_spending_limit_worth_100_admits_exactly_100_of_1000_across_processes(
    cluster: Cluster,
) -> None:
    run_seeds(cluster, spending_limit_run)


# --- 3. auto top-up ---------------------------------------------------------------------------

TOPUP_BURST = 150  # requests per run; all are covered, with or without the top-up


async def auto_topup_run(run: Run) -> Recheck:
    max_tokens = run.rng.randint(100, 300)
    hold = max_tokens * PER_TOKEN  # at most 3 cents: 150 of them never reach the threshold
    threshold_cents = run.rng.choice([500, 600, 800])
    amount_cents = run.rng.choice([1000, 1200, 1500])  # more than a whole burst spends
    topup = amount_cents * 10**7
    assert TOPUP_BURST * hold < min(threshold_cents * 10**7, topup)
    # The crossing: the settle after `above` of them takes the balance below the threshold; the
    # rest (at least half the burst) settle below it, on every process.
    above = run.rng.randrange(TOPUP_BURST // 2)
    start = threshold_cents * 10**7 + above * hold + run.rng.randrange(hold)
    await run.new_account(grant_nanos=start, name="auto top-up")
    await run.api("POST", "/ai-gateway/billing/payment-method", VISA)
    await run.api(
        "POST",
        "/ai-gateway/billing/topup/config",
        {"amount": amount_cents, "threshold": threshold_cents},
    )
    before = await run.served()

    answers = await burst(run, TOPUP_BURST, max_tokens)

    statuses_are(run, answers, {200: TOPUP_BURST})
    answered_exactly(answers, max_tokens, hold)
    await every_process_served(run, before)
    # The top-up runs in the background after a settle: wait until it is credited and done
    # (its in-flight marker released, which comes last).
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        books = await run.books()
        config = await payments_repo.get_auto_config(run.store, run.account_id)
        credited = any(e.kind == "auto_topup" for e in books.entries)
        if credited and config is not None and config.in_flight_topup_id is None:
            break
        await asyncio.sleep(0.05)

    async def one_topup() -> None:
        books = await run.books()
        topups = [e for e in books.entries if e.kind == "auto_topup"]
        assert [e.amount_nanos for e in topups] == [topup], books.entries
        records, total = await payments_repo.list_topups(
            run.store, run.account_id, kind=None, offset=0, limit=10
        )
        assert total == 1, records
        assert (records[0].kind, records[0].status, records[0].amount_cents) == (
            "auto",
            "succeeded",
            amount_cents,
        )
        assert books.balance_nanos == start - TOPUP_BURST * hold + topup
        kinds = Counter(e.kind for e in books.entries)
        assert kinds == {"grant": 1, "usage": TOPUP_BURST, "auto_topup": 1}, kinds
        usage_is_exact(books, TOPUP_BURST, hold)

    await one_topup()
    return one_topup  # and again after the other runs: a late second charge fails it there


def test_auto_topup_charges_once_per_crossing_across_processes(cluster: Cluster) -> None:
    run_seeds(cluster, auto_topup_run)
