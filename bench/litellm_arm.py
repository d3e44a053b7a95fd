"""The LiteLLM arm of bench/dataplane.py: LiteLLM's proxy, side by side with tollgate.

LiteLLM (`litellm[proxy]==1.108.7`, installed by bench/install.sh into bench/.litellm-venv, its
own virtualenv since it pins its own openai, pydantic, fastapi and starlette) runs as shared/
reference/performance.md §5 measured it: one uvicorn worker, no database, the master key as the
only credential, telemetry, retries and callbacks off, pinned to the gateway's CPU (1). Its
config has one model entry per nginx location, named as the benchmark's request bodies name
their model, so the `litellm` arm sends the same body as the other arms and gets the same canned
answer (LiteLLM parses it and writes its own JSON or SSE, so it is checked by its content, not
byte for byte):

- `gpt-4o-mini` -> `openai/gpt-4o-mini` at nginx's `/v1` (non-streaming rows),
- `llama-3.1-8b-instant` -> `openai/gpt-4o-mini` at nginx's `/stream/v1` (streaming row),
- `llama-3.1-8b-instant-paced` -> the same at the pacer's `/stream/v1` (the first-chunk row).

tollgate and LiteLLM are both alive for the whole run on the same core, but the arms run one at
a time, so whichever is not measured is idle; its idle CPU shows as "other load" (LiteLLM's,
measured idle over 20 s: 0.2% of a core).
"""

from __future__ import annotations

import http.client
import json
import statistics
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dataplane as dp
import upstream_mock

VERSION = "1.108.7"
VENV = dp.BENCH / ".litellm-venv"
LITELLM = VENV / "bin" / "litellm"
MASTER_KEY = "sk-litellm-bench"  # LiteLLM wants its master key to start with "sk-"
PACED_MODEL = f"{dp.STREAM_MODEL}-paced"
UPSTREAM_MODEL = "openai/gpt-4o-mini"
ARM = "litellm"
# LITELLM_LOCAL_MODEL_COST_MAP: the bundled price map (it would fetch one from GitHub at start,
# wait for the timeouts here, then fall back); LITELLM_LOG=ERROR: no per-request logging;
# LITELLM_MODE=PRODUCTION: no load_dotenv() from the working directory.
ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "LITELLM_MODE": "PRODUCTION"}


def require_installed() -> None:
    """LiteLLM VERSION in bench/.litellm-venv, as bench/install.sh's stamp says, or a clear stop."""
    stamp = VENV / ".installed"  # "litellm[proxy]==<version> <constraints' sha256>"
    installed = stamp.read_text().split()[0] if stamp.exists() else "nothing"
    if not LITELLM.exists() or installed != f"litellm[proxy]=={VERSION}":
        raise SystemExit(
            f"bench/.litellm-venv has {installed}, not litellm[proxy]=={VERSION}: run "
            "`bash bench/install.sh` (needs PyPI), or set BENCH_LITELLM=0 to run without the "
            "LiteLLM arm"
        )


def versions() -> dict[str, str]:
    """litellm and the packages its speed depends on, as installed in its virtualenv."""
    names = ["litellm", "openai", "httpx", "aiohttp", "uvicorn", "fastapi", "uvloop", "pydantic"]
    code = (
        "import importlib.metadata as m, json, sys\n"
        "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))"
    )
    done = subprocess.run(
        [str(VENV / "bin" / "python"), "-c", code, *names],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        return {"litellm": f"unknown ({done.stderr.strip()[-200:]})"}
    found: dict[str, str] = json.loads(done.stdout)
    return found


def write_config(path: Path, nginx_port: int, pacer_port: int) -> None:
    """LiteLLM's config.yaml, written as JSON (which YAML reads as it is)."""

    def entry(name: str, base: str) -> dict[str, Any]:
        # Every entry is `openai/gpt-4o-mini` upstream (nginx ignores the model), as §5.2 measured:
        # a "llama-3" model makes LiteLLM count tokens with a Hugging Face tokenizer, which it
        # tries to download on every request when the hub is out of reach (23 s of retries).
        params = {"model": UPSTREAM_MODEL, "api_base": base, "api_key": dp.UPSTREAM_KEY}
        return {"model_name": name, "litellm_params": params}

    nginx, pacer = f"http://127.0.0.1:{nginx_port}", f"http://127.0.0.1:{pacer_port}"
    config = {
        "model_list": [
            entry(upstream_mock.REQUEST["model"], f"{nginx}/v1"),
            entry(dp.STREAM_MODEL, f"{nginx}/stream/v1"),
            entry(PACED_MODEL, f"{pacer}/stream/v1"),
        ],
        # No retries (they would hide upstream errors), no callbacks, no telemetry, and tiktoken
        # (bundled) for any token count rather than a download (see entry()).
        "litellm_settings": {
            "telemetry": False,
            "num_retries": 0,
            "request_timeout": 30,
            "callbacks": [],
            "disable_hf_tokenizer_download": True,
        },
        "general_settings": {"master_key": MASTER_KEY},
    }
    path.write_text(json.dumps(config, indent=2))


@dataclass
class Running:
    """LiteLLM's proxy, started: its process, port, CPU meter (LiteLLM's pid as the meter's
    "gateway", so a run's `gateway_cpu_us_per_req` is LiteLLM's) and settings."""

    proc: subprocess.Popen[bytes]
    port: int
    meter: dp.CpuMeter
    settings: dict[str, Any]
    idle_rss_kib: int = 0  # set by the runner once the checks are done

    def arm(self) -> dp.Arm:
        """LiteLLM's OpenAI endpoint with the master key (`billed` None: not a tollgate arm)."""
        url = f"http://127.0.0.1:{self.port}/v1/chat/completions"
        return dp.Arm(ARM, url, {"Authorization": f"Bearer {MASTER_KEY}"})

    def result(self) -> dict[str, Any]:
        """The settings and the memory now (RSS after start-up and checks, now, and peak)."""
        now = dp.process_memory_kib(self.proc.pid)
        memory = {
            "idle_rss_kib": self.idle_rss_kib,
            "final_rss_kib": now["VmRSS"],
            "peak_rss_kib": now["VmHWM"],
        }
        return {"settings": self.settings, "memory": memory}


def start(procs: dp.Processes, nginx_port: int, pacer_port: int, nginx_pids: list[int]) -> Running:
    """LiteLLM's proxy on the gateway's CPU, one worker, on a free port."""
    require_installed()
    port = dp.free_port()
    conf = dp.WORK / "litellm.yaml"
    write_config(conf, nginx_port, pacer_port)
    argv = ["env", *(f"{k}={v}" for k, v in ENV.items())]  # Processes.start takes no env
    argv += ["taskset", "-c", str(dp.GATEWAY_CPU), str(LITELLM), "--config", str(conf)]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    log = dp.WORK / "litellm.log"
    proc = procs.start(argv, marker=".litellm-venv/bin/litellm", log=log)

    def ready() -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/health/liveliness")
            return conn.getresponse().status == 200
        finally:
            conn.close()

    dp.wait_until(ready, proc, log, "LiteLLM")
    settings = {
        "versions": versions(),
        "workers": 1,
        "database": "none (master key only)",
        "environment": ENV,
        "config": json.loads(conf.read_text()),
    }
    meter = dp.CpuMeter(gateway=[proc.pid], nginx=nginx_pids)
    return Running(proc, port, meter, settings)


def run_wrk(arm: dp.Arm, cell: dp.Cell, seconds: int, meter: dp.CpuMeter) -> dict[str, Any]:
    """One wrk run against LiteLLM with Running.meter: the result keeps LiteLLM's CPU per
    request (dataplane.run_wrk drops it for an arm that is not through tollgate)."""
    return dp.wrk(arm.url, cell.body, arm.headers, cell.connections, seconds, meter)


# --- checking the answer -----------------------------------------------------------------------


def canned_text(stream: bool) -> str:
    """The assistant text of the canned answer (for a stream: its deltas joined)."""
    if not stream:
        message = json.loads(upstream_mock.chat_completion())["choices"][0]["message"]
        return str(message["content"])
    return streamed_text(upstream_mock.sse_stream().encode())[0]


def streamed_text(body: bytes) -> tuple[str, dict[str, Any] | None]:
    """An OpenAI SSE body's content deltas joined, and its usage chunk's usage (if any)."""
    text, usage = [], None
    for line in body.decode(errors="replace").splitlines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line.removeprefix("data: "))
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or []:
            text.append((choice.get("delta") or {}).get("content") or "")
    return "".join(text), usage


def check_any(arm: dp.Arm, cell: dp.Cell) -> dict[str, Any]:
    """The check before measuring for any arm of a zero-delay row."""
    if arm.name == ARM:
        return check(arm, cell.name, cell.body, cell.stream)
    return dp.check_arm(arm, cell)


def check(arm: dp.Arm, cell_name: str, body: str, stream: bool) -> dict[str, Any]:
    """One request before measuring: HTTP 200 with the canned text and usage (LiteLLM writes
    its own JSON, so the content is compared, not the bytes); otherwise the run stops."""
    status, headers, answer = dp.post_with(arm.url, body, arm.headers)
    shown = f"\nheaders: {headers}\nbody: {answer.decode(errors='replace')[:2000]}"
    text, usage, complete = None, None, True
    if status == 200 and stream:
        text, usage = streamed_text(answer)
        complete = b"data: [DONE]" in answer
    elif status == 200:
        parsed = json.loads(answer)
        text, usage = parsed["choices"][0]["message"]["content"], parsed.get("usage")
    if status != 200 or text != canned_text(stream) or not usage or not complete:
        raise SystemExit(
            f"the {arm.name} arm of '{cell_name}' answered HTTP {status} without the canned "
            f"content (wanted {canned_text(stream)!r} and a usage object"
            f"{' and data: [DONE]' if stream else ''}).{shown}"
        )
    cost = headers.get("x-litellm-response-cost")  # what LiteLLM priced it at (not billed)
    return {
        "status": status,
        "content_type": headers.get("content-type"),
        "bytes": len(answer),
        "cost_usd": None,
        "billing": ARM,
        "verified": f"the canned text{' (deltas joined), data: [DONE]' if stream else ''} and "
        f"usage {usage.get('total_tokens')} tokens; LiteLLM's x-litellm-response-cost "
        f"{f'${float(cost):.3g}' if cost else 'absent'}",
    }


# --- summary -----------------------------------------------------------------------------------


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """LiteLLM against direct, and tollgate against LiteLLM, for one row: medians over rounds,
    and medians of the per-round differences (added = arm - direct) and ratios (tollgate /
    LiteLLM; the `gateway` arm is tollgate with Unified Billing, `byok` without)."""

    def med(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    def added(r: dict[str, Any], arm: str, p: str) -> float:
        return float(r[arm]["latency_us"][p] - r["direct"]["latency_us"][p])

    def cpu(r: dict[str, Any], arm: str) -> float:
        return float(r[arm].get("gateway_cpu_us_per_req") or 0)

    def ratios(get: Callable[[dict[str, Any], str], float], arm: str) -> float | None:
        # Rounds where LiteLLM's figure is 0 (nothing served, no CPU seen) have no ratio.
        pairs = [(get(r, arm), get(r, ARM)) for r in rounds]
        return med([mine / theirs for mine, theirs in pairs if theirs > 0])

    lite = [r[ARM] for r in rounds]
    out: dict[str, Any] = {
        "rps": statistics.median(r["rps"] for r in lite),
        "rps_range": [min(r["rps"] for r in lite), max(r["rps"] for r in lite)],
        "cpu_us_per_req": med([cpu(r, ARM) for r in rounds if cpu(r, ARM)]),
        "core_busy_pct": statistics.median(r["cpu"]["gateway_pct"] for r in lite),
        "other_pct_max": max(r["cpu"]["other_pct"] for r in lite),
        "failed": sum(r["failed"] for r in lite),
    }
    for p in ("p50", "p99"):
        out[f"{p}_us"] = statistics.median(r["latency_us"][p] for r in lite)
        out[f"{p}_added_us"] = statistics.median(added(r, ARM, p) for r in rounds)
    for tollgate in ("gateway", "byok"):
        if tollgate not in rounds[0]:
            continue
        out[f"rps_ratio_{tollgate}"] = ratios(lambda r, a: float(r[a]["rps"]), tollgate)
        out[f"cpu_ratio_{tollgate}"] = ratios(cpu, tollgate)
        for p in ("p50", "p99"):
            out[f"{p}_added_ratio_{tollgate}"] = ratios(lambda r, a, p=p: added(r, a, p), tollgate)
    return out
