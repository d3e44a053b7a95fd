"""Scaling curve: tollgate with 1, 2 and 4 worker processes x 1, 10 and 1,000 accounts.

Each cell runs `tollgate serve --workers N` (bench/README.md, "Scaling curve"): a supervisor that
migrates and recovers once, then N worker processes on one port (SO_REUSEPORT), on one SQLite
store, with Unified Billing on (the gateway's managed key pays: a credit admission before
forwarding, a settlement after, written in batches) and request logs on (the `default` gateway
collects them, bodies included), against the zero-delay nginx upstream of bench/dataplane.py.
wrk sends the same chat completion from 64 connections, spread over the cell's accounts by
bench/accounts.lua, each request with its account's URL and token in turn: with one account
every request debits the same balance (the worst case for the store), with 1,000 they spread.

Nothing is pinned: the gateway's processes, nginx and wrk share the machine's cores, and the
report says how much CPU each took. On the 2-core machine 4 workers are oversubscribed.

Per cell: a fresh copy of a store seeded with the accounts ($1M of credit and one `run` token
each), the gateway started, a few accounts checked (200, the canned body, billed), a discarded
warm-up, the rounds, the gateway stopped (SIGTERM: workers drain, credit leases are released),
then the books checked in the store: every account's ledger invariants
(`tollgate.billing.ledger.check_invariants`: the entries sum to the balance...), nothing left
held or leased, every usage entry the request's exact cost, and as many charges as the requests
wrk saw answered (up to the requests cut off in flight at the end of each run).

Run it with `make bench-scaling` or `.venv/bin/python bench/scaling.py` (needs nginx and wrk:
bench/install.sh). Options: BENCH_SECONDS (8), BENCH_ROUNDS (2), BENCH_WARMUP (2),
SCALING_SPREAD_WARMUP (30: the warm-up of cells with several workers and 100 or more
accounts, see `Config.warmup_for`), BENCH_IDLE_WAIT (20), SCALING_WORKERS ("1,2,4"),
SCALING_ACCOUNTS ("1,10,1000"), SCALING_CONNECTIONS (64), SCALING_WRK_THREADS (1),
SCALING_QUICK=1 (a smoke run: 2 s runs, 1 round, 1 s and 2 s warm-ups, unless those are set).
Writes bench/results/<date>-scaling.md and
bench/results/raw/<timestamp>-scaling.json. Exit status 1 when a request failed, the books of a
cell are not exact, or a gateway did not stop cleanly.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import dataplane as dp
import scaling_books
import scaling_report
import serve_gateway
from tollgate.settings import load_settings

ACCOUNTS_LUA = dp.BENCH / "accounts.lua"
PLACEHOLDER = "ACCOUNT_ID"  # where bench/accounts.lua puts each request's account in the URL
SCALING_WORK = dp.WORK / "scaling"
CHECKED_ACCOUNTS = 20  # accounts checked in full before measuring (spread over the list)
SPREAD_ACCOUNTS = 100  # from this many accounts, several workers warm up longer (warmup_for)
TOUCH_CONCURRENCY = 8  # the other accounts' first requests, this many at a time
# A drained gateway exits 0 (the supervisor of N > 1 workers), or by the SIGTERM it handled
# (one process: uvicorn raises it again once it has shut down, tests/e2e/test_graceful_shutdown).
DRAINED = (0, -signal.SIGTERM)
STARTUP_TIMEOUT = 300.0  # seconds for every worker to listen
SIMPLE_ROW = dp.Cell("non-stream", 1, stream=False)  # the request body and its canned answer


@dataclass(frozen=True)
class Config:
    seconds: int
    rounds: int
    warmup: int
    # The warm-up of cells with several workers and many accounts (see `warmup_for`).
    spread_warmup: int
    workers: tuple[int, ...]
    accounts: tuple[int, ...]
    connections: int
    wrk_threads: int
    idle_wait: float
    quick: bool

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        quick = (env.get("SCALING_QUICK") or "0") == "1"
        return cls(
            seconds=dp.env_int(env, "BENCH_SECONDS", "2" if quick else "8"),
            rounds=dp.env_int(env, "BENCH_ROUNDS", "1" if quick else "2"),
            warmup=dp.env_int(env, "BENCH_WARMUP", "1" if quick else "2"),
            spread_warmup=dp.env_int(env, "SCALING_SPREAD_WARMUP", "2" if quick else "30"),
            workers=int_list(env, "SCALING_WORKERS", "1,2,4"),
            accounts=int_list(env, "SCALING_ACCOUNTS", "1,10,1000"),
            connections=dp.env_int(env, "SCALING_CONNECTIONS", "64"),
            wrk_threads=dp.env_int(env, "SCALING_WRK_THREADS", "1"),
            idle_wait=float(env.get("BENCH_IDLE_WAIT") or 20),
            quick=quick,
        )

    def warmup_for(self, cell: ScalingCell) -> int:
        """A worker loads an account's token, gateway and limits on the first request it
        serves for it (a few database reads, ~10 ms of CPU through SQLAlchemy), and with N
        workers each sees a given account in only 1/N of the passes. Cells with several
        workers and many accounts therefore warm up for `spread_warmup` seconds, long enough
        for every worker to have served every account: the rounds then measure the steady
        state, and the warm-up row still shows the cold start."""
        spread = cell.workers > 1 and cell.accounts >= SPREAD_ACCOUNTS
        return max(self.warmup, self.spread_warmup) if spread else self.warmup


def int_list(env: Mapping[str, str], name: str, default: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in (env.get(name) or default).split(","))
    if not values or min(values) < 1:
        raise SystemExit(f"{name} must be a comma-separated list of positive integers")
    return values


# --- accounts ----------------------------------------------------------------------------------


def write_accounts_file(path: Path, accounts: list[dict[str, str]]) -> None:
    """The file bench/accounts.lua reads: one `account_id token` line per account."""
    path.write_text("".join(f"{a['account_id']} {a['token']}\n" for a in accounts))


def spread(items: list[Any], count: int) -> list[Any]:
    """At most `count` of `items`, evenly spaced, the first and the last included."""
    if len(items) <= count:
        return list(items)
    step = (len(items) - 1) / (count - 1)
    return [items[round(i * step)] for i in range(count)]


def seed_template(accounts: int, base_env: dict[str, str]) -> tuple[Path, list[dict[str, str]]]:
    """A store with `accounts` accounts, seeded once and copied for every cell that needs it
    (seeding 1,000 accounts takes tens of seconds)."""
    template = SCALING_WORK / f"seed-{accounts}"
    shutil.rmtree(template, ignore_errors=True)
    template.mkdir(parents=True)
    env = {**base_env, **gateway_settings_env(template)}
    settings = load_settings(env=env)
    started = time.monotonic()
    seeded = asyncio.run(serve_gateway.seed_accounts(settings, accounts))
    print(f"seeded {accounts} accounts in {time.monotonic() - started:.1f} s", flush=True)
    return template, seeded


# --- the gateway -------------------------------------------------------------------------------


def gateway_settings_env(data_dir: Path, nginx_port: int = 0) -> dict[str, str]:
    """serve_gateway.py's settings (managed key `sk-bench` for `openai`, at nginx's `/v1`), and
    an empty config file, so that no stray tollgate.toml or TOLLGATE_* variable joins in."""
    empty = SCALING_WORK / "empty.toml"
    empty.write_text("")
    upstream = f"http://127.0.0.1:{nginx_port}/v1"
    env = serve_gateway.gateway_env(data_dir, upstream, None, None)
    return {**env, "TOLLGATE_CONFIG": str(empty)}


def listening(port: int) -> int:
    """How many sockets listen on `port` (IPv4), from /proc/net/tcp: one per ready worker."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    fields = (row.split() for row in rows)
    return sum(1 for f in fields if f[1].endswith(f":{port:04X}") and f[3] == "0A")


class Gateway:
    """`python -m tollgate serve --workers N` on a fresh copy of a seeded store."""

    def __init__(
        self, procs: dp.Processes, workers: int, template: Path, nginx_port: int, port: int
    ) -> None:
        self.procs, self.workers, self.port = procs, workers, port
        self.data_dir = SCALING_WORK / "gw"
        shutil.rmtree(self.data_dir, ignore_errors=True)
        shutil.copytree(template, self.data_dir)
        settings_env = gateway_settings_env(self.data_dir, nginx_port)
        self.database_url = settings_env["TOLLGATE_DATABASE_URL"]
        # `env` clears what the caller's environment could add (TOLLGATE_*, provider API keys)
        # and sets the benchmark's settings; it execs Python, so the pid is the gateway's.
        stray = [k for k in os.environ if k.startswith("TOLLGATE_") or k.endswith("_API_KEY")]
        argv = ["env", *(f"--unset={k}" for k in stray)]
        argv += [f"{k}={v}" for k, v in settings_env.items()]
        argv += [sys.executable, "-m", "tollgate", "serve", "--workers", str(workers)]
        argv += ["--host", "127.0.0.1", "--port", str(port)]
        self.log = SCALING_WORK / f"gateway-w{workers}-{template.name}.log"  # seed-<accounts>
        self.proc = procs.start(argv, marker="tollgate", log=self.log)
        self._wait_serving()
        self.started_pids = self.pids()

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: the supervisor's children, or the lone gateway."""
        children = dp.process_tree(self.proc.pid)[1:]
        return children if self.workers > 1 else [self.proc.pid]

    def pids(self) -> list[int]:
        """Every gateway process, the supervisor included (its CPU counts too)."""
        return dp.process_tree(self.proc.pid)

    def _wait_serving(self) -> None:
        """Until every worker listens (each does once its start-up is over) and answers."""
        started = time.monotonic()

        def ready() -> bool:
            if listening(self.port) != self.workers or len(self.worker_pids()) != self.workers:
                return False
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            try:
                conn.request("GET", "/healthz")
                return conn.getresponse().status == 200
            finally:
                conn.close()

        # Generous: on a busy 2-core machine, 2 workers took 40 s to start.
        what = f"the gateway ({self.workers} workers)"
        dp.wait_until(ready, self.proc, self.log, what, timeout=STARTUP_TIMEOUT)
        self.startup_s = round(time.monotonic() - started, 1)

    def stop(self) -> dict[str, Any]:
        """SIGTERM, as an operator stops it: the workers drain and release their leases."""
        still_same = self.proc.poll() is None and self.pids() == self.started_pids
        self.proc.terminate()
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            code = None  # Processes.stop kills it
        self.procs.stop(self.proc)
        log = self.log.read_text(errors="replace")
        return {
            "exit_code": code,
            "same_processes_throughout": still_same,
            "traceback_in_log": "Traceback" in log,
            "clean": code in DRAINED and still_same and "Traceback" not in log,
        }


# --- measuring ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScalingCell:
    workers: int
    accounts: int

    @property
    def name(self) -> str:
        return f"{self.workers}w x {self.accounts}acct"


def account_arm(url: str, account: dict[str, str]) -> dp.Arm:
    headers = {"Authorization": f"Bearer {account['token']}"}
    return dp.Arm("gateway", url.replace(PLACEHOLDER, account["account_id"]), headers, billed=True)


def check_accounts(url: str, accounts: list[dict[str, str]]) -> dict[str, Any]:
    """One request per account before measuring. Some (first, last, evenly between) are
    checked in full (dp.check_arm: 200, the canned body unchanged, billed); every other one must
    answer 200 with the same `cf-aig-cost`. Besides checking, this puts every account in use
    (its `default` gateway is created on its first request), so that the rounds measure
    accounts in use, not first requests. Returns the cost in nano-dollars for the books."""
    checked = spread(accounts, CHECKED_ACCOUNTS)
    costs = {dp.check_arm(account_arm(url, a), SIMPLE_ROW)["cost_usd"] for a in checked}
    if len(costs) != 1:
        raise SystemExit(f"the same request was billed differently across accounts: {costs}")
    cost_usd = costs.pop()

    def touch(account: dict[str, str]) -> None:
        arm = account_arm(url, account)
        status, headers, body = dp.post_with(arm.url, SIMPLE_ROW.body, arm.headers)
        if status != 200 or headers.get("cf-aig-cost") != cost_usd:
            raise SystemExit(
                f"account {account['account_id']}: HTTP {status}, cf-aig-cost "
                f"{headers.get('cf-aig-cost')} (expected 200 and {cost_usd}): {body[:500]!r}"
            )

    rest = [a for a in accounts if a not in checked]
    with ThreadPoolExecutor(TOUCH_CONCURRENCY) as pool:
        list(pool.map(touch, rest))
    nanos = Decimal(cost_usd) * 10**9
    if nanos != nanos.to_integral_value():
        raise SystemExit(f"cf-aig-cost {cost_usd} is not a whole number of nano-dollars")
    return {
        "requests": len(accounts),
        "checked_in_full": len(checked),
        "cost_usd": cost_usd,
        "cost_nanos": int(nanos),
    }


def run_wrk(
    url: str, config: Config, seconds: int, meter: dp.CpuMeter, gateway: Gateway, accounts: Path
) -> dict[str, Any]:
    """One wrk run over the accounts, unpinned, with each worker's CPU time over the run."""
    workers = gateway.worker_pids()
    before = {pid: dp.process_cpu_seconds([pid]) for pid in workers}
    result = dp.wrk(
        url,
        SIMPLE_ROW.body,
        {},
        config.connections,
        seconds,
        meter,
        script=ACCOUNTS_LUA,
        threads=config.wrk_threads,
        pinned=False,
        extra_env={"BENCH_POST_LUA": str(dp.LUA), "BENCH_ACCOUNTS": str(accounts)},
    )
    wall = result["cpu"]["wall_s"]
    result["worker_cpu_pct"] = [
        round(100.0 * (dp.process_cpu_seconds([pid]) - before[pid]) / wall, 1) for pid in workers
    ]
    result["answered_2xx"] = result["requests"] - sum(result["bad_statuses"].values())
    return result


def measure_cell(
    cell: ScalingCell,
    config: Config,
    procs: dp.Processes,
    nginx: tuple[subprocess.Popen[bytes], int],
    template: tuple[Path, list[dict[str, str]]],
) -> dict[str, Any]:
    started = time.monotonic()
    nginx_proc, nginx_port = nginx
    seed_dir, accounts = template
    accounts_file = SCALING_WORK / f"accounts-{cell.accounts}.txt"
    write_accounts_file(accounts_file, accounts)
    gateway = Gateway(procs, cell.workers, seed_dir, nginx_port, dp.free_port())
    url = f"http://127.0.0.1:{gateway.port}/v1/{PLACEHOLDER}/default/openai/chat/completions"
    try:
        checks = check_accounts(url, accounts)
        meter = dp.CpuMeter(gateway=gateway.pids(), nginx=dp.process_tree(nginx_proc.pid))
        warmup = run_wrk(url, config, config.warmup_for(cell), meter, gateway, accounts_file)
        rounds = []
        for i in range(config.rounds):
            r = run_wrk(url, config, config.seconds, meter, gateway, accounts_file)
            rounds.append(r)
            print(
                f"  {cell.name:<16} round {i + 1}/{config.rounds} {r['rps']:>8,.0f} rps  "
                f"p50 {r['latency_us']['p50'] / 1000:>7.2f} ms  "
                f"p99 {r['latency_us']['p99'] / 1000:>7.2f} ms  "
                f"CPU/req {r['gateway_cpu_us_per_req'] or 0:>6,} µs  failed {r['failed']}  "
                f"workers {'/'.join(f'{p:.0f}' for p in r['worker_cpu_pct'])}% "
                f"other load {r['cpu']['other_pct']:.0f}%",
                flush=True,
            )
    finally:
        stopped = gateway.stop()
    runs = [warmup, *rounds]
    books = asyncio.run(
        scaling_books.check(
            gateway.database_url,
            [a["account_id"] for a in accounts],
            cost_nanos=checks["cost_nanos"],
            answered=checks["requests"] + sum(r["answered_2xx"] for r in runs),
            # Each run's end cuts off up to one request per connection, which the gateway may
            # still complete and charge; a request that failed may have been charged too.
            cut_off=sum(config.connections + r["failed"] for r in runs),
        )
    )
    print(f"  {cell.name:<16} books: {books['verdict']}", flush=True)
    return {
        "cell": asdict(cell),
        "checks": checks,
        "warmup": warmup,
        "rounds": rounds,
        "summary": summarize(rounds, warmup),
        "books": books,
        "startup_s": gateway.startup_s,
        "stop": stopped,
        "wall_s": round(time.monotonic() - started, 1),
    }


def summarize(rounds: list[dict[str, Any]], warmup: dict[str, Any]) -> dict[str, Any]:
    def median(get: Any) -> float:
        return float(statistics.median(get(r) for r in rounds))

    return {
        "rps": median(lambda r: r["rps"]),
        "rps_range": [min(r["rps"] for r in rounds), max(r["rps"] for r in rounds)],
        "cpu_us_per_req": median(lambda r: r["gateway_cpu_us_per_req"] or 0),
        "p50_us": median(lambda r: r["latency_us"]["p50"]),
        "p99_us": median(lambda r: r["latency_us"]["p99"]),
        "gateway_cores": median(lambda r: r["cpu"]["gateway_pct"] / 100),
        "wrk_nginx_cores": median(lambda r: (r["cpu"]["wrk_pct"] + r["cpu"]["nginx_pct"]) / 100),
        "other_pct_max": max(r["cpu"]["other_pct"] for r in rounds),
        "failed": sum(r["failed"] for r in rounds),
        "failed_warmup": warmup["failed"],
    }


# --- main --------------------------------------------------------------------------------------


def run(config: Config, procs: dp.Processes) -> dict[str, Any]:
    SCALING_WORK.mkdir(parents=True, exist_ok=True)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    templates = {n: seed_template(n, base_env) for n in sorted(set(config.accounts))}
    idle = dp.wait_for_idle(max_wait=config.idle_wait)
    print(
        f"load average {' '.join(idle['loadavg'])}; CPU busy {idle['cpu_busy_pct']}%"
        + ("" if idle["idle"] else "  ** NOT IDLE **"),
        flush=True,
    )
    nginx_port = dp.free_port()
    nginx = dp.start_nginx(procs, nginx_port)
    # start_nginx pins nginx to the load CPU (bench/dataplane.py's layout); here nothing is
    # pinned, so the kernel places every process of the benchmark.
    all_cpus = set(range(os.cpu_count() or 1))
    for pid in dp.process_tree(nginx.pid):
        os.sched_setaffinity(pid, all_cpus)
    started = time.monotonic()
    cells = []
    for accounts in config.accounts:
        for workers in config.workers:
            cell = ScalingCell(workers, accounts)
            print(f"{cell.name}:", flush=True)
            template = templates[accounts]
            cells.append(measure_cell(cell, config, procs, (nginx, nginx_port), template))
    return {
        "config": asdict(config),
        "idle": idle,
        "cpus": os.cpu_count(),
        "cells": cells,
        "measure_s": round(time.monotonic() - started),
    }


def problems(result: dict[str, Any]) -> list[str]:
    """What makes the run fail: errors, books that are not exact, a gateway that misbehaved."""
    found = []
    for c in result["cells"]:
        name = ScalingCell(**c["cell"]).name
        failed = c["summary"]["failed"] + c["summary"]["failed_warmup"]
        if failed:
            found.append(f"{name}: {failed} failed requests")
        if not c["books"]["exact"]:
            found.append(f"{name}: books not exact ({c['books']['verdict']})")
        if not c["stop"]["clean"]:
            found.append(f"{name}: the gateway did not run and stop cleanly ({c['stop']})")
    return found


def main() -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # run.sh starts us with it ignored
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    config = Config.from_env(os.environ)
    dp.WORK.mkdir(parents=True, exist_ok=True)
    env = dp.environment()
    print(f"tollgate scaling benchmark, commit {env['commit']}, {config}", flush=True)
    started = time.monotonic()
    procs = dp.Processes()
    try:
        result = run(config, procs)
    finally:
        procs.stop_all()
    result["env"] = env
    result["total_s"] = round(time.monotonic() - started)
    result["problems"] = problems(result)
    markdown = scaling_report.render(result)
    print("\n" + markdown)
    dp.write_results(result, markdown, "scaling")
    for problem in result["problems"]:
        print(f"FAILED: {problem}")
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
