"""Soak benchmark: the gateway's memory over a long run at half its peak load (the performance
issue: "less than 10% growth over a 10-minute soak at 50% of peak load", and "≤ 150 MB RSS idle").

One gateway process (bench/serve_gateway.py: SQLite, Unified Billing on, request logs on, CPU 1)
in front of nginx's canned answers (CPU 0), as in bench/dataplane.py, whose helpers this uses:

1. RSS idle: after start-up and one request per kind;
2. peak: `wrk -c16` for `BENCH_PEAK_SECONDS` (default 10), non-streaming, billed;
3. pacing: each of `BENCH_SOAK_CONNECTIONS` (16) connections pauses before every request
   (bench/paced_post.lua), the pause set so the rate is half the peak; a 10 s run measures it
   and the pause is corrected once;
4. the soak: one paced wrk run of `BENCH_SOAK_SECONDS` (600), the gateway's RSS sampled every
   `BENCH_SAMPLE_SECONDS` (10). Growth is read against the first sample (RSS once the load is
   on), and also from the first minute's median to the last minute's (the steady state);
5. the books afterwards: every request of the soak a 2xx.

Writes `bench/results/<date>-soak.md` and `bench/results/raw/<timestamp>-soak.json`. Run it with
`make bench-soak` (`BENCH_ONLY=soak bash bench/run.sh`). Exit status 1 when a request failed.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import dataplane as dp

PACED_LUA = dp.BENCH / "paced_post.lua"
RSS_IDLE_TARGET_MIB = 150
GROWTH_TARGET = 0.10


@dataclass(frozen=True)
class Config:
    peak_seconds: int
    soak_seconds: int
    sample_seconds: int
    connections: int
    load_fraction: float

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Config:
        return cls(
            peak_seconds=dp.env_int(env, "BENCH_PEAK_SECONDS", "10"),
            soak_seconds=dp.env_int(env, "BENCH_SOAK_SECONDS", "600"),
            sample_seconds=dp.env_int(env, "BENCH_SAMPLE_SECONDS", "10"),
            connections=dp.env_int(env, "BENCH_SOAK_CONNECTIONS", "16"),
            load_fraction=float(env.get("BENCH_LOAD_FRACTION") or "0.5"),
        )


def rss_mib(pid: int) -> float:
    return round(dp.process_memory_kib(pid)["VmRSS"] / 1024, 1)


class Sampler(threading.Thread):
    """The gateway's RSS every `every` seconds until `stop` is set: (seconds since start, MiB)."""

    def __init__(self, pid: int, every: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        while not self.stop.wait(0 if not self.samples else self.every):
            self.samples.append((round(time.monotonic() - started, 1), rss_mib(self.pid)))


def paced(
    arm: dp.Arm, cell: dp.Cell, seconds: int, delay_ms: int, meter: dp.CpuMeter
) -> dict[str, Any]:
    extra = {"BENCH_POST_LUA": str(dp.LUA), "BENCH_DELAY_MS": str(delay_ms)}
    return dp.wrk(
        arm.url,
        cell.body,
        arm.headers,
        cell.connections,
        seconds,
        meter,
        script=PACED_LUA,
        extra_env=extra,
    )


def pause_for(rate: float, connections: int, latency_ms: float) -> int:
    """The pause (ms) that makes `connections` closed-loop connections send `rate` requests/s."""
    return max(0, round(1000 * connections / rate - latency_ms))


def run(config: Config, procs: dp.Processes) -> dict[str, Any]:
    nginx_port, port = dp.free_port(), dp.free_port()
    nginx = dp.start_nginx(procs, nginx_port)
    gateway, creds = dp.start_gateway(procs, port, nginx_port)
    meter = dp.CpuMeter(gateway=[gateway.pid], nginx=dp.process_tree(nginx.pid))
    cell = dp.Cell(f"non-stream c={config.connections}", config.connections, stream=False)

    def billed_arm(cell: dp.Cell) -> dp.Arm:
        return next(a for a in dp.arms_for(cell, nginx_port, port, creds) if a.name == "gateway")

    arm = billed_arm(cell)
    dp.check_arm(arm, cell)
    streamed = dp.Cell("stream check", 1, stream=True)
    dp.check_arm(billed_arm(streamed), streamed)
    idle = rss_mib(gateway.pid)
    print(f"RSS idle: {idle} MiB", flush=True)

    peak = dp.wrk(arm.url, cell.body, arm.headers, 16, config.peak_seconds, meter)
    target = peak["rps"] * config.load_fraction
    latency_ms = peak["latency_us"]["p50"] / 1000 / 2  # about what it is at half the load
    delay = pause_for(target, config.connections, latency_ms)
    trial = paced(arm, cell, 10, delay, meter)
    # Correct once, from what the pause gave: rate = connections / (pause + latency).
    per_request_ms = 1000 * config.connections / trial["rps"]
    delay = pause_for(target, config.connections, per_request_ms - delay)
    print(
        f"peak {peak['rps']:,.0f} rps; target {target:,.0f} rps; trial {trial['rps']:,.0f} rps "
        f"at {trial['cpu']['gateway_pct']}% of a core; pause {delay} ms per request",
        flush=True,
    )

    sampler = Sampler(gateway.pid, config.sample_seconds)
    sampler.start()
    try:
        soak = paced(arm, cell, config.soak_seconds, delay, meter)
    finally:
        sampler.stop.set()
        sampler.join()
    sampler.samples.append((float(config.soak_seconds), rss_mib(gateway.pid)))
    return {
        "config": asdict(config),
        "rss_idle_mib": idle,
        "peak": peak,
        "target_rps": round(target),
        "pause_ms": delay,
        "trial": trial,
        "soak": soak,
        "samples": sampler.samples,
        "memory": memory_summary(sampler.samples),
        "rss_hwm_mib": round(dp.process_memory_kib(gateway.pid)["VmHWM"] / 1024, 1),
    }


def memory_summary(samples: list[tuple[float, float]]) -> dict[str, float]:
    first, last = samples[0][1], samples[-1][1]
    end = samples[-1][0]
    first_minute = [rss for t, rss in samples if t <= 60]
    last_minute = [rss for t, rss in samples if t >= end - 60]
    steady_from, steady_to = statistics.median(first_minute), statistics.median(last_minute)
    return {
        "first_mib": first,
        "last_mib": last,
        "max_mib": max(rss for _, rss in samples),
        "growth": round((last - first) / first, 4),
        "first_minute_median_mib": steady_from,
        "last_minute_median_mib": steady_to,
        "steady_growth": round((steady_to - steady_from) / steady_from, 4),
    }


def render(result: dict[str, Any]) -> str:
    env, memory, soak = result["env"], result["memory"], result["soak"]
    peak = result["peak"]
    fraction = soak["rps"] / peak["rps"]
    verdict = "meets" if memory["growth"] < GROWTH_TARGET else "**misses**"
    idle_verdict = "meets" if result["rss_idle_mib"] <= RSS_IDLE_TARGET_MIB else "**misses**"
    lines = [
        f"# Soak benchmark, {env['date_utc']} UTC",
        "",
        f"- Commit: `{env['commit']}`",
        f"- Machine: {env['cpu_model']}, {env['cpus']} CPUs; Python {env['python']}",
        "- One gateway process (SQLite, Unified Billing on, request logs on) on CPU 1; nginx "
        "(canned answers) and wrk on CPU 0; non-streaming requests billed to one account",
        f"- Load: {result['config']['connections']} connections, each pausing "
        f"{result['pause_ms']} ms before every request (bench/paced_post.lua)",
        "",
        "| measure | value | target |",
        "|---|--:|---|",
        f"| RSS idle (after start-up) | {result['rss_idle_mib']} MiB "
        f"| ≤ {RSS_IDLE_TARGET_MIB} MiB: {idle_verdict} |",
        f"| peak throughput (`wrk -c16`, {result['config']['peak_seconds']} s) | "
        f"{peak['rps']:,.0f} rps | |",
        f"| soak throughput ({soak['cpu']['wall_s']:.0f} s) | {soak['rps']:,.0f} rps "
        f"({fraction:.0%} of peak) | 50% of peak |",
        f"| soak requests / failed | {soak['requests']:,} / {soak['failed']} | 0 failed |",
        f"| soak latency p50 / p99 (queueing: the paced connections fall into step and "
        f"arrive in bursts) | {soak['latency_us']['p50'] / 1000:.2f} / "
        f"{soak['latency_us']['p99'] / 1000:.2f} ms | |",
        f"| gateway core busy during the soak | {soak['cpu']['gateway_pct']}% | |",
        f"| RSS at the soak's start / end / max | {memory['first_mib']} / {memory['last_mib']} / "
        f"{memory['max_mib']} MiB | |",
        f"| **RSS growth over the soak** (end / start) | **{memory['growth']:+.1%}** | < 10%: "
        f"{verdict} |",
        f"| RSS growth, first minute's median to last minute's | {memory['steady_growth']:+.1%} "
        "| |",
        f"| peak RSS of the process (VmHWM) | {result['rss_hwm_mib']} MiB | |",
        "",
        "RSS samples (seconds into the soak: MiB):",
        "",
        ", ".join(f"{t:.0f}: {rss}" for t, rss in result["samples"]),
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    config = Config.from_env(dict(os.environ))
    dp.WORK.mkdir(parents=True, exist_ok=True)
    env = dp.environment()
    print(f"tollgate soak benchmark, commit {env['commit']}, {config}", flush=True)
    env["before"] = dp.wait_for_idle()
    procs = dp.Processes()
    try:
        result = run(config, procs)
    except subprocess.TimeoutExpired as exc:
        raise SystemExit(f"wrk did not finish: {exc}") from None
    finally:
        procs.stop_all()
    result["env"] = env
    markdown = render(result)
    print("\n" + markdown)
    dp.write_results(result, markdown, "soak")
    return 1 if result["soak"]["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
