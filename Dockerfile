# Sluice's images. Targets:
#   gateway (the default, last): the gateway alone; engines run in their own containers.
#   simulator: the vLLM-compatible simulated engine (no GPU), for demos and tests.
# BASE is any Debian-like image with python3 3.11 (and its venv module). Elsewhere the
# default is the official python image; `make image` builds from a local Debian base
# (debootstrap) instead, see docs/how-to/containers.md.
ARG BASE=python:3.11-slim

# The project's pinned dependencies in a virtualenv at /opt/sluice: one layer, rebuilt
# only when pyproject.toml changes.
FROM ${BASE} AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml ./
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
 && python3 -m venv /opt/sluice \
 && /opt/sluice/bin/pip install -q -r requirements.txt

# The gateway's packages only: the load-test harness and the simulator are not copied, so
# setuptools finds neither; their console scripts are removed.
FROM deps AS build-gateway
COPY README.md ./
COPY gateway gateway
COPY engines engines
COPY adapters adapters
RUN /opt/sluice/bin/pip install -q --no-deps . \
 && rm /opt/sluice/bin/sluice-bench /opt/sluice/bin/sluice-sim

FROM deps AS build-simulator
COPY README.md ./
COPY simulator simulator
RUN /opt/sluice/bin/pip install -q --no-deps . \
 && rm /opt/sluice/bin/sluice /opt/sluice/bin/sluice-bench

# What both final images share: python3, an unprivileged user, no build tools.
FROM ${BASE} AS runtime
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/sluice sluice
ENV PATH=/opt/sluice/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /home/sluice

FROM runtime AS simulator
COPY --from=build-simulator /opt/sluice /opt/sluice
USER sluice
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
ENTRYPOINT ["sluice-sim", "--host", "0.0.0.0", "--port", "8000"]

FROM runtime AS gateway
COPY --from=build-gateway /opt/sluice /opt/sluice
COPY deploy/image/sluice.yaml /etc/sluice/sluice.yaml
# Settings: /etc/sluice/sluice.yaml (mount your own over it), then SLUICE_* variables;
# API keys come from SLUICE_API_KEYS (a JSON list). The image has no vLLM, so the
# embedded default CPU engine is off whatever the mounted file says.
ENV SLUICE_CONFIG=/etc/sluice/sluice.yaml SLUICE_DEFAULT_ENGINE=false
USER sluice
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('SLUICE_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["sluice", "serve"]
