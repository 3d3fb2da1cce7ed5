# The gateway image. Engines run in their own containers (see docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY engines engines
COPY simulator simulator
COPY adapters adapters
COPY loadtests loadtests
RUN pip install --no-cache-dir .
EXPOSE 8000
ENTRYPOINT ["sluice", "serve"]
