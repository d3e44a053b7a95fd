"""The benchmark report: Markdown from the runner's result dictionary (bench/dataplane.py)."""

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


def render(report: dict[str, Any]) -> str:
    env, cfg, idle, mem = report["env"], report["config"], report["idle"], report["memory"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    pin = report["pinning"]
    lines = [
        f"# Data-plane benchmark, {env['date_utc']} UTC",
        "",
        f"- Commit: `{env['commit']}`",
        f"- Machine: {env['cpu_model']}, {env['cpus']} CPUs; kernel {env['kernel']}",
        f"- Python {env['python']}; {versions}",
        f"- Upstream: nginx {env['nginx']}, 1 worker, canned answers; load: {env['wrk']}",
        f"- Pinning: gateway (1 uvicorn worker, uvloop + httptools, SQLite store) on CPU "
        f"{pin['gateway']}; nginx and wrk on CPU {pin['load']}",
        f"- Before the run: load average {' '.join(idle['loadavg'])}; CPU busy "
        f"{idle['cpu_busy_pct']}% over 1 s (per core {idle['per_core_busy_pct']}), "
        f"{'idle' if idle['idle'] else '**not idle**'} after waiting {idle['waited_s']} s",
        f"- Protocol: `wrk -t1 -cN`, {cfg['seconds']} s per run, {cfg['rounds']} rounds per row, "
        f"arms interleaved (direct, gateway, direct, ...), {cfg['warmup']} s warm-up per arm "
        "discarded; values are medians over rounds; 'added' is the median of the per-round "
        "differences (gateway - direct)",
        "",
        "Latencies in ms. 'gateway CPU/req' = the gateway process's utime+stime ÷ the requests it "
        "served; 'gateway core busy' = that CPU time ÷ wall time (100% = its core is saturated); "
        "'other load' = CPU used by anything but wrk, nginx and the gateway, in % of one core "
        "(approximate: it includes kernel work not charged to a process).",
        "",
        *main_table(report["cells"]),
        "",
        f"Gateway memory: RSS {mem['idle_rss_kib'] / 1024:.1f} MiB idle after start-up, "
        f"{mem['final_rss_kib'] / 1024:.1f} MiB at the end; peak RSS (VmHWM) "
        f"{mem['peak_rss_kib'] / 1024:.1f} MiB.",
        "",
        *contention_lines(report["cells"]),
        "",
        "## Errors under load",
        "",
        *error_lines(report["cells"]),
        "",
        "## Every run",
        "",
        "CPU0/CPU1 busy: whole-core busy time during the run. wrk, nginx, gateway, other: CPU "
        "time of each during the run, in % of one core.",
        "",
        *rounds_table(report["cells"]),
        "",
    ]
    return "\n".join(lines)
