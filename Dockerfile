# tollgate's container image: `docker build -t tollgate:0.1.0 .` then
# `docker run -p 8787:8787 -v tollgate-data:/data tollgate:0.1.0`.
#
# Two stages: the first builds tollgate and every dependency into wheels, the second installs
# them and nothing else, so the image carries no compiler, no pip cache and no source tree.
# On linux/amd64 every dependency ships a wheel, so neither stage compiles (a platform without
# them needs `apt-get install build-essential` in the build stage only).
# Secrets never enter the image: pass them at run time (docs/operations.md, "Deploying").
# Needs BuildKit (Docker's default builder since 23.0) for the `RUN --mount` below.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# The same pins as `make install`: constraints.txt holds every dependency's tested version.
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
RUN pip wheel --wheel-dir /wheels --constraint constraints.txt .

FROM ${PYTHON_IMAGE} AS runtime
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# The wheels are mounted for this one step instead of copied, so they add no layer.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels tollgate

# A fixed numeric uid: Kubernetes' runAsNonRoot can only verify a numeric USER.
RUN groupadd --system --gid 10001 tollgate \
    && useradd --system --uid 10001 --gid tollgate --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin tollgate \
    && mkdir /data && chown tollgate:tollgate /data

# Listen on every interface (the container's network is the boundary); keep the SQLite
# database, its journal and the sandbox credentials on the /data volume. Any TOLLGATE_*
# variable given at run time overrides these (docs/configuration.md).
ENV TOLLGATE_SERVER__HOST=0.0.0.0 \
    TOLLGATE_SERVER__PORT=8787 \
    TOLLGATE_DATA_DIR=/data \
    TOLLGATE_DATABASE_URL=sqlite:////data/tollgate.db
VOLUME ["/data"]
WORKDIR /data
USER 10001:10001
EXPOSE 8787

# /healthz says the process is up; the slim image has no curl, so Python asks. It reads the
# port the gateway was given, in case TOLLGATE_SERVER__PORT was changed at run time.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('TOLLGATE_SERVER__PORT', '8787'), timeout=4)"

# `docker run IMAGE migrate` (or any other tollgate command) replaces `serve`.
ENTRYPOINT ["tollgate"]
CMD ["serve"]
