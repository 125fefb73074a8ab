# The project's image: SuperLink, Fleet gateway (nginx), SuperNodes (and the ServerApp,
# ClientApp and warm worker processes they start), the QKD key manager and the submit step
# all run from it (docker-compose.yml), as the unprivileged user `qfl` (uid 10001).
#
#   docker build -t qfl:latest .
#
# BASE_IMAGE: any image with Python 3.11 and python3 -m venv (default: the official one).
# Two build inputs exist for machines behind a TLS-intercepting proxy and without PyPI's
# torch index (the tests use them; the image users build gets neither):
# - PIP_EXTRA_CA_B64: extra CA certificates (PEM, base64), used by pip during the build only;
# - a .docker-wheels/ folder in the build context: torch wheels installed from there.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLWR_SUPEREXEC_TASK_POLL_INTERVAL=0.05 \
    QFL_CACHE_DIR=/tmp/qfl-cache \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

ARG PIP_EXTRA_CA_B64=""
# nginx for the Fleet gateway (qfl/launch/gateway.py); the unprivileged user every service
# but the one-shot `certs` runs as
RUN set -eu; \
    if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx-light; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    groupadd --gid 10001 qfl; \
    useradd --uid 10001 --gid 10001 --home-dir /app --no-create-home --shell /usr/sbin/nologin qfl
WORKDIR /app
# dependencies before the code, so code changes reuse this layer; the bracket makes the
# optional wheels folder match nothing rather than fail when it is absent
COPY pyproject.toml README.md .docker-wheel[s] /build/
COPY client/__init__.py client/__init__.py
COPY server/__init__.py server/__init__.py
COPY qfl/__init__.py qfl/__init__.py
COPY qfl/common/__init__.py qfl/common/__init__.py
COPY qfl/task/__init__.py qfl/task/__init__.py
COPY qfl/launch/__init__.py qfl/launch/__init__.py
COPY qfl/experiments/__init__.py qfl/experiments/__init__.py
COPY strategies/__init__.py strategies/__init__.py
COPY transport/__init__.py transport/__init__.py
COPY transport/qkd/__init__.py transport/qkd/__init__.py
RUN set -eu; \
    python3 -m venv /opt/venv; \
    if [ -n "$PIP_EXTRA_CA_B64" ]; then \
        cat /etc/ssl/certs/ca-certificates.crt > /tmp/pip-ca.pem 2>/dev/null || true; \
        echo "$PIP_EXTRA_CA_B64" | base64 -d >> /tmp/pip-ca.pem; \
        export PIP_CERT=/tmp/pip-ca.pem; \
    fi; \
    pip install --upgrade pip; \
    # CPU torch first: a plain `torch` would pull a multi-GB CUDA build
    if ls /build/torch-*.whl >/dev/null 2>&1; then pip install /build/torch-*.whl; \
    else pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu; fi; \
    cp /build/pyproject.toml /build/README.md /app/; \
    pip install -e .; \
    rm -rf /build /tmp/pip-ca.pem
COPY . .

# the ServerApp writes metrics, plots and checkpoints here (a volume in compose, which
# takes this folder's owner when it is first made)
RUN mkdir -p /app/runs && chown qfl:qfl /app/runs
USER qfl
CMD ["flower-superlink", "--help"]
