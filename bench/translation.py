"""Translation benchmark: the Unified API (`/compat/chat/completions`) against the native endpoints,
through the same gateway to the same zero-delay upstream, in one run.

Two pairs of arms, both arms through the gateway (issue 3, "Speed"):

- openai:    native `openai/chat/completions` against compat with `model: "openai/gpt-4o-mini"`
             (same wire format: the gateway rewrites `model` and relays the answer as bytes);
- anthropic: native `anthropic/v1/messages` (Anthropic format in and out, relayed as bytes)
             against compat with `model: "anthropic/claude-sonnet-4-6"` (OpenAI Chat translated
             to Anthropic Messages, and the answer or the stream translated back).

Rows: each pair, non-streaming and streaming, at each concurrency (default 1 and 16). Within a row
the arms are interleaved (odd rounds native first, even rounds compat first) after a discarded
warm-up; "added" values are medians over rounds of the paired per-round difference compat - native.

nginx cannot read the request body, so the canned answer is chosen by path: the gateway runs
twice, one instance after the other on the same port and CPU, first with its `openai` and
`anthropic` base URLs on nginx's non-streaming paths, then on its streaming paths. Both arms of a
row always run against the same gateway process. Same pinning, runner and measurements as
bench/dataplane.py (gateway on CPU 1, nginx and wrk on CPU 0).

Keys (BENCH_TRANSLATION_KEYS): "byok" (default) sends the client's own provider key, so nothing
is metered and the difference between the arms is the Unified API alone; "managed" makes the
gateway's managed key pay on both arms (Unified Billing), as bench/dataplane.py does.

Run it with `make bench` (both benchmarks) or `BENCH_ONLY=translation make bench`. Options:
BENCH_SECONDS (default 3), BENCH_ROUNDS (3), BENCH_WARMUP (1), BENCH_TRANSLATION_CONCURRENCY
("1,16"), BENCH_TRANSLATION_KEYS ("byok"). Exit status 1 when the gateway failed any request
under load.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import statistics
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import dataplane as dp
import report
import upstream_mock as mock

PAIRS = ("openai", "anthropic")
OPENAI_COMPAT_MODEL = "openai/gpt-4o-mini"
ANTHROPIC_COMPAT_MODEL = f"anthropic/{mock.ANTHROPIC_MODEL}"
# Where the gateway's providers point, per phase (paths on nginx; see nginx.conf.template).
PHASES: dict[bool, dict[str, str]] = {
    False: {"openai_path": "v1", "anthropic_path": "anthropic", "label": "gateway-plain"},
    True: {
        "openai_path": "stream/v1",
        "anthropic_path": "anthropic-stream",
        "label": "gateway-stream",
    },
}

Check = Callable[[int, Mapping[str, str], bytes], list[str]]


KEYS = {
    "byok": "the client's own provider key on every arm (the tollgate token in "
    "cf-aig-authorization): nothing is metered, so the difference is the Unified API alone",
    "managed": "the gateway's managed key on every arm (Unified Billing: a hold before "
    "forwarding, settlement after, on both arms)",
}


@dataclass(frozen=True)
class Config:
    seconds: int
    rounds: int
    warmup: int
    concurrency: tuple[int, ...]
    keys: str  # "byok" or "managed" (KEYS)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        levels = (env.get("BENCH_TRANSLATION_CONCURRENCY") or "1,16").split(",")
        keys = env.get("BENCH_TRANSLATION_KEYS") or "byok"
        if keys not in KEYS:
            raise SystemExit(
                f"BENCH_TRANSLATION_KEYS must be one of {', '.join(KEYS)} (got {keys})"
            )
        return cls(
            seconds=dp.env_int(env, "BENCH_SECONDS", "3"),
            rounds=dp.env_int(env, "BENCH_ROUNDS", "3"),
            warmup=dp.env_int(env, "BENCH_WARMUP", "1"),
            concurrency=tuple(int(c) for c in levels),
            keys=keys,
        )


@dataclass(frozen=True)
class Row:
    pair: str  # "openai" or "anthropic"
    stream: bool
    connections: int

    @property
    def name(self) -> str:
        return f"{self.pair}{' stream' if self.stream else ''} c={self.connections}"


@dataclass(frozen=True)
class Arm:
    name: str  # "native" or "compat"
    url: str
    body: str
    headers: dict[str, str] = field(hash=False)
    check: Check = field(hash=False, repr=False)
    checked: str = ""  # what check() verifies, for the report


# --- requests and expected answers -------------------------------------------------------------


def openai_request(stream: bool, model: str | None = None) -> str:
    body = mock.STREAM_REQUEST if stream else mock.REQUEST
    return mock.compact({**body, "model": model} if model else body)


def anthropic_request(stream: bool) -> str:
    return mock.compact(mock.ANTHROPIC_STREAM_REQUEST if stream else mock.ANTHROPIC_REQUEST)


def compat_anthropic_request(stream: bool) -> str:
    """The same question as `anthropic_request`, in OpenAI Chat form for /compat."""
    body: dict[str, Any] = {**mock.ANTHROPIC_REQUEST, "model": ANTHROPIC_COMPAT_MODEL}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return mock.compact(body)


def same_bytes(expected: str, content_type: str) -> Check:
    """The answer must be the canned upstream body, byte for byte (relayed unchanged; the
    caller has removed a billed stream's cost comment)."""

    def check(status: int, headers: Mapping[str, str], body: bytes) -> list[str]:
        problems = [] if status == 200 else [f"HTTP {status}"]
        if not headers.get("content-type", "").startswith(content_type):
            problems.append(f"content-type {headers.get('content-type')!r}, not {content_type}")
        if body.decode(errors="replace") != expected:
            problems.append("the body is not the canned upstream body")
        return problems

    return check


def translated_usage(output_tokens: int) -> dict[str, Any]:
    """The canned Anthropic usage as OpenAI's: cache reads and writes inside prompt_tokens."""
    prompt = mock.ANTHROPIC_INPUT_TOKENS + mock.ANTHROPIC_CACHE_READ + mock.ANTHROPIC_CACHE_WRITE
    return {
        "prompt_tokens": prompt,
        "completion_tokens": output_tokens,
        "total_tokens": prompt + output_tokens,
        "prompt_tokens_details": {
            "cached_tokens": mock.ANTHROPIC_CACHE_READ,
            "cache_write_tokens": mock.ANTHROPIC_CACHE_WRITE,
        },
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def check_translated_completion(status: int, headers: Mapping[str, str], body: bytes) -> list[str]:
    """The canned Anthropic message, translated: a chat.completion with the same text, finish
    reason and usage (any `created`)."""
    if status != 200:
        return [f"HTTP {status}"]
    try:
        got = json.loads(body)
    except ValueError:
        return ["the body is not JSON"]
    expected = {
        "id": "msg_bench0001",
        "object": "chat.completion",
        "model": mock.ANTHROPIC_MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": mock.ANTHROPIC_TEXT, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": translated_usage(mock.ANTHROPIC_OUTPUT_TOKENS),
    }
    problems = []
    if not headers.get("content-type", "").startswith("application/json"):
        problems.append(f"content-type {headers.get('content-type')!r}")
    if not isinstance(got, dict) or not isinstance(got.pop("created", None), int):
        problems.append("no integer 'created'")
    if got != expected:
        problems.append(f"expected (besides 'created') {json.dumps(expected)}")
    return problems


def check_translated_stream(status: int, headers: Mapping[str, str], body: bytes) -> list[str]:
    """The canned Anthropic stream, translated: OpenAI chunks (role, one per text delta, finish),
    a usage chunk (stream_options.include_usage) and `data: [DONE]`."""
    if status != 200:
        return [f"HTTP {status}"]
    problems = []
    if not headers.get("content-type", "").startswith("text/event-stream"):
        problems.append(f"content-type {headers.get('content-type')!r}")
    events = [e for e in body.decode(errors="replace").split("\n\n") if e.strip()]
    if not events or events[-1] != "data: [DONE]":
        return [*problems, "the stream does not end with 'data: [DONE]'"]
    try:
        chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    except ValueError:
        return [*problems, "an event is not 'data: <JSON>'"]
    deltas = [c["choices"][0]["delta"] for c in chunks if c.get("choices")]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices")]
    text = "".join(d.get("content") or "" for d in deltas)
    content_chunks = sum(1 for d in deltas if d.get("content"))
    usage = [c["usage"] for c in chunks if not c.get("choices") and "usage" in c]
    if any(
        c.get("object") != "chat.completion.chunk" or c.get("id") != "msg_bench0002" for c in chunks
    ):
        problems.append("a chunk is not a chat.completion.chunk of msg_bench0002")
    if not deltas or deltas[0] != {"role": "assistant", "content": ""}:
        problems.append("the first chunk does not carry the assistant role")
    if text != mock.anthropic_stream_text() or content_chunks != 15:
        problems.append(f"text {text!r} in {content_chunks} chunks, not the 15 canned deltas")
    if [f for f in finishes if f is not None] != ["stop"]:
        problems.append(f"finish reasons {finishes}, not one 'stop'")
    if usage != [translated_usage(15)]:
        problems.append(f"usage chunks {usage}, not [{translated_usage(15)}]")
    return problems


def arms_for(row: Row, gateway_port: int, creds: dict[str, str], keys: str) -> list[Arm]:
    """Native and compat arms of `row`, both through the gateway, to the same nginx location.

    `keys`: "managed" sends the tollgate token as the SDKs do (`Authorization: Bearer tg_...`,
    Anthropic's `x-api-key: tg_...`), so the gateway's managed key pays (Unified Billing);
    "byok" sends the token in `cf-aig-authorization` and the client's own provider key where
    the provider's SDK puts it, so nothing is metered.
    """
    base = f"http://127.0.0.1:{gateway_port}/v1/{creds['account_id']}/default"
    token = creds["token"]
    if keys == "managed":
        bearer = {"Authorization": f"Bearer {token}"}
        anthropic_key = {"x-api-key": token}
    else:
        gateway_auth = {"cf-aig-authorization": f"Bearer {token}"}
        bearer = {**gateway_auth, "Authorization": f"Bearer {dp.UPSTREAM_KEY}"}
        anthropic_key = {**gateway_auth, "x-api-key": dp.UPSTREAM_KEY}
    kind = "text/event-stream" if row.stream else "application/json"
    if row.pair == "openai":
        canned = mock.sse_stream() if row.stream else mock.chat_completion()
        native = Arm(
            "native",
            f"{base}/openai/chat/completions",
            openai_request(row.stream),
            bearer,
            same_bytes(canned, kind),
            "200, the canned OpenAI body byte for byte",
        )
        compat_body = openai_request(row.stream, OPENAI_COMPAT_MODEL)
        return [
            native,
            dataclasses.replace(
                native, name="compat", url=f"{base}/compat/chat/completions", body=compat_body
            ),
        ]
    canned = mock.anthropic_sse_stream() if row.stream else mock.anthropic_message()
    native = Arm(
        "native",
        f"{base}/anthropic/v1/messages",
        anthropic_request(row.stream),
        {**anthropic_key, "anthropic-version": mock.ANTHROPIC_VERSION},
        same_bytes(canned, kind),
        "200, the canned Anthropic body byte for byte",
    )
    if row.stream:
        check, verified = (
            check_translated_stream,
            (
                "200, OpenAI chunks: role, the 15 canned deltas, finish 'stop', usage mapped "
                "(cache read/write inside prompt_tokens), [DONE]"
            ),
        )
    else:
        check, verified = (
            check_translated_completion,
            (
                "200, a chat.completion with the canned text, finish 'stop', usage mapped "
                "(cache read/write inside prompt_tokens)"
            ),
        )
    compat = Arm(
        "compat",
        f"{base}/compat/chat/completions",
        compat_anthropic_request(row.stream),
        bearer,
        check,
        verified,
    )
    return [native, compat]


def check_arm(arm: Arm, row: Row) -> dict[str, Any]:
    """One request before measuring; stop the run with what came back if it is wrong."""
    status, headers, body = dp.post_with(arm.url, arm.body, arm.headers)
    relayed, cost = dp.billed(headers, body)  # a billed stream carries its cost as a comment
    problems = arm.check(status, headers, relayed)
    if problems:
        raise SystemExit(
            f"the {arm.name} arm of '{row.name}' ({arm.url}) answered HTTP {status}: "
            f"{'; '.join(problems)}.\nheaders: {headers}\n"
            f"body: {body.decode(errors='replace')[:3000]}"
        )
    return {
        "status": status,
        "content_type": headers.get("content-type"),
        "bytes": len(body),
        "verified": arm.checked,
        "cost_usd": cost,
    }


# --- measuring ---------------------------------------------------------------------------------


def measure_row(row: Row, arms: list[Arm], config: Config, meter: dp.CpuMeter) -> dict[str, Any]:
    def run(arm: Arm, seconds: int) -> dict[str, Any]:
        return dp.wrk(arm.url, arm.body, arm.headers, row.connections, seconds, meter)

    for arm in arms:  # warm-up, discarded
        run(arm, config.warmup)
    rounds = []
    for i in range(config.rounds):
        results: dict[str, Any] = {}
        for arm in arms if i % 2 == 0 else arms[::-1]:
            r = results[arm.name] = run(arm, config.seconds)
            print(
                f"  {row.name:<20} round {i + 1}/{config.rounds} {arm.name:<6} "
                f"{r['rps']:>7,.0f} rps  p50 {report.ms(r['latency_us']['p50']):>7} ms  "
                f"p99 {report.ms(r['latency_us']['p99']):>7} ms  "
                f"CPU/req {r['gateway_cpu_us_per_req']} µs  failed {r['failed']}  "
                f"other load {r['cpu']['other_pct']:.0f}%",
                flush=True,
            )
        rounds.append({arm.name: results[arm.name] for arm in arms})
    cell = {**asdict(row), "name": row.name}
    return {"cell": cell, "rounds": rounds, "summary": summarize(rounds)}


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def rps(r: dict[str, Any]) -> float:
        return float(r["rps"])

    def cpu(r: dict[str, Any]) -> float:
        return float(r["gateway_cpu_us_per_req"])

    def median(arm: str, get: Callable[[dict[str, Any]], float]) -> float:
        return statistics.median(get(r[arm]) for r in rounds)

    def paired(get: Callable[[dict[str, Any]], float]) -> float:
        return statistics.median(get(r["compat"]) - get(r["native"]) for r in rounds)

    def ratio(get: Callable[[dict[str, Any]], float]) -> float:
        return statistics.median(get(r["compat"]) / get(r["native"]) for r in rounds)

    summary: dict[str, Any] = {
        "rps_ratio": ratio(rps),
        "cpu_ratio": ratio(cpu),
        "cpu_added_us": paired(cpu),
    }
    for arm in ("native", "compat"):
        summary[f"rps_{arm}"] = median(arm, rps)
        summary[f"rps_{arm}_range"] = [
            min(rps(r[arm]) for r in rounds),
            max(rps(r[arm]) for r in rounds),
        ]
        summary[f"cpu_us_per_req_{arm}"] = median(arm, cpu)
        summary[f"gateway_cpu_pct_{arm}"] = median(arm, lambda r: r["cpu"]["gateway_pct"])
        summary[f"failed_{arm}"] = sum(r[arm]["failed"] for r in rounds)
        for p in ("p50", "p90", "p99"):
            summary[f"{p}_{arm}_us"] = median(arm, lambda r, p=p: r["latency_us"][p])
    for p in ("p50", "p90", "p99"):
        summary[f"{p}_added_us"] = paired(lambda r, p=p: r["latency_us"][p])
    return summary


def rows_for(config: Config) -> list[Row]:
    return [
        Row(pair, stream, c)
        for stream in (False, True)
        for c in config.concurrency
        for pair in PAIRS
    ]


def run(config: Config, procs: dp.Processes) -> dict[str, Any]:
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("this benchmark pins the gateway and the load to separate CPUs: needs 2")
    idle = dp.wait_for_idle()
    print(
        f"load average {' '.join(idle['loadavg'])}; CPU busy {idle['cpu_busy_pct']}% "
        f"(per core {idle['per_core_busy_pct']})" + ("" if idle["idle"] else "  ** NOT IDLE **"),
        flush=True,
    )
    nginx_port, gateway_port = dp.free_port(), dp.free_port()
    nginx = dp.start_nginx(procs, nginx_port)
    nginx_pids = dp.process_tree(nginx.pid)
    checks: dict[str, Any] = {}
    cells: list[dict[str, Any]] = []
    memory: dict[str, Any] = {}
    for stream, phase in PHASES.items():
        rows = [row for row in rows_for(config) if row.stream == stream]
        gateway, creds = dp.start_gateway(procs, gateway_port, nginx_port, **phase)
        meter = dp.CpuMeter(gateway=[gateway.pid], nginx=nginx_pids)
        plan = [(row, arms_for(row, gateway_port, creds, config.keys)) for row in rows]
        for row, arms in plan:  # once per pair: the answer does not depend on the concurrency
            kind = f"{row.pair}{' stream' if row.stream else ''}"
            if kind not in checks:
                checks[kind] = {arm.name: check_arm(arm, row) for arm in arms}
        idle_rss = dp.process_memory_kib(gateway.pid)["VmRSS"]
        cells += [measure_row(row, arms, config, meter) for row, arms in plan]
        final = dp.process_memory_kib(gateway.pid)
        memory[phase["label"]] = {
            "idle_rss_kib": idle_rss,
            "final_rss_kib": final["VmRSS"],
            "peak_rss_kib": final["VmHWM"],
        }
        procs.stop(gateway)
    return {
        "config": asdict(config),
        "keys": KEYS[config.keys],
        "pinning": {"gateway": dp.GATEWAY_CPU, "load": dp.LOAD_CPU},
        "idle": idle,
        "checks": checks,
        "cells": cells,
        "memory": memory,
    }


def main() -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # run.sh starts us with it ignored
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    config = Config.from_env(os.environ)
    dp.WORK.mkdir(parents=True, exist_ok=True)
    env = dp.environment()
    print(f"tollgate translation benchmark, commit {env['commit']}, {config}", flush=True)
    started = datetime.now(UTC)
    procs = dp.Processes()
    try:
        result = run(config, procs)
    finally:
        procs.stop_all()
    result["env"] = env
    result["elapsed_s"] = round((datetime.now(UTC) - started).total_seconds())
    markdown = report.render_translation(result)
    print("\n" + markdown)
    dp.write_results(result, markdown, "translation")
    failed = sum(c["summary"][f"failed_{a}"] for c in result["cells"] for a in ("native", "compat"))
    if failed:
        print(f"FAILED: the gateway failed {failed} requests under load; see 'Errors under load'")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
