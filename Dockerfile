# The project's image: SuperLink, SuperNodes, the ServerApp/ClientApp processes they
# start, the QKD key manager and the submit step all run from it (docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLWR_SUPEREXEC_TASK_POLL_INTERVAL=0.05 \
    QFL_CACHE_DIR=/tmp/qfl-cache

# CPU torch first, from PyTorch's CPU index: a plain `torch` would pull a multi-GB CUDA build
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /app
# dependencies before the code, so code changes reuse this layer
COPY pyproject.toml README.md ./
COPY client/__init__.py client/__init__.py
COPY server/__init__.py server/__init__.py
COPY strategies/__init__.py strategies/__init__.py
COPY transport/__init__.py transport/__init__.py
RUN pip install -e .
COPY . .

# the ServerApp writes metrics, plots and checkpoints here (a volume in compose)
RUN mkdir -p /app/runs
CMD ["flower-superlink", "--help"]
