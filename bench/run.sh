#!/usr/bin/env bash
# `make bench`: install the tools (nginx, wrk, LiteLLM), then run the benchmarks one after the
# other: bench/dataplane.py (gateway against direct calls and LiteLLM), bench/translation.py
# (Unified API against native endpoints), bench/cache.py (cache hits against misses) and
# bench/logs.py (logs on against off). BENCH_ONLY=<one of those names> runs one of them;
# BENCH_ONLY=scaling runs bench/scaling.py (workers x accounts) and BENCH_ONLY=soak bench/soak.py
# (memory over 10 minutes at half the peak load), which `make bench` leaves out.
# Options are environment variables; see bench/README.md. Extra arguments go to each runner.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${BENCH_ONLY:-}" in
    "") benches=(dataplane translation cache logs) ;;
    dataplane | translation | cache | logs | scaling | soak) benches=("$BENCH_ONLY") ;;
    *)
        echo "BENCH_ONLY must be 'dataplane', 'translation', 'cache', 'logs', 'scaling' or 'soak' (or unset for all but scaling and soak)" >&2
        exit 2
        ;;
esac

# LiteLLM (its own virtualenv, a minute to install the first time) is for bench/dataplane.py only.
if [[ " ${benches[*]} " == *" dataplane "* ]]; then
    bash bench/install.sh
else
    BENCH_LITELLM=0 bash bench/install.sh
fi

PYTHON="${PYTHON:-.venv/bin/python}"
PIDS="bench/.work/pids"  # "<pid> <marker>" per process the runner starts
mkdir -p bench/.work

child=""
cleanup() {
    # The runner stops what it started; this also covers a runner that was killed outright.
    if [ -n "$child" ] && kill -0 "$child" 2>/dev/null; then
        kill -TERM "$child" 2>/dev/null || true
        wait "$child" 2>/dev/null || true
    fi
    if [ -f "$PIDS" ]; then
        while read -r pid marker; do
            if [ -n "${pid:-}" ] && grep -qa -- "$marker" "/proc/$pid/cmdline" 2>/dev/null; then
                kill -TERM "$pid" 2>/dev/null || true
            fi
        done <"$PIDS"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Each runner in the background so that a signal to this script is handled at once, not after
# the run. A failed benchmark does not stop the next one; the exit status is the last non-zero.
status=0
for bench in "${benches[@]}"; do
    started=$SECONDS
    "$PYTHON" "bench/$bench.py" "$@" &
    child=$!
    rc=0
    wait "$child" || rc=$?
    child=""
    echo "bench/$bench.py: exit status $rc after $((SECONDS - started)) s" >&2
    if [ "$rc" -ne 0 ]; then
        status=$rc
    fi
done
exit "$status"
