#!/usr/bin/env bash
# `make bench`: install the tools (nginx, wrk), then run the data-plane benchmark.
# Options are environment variables; see bench/README.md. Extra arguments go to bench/dataplane.py.
set -euo pipefail
cd "$(dirname "$0")/.."

bash bench/install.sh

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

# In the background so that a signal to this script is handled at once, not after the run.
"$PYTHON" bench/dataplane.py "$@" &
child=$!
wait "$child"
