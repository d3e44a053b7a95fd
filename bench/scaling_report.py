"""bench/scaling.py's Markdown report: the scaling table, the books of each cell, every run."""

from __future__ import annotations

from typing import Any


def ms(us: float) -> str:
    return f"{us / 1000:.2f}"


def cell_name(cell: dict[str, Any]) -> tuple[int, int]:
    return cell["cell"]["workers"], cell["cell"]["accounts"]


def header(result: dict[str, Any]) -> list[str]:
    env, config, idle = result["env"], result["config"], result["idle"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    cpus = result["cpus"]
    threads = config["wrk_threads"]
    oversubscribed = [w for w in config["workers"] if w > cpus]
    return [
        f"# Scaling curve: workers x accounts, {env['date_utc']} UTC",
        "",
        f"- Commit: `{env['commit']}`",
        f"- Machine: {env['cpu_model']}, {env['cpus']} CPUs; kernel {env['kernel']}",
        f"- Python {env['python']}; {versions}",
        f"- Upstream: nginx {env['nginx']}, 1 worker, zero-delay canned chat completion; "
        f"load: {env['wrk']}",
        "- Gateway: `tollgate serve --workers N` (N = 1: one process; N > 1: a supervisor and N "
        "worker processes on one port with SO_REUSEPORT), uvloop + httptools, one SQLite store "
        "(WAL) shared by the workers; **Unified Billing on** (the managed key pays: credit "
        "admitted before forwarding, settled after in batches), **request logs on** (the "
        "`default` gateway collects every request, bodies included)",
        f"- **What ran where: nothing pinned.** The gateway's processes, nginx (1 worker) and wrk "
        f"(`-t{threads} -c{config['connections']}`, bench/accounts.lua) all share the machine's "
        f"{cpus} CPUs, scheduled by the kernel: the load generator and the upstream take CPU "
        "from the gateway (their share is in the table), and "
        + (
            f"with more workers than CPUs ({', '.join(str(w) for w in oversubscribed)} workers) "
            "the gateway is oversubscribed: its processes time-share the cores."
            if oversubscribed
            else "no setting has more workers than CPUs."
        ),
        "- Accounts: N accounts with $1M of credit and one `run` token each; wrk sends each "
        "request to the next account in turn (its URL and token): with 1 account every request "
        "debits the same balance (the worst case), with more they spread",
        f"- Before the run: load average {' '.join(idle['loadavg'])}; CPU busy "
        f"{idle['cpu_busy_pct']}% (per core {idle['per_core_busy_pct']}), "
        + ("idle" if idle["idle"] else "**not idle**")
        + f" after waiting {idle['waited_s']} s",
        f"- Protocol: per cell a fresh copy of the seeded store, the gateway started, one "
        "request per account (so every account is in use, its `default` gateway created; up to "
        "20 of them checked in full: 200, canned body, billed; the others: 200, same cost), "
        f"{config['warmup']} s warm-up discarded ({config['spread_warmup']} s for cells with "
        "several workers and 100 or more accounts, so that every worker has served every "
        "account once: a worker's first request for an account loads its token, gateway and "
        "limits; the warm-up row below shows that cold start), "
        f"{config['rounds']} round(s) of {config['seconds']} s, the gateway stopped (SIGTERM), "
        "the books checked; cells one after the other (rounds of a cell back to back); values "
        f"are medians over rounds. {result['measure_s']} s for all cells, {result['total_s']} s "
        "in all (with seeding)"
        + (" — **SCALING_QUICK smoke run: the numbers mean little**" if config["quick"] else ""),
        "",
    ]


def main_table(result: dict[str, Any]) -> list[str]:
    cells = result["cells"]
    baseline = {
        c["cell"]["accounts"]: c["summary"]["rps"] for c in cells if c["cell"]["workers"] == 1
    }
    lines = [
        "'req/s vs 1 worker' = req/s ÷ the 1-worker cell's with the same accounts. "
        "'CPU/req' = user+system CPU of all the gateway's processes (supervisor and workers) "
        "during the run ÷ requests answered. 'gateway CPU' and 'wrk+nginx CPU' = their CPU time "
        "÷ wall time, in cores (the machine has "
        f"{result['cpus']}). 'other load' = CPU used by anything else, in % of one core (max "
        "over rounds; more than 10% makes the cell pessimistic). Latencies in ms (wrk, "
        "closed loop: at this concurrency mostly queueing). 'errors' = non-2xx responses and "
        "socket errors in the measured runs (warm-up in brackets when any). 'books' = the books "
        "check after the cell's gateway stopped (below).",
        "",
        "| workers | accounts | req/s | req/s vs 1 worker | CPU/req | gateway CPU | "
        "wrk+nginx CPU | other load | p50 | p99 | errors | books |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for c in cells:
        s, workers, accounts = c["summary"], *cell_name(c)
        base = baseline.get(accounts)
        ratio = f"x{s['rps'] / base:.2f}" if base else "-"
        errors = f"{s['failed']}" + (f" ({s['failed_warmup']})" if s["failed_warmup"] else "")
        books = "exact" if c["books"]["exact"] else "**NOT exact**"
        lines.append(
            f"| {workers} | {accounts:,} | {s['rps']:,.0f} | {ratio} | "
            f"{s['cpu_us_per_req']:,.0f} µs | {s['gateway_cores']:.2f} | "
            f"{s['wrk_nginx_cores']:.2f} | {s['other_pct_max']:.0f}%"
            f"{' ⚠' if s['other_pct_max'] > 10 else ''} | {ms(s['p50_us'])} | "
            f"{ms(s['p99_us'])} | {errors} | {books} |"
        )
    return [*lines, ""]


def curve(result: dict[str, Any]) -> list[str]:
    """The same figures as a grid: workers down, accounts across."""
    cells = {cell_name(c): c["summary"] for c in result["cells"]}
    workers = sorted({w for w, _ in cells})
    accounts = sorted({a for _, a in cells})
    lines = [
        "req/s (gateway CPU per request) at a glance:",
        "",
        "| workers | " + " | ".join(f"{a:,} acct" for a in accounts) + " |",
        "|--:|" + "--:|" * len(accounts),
    ]
    for w in workers:
        row = [
            f"{cells[w, a]['rps']:,.0f} ({cells[w, a]['cpu_us_per_req']:,.0f} µs)"
            if (w, a) in cells
            else "-"
            for a in accounts
        ]
        lines.append(f"| {w} | " + " | ".join(row) + " |")
    return [*lines, ""]


def books_table(result: dict[str, Any]) -> list[str]:
    lines = [
        "## Books after each cell",
        "",
        "After the gateway stopped, read from the store: every account's ledger invariants "
        "(`tollgate.billing.ledger.check_invariants`: the entries sum to the balance, each "
        "`balance_after` the running sum, held/leased amounts match their rows, one usage entry "
        "per charged request), nothing left held or leased, every usage entry minus the "
        "request's exact cost, and the charges against the requests answered 2xx (one per "
        "account before measuring, warm-up and rounds): no fewer, and more only by requests cut "
        "off in flight when a run "
        "ended (at most one per connection per run).",
        "",
        "| workers | accounts | cost/request | charges | answered 2xx | charges per account "
        "(min-max) | logs written | verdict |",
        "|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for c in result["cells"]:
        b, (workers, accounts) = c["books"], cell_name(c)
        per_account = b["charges_per_account"]
        lines.append(
            f"| {workers} | {accounts:,} | {b['cost_nanos']:,} n$ | {b['charged']:,} | "
            f"{b['answered']:,} | {per_account[0]:,}-{per_account[1]:,} | "
            f"{b['logs_written']:,} | {b['verdict']} |"
        )
    details = [
        f"- {c['cell']['workers']}w x {c['cell']['accounts']}: {detail}"
        for c in result["cells"]
        for key in ("invariant_violations", "unsettled", "wrong_amounts")
        for detail in c["books"][key]
    ]
    return [*lines, "", *details, *([""] if details else [])]


def runs_table(result: dict[str, Any]) -> list[str]:
    lines = [
        "## Every run",
        "",
        "Core busy: each CPU's busy time during the run. gateway, wrk, nginx, other: CPU time in "
        "% of one core. Per worker: each worker process's CPU in % of one core (how the kernel "
        "spread the connections over the workers' sockets). Latencies in ms.",
        "",
        "| workers | accounts | run | req/s | p50 | p99 | CPU/req | core busy | gateway | "
        "per worker | wrk | nginx | other | failed |",
        "|--:|--:|---|--:|--:|--:|--:|---|--:|---|--:|--:|--:|--:|",
    ]
    for c in result["cells"]:
        workers, accounts = cell_name(c)
        runs = [("warm-up", c["warmup"])] + [
            (f"round {i + 1}", r) for i, r in enumerate(c["rounds"])
        ]
        for label, r in runs:
            cpu = r["cpu"]
            busy = " / ".join(f"{v:.0f}%" for v in cpu["core_busy_pct"].values())
            per_worker = " / ".join(f"{v:.0f}" for v in r["worker_cpu_pct"])
            lines.append(
                f"| {workers} | {accounts:,} | {label} | {r['rps']:,.0f} | "
                f"{ms(r['latency_us']['p50'])} | {ms(r['latency_us']['p99'])} | "
                f"{r['gateway_cpu_us_per_req'] or 0:,} µs | {busy} | {cpu['gateway_pct']:.0f}% "
                f"| {per_worker} | {cpu['wrk_pct']:.0f}% | {cpu['nginx_pct']:.0f}% | "
                f"{cpu['other_pct']:.0f}% | {r['failed']} |"
            )
    return [*lines, ""]


def timing(result: dict[str, Any]) -> list[str]:
    cells = ", ".join(
        f"{c['cell']['workers']}w x {c['cell']['accounts']}: {c['wall_s']:.0f} s "
        f"({c['startup_s']:.0f} s to start)"
        for c in result["cells"]
    )
    return [
        "## Time",
        "",
        f"Wall time per cell (start, checks, load, stop, books; of which starting until every "
        f"worker listened): {cells}.",
        "",
    ]


def render(result: dict[str, Any]) -> str:
    lines = [*header(result), *curve(result), *main_table(result), *books_table(result)]
    if result["problems"]:
        lines += ["## Problems", "", *(f"- {p}" for p in result["problems"]), ""]
    lines += [*runs_table(result), *timing(result)]
    return "\n".join(lines)
