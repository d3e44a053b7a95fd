"""Logging benchmark: the gateway with request logs on against logs off, in one run.
(Named logs.py: a bench/logging.py would shadow the standard library's `logging` for every
script run from bench/, serve_gateway.py included.)

Both arms go through the same gateway process to the same zero-delay upstream (nginx), with
Unified Billing (the managed key pays): the `logs-on` arm calls the `default` gateway (logs
collected, bodies included), the `logs-off` arm a gateway `quiet` created with
`collect_logs: false`. The difference is what logging costs: capturing each request and
response, and the background writer's batched inserts (issue 5, "Speed": log writing never
blocks a response).

Rows: non-streaming at each concurrency (default 16) and one streaming row. Within a row the
arms alternate (odd rounds logs-on first, even rounds logs-off first) after a discarded
warm-up. Reported per arm: RPS, p50/p99, gateway CPU/request; per row the medians of the
paired ratios logs-on / logs-off for RPS and CPU/request. Same pinning, runner and measures
as bench/dataplane.py, whose helpers this imports.

Run it with `.venv/bin/python bench/logs.py` (needs nginx and wrk: bench/install.sh).
Options: BENCH_SECONDS (default 3), BENCH_ROUNDS (2), BENCH_WARMUP (1),
BENCH_LOGGING_CONCURRENCY ("16"), BENCH_STREAM_CONCURRENCY (16). Exit status 1 when the gateway
failed any request under load.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import sys
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import dataplane as dp

QUIET_GATEWAY = "quiet"
ADMIN_TOKEN = "bench-admin-token"  # bench/serve_gateway.py's


@dataclass(frozen=True)
class Config:
    seconds: int
    rounds: int
    warmup: int
    concurrency: tuple[int, ...]
    stream_concurrency: int

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        levels = (env.get("BENCH_LOGGING_CONCURRENCY") or "16").split(",")
        return cls(
            seconds=dp.env_int(env, "BENCH_SECONDS", "3"),
            rounds=dp.env_int(env, "BENCH_ROUNDS", "2"),
            warmup=dp.env_int(env, "BENCH_WARMUP", "1"),
            concurrency=tuple(int(c) for c in levels),
            stream_concurrency=dp.env_int(env, "BENCH_STREAM_CONCURRENCY", "16"),
        )


def call(url: str, token: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


def create_quiet_gateway(port: int, account_id: str) -> None:
    """A gateway with `collect_logs: false`, through the admin and management APIs."""
    base = f"http://127.0.0.1:{port}"
    editor = call(
        f"{base}/admin/v1/accounts/{account_id}/tokens",
        ADMIN_TOKEN,
        {"name": "bench-edit", "permissions": ["run", "read", "edit"]},
    )["token"]
    settings = {
        "id": QUIET_GATEWAY,
        "cache_invalidate_on_update": False,
        "cache_ttl": 0,
        "collect_logs": False,
        "rate_limiting_interval": 0,
        "rate_limiting_limit": 0,
    }
    call(f"{base}/client/v4/accounts/{account_id}/ai-gateway/gateways", editor, settings)


def arms_for(cell: dp.Cell, port: int, creds: dict[str, str]) -> list[dp.Arm]:
    provider = "groq" if cell.stream else "openai"  # as bench/dataplane.py routes its rows
    headers = {"Authorization": f"Bearer {creds['token']}"}

    def url(gateway: str) -> str:
        return f"http://127.0.0.1:{port}/v1/{creds['account_id']}/{gateway}/{provider}/chat/completions"

    return [
        dp.Arm("logs-on", url("default"), headers, billed=True),
        dp.Arm("logs-off", url(QUIET_GATEWAY), headers, billed=True),
    ]


def measure(
    cell: dp.Cell, arms: list[dp.Arm], config: Config, meter: dp.CpuMeter
) -> dict[str, Any]:
    for arm in arms:
        dp.run_wrk(arm, cell, config.warmup, meter)
    rounds = []
    for i in range(config.rounds):
        order = arms if i % 2 == 0 else list(reversed(arms))
        results = {}
        for arm in order:
            r = results[arm.name] = dp.run_wrk(arm, cell, config.seconds, meter)
            print(
                f"  {cell.name:<16} round {i + 1}/{config.rounds} {arm.name:<8} "
                f"{r['rps']:>9,.0f} rps  p50 {r['latency_us']['p50'] / 1000:>7.2f} ms  "
                f"p99 {r['latency_us']['p99'] / 1000:>7.2f} ms  "
                f"CPU/req {r['gateway_cpu_us_per_req']:>6,} µs  failed {r['failed']}",
                flush=True,
            )
        rounds.append(results)

    def median(get: Any) -> float:
        return round(statistics.median(get(r) for r in rounds), 3)

    summary = {
        arm.name: {
            "rps": median(lambda r, a=arm.name: r[a]["rps"]),
            "p50_us": median(lambda r, a=arm.name: r[a]["latency_us"]["p50"]),
            "p99_us": median(lambda r, a=arm.name: r[a]["latency_us"]["p99"]),
            "cpu_us_per_req": median(lambda r, a=arm.name: r[a]["gateway_cpu_us_per_req"]),
            "failed": sum(r[arm.name]["failed"] for r in rounds),
        }
        for arm in arms
    }
    summary["rps_ratio_on_off"] = median(lambda r: r["logs-on"]["rps"] / r["logs-off"]["rps"])
    summary["cpu_ratio_on_off"] = median(
        lambda r: r["logs-on"]["gateway_cpu_us_per_req"] / r["logs-off"]["gateway_cpu_us_per_req"]
    )
    return {"cell": asdict(cell), "rounds": rounds, "summary": summary}


def render(result: dict[str, Any]) -> str:
    lines = [
        "# Logging benchmark: logs on vs logs off (same gateway, same upstream)",
        "",
        f"commit {result['env'].get('commit')}, {result['config']}",
        "",
        "| row | arm | RPS | p50 ms | p99 ms | CPU/req µs | failed |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for cell in result["cells"]:
        s = cell["summary"]
        for arm in ("logs-on", "logs-off"):
            a = s[arm]
            lines.append(
                f"| {cell['cell']['name']} | {arm} | {a['rps']:,.0f} | {a['p50_us'] / 1000:.2f} "
                f"| {a['p99_us'] / 1000:.2f} | {a['cpu_us_per_req']:,.0f} | {a['failed']} |"
            )
    lines += ["", "| row | RPS on/off | CPU/req on/off |", "|---|---:|---:|"]
    for cell in result["cells"]:
        s = cell["summary"]
        name = cell["cell"]["name"]
        lines.append(f"| {name} | {s['rps_ratio_on_off']:.3f} | {s['cpu_ratio_on_off']:.3f} |")
    lines.append(f"\nlogs written by the gateway during the run: {result['logs_written']}")
    return "\n".join(lines) + "\n"


def count_logs(port: int, creds: dict[str, str]) -> int | None:
    """How many logs the default gateway holds (needs a read token: issued by the admin API)."""
    base = f"http://127.0.0.1:{port}"
    reader = call(
        f"{base}/admin/v1/accounts/{creds['account_id']}/tokens",
        ADMIN_TOKEN,
        {"name": "bench-read", "permissions": ["read"]},
    )["token"]
    account = creds["account_id"]
    url = f"{base}/client/v4/accounts/{account}/ai-gateway/gateways/default/logs?per_page=1"
    request = urllib.request.Request(url, headers={"authorization": f"Bearer {reader}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        total = json.loads(response.read())["result_info"]["total_count"]
        return int(total)


def run(config: Config, procs: dp.Processes) -> dict[str, Any]:
    nginx_port, port = dp.free_port(), dp.free_port()
    nginx = dp.start_nginx(procs, nginx_port)
    gateway, creds = dp.start_gateway(procs, port, nginx_port)
    create_quiet_gateway(port, creds["account_id"])
    meter = dp.CpuMeter(gateway=[gateway.pid], nginx=dp.process_tree(nginx.pid))
    cells = [dp.Cell(f"non-stream c={c}", c, stream=False) for c in config.concurrency]
    cells.append(dp.Cell(f"stream c={config.stream_concurrency}", config.stream_concurrency, True))
    plan = [(cell, arms_for(cell, port, creds)) for cell in cells]
    for cell, arms in plan:
        for arm in arms:
            dp.check_arm(arm, cell)
    measured = [measure(cell, arms, config, meter) for cell, arms in plan]
    return {"config": asdict(config), "cells": measured, "logs_written": count_logs(port, creds)}


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    config = Config.from_env(os.environ)
    dp.WORK.mkdir(parents=True, exist_ok=True)
    env = dp.environment()
    print(f"tollgate logging benchmark, commit {env['commit']}, {config}", flush=True)
    procs = dp.Processes()
    try:
        result = run(config, procs)
    finally:
        procs.stop_all()
    result["env"] = env
    markdown = render(result)
    print("\n" + markdown)
    dp.write_results(result, markdown, "logging")
    failed = sum(
        c["summary"][a]["failed"] for c in result["cells"] for a in ("logs-on", "logs-off")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
