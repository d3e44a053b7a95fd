"""The benchmark reports: Markdown from the runners' result dictionaries (bench/dataplane.py,
bench/translation.py)."""

from __future__ import annotations

from typing import Any

CONTENDED_PCT = 10.0  # "other" CPU load above this during a run marks it as contended


def ms(us: float) -> str:
    value = us / 1000
    if abs(value) < 10:
        return f"{value:.3f}"
    return f"{value:.2f}" if abs(value) < 100 else f"{value:.1f}"


def signed_ms(us: float) -> str:
    return ("+" if us >= 0 else "") + ms(us)


def _runs(cell: dict[str, Any]) -> list[tuple[int, str, dict[str, Any]]]:
    return [
        (i, arm, r) for i, results in enumerate(cell["rounds"], 1) for arm, r in results.items()
    ]


def main_table(cells: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| Row | c | RPS direct | RPS gateway | gateway/direct | p50 direct | p50 gateway "
        "| p50 added | p99 direct | p99 gateway | p99 added | gateway CPU/req "
        "| gateway core busy | other load (max) | failed direct/gateway |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for cell in cells:
        s, c = cell["summary"], cell["cell"]
        other = max(r["cpu"]["other_pct"] for _, _, r in _runs(cell))
        lines.append(
            f"| {c['name']} | {c['connections']} | {s['rps_direct']:,.0f} "
            f"| {s['rps_gateway']:,.0f} | {s['rps_ratio']:.3f} "
            f"| {ms(s['p50_direct_us'])} | {ms(s['p50_gateway_us'])} "
            f"| {signed_ms(s['p50_added_us'])} | {ms(s['p99_direct_us'])} "
            f"| {ms(s['p99_gateway_us'])} | {signed_ms(s['p99_added_us'])} "
            f"| {s['gateway_cpu_us_per_req']:,.0f} µs | {s['gateway_cpu_pct']:.0f}% "
            f"| {other:.0f}% | {s['failed_direct']}/{s['failed_gateway']} |"
        )
    return lines


def billing_table(cells: list[dict[str, Any]]) -> list[str]:
    """Billing on (the gateway arm, Unified Billing) against billing off (the byok arm)."""
    lines = [
        "| Row | c | CPU/req on | CPU/req off | CPU/req on/off | on/off per round "
        "| CPU/req added | RPS on | RPS off | RPS on/off | p50 on | p50 off | p99 on | p99 off "
        "| core busy on/off | other load (max) | failed on/off | target |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for cell in cells:
        b, c = cell["summary"]["billing"], cell["cell"]
        ratio, spread = "n/a", "n/a"
        if b["cpu_ratio"] is not None:
            low, high = b["cpu_ratio_range"]
            ratio, spread = f"{b['cpu_ratio']:.2f}", f"{low:.2f}-{high:.2f}"
        other = max(r["cpu"]["other_pct"] for _, arm, r in _runs(cell) if arm != "direct")
        verdict = {True: "meets", False: "**misses**", None: "n/a (no CPU measured)"}[
            b["meets_target"]
        ]
        lines.append(
            f"| {c['name']} | {c['connections']} | {b['cpu_us_per_req_on']:,.0f} µs "
            f"| {b['cpu_us_per_req_off']:,.0f} µs | {ratio} "
            f"| {spread} | {b['cpu_added_us']:+,.0f} µs "
            f"| {b['rps_on']:,.0f} | {b['rps_off']:,.0f} | {b['rps_ratio']:.3f} "
            f"| {ms(b['p50_on_us'])} | {ms(b['p50_off_us'])} "
            f"| {ms(b['p99_on_us'])} | {ms(b['p99_off_us'])} "
            f"| {b['core_busy_pct_on']:.0f}% / {b['core_busy_pct_off']:.0f}% "
            f"| {other:.0f}% | {b['failed_on']}/{b['failed_off']} | {verdict} |"
        )
    return lines


def billing_section(cells: list[dict[str, Any]]) -> list[str]:
    """ "Billing on vs off": the table and the target, or nothing for a run without a byok arm."""
    mine = [c for c in cells if "billing" in c["summary"]]
    if not mine:
        return []
    target = mine[0]["summary"]["billing"]["target_cpu_ratio"]
    meeting = [c["cell"]["name"] for c in mine if c["summary"]["billing"]["meets_target"]]
    missing = [c["cell"]["name"] for c in mine if c["summary"]["billing"]["meets_target"] is False]
    saturated = [
        c
        for c in mine
        if c["cell"]["connections"] > 1 and c["summary"]["billing"]["cpu_ratio"] is not None
    ]
    verdict = f"met on {len(meeting)} of {len(mine)} rows" + (
        f"; missed on {', '.join(missing)}" if missing else ""
    )
    added = ", ".join(
        f"{c['cell']['name']} {c['summary']['billing']['cpu_added_us']:+,.0f} µs "
        f"(x{c['summary']['billing']['cpu_ratio']:.2f})"
        for c in saturated
    )
    return [
        "## Billing on vs off",
        "",
        "Both arms through the same gateway process to the same nginx location, in the same run: "
        "**on** = the `gateway` arm (the gateway's managed key: Unified Billing, a hold before "
        "forwarding and a settlement after, checked billed: it reports a `cf-aig-cost`); "
        "**off** = the `byok` arm (`cf-aig-authorization: Bearer <token>` and the client's own "
        "provider key in `Authorization`: checked not billed, no `cf-aig-cost`). CPU/req = the "
        "gateway process's utime+stime ÷ the requests it served; 'on/off' and 'added' are the "
        "medians of the per-round ratios and differences (on - off), 'on/off per round' their "
        "lowest and highest; other values are medians over rounds. Latencies in ms.",
        "",
        f"**Target (billing issue): Unified Billing adds under {100 * (target - 1):.0f}% to the "
        f"gateway's own CPU per request on SQLite, i.e. CPU/req on/off < {target:.2f}: "
        f"{verdict}.** Read it at the saturated rows (c > 1, core busy near 100%); at c=1 the "
        "core idles between requests and CPU/req includes the event loop waking up for each."
        + (f" Billing adds per request: {added}." if added else ""),
        "",
        *billing_table(mine),
    ]


def check_lines(checks: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    lines = []
    for row, arms in checks.items():
        for arm, c in arms.items():
            billing = {
                "on": "billing on",
                "off": "billing off",
                "n/a": "no gateway",
                "litellm": "LiteLLM, master key",
            }.get(c.get("billing", "n/a"), "?")
            cost = f"billed ${c['cost_usd']}" if c["cost_usd"] else "not billed (no cf-aig-cost)"
            # The LiteLLM arm re-encodes the answer: its check says what it compared instead.
            verified = c.get("verified", f"the canned body unchanged; {cost}")
            lines.append(
                f"- {row} / {arm} ({billing}): HTTP {c['status']}, {c['content_type']}, "
                f"{c['bytes']} bytes, {verified}"
            )
    return lines


def rounds_table(cells: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| Row | arm | round | RPS | p50 | p90 | p99 | max | CPU0 busy | CPU1 busy "
        "| wrk | nginx | gateway | other | failed |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for cell in cells:
        for i, arm, r in _runs(cell):
            lat, cpu = r["latency_us"], r["cpu"]
            cores = cpu["core_busy_pct"]
            flag = " ⚠" if cpu["other_pct"] > CONTENDED_PCT else ""
            lines.append(
                f"| {cell['cell']['name']} | {arm} | {i} | {r['rps']:,.0f} "
                f"| {ms(lat['p50'])} | {ms(lat['p90'])} | {ms(lat['p99'])} | {ms(lat['max'])} "
                f"| {cores['0']:.0f}% | {cores['1']:.0f}% | {cpu['wrk_pct']:.0f}% "
                f"| {cpu['nginx_pct']:.0f}% | {cpu['gateway_pct']:.0f}% "
                f"| {cpu['other_pct']:.0f}%{flag} | {r['failed']} |"
            )
    return lines


def error_lines(cells: list[dict[str, Any]]) -> list[str]:
    lines = []
    for cell in cells:
        for i, arm, r in _runs(cell):
            if r["failed"] or r["errors"]["status"]:
                lines.append(
                    f"- {cell['cell']['name']}, {arm}, round {i}: non-2xx statuses "
                    f"{r['bad_statuses'] or '{}'}, wrk errors {r['errors']}, "
                    f"of {r['requests']:,} requests. First error body: `{r['sample_error']}`"
                )
    return lines or ["None: every response in every measured run was 2xx, with no socket errors."]


def contention_lines(cells: list[dict[str, Any]]) -> list[str]:
    runs = [r for cell in cells for _, _, r in _runs(cell)]
    contended = [r for r in runs if r["cpu"]["other_pct"] > CONTENDED_PCT]
    if not contended:
        return [f"No run saw more than {CONTENDED_PCT:.0f}% of a core of other load."]
    worst = max(r["cpu"]["other_pct"] for r in contended)
    return [
        f"**{len(contended)} of {len(runs)} runs shared the machine with other load** "
        f"(more than {CONTENDED_PCT:.0f}% of a core that was not wrk, nginx or the gateway; "
        f"worst {worst:.0f}%, marked ⚠ below). Their numbers are pessimistic and noisy; "
        "rerun on an idle machine before drawing conclusions."
    ]


def environment_lines(report: dict[str, Any]) -> list[str]:
    env, idle, pin = report["env"], report["idle"], report["pinning"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    return [
        f"- Commit: `{env['commit']}`",
        f"- Machine: {env['cpu_model']}, {env['cpus']} CPUs; kernel {env['kernel']}",
        f"- Python {env['python']}; {versions}",
        f"- Upstream: nginx {env['nginx']}, 1 worker, canned answers; load: {env['wrk']}",
        f"- Pinning: gateway (1 uvicorn worker, uvloop + httptools, SQLite store) on CPU "
        f"{pin['gateway']}; nginx and wrk on CPU {pin['load']}",
        f"- Before the run: load average {' '.join(idle['loadavg'])}; CPU busy "
        f"{idle['cpu_busy_pct']}% over 1 s (per core {idle['per_core_busy_pct']}), "
        f"{'idle' if idle['idle'] else '**not idle**'} after waiting {idle['waited_s']} s",
    ]


def memory_line(mem: dict[str, Any], what: str = "Gateway memory") -> str:
    return (
        f"{what}: RSS {mem['idle_rss_kib'] / 1024:.1f} MiB idle after start-up, "
        f"{mem['final_rss_kib'] / 1024:.1f} MiB at the end; peak RSS (VmHWM) "
        f"{mem['peak_rss_kib'] / 1024:.1f} MiB."
    )


def every_run_lines(cells: list[dict[str, Any]]) -> list[str]:
    litellm = any("litellm" in results for cell in cells for results in cell["rounds"])
    serving = " (the `litellm` arm's: LiteLLM's)" if litellm else ""
    return [
        "## Errors under load",
        "",
        *error_lines(cells),
        "",
        "## Every run",
        "",
        "CPU0/CPU1 busy: whole-core busy time during the run. wrk, nginx, gateway, other: CPU "
        f"time of each during the run, in % of one core; gateway = tollgate's{serving}.",
        "",
        *rounds_table(cells),
        "",
    ]


def render(report: dict[str, Any], comparison: list[str] | None = None) -> str:
    """The data-plane report; `comparison` (report_compare.sections) goes after "Billing on vs
    off"."""
    env, cfg = report["env"], report["config"]
    arms = list(report["cells"][0]["rounds"][0]) if report["cells"] else ["direct", "gateway"]
    has_byok = "byok" in arms
    arm_order = ", ".join([*arms, arms[0]])
    lines = [
        f"# Data-plane benchmark, {env['date_utc']} UTC",
        "",
        *environment_lines(report),
        f"- Protocol: `wrk -t1 -cN`, {cfg['seconds']} s per run, {cfg['rounds']} rounds per row, "
        f"arms interleaved ({arm_order}, ...), {cfg['warmup']} s warm-up per arm "
        "discarded; values are medians over rounds; 'added' is the median of the per-round "
        "differences (gateway - direct)"
        + (f"; {report['measure_s']} s of measuring in all" if "measure_s" in report else ""),
        "- Arms: **direct** = wrk straight to nginx (`Authorization: Bearer sk-bench`); "
        "**gateway** = through tollgate with its managed key (Unified Billing), the tollgate "
        "token in `Authorization`"
        + (
            "; **byok** = the same request through the same gateway to the same nginx location "
            "with the client's own key (`cf-aig-authorization: Bearer <token>`, "
            "`Authorization: Bearer sk-bench`), not billed"
            if has_byok
            else ""
        )
        + (
            "; **litellm** = LiteLLM's proxy, same request body and nginx location (see "
            "'tollgate against LiteLLM')"
            if "litellm" in arms
            else ""
        ),
        "",
        "Latencies in ms. 'gateway CPU/req' = the gateway process's utime+stime ÷ the requests it "
        "served; 'gateway core busy' = that CPU time ÷ wall time (100% = its core is saturated); "
        "'other load' = CPU used by anything but wrk, nginx and the gateway, in % of one core "
        "(approximate: it includes kernel work not charged to a process).",
        "",
        *main_table(report["cells"]),
        "",
        *billing_section(report["cells"]),
        *([""] if has_byok else []),
        *(comparison or []),
        memory_line(report["memory"]),
        "",
        *contention_lines(report["cells"]),
        "",
        "## Checked before measuring (one request per arm)",
        "",
        *check_lines(report["checks"]),
        "",
        *every_run_lines(report["cells"]),
    ]
    return "\n".join(lines)


# --- translation (bench/translation.py) ----------------------------------------------------------


def translation_table(cells: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| Row | c | RPS native | RPS compat | RPS compat/native | p50 native | p50 compat "
        "| p50 added | p99 native | p99 compat | p99 added | CPU/req native | CPU/req compat "
        "| CPU/req added | CPU/req compat/native | core busy native/compat | other load (max) "
        "| failed native/compat |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for cell in cells:
        s, c = cell["summary"], cell["cell"]
        other = max(r["cpu"]["other_pct"] for _, _, r in _runs(cell))
        lines.append(
            f"| {c['name']} | {c['connections']} | {s['rps_native']:,.0f} "
            f"| {s['rps_compat']:,.0f} | {s['rps_ratio']:.3f} "
            f"| {ms(s['p50_native_us'])} | {ms(s['p50_compat_us'])} "
            f"| {signed_ms(s['p50_added_us'])} | {ms(s['p99_native_us'])} "
            f"| {ms(s['p99_compat_us'])} | {signed_ms(s['p99_added_us'])} "
            f"| {s['cpu_us_per_req_native']:,.0f} µs | {s['cpu_us_per_req_compat']:,.0f} µs "
            f"| {s['cpu_added_us']:+,.0f} µs | {s['cpu_ratio']:.3f} "
            f"| {s['gateway_cpu_pct_native']:.0f}% / {s['gateway_cpu_pct_compat']:.0f}% "
            f"| {other:.0f}% | {s['failed_native']}/{s['failed_compat']} |"
        )
    return lines


def translation_answer(cells: list[dict[str, Any]]) -> list[str]:
    """One line per pair and mode: the per-request cost of /compat over the native endpoint."""
    lines = []
    for pair, what in (
        ("openai", "same format (`model` rewritten, answer relayed as bytes)"),
        ("anthropic", "translated (OpenAI Chat -> Anthropic Messages -> OpenAI Chat)"),
    ):
        for stream in (False, True):
            mine = [c for c in cells if c["cell"]["pair"] == pair and c["cell"]["stream"] == stream]
            if not mine:
                continue
            cpu = ", ".join(
                f"c={c['cell']['connections']}: {c['summary']['cpu_added_us']:+,.0f} µs "
                f"(x{c['summary']['cpu_ratio']:.2f})"
                for c in mine
            )
            p50 = ", ".join(
                f"c={c['cell']['connections']}: {signed_ms(c['summary']['p50_added_us'])} ms"
                for c in mine
            )
            lines.append(
                f"- **{pair}, {'streaming' if stream else 'non-streaming'}**, {what}: gateway "
                f"CPU per request compat - native {cpu}; p50 added {p50}."
            )
    return lines


def render_translation(report: dict[str, Any]) -> str:
    env, cfg = report["env"], report["config"]
    checks = [
        f"- {row} / {arm}: HTTP {c['status']}, {c['content_type']}, {c['bytes']} bytes, "
        f"billed {'$' + c['cost_usd'] if c['cost_usd'] else 'nothing (no cf-aig-cost)'}; "
        f"verified: {c['verified']}"
        for row, arms in report["checks"].items()
        for arm, c in arms.items()
    ]
    for row, arms in report["checks"].items():
        costs = {arm: c["cost_usd"] for arm, c in arms.items()}
        if len(set(costs.values())) > 1:
            checks.append(f"- **{row}: the arms were billed differently**: {costs}")
    memory = [
        memory_line(mem, f"Gateway memory ({label})") for label, mem in report["memory"].items()
    ]
    lines = [
        f"# Translation benchmark (Unified API against native), {env['date_utc']} UTC",
        "",
        *environment_lines(report),
        f"- Protocol: both arms through the same gateway to the same nginx location; "
        f"`wrk -t1 -cN`, {cfg['seconds']} s per run, {cfg['rounds']} rounds per row, arms "
        f"interleaved (odd rounds native first, even rounds compat first), {cfg['warmup']} s "
        "warm-up per arm discarded; values are medians over rounds; 'added' and the ratios are "
        "medians of the per-round differences (compat - native) and ratios (compat / native)",
        "- Arms: **native** = `POST .../openai/chat/completions` (OpenAI body) or "
        "`.../anthropic/v1/messages` (Anthropic body, `x-api-key` + `anthropic-version`), relayed "
        "as bytes; **compat** = `POST .../compat/chat/completions` with the same question in "
        "OpenAI Chat form, `model: openai/gpt-4o-mini` (same format: only `model` is rewritten) "
        "or `anthropic/claude-sonnet-4-6` (translated both ways, streams too).",
        f"- Keys (`BENCH_TRANSLATION_KEYS={cfg['keys']}`): {report['keys']}",
        "- Gateway instances: non-streaming rows run against one gateway process whose `openai` "
        "and `anthropic` base URLs are nginx's non-streaming paths; the streaming rows against a "
        "second one, started afterwards on the same port and CPU, on nginx's streaming paths "
        "(nginx cannot read the body, so the path chooses the canned answer)",
        f"- Run time: {report['elapsed_s']} s in all",
        "",
        "Latencies in ms. 'CPU/req' = the gateway process's utime+stime during the run ÷ the "
        "requests served (the number that answers 'what does translation cost per request'; "
        "most stable at c=16, where the gateway's core is saturated); 'core busy' = that CPU "
        "time ÷ wall time; 'other load' = CPU used by anything but wrk, nginx and the gateway, in "
        "% of one core. wrk is closed-loop: at c=16 latency is mostly queueing, so read added "
        "latency at c=1.",
        "",
        *translation_table(report["cells"]),
        "",
        "## Cost of the Unified API per request",
        "",
        *translation_answer(report["cells"]),
        "",
        *contention_lines(report["cells"]),
        "",
        *memory,
        "",
        "## Checked before measuring (one request per arm)",
        "",
        *checks,
        "",
        *every_run_lines(report["cells"]),
    ]
    return "\n".join(lines)
