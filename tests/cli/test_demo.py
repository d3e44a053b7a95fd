"""`tollgate demo` end to end: the real command, in a subprocess, tours every step against its own
simulated providers and sandbox payments, and exits 0 only when each behaved as it says. A step
that does not (a declined test card instead of the good one) stops the tour with exit 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tollgate import demo

TOLLGATE = Path(sys.executable).parent / "tollgate"
STEPS = [
    "1. Created account",
    "2. Saved test card 4242 and topped up $20: balance $20",
    "3. Models through every path",
    "openai gpt-4o-mini (native, openai SDK)",
    "anthropic claude-sonnet-4-6 (native)",
    "google gemini-2.5-flash (native, google-genai)",
    "anthropic/claude-haiku-4-5 (compat)",
    "openai/gpt-4o (tollgate.sdk)",
    "4. ZDR off: served by the standard OpenAI endpoint (cf-aig-zdr: false).",
    "ZDR on:  the same request went to the ZDR endpoint (cf-aig-zdr: true).",
    "5. Daily limit $1.00: a request that could cost more got 429",
    "6. Auto top-up below",
    "7. Dashboard: http://127.0.0.1:",
    "every step behaved as shown.",
]


def test_tollgate_demo_runs_every_step_and_exits_0() -> None:
    done = subprocess.run([str(TOLLGATE), "demo"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    positions = [out.find(step) for step in STEPS]
    assert all(p >= 0 for p in positions), [
        s for s, p in zip(STEPS, positions, strict=True) if p < 0
    ]
    assert positions == sorted(positions)  # in the order the tour promises
    seconds = float(out.rsplit("Done in ", 1)[1].split(" s")[0])
    assert seconds < 60
    assert "FAILED" not in out and "Traceback" not in done.stderr


def test_a_step_that_misbehaves_stops_the_tour_with_exit_1(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    declined = {**demo.CARD, "card_number": "4000000000000002"}  # Stripe's generic decline
    monkeypatch.setattr(demo, "CARD", declined)
    lines: list[str] = []
    assert demo.run_demo(lines.append) == 1
    assert lines[-1].startswith("demo FAILED: ")
    assert not any(line.startswith("3. ") for line in lines)  # stopped at the top-up
