#!/usr/bin/env bash
# Install what the benchmark needs: nginx as the mock upstream and wrk as the load generator
# (Debian packages; needs root or sudo), and LiteLLM's proxy for bench/dataplane.py's `litellm`
# arm (from PyPI, into its own virtualenv bench/.litellm-venv: it pins its own openai, pydantic,
# fastapi and starlette, which must not touch the project's .venv).
# Idempotent: does nothing when all are present. BENCH_LITELLM=0 skips LiteLLM.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)

if [ ${#missing[@]} -gt 0 ]; then
    echo "bench/install.sh: installing ${missing[*]}" >&2
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        SUDO="sudo"
    fi
    # Refresh the package lists only when apt has none yet or the install fails without it.
    if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        "${missing[@]}" >/dev/null; then
        $SUDO apt-get update -qq
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            "${missing[@]}" >/dev/null
    fi
fi

if [ "${BENCH_LITELLM:-1}" = "0" ]; then
    exit 0
fi

# LiteLLM, pinned: 1.108.7 is the release shared/reference/performance.md §4-5 measured on this
# machine kind (newer [proxy] extras need packages the index may not have); the constraints file
# pins every dependency to what that install resolved to. The stamp records both, so changing
# either reinstalls.
LITELLM_VERSION="1.108.7"
VENV="bench/.litellm-venv"
CONSTRAINTS="bench/litellm-constraints.txt"
STAMP="$VENV/.installed"
want="litellm[proxy]==$LITELLM_VERSION $(sha256sum "$CONSTRAINTS" | cut -d' ' -f1)"
if [ -x "$VENV/bin/litellm" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ]; then
    exit 0
fi
echo "bench/install.sh: installing litellm[proxy]==$LITELLM_VERSION into $VENV" >&2
"${LITELLM_PYTHON:-python3}" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    -c "$CONSTRAINTS" "litellm[proxy]==$LITELLM_VERSION"
echo "$want" >"$STAMP"
