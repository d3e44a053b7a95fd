"""The first-chunk row of bench/dataplane.py: a paced stream, timed to its first body byte.

The zero-delay rows send each canned stream at once, so they show what a stream costs but not
how fast its first chunk gets through. Here the upstream is bench/pacer.py (aiohttp, on CPU 0):
the canned OpenAI stream's 17 events, the first one `interval` after the request arrived and
each next one `interval` later (20 ms by default). bench/first_chunk.py (asyncio, on CPU 0) is
the client: `connections` keep-alive connections in a closed loop with short random pauses, and
for every stream the time from writing the request to its first body byte, and to its last.

Arms, the same as the other rows', all to the pacer's `/stream/v1/chat/completions`:
`direct` (the pacer itself), `gateway` (tollgate with its managed key: Unified Billing), `byok`
(the same gateway, the client's own key) and `litellm` (LiteLLM's proxy, its paced model entry).
The gateway is a second tollgate process, started for this row on the same port and CPU once
the zero-delay rows are done (its `groq` provider pointed at the pacer), as bench/translation.py
does for its streaming rows. LiteLLM keeps running (its config has had the paced entry from the
start).

Runs: a discarded warm-up per arm, then `rounds` rounds of every arm, interleaved as the other
rows are. Percentiles are taken over every stream of every round of an arm (a run of 8 s at 4
connections has only about 90 streams, too few for a p99 of its own); "added" = that percentile
minus the direct arm's, also pooled. The per-round p50 differences are kept for their spread.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import dataplane as dp
import litellm_arm
import pacer
import report
import upstream_mock

CLIENT = dp.BENCH / "first_chunk.py"


@dataclass(frozen=True)
class PacedArm:
    name: str  # "direct", "gateway", "byok" or "litellm"
    url: str
    body: str
    headers: Mapping[str, str] = field(hash=False)


def start_pacer(procs: dp.Processes, port: int, interval_ms: int) -> subprocess.Popen[bytes]:
    argv = ["taskset", "-c", str(dp.LOAD_CPU), sys.executable, str(dp.BENCH / "pacer.py")]
    argv += ["--port", str(port), "--interval-ms", str(interval_ms)]
    log = dp.WORK / "pacer.log"
    proc = procs.start(argv, marker="pacer.py", log=log)

    def ready() -> bool:
        url = f"http://127.0.0.1:{port}/stream/v1/chat/completions"
        return dp.post_with(url, "{}", {})[0] == 200

    dp.wait_until(ready, proc, log, "the pacer")
    return proc


def percentile(values: list[int], q: float) -> float:
    """Nearest-rank percentile (q in 0-100) of a non-empty list."""
    ordered = sorted(values)
    return float(ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)])


def run_client(
    arm: PacedArm, connections: int, seconds: int, interval_ms: int, meter: dp.CpuMeter
) -> dict[str, Any]:
    """One bench/first_chunk.py run pinned to the load CPU, with the CPU used meanwhile."""
    argv = ["taskset", "-c", str(dp.LOAD_CPU), sys.executable, str(CLIENT), "--url", arm.url]
    argv += ["--body", arm.body, "--connections", str(connections), "--seconds", str(seconds)]
    # Spread the first requests over one stream's length, then pause up to one interval.
    argv += ["--spread-ms", str(len(pacer.EVENTS) * interval_ms), "--pause-ms", str(interval_ms)]
    for name, value in arm.headers.items():
        argv += ["--header", f"{name}: {value}"]
    before = meter.snapshot()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120, check=False)
    cpu = dp.CpuMeter.usage(before, meter.snapshot())
    line = next((s for s in done.stdout.splitlines() if s.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(
            f"first_chunk.py failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    result: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
    served = result["requests"]
    result["rps"] = served / (result["duration_us"] / 1e6)
    result["cpu"] = cpu
    result["cpu_us_per_stream"] = round(1e6 * cpu["gateway_cpu_s"] / served) if served else None
    for key in ("first_chunk_us", "total_us"):
        samples = result[key]
        result[key] = {"samples": samples}
        if samples:
            result[key] |= {p: percentile(samples, float(p[1:])) for p in ("p50", "p90", "p99")}
    return result


def measure(
    arms: list[PacedArm], config: dp.Config, meters: Mapping[str, dp.CpuMeter]
) -> list[dict[str, Any]]:
    c, interval = config.paced_concurrency, config.paced_interval_ms
    for arm in arms:  # warm-up, discarded
        run_client(arm, c, config.warmup, interval, meters[arm.name])
    rounds = []
    for i in range(config.rounds):
        order = arms if i % 2 == 0 else [arms[0], *reversed(arms[1:])]  # as dataplane's rows
        results = {}
        for arm in order:
            r = results[arm.name] = run_client(arm, c, config.seconds, interval, meters[arm.name])
            first = r["first_chunk_us"]
            print(
                f"  paced stream c={c:<4} round {i + 1}/{config.rounds} {arm.name:<7} "
                f"{r['rps']:>7,.1f} streams/s  first chunk p50 "
                f"{report.ms(first.get('p50', 0)):>7} ms  p99 "
                f"{report.ms(first.get('p99', 0)):>7} ms  failed {r['failed']}  "
                f"other load {r['cpu']['other_pct']:.0f}%",
                flush=True,
            )
        rounds.append({name: results[name] for name in (a.name for a in arms)})
    return rounds


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per arm: percentiles over every stream of every round; added = arm - direct."""
    out: dict[str, Any] = {}
    for arm in rounds[0]:
        runs = [r[arm] for r in rounds]
        first = [v for r in runs for v in r["first_chunk_us"]["samples"]]
        total = [v for r in runs for v in r["total_us"]["samples"]]
        cpu = [r["cpu_us_per_stream"] for r in runs if r["cpu_us_per_stream"]]
        s: dict[str, Any] = {
            "streams": len(first),
            "streams_per_s": statistics.median(r["rps"] for r in runs),
            "cpu_us_per_stream": statistics.median(cpu) if cpu and arm != "direct" else None,
            "core_busy_pct": statistics.median(r["cpu"]["gateway_pct"] for r in runs),
            "other_pct_max": max(r["cpu"]["other_pct"] for r in runs),
            "failed": sum(r["failed"] for r in runs),
        }
        for p in ("p50", "p90", "p99"):
            s[f"first_chunk_{p}_us"] = percentile(first, float(p[1:])) if first else None
            s[f"total_{p}_us"] = percentile(total, float(p[1:])) if total else None
        out[arm] = s
    direct = out["direct"]
    for arm, s in out.items():
        if arm == "direct" or s["streams"] == 0 or direct["streams"] == 0:
            continue
        for p in ("p50", "p99"):
            s[f"first_chunk_{p}_added_us"] = (
                s[f"first_chunk_{p}_us"] - direct[f"first_chunk_{p}_us"]
            )
            s[f"total_{p}_added_us"] = s[f"total_{p}_us"] - direct[f"total_{p}_us"]
        per_round = [
            r[arm]["first_chunk_us"]["p50"] - r["direct"]["first_chunk_us"]["p50"]
            for r in rounds
            if "p50" in r[arm]["first_chunk_us"] and "p50" in r["direct"]["first_chunk_us"]
        ]
        s["first_chunk_p50_added_per_round_us"] = per_round
    return out


def run(
    config: dp.Config,
    procs: dp.Processes,
    gateway_port: int,
    upstream: tuple[subprocess.Popen[bytes], int],
    litellm: litellm_arm.Running | None,
) -> dict[str, Any]:
    """The paced row, after the zero-delay rows (whose gateway the caller has stopped): a new
    gateway on `gateway_port` with its `groq` provider at the pacer, and the measurements."""
    started = time.monotonic()
    pacer_proc, pacer_port = upstream  # bench/pacer.py, started by the caller
    c = config.paced_concurrency
    cell = dp.Cell(f"paced stream c={c}", c, stream=True)
    gateway, creds = dp.start_gateway(procs, gateway_port, pacer_port, label="gateway-paced")
    tollgate = dp.arms_for(cell, pacer_port, gateway_port, creds)
    checks = {arm.name: dp.check_arm(arm, cell) for arm in tollgate}
    arms = [PacedArm(a.name, a.url, cell.body, a.headers) for a in tollgate]
    meter = dp.CpuMeter(gateway=[gateway.pid], nginx=[pacer_proc.pid])
    meters = {arm.name: meter for arm in arms}
    if litellm is not None:
        lite = litellm.arm()
        body = upstream_mock.compact(
            {**upstream_mock.STREAM_REQUEST, "model": litellm_arm.PACED_MODEL}
        )
        checks[lite.name] = litellm_arm.check(lite, cell.name, body, stream=True)
        arms.append(PacedArm(lite.name, lite.url, body, lite.headers))
        meters[lite.name] = dp.CpuMeter(gateway=[litellm.proc.pid], nginx=[pacer_proc.pid])
    rounds = measure(arms, config, meters)
    return {
        "cell": asdict(cell),
        "interval_ms": config.paced_interval_ms,
        "events": len(pacer.EVENTS),
        "checks": checks,
        "rounds": rounds,
        "summary": summarize(rounds),
        "measure_s": round(time.monotonic() - started),
    }
