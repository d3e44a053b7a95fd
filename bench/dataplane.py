"""Data-plane benchmark: tollgate against direct calls to the same zero-delay upstream, and the
gateway with Unified Billing on against billing off (BYOK), one run.

Topology on the 2-core machine (shared/reference/performance.md §6): the gateway is pinned to
CPU 1; the nginx mock upstream and wrk share CPU 0. For each row (concurrency, streaming or not)
three arms run interleaved (direct, gateway, byok, direct, gateway, byok, ...) after a discarded
warm-up, and the report gives medians over rounds:

- direct: wrk straight to nginx;
- gateway: through tollgate with the gateway's managed key (Unified Billing: a hold before
  forwarding, a settlement after), the tollgate token in `Authorization`;
- byok: the same request through the same gateway process to the same nginx location, with the
  client's own provider key in `Authorization` and the tollgate token in `cf-aig-authorization`,
  so nothing is billed.

- litellm: LiteLLM's proxy (bench/litellm_arm.py), one worker, no database, on the gateway's
  CPU, its model entries pointed at the same nginx locations (BENCH_LITELLM=0 leaves it out).

"Added" latency is the median over rounds of the paired difference (gateway - direct) of that
round's percentile. "Billing on vs off" compares the gateway arm with the byok arm, round by
round (the issue's target: billing adds under 20% to the gateway's CPU per request).
"tollgate against LiteLLM" compares the gateway and byok arms with the litellm arm. A last row
(bench/paced.py) streams from a paced upstream and times the first chunk of every stream.

Run it with `make bench` (bench/run.sh installs nginx, wrk and LiteLLM first). Options are
environment variables: BENCH_SECONDS, BENCH_ROUNDS, BENCH_WARMUP, BENCH_CONCURRENCY,
BENCH_STREAM_CONCURRENCY, BENCH_LITELLM, BENCH_PACED_CONCURRENCY, BENCH_PACED_INTERVAL_MS.
Exit status 1 when the gateway failed any request under load (the report says which and how).
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.metadata
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import report
import report_compare
import upstream_mock

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / ".work"
RESULTS = BENCH / "results"
PID_FILE = WORK / "pids"
LUA = BENCH / "post.lua"
NGINX_TEMPLATE = BENCH / "nginx.conf.template"

LOAD_CPU = 0  # nginx + wrk
GATEWAY_CPU = 1
UPSTREAM_KEY = "sk-bench"
# The streaming row goes through the `groq` slug (see arms_for). Unified Billing refuses a model
# the price catalog does not list for the provider (400 unpriced_model), so that row's request
# names a priced groq model; nginx ignores the model and answers the same canned stream.
STREAM_MODEL = "llama-3.1-8b-instant"
# A billed stream ends with its cost as an SSE comment, which clients ignore (tollgate.relay).
COST_COMMENT = re.compile(rb": cf-aig-cost=(\S+) cf-aig-credits-remaining=\S+( estimated)?\n\n")
CLK_TCK = os.sysconf("SC_CLK_TCK")
# The billing issue's target: Unified Billing adds under 20% to the gateway's CPU per request,
# i.e. CPU/req with billing on (gateway arm) / with billing off (byok arm) < 1.20.
BILLING_CPU_TARGET = 1.20


def env_int(env: Mapping[str, str], name: str, default: str, low: int = 1) -> int:
    """An integer option from the environment, at least `low` (every runner's options)."""
    value = int(env.get(name) or default)
    if value < low:
        raise SystemExit(f"{name} must be at least {low} (got {value})")
    return value


def write_results(result: dict[str, Any], markdown: str, name: str) -> None:
    """`bench/results/<date>-<name>.md` and the raw figures as `raw/<timestamp>-<name>.json`."""
    stamp = datetime.now(UTC)
    (RESULTS / "raw").mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{stamp:%Y-%m-%d}-{name}.md"
    out.write_text(markdown)
    raw = RESULTS / "raw" / f"{stamp:%Y-%m-%dT%H%M%SZ}-{name}.json"
    raw.write_text(json.dumps(result, indent=2))
    print(f"wrote {out.relative_to(ROOT)} and {raw.relative_to(ROOT)}")


@dataclass(frozen=True)
class Config:
    seconds: int
    rounds: int
    warmup: int
    concurrency: tuple[int, ...]
    stream_concurrency: int
    litellm: bool  # the LiteLLM arm (bench/litellm_arm.py)
    paced_concurrency: int  # connections of the paced first-chunk row; 0: no such row
    paced_interval_ms: int  # between two events of the paced stream

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        levels = (env.get("BENCH_CONCURRENCY") or "1,16,64").split(",")
        litellm = env.get("BENCH_LITELLM") or "1"
        if litellm not in ("0", "1"):
            raise SystemExit(f"BENCH_LITELLM must be 1 (with the LiteLLM arm) or 0 (got {litellm})")
        return cls(
            seconds=env_int(env, "BENCH_SECONDS", "8"),
            rounds=env_int(env, "BENCH_ROUNDS", "3"),
            warmup=env_int(env, "BENCH_WARMUP", "2"),
            concurrency=tuple(int(c) for c in levels),
            stream_concurrency=env_int(env, "BENCH_STREAM_CONCURRENCY", "16"),
            litellm=litellm == "1",
            paced_concurrency=env_int(env, "BENCH_PACED_CONCURRENCY", "4", low=0),
            paced_interval_ms=env_int(env, "BENCH_PACED_INTERVAL_MS", "20"),
        )


@dataclass(frozen=True)
class Cell:
    """One row of the report."""

    name: str
    connections: int
    stream: bool

    @property
    def body(self) -> str:
        if self.stream:
            return upstream_mock.compact({**upstream_mock.STREAM_REQUEST, "model": STREAM_MODEL})
        return upstream_mock.compact(upstream_mock.REQUEST)

    @property
    def expected(self) -> str:
        return upstream_mock.sse_stream() if self.stream else upstream_mock.chat_completion()


@dataclass(frozen=True)
class Arm:
    name: str  # "direct", "gateway" (Unified Billing) or "byok" (the client's own key)
    url: str
    headers: Mapping[str, str] = field(hash=False)
    # Through the gateway: whether the answer must report a cost (True: Unified Billing) or must
    # not (False: BYOK). None for the direct arm (nginx, no gateway).
    billed: bool | None = None

    @property
    def through_gateway(self) -> bool:
        return self.billed is not None


# --- processes ---------------------------------------------------------------------------------


class Processes:
    """Every long-lived process the runner starts; `stop_all` ends them.

    Each pid is also listed in bench/.work/pids with a marker, for run.sh's EXIT trap.
    """

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []
        PID_FILE.write_text("")

    def start(self, argv: list[str], *, marker: str, log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        self._procs.append(proc)
        with PID_FILE.open("a") as pids:
            pids.write(f"{proc.pid} {marker}\n")
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """End one process (e.g. a gateway before starting it again with other settings)."""
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.remove(proc)
        lines = PID_FILE.read_text().splitlines()
        PID_FILE.write_text("".join(f"{x}\n" for x in lines if x.split()[0] != str(proc.pid)))

    def stop_all(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self._procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
        PID_FILE.write_text("")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_until(
    ready: Callable[[], bool],
    proc: subprocess.Popen[bytes],
    log: Path,
    what: str,
    timeout: float = 60,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}; log {log}:\n{tail(log)}")
        with contextlib.suppress(OSError):
            if ready():
                return
        time.sleep(0.1)
    raise SystemExit(f"{what} did not become ready in {timeout:.0f} s; log {log}:\n{tail(log)}")


def start_nginx(procs: Processes, port: int) -> subprocess.Popen[bytes]:
    (WORK / "nginx-tmp").mkdir(parents=True, exist_ok=True)
    conf = WORK / "nginx.conf"
    conf.write_text(upstream_mock.nginx_conf(NGINX_TEMPLATE, WORK, port))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    error_log = WORK / "nginx-error.log"
    argv = ["taskset", "-c", str(LOAD_CPU), nginx, "-p", str(WORK), "-c", str(conf)]
    proc = procs.start([*argv, "-e", str(error_log)], marker="nginx", log=WORK / "nginx.log")

    def ready() -> bool:
        return post_with(f"http://127.0.0.1:{port}/v1/chat/completions", "{}", {})[0] == 200

    wait_until(ready, proc, error_log, "nginx")
    return proc


def start_gateway(
    procs: Processes,
    port: int,
    nginx_port: int,
    *,
    openai_path: str = "v1",
    anthropic_path: str | None = None,
    label: str = "gateway",
) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    """bench/serve_gateway.py on CPU 1, a fresh store, providers pointed at nginx's paths:
    `openai` at `openai_path`, `groq` at `stream/v1`, `anthropic` at `anthropic_path` (if any).
    Returns the process and its credentials (account id, run token)."""
    data_dir = WORK / "gw"
    shutil.rmtree(data_dir, ignore_errors=True)
    nginx = f"http://127.0.0.1:{nginx_port}"
    argv = ["taskset", "-c", str(GATEWAY_CPU), sys.executable, str(BENCH / "serve_gateway.py")]
    argv += ["--port", str(port), "--data-dir", str(data_dir)]
    argv += ["--upstream", f"{nginx}/{openai_path}"]
    argv += ["--stream-upstream", f"{nginx}/stream/v1"]
    if anthropic_path:
        argv += ["--anthropic-upstream", f"{nginx}/{anthropic_path}"]
    log = WORK / f"{label}.log"
    proc = procs.start(argv, marker="serve_gateway.py", log=log)

    def ready() -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        finally:
            conn.close()

    wait_until(ready, proc, log, "the gateway")
    return proc, json.loads((data_dir / "credentials.json").read_text())


def process_tree(pid: int) -> list[int]:
    """`pid` and its direct children (nginx: the master and its worker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(int(c) for c in children)]


# --- measuring ---------------------------------------------------------------------------------


def post_with(url: str, body: str, headers: Mapping[str, str]) -> tuple[int, dict[str, str], bytes]:
    """POST a JSON body; the status, the headers (lower-case names) and the body."""
    host_port, _, path = url.removeprefix("http://").partition("/")
    host, _, port = host_port.partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        sent = {"Content-Type": "application/json", **headers}
        conn.request("POST", "/" + path, body.encode(), sent)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def core_ticks() -> dict[str, tuple[int, int, int]]:
    """Per CPU: (busy ticks, user+nice+system ticks, total ticks) from /proc/stat."""
    ticks = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name != "cpu":
            v = [int(f) for f in fields[:8]]
            ticks[name[3:]] = (sum(v) - v[3] - v[4], v[0] + v[1] + v[2], sum(v))
    return ticks


def process_cpu_seconds(pids: list[int]) -> float:
    """utime + stime of whole processes (all their threads), in seconds."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_memory_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


class CpuMeter:
    """CPU time of the machine's cores and of each process in the benchmark, over one run."""

    def __init__(self, gateway: list[int], nginx: list[int]) -> None:
        self.pids = {"gateway": gateway, "nginx": nginx}

    def snapshot(self) -> dict[str, Any]:
        return {
            "wall": time.monotonic(),
            "cores": core_ticks(),
            "wrk": children_cpu_seconds(),  # wrk is the only child reaped during a run
            **{name: process_cpu_seconds(pids) for name, pids in self.pids.items()},
        }

    @staticmethod
    def usage(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        wall = after["wall"] - before["wall"]
        cores, accounted = {}, 0.0
        for cpu, (busy, user_sys, total) in after["cores"].items():
            b_busy, b_user_sys, b_total = before["cores"][cpu]
            span = (total - b_total) or 1
            cores[cpu] = round(100.0 * (busy - b_busy) / span, 1)
            accounted += 100.0 * (user_sys - b_user_sys) / span
        out: dict[str, Any] = {"core_busy_pct": cores, "wall_s": round(wall, 3)}
        for name in ("wrk", "nginx", "gateway"):
            out[f"{name}_cpu_s"] = round(after[name] - before[name], 3)
            out[f"{name}_pct"] = round(100.0 * out[f"{name}_cpu_s"] / wall, 1)
        known = out["wrk_pct"] + out["nginx_pct"] + out["gateway_pct"]
        out["other_pct"] = round(max(0.0, accounted - known), 1)
        return out


def run_wrk(arm: Arm, cell: Cell, seconds: int, meter: CpuMeter) -> dict[str, Any]:
    result = wrk(arm.url, cell.body, arm.headers, cell.connections, seconds, meter)
    if not arm.through_gateway:
        del result["gateway_cpu_us_per_req"]
    return result


def wrk(
    url: str,
    body: str,
    headers: Mapping[str, str],
    connections: int,
    seconds: int,
    meter: CpuMeter,
    *,
    script: Path | None = None,
    threads: int = 1,
    pinned: bool = True,
    extra_env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One wrk run (`-t<threads> -c<connections>`, pinned to the load CPU unless `pinned` is
    False) with `script` (bench/post.lua by default, or a script that runs it: it prints the
    result), `extra_env` added to its environment: its JSON result plus `rps`, `cpu`
    (CpuMeter.usage), `gateway_cpu_us_per_req` and `failed`."""
    argv = ["taskset", "-c", str(LOAD_CPU)] if pinned else []
    argv += ["wrk", f"-t{threads}", f"-c{connections}"]
    argv += [f"-d{seconds}s", "--timeout", "10s", "-s", str(script or LUA), url]
    lines = "".join(f"{name}: {value}\n" for name, value in headers.items())
    env = {**os.environ, **(extra_env or {}), "BENCH_BODY": body, "BENCH_HEADERS": lines}
    before = meter.snapshot()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + 60)
    cpu = CpuMeter.usage(before, meter.snapshot())
    line = next((s for s in done.stdout.splitlines() if s.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    result: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["cpu"] = cpu
    result["gateway_cpu_us_per_req"] = (
        round(1e6 * cpu["gateway_cpu_s"] / result["requests"]) if result["requests"] else None
    )
    errors = result["errors"]
    socket_errors = sum(v for k, v in errors.items() if k != "status")
    result["failed"] = sum(result["bad_statuses"].values()) + socket_errors
    return result


def billed(headers: Mapping[str, str], body: bytes) -> tuple[bytes, str | None]:
    """`body` without the SSE cost comment of a billed stream, and the cost the gateway reported
    (the `cf-aig-cost` header, or the comment's figure), if any."""
    comments = COST_COMMENT.findall(body)
    cost = headers.get("cf-aig-cost") or (comments[0][0].decode() if comments else None)
    return COST_COMMENT.sub(b"", body), cost


def check_arm(arm: Arm, cell: Cell) -> dict[str, Any]:
    """One request before measuring: the arm must answer 200 with the canned body, unchanged
    (a billed stream may end with its cost comment), and through the gateway it must be billed
    (the `gateway` arm: a `cf-aig-cost` header or cost comment) or not billed at all (the `byok`
    arm: neither, and no `cf-aig-credits-remaining`); otherwise billing on against billing off
    would compare the wrong things, and the run stops."""
    status, headers, body = post_with(arm.url, cell.body, arm.headers)
    relayed, cost = billed(headers, body)
    shown = f"\nheaders: {headers}\nbody: {body.decode(errors='replace')[:2000]}"
    if status != 200 or relayed.decode(errors="replace") != cell.expected:
        raise SystemExit(
            f"the {arm.name} arm of '{cell.name}' answered HTTP {status} with a body that is "
            f"not the canned one.{shown}"
        )
    if arm.billed is True and cost is None:
        raise SystemExit(
            f"the {arm.name} arm of '{cell.name}' was not billed (no cf-aig-cost header, no cost "
            "comment): it must go through Unified Billing (the gateway's managed key), or "
            f"'billing on vs off' compares nothing.{shown}"
        )
    if arm.billed is False and (cost is not None or "cf-aig-credits-remaining" in headers):
        raise SystemExit(
            f"the {arm.name} arm of '{cell.name}' was billed "
            f"({f'cost ${cost}' if cost else 'a cf-aig-credits-remaining header'}) although it "
            f"sends the client's own provider key: it must not go through Unified Billing.{shown}"
        )
    return {
        "status": status,
        "content_type": headers.get("content-type"),
        "bytes": len(body),
        "cost_usd": cost,
        "billing": {True: "on", False: "off", None: "n/a"}[arm.billed],
    }


def measure_cell(
    cell: Cell,
    arms: list[Arm],
    config: Config,
    meter: CpuMeter,
    litellm_meter: CpuMeter | None = None,
) -> dict[str, Any]:
    """Warm-up, then the rounds. `litellm_meter` (LiteLLM's pid as its "gateway") meters the
    `litellm` arm, whose CPU per request is then LiteLLM's."""
    import litellm_arm  # here: it builds on this module's helpers

    def run_arm(arm: Arm, seconds: int) -> dict[str, Any]:
        if arm.name == litellm_arm.ARM and litellm_meter is not None:
            return litellm_arm.run_wrk(arm, cell, seconds, litellm_meter)
        return run_wrk(arm, cell, seconds, meter)

    for arm in arms:  # warm-up, discarded
        run_arm(arm, config.warmup)
    rounds = []
    for i in range(config.rounds):
        results = {}
        # The gateway arms swap places every round: whichever runs second inherits the first's
        # background work (the WAL sync of its billing writes), so neither is always favoured.
        order = arms if i % 2 == 0 else [arms[0], *reversed(arms[1:])]
        for arm in order:
            r = results[arm.name] = run_arm(arm, config.seconds)
            cpu = r.get("gateway_cpu_us_per_req")
            print(
                f"  {cell.name:<16} round {i + 1}/{config.rounds} {arm.name:<7} "
                f"{r['rps']:>9,.0f} rps  p50 {report.ms(r['latency_us']['p50']):>7} ms  "
                f"p99 {report.ms(r['latency_us']['p99']):>7} ms  "
                f"CPU/req {f'{cpu:,} µs' if cpu is not None else '-':>9}  failed {r['failed']}  "
                f"other load {r['cpu']['other_pct']:.0f}%",
                flush=True,
            )
        rounds.append(results)
    return {"cell": asdict(cell), "rounds": rounds, "summary": summarize(rounds)}


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def median(arm: str, get: Callable[[dict[str, Any]], float]) -> float:
        return statistics.median(get(r[arm]) for r in rounds)

    def paired(p: str) -> float:
        return statistics.median(
            r["gateway"]["latency_us"][p] - r["direct"]["latency_us"][p] for r in rounds
        )

    ratios = [r["gateway"]["rps"] / r["direct"]["rps"] for r in rounds]
    summary: dict[str, Any] = {"rps_ratio": statistics.median(ratios)}
    for arm in rounds[0]:
        summary[f"rps_{arm}"] = median(arm, lambda r: r["rps"])
        summary[f"rps_{arm}_range"] = [
            min(r[arm]["rps"] for r in rounds),
            max(r[arm]["rps"] for r in rounds),
        ]
        for p in ("p50", "p90", "p99"):
            summary[f"{p}_{arm}_us"] = median(arm, lambda r, p=p: r["latency_us"][p])
        summary[f"failed_{arm}"] = sum(r[arm]["failed"] for r in rounds)
    for p in ("p50", "p90", "p99"):
        summary[f"{p}_added_us"] = paired(p)
    summary["gateway_cpu_us_per_req"] = median("gateway", lambda r: r["gateway_cpu_us_per_req"])
    summary["gateway_cpu_pct"] = median("gateway", lambda r: r["cpu"]["gateway_pct"])
    if "byok" in rounds[0]:
        summary["billing"] = billing_summary(rounds)
    if "litellm" in rounds[0]:
        import litellm_arm  # here: it builds on this module's helpers

        summary["litellm"] = litellm_arm.summarize(rounds)
    return summary


def billing_summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Billing on (the `gateway` arm) against billing off (the `byok` arm), same gateway process:
    medians over rounds of each arm, and medians of the per-round ratios and differences."""
    on = [r["gateway"] for r in rounds]
    off = [r["byok"] for r in rounds]

    def med(runs: list[dict[str, Any]], get: Callable[[dict[str, Any]], float]) -> float:
        return statistics.median(get(r) for r in runs)

    def cpu(r: dict[str, Any]) -> float:
        return float(r["gateway_cpu_us_per_req"] or 0)  # None: no request served

    # Rounds where either arm served nothing (or used no measurable CPU) have no ratio.
    cpu_ratios = [cpu(a) / cpu(b) for a, b in zip(on, off, strict=True) if cpu(a) and cpu(b)]
    cpu_ratio = statistics.median(cpu_ratios) if cpu_ratios else None
    out: dict[str, Any] = {
        "cpu_us_per_req_on": med(on, cpu),
        "cpu_us_per_req_off": med(off, cpu),
        "cpu_ratio": cpu_ratio,
        "cpu_ratio_range": [min(cpu_ratios), max(cpu_ratios)] if cpu_ratios else None,
        "cpu_added_us": statistics.median(cpu(a) - cpu(b) for a, b in zip(on, off, strict=True)),
        "rps_on": med(on, lambda r: r["rps"]),
        "rps_off": med(off, lambda r: r["rps"]),
        "rps_ratio": statistics.median(
            a["rps"] / b["rps"] if b["rps"] else 0.0 for a, b in zip(on, off, strict=True)
        ),
        "core_busy_pct_on": med(on, lambda r: r["cpu"]["gateway_pct"]),
        "core_busy_pct_off": med(off, lambda r: r["cpu"]["gateway_pct"]),
        "failed_on": sum(r["failed"] for r in on),
        "failed_off": sum(r["failed"] for r in off),
        "target_cpu_ratio": BILLING_CPU_TARGET,
        "meets_target": cpu_ratio < BILLING_CPU_TARGET if cpu_ratio is not None else None,
    }
    for p in ("p50", "p99"):
        out[f"{p}_on_us"] = med(on, lambda r, p=p: r["latency_us"][p])
        out[f"{p}_off_us"] = med(off, lambda r, p=p: r["latency_us"][p])
        out[f"{p}_added_us"] = statistics.median(
            a["latency_us"][p] - b["latency_us"][p] for a, b in zip(on, off, strict=True)
        )
    return out


# --- environment and machine state -------------------------------------------------------------


def wait_for_idle(limit_pct: float = 15.0, max_wait: float = 20.0) -> dict[str, Any]:
    """Sample CPU busy over 1 s until it is under `limit_pct` on average (at most `max_wait`)."""
    started = time.monotonic()
    while True:
        before = core_ticks()
        time.sleep(1)
        after = core_ticks()
        cores = {
            cpu: round(100.0 * (a[0] - b[0]) / ((a[2] - b[2]) or 1), 1)
            for (cpu, a), b in zip(after.items(), before.values(), strict=True)
        }
        busy = sum(cores.values()) / len(cores)
        if busy < limit_pct or time.monotonic() - started > max_wait:
            break
    return {
        "cpu_busy_pct": round(busy, 1),
        "per_core_busy_pct": cores,
        "waited_s": round(time.monotonic() - started, 1),
        "idle": busy < limit_pct,
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }


def first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, cwd=ROOT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0] if lines else ""


def environment() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    models = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    commit = first_line(["git", "rev-parse", "--short", "HEAD"])
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    ).stdout
    dirty = [line[3:] for line in status.splitlines() if line.strip()]
    versions = {}
    for package in ("tollgate", "uvicorn", "aiohttp", "uvloop", "httptools", "starlette", "orjson"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "commit": commit + (f" + uncommitted changes to {', '.join(dirty)}" if dirty else ""),
        "cpu_model": models[0] if models else platform.processor(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "nginx": first_line(["nginx", "-v"]).removeprefix("nginx version: "),
        "wrk": first_line(["wrk", "-v"]).split(" [")[0],
    }


# --- main --------------------------------------------------------------------------------------


def cells_for(config: Config) -> list[Cell]:
    cells = [Cell(f"non-stream c={c}", c, stream=False) for c in config.concurrency]
    c = config.stream_concurrency
    return [*cells, Cell(f"stream c={c}", c, stream=True)]


def arms_for(cell: Cell, nginx_port: int, gateway_port: int, creds: dict[str, str]) -> list[Arm]:
    """Direct to nginx, and twice through the gateway to the same nginx location: with the
    gateway's managed key (`gateway`: Unified Billing, the tollgate token in `Authorization`)
    and with the client's own provider key (`byok`: the token in `cf-aig-authorization`,
    `Authorization: Bearer sk-bench` relayed to the provider, nothing billed).

    The streaming row goes through the `groq` slug, which serve_gateway.py points at nginx's
    streaming path: same OpenAI-wire code path, different canned answer.
    """
    upstream_path = "stream/v1" if cell.stream else "v1"
    provider = "groq" if cell.stream else "openai"
    direct = f"http://127.0.0.1:{nginx_port}/{upstream_path}/chat/completions"
    gateway = (
        f"http://127.0.0.1:{gateway_port}/v1/{creds['account_id']}/default/{provider}"
        "/chat/completions"
    )
    provider_key = {"Authorization": f"Bearer {UPSTREAM_KEY}"}
    token = f"Bearer {creds['token']}"
    return [
        Arm("direct", direct, provider_key),
        Arm("gateway", gateway, {"Authorization": token}, billed=True),
        Arm("byok", gateway, {"cf-aig-authorization": token, **provider_key}, billed=False),
    ]


def run(config: Config, procs: Processes) -> dict[str, Any]:
    import litellm_arm  # here, not at the top: both build on this module's helpers
    import paced

    if config.litellm:
        litellm_arm.require_installed()  # before any waiting
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("this benchmark pins the gateway and the load to separate CPUs: needs 2")
    idle = wait_for_idle()
    print(
        f"load average {' '.join(idle['loadavg'])}; CPU busy {idle['cpu_busy_pct']}% "
        f"(per core {idle['per_core_busy_pct']})" + ("" if idle["idle"] else "  ** NOT IDLE **"),
        flush=True,
    )
    nginx_port, gateway_port, pacer_port = free_port(), free_port(), free_port()
    nginx = start_nginx(procs, nginx_port)
    pacer = None
    if config.paced_concurrency:
        pacer = paced.start_pacer(procs, pacer_port, config.paced_interval_ms)
    gateway, creds = start_gateway(procs, gateway_port, nginx_port)
    meter = CpuMeter(gateway=[gateway.pid], nginx=process_tree(nginx.pid))
    litellm = None
    if config.litellm:
        litellm = litellm_arm.start(procs, nginx_port, pacer_port, process_tree(nginx.pid))
    extra = [litellm.arm()] if litellm else []
    plan = [
        (cell, [*arms_for(cell, nginx_port, gateway_port, creds), *extra])
        for cell in cells_for(config)
    ]
    checks = {
        cell.name: {a.name: litellm_arm.check_any(a, cell) for a in arms} for cell, arms in plan
    }
    idle_rss = process_memory_kib(gateway.pid)["VmRSS"]
    if litellm:
        litellm.idle_rss_kib = process_memory_kib(litellm.proc.pid)["VmRSS"]
    started = time.monotonic()
    cells = [
        measure_cell(cell, arms, config, meter, litellm.meter if litellm else None)
        for cell, arms in plan
    ]
    elapsed = round(time.monotonic() - started)
    final = process_memory_kib(gateway.pid)
    litellm_result = litellm.result() if litellm else None  # memory after the same rows
    paced_result = None
    if pacer is not None:
        procs.stop(gateway)  # the paced row's gateway takes its port, CPU and data directory
        paced_result = paced.run(config, procs, gateway_port, (pacer, pacer_port), litellm)
        checks[paced_result["cell"]["name"]] = paced_result["checks"]
    verdicts = {c["cell"]["name"]: c["summary"]["billing"]["meets_target"] for c in cells}
    return {
        "config": asdict(config),
        "pinning": {"gateway": GATEWAY_CPU, "load": LOAD_CPU},
        "litellm": litellm_result,
        "paced": paced_result,
        "idle": idle,
        "checks": checks,
        "cells": cells,
        "measure_s": elapsed,
        "billing_target": {
            "max_cpu_ratio": BILLING_CPU_TARGET,
            "what": "gateway CPU/req with Unified Billing (gateway arm) / without (byok arm)",
            "rows_meeting": sum(1 for v in verdicts.values() if v),
            "rows": len(verdicts),
            "meets": verdicts,
        },
        "memory": {
            "idle_rss_kib": idle_rss,
            "final_rss_kib": final["VmRSS"],
            "peak_rss_kib": final["VmHWM"],
        },
    }


def main() -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # run.sh starts us with it ignored
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    config = Config.from_env(os.environ)
    WORK.mkdir(parents=True, exist_ok=True)
    env = environment()
    print(f"tollgate data-plane benchmark, commit {env['commit']}, {config}", flush=True)
    procs = Processes()
    try:
        result = run(config, procs)
    finally:
        procs.stop_all()
    result["env"] = env
    markdown = report.render(result, report_compare.sections(result))
    print("\n" + markdown)
    write_results(result, markdown, "dataplane")
    failed = sum(
        c["summary"]["failed_gateway"] + c["summary"]["failed_byok"] for c in result["cells"]
    )
    if result["paced"]:
        failed += sum(result["paced"]["summary"][arm]["failed"] for arm in ("gateway", "byok"))
    if failed:
        print(f"FAILED: the gateway failed {failed} requests under load; see 'Errors under load'")
        return 1
    return 0


if __name__ == "__main__":
    # Run as the module `dataplane`, which bench/litellm_arm.py and bench/paced.py import, so that
    # there is one copy of its classes and state rather than a second one in `__main__`.
    import dataplane

    sys.exit(dataplane.main())
