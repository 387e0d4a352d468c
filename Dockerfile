# syntax=docker/dockerfile:1
# One image for the four services and the demo; docker-compose.yml picks the entry point with
# `command: python -m services.<name>` (or `python -m stack.demo`).
#
# Installed the way the README and Makefile install the project, pinned by constraints.txt so the
# image gets the versions CI tested, but WITHOUT the dev extra: SecantusDB (GPL-2.0) is a test
# stand-in for mongod and never belongs in the services' runtime or their image.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtualenv holding the project and its runtime dependencies only ----------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml constraints.txt ./
COPY shared ./shared
COPY services ./services
COPY stack ./stack
# Not editable: the runtime stage gets the installed package and nothing of the source tree.
RUN pip install -c constraints.txt .

# ---- runtime: the virtualenv, the demo catalogue, a non-root user ----------------------------
FROM ${PYTHON_IMAGE} AS runtime
# A fixed numeric uid/gid so the orchestrator can verify "runs as non-root" without /etc/passwd.
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
# PYTHONSAFEPATH: `python -m services.x` must import the installed package, never a folder that
# happens to sit in the working directory.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONSAFEPATH=1
WORKDIR /app
# Data file for `python -m services.inventory seed-stock services/inventory/demo_catalogue.json`
# (a path relative to the working directory, the same command as on the embedded stack).
COPY services/inventory/demo_catalogue.json ./services/inventory/demo_catalogue.json
USER 10001:10001
# API 8000; relay 8001, inventory 8002, email 8003 serve /healthz, /readyz and /metrics.
EXPOSE 8000 8001 8002 8003
CMD ["python", "-m", "services.order"]
