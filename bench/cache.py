"""Response-cache benchmark: cache hits against cache misses, through the same gateway process to
the same zero-delay upstream (issue 5: "a cache hit is served without touching the ledger or the
upstream: measure hit throughput against miss throughput").

Three arms per row, all with the gateway's managed key (Unified Billing), interleaved after a
discarded warm-up, medians over rounds:

- `hit`:  the same body every request, `cf-aig-cache-ttl: 3600`: after the first request every
          answer is replayed from the cache (no hold, no ledger write, no upstream call);
- `miss`: the same request made unique per request (`"user": "<run id>-<n>"`), same header: each
          one is looked up, forwarded, billed, and stored;
- `off`:  the unique requests without any cache header: the cache is not used at all, so
          `miss` against `off` is what a miss adds (a lookup and a store).

The gateway uses its in-process cache (bench/serve_gateway.py builds its settings itself, with
no `[redis] url`). Same topology and tooling as bench/dataplane.py, whose helpers it imports:
the gateway pinned to CPU 1, nginx and wrk on CPU 0, wrk with bench/post.lua, wrapped by a
generated script that numbers each request (bench/.work/cache.lua).

    .venv/bin/python bench/cache.py

Options (environment): BENCH_SECONDS (default 3), BENCH_ROUNDS (3), BENCH_WARMUP (1),
BENCH_CACHE_CONCURRENCY ("1,16"), BENCH_CACHE_STREAM_CONCURRENCY (16; 0 = no streaming row),
BENCH_IDLE_WAIT (seconds to wait for an idle machine, 20). Writes
bench/results/<date>-cache.md and bench/results/raw/<timestamp>-cache.json. Exit status 1 when
the gateway failed any request under load.
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import dataplane as dp

# post.lua sends one fixed body; this wrapper replaces NONCE in it with a per-request number,
# so the `miss` and `off` arms never repeat a body within a run.
WRAPPER_LUA = """dofile("{post}")
counter = 0
function request()
   counter = counter + 1
   local body = string.gsub(wrk.body, "NONCE", tostring(counter))
   return wrk.format(nil, nil, nil, body)
end
"""
CACHE_HEADERS = {"cf-aig-cache-ttl": "3600"}


@dataclass(frozen=True)
class Config:
    seconds: int
    rounds: int
    warmup: int
    concurrency: tuple[int, ...]
    stream_concurrency: int
    idle_wait: float

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        levels = (env.get("BENCH_CACHE_CONCURRENCY") or "1,16").split(",")
        return cls(
            seconds=dp.env_int(env, "BENCH_SECONDS", "3"),
            rounds=dp.env_int(env, "BENCH_ROUNDS", "3"),
            warmup=dp.env_int(env, "BENCH_WARMUP", "1"),
            concurrency=tuple(int(c) for c in levels),
            stream_concurrency=dp.env_int(env, "BENCH_CACHE_STREAM_CONCURRENCY", "16", low=0),
            idle_wait=float(env.get("BENCH_IDLE_WAIT") or 20),
        )


@dataclass(frozen=True)
class Arm:
    name: str  # "hit", "miss" or "off"
    url: str
    headers: Mapping[str, str] = field(hash=False)
    unique: bool  # a fresh body per request (NONCE numbered by the Lua wrapper)


def arms_for(cell: dp.Cell, gateway_port: int, creds: dict[str, str]) -> list[Arm]:
    provider = "groq" if cell.stream else "openai"  # as bench/dataplane.py: groq streams
    url = (
        f"http://127.0.0.1:{gateway_port}/v1/{creds['account_id']}/default/{provider}"
        "/chat/completions"
    )
    auth = {"Authorization": f"Bearer {creds['token']}"}
    return [
        Arm("hit", url, {**auth, **CACHE_HEADERS}, unique=False),
        Arm("miss", url, {**auth, **CACHE_HEADERS}, unique=True),
        Arm("off", url, auth, unique=True),
    ]


# Makes the `hit` arm's body this run's and this row's own: rows would otherwise share one entry,
# and a row's check would find it already cached by the row before.
RUN_ID = uuid.uuid4().hex


def body_for(cell: dp.Cell, arm: Arm) -> str:
    """The row's body; for a unique arm, with a `user` that is new in every wrk run."""
    if not arm.unique:
        return cell.body[:-1] + f',"user":"bench-{RUN_ID}-{cell.name}"}}'
    return cell.body[:-1] + f',"user":"bench-{uuid.uuid4().hex}-NONCE"}}'


def check_arm(arm: Arm, cell: dp.Cell) -> dict[str, Any]:
    """Before measuring: the canned answer comes back unchanged; `hit` misses once then hits
    at zero cost; `miss` misses and is billed; `off` is not looked up and is billed."""
    body = body_for(cell, arm).replace("NONCE", "check")
    answers = [dp.post_with(arm.url, body, arm.headers) for _ in range(2)]
    problems = []
    for status, headers, raw in answers:
        relayed, _ = dp.billed(headers, raw)
        if status != 200 or relayed.decode(errors="replace") != cell.expected:
            problems.append(f"HTTP {status}, body {raw[:300]!r}")
    statuses = [headers.get("cf-aig-cache-status") for _, headers, _ in answers]
    costs = [dp.billed(headers, raw)[1] for _, headers, raw in answers]
    expected = {"hit": ["MISS", "HIT"], "miss": ["MISS", "HIT"], "off": [None, None]}[arm.name]
    if statuses != expected:
        problems.append(f"cache statuses {statuses}, expected {expected}")
    if arm.name == "hit" and (costs[0] in (None, "0") or costs[1] != "0"):
        problems.append(f"costs {costs}: the miss must be billed and the hit report 0")
    if problems:
        raise SystemExit(f"the {arm.name} arm of '{cell.name}' is wrong: {'; '.join(problems)}")
    return {"statuses": statuses, "costs_usd": costs}


def run_arm(arm: Arm, cell: dp.Cell, seconds: int, meter: dp.CpuMeter) -> dict[str, Any]:
    return dp.wrk(arm.url, body_for(cell, arm), arm.headers, cell.connections, seconds, meter)


def measure(cell: dp.Cell, arms: list[Arm], config: Config, meter: dp.CpuMeter) -> dict[str, Any]:
    for arm in arms:
        run_arm(arm, cell, config.warmup, meter)
    rounds = []
    for i in range(config.rounds):
        results = {}
        order = arms if i % 2 == 0 else list(reversed(arms))
        for arm in order:
            r = results[arm.name] = run_arm(arm, cell, config.seconds, meter)
            print(
                f"  {cell.name:<16} round {i + 1}/{config.rounds} {arm.name:<4} "
                f"{r['rps']:>9,.0f} rps  p50 {r['latency_us']['p50'] / 1000:>7.2f} ms  "
                f"p99 {r['latency_us']['p99'] / 1000:>7.2f} ms  "
                f"CPU/req {r['gateway_cpu_us_per_req'] or 0:>6,} µs  failed {r['failed']}",
                flush=True,
            )
        rounds.append(results)

    def median(arm: str, key: str) -> float:
        return statistics.median(float(r[arm][key] or 0) for r in rounds)

    summary: dict[str, Any] = {
        arm.name: {
            "rps": round(median(arm.name, "rps")),
            "p50_ms": statistics.median(r[arm.name]["latency_us"]["p50"] for r in rounds) / 1000,
            "p99_ms": statistics.median(r[arm.name]["latency_us"]["p99"] for r in rounds) / 1000,
            "cpu_us_per_req": round(median(arm.name, "gateway_cpu_us_per_req")),
            "failed": sum(r[arm.name]["failed"] for r in rounds),
        }
        for arm in arms
    }
    summary["hit_over_miss_rps"] = round(summary["hit"]["rps"] / (summary["miss"]["rps"] or 1), 2)
    return {"cell": asdict(cell), "rounds": rounds, "summary": summary}


def render(result: dict[str, Any]) -> str:
    env = result["env"]
    lines = [
        f"# Response cache: hits against misses ({env['date_utc']} UTC)",
        "",
        f"Commit {env['commit']}; {env['cpu_model']}, {env['cpus']} CPUs; Python "
        f"{env['python']}. Config: {result['config']}. Machine before the run: "
        f"{result['idle']['cpu_busy_pct']}% busy"
        + ("" if result["idle"]["idle"] else " (**not idle**: other load skews the numbers)"),
        "",
        "Medians over rounds. `hit`: replayed from the in-process cache (no hold, no ledger, no "
        "upstream); `miss`: looked up, forwarded, billed, stored; `off`: no cache headers.",
        "",
        "| row | arm | req/s | p50 ms | p99 ms | gateway CPU/req µs | failed |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for cell in result["cells"]:
        s = cell["summary"]
        for arm in ("hit", "miss", "off"):
            a = s[arm]
            lines.append(
                f"| {cell['cell']['name']} | {arm} | {a['rps']:,} | {a['p50_ms']:.2f} | "
                f"{a['p99_ms']:.2f} | {a['cpu_us_per_req']:,} | {a['failed']} |"
            )
        lines.append(f"| {cell['cell']['name']} | hit / miss | {s['hit_over_miss_rps']}x | | | | |")
    return "\n".join(lines) + "\n"


def run(config: Config, procs: dp.Processes) -> dict[str, Any]:
    idle = dp.wait_for_idle(max_wait=config.idle_wait)
    print(f"CPU busy {idle['cpu_busy_pct']}%" + ("" if idle["idle"] else "  ** NOT IDLE **"))
    nginx_port, gateway_port = dp.free_port(), dp.free_port()
    nginx = dp.start_nginx(procs, nginx_port)
    gateway, creds = dp.start_gateway(procs, gateway_port, nginx_port, label="gateway-cache")
    meter = dp.CpuMeter(gateway=[gateway.pid], nginx=dp.process_tree(nginx.pid))
    cells = [dp.Cell(f"non-stream c={c}", c, stream=False) for c in config.concurrency]
    if config.stream_concurrency:
        c = config.stream_concurrency
        cells.append(dp.Cell(f"stream c={c}", c, stream=True))
    plan = [(cell, arms_for(cell, gateway_port, creds)) for cell in cells]
    checks = {cell.name: {arm.name: check_arm(arm, cell) for arm in arms} for cell, arms in plan}
    measured = [measure(cell, arms, config, meter) for cell, arms in plan]
    memory = dp.process_memory_kib(gateway.pid)
    return {
        "config": asdict(config),
        "idle": idle,
        "checks": checks,
        "cells": measured,
        "memory": {"final_rss_kib": memory["VmRSS"], "peak_rss_kib": memory["VmHWM"]},
    }


def main() -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    config = Config.from_env(os.environ)
    dp.WORK.mkdir(parents=True, exist_ok=True)
    wrapper = dp.WORK / "cache.lua"
    wrapper.write_text(WRAPPER_LUA.format(post=dp.LUA))
    dp.LUA = wrapper  # every wrk run below numbers its requests
    env = dp.environment()
    print(f"tollgate response-cache benchmark, commit {env['commit']}, {config}", flush=True)
    procs = dp.Processes()
    try:
        result = run(config, procs)
    finally:
        procs.stop_all()
    result["env"] = env
    markdown = render(result)
    print("\n" + markdown)
    dp.write_results(result, markdown, "cache")
    arms = ("hit", "miss", "off")
    failed = sum(c["summary"][arm]["failed"] for c in result["cells"] for arm in arms)
    if failed:
        print(f"FAILED: the gateway failed {failed} requests under load")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
