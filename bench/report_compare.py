"""The data-plane report's comparison sections (bench/dataplane.py): tollgate against LiteLLM
(the `litellm` arm, bench/litellm_arm.py) and the first chunk of a paced stream (bench/paced.py).
report.render puts them after "Billing on vs off"."""

from __future__ import annotations

from typing import Any

from report import CONTENDED_PCT, ms, signed_ms


def ratio(value: float | None) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if abs(value) >= 0.1 else f"{value:.3f}"


def cpu_us(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f} µs"


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def litellm_table(cells: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| Row | c | RPS LiteLLM | RPS tollgate on / BYOK | RPS tollgate/LiteLLM on / BYOK "
        "| p50 LiteLLM | p50 added LiteLLM | p50 added tollgate | p50 added tollgate/LiteLLM "
        "| p99 LiteLLM | p99 added LiteLLM | p99 added tollgate | p99 added tollgate/LiteLLM "
        "| CPU/req LiteLLM | CPU/req tollgate on / BYOK | CPU/req tollgate/LiteLLM on / BYOK "
        "| LiteLLM core busy | other load (max) | failed LiteLLM |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for cell in cells:
        s, c = cell["summary"], cell["cell"]
        lite, billing = s["litellm"], s.get("billing", {})
        flag = " ⚠" if lite["other_pct_max"] > CONTENDED_PCT else ""
        lines.append(
            f"| {c['name']} | {c['connections']} | {lite['rps']:,.0f} "
            f"| {s['rps_gateway']:,.0f} / {s.get('rps_byok', 0):,.0f} "
            f"| {ratio(lite.get('rps_ratio_gateway'))} / {ratio(lite.get('rps_ratio_byok'))} "
            f"| {ms(lite['p50_us'])} | {signed_ms(lite['p50_added_us'])} "
            f"| {signed_ms(s['p50_added_us'])} | {ratio(lite.get('p50_added_ratio_gateway'))} "
            f"| {ms(lite['p99_us'])} | {signed_ms(lite['p99_added_us'])} "
            f"| {signed_ms(s['p99_added_us'])} | {ratio(lite.get('p99_added_ratio_gateway'))} "
            f"| {cpu_us(lite['cpu_us_per_req'])} "
            f"| {cpu_us(s['gateway_cpu_us_per_req'])} / "
            f"{cpu_us(billing.get('cpu_us_per_req_off'))} "
            f"| {ratio(lite.get('cpu_ratio_gateway'))} / {ratio(lite.get('cpu_ratio_byok'))} "
            f"| {lite['core_busy_pct']:.0f}% | {lite['other_pct_max']:.0f}%{flag} "
            f"| {lite['failed']} |"
        )
    return lines


def litellm_headline(cells: list[dict[str, Any]]) -> str:
    """The c=1 latency and the saturated throughput, in one sentence."""
    parts = []
    for cell in cells:
        s, c = cell["summary"], cell["cell"]
        lite = s["litellm"]
        if c["connections"] == 1 and not c["stream"]:
            parts.append(
                f"at c=1 tollgate (billing on) adds {signed_ms(s['p50_added_us'])} ms p50 where "
                f"LiteLLM adds {signed_ms(lite['p50_added_us'])} ms "
                f"(ratio {ratio(lite.get('p50_added_ratio_gateway'))})"
            )
        elif c["connections"] > 1:
            parts.append(
                f"{c['name']}: {s['rps_gateway']:,.0f} RPS against LiteLLM's "
                f"{lite['rps']:,.0f} (x{ratio(lite.get('rps_ratio_gateway'))})"
            )
    return "; ".join(parts)


def memory_lines(result: dict[str, Any]) -> list[str]:
    mine, theirs = result["memory"], result["litellm"]["memory"]
    rows = [("tollgate (one gateway process, SQLite store)", mine), ("LiteLLM", theirs)]
    lines = [
        "| process | RSS idle (after start-up and the checks) | RSS at the end "
        "| peak RSS (VmHWM) |",
        "|---|--:|--:|--:|",
    ]
    for name, m in rows:
        lines.append(
            f"| {name} | {mib(m['idle_rss_kib'])} | {mib(m['final_rss_kib'])} "
            f"| {mib(m['peak_rss_kib'])} |"
        )
    lines += [
        "",
        f"Peak RSS tollgate/LiteLLM: {ratio(mine['peak_rss_kib'] / theirs['peak_rss_kib'])}; "
        f"idle RSS tollgate/LiteLLM: {ratio(mine['idle_rss_kib'] / theirs['idle_rss_kib'])}. "
        "Both read after the zero-delay rows (the paced row runs afterwards, on a second "
        "gateway process).",
    ]
    return lines


def litellm_section(result: dict[str, Any]) -> list[str]:
    cells = [c for c in result["cells"] if "litellm" in c["summary"]]
    if not cells or not result.get("litellm"):
        return []
    settings = result["litellm"]["settings"]
    versions = ", ".join(f"{k} {v}" for k, v in settings["versions"].items())
    return [
        "## tollgate against LiteLLM",
        "",
        f"**litellm** = LiteLLM's proxy ({versions}; its own virtualenv, bench/.litellm-venv), "
        f"{settings['workers']} worker, no database (the master key is the only credential, "
        "nothing is metered or stored), telemetry, retries and callbacks off, pinned to the "
        "gateway's CPU; its model entries point at the same nginx locations, so it relays the "
        "same canned answers (it re-encodes them: checked by content). The `litellm` arm runs "
        "in the same rounds as the others, interleaved; tollgate idles meanwhile on the same "
        "core. 'tollgate' = the `gateway` arm (Unified Billing on), 'BYOK' = the `byok` arm; "
        "'added' = the median of the per-round differences arm - direct; 'tollgate/LiteLLM' = "
        "the median of the per-round ratios (RPS: above 1 means tollgate serves more; added "
        "latency and CPU/req: below 1 means tollgate adds or spends less). Read added latency "
        "at c=1 (at c > 1 both are saturated and it is mostly queueing), throughput at c > 1. "
        "Latencies in ms.",
        "",
        f"**{litellm_headline(cells)}.**",
        "",
        *litellm_table(cells),
        "",
        "### Memory",
        "",
        *memory_lines(result),
        "",
    ]


def paced_table(summary: dict[str, Any]) -> list[str]:
    names = {
        "direct": "direct (the pacer)",
        "gateway": "tollgate, billing on",
        "byok": "tollgate, BYOK",
        "litellm": "LiteLLM",
    }
    lines = [
        "| arm | streams | streams/s | first chunk p50 | first chunk p90 | first chunk p99 "
        "| added p50 | added p99 | added p50 per round | last byte p50 | last byte added p50 "
        "| CPU/stream | core busy | other load (max) | failed |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]

    def opt(value: float | None, fmt: Any = ms) -> str:
        return "n/a" if value is None else str(fmt(value))

    for arm, s in summary.items():
        per_round = s.get("first_chunk_p50_added_per_round_us")
        spread = f"{signed_ms(min(per_round))} to {signed_ms(max(per_round))}" if per_round else "-"
        busy = "-" if arm == "direct" else f"{s['core_busy_pct']:.0f}%"
        lines.append(
            f"| {names.get(arm, arm)} | {s['streams']:,} | {s['streams_per_s']:,.1f} "
            f"| {opt(s['first_chunk_p50_us'])} | {opt(s['first_chunk_p90_us'])} "
            f"| {opt(s['first_chunk_p99_us'])} "
            f"| {opt(s.get('first_chunk_p50_added_us'), signed_ms)} "
            f"| {opt(s.get('first_chunk_p99_added_us'), signed_ms)} | {spread} "
            f"| {opt(s['total_p50_us'])} | {opt(s.get('total_p50_added_us'), signed_ms)} "
            f"| {cpu_us(s['cpu_us_per_stream'])} | {busy} | {s['other_pct_max']:.0f}% "
            f"| {s['failed']} |"
        )
    return lines


def paced_runs(paced: dict[str, Any]) -> list[str]:
    lines = [
        "| arm | round | streams | first chunk p50 | first chunk p99 | last byte p50 "
        "| CPU0 busy | CPU1 busy | client | pacer | serving process | other | failed |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for i, results in enumerate(paced["rounds"], 1):
        for arm, r in results.items():
            first, total, cpu = r["first_chunk_us"], r["total_us"], r["cpu"]
            cores = cpu["core_busy_pct"]
            flag = " ⚠" if cpu["other_pct"] > CONTENDED_PCT else ""
            serving = "-" if arm == "direct" else f"{cpu['gateway_pct']:.0f}%"
            lines.append(
                f"| {arm} | {i} | {r['requests']:,} | {ms(first.get('p50', 0))} "
                f"| {ms(first.get('p99', 0))} | {ms(total.get('p50', 0))} "
                f"| {cores['0']:.0f}% | {cores['1']:.0f}% | {cpu['wrk_pct']:.0f}% "
                f"| {cpu['nginx_pct']:.0f}% | {serving} | {cpu['other_pct']:.0f}%{flag} "
                f"| {r['failed']} |"
            )
    return lines


def paced_errors(paced: dict[str, Any]) -> list[str]:
    lines = [
        f"- {arm}, round {i}: {r['failed']} failed ({r['errors']}); first: `{r['sample_error']}`"
        for i, results in enumerate(paced["rounds"], 1)
        for arm, r in results.items()
        if r["failed"]
    ]
    return lines or ["No stream failed: every one was HTTP 200 and ended with `data: [DONE]`."]


def paced_section(result: dict[str, Any]) -> list[str]:
    paced = result.get("paced")
    if not paced:
        return []
    c, summary = paced["cell"]["connections"], paced["summary"]
    gateway, lite = summary.get("gateway", {}), summary.get("litellm")
    headline = ""
    if lite and "first_chunk_p50_added_us" in gateway and "first_chunk_p50_added_us" in lite:
        mine, theirs = gateway["first_chunk_p50_added_us"], lite["first_chunk_p50_added_us"]
        share = ratio(mine / theirs if theirs > 0 else None)
        headline = (
            f" **First chunk added, p50: tollgate (billing on) {signed_ms(mine)} ms, LiteLLM "
            f"{signed_ms(theirs)} ms (tollgate/LiteLLM {share}); p99: "
            f"{signed_ms(gateway['first_chunk_p99_added_us'])} ms against "
            f"{signed_ms(lite['first_chunk_p99_added_us'])} ms.**"
        )
    litellm = "; LiteLLM the same process as above (a model entry at the pacer)" if lite else ""
    return [
        "## First chunk of a paced stream",
        "",
        f"The upstream is bench/pacer.py (aiohttp, on CPU 0, in place of nginx), which sends the "
        f"canned stream's {paced['events']} SSE events one at a time: headers at once, the first "
        f"event {paced['interval_ms']} ms after the request arrived, each next one "
        f"{paced['interval_ms']} ms later. The client is bench/first_chunk.py (asyncio, on CPU "
        f"0): {c} keep-alive connections in a closed loop with random pauses (so they do not "
        "march in step), timing each stream from writing the request to the first body byte "
        "('first chunk') and to the last ('last byte'). tollgate is a second gateway process "
        "started for this row (same port, CPU and settings, its `groq` provider at the pacer)"
        f"{litellm}. CPU/stream = the serving process's CPU time ÷ the streams served. "
        "Percentiles are over every stream of every round of an arm; 'added' = the arm's "
        "percentile minus the direct arm's; 'added p50 per round' the lowest and highest of the "
        "per-round differences (the noise to read the added p50 against; the pacer's timers are "
        f"accurate to about 1 ms). {paced['measure_s']} s for this row. Latencies in ms."
        + headline,
        "",
        *paced_table(summary),
        "",
        *paced_errors(paced),
        "",
        "Every paced run (client = bench/first_chunk.py, pacer = bench/pacer.py, serving "
        "process = tollgate or LiteLLM, the arm's; in % of one core):",
        "",
        *paced_runs(paced),
        "",
    ]


def sections(result: dict[str, Any]) -> list[str]:
    """What report.render inserts after "Billing on vs off" (nothing when the run had neither
    the LiteLLM arm nor the paced row)."""
    return [*litellm_section(result), *paced_section(result)]
